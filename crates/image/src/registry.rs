//! A client for the OCI distribution API: authentication (anonymous bearer tokens,
//! `husk login` credentials over Basic or token auth), manifests and blobs, for
//! pulls and pushes.
//!
//! Transport, as Docker and podman choose it: HTTPS with verified certificates;
//! plain HTTP for registries in `$HUSK_INSECURE_REGISTRIES`; for a registry on
//! loopback (`localhost`, `127.0.0.0/8`, `[::1]`) HTTPS first, then plain HTTP
//! if HTTPS fails; with [`RegistryOptions::tls_verify`] off, HTTPS without
//! certificate checks first, then plain HTTP.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connection failed or broke.
    #[error("cannot reach registry at {url}")]
    Connect {
        /// The URL requested.
        url: String,
        /// The cause.
        #[source]
        source: Box<ureq::Error>,
    },
    /// Reading a response body failed.
    #[error("connection to {url} broke while reading the response")]
    Read {
        /// The URL requested.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The registry wants credentials we do not have, or refused ours.
    #[error("{registry}: {detail}")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// What happened.
        detail: String,
    },
    /// 404 for a manifest or blob.
    #[error("{what} not found in {registry}/{repository}: {message}")]
    NotFound {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// `manifest latest`, `blob sha256:…`.
        what: String,
        /// The registry's error message.
        message: String,
    },
    /// Any other unexpected HTTP status.
    #[error("{url}: registry answered HTTP {status}: {message}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status.
        status: u16,
        /// The registry's error message.
        message: String,
    },
    /// A response too large to be a manifest or token.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// HTTPS failed in its TLS layer: the registry may speak plain HTTP, or have a
    /// certificate husk cannot verify.
    #[error(
        "cannot reach registry at {url}: TLS failed (if {registry} speaks plain HTTP or has a certificate that cannot be verified, add it to $HUSK_INSECURE_REGISTRIES or pass --tls-verify=false)"
    )]
    Tls {
        /// The URL requested.
        url: String,
        /// Registry host.
        registry: String,
        /// The cause.
        #[source]
        source: Box<ureq::Error>,
    },
    /// An upload answer without the header the protocol requires.
    #[error("{url}: registry answered HTTP {status} without a usable {header} header")]
    BadUpload {
        /// The URL requested.
        url: String,
        /// The status.
        status: u16,
        /// The missing header.
        header: &'static str,
    },
    /// A malformed `WWW-Authenticate` header or token response.
    #[error("{registry}: bad authentication response: {detail}")]
    BadAuth {
        /// Registry host.
        registry: String,
        /// What is wrong.
        detail: String,
    },
    /// The credentials file could not be read or written.
    #[error("credentials file {path}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The credentials file is not valid JSON.
    #[error("credentials file {path} is malformed")]
    CredentialsFormat {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Options for talking to registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) that may be reached over plain HTTP. All others use HTTPS.
    pub insecure_registries: Vec<String>,
    /// The credentials file (`husk login`); `None` for anonymous access only.
    pub credentials_file: Option<PathBuf>,
    /// Layers downloaded at once (Docker's default is 3).
    pub max_concurrent_downloads: usize,
    /// Attempts per blob within one pull before giving up (resuming where it stopped).
    pub attempts: u32,
    /// Connect/read timeout.
    pub timeout: Duration,
    /// Verify TLS certificates (`--tls-verify=false` turns this off: then HTTPS
    /// without verification is tried first, then plain HTTP).
    pub tls_verify: bool,
    /// Pushes upload blobs larger than this in chunks of this size (`PATCH`),
    /// smaller ones in one `PUT`.
    pub upload_chunk_size: u64,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            credentials_file: None,
            max_concurrent_downloads: 3,
            attempts: 3,
            timeout: Duration::from_secs(60),
            tls_verify: true,
            upload_chunk_size: 32 << 20,
        }
    }
}

impl RegistryOptions {
    /// Options for a store: credentials from the store's `auth.json`, and insecure
    /// registries from `$HUSK_INSECURE_REGISTRIES` (comma-separated `host[:port]`).
    pub fn for_store(store: &crate::store::Store) -> RegistryOptions {
        let insecure = std::env::var("HUSK_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        RegistryOptions {
            insecure_registries: insecure,
            credentials_file: Some(store.auth_path()),
            ..RegistryOptions::default()
        }
    }

    fn is_insecure(&self, registry: &str) -> bool {
        self.insecure_registries.iter().any(|r| r == registry)
    }
}

/// Whether `host[:port]` names this machine's loopback: `localhost`, an address
/// in `127.0.0.0/8`, or `[::1]` (Docker lets those speak plain HTTP).
pub fn is_loopback(endpoint: &str) -> bool {
    let host = if let Some(rest) = endpoint.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, _)) => h,
            None => return false,
        }
    } else {
        endpoint.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// The `husk login` credentials file (Docker's `config.json` `auths` shape).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CredentialsFile {
    /// Per registry host: `{"auth": base64("user:password")}`.
    #[serde(default)]
    pub auths: BTreeMap<String, AuthEntry>,
}

/// One registry's stored credentials.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    pub auth: String,
}

impl CredentialsFile {
    /// Reads the file (missing file: no credentials).
    pub fn load(path: &Path) -> Result<CredentialsFile, RegistryError> {
        match std::fs::read(path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|source| RegistryError::CredentialsFormat {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(CredentialsFile::default()),
            Err(source) => Err(RegistryError::Credentials {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the file atomically, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        let err = |source| RegistryError::Credentials {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| err(io::Error::other(e)))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        fsutil::write_atomic(path, &bytes).map_err(err)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(err)
    }

    /// The user and password for a registry, if stored.
    pub fn get(&self, registry: &str) -> Option<(String, String)> {
        let e = self.auths.get(registry)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(e.auth.trim())
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    /// Stores credentials for a registry.
    pub fn set(&mut self, registry: &str, user: &str, password: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.auths.insert(registry.to_string(), AuthEntry { auth });
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic` (lower-cased).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`), keys lower-cased.
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` header value (one challenge).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(' ') {
        Some(i) => (&header[..i], &header[i + 1..]),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if params.len() > 32 || value.len() > 4096 {
            return None;
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(Clone, Debug)]
enum AuthState {
    None,
    Basic(String),
    Bearer(String),
}

/// A response: status, selected headers, and the body reader.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    pub(crate) docker_digest: Option<String>,
    pub(crate) content_range: Option<String>,
    pub(crate) location: Option<String>,
    pub(crate) body: Box<dyn Read + Send>,
}

/// A request body that can be sent again (after an authentication challenge or a
/// broken connection).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload<'a> {
    /// No body.
    Empty,
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`.
    File {
        /// The file (read with positioned reads, so its offset is untouched).
        file: &'a std::fs::File,
        /// Where the bytes start.
        offset: u64,
        /// How many.
        len: u64,
    },
}

impl Payload<'_> {
    fn len(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Bytes(b) => b.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }
}

/// Reads a file range with `pread`.
struct RangeReader<'a> {
    file: &'a std::fs::File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than the blob",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// How a repository's registry is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// HTTPS, certificates verified.
    Https,
    /// Plain HTTP (`$HUSK_INSECURE_REGISTRIES`).
    Http,
    /// HTTPS if it answers, else plain HTTP (loopback, or `tls_verify` off).
    HttpsThenHttp,
}

/// A connection to one repository of one registry.
pub struct Repository {
    agent: ureq::Agent,
    endpoint: String,
    transport: Transport,
    base: std::sync::OnceLock<String>,
    registry: String,
    repository: String,
    /// Actions asked for in token scopes: `pull`, or `pull,push`.
    actions: String,
    /// Other repositories' scopes asked for too (cross-repository mounts).
    extra_scopes: Vec<String>,
    credentials: Option<(String, String)>,
    auth: Mutex<AuthState>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("endpoint", &self.endpoint)
            .field("transport", &self.transport)
            .field("repository", &self.repository)
            .finish()
    }
}

fn agent(opts: &RegistryOptions) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(!opts.tls_verify)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(opts.timeout))
        .timeout_recv_response(Some(opts.timeout))
        .timeout_recv_body(None)
        .max_redirects(8)
        // Registries may redirect blobs to their own host (keep the token) or to a CDN
        // with a signed URL (drop it).
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
        .user_agent(concat!("husk/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

const ERROR_BODY_LIMIT: u64 = 64 << 10;

impl Repository {
    /// Connects (lazily) to `repository` on `registry` (the name in references:
    /// `docker.io` is reached at `registry-1.docker.io`).
    pub fn new(
        registry: &str,
        endpoint: &str,
        repository: &str,
        opts: &RegistryOptions,
    ) -> Result<Repository, RegistryError> {
        let transport = if opts.is_insecure(registry) || opts.is_insecure(endpoint) {
            Transport::Http
        } else if !opts.tls_verify || is_loopback(endpoint) {
            Transport::HttpsThenHttp
        } else {
            Transport::Https
        };
        let credentials = match &opts.credentials_file {
            Some(p) => CredentialsFile::load(p)?.get(registry),
            None => None,
        };
        Ok(Repository {
            agent: agent(opts),
            endpoint: endpoint.to_string(),
            transport,
            base: std::sync::OnceLock::new(),
            registry: registry.to_string(),
            repository: repository.to_string(),
            actions: "pull".to_string(),
            extra_scopes: Vec::new(),
            credentials,
            auth: Mutex::new(AuthState::None),
        })
    }

    /// Asks for push access (and pull access to `mount_from`, repositories of the
    /// same registry that blobs may be mounted from) when authenticating.
    pub(crate) fn for_push(mut self, mount_from: &[String]) -> Repository {
        self.actions = "pull,push".to_string();
        self.extra_scopes = mount_from
            .iter()
            .filter(|r| **r != self.repository)
            .map(|r| format!("repository:{r}:pull"))
            .collect();
        self
    }

    /// `scheme://endpoint`, probing HTTPS once where plain HTTP is a fallback.
    fn base(&self) -> &str {
        self.base.get_or_init(|| match self.transport {
            Transport::Https => format!("https://{}", self.endpoint),
            Transport::Http => format!("http://{}", self.endpoint),
            Transport::HttpsThenHttp => {
                let https = format!("https://{}", self.endpoint);
                match self.agent.get(&format!("{https}/v2/")).call() {
                    Ok(_) => https,
                    Err(e) => {
                        log::debug!("{}: HTTPS failed ({e}); using plain HTTP", self.endpoint);
                        format!("http://{}", self.endpoint)
                    }
                }
            }
        })
    }

    /// The URL of `path` under `/v2/`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.base())
    }

    /// Resolves a `Location` header (absolute, or a path on the registry).
    pub(crate) fn resolve_location(&self, location: &str) -> String {
        if location.starts_with("https://") || location.starts_with("http://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base())
        } else {
            format!("{}/v2/{location}", self.base())
        }
    }

    /// The scopes to ask a token service for.
    fn scopes(&self) -> Vec<String> {
        let mut v = vec![format!("repository:{}:{}", self.repository, self.actions)];
        v.extend(self.extra_scopes.iter().cloned());
        v
    }

    fn connect_error(&self, url: &str, e: ureq::Error) -> RegistryError {
        if url.starts_with("https://") && is_tls_error(&e) {
            RegistryError::Tls {
                url: url.to_string(),
                registry: self.registry.clone(),
                source: Box::new(e),
            }
        } else {
            RegistryError::Connect {
                url: url.to_string(),
                source: Box::new(e),
            }
        }
    }

    /// Registry host as named in references.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Repository path.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    fn auth_header(&self) -> Option<String> {
        match &*self.auth.lock().ok()? {
            AuthState::None => None,
            AuthState::Basic(b) => Some(format!("Basic {b}")),
            AuthState::Bearer(t) => Some(format!("Bearer {t}")),
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload: Payload<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, v.as_str());
        }
        if let Some(a) = self.auth_header() {
            builder = builder.header("Authorization", a.as_str());
        }
        let has_body = !matches!(payload, Payload::Empty) || method == "PUT" || method == "POST";
        if has_body {
            builder = builder.header("Content-Length", payload.len().to_string());
        }
        let bad_request = |e: ureq::http::Error| RegistryError::Connect {
            url: url.to_string(),
            source: Box::new(ureq::Error::Http(e)),
        };
        let result = match payload {
            Payload::Empty if has_body => {
                self.agent.run(builder.body(&[][..]).map_err(bad_request)?)
            }
            Payload::Empty => self.agent.run(builder.body(()).map_err(bad_request)?),
            Payload::Bytes(b) => self.agent.run(builder.body(b).map_err(bad_request)?),
            Payload::File { file, offset, len } => {
                let mut reader = RangeReader {
                    file,
                    pos: offset,
                    end: offset + len,
                };
                let body = ureq::SendBody::from_reader(&mut reader);
                self.agent.run(builder.body(body).map_err(bad_request)?)
            }
        };
        result.map_err(|e| self.connect_error(url, e))
    }

    /// GET `path` (under `/v2/`), answering one authentication challenge if needed.
    pub(crate) fn get(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Response, RegistryError> {
        self.request("GET", &self.url(path), headers, Payload::Empty)
    }

    /// Any request to a full registry URL, answering one authentication challenge
    /// if needed (the payload is then sent again).
    pub(crate) fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload: Payload<'_>,
    ) -> Result<Response, RegistryError> {
        let url = url.to_string();
        let mut resp = self.send(method, &url, headers, payload)?;
        if resp.status().as_u16() == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            drop(resp);
            self.authenticate(challenge.as_deref(), &self.scopes())?;
            resp = self.send(method, &url, headers, payload)?;
            if resp.status().as_u16() == 401 {
                return Err(RegistryError::Unauthorized {
                    registry: self.registry.clone(),
                    detail: if self.credentials.is_some() {
                        "access denied with the stored credentials".into()
                    } else {
                        format!(
                            "authentication required (run `husk login {}`)",
                            self.registry
                        )
                    },
                });
            }
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Response {
            status: resp.status().as_u16(),
            content_type: header("content-type"),
            docker_digest: header("docker-content-digest"),
            content_range: header("content-range"),
            location: header("location"),
            body: Box::new(resp.into_body().into_reader()),
        })
    }

    /// Answers a `WWW-Authenticate` challenge: Basic with stored credentials, or a bearer
    /// token from the realm (anonymous, or with stored credentials).
    fn authenticate(
        &self,
        challenge: Option<&str>,
        scopes: &[String],
    ) -> Result<(), RegistryError> {
        let bad = |detail: String| RegistryError::BadAuth {
            registry: self.registry.clone(),
            detail,
        };
        let c = challenge
            .and_then(parse_challenge)
            .ok_or_else(|| bad(format!("no usable WWW-Authenticate header ({challenge:?})")))?;
        let basic = self
            .credentials
            .as_ref()
            .map(|(u, p)| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
        match c.scheme.as_str() {
            "basic" => {
                let Some(b) = basic else {
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        detail: format!(
                            "authentication required (run `husk login {}`)",
                            self.registry
                        ),
                    });
                };
                if let Ok(mut a) = self.auth.lock() {
                    *a = AuthState::Basic(b);
                }
                Ok(())
            }
            "bearer" => {
                let realm = c
                    .params
                    .get("realm")
                    .ok_or_else(|| bad("bearer challenge without realm".into()))?;
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return Err(bad(format!("token realm {realm:?} is not an http(s) URL")));
                }
                let mut query = Vec::new();
                if let Some(s) = c.params.get("service") {
                    query.push(format!("service={}", urlencode(s)));
                }
                // The challenge's scope (what the refused request needed), then ours.
                let mut wanted: Vec<&str> = Vec::new();
                for s in c.params.get("scope").into_iter().chain(scopes) {
                    if !wanted.contains(&s.as_str()) {
                        wanted.push(s);
                    }
                }
                for s in wanted.into_iter().take(16) {
                    query.push(format!("scope={}", urlencode(s)));
                }
                let url = if query.is_empty() {
                    realm.clone()
                } else {
                    let sep = if realm.contains('?') { '&' } else { '?' };
                    format!("{realm}{sep}{}", query.join("&"))
                };
                let mut req = self.agent.get(&url);
                if let Some(b) = &basic {
                    req = req.header("Authorization", format!("Basic {b}").as_str());
                }
                let resp = req.call().map_err(|e| self.connect_error(&url, e))?;
                let status = resp.status().as_u16();
                let body = read_limited(resp.into_body(), &url, ERROR_BODY_LIMIT)?;
                if status == 401 || status == 403 {
                    return Err(RegistryError::Unauthorized {
                        registry: self.registry.clone(),
                        detail: format!("token server refused: {}", error_message(&body)),
                    });
                }
                if status != 200 {
                    return Err(RegistryError::Status {
                        url,
                        status,
                        message: error_message(&body),
                    });
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body)
                    .map_err(|e| bad(format!("token response: {e}")))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| bad("token response has no token".into()))?;
                if let Ok(mut a) = self.auth.lock() {
                    *a = AuthState::Bearer(token);
                }
                Ok(())
            }
            other => Err(bad(format!("unsupported authentication scheme {other:?}"))),
        }
    }

    /// Checks that the registry accepts us (`GET /v2/`), as `husk login` does.
    pub fn ping(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base());
        let resp = self.send("GET", &url, &[], Payload::Empty)?;
        if resp.status().as_u16() == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            drop(resp);
            self.authenticate(challenge.as_deref(), &[])?;
            let resp = self.send("GET", &url, &[], Payload::Empty)?;
            return match resp.status().as_u16() {
                200 => Ok(()),
                401 | 403 => Err(RegistryError::Unauthorized {
                    registry: self.registry.clone(),
                    detail: "login failed: the registry refused these credentials".into(),
                }),
                s => Err(RegistryError::Status {
                    url,
                    status: s,
                    message: String::new(),
                }),
            };
        }
        match resp.status().as_u16() {
            200 => Ok(()),
            s => Err(RegistryError::Status {
                url,
                status: s,
                message: String::new(),
            }),
        }
    }

    /// Reads an error or small body and turns a non-2xx status into an error.
    pub(crate) fn check(
        &self,
        resp: Response,
        what: &str,
        url_path: &str,
    ) -> Result<Response, RegistryError> {
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        let mut body = Vec::new();
        let _ = resp.body.take(ERROR_BODY_LIMIT).read_to_end(&mut body);
        let message = error_message(&body);
        match resp.status {
            404 => Err(RegistryError::NotFound {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what: what.to_string(),
                message,
            }),
            401 | 403 => Err(RegistryError::Unauthorized {
                registry: self.registry.clone(),
                detail: format!("access to {} denied: {message}", self.repository),
            }),
            status => Err(RegistryError::Status {
                url: if url_path.contains("://") {
                    url_path.to_string()
                } else {
                    self.url(url_path)
                },
                status,
                message,
            }),
        }
    }
}

/// Whether a request failed in TLS (a plain-HTTP server answering a handshake, a
/// certificate that does not verify), not in reaching the host.
fn is_tls_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => true,
        ureq::Error::Io(io) => {
            let s = io.to_string();
            [
                "corrupt message",
                "certificate",
                "handshake",
                "InvalidContentType",
            ]
            .iter()
            .any(|m| s.contains(m))
        }
        _ => false,
    }
}

/// Runs `f` again (up to `attempts` times in all, with a growing pause) while it
/// fails to reach the registry.
pub(crate) fn with_retries<T>(
    attempts: u32,
    mut f: impl FnMut() -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let mut n = 0;
    loop {
        n += 1;
        match f() {
            Err(RegistryError::Connect { .. }) if n < attempts => {
                std::thread::sleep(Duration::from_millis(200 * u64::from(n)));
            }
            r => return r,
        }
    }
}

fn read_limited(body: ureq::Body, url: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    body.into_reader()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| RegistryError::Read {
            url: url.to_string(),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(RegistryError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(out)
}

/// The `message` of a registry's JSON error body, or the body's start.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && !e.errors.is_empty()
    {
        return e
            .errors
            .iter()
            .map(|i| format!("{} ({})", i.message, i.code))
            .collect::<Vec<_>>()
            .join("; ");
    }
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_string()
}

pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks credentials against a registry and stores them (`husk login`).
pub fn login(
    registry: &str,
    user: &str,
    password: &str,
    opts: &RegistryOptions,
) -> Result<(), RegistryError> {
    let Some(path) = &opts.credentials_file else {
        return Err(RegistryError::Credentials {
            path: PathBuf::new(),
            source: io::Error::other("no credentials file configured"),
        });
    };
    let registry = normalize_registry(registry);
    let endpoint = if registry == crate::reference::DOCKER_HUB {
        crate::reference::DOCKER_HUB_ENDPOINT
    } else {
        registry.as_str()
    };
    let mut probe_opts = opts.clone();
    probe_opts.credentials_file = None;
    let mut repo = Repository::new(&registry, endpoint, "", &probe_opts)?;
    repo.credentials = Some((user.to_string(), password.to_string()));
    repo.ping()?;
    let mut file = CredentialsFile::load(path)?;
    file.set(&registry, user, password);
    file.save(path)
}

/// Forgets a registry's credentials (`husk logout`). Returns whether there were any.
pub fn logout(registry: &str, opts: &RegistryOptions) -> Result<bool, RegistryError> {
    let Some(path) = &opts.credentials_file else {
        return Ok(false);
    };
    let mut file = CredentialsFile::load(path)?;
    let had = file.auths.remove(&normalize_registry(registry)).is_some();
    if had {
        file.save(path)?;
    }
    Ok(had)
}

fn normalize_registry(r: &str) -> String {
    let r = r
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .trim_end_matches("/v1");
    match r {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            crate::reference::DOCKER_HUB.to_string()
        }
        _ => r.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["scope"], "repository:library/alpine:pull");
        let c = parse_challenge(r#"Basic realm="husk test""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "husk test");
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn loopback_names() {
        for l in [
            "localhost",
            "localhost:5000",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(l), "{l}");
        }
        for r in [
            "docker.io",
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "128.0.0.1",
            "localhost.example.com",
            "[::2]:5000",
            "[::1",
            "",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn transports() {
        let o = RegistryOptions::default();
        let t =
            |reg: &str, o: &RegistryOptions| Repository::new(reg, reg, "r", o).unwrap().transport;
        assert_eq!(t("example.com", &o), Transport::Https);
        assert_eq!(t("127.0.0.1:5000", &o), Transport::HttpsThenHttp);
        assert_eq!(t("localhost:5000", &o), Transport::HttpsThenHttp);
        let mut insecure = o.clone();
        insecure.insecure_registries = vec!["example.com".into()];
        assert_eq!(t("example.com", &insecure), Transport::Http);
        let mut no_verify = o.clone();
        no_verify.tls_verify = false;
        assert_eq!(t("example.com", &no_verify), Transport::HttpsThenHttp);
    }

    #[test]
    fn credentials_roundtrip() {
        let mut f = CredentialsFile::default();
        f.set("127.0.0.1:5000", "user", "p:ss");
        assert_eq!(
            f.get("127.0.0.1:5000"),
            Some(("user".into(), "p:ss".into()))
        );
        assert_eq!(f.get("other"), None);
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_registry("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
