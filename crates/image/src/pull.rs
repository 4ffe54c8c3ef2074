//! `husk pull`: fetch an image from a registry into the store.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::fsutil;
use crate::progress::{LayerStatus, Progress, ProgressEvent};
use crate::reference::Reference;
use crate::registry::{RegistryError, RegistryOptions, Repository, Response, with_retries};
use crate::spec::{self, Descriptor, ImageConfig, Index, Manifest};
use crate::store::{Image, Store, StoreError};

/// Errors from pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image name is not a valid reference.
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest, index or config is not valid JSON of the expected shape.
    #[error("{what} for {reference} is malformed")]
    BadDocument {
        /// Which document.
        what: &'static str,
        /// The image.
        reference: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A media type husk cannot handle.
    #[error("{reference}: unsupported {what} media type {media_type:?}")]
    UnsupportedMediaType {
        /// The image.
        reference: String,
        /// Manifest, config or layer.
        what: &'static str,
        /// The media type.
        media_type: String,
    },
    /// A multi-platform image without linux/amd64.
    #[error(
        "{reference}: no matching manifest for linux/amd64 in the manifest list (available: {available})"
    )]
    NoPlatform {
        /// The image.
        reference: String,
        /// Platforms it has.
        available: String,
    },
    /// A single-platform image for another platform.
    #[error("{reference}: image is for {platform}, husk runs linux/amd64")]
    WrongPlatform {
        /// The image.
        reference: String,
        /// Its platform.
        platform: String,
    },
    /// Downloaded content does not hash to the digest it was asked for by.
    #[error(
        "{what} {expected}: digest mismatch (downloaded content hashes to {actual}); nothing was stored"
    )]
    DigestMismatch {
        /// Manifest, config or layer.
        what: &'static str,
        /// Expected.
        expected: Digest,
        /// Actual.
        actual: Digest,
    },
    /// A blob download failed after all attempts.
    #[error(
        "downloading {digest} failed after {attempts} attempts ({done} of {size} bytes); pull again to resume"
    )]
    Download {
        /// The blob.
        digest: Digest,
        /// Attempts made.
        attempts: u32,
        /// Bytes downloaded so far (kept for resuming).
        done: u64,
        /// Blob size.
        size: u64,
        /// The last error.
        #[source]
        source: Box<PullError>,
    },
    /// The registry sent more bytes than the descriptor said.
    #[error("blob {digest} is larger than its declared size {size}")]
    Oversized {
        /// The blob.
        digest: Digest,
        /// Declared size.
        size: u64,
    },
    /// The connection ended before the blob did.
    #[error("connection closed after {got} of {size} bytes")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// Blob size.
        size: u64,
    },
    /// Local file I/O failed.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another layer's download failed, so this one stopped.
    #[error("cancelled")]
    Cancelled,
}

/// What a pull did.
#[derive(Debug)]
pub struct PullOutcome {
    /// The image now in the store.
    pub image: Image,
    /// The digest the registry serves the reference at (the index digest for
    /// multi-platform images), shown as `Digest:`.
    pub digest: Digest,
    /// True when the name already pointed at this image and nothing was downloaded.
    pub up_to_date: bool,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Pulls `reference` (linux/amd64) into `store`, reporting progress Docker's way.
pub fn pull(
    store: &Store,
    reference: &Reference,
    opts: &RegistryOptions,
    progress: &dyn Progress,
) -> Result<PullOutcome, PullError> {
    let _gc = store.gc_guard()?;
    let repo = Repository::new(
        &reference.registry,
        reference.endpoint(),
        &reference.repository,
        opts,
    )?;
    // Docker shows the repository path without the registry: `library/alpine`.
    let shown_path = &reference.repository;
    progress.event(ProgressEvent::Line(&format!(
        "{}: Pulling from {shown_path}",
        reference.manifest_reference()
    )));

    let top_ref = reference.manifest_reference();
    let (bytes, media_type, top_digest) = fetch_manifest(&repo, &top_ref, reference)?;
    if let Some(d) = &reference.digest
        && *d != top_digest
    {
        return Err(PullError::DigestMismatch {
            what: "manifest",
            expected: d.clone(),
            actual: top_digest,
        });
    }
    let (manifest_bytes, manifest_media_type, manifest_digest) = if spec::is_index(&media_type) {
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|source| PullError::BadDocument {
                what: "image index",
                reference: reference.to_string(),
                source,
            })?;
        let Some(entry) = index.pick_linux_amd64() else {
            let available = index
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PullError::NoPlatform {
                reference: reference.familiar(),
                available,
            });
        };
        let (b, mt, d) = fetch_manifest(&repo, &entry.digest.to_string(), reference)?;
        if d != entry.digest {
            return Err(PullError::DigestMismatch {
                what: "manifest",
                expected: entry.digest.clone(),
                actual: d,
            });
        }
        if !spec::is_manifest(&mt) {
            return Err(PullError::UnsupportedMediaType {
                reference: reference.familiar(),
                what: "manifest",
                media_type: mt,
            });
        }
        (b, mt, d)
    } else if spec::is_manifest(&media_type) {
        (bytes, media_type, top_digest.clone())
    } else {
        return Err(PullError::UnsupportedMediaType {
            reference: reference.familiar(),
            what: "manifest",
            media_type,
        });
    };
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| PullError::BadDocument {
            what: "manifest",
            reference: reference.to_string(),
            source,
        })?;
    check_manifest(&manifest, reference)?;

    let names = vec![match reference.tagged() {
        Some(t) => t,
        None => format!("{}@{}", reference.name(), top_digest),
    }];
    let up_to_date = store
        .resolve(&names[0])
        .map(|img| img.manifest_digest == manifest_digest)
        .unwrap_or(false)
        && manifest.layers.iter().all(|l| store.has_blob(&l.digest))
        && store.has_blob(&manifest.config.digest);

    // Config.
    if !store.has_blob(&manifest.config.digest) {
        let resp = repo.get(
            &format!("{}/blobs/{}", repo.repository(), manifest.config.digest),
            &[],
        )?;
        let resp = repo.check(resp, &format!("blob {}", manifest.config.digest), "blobs")?;
        let mut body = Vec::new();
        resp.body
            .take(spec::MAX_DOCUMENT + 1)
            .read_to_end(&mut body)
            .map_err(|source| {
                PullError::Registry(RegistryError::Read {
                    url: format!("config {}", manifest.config.digest),
                    source,
                })
            })?;
        let actual = Digest::of(&body);
        if actual != manifest.config.digest {
            return Err(PullError::DigestMismatch {
                what: "config",
                expected: manifest.config.digest.clone(),
                actual,
            });
        }
        store.put_blob(&body)?;
    }
    let config_bytes = store.read_blob(&manifest.config.digest, spec::MAX_DOCUMENT)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|source| PullError::BadDocument {
            what: "image config",
            reference: reference.to_string(),
            source,
        })?;
    if (!config.architecture.is_empty() && config.architecture != "amd64")
        || (!config.os.is_empty() && config.os != "linux")
    {
        return Err(PullError::WrongPlatform {
            reference: reference.familiar(),
            platform: format!("{}/{}", config.os, config.architecture),
        });
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(PullError::Store(StoreError::LayerCountMismatch(
            manifest.config.digest.clone(),
        )));
    }

    // Layers, in parallel.
    let queue: Mutex<Vec<&Descriptor>> = Mutex::new(Vec::new());
    for layer in &manifest.layers {
        let id = layer.digest.short();
        if store.has_blob(&layer.digest) {
            layer_event(progress, id, LayerStatus::AlreadyExists, 0, layer.size);
        } else {
            layer_event(progress, id, LayerStatus::PullingFsLayer, 0, layer.size);
            if let Ok(mut q) = queue.lock()
                && !q.iter().any(|d| d.digest == layer.digest)
            {
                q.push(layer);
            }
        }
    }
    if let Ok(mut q) = queue.lock() {
        q.reverse();
    }
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<PullError>> = Mutex::new(None);
    let workers = opts.max_concurrent_downloads.clamp(1, 16);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some(layer) = next else { return };
                    match fetch_blob(store, &repo, layer, opts, progress, &abort) {
                        Ok(()) => {
                            layer_event(
                                progress,
                                layer.digest.short(),
                                LayerStatus::PullComplete,
                                layer.size,
                                layer.size,
                            );
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock()
                                && (slot.is_none() || matches!(*slot, Some(PullError::Cancelled)))
                            {
                                *slot = Some(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }

    let stored = store.put_blob(&manifest_bytes)?;
    debug_assert_eq!(stored, manifest_digest);
    let desc = Descriptor {
        media_type: manifest_media_type,
        digest: manifest_digest,
        size: manifest_bytes.len() as u64,
        platform: None,
        annotations: Default::default(),
        urls: Vec::new(),
    };
    let repo_digest = format!("{}@{}", reference.name(), top_digest);
    store.add_image(&desc, &names, Some(&repo_digest))?;
    let image = store.resolve(&names[0])?;
    progress.event(ProgressEvent::Line(&format!("Digest: {top_digest}")));
    let status = if up_to_date {
        format!("Status: Image is up to date for {}", reference.familiar())
    } else {
        format!(
            "Status: Downloaded newer image for {}",
            reference.familiar()
        )
    };
    progress.event(ProgressEvent::Line(&status));
    Ok(PullOutcome {
        image,
        digest: top_digest,
        up_to_date,
    })
}

/// `husk run`'s lookup: the image if the store has it (by name, id or id prefix), else
/// a pull of `input` (Docker's "Unable to find image … locally" path).
pub fn resolve_or_pull(
    store: &Store,
    input: &str,
    opts: &RegistryOptions,
    progress: &dyn Progress,
) -> Result<Image, PullError> {
    match store.resolve(input) {
        Ok(image) => return Ok(image),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let reference = Reference::parse(input)?;
    progress.event(ProgressEvent::Line(&format!(
        "Unable to find image '{}' locally",
        reference.familiar()
    )));
    Ok(pull(store, &reference, opts, progress)?.image)
}

fn layer_event(progress: &dyn Progress, id: &str, status: LayerStatus, current: u64, total: u64) {
    progress.event(ProgressEvent::Layer {
        id,
        status,
        current,
        total,
    });
}

fn check_manifest(m: &Manifest, reference: &Reference) -> Result<(), PullError> {
    if m.config.media_type != spec::OCI_CONFIG && m.config.media_type != spec::DOCKER_CONFIG {
        return Err(PullError::UnsupportedMediaType {
            reference: reference.familiar(),
            what: "config (not a container image)",
            media_type: m.config.media_type.clone(),
        });
    }
    for l in &m.layers {
        if !spec::is_supported_layer(&l.media_type) {
            return Err(PullError::UnsupportedMediaType {
                reference: reference.familiar(),
                what: "layer",
                media_type: l.media_type.clone(),
            });
        }
    }
    if m.layers.len() > 1000 {
        return Err(PullError::UnsupportedMediaType {
            reference: reference.familiar(),
            what: "manifest (more than 1000 layers)",
            media_type: String::new(),
        });
    }
    Ok(())
}

/// GETs a manifest; returns its bytes, media type and digest.
fn fetch_manifest(
    repo: &Repository,
    reference: &str,
    image: &Reference,
) -> Result<(Vec<u8>, String, Digest), PullError> {
    let path = format!("{}/manifests/{reference}", repo.repository());
    let resp = with_retries(2, || repo.get(&path, &[("Accept", ACCEPT.to_string())]))?;
    let resp = repo.check(resp, &format!("manifest {reference}"), &path)?;
    let header_digest = resp.docker_digest.clone();
    let content_type = resp
        .content_type
        .clone()
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let mut body = Vec::new();
    resp.body
        .take(spec::MAX_DOCUMENT + 1)
        .read_to_end(&mut body)
        .map_err(|source| {
            PullError::Registry(RegistryError::Read {
                url: path.clone(),
                source,
            })
        })?;
    if body.len() as u64 > spec::MAX_DOCUMENT {
        return Err(PullError::Registry(RegistryError::TooLarge {
            url: path,
            limit: spec::MAX_DOCUMENT,
        }));
    }
    let digest = Digest::of(&body);
    if let Some(h) = header_digest
        && let Ok(hd) = h.trim().parse::<Digest>()
        && hd != digest
    {
        return Err(PullError::DigestMismatch {
            what: "manifest",
            expected: hd,
            actual: digest,
        });
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(&body).map_err(|source| PullError::BadDocument {
        what: "manifest",
        reference: image.to_string(),
        source,
    })?;
    let media_type = match content_type {
        Some(ct) if spec::is_index(&ct) || spec::is_manifest(&ct) => ct,
        Some(ct) if ct.contains("manifest.v1") => ct,
        _ => match probe.media_type {
            Some(mt) => mt,
            None if probe.manifests.is_some() => spec::OCI_INDEX.to_string(),
            None if probe.config.is_some() => spec::OCI_MANIFEST.to_string(),
            None => String::from("unknown"),
        },
    };
    Ok((body, media_type, digest))
}

/// Downloads one blob into the store, resuming a partial download left by an earlier
/// attempt or process, and verifying its digest before it becomes visible.
fn fetch_blob(
    store: &Store,
    repo: &Repository,
    desc: &Descriptor,
    opts: &RegistryOptions,
    progress: &dyn Progress,
    abort: &AtomicBool,
) -> Result<(), PullError> {
    let id = desc.digest.short();
    let partial_path = store
        .tmp_dir()
        .join(format!("{}.partial", desc.digest.hex()));
    let io_err = |source| PullError::Io {
        path: partial_path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&partial_path)
        .map_err(io_err)?;
    // One downloader per blob across processes: the lock is on the partial file itself.
    if !fsutil::lock_file(&file, false).map_err(io_err)? {
        layer_event(progress, id, LayerStatus::Waiting, 0, desc.size);
        fsutil::lock_file(&file, true).map_err(io_err)?;
    }
    if store.has_blob(&desc.digest) {
        return Ok(());
    }
    // Hash what an earlier attempt left.
    let mut have = file.metadata().map_err(io_err)?.len();
    let mut hasher = Sha256::new();
    if have > desc.size {
        file.set_len(0).map_err(io_err)?;
        have = 0;
    } else if have > 0 {
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let copied =
            io::copy(&mut (&mut file).take(have), &mut HashWriter(&mut hasher)).map_err(io_err)?;
        if copied != have {
            file.set_len(0).map_err(io_err)?;
            hasher = Sha256::new();
            have = 0;
        }
    }
    file.seek(SeekFrom::Start(have)).map_err(io_err)?;

    // A partial file left by a crash may hold garbage at its end: if a resumed download
    // does not verify, start that blob over once before giving up.
    let resumed_from = have;
    let mut round = 0;
    let actual = loop {
        round += 1;
        let mut attempt = 0;
        loop {
            if abort.load(Ordering::Relaxed) {
                return Err(PullError::Cancelled);
            }
            attempt += 1;
            match download_range(
                repo,
                desc,
                &mut file,
                &mut hasher,
                &mut have,
                progress,
                abort,
                &partial_path,
            ) {
                Ok(()) => break,
                Err(PullError::Cancelled) => return Err(PullError::Cancelled),
                Err(
                    e @ (PullError::Registry(RegistryError::NotFound { .. })
                    | PullError::Registry(RegistryError::Unauthorized { .. })
                    | PullError::Oversized { .. }
                    | PullError::Io { .. }),
                ) => return Err(e),
                Err(e) => {
                    if attempt >= opts.attempts.max(1) {
                        return Err(PullError::Download {
                            digest: desc.digest.clone(),
                            attempts: attempt,
                            done: have,
                            size: desc.size,
                            source: Box::new(e),
                        });
                    }
                    log::debug!("retrying {}: {e}", desc.digest);
                    layer_event(progress, id, LayerStatus::Retrying, have, desc.size);
                    std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
                }
            }
        }
        layer_event(
            progress,
            id,
            LayerStatus::VerifyingChecksum,
            have,
            desc.size,
        );
        let actual = Digest::from_hasher(std::mem::take(&mut hasher));
        if actual != desc.digest && resumed_from > 0 && round == 1 {
            log::debug!(
                "resumed download of {} did not verify; starting over",
                desc.digest
            );
            file.set_len(0).map_err(io_err)?;
            file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            have = 0;
            continue;
        }
        break actual;
    };
    if actual != desc.digest {
        drop(file);
        let _ = std::fs::remove_file(&partial_path);
        return Err(PullError::DigestMismatch {
            what: "layer",
            expected: desc.digest.clone(),
            actual,
        });
    }
    file.sync_all().map_err(io_err)?;
    let dest = store.blob_path(&desc.digest);
    std::fs::rename(&partial_path, &dest).map_err(io_err)?;
    if let Some(dir) = dest.parent() {
        fsutil::sync_dir(dir).map_err(io_err)?;
    }
    layer_event(
        progress,
        id,
        LayerStatus::DownloadComplete,
        desc.size,
        desc.size,
    );
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One GET of the rest of a blob (from `*have`), appending to `file`.
#[allow(clippy::too_many_arguments)]
fn download_range(
    repo: &Repository,
    desc: &Descriptor,
    file: &mut File,
    hasher: &mut Sha256,
    have: &mut u64,
    progress: &dyn Progress,
    abort: &AtomicBool,
    partial_path: &std::path::Path,
) -> Result<(), PullError> {
    let io_err = |source| PullError::Io {
        path: partial_path.to_path_buf(),
        source,
    };
    if *have == desc.size && desc.size > 0 {
        return Ok(());
    }
    let path = format!("{}/blobs/{}", repo.repository(), desc.digest);
    let headers: Vec<(&str, String)> = if *have > 0 {
        vec![("Range", format!("bytes={}-", *have))]
    } else {
        Vec::new()
    };
    let resp: Response = repo.get(&path, &headers)?;
    let resp = if resp.status == 416 {
        // The registry does not like our range: start over.
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        *hasher = Sha256::new();
        *have = 0;
        repo.check(
            repo.get(&path, &[])?,
            &format!("blob {}", desc.digest),
            &path,
        )?
    } else {
        repo.check(resp, &format!("blob {}", desc.digest), &path)?
    };
    let resumed = resp.status == 206
        && resp.content_range.as_deref().is_some_and(|r| {
            r.trim_start_matches("bytes ")
                .starts_with(&format!("{}-", *have))
        });
    if !resumed && *have > 0 {
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        *hasher = Sha256::new();
        *have = 0;
    }
    let id = desc.digest.short();
    layer_event(progress, id, LayerStatus::Downloading, *have, desc.size);
    let mut body = resp.body;
    let mut buf = vec![0u8; 256 << 10];
    let mut last_report = *have;
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(PullError::Cancelled);
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                file.flush().map_err(io_err)?;
                return Err(PullError::Registry(RegistryError::Read {
                    url: path,
                    source,
                }));
            }
        };
        if *have + n as u64 > desc.size {
            drop(body);
            file.set_len(0).map_err(io_err)?;
            return Err(PullError::Oversized {
                digest: desc.digest.clone(),
                size: desc.size,
            });
        }
        file.write_all(&buf[..n]).map_err(io_err)?;
        hasher.update(&buf[..n]);
        *have += n as u64;
        if *have - last_report >= 512 << 10 || *have == desc.size {
            last_report = *have;
            layer_event(progress, id, LayerStatus::Downloading, *have, desc.size);
        }
    }
    if *have != desc.size {
        return Err(PullError::Truncated {
            got: *have,
            size: desc.size,
        });
    }
    Ok(())
}
