//! `husk commit`: a new image from a container's writable layer.
//!
//! [`layer_from_upper`] turns an overlayfs upper directory, as husk's guests
//! write it (`userxattr` mounts), into an OCI layer: whiteouts (0:0
//! character devices) become `.wh.NAME` entries, opaque directories
//! (`user.overlay.opaque` = `y`) get `.wh..wh..opq`, symlinks stay symlinks,
//! hard links within the layer become tar links, owners, modes and mtimes
//! are kept. The mount points the guest agent makes (top-level `dev`,
//! `proc`, `sys`; `etc/hostname`, `etc/hosts`, `etc/resolv.conf`) are left out unless the
//! image has them. Entries are sorted and the gzip header has no time, so
//! the same directory gives the same layer.
//!
//! [`commit`] stores that layer and a config and manifest on top of the
//! container's image.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::reference::Reference;
use crate::spec::{self, Descriptor};
use crate::store::{Image, Store, StoreError};
use crate::tree::{self, MAX_DEPTH, TarOut};

/// Errors committing a container.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Reading the directories or writing the layer failed.
    #[error("cannot write the layer from {path}")]
    Layer {
        /// The upper directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The upper directory is nested deeper than husk walks.
    #[error("the container's filesystem is nested deeper than {MAX_DEPTH} directories")]
    TooDeep,
    /// A `--change` line is not one commit accepts.
    #[error(
        "invalid --change {0:?}: expected CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME or WORKDIR with a value"
    )]
    BadChange(String),
    /// The name to tag with is not a valid reference.
    #[error("invalid reference format: {0}")]
    BadName(String),
    /// The base image's config is not a JSON object.
    #[error("the config of image {image} is malformed")]
    BadConfig {
        /// The image.
        image: Digest,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A config or manifest could not be encoded.
    #[error("cannot encode the image's config or manifest")]
    Encode {
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`layer_from_upper`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar (the config's diff id).
    pub diff_id: Digest,
    /// sha256 of the gzip blob.
    pub digest: Digest,
    /// Size of the gzip blob.
    pub size: u64,
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hashing<W>(inner: W) -> Hashing<W> {
    Hashing {
        inner,
        hasher: Sha256::new(),
        count: 0,
    }
}

/// Writes the gzip-compressed OCI layer of the overlayfs upper directory
/// `upper` (whose lower directory is `lower`) to `out`.
pub fn layer_from_upper(
    upper: &Path,
    lower: &Path,
    out: impl Write,
) -> Result<LayerInfo, CommitError> {
    let fail = |source| CommitError::Layer {
        path: upper.to_path_buf(),
        source,
    };
    let upper_fd = tree::open_root(upper).map_err(fail)?;
    let lower_fd = tree::open_root(lower).map_err(fail)?;
    gzip_layer(out, upper, |plain| {
        let mut tar = TarOut::new(plain);
        if let Some(u) = &upper_fd {
            walk_upper(&mut tar, u, lower_fd.as_ref(), b"", 0)?;
        }
        tar.tar.into_inner().map_err(fail)?;
        Ok(())
    })
}

/// Compresses the tar that `write` produces into `out` with gzip (no time in
/// the header, so equal tars give equal blobs), hashing both forms.
fn gzip_layer(
    out: impl Write,
    what: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), CommitError>,
) -> Result<LayerInfo, CommitError> {
    let fail = |source| CommitError::Layer {
        path: what.to_path_buf(),
        source,
    };
    let gz = flate2::write::GzEncoder::new(hashing(out), flate2::Compression::default());
    let mut plain = hashing(gz);
    write(&mut plain)?;
    plain.flush().map_err(fail)?;
    let diff_id = Digest::from_hasher(plain.hasher);
    let mut compressed = plain.inner.finish().map_err(fail)?;
    compressed.flush().map_err(fail)?;
    Ok(LayerInfo {
        diff_id,
        digest: Digest::from_hasher(compressed.hasher),
        size: compressed.count,
    })
}

/// Stores a layer whose uncompressed tar `write` produces (gzip-compressed,
/// as [`layer_from_upper`] writes it); `what` names its source in errors.
/// Hold a [`Store::gc_guard`] until an image names the layer.
pub fn store_layer(
    store: &Store,
    what: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), CommitError>,
) -> Result<LayerInfo, CommitError> {
    let mut w = store.blob_writer()?;
    let info = gzip_layer(&mut w, what, write)?;
    w.commit(Some(&info.digest), Some(info.size))?;
    Ok(info)
}

/// Stores the layer of a container's writable layer `upper` over `lower`
/// (see [`layer_from_upper`]). Hold a [`Store::gc_guard`] until an image
/// names the layer.
pub fn store_upper_layer(
    store: &Store,
    upper: &Path,
    lower: &Path,
) -> Result<LayerInfo, CommitError> {
    let mut w = store.blob_writer()?;
    let info = layer_from_upper(upper, lower, &mut w)?;
    w.commit(Some(&info.digest), Some(info.size))?;
    Ok(info)
}

/// A descriptor of a gzip layer of `info`, of the media type for `docker`
/// (schema2) or OCI manifests.
pub fn layer_descriptor(info: &LayerInfo, docker: bool) -> Descriptor {
    let media_type = if docker {
        spec::DOCKER_LAYER_GZIP
    } else {
        spec::OCI_LAYER_GZIP
    };
    Descriptor {
        media_type: media_type.to_string(),
        digest: info.digest.clone(),
        size: info.size,
        platform: None,
        annotations: Default::default(),
        urls: Vec::new(),
    }
}

/// Stores `config_bytes` (a whole image config, whose digest is the image
/// id) and a manifest over `layers` (in Docker's schema2 media types with
/// `docker`, else OCI's), and records the image under `names` (full
/// references; none: unnamed). The layers' blobs must be in the store.
/// Returns the stored image.
pub fn put_image(
    store: &Store,
    config_bytes: &[u8],
    layers: &[Descriptor],
    docker: bool,
    names: &[String],
) -> Result<Image, CommitError> {
    let bad = |source| CommitError::Encode { source };
    let config_digest = store.put_blob(config_bytes)?;
    let (manifest_type, config_type) = if docker {
        (spec::DOCKER_MANIFEST, spec::DOCKER_CONFIG)
    } else {
        (spec::OCI_MANIFEST, spec::OCI_CONFIG)
    };
    let desc = |media_type: &str, digest: Digest, size: u64| Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: Default::default(),
        urls: Vec::new(),
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": desc(config_type, config_digest.clone(), config_bytes.len() as u64),
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(bad)?;
    let manifest_digest = store.put_blob(&manifest_bytes)?;
    store.add_image(
        &desc(manifest_type, manifest_digest, manifest_bytes.len() as u64),
        names,
        None,
    )?;
    Ok(store.resolve(&config_digest.to_string())?)
}

/// Is `path` (relative to the root) one of the guest agent's mount points?
fn agent_stub(path: &[u8], node: &tree::Node) -> bool {
    match path {
        b"dev" | b"proc" | b"sys" => node.is_dir(),
        b"etc/hostname" | b"etc/hosts" | b"etc/resolv.conf" => {
            node.kind() == rustix::fs::FileType::RegularFile
        }
        _ => false,
    }
}

fn walk_upper<W: Write>(
    tar: &mut TarOut<W>,
    dir: &OwnedFd,
    lower: Option<&OwnedFd>,
    prefix: &[u8],
    depth: usize,
) -> Result<(), CommitError> {
    if depth > MAX_DEPTH {
        return Err(CommitError::TooDeep);
    }
    let fail = |source| CommitError::Layer {
        path: std::path::PathBuf::from(String::from_utf8_lossy(prefix).into_owned()),
        source,
    };
    for node in tree::list(dir).map_err(fail)? {
        let path = tree::join(prefix, &node.name);
        if agent_stub(&path, &node) && !tree::exists(lower, &path) {
            continue;
        }
        if tree::is_whiteout(dir, &node) {
            tar.marker(
                &tree::join(prefix, &[b".wh.", &node.name[..]].concat()),
                &node.st,
                0o600,
            )
            .map_err(fail)?;
            continue;
        }
        if node.is_dir() {
            let sub = tree::open_sub(dir, &node.name).map_err(fail)?;
            // An `etc` made only for the agent's stubs is a stub too.
            if path == b"etc"
                && !tree::exists(lower, b"etc")
                && tree::list(&sub)
                    .map_err(fail)?
                    .iter()
                    .all(|n| agent_stub(&tree::join(b"etc", &n.name), n))
            {
                continue;
            }
            tar.entry(dir, &node, &path).map_err(fail)?;
            if tree::is_opaque(&sub) {
                tar.marker(&tree::join(&path, b".wh..wh..opq"), &node.st, node.perms())
                    .map_err(fail)?;
            }
            walk_upper(tar, &sub, lower, &path, depth + 1)?;
        } else {
            tar.entry(dir, &node, &path).map_err(fail)?;
        }
    }
    Ok(())
}

/// One `--change` instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `CMD ["a","b"]` or `CMD a b` (shell form: `/bin/sh -c`).
    Cmd(Vec<String>),
    /// `ENTRYPOINT …`, as CMD.
    Entrypoint(Vec<String>),
    /// `ENV K=V …` or `ENV K V`.
    Env(Vec<(String, String)>),
    /// `EXPOSE 80 53/udp`.
    Expose(Vec<String>),
    /// `LABEL k=v …`.
    Label(Vec<(String, String)>),
    /// `USER u[:g]`.
    User(String),
    /// `VOLUME /a` or `VOLUME ["/a","/b"]`.
    Volume(Vec<String>),
    /// `WORKDIR /p` (relative to the current one if relative).
    Workdir(String),
}

/// The `--change` instructions of a commit, applied in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitChanges {
    /// The instructions.
    pub changes: Vec<Change>,
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(s)
        .to_string()
}

fn pairs(rest: &str, line: &str) -> Result<Vec<(String, String)>, CommitError> {
    let bad = || CommitError::BadChange(line.to_string());
    if !rest.contains('=') {
        // Legacy `ENV K V`.
        let (k, v) = rest.split_once(char::is_whitespace).ok_or_else(bad)?;
        return Ok(vec![(k.to_string(), unquote(v))]);
    }
    words(rest)
        .ok_or_else(bad)?
        .into_iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            if k.is_empty() {
                return Err(bad());
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Splits at whitespace outside double quotes, dropping the quotes and
/// honouring backslash escapes (`B="two words"` is one word). `None` if a
/// quote is left open.
fn words(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut started) = (false, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(chars.next()?);
                started = true;
            }
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if quoted {
        return None;
    }
    if started {
        out.push(cur);
    }
    Some(out)
}

fn command(rest: &str, line: &str) -> Result<Vec<String>, CommitError> {
    if rest.starts_with('[') {
        serde_json::from_str(rest).map_err(|_| CommitError::BadChange(line.to_string()))
    } else {
        Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
    }
}

impl CommitChanges {
    /// Parses `--change` lines (Dockerfile instructions commit accepts).
    pub fn parse<S: AsRef<str>>(lines: &[S]) -> Result<CommitChanges, CommitError> {
        let mut changes = Vec::new();
        for line in lines {
            let line = line.as_ref().trim();
            let bad = || CommitError::BadChange(line.to_string());
            let (word, rest) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let rest = rest.trim();
            if rest.is_empty() {
                return Err(bad());
            }
            changes.push(match word.to_ascii_uppercase().as_str() {
                "CMD" => Change::Cmd(command(rest, line)?),
                "ENTRYPOINT" => Change::Entrypoint(command(rest, line)?),
                "ENV" => Change::Env(pairs(rest, line)?),
                "LABEL" => Change::Label(pairs(rest, line)?),
                "EXPOSE" => Change::Expose(
                    rest.split_whitespace()
                        .map(|p| {
                            if p.contains('/') {
                                p.to_string()
                            } else {
                                format!("{p}/tcp")
                            }
                        })
                        .collect(),
                ),
                "USER" => Change::User(unquote(rest)),
                "WORKDIR" => Change::Workdir(unquote(rest)),
                "VOLUME" if rest.starts_with('[') => {
                    Change::Volume(serde_json::from_str(rest).map_err(|_| bad())?)
                }
                "VOLUME" => Change::Volume(rest.split_whitespace().map(unquote).collect()),
                _ => return Err(bad()),
            });
        }
        Ok(CommitChanges { changes })
    }

    /// Applies the changes, in order, to an image config's `config` object
    /// (`husk commit --change`; `husk build` for its config instructions).
    pub fn apply(&self, cfg: &mut serde_json::Map<String, Value>) {
        for c in &self.changes {
            match c {
                Change::Cmd(v) => {
                    cfg.insert("Cmd".into(), json!(v));
                }
                Change::Entrypoint(v) => {
                    cfg.insert("Entrypoint".into(), json!(v));
                }
                Change::Env(kvs) => {
                    let mut env: Vec<String> = cfg
                        .get("Env")
                        .and_then(|e| serde_json::from_value(e.clone()).ok())
                        .unwrap_or_default();
                    for (k, v) in kvs {
                        let prefix = format!("{k}=");
                        env.retain(|e| !e.starts_with(&prefix) && e != k);
                        env.push(format!("{k}={v}"));
                    }
                    cfg.insert("Env".into(), json!(env));
                }
                Change::Label(kvs) => {
                    let labels = cfg.entry("Labels").or_insert_with(|| json!({}));
                    if !labels.is_object() {
                        *labels = json!({});
                    }
                    for (k, v) in kvs {
                        labels[k] = json!(v);
                    }
                }
                Change::Expose(ports) => {
                    let e = cfg.entry("ExposedPorts").or_insert_with(|| json!({}));
                    if !e.is_object() {
                        *e = json!({});
                    }
                    for p in ports {
                        e[p] = json!({});
                    }
                }
                Change::Volume(vols) => {
                    let e = cfg.entry("Volumes").or_insert_with(|| json!({}));
                    if !e.is_object() {
                        *e = json!({});
                    }
                    for v in vols {
                        e[v] = json!({});
                    }
                }
                Change::User(u) => {
                    cfg.insert("User".into(), json!(u));
                }
                Change::Workdir(w) => {
                    let w = if w.starts_with('/') {
                        w.clone()
                    } else {
                        let cur = cfg.get("WorkingDir").and_then(Value::as_str).unwrap_or("/");
                        format!("{}/{w}", cur.trim_end_matches('/'))
                    };
                    cfg.insert("WorkingDir".into(), json!(w));
                }
            }
        }
    }
}

/// What a commit records besides the layer.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// `--change` instructions.
    pub changes: CommitChanges,
    /// `--author`.
    pub author: Option<String>,
    /// `--message`: the config's and the history entry's comment.
    pub message: Option<String>,
    /// The history entry's `created_by` (Docker: the container's command).
    pub created_by: Option<String>,
    /// Creation time, RFC 3339 (default: now). Equal inputs and time give
    /// an equal image id.
    pub created: Option<String>,
    /// `REPO[:TAG]` to name the image (none: it stays unnamed, `<none>`).
    pub tag: Option<String>,
}

/// RFC 3339 UTC time of seconds since the epoch.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Commits the upper directory `upper` (over `lower`, the unpacked `base`)
/// as a new image on top of `base`: its layer, a config (the base's plus
/// the diff id, a history entry and the changes) and a manifest, named
/// `opts.tag` if given.
pub fn commit(
    store: &Store,
    base: &Image,
    upper: &Path,
    lower: &Path,
    opts: &CommitOptions,
) -> Result<Image, CommitError> {
    let name = match &opts.tag {
        Some(t) => Some(
            Reference::parse(t)
                .ok()
                .filter(|r| r.digest.is_none())
                .and_then(|r| r.tagged())
                .ok_or_else(|| CommitError::BadName(t.clone()))?,
        ),
        None => None,
    };
    let _gc = store.gc_guard()?;
    let info = store_upper_layer(store, upper, lower)?;

    let bad = |source| CommitError::BadConfig {
        image: base.id.clone(),
        source,
    };
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_slice(&base.config_raw).map_err(bad)?;
    let created = opts.created.clone().unwrap_or_else(|| {
        rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        )
    });
    config.insert("created".into(), json!(created));
    match &opts.author {
        Some(a) => config.insert("author".into(), json!(a)),
        None => config.remove("author"),
    };
    match &opts.message {
        Some(m) => config.insert("comment".into(), json!(m)),
        None => config.remove("comment"),
    };
    let cfg = config.entry("config").or_insert_with(|| json!({}));
    if !cfg.is_object() {
        *cfg = json!({});
    }
    if let Some(obj) = cfg.as_object_mut() {
        opts.changes.apply(obj);
    }
    let mut diff_ids = base.config.rootfs.diff_ids.clone();
    diff_ids.push(info.diff_id.clone());
    config.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let mut entry = json!({"created": created});
    if let Some(a) = &opts.author {
        entry["author"] = json!(a);
    }
    if let Some(c) = &opts.created_by {
        entry["created_by"] = json!(c);
    }
    if let Some(m) = &opts.message {
        entry["comment"] = json!(m);
    }
    let history = config.entry("history").or_insert_with(|| json!([]));
    match history.as_array_mut() {
        Some(h) => h.push(entry),
        None => *history = json!([entry]),
    }
    let docker = base.manifest.media_type.as_deref() == Some(spec::DOCKER_MANIFEST);
    let mut layers = base.manifest.layers.clone();
    layers.push(layer_descriptor(&info, docker));
    let config_bytes = serde_json::to_vec(&config).map_err(bad)?;
    put_image(
        store,
        &config_bytes,
        &layers,
        docker,
        &name.into_iter().collect::<Vec<_>>(),
    )
}
