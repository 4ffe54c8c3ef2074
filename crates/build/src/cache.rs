//! The build cache: `<store>/build-cache/<key>.json`, one file per step
//! built. The key hashes the parent image's id, the instruction (as
//! expanded, with the build arguments in scope) and, for COPY and ADD, the
//! content of the files it reads; the value is the image after the step:
//! its config, byte for byte (so a cached build gives the same image id),
//! and its layers. An entry whose layers are no longer in the store (an
//! `rmi` collected them) is a miss, and is dropped.

use std::io::Write;
use std::path::PathBuf;

use husk_image::Store;
use husk_image::spec::Descriptor;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The image after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The image config, as stored (its digest is the image id).
    pub config: String,
    /// Its layers.
    pub layers: Vec<Descriptor>,
}

/// The cache of one store.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// A cache key from its parts.
pub fn key(parts: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(b"husk-build-cache v1\n");
    h.update(parts.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

impl Cache {
    /// The cache in `store` (created if needed).
    pub fn open(store: &Store) -> std::io::Result<Cache> {
        let dir = store.root().join("build-cache");
        std::fs::create_dir_all(&dir)?;
        Ok(Cache { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The entry for `key`, if it is there and its layers are in `store`.
    pub fn get(&self, store: &Store, key: &str) -> Option<Entry> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("build cache: dropping malformed {}: {e}", path.display());
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        if entry.layers.iter().any(|l| !store.has_blob(&l.digest)) {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(entry)
    }

    /// Records `entry` for `key` (written whole, then renamed into place).
    pub fn put(&self, key: &str, entry: &Entry) -> std::io::Result<()> {
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{key}.tmp-{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_dead_ones_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let cache = Cache::open(&store).unwrap();
        let k = key(&serde_json::json!({"parent": "x", "instruction": "ENV A=1"}));
        assert_eq!(k.len(), 64);
        assert_ne!(k, key(&serde_json::json!({"parent": "y"})));
        assert!(cache.get(&store, &k).is_none());
        let e = Entry {
            config: "{}".into(),
            layers: vec![],
        };
        cache.put(&k, &e).unwrap();
        assert_eq!(cache.get(&store, &k), Some(e));
        // A layer that is gone makes the entry a miss.
        let blob = store.put_blob(b"layer").unwrap();
        let desc = Descriptor {
            media_type: husk_image::spec::OCI_LAYER_GZIP.into(),
            digest: husk_image::Digest::of(b"not stored"),
            size: 1,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        let live = Descriptor {
            digest: blob,
            ..desc.clone()
        };
        cache
            .put(
                &k,
                &Entry {
                    config: "{}".into(),
                    layers: vec![live.clone()],
                },
            )
            .unwrap();
        assert!(cache.get(&store, &k).is_some());
        cache
            .put(
                &k,
                &Entry {
                    config: "{}".into(),
                    layers: vec![live, desc],
                },
            )
            .unwrap();
        assert!(cache.get(&store, &k).is_none());
        assert!(!cache.path(&k).exists());
        std::fs::write(cache.path(&k), b"{not json").unwrap();
        assert!(cache.get(&store, &k).is_none());
    }
}
