//! The on-disk image store.
//!
//! Layout under the root (an OCI image layout plus husk's own directories):
//!
//! ```text
//! oci-layout              {"imageLayoutVersion":"1.0.0"}
//! index.json              OCI index: one entry per name (tag or digest) → image manifest
//! blobs/sha256/<hex>      content-addressed blobs (manifests, configs, layers), immutable
//! tmp/                    blobs being written; <hex>.partial: resumable downloads
//! rootfs/<chain-id-hex>/  unpacked image filesystems, shared read-only between containers
//! rootfs/<hex>.lock       held shared by every user of that rootfs, exclusive while unpacking
//! index.lock, gc.lock     advisory locks (see below)
//! auth.json               registry credentials (`husk login`), mode 0600
//! ```
//!
//! Safety against several husk processes at once and against crashes:
//! - a blob only appears under `blobs/` by `rename` after its content was verified
//!   against its digest and fsynced, so a blob file is always complete and correct;
//! - `index.json` is rewritten whole (temp file, fsync, rename) under `index.lock`;
//! - pulls and loads hold `gc.lock` shared; garbage collection (after `rmi`) runs only
//!   when it can take `gc.lock` exclusively, so it never deletes a blob a pull has just
//!   written but not yet named;
//! - a rootfs is unpacked into a temp directory and renamed into place when complete.
//!
//! A crash leaves at most files under `tmp/`, `rootfs/.tmp-*` (an unfinished unpack),
//! `rootfs/.trash-*` (an unfinished collection) and `.<file>.tmp-*` at the root (an
//! unfinished atomic write). Partial downloads are resumed; the rest is removed when
//! the store is next opened or collected, each only under the lock its writer holds
//! (see [`Store::collect_leftovers`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::fsutil::{self, FileLock};
use crate::reference::Reference;
use crate::spec::{
    self, ANNOTATION_REF_NAME, Descriptor, ImageConfig, Manifest, OCI_INDEX, OCI_MANIFEST,
};
use crate::unpack::{UnpackError, UnpackLimits, Unpacker};

/// Partial downloads untouched for this long are dropped by garbage collection.
const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Annotation on index entries: the digest the registry knows the image by.
pub const ANNOTATION_REPO_DIGEST: &str = "io.husk.repo.digest";

/// Errors from the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation on the store failed.
    #[error("image store: cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No image matches the name or id.
    #[error("No such image: {0}")]
    NotFound(String),
    /// A name to tag with is not a valid `name:tag` reference.
    #[error("invalid reference format: {0:?} (expected name[:tag])")]
    BadName(String),
    /// An id prefix matches more than one image.
    #[error("image id prefix {0} is ambiguous")]
    Ambiguous(String),
    /// Content did not hash to its expected digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The expected digest.
        expected: Digest,
        /// What the content hashed to.
        actual: Digest,
    },
    /// Content did not have its expected size.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The content's digest.
        digest: Digest,
        /// Declared size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A stored JSON document is malformed.
    #[error("image store: malformed {what} {digest}")]
    BadDocument {
        /// Which document.
        what: &'static str,
        /// Its digest (or file).
        digest: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A referenced blob is not in the store.
    #[error("image store: blob {0} is missing")]
    MissingBlob(Digest),
    /// `rmi` without force of an image with several names or in use.
    #[error("conflict: unable to remove {name}: {reason}")]
    Conflict {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// Unpacking the image's layers failed.
    #[error("cannot unpack image {image}")]
    Unpack {
        /// The image id.
        image: Digest,
        /// The cause.
        #[source]
        source: UnpackError,
    },
    /// The image's config and manifest disagree.
    #[error("image {0}: the config lists a different number of layers than the manifest")]
    LayerCountMismatch(Digest),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The OCI `index.json` husk keeps at the store root.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreIndex {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

impl Default for StoreIndex {
    fn default() -> Self {
        StoreIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: Vec::new(),
        }
    }
}

/// Keeps garbage collection from running while it lives (see
/// [`Store::gc_guard`]): blobs written meanwhile survive until named.
#[derive(Debug)]
pub struct GcGuard(#[allow(dead_code)] FileLock);

/// An image in the store.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image id: the digest of its config, as Docker reports it.
    pub id: Digest,
    /// The digest of its (single-platform) manifest.
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The parsed config.
    pub config: ImageConfig,
    /// The config blob as stored (for `inspect`).
    pub config_raw: Vec<u8>,
    /// Names pointing at it, in Docker's short form (`alpine:latest`).
    pub repo_tags: Vec<String>,
    /// `name@digest` forms (`alpine@sha256:…`).
    pub repo_digests: Vec<String>,
}

impl Image {
    /// Total size of the image's blobs (config plus compressed layers).
    pub fn size(&self) -> u64 {
        self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// The chain id of its layers: the key of its unpacked rootfs.
    pub fn chain_id(&self) -> Digest {
        spec::chain_id(&self.config.rootfs.diff_ids).unwrap_or_else(|| Digest::of(b""))
    }
}

/// One line of `husk images`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// Repository (`alpine`, `127.0.0.1:5000/app`), or `<none>`.
    pub repository: String,
    /// Tag, or `<none>`.
    pub tag: String,
    /// The manifest digest the registry knows it by, if known.
    pub digest: Option<Digest>,
    /// Image id.
    pub id: Digest,
    /// Creation time from the config (RFC 3339), if any.
    pub created: Option<String>,
    /// Size of the image's blobs in bytes.
    pub size: u64,
}

/// A rootfs directory unpacked from an image. While this value lives, a shared lock keeps
/// `rmi`'s garbage collection from deleting the directory.
#[derive(Debug)]
pub struct Rootfs {
    /// The directory. Treat it as read-only: it is shared by every container of the image.
    pub path: PathBuf,
    /// The chain id it was unpacked for.
    pub chain_id: Digest,
    _lease: FileLock,
}

/// The image store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The default store root: `$HUSK_ROOT` if set, else `/var/lib/husk` for root, else
    /// `$XDG_DATA_HOME/husk` or `~/.local/share/husk`.
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("HUSK_ROOT").filter(|r| !r.is_empty()) {
            return PathBuf::from(r);
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/husk");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("husk");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/husk")
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for dir in [
            root.clone(),
            root.join("blobs/sha256"),
            root.join("tmp"),
            root.join("rootfs"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            fsutil::write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io_err("write", &layout))?;
        }
        let store = Store { root };
        // Best effort: a store this process may not write to is still readable.
        if let Err(e) = store.collect_leftovers() {
            log::debug!("image store: leftovers not collected: {e}");
        }
        Ok(store)
    }

    /// Removes crash leftovers (see [`Store::gc`]) if no pull, load or
    /// collection is running now; otherwise leaves them for a later open or
    /// collection. Returns whether it ran.
    pub fn collect_leftovers(&self) -> Result<bool, StoreError> {
        let gc_path = self.root.join("gc.lock");
        let Some(_gc) = FileLock::try_exclusive(&gc_path).map_err(io_err("lock", &gc_path))? else {
            return Ok(false);
        };
        self.sweep_leftovers()?;
        Ok(true)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where registry credentials are kept.
    pub fn auth_path(&self) -> PathBuf {
        self.root.join("auth.json")
    }

    /// Path of a blob (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Is this blob in the store?
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Reads a small blob whole (bounded by `max` bytes) and checks its digest.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let f = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(d.clone())
            } else {
                StoreError::Io {
                    op: "read",
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let mut buf = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("read", &path))?;
        if buf.len() as u64 > max {
            return Err(StoreError::SizeMismatch {
                digest: d.clone(),
                expected: max,
                actual: buf.len() as u64,
            });
        }
        let actual = Digest::of(&buf);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(buf)
    }

    /// Opens a blob for streaming.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(d.clone())
            } else {
                StoreError::Io {
                    op: "open",
                    path,
                    source: e,
                }
            }
        })
    }

    /// Starts writing a new blob through a temp file.
    pub(crate) fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = self.tmp_dir().join(fsutil::unique_name("blob"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        Ok(BlobWriter {
            file,
            tmp,
            hasher: Sha256::new(),
            size: 0,
            blobs: self.root.join("blobs/sha256"),
        })
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(io_err("write", &w.tmp.clone()))?;
        w.commit(Some(&d), None)
    }

    /// Takes the lock that keeps garbage collection away while new blobs are
    /// unnamed (a pull, a load, a build between its first layer and its tag).
    pub fn gc_guard(&self) -> Result<GcGuard, StoreError> {
        let p = self.root.join("gc.lock");
        FileLock::shared(&p)
            .map(GcGuard)
            .map_err(io_err("lock", &p))
    }

    fn read_index(&self) -> Result<StoreIndex, StoreError> {
        let path = self.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::BadDocument {
                what: "index",
                digest: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(StoreIndex::default()),
            Err(e) => Err(StoreError::Io {
                op: "read",
                path,
                source: e,
            }),
        }
    }

    /// Read-modify-write of `index.json` under the index lock.
    fn update_index<T>(
        &self,
        f: impl FnOnce(&mut StoreIndex) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.root.join("index.lock");
        let _lock = FileLock::exclusive(&lock_path).map_err(io_err("lock", &lock_path))?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        let path = self.root.join("index.json");
        let bytes =
            serde_json::to_vec_pretty(&index).map_err(|source| StoreError::BadDocument {
                what: "index",
                digest: path.display().to_string(),
                source,
            })?;
        fsutil::write_atomic(&path, &bytes).map_err(io_err("write", &path))?;
        Ok(out)
    }

    /// Records an image (whose manifest, config and layer blobs are already stored) under
    /// `names` (full references such as `docker.io/library/alpine:latest`). A name already
    /// in use moves to this image. With no names, the image is kept unnamed.
    pub(crate) fn add_image(
        &self,
        manifest: &Descriptor,
        names: &[String],
        repo_digest: Option<&str>,
    ) -> Result<(), StoreError> {
        if !self.has_blob(&manifest.digest) {
            return Err(StoreError::MissingBlob(manifest.digest.clone()));
        }
        self.update_index(|index| {
            let mut entry = Descriptor {
                media_type: OCI_MANIFEST.to_string(),
                digest: manifest.digest.clone(),
                size: manifest.size,
                platform: None,
                annotations: BTreeMap::new(),
                urls: Vec::new(),
            };
            if !manifest.media_type.is_empty() {
                entry.media_type = manifest.media_type.clone();
            }
            if let Some(rd) = repo_digest {
                entry
                    .annotations
                    .insert(ANNOTATION_REPO_DIGEST.to_string(), rd.to_string());
            }
            if names.is_empty() {
                if !index.manifests.iter().any(|m| m.digest == manifest.digest) {
                    index.manifests.push(entry);
                }
                return Ok(());
            }
            for name in names {
                index
                    .manifests
                    .retain(|m| m.annotations.get(ANNOTATION_REF_NAME) != Some(name));
                // An unnamed entry for the same manifest is superseded by the name.
                index.manifests.retain(|m| {
                    m.digest != manifest.digest || m.annotations.contains_key(ANNOTATION_REF_NAME)
                });
                let mut e = entry.clone();
                e.annotations
                    .insert(ANNOTATION_REF_NAME.to_string(), name.clone());
                index.manifests.push(e);
            }
            Ok(())
        })
    }

    fn load_manifest(&self, d: &Digest) -> Result<Manifest, StoreError> {
        let bytes = self.read_blob(d, spec::MAX_DOCUMENT)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadDocument {
            what: "manifest",
            digest: d.to_string(),
            source,
        })
    }

    fn load_config(&self, d: &Digest) -> Result<(ImageConfig, Vec<u8>), StoreError> {
        let bytes = self.read_blob(d, spec::MAX_DOCUMENT)?;
        let config = serde_json::from_slice(&bytes).map_err(|source| StoreError::BadDocument {
            what: "config",
            digest: d.to_string(),
            source,
        })?;
        Ok((config, bytes))
    }

    /// Where the store's blobs are known to exist in registries: for each index
    /// entry with a repo digest (recorded by a pull or a push), that repository
    /// (`registry/path`, as a reference) and the digests of the manifest's config
    /// and layers.
    pub(crate) fn known_sources(&self) -> Result<Vec<(Reference, Vec<Digest>)>, StoreError> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for e in &index.manifests {
            let Some(r) = e
                .annotations
                .get(ANNOTATION_REPO_DIGEST)
                .and_then(|rd| Reference::parse(rd).ok())
            else {
                continue;
            };
            let Ok(m) = self.load_manifest(&e.digest) else {
                continue;
            };
            let mut blobs = vec![m.config.digest.clone()];
            blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
            out.push((r, blobs));
        }
        Ok(out)
    }

    /// Records that the image whose manifest is `manifest` is in a registry as
    /// `repo_digest` (`registry/path@sha256:…`), under `name` (a full reference),
    /// as after a push.
    pub(crate) fn record_repo_digest(
        &self,
        manifest: &Descriptor,
        name: Option<&str>,
        repo_digest: &str,
    ) -> Result<(), StoreError> {
        let names: Vec<String> = name.into_iter().map(str::to_string).collect();
        self.add_image(manifest, &names, Some(repo_digest))
    }

    /// Every image in the store, one entry per image (not per name).
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let index = self.read_index()?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for entry in &index.manifests {
            if !seen.insert(entry.digest.clone()) {
                continue;
            }
            out.push(self.image_for(&index, &entry.digest)?);
        }
        Ok(out)
    }

    /// The rows of `husk images`: one per name, newest first.
    pub fn images(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let index = self.read_index()?;
        let mut cache: BTreeMap<Digest, Image> = BTreeMap::new();
        let mut rows = Vec::new();
        for entry in &index.manifests {
            if !cache.contains_key(&entry.digest) {
                let img = self.image_for(&index, &entry.digest)?;
                cache.insert(entry.digest.clone(), img);
            }
            let img = &cache[&entry.digest];
            let repo_digest = entry
                .annotations
                .get(ANNOTATION_REPO_DIGEST)
                .and_then(|r| r.rsplit_once('@'))
                .and_then(|(_, d)| d.parse().ok());
            let (repository, tag) = match entry
                .annotations
                .get(ANNOTATION_REF_NAME)
                .and_then(|n| Reference::parse(n).ok())
            {
                Some(r) => (
                    r.familiar_name(),
                    r.tag.clone().unwrap_or_else(|| "<none>".to_string()),
                ),
                None => ("<none>".to_string(), "<none>".to_string()),
            };
            rows.push(ImageSummary {
                repository,
                tag,
                digest: repo_digest,
                id: img.id.clone(),
                created: img.config.created.clone(),
                size: img.size(),
            });
        }
        rows.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then_with(|| a.repository.cmp(&b.repository))
                .then_with(|| a.tag.cmp(&b.tag))
        });
        Ok(rows)
    }

    fn image_for(&self, index: &StoreIndex, manifest_digest: &Digest) -> Result<Image, StoreError> {
        let manifest = self.load_manifest(manifest_digest)?;
        let (config, config_raw) = self.load_config(&manifest.config.digest)?;
        let id = manifest.config.digest.clone();
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for e in &index.manifests {
            // Every entry whose manifest has the same config is the same image.
            if e.digest != *manifest_digest {
                let same = self
                    .load_manifest(&e.digest)
                    .map(|m| m.config.digest == id)
                    .unwrap_or(false);
                if !same {
                    continue;
                }
            }
            if let Some(r) = e
                .annotations
                .get(ANNOTATION_REF_NAME)
                .and_then(|n| Reference::parse(n).ok())
                && let Some(t) = &r.tag
            {
                let s = format!("{}:{t}", r.familiar_name());
                if !repo_tags.contains(&s) {
                    repo_tags.push(s);
                }
            }
            if let Some(rd) = e.annotations.get(ANNOTATION_REPO_DIGEST)
                && let Ok(r) = Reference::parse(rd)
            {
                let s = r.familiar();
                if !repo_digests.contains(&s) {
                    repo_digests.push(s);
                }
            }
        }
        Ok(Image {
            id,
            manifest_digest: manifest_digest.clone(),
            manifest,
            config,
            config_raw,
            repo_tags,
            repo_digests,
        })
    }

    /// Index entries matching a name, a `name@digest`, an image id, or an id prefix.
    /// The flag says whether they matched by name (rather than by id).
    fn find_entries(
        &self,
        index: &StoreIndex,
        query: &str,
    ) -> Result<(Vec<Descriptor>, bool), StoreError> {
        if let Ok(r) = Reference::parse(query) {
            let hits: Vec<Descriptor> = index
                .manifests
                .iter()
                .filter(|e| {
                    let Some(name) = e
                        .annotations
                        .get(ANNOTATION_REF_NAME)
                        .and_then(|n| Reference::parse(n).ok())
                    else {
                        return false;
                    };
                    if name.name() != r.name() {
                        return false;
                    }
                    match &r.digest {
                        Some(d) => {
                            e.digest == *d
                                || e.annotations
                                    .get(ANNOTATION_REPO_DIGEST)
                                    .is_some_and(|rd| rd.ends_with(&format!("@{d}")))
                        }
                        None => name.tag == r.tag && name.digest.is_none(),
                    }
                })
                .cloned()
                .collect();
            if !hits.is_empty() {
                return Ok((hits, true));
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.is_empty()
            || hex.len() > 64
            || !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(StoreError::NotFound(query.to_string()));
        }
        let mut ids = BTreeSet::new();
        let mut hits = Vec::new();
        for e in &index.manifests {
            let Ok(m) = self.load_manifest(&e.digest) else {
                continue;
            };
            if m.config.digest.hex().starts_with(hex) || e.digest.hex() == hex {
                ids.insert(m.config.digest.clone());
                hits.push(e.clone());
            }
        }
        match ids.len() {
            0 => Err(StoreError::NotFound(query.to_string())),
            1 => Ok((hits, false)),
            _ => Err(StoreError::Ambiguous(query.to_string())),
        }
    }

    /// Finds an image by name (`alpine`, `alpine:3`, `host:5000/app@sha256:…`), image id
    /// or unambiguous id prefix.
    pub fn resolve(&self, query: &str) -> Result<Image, StoreError> {
        let index = self.read_index()?;
        let (hits, _) = self.find_entries(&index, query)?;
        let first = hits
            .first()
            .ok_or_else(|| StoreError::NotFound(query.to_string()))?;
        self.image_for(&index, &first.digest)
    }

    /// `docker image inspect`-style JSON for one image.
    pub fn inspect(&self, query: &str) -> Result<serde_json::Value, StoreError> {
        let img = self.resolve(query)?;
        let raw: serde_json::Value =
            serde_json::from_slice(&img.config_raw).map_err(|source| StoreError::BadDocument {
                what: "config",
                digest: img.id.to_string(),
                source,
            })?;
        let mut obj = serde_json::Map::new();
        obj.insert("Id".into(), img.id.to_string().into());
        obj.insert("RepoTags".into(), img.repo_tags.clone().into());
        obj.insert("RepoDigests".into(), img.repo_digests.clone().into());
        obj.insert("Parent".into(), "".into());
        obj.insert(
            "Comment".into(),
            raw.get("comment").cloned().unwrap_or_else(|| "".into()),
        );
        obj.insert(
            "Created".into(),
            raw.get("created")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        );
        obj.insert(
            "Author".into(),
            raw.get("author").cloned().unwrap_or_else(|| "".into()),
        );
        obj.insert(
            "Config".into(),
            raw.get("config")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        );
        obj.insert(
            "Architecture".into(),
            img.config.architecture.clone().into(),
        );
        if let Some(v) = &img.config.variant {
            obj.insert("Variant".into(), v.clone().into());
        }
        obj.insert("Os".into(), img.config.os.clone().into());
        obj.insert("Size".into(), img.size().into());
        obj.insert(
            "RootFS".into(),
            serde_json::json!({
                "Type": "layers",
                "Layers": img.config.rootfs.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            }),
        );
        obj.insert(
            "Descriptor".into(),
            serde_json::json!({
                "mediaType": img.manifest.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.to_string()),
                "digest": img.manifest_digest.to_string(),
                "size": std::fs::metadata(self.blob_path(&img.manifest_digest)).map(|m| m.len()).unwrap_or(0),
            }),
        );
        obj.insert(
            "Metadata".into(),
            serde_json::json!({ "ChainID": img.chain_id().to_string() }),
        );
        Ok(serde_json::Value::Array(vec![serde_json::Value::Object(
            obj,
        )]))
    }

    /// Adds a name to an existing image (`docker tag`).
    pub fn tag(&self, query: &str, new_name: &str) -> Result<(), StoreError> {
        let img = self.resolve(query)?;
        let name = Reference::parse(new_name)
            .ok()
            .filter(|r| r.digest.is_none())
            .and_then(|r| r.tagged())
            .ok_or_else(|| StoreError::BadName(new_name.to_string()))?;
        let size = std::fs::metadata(self.blob_path(&img.manifest_digest))
            .map(|m| m.len())
            .unwrap_or(0);
        let desc = Descriptor {
            media_type: img
                .manifest
                .media_type
                .clone()
                .unwrap_or_else(|| OCI_MANIFEST.to_string()),
            digest: img.manifest_digest.clone(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
            urls: Vec::new(),
        };
        self.add_image(&desc, &[name], None)
    }

    /// Removes an image name (`husk rmi`), Docker's way: a name is untagged, and an image
    /// left with no names is deleted. By id, every name of the image goes; that needs
    /// `force` when the names span several repositories. Returns Docker's
    /// `Untagged: …` / `Deleted: …` lines. Unreferenced blobs and rootfs directories
    /// not in use are then garbage collected.
    pub fn remove(&self, query: &str, force: bool) -> Result<Vec<String>, StoreError> {
        let mut lines = Vec::new();
        let removed_ids = self.update_index(|index| {
            let (hits, by_name) = self.find_entries(index, query)?;
            let mut ids = BTreeSet::new();
            for h in &hits {
                ids.insert(self.load_manifest(&h.digest)?.config.digest);
            }
            let targets: Vec<Descriptor> = if by_name {
                hits
            } else {
                // By id: every entry of that image.
                let mut all = Vec::new();
                for e in &index.manifests {
                    if let Ok(m) = self.load_manifest(&e.digest)
                        && ids.contains(&m.config.digest)
                    {
                        all.push(e.clone());
                    }
                }
                let repos: BTreeSet<String> = all
                    .iter()
                    .filter_map(|e| e.annotations.get(ANNOTATION_REF_NAME))
                    .filter_map(|n| Reference::parse(n).ok())
                    .map(|r| r.name())
                    .collect();
                if repos.len() > 1 && !force {
                    return Err(StoreError::Conflict {
                        name: query.to_string(),
                        reason: "image is referenced in multiple repositories (must be forced)"
                            .to_string(),
                    });
                }
                all
            };
            for t in &targets {
                index.manifests.retain(|m| {
                    !(m.digest == t.digest
                        && m.annotations.get(ANNOTATION_REF_NAME)
                            == t.annotations.get(ANNOTATION_REF_NAME))
                });
                if let Some(n) = t
                    .annotations
                    .get(ANNOTATION_REF_NAME)
                    .and_then(|n| Reference::parse(n).ok())
                {
                    lines.push(format!("Untagged: {}", n.familiar()));
                }
            }
            // Which of those images have no entry left?
            let mut gone = Vec::new();
            for id in ids {
                let still = index.manifests.iter().any(|e| {
                    self.load_manifest(&e.digest)
                        .map(|m| m.config.digest == id)
                        .unwrap_or(false)
                });
                if !still {
                    gone.push(id);
                }
            }
            Ok(gone)
        })?;
        for id in removed_ids {
            lines.push(format!("Deleted: {id}"));
        }
        self.gc()?;
        Ok(lines)
    }

    /// Deletes blobs no image refers to and unpacked rootfs directories no image needs and
    /// no container holds. Skipped (returns `Ok(false)`) while a pull or load is running.
    pub fn gc(&self) -> Result<bool, StoreError> {
        let gc_path = self.root.join("gc.lock");
        let Some(_gc) = FileLock::try_exclusive(&gc_path).map_err(io_err("lock", &gc_path))? else {
            return Ok(false);
        };
        let index = self.read_index()?;
        let mut live: HashSet<String> = HashSet::new();
        let mut chains: HashSet<String> = HashSet::new();
        for e in &index.manifests {
            live.insert(e.digest.hex().to_string());
            let Ok(m) = self.load_manifest(&e.digest) else {
                // A damaged entry: do not guess what is live; sweep nothing.
                log::warn!(
                    "image store: manifest {} unreadable; skipping garbage collection",
                    e.digest
                );
                return Ok(false);
            };
            live.insert(m.config.digest.hex().to_string());
            for l in &m.layers {
                live.insert(l.digest.hex().to_string());
            }
            if let Ok((c, _)) = self.load_config(&m.config.digest) {
                chains.insert(
                    spec::chain_id(&c.rootfs.diff_ids)
                        .unwrap_or_else(|| Digest::of(b""))
                        .hex()
                        .to_string(),
                );
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(io_err("list", &blobs))? {
            let entry = entry.map_err(io_err("list", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in std::fs::read_dir(&rootfs).map_err(io_err("list", &rootfs))? {
            let entry = entry.map_err(io_err("list", &rootfs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".lock") || chains.contains(&name) {
                continue;
            }
            let lock_path = rootfs.join(format!("{name}.lock"));
            if let Some(_l) =
                FileLock::try_exclusive(&lock_path).map_err(io_err("lock", &lock_path))?
            {
                let trash = rootfs.join(fsutil::unique_name(".trash"));
                let p = entry.path();
                std::fs::rename(&p, &trash).map_err(io_err("rename", &p))?;
                std::fs::remove_dir_all(&trash).map_err(io_err("remove", &trash))?;
            }
        }
        self.sweep_leftovers()?;
        Ok(true)
    }

    /// Removes what crashed processes left: blob temp files (`tmp/blob-*`),
    /// partial downloads nobody resumed for a week (`tmp/*.partial`),
    /// half-written index files (`.index.json.tmp-*`), other atomic-write temp
    /// files at the root whose writer is gone (`.auth.json.tmp-*`, which may
    /// hold credentials), rootfs directories a garbage collection was deleting
    /// (`rootfs/.trash-*`) and unfinished unpacks (`rootfs/.tmp-<chain>-*`).
    ///
    /// The caller holds `gc.lock` exclusively: no pull or load is writing blobs
    /// and no other collection runs. Each other leftover is removed only under
    /// the lock its writer holds (`index.lock`; `rootfs/<chain>.lock`
    /// exclusively, so nobody is unpacking that chain), or when the process
    /// named in it has exited.
    fn sweep_leftovers(&self) -> Result<(), StoreError> {
        let tmp = self.tmp_dir();
        for entry in std::fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let entry = entry.map_err(io_err("list", &tmp))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_partial = name.ends_with(".partial")
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > PARTIAL_MAX_AGE);
            if name.starts_with("blob-") || stale_partial {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        {
            let lock_path = self.root.join("index.lock");
            let _lock = FileLock::exclusive(&lock_path).map_err(io_err("lock", &lock_path))?;
            for entry in std::fs::read_dir(&self.root).map_err(io_err("list", &self.root))? {
                let entry = entry.map_err(io_err("list", &self.root))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // The index's temp files are written under the index lock we hold.
                let index_tmp = name.starts_with(".index.json.tmp");
                // Others (credentials, oci-layout): when their writer has exited.
                let orphan = name.starts_with('.')
                    && temp_owner(&name, ".tmp-").is_some_and(|pid| !process_exists(pid));
                if (index_tmp || orphan) && entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let rootfs = self.root.join("rootfs");
        let dir = fsutil::open_dir(&rootfs).map_err(io_err("open", &rootfs))?;
        for entry in std::fs::read_dir(&rootfs).map_err(io_err("list", &rootfs))? {
            let entry = entry.map_err(io_err("list", &rootfs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let _chain_lock = if name.starts_with(".trash-") {
                // Only a collection makes these, and none other runs: its
                // rootfs was already out of use when it was renamed here.
                None
            } else if let Some(chain) = name
                .strip_prefix(".tmp-")
                .and_then(|rest| rest.split('-').next())
                .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                let lock_path = rootfs.join(format!("{chain}.lock"));
                match FileLock::try_exclusive(&lock_path).map_err(io_err("lock", &lock_path))? {
                    Some(l) => Some(l),
                    // Someone is unpacking or using that chain: leave it.
                    None => continue,
                }
            } else {
                continue;
            };
            if let Err(e) = fsutil::remove_all_at(&dir, entry.file_name().as_os_str()) {
                log::warn!(
                    "image store: cannot remove the leftover {}: {e}",
                    entry.path().display()
                );
            }
        }
        Ok(())
    }

    /// The unpacked rootfs of an image, unpacking it first if no process has yet. The
    /// directory is shared by every container of the image (and of any image with the
    /// same layers); keep the returned value alive while it is in use.
    pub fn rootfs(&self, image: &Image, limits: UnpackLimits) -> Result<Rootfs, StoreError> {
        let chain = image.chain_id();
        let dir = self.root.join("rootfs");
        let final_path = dir.join(chain.hex());
        let lock_path = dir.join(format!("{}.lock", chain.hex()));
        // Usually it exists: share it. Otherwise unpack under the exclusive lock (which
        // waits for no one, since no lease exists for a rootfs not yet there).
        let mut lock = FileLock::shared(&lock_path).map_err(io_err("lock", &lock_path))?;
        if !final_path.is_dir() {
            drop(lock);
            lock = FileLock::exclusive(&lock_path).map_err(io_err("lock", &lock_path))?;
            if !final_path.is_dir() {
                self.unpack_into(image, &dir, &final_path, limits)?;
            }
            lock.downgrade().map_err(io_err("lock", &lock_path))?;
        }
        Ok(Rootfs {
            path: final_path,
            chain_id: chain,
            _lease: lock,
        })
    }

    fn unpack_into(
        &self,
        image: &Image,
        dir: &Path,
        final_path: &Path,
        limits: UnpackLimits,
    ) -> Result<(), StoreError> {
        let chain_hex = image.chain_id().hex().to_string();
        // We hold the exclusive lock: temp dirs for this chain are from crashed processes.
        let stale_prefix = format!(".tmp-{chain_hex}");
        for entry in std::fs::read_dir(dir)
            .map_err(io_err("list", dir))?
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&stale_prefix)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let diff_ids = &image.config.rootfs.diff_ids;
        if diff_ids.len() != image.manifest.layers.len() {
            return Err(StoreError::LayerCountMismatch(image.id.clone()));
        }
        let tmp = dir.join(fsutil::unique_name(&stale_prefix));
        std::fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        let result = (|| {
            let mut unpacker =
                Unpacker::new(&tmp, limits).map_err(|source| StoreError::Unpack {
                    image: image.id.clone(),
                    source,
                })?;
            for (layer, diff_id) in image.manifest.layers.iter().zip(diff_ids) {
                let blob = self.open_blob(&layer.digest)?;
                unpacker
                    .apply_compressed(blob, Some(diff_id))
                    .map_err(|source| StoreError::Unpack {
                        image: image.id.clone(),
                        source,
                    })?;
            }
            let fd = File::open(&tmp).map_err(io_err("open", &tmp))?;
            rustix::fs::syncfs(&fd).map_err(|e| StoreError::Io {
                op: "sync",
                path: tmp.clone(),
                source: e.into(),
            })?;
            std::fs::rename(&tmp, final_path).map_err(io_err("rename", &tmp))?;
            fsutil::sync_dir(dir).map_err(io_err("sync", dir))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }
}

/// The process id in a temp name made by `fsutil::unique_name`
/// (`<prefix><marker><pid>-<nanos>-<n>`), if it has that shape.
fn temp_owner(name: &str, marker: &str) -> Option<u32> {
    let (_, rest) = name.split_once(marker)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse::<u32>().ok()?;
    parts.next()?.parse::<u128>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some(pid)
}

/// Whether a process with this id exists (in this pid namespace). When in
/// doubt, yes.
fn process_exists(pid: u32) -> bool {
    pid == std::process::id()
        || !matches!(
            std::fs::metadata(format!("/proc/{pid}")),
            Err(e) if e.kind() == io::ErrorKind::NotFound
        )
}

/// A blob being written: hashed as it goes, renamed into place by [`BlobWriter::commit`].
#[derive(Debug)]
pub(crate) struct BlobWriter {
    file: File,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
    blobs: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Finishes writing: fsyncs the temp file and computes its digest. The blob is not
    /// visible until [`StagedBlob::commit`].
    pub(crate) fn finish(mut self) -> Result<StagedBlob, StoreError> {
        let digest = Digest::from_hasher(std::mem::take(&mut self.hasher));
        self.file.sync_all().map_err(io_err("sync", &self.tmp))?;
        let tmp = std::mem::take(&mut self.tmp);
        Ok(StagedBlob {
            tmp,
            digest,
            size: self.size,
            blobs: self.blobs.clone(),
        })
    }

    /// Verifies digest (and size, if given), fsyncs and renames into `blobs/`. On
    /// mismatch the temp file is deleted and nothing is stored.
    pub(crate) fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<Digest, StoreError> {
        let staged = self.finish()?;
        if let Some(e) = expected
            && *e != staged.digest
        {
            return Err(StoreError::DigestMismatch {
                expected: e.clone(),
                actual: staged.digest.clone(),
            });
        }
        if let Some(s) = expected_size
            && s != staged.size
        {
            return Err(StoreError::SizeMismatch {
                digest: staged.digest.clone(),
                expected: s,
                actual: staged.size,
            });
        }
        staged.commit()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A fully written, hashed blob in `tmp/`, deleted on drop unless committed.
#[derive(Debug)]
pub(crate) struct StagedBlob {
    tmp: PathBuf,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    blobs: PathBuf,
}

impl StagedBlob {
    /// Opens the staged content for reading.
    pub(crate) fn open(&self) -> io::Result<File> {
        File::open(&self.tmp)
    }

    /// Renames the blob into `blobs/` under its digest.
    pub(crate) fn commit(mut self) -> Result<Digest, StoreError> {
        let dest = self.blobs.join(self.digest.hex());
        std::fs::rename(&self.tmp, &dest).map_err(io_err("rename", &self.tmp))?;
        fsutil::sync_dir(&self.blobs).map_err(io_err("sync", &self.blobs))?;
        self.tmp = PathBuf::new();
        Ok(self.digest.clone())
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn leftovers_of_crashes_are_collected_when_the_store_is_opened() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let root = store.root().to_path_buf();
        // A collection that crashed while deleting a rootfs.
        let trash = root.join("rootfs/.trash-1-2-3");
        std::fs::create_dir_all(trash.join("usr/bin")).unwrap();
        std::fs::write(trash.join("usr/bin/sh"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", trash.join("etc")).unwrap();
        // An unpack that crashed.
        let unpack = root.join(format!("rootfs/.tmp-{}-4-5-6", chain()));
        std::fs::create_dir_all(unpack.join("bin")).unwrap();
        // A blob write and an index write that crashed; a dead writer's
        // credentials temp file (pid beyond pid_max).
        std::fs::write(root.join("tmp/blob-7-8-9"), b"half").unwrap();
        std::fs::write(root.join(".index.json.tmp-7-8-9"), b"{").unwrap();
        std::fs::write(root.join(".auth.json.tmp-99999999-8-9"), b"secret").unwrap();
        // Not leftovers: a fresh partial download (resumable), a live
        // writer's temp file, an unrelated name.
        std::fs::write(root.join("tmp/abc.partial"), b"part").unwrap();
        let live = format!(".auth.json.tmp-{}-8-9", std::process::id());
        std::fs::write(root.join(&live), b"mine").unwrap();
        std::fs::create_dir(root.join("rootfs/.keep")).unwrap();

        let store = Store::open(&root).unwrap();
        assert!(!trash.exists());
        assert!(!unpack.exists());
        assert!(!root.join("tmp/blob-7-8-9").exists());
        assert!(!root.join(".index.json.tmp-7-8-9").exists());
        assert!(!root.join(".auth.json.tmp-99999999-8-9").exists());
        assert!(
            Path::new("/etc").is_dir(),
            "a symlink in the trash was followed"
        );
        assert!(root.join("tmp/abc.partial").exists());
        assert!(root.join(&live).exists());
        assert!(root.join("rootfs/.keep").exists());
        assert!(root.join("oci-layout").exists());
        // And in garbage collection.
        std::fs::create_dir(root.join("rootfs/.trash-9-9-9")).unwrap();
        assert!(store.gc().unwrap());
        assert!(!root.join("rootfs/.trash-9-9-9").exists());
    }

    #[test]
    fn leftovers_in_use_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let root = store.root().to_path_buf();
        let unpack = root.join(format!("rootfs/.tmp-{}-4-5-6", chain()));
        std::fs::create_dir_all(&unpack).unwrap();
        std::fs::write(root.join("tmp/blob-7-8-9"), b"half").unwrap();
        // Someone unpacks that chain: its temp dir stays.
        let chain_lock =
            FileLock::exclusive(&root.join(format!("rootfs/{}.lock", chain()))).unwrap();
        assert!(store.collect_leftovers().unwrap());
        assert!(unpack.exists());
        assert!(!root.join("tmp/blob-7-8-9").exists());
        drop(chain_lock);
        // A pull or load is writing blobs: nothing is touched.
        std::fs::write(root.join("tmp/blob-7-8-9"), b"half").unwrap();
        let guard = store.gc_guard().unwrap();
        assert!(!store.collect_leftovers().unwrap());
        let _ = Store::open(&root).unwrap();
        assert!(root.join("tmp/blob-7-8-9").exists());
        assert!(unpack.exists());
        drop(guard);
        assert!(store.collect_leftovers().unwrap());
        assert!(!unpack.exists());
        assert!(!root.join("tmp/blob-7-8-9").exists());
    }

    #[test]
    fn temp_names() {
        assert_eq!(temp_owner(".auth.json.tmp-12-34-5", ".tmp-"), Some(12));
        assert_eq!(temp_owner(".auth.json.tmp-12-34", ".tmp-"), None);
        assert_eq!(temp_owner(".auth.json.tmp-x-34-5", ".tmp-"), None);
        assert_eq!(temp_owner("auth.json", ".tmp-"), None);
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(99_999_999));
    }
}
