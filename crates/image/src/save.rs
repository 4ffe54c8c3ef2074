//! `husk save`: images as a `docker save` archive, in the layout Docker 25+
//! writes, which is at the same time an OCI image layout:
//!
//! ```text
//! blobs/sha256/<hex>   the manifests, configs and layers, as the store keeps them
//! index.json           OCI index: one entry per saved name (or one unnamed entry)
//! manifest.json        docker save's [{"Config", "RepoTags", "Layers"}]
//! oci-layout           {"imageLayoutVersion":"1.0.0"}
//! repositories         the legacy {"repo": {"tag": "<top layer hex>"}} map
//! ```
//!
//! `docker load`, `skopeo copy docker-archive:` / `oci-archive:` and `husk load`
//! read it. Layers stay as stored (usually gzip); every reader of the format
//! decompresses them. Entries are written in a fixed order with fixed
//! timestamps, so the same images give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde_json::json;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::spec::{self, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, OCI_INDEX, OCI_MANIFEST};
use crate::store::{Image, Store, StoreError};

/// Errors from saving images.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// No image names were given.
    #[error("no images to save")]
    Nothing,
    /// The store failed (an image not found, a blob missing).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored blob does not have the size its manifest says.
    #[error("blob {digest} in the store is {actual} bytes, its manifest says {expected}")]
    BlobSize {
        /// The blob.
        digest: Digest,
        /// From the manifest.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// Writing the archive failed.
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
}

/// Fixed modification time of every archive entry (the epoch, as reproducible
/// archives use).
const MTIME: u64 = 0;

/// One image of the archive with the names it is saved under.
struct Saved {
    image: Image,
    tags: Vec<Reference>,
}

/// Writes the images named by `names` (names, ids or id prefixes, as
/// `husk save` takes them) to `out` as one archive. A name that is a tag is
/// saved with it (`RepoTags`); an id saves the image unnamed. Asking for one
/// image twice saves it once, with all the tags asked for.
pub fn save<S: AsRef<str>>(store: &Store, names: &[S], out: impl Write) -> Result<(), SaveError> {
    if names.is_empty() {
        return Err(SaveError::Nothing);
    }
    let mut saved: Vec<Saved> = Vec::new();
    for name in names {
        let name = name.as_ref();
        let image = store.resolve(name)?;
        let tag = saved_tag(&image, name);
        match saved.iter_mut().find(|s| s.image.id == image.id) {
            Some(s) => {
                if let Some(t) = tag
                    && !s.tags.contains(&t)
                {
                    s.tags.push(t);
                }
            }
            None => saved.push(Saved {
                tags: tag.into_iter().collect(),
                image,
            }),
        }
    }
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    dir_entry(&mut tar, "blobs/")?;
    dir_entry(&mut tar, "blobs/sha256/")?;
    let mut written = std::collections::BTreeSet::new();
    let mut manifest_json = Vec::new();
    let mut index = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in &saved {
        let img = &s.image;
        let manifest_raw = store.read_blob(&img.manifest_digest, spec::MAX_DOCUMENT)?;
        for d in img.manifest.layers.iter().chain([&img.manifest.config]) {
            if written.insert(d.digest.clone()) {
                blob_entry(&mut tar, store, &d.digest, d.size)?;
            }
        }
        if written.insert(img.manifest_digest.clone()) {
            bytes_entry(&mut tar, &blob_name(&img.manifest_digest), &manifest_raw)?;
        }
        let media_type = img
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let entry = |annotations: serde_json::Value| {
            let mut e = json!({
                "mediaType": media_type,
                "digest": img.manifest_digest.to_string(),
                "size": manifest_raw.len(),
            });
            if !annotations.is_null() {
                e["annotations"] = annotations;
            }
            e
        };
        if s.tags.is_empty() {
            index.push(entry(serde_json::Value::Null));
        }
        let top_layer = img
            .manifest
            .layers
            .last()
            .map(|l| l.digest.hex().to_string());
        for t in &s.tags {
            let tag = t.tag.clone().unwrap_or_else(|| "latest".to_string());
            index.push(entry(json!({
                ANNOTATION_CONTAINERD_NAME: t.to_string(),
                ANNOTATION_REF_NAME: tag,
            })));
            if let Some(top) = &top_layer {
                repositories
                    .entry(t.familiar_name())
                    .or_default()
                    .insert(tag, top.clone());
            }
        }
        let repo_tags: Option<Vec<String>> =
            (!s.tags.is_empty()).then(|| s.tags.iter().map(Reference::familiar).collect());
        manifest_json.push(json!({
            "Config": blob_name(&img.manifest.config.digest),
            "RepoTags": repo_tags,
            "Layers": img.manifest.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": index,
    });
    bytes_entry(&mut tar, "index.json", &to_json(&index))?;
    bytes_entry(&mut tar, "manifest.json", &to_json(&manifest_json))?;
    bytes_entry(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    if !repositories.is_empty() {
        bytes_entry(&mut tar, "repositories", &to_json(&repositories))?;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(SaveError::Write)
}

/// The name an image is saved under when asked for as `query`: the tagged
/// reference if `query` names one of its tags, else none (an id, a digest).
fn saved_tag(image: &Image, query: &str) -> Option<Reference> {
    let r = Reference::parse(query)
        .ok()
        .filter(|r| r.digest.is_none())?;
    let full = Reference::parse(&r.tagged()?).ok()?;
    image.repo_tags.contains(&full.familiar()).then_some(full)
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serializing values built here cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn dir_entry<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> Result<(), SaveError> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, io::empty())
        .map_err(SaveError::Write)
}

fn bytes_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> Result<(), SaveError> {
    let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)
        .map_err(SaveError::Write)
}

fn blob_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    d: &Digest,
    size: u64,
) -> Result<(), SaveError> {
    let f = store.open_blob(d)?;
    let actual = f
        .metadata()
        .map_err(|source| {
            SaveError::Store(StoreError::Io {
                op: "read",
                path: store.blob_path(d),
                source,
            })
        })?
        .len();
    if actual != size {
        return Err(SaveError::BlobSize {
            digest: d.clone(),
            expected: size,
            actual,
        });
    }
    let mut h = header(tar::EntryType::Regular, 0o644, size);
    let mut data = Exact {
        inner: f.take(size),
        left: size,
    };
    tar.append_data(&mut h, blob_name(d), &mut data)
        .map_err(SaveError::Write)
}

/// Reads exactly `left` bytes, failing rather than ending early (a blob that
/// shrank while being written would otherwise corrupt the archive).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a blob shrank while being saved",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{ImportConfig, import_dir};

    fn image(store: &Store, name: &str, content: &[u8]) -> Image {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/file"), content).unwrap();
        import_dir(store, d.path(), name, &ImportConfig::default()).unwrap();
        store.resolve(name).unwrap()
    }

    fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut a = tar::Archive::new(archive);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            out.insert(p, b);
        }
        out
    }

    #[test]
    fn saves_then_loads_the_same_image() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path().join("a")).unwrap();
        let img = image(&store, "demo:v1", b"one");
        let mut archive = Vec::new();
        save(&store, &["demo:v1"], &mut archive).unwrap();
        let files = entries(&archive);
        for name in ["index.json", "manifest.json", "oci-layout", "repositories"] {
            assert!(
                files.contains_key(name),
                "{name} missing: {:?}",
                files.keys()
            );
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"], json!(["demo:v1"]));
        assert_eq!(
            manifest[0]["Config"],
            json!(format!("blobs/sha256/{}", img.id.hex()))
        );
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"][ANNOTATION_CONTAINERD_NAME],
            json!("docker.io/library/demo:v1")
        );
        // Deterministic.
        let mut again = Vec::new();
        save(&store, &["demo:v1"], &mut again).unwrap();
        assert_eq!(archive, again);

        let other = Store::open(d.path().join("b")).unwrap();
        let loaded = crate::load::load(&other, &archive[..], None).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, img.id);
        assert_eq!(loaded[0].names, vec!["demo:v1".to_string()]);
        assert_eq!(other.resolve("demo:v1").unwrap().id, img.id);
    }

    #[test]
    fn saves_several_images_and_ids() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path().join("a")).unwrap();
        let one = image(&store, "one", b"1");
        let two = image(&store, "two:x", b"2");
        store.tag("one", "alias:y").unwrap();
        let mut archive = Vec::new();
        save(
            &store,
            &["one", "two:x", "alias:y", one.id.short()],
            &mut archive,
        )
        .unwrap();
        let files = entries(&archive);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest.as_array().unwrap().len(), 2);
        assert_eq!(manifest[0]["RepoTags"], json!(["one:latest", "alias:y"]));
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 3);

        let other = Store::open(d.path().join("b")).unwrap();
        let loaded = crate::load::load(&other, &archive[..], None).unwrap();
        let ids: Vec<_> = loaded.iter().map(|l| l.id.clone()).collect();
        assert_eq!(ids, vec![one.id.clone(), two.id.clone()]);
        assert_eq!(other.resolve("alias:y").unwrap().id, one.id);

        // By id only: saved without a name, loaded as an id.
        let mut by_id = Vec::new();
        save(&store, &[two.id.to_string()], &mut by_id).unwrap();
        let files = entries(&by_id);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"], serde_json::Value::Null);
        assert!(!files.contains_key("repositories"));
        let third = Store::open(d.path().join("c")).unwrap();
        let loaded = crate::load::load(&third, &by_id[..], None).unwrap();
        assert_eq!(
            loaded[0].lines(),
            vec![format!("Loaded image ID: {}", two.id)]
        );
    }

    #[test]
    fn refuses_unknown_images_and_damaged_stores() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let img = image(&store, "demo", b"x");
        assert!(matches!(
            save(&store, &["nope"], io::sink()),
            Err(SaveError::Store(StoreError::NotFound(_)))
        ));
        assert!(matches!(
            save::<&str>(&store, &[], io::sink()),
            Err(SaveError::Nothing)
        ));
        // A truncated layer blob is refused, not written as a corrupt archive.
        let layer = &img.manifest.layers[0];
        let p = store.blob_path(&layer.digest);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            save(&store, &["demo"], io::sink()),
            Err(SaveError::BlobSize { .. })
        ));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            save(&store, &["demo"], io::sink()),
            Err(SaveError::Store(StoreError::MissingBlob(_)))
        ));
    }
}
