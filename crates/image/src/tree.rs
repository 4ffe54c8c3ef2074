//! Walking a container's directories (an overlayfs upper directory, an image
//! rootfs) by directory fd, never following a symlink, and writing what is
//! found as tar entries. Shared by `commit` and `export`.

// `Stat`'s field types differ between targets; the casts are for the others.
#![allow(clippy::unnecessary_cast)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// Deepest nesting walked; deeper trees are refused.
pub(crate) const MAX_DEPTH: usize = 256;

/// One directory entry and its `lstat`.
pub(crate) struct Node {
    pub(crate) name: Vec<u8>,
    pub(crate) st: Stat,
}

impl Node {
    pub(crate) fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.st.st_mode as _)
    }
    /// Permission bits.
    pub(crate) fn perms(&self) -> u32 {
        self.st.st_mode as u32 & 0o777
    }
    pub(crate) fn is_dir(&self) -> bool {
        self.kind() == FileType::Directory
    }
}

/// Opens a directory path (husk's own paths: the upper dir, the rootfs).
/// `None` if it does not exist.
pub(crate) fn open_root(path: &Path) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A subdirectory, refusing a symlink.
pub(crate) fn open_sub(dir: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The entries of a directory, sorted by name (so archives are reproducible).
pub(crate) fn list(dir: &OwnedFd) -> io::Result<Vec<Node>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = name.to_vec();
        match rustix::fs::statat(dir, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => out.push(Node { name, st }),
            // Removed meanwhile.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Does `name` exist under `dir` (a relative path, not following its last component)?
pub(crate) fn exists(dir: Option<&OwnedFd>, path: &[u8]) -> bool {
    dir.is_some_and(|d| {
        rustix::fs::statat(d, OsStr::from_bytes(path), AtFlags::SYMLINK_NOFOLLOW).is_ok()
    })
}

fn xattr_is(fd: &OwnedFd, names: &[&str], value: &[u8]) -> bool {
    let mut buf = [0u8; 8];
    names.iter().any(
        |n| matches!(rustix::fs::fgetxattr(fd, *n, &mut buf[..]), Ok(len) if &buf[..len] == value),
    )
}

/// Is this directory marked opaque by overlayfs (`user.overlay.opaque`, or
/// `trusted.overlay.opaque` for a privileged mount)?
pub(crate) fn is_opaque(dir: &OwnedFd) -> bool {
    xattr_is(
        dir,
        &["user.overlay.opaque", "trusted.overlay.opaque"],
        b"y",
    )
}

/// Is this entry an overlayfs whiteout: a 0:0 character device, or an empty
/// file with the `overlay.whiteout` xattr (newer kernels)?
pub(crate) fn is_whiteout(dir: &OwnedFd, node: &Node) -> bool {
    match node.kind() {
        FileType::CharacterDevice => node.st.st_rdev == 0,
        FileType::RegularFile if node.st.st_size == 0 => open_file(dir, node).is_ok_and(|f| {
            ["user.overlay.whiteout", "trusted.overlay.whiteout"]
                .iter()
                .any(|n| rustix::fs::fgetxattr(&f, *n, &mut [0u8; 8][..]).is_ok())
        }),
        _ => false,
    }
}

fn open_file(dir: &OwnedFd, node: &Node) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(&node.name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// A tar stream being written, with the hard links seen so far.
pub(crate) struct TarOut<W: Write> {
    pub(crate) tar: tar::Builder<W>,
    links: HashMap<(u64, u64), Vec<u8>>,
}

fn header(st: &Stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode as u32 & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime((st.st_mtime as i64).max(0) as u64);
    h.set_size(0);
    h
}

fn path_of(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

impl<W: Write> TarOut<W> {
    pub(crate) fn new(w: W) -> Self {
        TarOut {
            tar: tar::Builder::new(w),
            links: HashMap::new(),
        }
    }

    /// An empty regular file entry (whiteouts and opaque markers).
    pub(crate) fn marker(&mut self, path: &[u8], st: &Stat, mode: u32) -> io::Result<()> {
        let mut h = header(st, tar::EntryType::Regular);
        h.set_mode(mode);
        self.tar.append_data(&mut h, path_of(path), io::empty())
    }

    /// Writes `node` (found in `dir`) as the entry `path`. Sockets are
    /// skipped, as Docker does.
    pub(crate) fn entry(&mut self, dir: &OwnedFd, node: &Node, path: &[u8]) -> io::Result<()> {
        let st = &node.st;
        match node.kind() {
            FileType::Directory => {
                let mut h = header(st, tar::EntryType::Directory);
                self.tar.append_data(&mut h, path_of(path), io::empty())
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    let key = (st.st_dev as u64, st.st_ino as u64);
                    if let Some(first) = self.links.get(&key) {
                        let mut h = header(st, tar::EntryType::Link);
                        let first = first.clone();
                        return self.tar.append_link(&mut h, path_of(path), path_of(&first));
                    }
                    self.links.insert(key, path.to_vec());
                }
                let f = open_file(dir, node)?;
                let now = rustix::fs::fstat(&f)?;
                if FileType::from_raw_mode(now.st_mode as _) != FileType::RegularFile
                    || now.st_ino != st.st_ino
                {
                    return Err(io::Error::other(format!(
                        "{} changed while being read",
                        String::from_utf8_lossy(path)
                    )));
                }
                let size = st.st_size.max(0) as u64;
                let mut h = header(st, tar::EntryType::Regular);
                h.set_size(size);
                let mut data = Exact {
                    inner: std::fs::File::from(f).take(size),
                    left: size,
                };
                self.tar.append_data(&mut h, path_of(path), &mut data)
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(dir, OsStr::from_bytes(&node.name), Vec::new())?;
                let mut h = header(st, tar::EntryType::Symlink);
                self.tar
                    .append_link(&mut h, path_of(path), path_of(target.as_bytes()))
            }
            kind @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                let mut h = header(
                    st,
                    match kind {
                        FileType::CharacterDevice => tar::EntryType::Char,
                        FileType::BlockDevice => tar::EntryType::Block,
                        _ => tar::EntryType::Fifo,
                    },
                );
                if kind != FileType::Fifo {
                    h.set_device_major(rustix::fs::major(st.st_rdev as _))?;
                    h.set_device_minor(rustix::fs::minor(st.st_rdev as _))?;
                }
                self.tar.append_data(&mut h, path_of(path), io::empty())
            }
            _ => Ok(()),
        }
    }
}

/// Reads exactly `left` bytes, failing if the file ends early (it shrank
/// while being archived, which would otherwise corrupt the tar).
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
                "a file shrank while being archived",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `prefix/name` as bytes (just `name` at the top).
pub(crate) fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut p = prefix.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}
