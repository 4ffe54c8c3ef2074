//! Unpacked sizes of layers and images, as Docker reports them (`husk images`,
//! `husk history`, `husk system df`): the bytes of a layer's regular files
//! (hard links counted once), not of its compressed blob.
//!
//! A layer's size is found by reading its blob once; it is kept in
//! `<root>/sizes/<diff-id-hex>` (a decimal number) for later calls.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::fsutil;
use crate::store::{Image, Store, StoreError};
use crate::unpack::{self, UnpackError};

/// Errors finding sizes.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    /// The store failed (a blob missing).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer blob could not be read as a (compressed) tar.
    #[error("cannot read layer {digest}")]
    Layer {
        /// The layer blob.
        digest: Digest,
        /// The cause.
        #[source]
        source: UnpackError,
    },
    /// The image's config and manifest disagree on the layer count.
    #[error("image {0}: the config lists a different number of layers than the manifest")]
    LayerCount(Digest),
}

fn cache_path(store: &Store, diff_id: &Digest) -> PathBuf {
    store.root().join("sizes").join(diff_id.hex())
}

/// The unpacked size of each layer of `image`, base first.
pub fn layer_sizes(store: &Store, image: &Image) -> Result<Vec<u64>, SizeError> {
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.manifest.layers.len() {
        return Err(SizeError::LayerCount(image.id.clone()));
    }
    diff_ids
        .iter()
        .zip(&image.manifest.layers)
        .map(|(diff_id, layer)| layer_size(store, diff_id, &layer.digest))
        .collect()
}

/// The unpacked size of the image: the sum of its layers' sizes.
pub fn image_size(store: &Store, image: &Image) -> Result<u64, SizeError> {
    Ok(layer_sizes(store, image)?.iter().sum())
}

/// The unpacked size of the layers of all of `images`, each distinct layer
/// (by diff id) counted once.
pub fn shared_size<'a>(
    store: &Store,
    images: impl IntoIterator<Item = &'a Image>,
) -> Result<u64, SizeError> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for image in images {
        let sizes = layer_sizes(store, image)?;
        for (d, s) in image.config.rootfs.diff_ids.iter().zip(sizes) {
            if seen.insert(d.clone()) {
                total += s;
            }
        }
    }
    Ok(total)
}

/// One layer's size, from the cache or by reading its blob.
pub fn layer_size(store: &Store, diff_id: &Digest, blob: &Digest) -> Result<u64, SizeError> {
    let cache = cache_path(store, diff_id);
    if let Some(n) = std::fs::read(&cache)
        .ok()
        .filter(|b| b.len() <= 20)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return Ok(n);
    }
    let n = measure(store.open_blob(blob)?).map_err(|source| SizeError::Layer {
        digest: blob.clone(),
        source,
    })?;
    // Best effort: a read-only store still answers.
    let _ = std::fs::create_dir_all(cache.parent().unwrap_or(store.root()))
        .and_then(|()| fsutil::write_atomic(&cache, n.to_string().as_bytes()));
    Ok(n)
}

/// The bytes of the regular files in a (compressed) layer tar.
pub(crate) fn measure(blob: impl Read) -> Result<u64, UnpackError> {
    let mut reader = unpack::decompress(blob)?;
    let mut total = 0u64;
    unpack::walk_tar(&mut reader, &mut |meta, _| {
        if matches!(
            meta.kind,
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            total = total.saturating_add(meta.size);
        }
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_regular_files_and_caches() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), vec![7u8; 1234]).unwrap();
        std::fs::write(root.join("g"), b"xyz").unwrap();
        std::os::unix::fs::symlink("g", root.join("s")).unwrap();
        let store = Store::open(d.path().join("store")).unwrap();
        crate::import::import_dir(&store, &root, "x", &Default::default()).unwrap();
        let img = store.resolve("x").unwrap();
        assert_eq!(layer_sizes(&store, &img).unwrap(), vec![1237]);
        let cached = cache_path(&store, &img.config.rootfs.diff_ids[0]);
        assert_eq!(std::fs::read_to_string(&cached).unwrap(), "1237");
        std::fs::write(&cached, "99").unwrap();
        assert_eq!(image_size(&store, &img).unwrap(), 99);
        assert_eq!(shared_size(&store, [&img, &img]).unwrap(), 99);
        // A damaged cache entry is measured again.
        std::fs::write(&cached, "lots").unwrap();
        assert_eq!(image_size(&store, &img).unwrap(), 1237);
        assert!(measure(&b"not a tar at all, not at all"[..]).is_err());
        // Hard links count once.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"12345"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "g", "f").unwrap();
        assert_eq!(measure(&b.into_inner().unwrap()[..]).unwrap(), 5);
    }
}
