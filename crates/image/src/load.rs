//! `husk load`: images from `docker save` tars, OCI archives (a tar of an OCI image
//! layout) and OCI layout directories, offline.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::reference::Reference;
use crate::spec::{
    self, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, DockerSaveEntry,
    ImageConfig, Index, Manifest,
};
use crate::store::{StagedBlob, Store, StoreError};
use crate::unpack::{self, UnpackError};

/// Errors from loading an archive.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The input is not a readable (optionally compressed) tar.
    #[error("cannot read the archive")]
    Archive(#[source] UnpackError),
    /// Reading a layout directory failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Neither `manifest.json` (docker save) nor `index.json` + `oci-layout` (OCI).
    #[error("not a docker save tar or OCI archive: no manifest.json or index.json found")]
    UnknownFormat,
    /// A JSON document in the archive is malformed.
    #[error("malformed {what} in the archive")]
    BadDocument {
        /// Which document.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A file the archive's manifest names is missing.
    #[error("the archive lacks {0}, which its manifest refers to")]
    Missing(String),
    /// A blob's content does not match its name.
    #[error("blob {path} in the archive hashes to {actual}")]
    Corrupt {
        /// Its path in the archive.
        path: String,
        /// What it hashes to.
        actual: Digest,
    },
    /// A layer's content does not match the config's diff id.
    #[error("layer {path} does not match the image config (diff id {expected}, content {actual})")]
    DiffIdMismatch {
        /// The layer's path.
        path: String,
        /// From the config.
        expected: Digest,
        /// Its content.
        actual: Digest,
    },
    /// A name in the archive is not a valid reference.
    #[error("invalid image name {0:?} in the archive")]
    BadName(String),
    /// An OCI archive index without a linux/amd64 image.
    #[error("the archive's index has no linux/amd64 image")]
    NoPlatform,
    /// Media types husk does not handle.
    #[error("unsupported media type {0:?} in the archive")]
    UnsupportedMediaType(String),
}

/// One image loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Image id.
    pub id: Digest,
    /// Names given to it (short form: `busybox:latest`).
    pub names: Vec<String>,
}

impl Loaded {
    /// Docker's output lines: `Loaded image: NAME` per name, or `Loaded image ID: ID`.
    pub fn lines(&self) -> Vec<String> {
        if self.names.is_empty() {
            vec![format!("Loaded image ID: {}", self.id)]
        } else {
            self.names
                .iter()
                .map(|n| format!("Loaded image: {n}"))
                .collect()
        }
    }
}

/// Small documents kept in memory while reading an archive.
const MAX_SMALL: u64 = spec::MAX_DOCUMENT;
/// Total bytes of documents kept in memory.
const MAX_SMALL_TOTAL: u64 = 64 << 20;
/// Files accepted in an archive.
const MAX_FILES: usize = 100_000;

/// Where an archive's files come from.
trait Source {
    /// A small file's bytes, if present.
    fn small(&mut self, path: &str) -> Result<Option<Vec<u8>>, LoadError>;
    /// Stores a file as a blob (checking it against `expected` when given). `None` if absent.
    fn store(
        &mut self,
        path: &str,
        expected: Option<&Digest>,
    ) -> Result<Option<(Digest, u64)>, LoadError>;
    /// The first bytes of a file.
    fn head(&mut self, path: &str) -> Result<Vec<u8>, LoadError>;
    /// Does a file exist?
    fn has(&self, path: &str) -> bool;
}

/// A tar read once into staged blobs (plus small documents in memory).
struct TarSource {
    staged: BTreeMap<String, StagedBlob>,
    small: BTreeMap<String, Vec<u8>>,
    committed: BTreeMap<String, (Digest, u64)>,
    /// The first bytes of committed files (images of one archive share layers).
    heads: BTreeMap<String, Vec<u8>>,
}

impl Source for TarSource {
    fn small(&mut self, path: &str) -> Result<Option<Vec<u8>>, LoadError> {
        if let Some(b) = self.small.get(path) {
            return Ok(Some(b.clone()));
        }
        let Some(s) = self.staged.get(path) else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        s.open()
            .and_then(|f| f.take(MAX_SMALL + 1).read_to_end(&mut buf))
            .map_err(|source| LoadError::Io {
                path: PathBuf::from(path),
                source,
            })?;
        Ok(Some(buf))
    }

    fn store(
        &mut self,
        path: &str,
        expected: Option<&Digest>,
    ) -> Result<Option<(Digest, u64)>, LoadError> {
        if let Some(done) = self.committed.get(path) {
            return Ok(Some(done.clone()));
        }
        if !self.staged.contains_key(path) {
            return Ok(None);
        }
        let head = self.head(path)?;
        self.heads.insert(path.to_string(), head);
        let Some(staged) = self.staged.remove(path) else {
            return Ok(None);
        };
        if let Some(e) = expected
            && *e != staged.digest
        {
            return Err(LoadError::Corrupt {
                path: path.to_string(),
                actual: staged.digest.clone(),
            });
        }
        let size = staged.size;
        let d = staged.commit()?;
        self.committed.insert(path.to_string(), (d.clone(), size));
        Ok(Some((d, size)))
    }

    fn head(&mut self, path: &str) -> Result<Vec<u8>, LoadError> {
        if let Some(h) = self.heads.get(path) {
            return Ok(h.clone());
        }
        let Some(s) = self.staged.get(path) else {
            return Ok(Vec::new());
        };
        let mut buf = Vec::new();
        s.open()
            .and_then(|f| f.take(8).read_to_end(&mut buf))
            .map_err(|source| LoadError::Io {
                path: PathBuf::from(path),
                source,
            })?;
        Ok(buf)
    }

    fn has(&self, path: &str) -> bool {
        self.staged.contains_key(path) || self.small.contains_key(path)
    }
}

/// An OCI layout directory.
struct DirSource<'a> {
    dir: PathBuf,
    store: &'a Store,
}

impl DirSource<'_> {
    fn path(&self, p: &str) -> Result<PathBuf, LoadError> {
        Ok(self.dir.join(clean(p)?))
    }
}

impl Source for DirSource<'_> {
    fn small(&mut self, path: &str) -> Result<Option<Vec<u8>>, LoadError> {
        let p = self.path(path)?;
        match File::open(&p) {
            Ok(f) => {
                let mut buf = Vec::new();
                f.take(MAX_SMALL + 1)
                    .read_to_end(&mut buf)
                    .map_err(|source| LoadError::Io { path: p, source })?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LoadError::Io { path: p, source }),
        }
    }

    fn store(
        &mut self,
        path: &str,
        expected: Option<&Digest>,
    ) -> Result<Option<(Digest, u64)>, LoadError> {
        let p = self.path(path)?;
        let mut f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LoadError::Io { path: p, source }),
        };
        if let Some(e) = expected
            && self.store.has_blob(e)
        {
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            return Ok(Some((e.clone(), size)));
        }
        let mut w = self.store.blob_writer()?;
        io::copy(&mut f, &mut w).map_err(|source| LoadError::Io {
            path: p.clone(),
            source,
        })?;
        let staged = w.finish()?;
        if let Some(e) = expected
            && *e != staged.digest
        {
            return Err(LoadError::Corrupt {
                path: path.to_string(),
                actual: staged.digest.clone(),
            });
        }
        let size = staged.size;
        Ok(Some((staged.commit()?, size)))
    }

    fn head(&mut self, path: &str) -> Result<Vec<u8>, LoadError> {
        let p = self.path(path)?;
        let mut buf = Vec::new();
        File::open(&p)
            .and_then(|f| f.take(8).read_to_end(&mut buf))
            .map_err(|source| LoadError::Io { path: p, source })?;
        Ok(buf)
    }

    fn has(&self, path: &str) -> bool {
        self.path(path).map(|p| p.exists()).unwrap_or(false)
    }
}

/// Loads every image in a `docker save` tar or an OCI archive (either may be gzip or
/// zstd compressed) read from `input`. `name` names an OCI archive's images that carry
/// only a tag (or nothing) in their annotations.
pub fn load(store: &Store, input: impl Read, name: Option<&str>) -> Result<Vec<Loaded>, LoadError> {
    let _gc = store.gc_guard()?;
    let mut reader = unpack::decompress(input).map_err(LoadError::Archive)?;
    let mut src = TarSource {
        staged: BTreeMap::new(),
        small: BTreeMap::new(),
        committed: BTreeMap::new(),
        heads: BTreeMap::new(),
    };
    let mut small_total = 0u64;
    let mut files = 0usize;
    unpack::walk_tar(&mut reader, &mut |meta, data| {
        if !matches!(
            meta.kind,
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            return Ok(());
        }
        files += 1;
        if files > MAX_FILES {
            return Err(UnpackError::TooManyEntries {
                limit: MAX_FILES as u64,
            });
        }
        let comps = unpack::checked_components(&meta.path)?;
        let path = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
        let io_fail = |source| UnpackError::Tar(source);
        let mut w = store
            .blob_writer()
            .map_err(|e| UnpackError::Tar(io::Error::other(e)))?;
        let keep_small = meta.size <= MAX_SMALL
            && small_total + meta.size <= MAX_SMALL_TOTAL
            && (path.ends_with(".json") || path == "oci-layout" || path == "repositories");
        if keep_small {
            let mut buf = Vec::with_capacity(meta.size as usize);
            data.take(meta.size)
                .read_to_end(&mut buf)
                .map_err(io_fail)?;
            small_total += buf.len() as u64;
            io::Write::write_all(&mut w, &buf).map_err(io_fail)?;
            src.small.insert(path.clone(), buf);
        } else {
            io::copy(&mut data.take(meta.size), &mut w).map_err(io_fail)?;
        }
        let staged = w
            .finish()
            .map_err(|e| UnpackError::Tar(io::Error::other(e)))?;
        src.staged.insert(path, staged);
        Ok(())
    })
    .map_err(LoadError::Archive)?;
    if src.has("manifest.json") {
        load_docker_save(store, &mut src)
    } else if src.has("index.json") {
        load_oci(store, &mut src, name)
    } else {
        Err(LoadError::UnknownFormat)
    }
}

/// Loads the images of an OCI image layout directory.
pub fn load_layout(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
) -> Result<Vec<Loaded>, LoadError> {
    let _gc = store.gc_guard()?;
    let mut src = DirSource {
        dir: dir.to_path_buf(),
        store,
    };
    if !src.has("index.json") {
        return Err(LoadError::UnknownFormat);
    }
    load_oci(store, &mut src, name)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, LoadError> {
    serde_json::from_slice(bytes).map_err(|source| LoadError::BadDocument {
        what: what.to_string(),
        source,
    })
}

fn short_name(full: &str) -> String {
    Reference::parse(full)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| full.to_string())
}

fn load_docker_save(store: &Store, src: &mut dyn Source) -> Result<Vec<Loaded>, LoadError> {
    let bytes = src
        .small("manifest.json")?
        .ok_or_else(|| LoadError::Missing("manifest.json".into()))?;
    let entries: Vec<DockerSaveEntry> = parse("manifest.json", &bytes)?;
    let mut out = Vec::new();
    for entry in entries {
        let config_path = clean(&entry.config)?;
        let config_bytes = src
            .small(&config_path)?
            .ok_or_else(|| LoadError::Missing(entry.config.clone()))?;
        let config: ImageConfig = parse(&entry.config, &config_bytes)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(LoadError::Store(StoreError::LayerCountMismatch(
                Digest::of(&config_bytes),
            )));
        }
        let (config_digest, config_size) = src
            .store(&config_path, None)?
            .ok_or_else(|| LoadError::Missing(entry.config.clone()))?;
        let mut layers = Vec::new();
        let mut seen: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
        for (layer, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let path = clean(layer)?;
            let head = src.head(&path)?;
            let media_type = match unpack::sniff(&head) {
                unpack::Compression::Gzip => spec::OCI_LAYER_GZIP,
                unpack::Compression::Zstd => spec::OCI_LAYER_ZSTD,
                _ => spec::OCI_LAYER_TAR,
            };
            let (digest, size) = match seen.get(&path) {
                Some(v) => v.clone(),
                None => {
                    // Newer docker save writes layers as blobs/sha256/<hex>.
                    let expected = blob_digest_of_path(&path);
                    let v = src
                        .store(&path, expected.as_ref())?
                        .ok_or_else(|| LoadError::Missing(layer.clone()))?;
                    seen.insert(path.clone(), v.clone());
                    v
                }
            };
            if media_type == spec::OCI_LAYER_TAR && digest != *diff_id {
                return Err(LoadError::DiffIdMismatch {
                    path: layer.clone(),
                    expected: diff_id.clone(),
                    actual: digest,
                });
            }
            layers.push(descriptor(media_type, digest, size));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(spec::OCI_MANIFEST.to_string()),
            config: descriptor(spec::OCI_CONFIG, config_digest.clone(), config_size),
            layers,
            annotations: BTreeMap::new(),
        };
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|source| LoadError::BadDocument {
                what: "generated manifest".into(),
                source,
            })?;
        let manifest_digest = store.put_blob(&manifest_bytes)?;
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&tag).map_err(|_| LoadError::BadName(tag.clone()))?;
            names.push(r.tagged().ok_or_else(|| LoadError::BadName(tag.clone()))?);
        }
        store.add_image(
            &descriptor(
                spec::OCI_MANIFEST,
                manifest_digest,
                manifest_bytes.len() as u64,
            ),
            &names,
            None,
        )?;
        out.push(Loaded {
            id: config_digest,
            names: names.iter().map(|n| short_name(n)).collect(),
        });
    }
    Ok(out)
}

fn load_oci(
    store: &Store,
    src: &mut dyn Source,
    name: Option<&str>,
) -> Result<Vec<Loaded>, LoadError> {
    let bytes = src
        .small("index.json")?
        .ok_or_else(|| LoadError::Missing("index.json".into()))?;
    let index: Index = parse("index.json", &bytes)?;
    let mut out = Vec::new();
    for top in &index.manifests {
        let names = oci_names(top, name)?;
        let mut desc = top.clone();
        if spec::is_index(&desc.media_type) {
            let b = read_blob(src, &desc.digest)?;
            let nested: Index = parse("nested index", &b)?;
            desc = nested
                .pick_linux_amd64()
                .cloned()
                .ok_or(LoadError::NoPlatform)?;
        } else if !spec::is_manifest(&desc.media_type) {
            return Err(LoadError::UnsupportedMediaType(desc.media_type.clone()));
        }
        let manifest_bytes = read_blob(src, &desc.digest)?;
        let manifest: Manifest = parse("manifest", &manifest_bytes)?;
        for l in &manifest.layers {
            if !spec::is_supported_layer(&l.media_type) {
                return Err(LoadError::UnsupportedMediaType(l.media_type.clone()));
            }
        }
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if store.has_blob(&d.digest) {
                continue;
            }
            let path = blob_path(&d.digest);
            src.store(&path, Some(&d.digest))?
                .ok_or_else(|| LoadError::Missing(path.clone()))?;
        }
        let stored = store.put_blob(&manifest_bytes)?;
        debug_assert_eq!(stored, desc.digest);
        store.add_image(
            &descriptor(
                &desc.media_type,
                desc.digest.clone(),
                manifest_bytes.len() as u64,
            ),
            &names,
            None,
        )?;
        out.push(Loaded {
            id: manifest.config.digest.clone(),
            names: names.iter().map(|n| short_name(n)).collect(),
        });
    }
    Ok(out)
}

/// Full names for an OCI index entry: containerd's full-name annotation, or a full
/// reference in `ref.name`, or `ref.name` as a tag of `name`, or `name` itself.
fn oci_names(desc: &Descriptor, name: Option<&str>) -> Result<Vec<String>, LoadError> {
    let full = |s: &str| -> Result<String, LoadError> {
        Reference::parse(s)
            .ok()
            .and_then(|r| r.tagged())
            .ok_or_else(|| LoadError::BadName(s.to_string()))
    };
    if let Some(n) = desc.annotations.get(ANNOTATION_CONTAINERD_NAME) {
        return Ok(vec![full(n)?]);
    }
    match (desc.annotations.get(ANNOTATION_REF_NAME), name) {
        (Some(r), _) if r.contains('/') || r.contains(':') => Ok(vec![full(r)?]),
        (Some(tag), Some(n)) => {
            let base = Reference::parse(n).map_err(|_| LoadError::BadName(n.to_string()))?;
            Ok(vec![full(&format!("{}:{tag}", base.name()))?])
        }
        (None, Some(n)) => Ok(vec![full(n)?]),
        (Some(_), None) | (None, None) => Ok(Vec::new()),
    }
}

fn read_blob(src: &mut dyn Source, d: &Digest) -> Result<Vec<u8>, LoadError> {
    let path = blob_path(d);
    let b = src
        .small(&path)?
        .ok_or_else(|| LoadError::Missing(path.clone()))?;
    let actual = Digest::of(&b);
    if actual != *d {
        return Err(LoadError::Corrupt { path, actual });
    }
    Ok(b)
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn blob_digest_of_path(path: &str) -> Option<Digest> {
    path.strip_prefix("blobs/sha256/")
        .and_then(|h| format!("sha256:{h}").parse().ok())
}

fn clean(p: &str) -> Result<String, LoadError> {
    let comps = unpack::checked_components(p.as_bytes()).map_err(LoadError::Archive)?;
    Ok(String::from_utf8_lossy(&comps.join(&b'/')).into_owned())
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: BTreeMap::new(),
        urls: Vec::new(),
    }
}
