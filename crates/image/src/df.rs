//! `husk system df`: disk use of images, containers, volumes and build cache,
//! as Docker's table (TYPE, TOTAL, ACTIVE, SIZE, RECLAIMABLE). What the
//! containers use is the caller's to say.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::digest::Digest;
use crate::format;
use crate::progress::human_size;
use crate::prune::PruneError;
use crate::sizes;
use crate::store::Store;

/// A container, for `system df`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerUsage {
    /// The image it was made from.
    pub image_id: Option<Digest>,
    /// The size of its writable layer.
    pub size: u64,
    /// Whether it runs (or is paused).
    pub active: bool,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// `Images`, `Containers`, `Local Volumes`, `Build Cache`.
    pub kind: &'static str,
    /// How many.
    pub total: usize,
    /// How many are in use.
    pub active: usize,
    /// Bytes.
    pub size: u64,
    /// Bytes not in use.
    pub reclaimable: u64,
}

/// The four rows of `husk system df`. An image's layers shared with others
/// count once; images a container uses are active, and what only unused
/// images hold is reclaimable.
pub fn disk_usage(
    store: &Store,
    containers: &[ContainerUsage],
) -> Result<Vec<UsageRow>, PruneError> {
    let images = store.list()?;
    let used: BTreeSet<&Digest> = containers
        .iter()
        .filter_map(|c| c.image_id.as_ref())
        .collect();
    let active: Vec<_> = images.iter().filter(|i| used.contains(&i.id)).collect();
    let size = sizes::shared_size(store, &images)?;
    let active_size = sizes::shared_size(store, active.iter().copied())?;
    Ok(vec![
        UsageRow {
            kind: "Images",
            total: images.len(),
            active: active.len(),
            size,
            reclaimable: size.saturating_sub(active_size),
        },
        UsageRow {
            kind: "Containers",
            total: containers.len(),
            active: containers.iter().filter(|c| c.active).count(),
            size: containers.iter().map(|c| c.size).sum(),
            reclaimable: containers
                .iter()
                .filter(|c| !c.active)
                .map(|c| c.size)
                .sum(),
        },
        UsageRow {
            kind: "Local Volumes",
            total: 0,
            active: 0,
            size: 0,
            reclaimable: 0,
        },
        UsageRow {
            kind: "Build Cache",
            total: 0,
            active: 0,
            size: 0,
            reclaimable: 0,
        },
    ])
}

/// Docker's `system df` table.
pub fn disk_usage_table(rows: &[UsageRow]) -> String {
    let mut t = vec![
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
            .map(String::from)
            .to_vec(),
    ];
    for r in rows {
        let reclaimable = match r.reclaimable.saturating_mul(100).checked_div(r.size) {
            Some(pct) => format!("{} ({pct}%)", human_size(r.reclaimable)),
            None => human_size(r.reclaimable),
        };
        t.push(vec![
            r.kind.to_string(),
            r.total.to_string(),
            r.active.to_string(),
            human_size(r.size),
            reclaimable,
        ]);
    }
    format::table(&t)
}

/// Deepest directory nesting [`dir_size`] follows.
const MAX_DEPTH: usize = 256;

/// The bytes of the regular files under `dir` (hard links once; symlinks not
/// followed; nothing below [`MAX_DEPTH`] levels): a container's writable
/// layer size, as Docker's `SizeRw`. A missing directory is 0.
pub fn dir_size(dir: &Path) -> io::Result<u64> {
    let mut seen = BTreeSet::new();
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => walk(dir, 0, &mut seen),
        Ok(_) => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn walk(dir: &Path, depth: usize, seen: &mut BTreeSet<(u64, u64)>) -> io::Result<u64> {
    if depth > MAX_DEPTH {
        return Ok(0);
    }
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let m = match entry.metadata() {
            Ok(m) => m,
            // Gone meanwhile (a running container).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if m.is_dir() {
            total = total.saturating_add(walk(&entry.path(), depth + 1, seen)?);
        } else if m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))) {
            total = total.saturating_add(m.len());
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path().join("store")).unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), vec![0u8; 3000]).unwrap();
        std::fs::hard_link(root.join("a/b/f"), root.join("g")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        assert_eq!(dir_size(&root).unwrap(), 3000);
        assert_eq!(dir_size(&d.path().join("none")).unwrap(), 0);
        std::fs::remove_file(root.join("g")).unwrap();
        crate::import::import_dir(&store, &root, "one", &Default::default()).unwrap();
        std::fs::write(root.join("more"), vec![0u8; 1000]).unwrap();
        crate::import::import_dir(&store, &root, "two", &Default::default()).unwrap();
        let one = store.resolve("one").unwrap();
        let containers = vec![
            ContainerUsage {
                image_id: Some(one.id.clone()),
                size: 500,
                active: true,
            },
            ContainerUsage {
                image_id: Some(one.id.clone()),
                size: 1500,
                active: false,
            },
        ];
        let rows = disk_usage(&store, &containers).unwrap();
        assert_eq!(rows[0].total, 2);
        assert_eq!(rows[0].active, 1);
        assert_eq!(rows[0].size, 3000 + 4000);
        assert_eq!(rows[0].reclaimable, 4000);
        assert_eq!(
            disk_usage_table(&rows),
            "TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE\n\
             Images          2         1         7kB       4kB (57%)\n\
             Containers      2         1         2kB       1.5kB (75%)\n\
             Local Volumes   0         0         0B        0B\n\
             Build Cache     0         0         0B        0B\n"
        );
    }
}
