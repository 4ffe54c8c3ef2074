//! Writes a Linux initramfs: an uncompressed "newc" cpio archive (the format
//! in the kernel's Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! husk builds the guest's initramfs itself, so it needs neither `cpio` nor
//! root (device nodes are archive entries, not files on the host). Parent
//! directories are added automatically; paths are checked so that an archive
//! never names `..` or an absolute path.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

/// Errors building an archive.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A path that is empty, absolute, has `..`/`.` components or a NUL.
    #[error("invalid initramfs path {0:?}: it must be relative, without '.', '..' or NUL")]
    BadPath(String),
    /// Two entries with one path, or a file where a directory is needed.
    #[error("initramfs path {0:?} is already used by another entry")]
    Conflict(String),
    /// A file larger than the format's 32-bit size field.
    #[error("{path:?} is {size} bytes; a newc archive holds files up to 4 GiB")]
    TooLarge {
        /// The entry.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Reading a host file.
    #[error("cannot read {path} for the initramfs")]
    Read {
        /// The host file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A host file of a type the archive builder does not copy (a device
    /// node, socket or FIFO: add those explicitly).
    #[error("{0} is not a regular file, directory or symlink")]
    Unsupported(String),
    /// Writing the archive.
    #[error("cannot write the initramfs")]
    Write(#[source] io::Error),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    kind: Kind,
}

/// An archive being built. Entries are written sorted by path, so parents
/// come before children and the output is reproducible.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

fn check_path(path: &str) -> Result<String, InitramfsError> {
    let bad = || InitramfsError::BadPath(path.to_owned());
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() || trimmed.starts_with('/') || trimmed.contains('\0') {
        return Err(bad());
    }
    if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(trimmed.to_owned())
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, path: &str, mode: u32, kind: Kind) -> Result<&mut Self, InitramfsError> {
        let path = check_path(path)?;
        // Parents: implicit directories, 0755.
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            match self.entries.get(&parent) {
                Some(Entry {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => return Err(InitramfsError::Conflict(parent)),
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            mode: 0o755,
                            kind: Kind::Dir,
                        },
                    );
                }
            }
        }
        match (self.entries.get(&path), &kind) {
            // Re-adding a directory (explicitly after implicitly) sets its mode.
            (
                Some(Entry {
                    kind: Kind::Dir, ..
                }),
                Kind::Dir,
            )
            | (None, _) => {}
            (Some(_), _) => return Err(InitramfsError::Conflict(path)),
        }
        self.entries.insert(
            path,
            Entry {
                mode: mode & 0o7777,
                kind,
            },
        );
        Ok(self)
    }

    /// A directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, InitramfsError> {
        self.add(path, mode, Kind::Dir)
    }

    /// A regular file with `data`.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, InitramfsError> {
        let data = data.into();
        if u32::try_from(data.len()).is_err() {
            return Err(InitramfsError::TooLarge {
                path: path.to_owned(),
                size: data.len() as u64,
            });
        }
        self.add(path, mode, Kind::File(data))
    }

    /// A regular file with the contents of host file `src`.
    pub fn file_from(
        &mut self,
        path: &str,
        mode: u32,
        src: &Path,
    ) -> Result<&mut Self, InitramfsError> {
        let data = std::fs::read(src).map_err(|source| InitramfsError::Read {
            path: src.display().to_string(),
            source,
        })?;
        self.file(path, mode, data)
    }

    /// A symbolic link to `target` (stored as given; may be absolute, it is
    /// resolved inside the guest).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        if target.is_empty() || target.contains('\0') {
            return Err(InitramfsError::BadPath(target.to_owned()));
        }
        self.add(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    /// A character device node.
    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.add(path, mode, Kind::CharDev { major, minor })
    }

    /// Adds everything below host directory `root` (files, directories and
    /// symlinks with their permission bits; other file types are refused),
    /// under `prefix` (empty for the archive's root).
    pub fn add_tree(&mut self, root: &Path, prefix: &str) -> Result<&mut Self, InitramfsError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |p: &Path, source| InitramfsError::Read {
            path: p.display().to_string(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(root)
            .map_err(|e| read(root, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| read(root, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let host = entry.path();
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| InitramfsError::BadPath(host.display().to_string()))?;
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(&host).map_err(|e| read(&host, e))?;
            let mode = meta.permissions().mode();
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(|e| read(&host, e))?;
                let target = target
                    .to_str()
                    .ok_or_else(|| InitramfsError::BadPath(host.display().to_string()))?;
                self.symlink(&path, target)?;
            } else if ft.is_dir() {
                self.dir(&path, mode)?;
                self.add_tree(&host, &path)?;
            } else if ft.is_file() {
                self.file_from(&path, mode, &host)?;
            } else {
                return Err(InitramfsError::Unsupported(host.display().to_string()));
            }
        }
        Ok(self)
    }

    /// Whether the archive has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        check_path(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// Writes the archive, with its trailer.
    pub fn write_to(&self, mut w: impl Write) -> Result<(), InitramfsError> {
        let mut out = CpioWriter {
            w: &mut w,
            written: 0,
        };
        for (ino, (path, e)) in self.entries.iter().enumerate() {
            let (ftype, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
                Kind::Dir => (S_IFDIR, &[], (0, 0)),
                Kind::File(d) => (S_IFREG, d, (0, 0)),
                Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
                Kind::CharDev { major, minor } => (S_IFCHR, &[], (*major, *minor)),
            };
            let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
            out.entry(ino as u32 + 1, ftype | e.mode, nlink, rdev, path, data)
                .map_err(InitramfsError::Write)?;
        }
        out.entry(0, 0, 1, (0, 0), "TRAILER!!!", &[])
            .map_err(InitramfsError::Write)?;
        Ok(())
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, InitramfsError> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }
}

struct CpioWriter<'a, W: Write> {
    w: &'a mut W,
    written: usize,
}

impl<W: Write> CpioWriter<'_, W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len();
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn entry(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        name: &str,
        data: &[u8],
    ) -> io::Result<()> {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name, mode, data and (rdev major, minor) of one archive entry.
    type Parsed = (String, u32, Vec<u8>, (u32, u32));

    /// A minimal newc reader, to check what was written.
    fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at offset {off}");
            let f = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (f(1), f(6) as usize, f(9), f(10), f(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_owned();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_start = (110 + namesize).next_multiple_of(4);
            let data = b[data_start..data_start + size].to_vec();
            let next = (data_start + size).next_multiple_of(4);
            assert_eq!((off + next) % 4, 0);
            off += next;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data, (rmaj, rmin)));
        }
    }

    #[test]
    fn writes_parseable_newc_with_implicit_parents() {
        let mut a = Initramfs::new();
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        a.file("etc/conf/x.txt", 0o644, b"hello".to_vec()).unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.symlink("bin/sh", "/init").unwrap();
        a.dir("tmp", 0o1777).unwrap();
        let e = parse(&a.to_bytes().unwrap());
        let names: Vec<_> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/conf",
                "etc/conf/x.txt",
                "init",
                "tmp"
            ]
        );
        let get = |n: &str| e.iter().find(|x| x.0 == n).unwrap().clone();
        assert_eq!(get("init").1, S_IFREG | 0o755);
        assert_eq!(get("etc/conf/x.txt").2, b"hello");
        assert_eq!(get("etc").1, S_IFDIR | 0o755);
        assert_eq!(
            (get("dev/console").1, get("dev/console").3),
            (S_IFCHR | 0o600, (5, 1))
        );
        assert_eq!(
            (get("bin/sh").1, get("bin/sh").2),
            (S_IFLNK | 0o777, b"/init".to_vec())
        );
        assert_eq!(get("tmp").1, S_IFDIR | 0o1777);
    }

    #[test]
    fn output_is_reproducible() {
        let build = || {
            let mut a = Initramfs::new();
            a.file("b", 0o644, vec![1, 2, 3]).unwrap();
            a.file("a", 0o644, vec![4]).unwrap();
            a.to_bytes().unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn rejects_escaping_and_conflicting_paths() {
        let mut a = Initramfs::new();
        for bad in ["", "/abs", "../x", "a/../b", "a/./b", "a//b", "x\0y", "."] {
            assert!(
                matches!(a.file(bad, 0o644, vec![]), Err(InitramfsError::BadPath(_))),
                "{bad:?}"
            );
        }
        a.file("f", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.file("f", 0o644, vec![]),
            Err(InitramfsError::Conflict(_))
        ));
        assert!(matches!(
            a.file("f/g", 0o644, vec![]),
            Err(InitramfsError::Conflict(_))
        ));
        assert!(matches!(
            a.dir("f", 0o755),
            Err(InitramfsError::Conflict(_))
        ));
        assert!(matches!(
            a.symlink("l", ""),
            Err(InitramfsError::BadPath(_))
        ));
        // A trailing slash names the same directory.
        a.dir("d/", 0o700).unwrap();
        a.dir("d", 0o755).unwrap();
    }

    #[test]
    fn adds_a_host_tree() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("husk-initramfs-tree-{}", std::process::id()));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("init"), b"x").unwrap();
        std::fs::set_permissions(d.join("init"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(d.join("etc/motd"), b"hi").unwrap();
        std::os::unix::fs::symlink("/init", d.join("sh")).unwrap();
        let mut a = Initramfs::new();
        a.add_tree(&d, "").unwrap();
        assert!(a.contains("etc/motd") && a.contains("sh"));
        let e = parse(&a.to_bytes().unwrap());
        let init = e.iter().find(|x| x.0 == "init").unwrap();
        assert_eq!(
            (init.1, init.2.as_slice()),
            (S_IFREG | 0o750, b"x".as_slice())
        );
        let sh = e.iter().find(|x| x.0 == "sh").unwrap();
        assert_eq!(sh.2, b"/init");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reading_a_missing_host_file_names_it() {
        let e = Initramfs::new()
            .file_from("x", 0o644, Path::new("/nonexistent/file"))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/file"));
    }
}
