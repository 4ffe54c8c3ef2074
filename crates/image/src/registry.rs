//! A client for the OCI distribution API: authentication (anonymous bearer tokens,
//! `husk login` credentials over Basic or token auth), manifests and blobs.

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
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            credentials_file: None,
            max_concurrent_downloads: 3,
            attempts: 3,
            timeout: Duration::from_secs(60),
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
    pub(crate) body: Box<dyn Read + Send>,
}

/// A connection to one repository of one registry.
pub struct Repository {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repository: String,
    credentials: Option<(String, String)>,
    auth: Mutex<AuthState>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("base", &self.base)
            .field("repository", &self.repository)
            .finish()
    }
}

fn agent(opts: &RegistryOptions) -> ureq::Agent {
    ureq::Agent::config_builder()
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
        let scheme = if opts.is_insecure(registry) || opts.is_insecure(endpoint) {
            "http"
        } else {
            "https"
        };
        let credentials = match &opts.credentials_file {
            Some(p) => CredentialsFile::load(p)?.get(registry),
            None => None,
        };
        Ok(Repository {
            agent: agent(opts),
            base: format!("{scheme}://{endpoint}"),
            registry: registry.to_string(),
            repository: repository.to_string(),
            credentials,
            auth: Mutex::new(AuthState::None),
        })
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
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(a) = self.auth_header() {
            req = req.header("Authorization", a.as_str());
        }
        req.call().map_err(|e| RegistryError::Connect {
            url: url.to_string(),
            source: Box::new(e),
        })
    }

    /// GET `path` (under `/v2/`), answering one authentication challenge if needed.
    pub(crate) fn get(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Response, RegistryError> {
        let url = format!("{}/v2/{}", self.base, path);
        let mut resp = self.send(&url, headers)?;
        if resp.status().as_u16() == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            drop(resp);
            self.authenticate(
                challenge.as_deref(),
                Some(&format!("repository:{}:pull", self.repository)),
            )?;
            resp = self.send(&url, headers)?;
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
            body: Box::new(resp.into_body().into_reader()),
        })
    }

    /// Answers a `WWW-Authenticate` challenge: Basic with stored credentials, or a bearer
    /// token from the realm (anonymous, or with stored credentials).
    fn authenticate(
        &self,
        challenge: Option<&str>,
        scope: Option<&str>,
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
                match (c.params.get("scope"), scope) {
                    (Some(s), _) => query.push(format!("scope={}", urlencode(s))),
                    (None, Some(s)) => query.push(format!("scope={}", urlencode(s))),
                    (None, None) => {}
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
                let resp = req.call().map_err(|e| RegistryError::Connect {
                    url: url.clone(),
                    source: Box::new(e),
                })?;
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
        let url = format!("{}/v2/", self.base);
        let resp = self.send(&url, &[])?;
        if resp.status().as_u16() == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            drop(resp);
            self.authenticate(challenge.as_deref(), None)?;
            let resp = self.send(&url, &[])?;
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
                url: format!("{}/v2/{url_path}", self.base),
                status,
                message,
            }),
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
fn error_message(body: &[u8]) -> String {
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

fn urlencode(s: &str) -> String {
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
