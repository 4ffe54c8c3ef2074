//! `husk export`: a container's merged filesystem (its image's rootfs with
//! its writable layer over it, whiteouts and opaque directories applied) as
//! one plain tar, as Docker's `export` writes it.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::tree::{self, MAX_DEPTH, Node, TarOut};

/// Errors exporting a container.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the directories or writing the tar failed.
    #[error("cannot export {path}")]
    Io {
        /// Where (relative to the container's root).
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The filesystem is nested deeper than husk walks.
    #[error("the container's filesystem is nested deeper than {MAX_DEPTH} directories")]
    TooDeep,
}

/// Writes the merged tree of `lower` (the image rootfs) and `upper` (the
/// overlayfs upper directory) to `out` as a plain tar. Symlinks are never
/// followed; entries are sorted.
pub fn export(lower: &Path, upper: &Path, out: impl Write) -> Result<(), ExportError> {
    let fail = |source| ExportError::Io {
        path: "/".into(),
        source,
    };
    let lower_fd = tree::open_root(lower).map_err(fail)?;
    let upper_fd = tree::open_root(upper).map_err(fail)?;
    let mut tar = TarOut::new(out);
    merge(&mut tar, lower_fd.as_ref(), upper_fd.as_ref(), b"", 0)?;
    tar.tar
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(fail)
}

fn merge<W: Write>(
    tar: &mut TarOut<W>,
    lower: Option<&OwnedFd>,
    upper: Option<&OwnedFd>,
    prefix: &[u8],
    depth: usize,
) -> Result<(), ExportError> {
    if depth > MAX_DEPTH {
        return Err(ExportError::TooDeep);
    }
    let fail = |source| ExportError::Io {
        path: String::from_utf8_lossy(prefix).into_owned(),
        source,
    };
    let mut names: BTreeMap<Vec<u8>, (Option<Node>, Option<Node>)> = BTreeMap::new();
    if let Some(u) = upper {
        for n in tree::list(u).map_err(fail)? {
            let key = n.name.clone();
            names.entry(key).or_default().1 = Some(n);
        }
    }
    if let Some(l) = lower {
        for n in tree::list(l).map_err(fail)? {
            let key = n.name.clone();
            names.entry(key).or_default().0 = Some(n);
        }
    }
    for (name, (low, up)) in names {
        let path = tree::join(prefix, &name);
        match (low, up) {
            (_, Some(u)) if tree::is_whiteout(upper.expect("listed"), &u) => {}
            (low, Some(u)) => {
                let dir = upper.expect("listed");
                tar.entry(dir, &u, &path).map_err(fail)?;
                if u.is_dir() {
                    let sub = tree::open_sub(dir, &name).map_err(fail)?;
                    let lower_sub = match (&low, lower) {
                        (Some(l), Some(ld)) if l.is_dir() && !tree::is_opaque(&sub) => {
                            Some(tree::open_sub(ld, &name).map_err(fail)?)
                        }
                        _ => None,
                    };
                    merge(tar, lower_sub.as_ref(), Some(&sub), &path, depth + 1)?;
                }
            }
            (Some(l), None) => {
                let dir = lower.expect("listed");
                tar.entry(dir, &l, &path).map_err(fail)?;
                if l.is_dir() {
                    let sub = tree::open_sub(dir, &name).map_err(fail)?;
                    merge(tar, Some(&sub), None, &path, depth + 1)?;
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}
