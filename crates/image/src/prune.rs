//! `husk image prune [-a]`: removes dangling images (no tag), or with `all`
//! every image no container uses. Which images containers use is the
//! caller's to say (the container store is not this crate's).

use std::collections::BTreeSet;

use crate::digest::Digest;
use crate::progress::human_size;
use crate::sizes::{self, SizeError};
use crate::store::{Image, Store, StoreError};

/// Errors pruning images.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An image's size could not be found.
    #[error(transparent)]
    Size(#[from] SizeError),
}

/// What a prune removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PruneReport {
    /// Docker's `untagged: NAME` and `deleted: ID` lines, in order.
    pub lines: Vec<String>,
    /// The images deleted.
    pub deleted: Vec<Digest>,
    /// Unpacked bytes of the layers no remaining image has.
    pub reclaimed: u64,
}

impl PruneReport {
    /// Docker's output: `Deleted Images:` and its lines (when any), a blank
    /// line, then `Total reclaimed space: SIZE`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if !self.lines.is_empty() {
            out.push_str("Deleted Images:\n");
            for l in &self.lines {
                out.push_str(l);
                out.push('\n');
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "Total reclaimed space: {}\n",
            human_size(self.reclaimed)
        ));
        out
    }
}

/// Would `image` be pruned?
fn prunable(image: &Image, in_use: &BTreeSet<Digest>, all: bool) -> bool {
    !in_use.contains(&image.id) && (all || image.repo_tags.is_empty())
}

/// Removes dangling images (with `all`: every image) whose id is not in
/// `in_use`, Docker's `image prune`.
pub fn prune(
    store: &Store,
    in_use: &BTreeSet<Digest>,
    all: bool,
) -> Result<PruneReport, PruneError> {
    let images = store.list()?;
    let (gone, kept): (Vec<&Image>, Vec<&Image>) =
        images.iter().partition(|i| prunable(i, in_use, all));
    let mut report = PruneReport::default();
    if gone.is_empty() {
        return Ok(report);
    }
    let before = sizes::shared_size(store, &images)?;
    let after = sizes::shared_size(store, kept)?;
    for image in gone {
        let lines = match store.remove(&image.id.to_string(), true) {
            Ok(lines) => lines,
            // Removed meanwhile by someone else.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        for l in lines {
            if let Some(n) = l.strip_prefix("Untagged: ") {
                report.lines.push(format!("untagged: {n}"));
            } else if let Some(d) = l.strip_prefix("Deleted: ") {
                report.lines.push(format!("deleted: {d}"));
            }
        }
        report.deleted.push(image.id.clone());
    }
    report.reclaimed = before.saturating_sub(after);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{ImportConfig, import_dir};

    fn image(store: &Store, name: &str, content: &[u8]) -> Image {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("file"), content).unwrap();
        import_dir(store, d.path(), name, &ImportConfig::default()).unwrap();
        store.resolve(name).unwrap()
    }

    #[test]
    fn prunes_dangling_then_unused_images() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let old = image(&store, "app", b"old version");
        let new = image(&store, "app", b"new version!");
        let used = image(&store, "used", b"in use");
        let kept = image(&store, "kept", b"tagged");
        // `app` moved to the new image; the old one stays unnamed (as a
        // load of an untagged image or an untagged commit leaves it).
        let desc = crate::spec::Descriptor {
            media_type: crate::spec::OCI_MANIFEST.into(),
            digest: old.manifest_digest.clone(),
            size: std::fs::metadata(store.blob_path(&old.manifest_digest))
                .unwrap()
                .len(),
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        store.add_image(&desc, &[], None).unwrap();
        assert!(
            store
                .resolve(&old.id.to_string())
                .unwrap()
                .repo_tags
                .is_empty()
        );
        let in_use: BTreeSet<Digest> = [used.id.clone()].into();
        let r = prune(&store, &in_use, false).unwrap();
        assert_eq!(r.deleted, vec![old.id.clone()]);
        assert_eq!(r.lines, vec![format!("deleted: {}", old.id)]);
        assert_eq!(r.reclaimed, 11);
        assert_eq!(
            r.text(),
            format!(
                "Deleted Images:\ndeleted: {}\n\nTotal reclaimed space: 11B\n",
                old.id
            )
        );
        assert!(!store.has_blob(&old.manifest.layers[0].digest));
        // Nothing dangling left.
        let r = prune(&store, &in_use, false).unwrap();
        assert_eq!(r, PruneReport::default());
        assert_eq!(r.text(), "Total reclaimed space: 0B\n");
        // -a: all but the used one.
        let r = prune(&store, &in_use, true).unwrap();
        let mut deleted = r.deleted.clone();
        deleted.sort();
        let mut want = vec![new.id.clone(), kept.id.clone()];
        want.sort();
        assert_eq!(deleted, want);
        assert!(
            r.lines.contains(&"untagged: app:latest".to_string()),
            "{:?}",
            r.lines
        );
        assert!(
            r.lines.contains(&"untagged: kept:latest".to_string()),
            "{:?}",
            r.lines
        );
        assert_eq!(r.reclaimed, 12 + 6);
        let left: Vec<Digest> = store.list().unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(left, vec![used.id]);
    }
}
