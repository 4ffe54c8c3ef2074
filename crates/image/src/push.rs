//! `husk push`: upload an image from the store to an OCI/Docker v2 registry.
//!
//! For each blob (layers, top first, then the config): `HEAD` it, and skip it
//! when the registry has it; else, when the store knows it from another
//! repository of the same registry (a pull or push recorded its repo digest),
//! try a cross-repository mount (`POST …/blobs/uploads/?mount=&from=`); else
//! upload it: `POST` a session, then one `PUT …?digest=` with the whole blob,
//! or `PATCH` chunks and a final empty `PUT`. Then `PUT` the manifest, the
//! bytes as stored, so its digest is the image's manifest digest everywhere.
//! References, credentials, token auth, transports and retries are those of
//! pulls ([`crate::registry`]).

use std::fs::File;

use crate::digest::Digest;
use crate::progress::{LayerStatus, Progress, ProgressEvent};
use crate::reference::{Reference, ReferenceError};
use crate::registry::{
    Payload, RegistryError, RegistryOptions, Repository, Response, urlencode, with_retries,
};
use crate::spec::{self, Descriptor, OCI_MANIFEST};
use crate::store::{Store, StoreError};

/// Errors from pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The name is not a valid reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// No local image has that name.
    #[error("An image does not exist locally with the tag: {0}")]
    NoSuchImage(String),
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading a blob from the store failed.
    #[error("cannot read blob {digest} from the store")]
    Io {
        /// The blob.
        digest: Digest,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry reports another digest for the manifest than its bytes have.
    #[error("the registry stored the manifest as {actual}, but it is {expected}")]
    ManifestDigest {
        /// The manifest's digest.
        expected: Digest,
        /// What the registry answered.
        actual: String,
    },
    /// Uploading a blob failed, after retries.
    #[error("uploading blob {digest} failed after {attempts} attempts")]
    Upload {
        /// The blob.
        digest: Digest,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<RegistryError>,
    },
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The manifest's digest (the same as in the store).
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
    /// The tag (or digest) the manifest was put under.
    pub reference: String,
    /// Blobs uploaded.
    pub pushed: usize,
    /// Blobs the registry had already.
    pub existed: usize,
    /// Blobs mounted from another repository of the registry.
    pub mounted: usize,
}

/// How one blob got to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Existed,
    Mounted(String),
    Pushed,
}

/// Pushes the local image named `reference` to its registry, reporting progress
/// Docker's way.
pub fn push(
    store: &Store,
    reference: &Reference,
    opts: &RegistryOptions,
    progress: &dyn Progress,
) -> Result<PushOutcome, PushError> {
    let image = match store.resolve(&reference.to_string()) {
        Ok(i) => i,
        Err(StoreError::NotFound(_)) => return Err(PushError::NoSuchImage(reference.familiar())),
        Err(e) => return Err(e.into()),
    };
    let manifest_bytes = store.read_blob(&image.manifest_digest, spec::MAX_DOCUMENT)?;
    let media_type = image
        .manifest
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| OCI_MANIFEST.to_string());

    // Repositories of this registry that have some of these blobs.
    let sources: Vec<(String, Vec<Digest>)> = store
        .known_sources()?
        .into_iter()
        .filter(|(r, _)| r.registry == reference.registry && r.repository != reference.repository)
        .map(|(r, blobs)| (r.repository, blobs))
        .collect();
    let mut from: Vec<String> = sources.iter().map(|(r, _)| r.clone()).collect();
    from.sort();
    from.dedup();
    from.truncate(8);
    let repo = Repository::new(
        &reference.registry,
        reference.endpoint(),
        &reference.repository,
        opts,
    )?
    .for_push(&from);

    progress.event(ProgressEvent::Line(&format!(
        "The push refers to repository [{}]",
        reference.name()
    )));
    let layers: Vec<&Descriptor> = image
        .manifest
        .layers
        .iter()
        .rev()
        .filter(|l| !is_foreign(l))
        .collect();
    for l in &layers {
        layer_event(
            progress,
            l.digest.short(),
            LayerStatus::Preparing,
            0,
            l.size,
        );
    }
    let mut outcome = PushOutcome {
        digest: image.manifest_digest.clone(),
        size: manifest_bytes.len() as u64,
        reference: reference.manifest_reference(),
        pushed: 0,
        existed: 0,
        mounted: 0,
    };
    let mut done: Vec<Digest> = Vec::new();
    let blobs = layers
        .iter()
        .map(|l| (*l, true))
        .chain(std::iter::once((&image.manifest.config, false)));
    for (desc, shown) in blobs {
        if done.contains(&desc.digest) {
            continue;
        }
        let mounts: Vec<&str> = sources
            .iter()
            .filter(|(_, b)| b.contains(&desc.digest))
            .map(|(r, _)| r.as_str())
            .collect();
        let sent = push_blob(store, &repo, desc, &mounts, opts, progress, shown)?;
        let id = desc.digest.short();
        match sent {
            Sent::Existed => {
                outcome.existed += 1;
                if shown {
                    layer_event(
                        progress,
                        id,
                        LayerStatus::LayerAlreadyExists,
                        desc.size,
                        desc.size,
                    );
                }
            }
            Sent::Mounted(src) => {
                outcome.mounted += 1;
                if shown {
                    progress.event(ProgressEvent::Line(&format!("{id}: Mounted from {src}")));
                }
            }
            Sent::Pushed => {
                outcome.pushed += 1;
                if shown {
                    layer_event(progress, id, LayerStatus::Pushed, desc.size, desc.size);
                }
            }
        }
        done.push(desc.digest.clone());
    }

    // The manifest, as stored.
    let path = format!(
        "{}/manifests/{}",
        repo.repository(),
        reference.manifest_reference()
    );
    let resp = with_retries(opts.attempts.max(1), || {
        repo.request(
            "PUT",
            &repo.url(&path),
            &[("Content-Type", media_type.clone())],
            Payload::Bytes(&manifest_bytes),
        )
    })?;
    let resp = repo.check(resp, "manifest", &path)?;
    if let Some(d) = resp.docker_digest.as_deref().map(str::trim)
        && d.parse::<Digest>().ok().as_ref() != Some(&image.manifest_digest)
    {
        return Err(PushError::ManifestDigest {
            expected: image.manifest_digest.clone(),
            actual: d.to_string(),
        });
    }
    let desc = Descriptor {
        media_type,
        digest: image.manifest_digest.clone(),
        size: outcome.size,
        platform: None,
        annotations: Default::default(),
        urls: Vec::new(),
    };
    let repo_digest = format!("{}@{}", reference.name(), image.manifest_digest);
    if let Some(name) = reference.tagged()
        && reference.digest.is_none()
    {
        store.record_repo_digest(&desc, Some(&name), &repo_digest)?;
    }
    progress.event(ProgressEvent::Line(&format!(
        "{}: digest: {} size: {}",
        outcome.reference, outcome.digest, outcome.size
    )));
    Ok(outcome)
}

/// Foreign (non-distributable) layers are not pushed, as Docker does not.
fn is_foreign(d: &Descriptor) -> bool {
    !d.urls.is_empty()
        && (d.media_type == spec::DOCKER_LAYER_FOREIGN || d.media_type.contains("nondistributable"))
}

fn layer_event(progress: &dyn Progress, id: &str, status: LayerStatus, current: u64, total: u64) {
    progress.event(ProgressEvent::Layer {
        id,
        status,
        current,
        total,
    });
}

/// Gets one blob into the repository: skipped, mounted or uploaded.
fn push_blob(
    store: &Store,
    repo: &Repository,
    desc: &Descriptor,
    mounts: &[&str],
    opts: &RegistryOptions,
    progress: &dyn Progress,
    shown: bool,
) -> Result<Sent, PushError> {
    let blob_path = format!("{}/blobs/{}", repo.repository(), desc.digest);
    let head = with_retries(opts.attempts.max(1), || {
        repo.request("HEAD", &repo.url(&blob_path), &[], Payload::Empty)
    })?;
    match head.status {
        200 => return Ok(Sent::Existed),
        404 => {}
        _ => {
            repo.check(head, &format!("blob {}", desc.digest), &blob_path)?;
        }
    }
    let file = store.open_blob(&desc.digest)?;
    let len = file
        .metadata()
        .map_err(|source| PushError::Io {
            digest: desc.digest.clone(),
            source,
        })?
        .len();
    if len != desc.size {
        return Err(StoreError::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: len,
        }
        .into());
    }
    let attempts = opts.attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match upload(repo, desc, &file, mounts, opts, progress, shown) {
            Ok(s) => return Ok(s),
            Err(e @ (RegistryError::Connect { .. } | RegistryError::Read { .. }))
                if attempt < attempts =>
            {
                log::debug!("retrying the upload of {}: {e}", desc.digest);
                std::thread::sleep(std::time::Duration::from_millis(300 * u64::from(attempt)));
            }
            Err(e @ (RegistryError::Connect { .. } | RegistryError::Read { .. })) => {
                return Err(PushError::Upload {
                    digest: desc.digest.clone(),
                    attempts: attempt,
                    source: Box::new(e),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One attempt: mount or start a session, then send the bytes.
fn upload(
    repo: &Repository,
    desc: &Descriptor,
    file: &File,
    mounts: &[&str],
    opts: &RegistryOptions,
    progress: &dyn Progress,
    shown: bool,
) -> Result<Sent, RegistryError> {
    let uploads = format!("{}/blobs/uploads/", repo.repository());
    let mut session: Option<Response> = None;
    for from in mounts {
        let url = repo.url(&format!(
            "{uploads}?mount={}&from={}",
            desc.digest,
            urlencode(from)
        ));
        let resp = repo.request("POST", &url, &[], Payload::Empty)?;
        match resp.status {
            201 => return Ok(Sent::Mounted((*from).to_string())),
            // Not mounted (not allowed, or not there), but a session was opened.
            202 => {
                session = Some(resp);
                break;
            }
            _ => log::debug!(
                "mounting {} from {from}: HTTP {}; uploading instead",
                desc.digest,
                resp.status
            ),
        }
    }
    let session = match session {
        Some(s) => s,
        None => {
            let url = repo.url(&uploads);
            let resp = repo.request("POST", &url, &[], Payload::Empty)?;
            expect(
                repo,
                resp,
                202,
                &format!("upload of blob {}", desc.digest),
                &url,
            )?
        }
    };
    let id = desc.digest.short();
    let mut location = next_location(repo, &session, &uploads)?;
    drop(session);
    if shown {
        layer_event(progress, id, LayerStatus::Pushing, 0, desc.size);
    }
    let chunk = opts.upload_chunk_size.max(1);
    let octet = ("Content-Type", "application/octet-stream".to_string());
    let last_payload = if desc.size <= chunk {
        Payload::File {
            file,
            offset: 0,
            len: desc.size,
        }
    } else {
        let mut offset = 0;
        while offset < desc.size {
            let len = chunk.min(desc.size - offset);
            let range = ("Content-Range", format!("{offset}-{}", offset + len - 1));
            let resp = repo.request(
                "PATCH",
                &location,
                &[octet.clone(), range],
                Payload::File { file, offset, len },
            )?;
            let resp = expect(
                repo,
                resp,
                202,
                &format!("chunk of blob {}", desc.digest),
                &location,
            )?;
            location = next_location(repo, &resp, &location)?;
            offset += len;
            if shown {
                layer_event(progress, id, LayerStatus::Pushing, offset, desc.size);
            }
        }
        Payload::Empty
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!(
        "{location}{sep}digest={}",
        urlencode(&desc.digest.to_string())
    );
    let resp = repo.request("PUT", &put, &[octet], last_payload)?;
    expect(repo, resp, 201, &format!("blob {}", desc.digest), &put)?;
    Ok(Sent::Pushed)
}

/// The absolute URL of a session's next request, from its `Location`.
fn next_location(repo: &Repository, resp: &Response, url: &str) -> Result<String, RegistryError> {
    match resp.location.as_deref().map(str::trim) {
        Some(l) if !l.is_empty() && l.len() <= 8192 => Ok(repo.resolve_location(l)),
        _ => Err(RegistryError::BadUpload {
            url: url.to_string(),
            status: resp.status,
            header: "Location",
        }),
    }
}

/// The response if it has `status` (or another 2xx); else the registry's error.
fn expect(
    repo: &Repository,
    resp: Response,
    status: u16,
    what: &str,
    url: &str,
) -> Result<Response, RegistryError> {
    if resp.status == status {
        return Ok(resp);
    }
    let code = resp.status;
    let resp = repo.check(resp, what, url)?;
    if (200..300).contains(&code) {
        return Ok(resp);
    }
    Err(RegistryError::Status {
        url: url.to_string(),
        status: code,
        message: String::new(),
    })
}
