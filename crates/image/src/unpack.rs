//! Applying layer tars to a root filesystem directory, safely.
//!
//! Every path in a layer is resolved one component at a time from an fd of the rootfs,
//! never following a symlink with the kernel's help: symlinks met on the way are read and
//! resolved by hand *inside* the rootfs (as if it were the root directory, the way a
//! chroot would), and the final component is never followed at all (it is replaced, or
//! created with `O_EXCL|O_NOFOLLOW`). So nothing a layer says (`..`, absolute paths,
//! symlinks planted by an earlier layer, hard links to outside names) can make husk write
//! outside the rootfs. Entries with `..` components are refused outright.
//!
//! Whiteouts (`.wh.NAME`) delete what lower layers put there; opaque markers
//! (`.wh..wh..opq`) empty a directory of everything lower layers put in it.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::digest::{Digest, HashingReader};
use crate::fsutil;

/// Errors from unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The rootfs directory could not be opened.
    #[error("cannot open rootfs directory {path}")]
    OpenRoot {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The layer is not a readable tar stream (or its compression is broken).
    #[error("layer is not a valid tar archive")]
    Tar(#[source] io::Error),
    /// An entry tries to leave the rootfs or is otherwise malformed: the layer is refused.
    #[error("refusing hostile layer entry {path:?}: {reason}")]
    Hostile {
        /// The entry's path, lossily decoded.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The layer would unpack to more bytes than allowed.
    #[error("layer exceeds the unpacked size limit of {limit} bytes (decompression bomb?)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The layer has more entries than allowed.
    #[error("layer exceeds the limit of {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// A filesystem operation failed.
    #[error("cannot unpack {path:?}: {op}")]
    Io {
        /// The entry's path.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The uncompressed layer does not match the diff id from the image config.
    #[error("layer content digest {actual} does not match the image config's diff id {expected}")]
    DiffIdMismatch {
        /// From the config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// The compressed stream uses a format husk cannot read.
    #[error("unsupported layer compression: {0}")]
    Compression(String),
}

/// Bounds on what one image may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct UnpackLimits {
    /// Total bytes of file content across all layers.
    pub max_bytes: u64,
    /// Total tar entries across all layers.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// What unpacking a layer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries processed.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Device nodes skipped because husk does not run as root.
    pub skipped_devices: u64,
}

/// Longest path (bytes) accepted in an entry name or link target.
const MAX_PATH: usize = 4096;
/// Deepest directory nesting the unpacker will create or walk.
const MAX_DEPTH: usize = 256;
/// Most symlinks followed while resolving one path.
const MAX_SYMLINK_HOPS: u32 = 40;
/// Largest PAX or GNU long-name record accepted.
const MAX_EXTENSION: u64 = 1 << 20;
/// Most bytes accepted after the tar end-of-archive marker.
const MAX_TRAILER: u64 = 1 << 20;

/// How a layer stream is compressed, judged by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    /// bzip2 or xz: valid for some tar tools, not for image layers.
    Unsupported,
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
    {
        // A zstd frame, or a zstd skippable frame.
        Compression::Zstd
    } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        Compression::Unsupported
    } else {
        Compression::None
    }
}

/// Sniffs the compression of a layer stream (gzip, zstd or none) and returns a reader of
/// the uncompressed tar.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let mut buf = BufReader::with_capacity(256 << 10, reader);
    let head = buf.fill_buf().map_err(UnpackError::Tar)?;
    match sniff(head) {
        Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf))),
        Compression::Zstd => Ok(Box::new(ZstdReader {
            source: buf,
            decoder: ruzstd::FrameDecoder::new(),
            in_frame: false,
        })),
        Compression::Unsupported => Err(UnpackError::Compression(
            "bzip2/xz layers are not supported".into(),
        )),
        Compression::None => Ok(Box::new(buf)),
    }
}

/// A zstd reader that handles several concatenated frames and skippable frames.
struct ZstdReader<R: BufRead> {
    source: R,
    decoder: ruzstd::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let invalid = |e: ruzstd::frame_decoder::FrameDecoderError| {
            io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
        };
        loop {
            if self.in_frame {
                let d = &mut self.decoder;
                while d.can_collect() < out.len() && !d.is_finished() {
                    let want = out.len() - d.can_collect();
                    d.decode_blocks(
                        &mut self.source,
                        ruzstd::BlockDecodingStrategy::UptoBytes(want),
                    )
                    .map_err(invalid)?;
                }
                let n = d.read(out)?;
                if n > 0 {
                    return Ok(n);
                }
                if d.is_finished() && d.can_collect() == 0 {
                    self.in_frame = false;
                }
                continue;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(ruzstd::frame_decoder::FrameDecoderError::ReadFrameHeaderError(
                    ruzstd::frame::ReadFrameHeaderError::SkipFrame { length, .. },
                )) => {
                    io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                }
                Err(e) => return Err(invalid(e)),
            }
        }
    }
}

/// Timestamps from a tar mtime.
fn times(secs: i64, nanos: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: i64::from(nanos),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// One tar entry's metadata, after PAX and GNU extensions are folded in.
pub(crate) struct EntryMeta {
    pub(crate) path: Vec<u8>,
    link: Option<Vec<u8>>,
    pub(crate) kind: tar::EntryType,
    pub(crate) size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    dev: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Applies layers to one rootfs directory.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    limits: UnpackLimits,
    is_root: bool,
    total_bytes: u64,
    total_entries: u64,
    cache: Option<(Vec<u8>, OwnedFd)>,
}

impl Unpacker {
    /// Prepares to unpack into the existing directory `rootfs`.
    pub fn new(rootfs: &Path, limits: UnpackLimits) -> Result<Unpacker, UnpackError> {
        let root = fsutil::open_dir(rootfs).map_err(|source| UnpackError::OpenRoot {
            path: rootfs.to_path_buf(),
            source,
        })?;
        Ok(Unpacker {
            root,
            limits,
            is_root: rustix::process::geteuid().is_root(),
            total_bytes: 0,
            total_entries: 0,
            cache: None,
        })
    }

    /// Applies one compressed or uncompressed layer. When `diff_id` is given, the
    /// uncompressed stream must hash to it (checked at the end: on mismatch the rootfs
    /// has been written to and must be discarded by the caller).
    pub fn apply_compressed(
        &mut self,
        layer: impl Read,
        diff_id: Option<&Digest>,
    ) -> Result<LayerStats, UnpackError> {
        let tar = decompress(layer)?;
        let mut hashed = HashingReader::new(tar);
        let stats = self.apply(&mut hashed)?;
        // Hash what is left after the end-of-archive marker (padding), within bounds.
        let trailer = io::copy(&mut (&mut hashed).take(MAX_TRAILER + 1), &mut io::sink())
            .map_err(UnpackError::Tar)?;
        if trailer > MAX_TRAILER {
            return Err(UnpackError::Hostile {
                path: String::new(),
                reason: "more than 1 MiB of data after the end of the tar archive",
            });
        }
        let (actual, _, _) = hashed.finish();
        if let Some(expected) = diff_id
            && *expected != actual
        {
            return Err(UnpackError::DiffIdMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        Ok(stats)
    }

    /// Applies one uncompressed layer tar.
    pub fn apply(&mut self, tar: &mut dyn Read) -> Result<LayerStats, UnpackError> {
        let mut stats = LayerStats::default();
        let mut layer_paths: HashSet<Vec<u8>> = HashSet::new();
        let mut dir_times: Vec<(Vec<u8>, Timestamps)> = Vec::new();
        self.cache = None;
        walk_tar(tar, &mut |meta, data| {
            stats.entries += 1;
            self.total_entries += 1;
            if self.total_entries > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            // Every entry's data is read (or skipped, which reads it too): count it all.
            self.charge(meta.size)?;
            self.apply_entry(meta, data, &mut stats, &mut layer_paths, &mut dir_times)
        })?;
        // Directory mtimes last, deepest first, since creating children changes them.
        for (path, ts) in dir_times.iter().rev() {
            let comps = components(path);
            if let Ok(Some(fd)) = self.resolve_dir(&comps, false) {
                let _ = rustix::fs::futimens(&fd, ts);
            }
        }
        self.cache = None;
        Ok(stats)
    }

    fn apply_entry(
        &mut self,
        meta: &EntryMeta,
        data: &mut dyn Read,
        stats: &mut LayerStats,
        layer_paths: &mut HashSet<Vec<u8>>,
        dir_times: &mut Vec<(Vec<u8>, Timestamps)>,
    ) -> Result<(), UnpackError> {
        let shown = || String::from_utf8_lossy(&meta.path).into_owned();
        let io_err = |op: &'static str| {
            move |e: io::Error| UnpackError::Io {
                path: String::from_utf8_lossy(&meta.path).into_owned(),
                op,
                source: e,
            }
        };
        let comps = checked_components(&meta.path)?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself ("./"): its metadata is husk's to choose.
            return Ok(());
        };
        let normalized = comps.join(&b'/');
        let name_os = OsStr::from_bytes(name);

        // Whiteouts.
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                if let Some(dir) = self.resolve_dir(parents, false)? {
                    let prefix = parents.join(&b'/');
                    let keep = |child: &OsStr| {
                        let mut p = prefix.clone();
                        if !p.is_empty() {
                            p.push(b'/');
                        }
                        p.extend_from_slice(child.as_bytes());
                        !layer_paths.contains(&p)
                    };
                    self.cache = None;
                    fsutil::clear_dir(&dir, &keep).map_err(io_err("clear opaque directory"))?;
                }
                return Ok(());
            }
            if hidden.starts_with(b".wh.") {
                // Other AUFS metadata (.wh..wh.plnk, ...): not part of the filesystem.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(UnpackError::Hostile {
                    path: shown(),
                    reason: "malformed whiteout",
                });
            }
            if let Some(dir) = self.resolve_parent(parents, false)? {
                self.cache = None;
                fsutil::remove_all_at(&dir, OsStr::from_bytes(hidden))
                    .map_err(io_err("apply whiteout"))?;
            }
            return Ok(());
        }

        let Some(parent) = self.resolve_parent(parents, true)? else {
            return Err(UnpackError::Hostile {
                path: shown(),
                reason: "parent directory cannot be created",
            });
        };
        layer_paths.insert(normalized.clone());
        let existing = match rustix::fs::statat(&parent, name_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(io_err("stat")(e.into())),
        };
        let mode = meta.mode & 0o7777;
        let ts = times(meta.mtime.0, meta.mtime.1);

        match meta.kind {
            tar::EntryType::Directory => {
                match existing {
                    Some(FileType::Directory) => {}
                    Some(_) => {
                        self.cache = None;
                        fsutil::remove_all_at(&parent, name_os).map_err(io_err("replace"))?;
                        mkdir(&parent, name_os).map_err(io_err("mkdir"))?;
                    }
                    None => mkdir(&parent, name_os).map_err(io_err("mkdir"))?,
                }
                let dir =
                    fsutil::open_dir_at(&parent, name_os).map_err(io_err("open directory"))?;
                let dir_mode = if self.is_root { mode } else { mode | 0o700 };
                self.set_owner_mode_xattrs(&dir, meta, dir_mode)
                    .map_err(io_err("set directory metadata"))?;
                dir_times.push((normalized, ts));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.make_room(&parent, name_os, existing)
                    .map_err(io_err("replace"))?;
                let file = rustix::fs::openat(
                    &parent,
                    name_os,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_err("create file")(e.into()))?;
                let mut file = std::fs::File::from(file);
                let copied =
                    io::copy(&mut data.take(meta.size), &mut file).map_err(UnpackError::Tar)?;
                if copied != meta.size {
                    return Err(UnpackError::Tar(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "layer ends inside a file",
                    )));
                }
                stats.bytes += copied;
                self.set_owner_mode_xattrs(file.as_fd(), meta, mode)
                    .map_err(io_err("set file metadata"))?;
                rustix::fs::futimens(&file, &ts).map_err(|e| io_err("set times")(e.into()))?;
                file.flush().map_err(io_err("write"))?;
            }
            tar::EntryType::Symlink => {
                let target = meta.link.as_deref().unwrap_or_default();
                if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                    return Err(UnpackError::Hostile {
                        path: shown(),
                        reason: "bad symlink target",
                    });
                }
                self.make_room(&parent, name_os, existing)
                    .map_err(io_err("replace"))?;
                rustix::fs::symlinkat(OsStr::from_bytes(target), &parent, name_os)
                    .map_err(|e| io_err("symlink")(e.into()))?;
                if self.is_root {
                    rustix::fs::chownat(
                        &parent,
                        name_os,
                        Some(uid(meta.uid)),
                        Some(gid(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| io_err("chown symlink")(e.into()))?;
                }
                let _ = rustix::fs::utimensat(&parent, name_os, &ts, AtFlags::SYMLINK_NOFOLLOW);
            }
            tar::EntryType::Link => {
                let target = meta.link.as_deref().unwrap_or_default();
                let tcomps = checked_components(target)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(UnpackError::Hostile {
                        path: shown(),
                        reason: "hard link to the root directory",
                    });
                };
                if tcomps == comps {
                    return Ok(());
                }
                let Some(tdir) = self.resolve_parent(tparents, false)? else {
                    return Err(UnpackError::Hostile {
                        path: shown(),
                        reason: "hard link target does not exist",
                    });
                };
                let tname = OsStr::from_bytes(tname);
                match rustix::fs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {}
                    Ok(_) => {
                        return Err(UnpackError::Hostile {
                            path: shown(),
                            reason: "hard link to a directory",
                        });
                    }
                    Err(_) => {
                        return Err(UnpackError::Hostile {
                            path: shown(),
                            reason: "hard link target does not exist",
                        });
                    }
                }
                self.make_room(&parent, name_os, existing)
                    .map_err(io_err("replace"))?;
                rustix::fs::linkat(&tdir, tname, &parent, name_os, AtFlags::empty())
                    .map_err(|e| io_err("hard link")(e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ftype = match meta.kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ftype != FileType::Fifo && !self.is_root {
                    stats.skipped_devices += 1;
                    log::debug!("skipping device node {} (not root)", shown());
                    return Ok(());
                }
                self.make_room(&parent, name_os, existing)
                    .map_err(io_err("replace"))?;
                rustix::fs::mknodat(
                    &parent,
                    name_os,
                    ftype,
                    Mode::from_raw_mode(mode & 0o777),
                    rustix::fs::makedev(meta.dev.0, meta.dev.1),
                )
                .map_err(|e| io_err("mknod")(e.into()))?;
                if self.is_root {
                    rustix::fs::chownat(
                        &parent,
                        name_os,
                        Some(uid(meta.uid)),
                        Some(gid(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| io_err("chown")(e.into()))?;
                    rustix::fs::chmodat(
                        &parent,
                        name_os,
                        Mode::from_raw_mode(mode),
                        AtFlags::empty(),
                    )
                    .map_err(|e| io_err("chmod")(e.into()))?;
                }
                let _ = rustix::fs::utimensat(&parent, name_os, &ts, AtFlags::SYMLINK_NOFOLLOW);
            }
            tar::EntryType::GNUSparse => {
                return Err(UnpackError::Hostile {
                    path: shown(),
                    reason: "sparse files are not supported in layers",
                });
            }
            _ => {
                // Unknown entry types carry no filesystem object; their data is skipped
                // (and counted against the size limit).
                io::copy(&mut data.take(meta.size), &mut io::sink()).map_err(UnpackError::Tar)?;
            }
        }
        Ok(())
    }

    /// Counts `n` bytes against the size limit.
    fn charge(&mut self, n: u64) -> Result<(), UnpackError> {
        self.total_bytes = self.total_bytes.saturating_add(n);
        if self.total_bytes > self.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Removes whatever is at `name` (recursively for a directory) so a new entry can take it.
    fn make_room(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        existing: Option<FileType>,
    ) -> io::Result<()> {
        match existing {
            None => Ok(()),
            Some(FileType::Directory) => {
                self.cache = None;
                fsutil::remove_all_at(parent, name)
            }
            Some(_) => Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?),
        }
    }

    fn set_owner_mode_xattrs(&self, fd: impl AsFd, meta: &EntryMeta, mode: u32) -> io::Result<()> {
        let fd = fd.as_fd();
        if self.is_root {
            rustix::fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid)))?;
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
        for (name, value) in &meta.xattrs {
            let privileged = !name.starts_with(b"user.");
            if privileged && !self.is_root {
                continue;
            }
            match rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(e @ (Errno::NOTSUP | Errno::PERM | Errno::ACCESS | Errno::INVAL)) => {
                    log::debug!("xattr {} not set: {e}", String::from_utf8_lossy(name));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Opens a regular file inside the rootfs for reading, following symlinks only within
    /// the rootfs (as a chroot would). `Ok(None)` if it does not exist or is not a file.
    pub fn open_file(&self, path: &str) -> Result<Option<std::fs::File>, UnpackError> {
        let mut path = path.as_bytes().to_vec();
        let mut hops = 0u32;
        loop {
            if path.len() > MAX_PATH {
                return Ok(None);
            }
            let comps = components(&path);
            let Some((name, parents)) = comps.split_last() else {
                return Ok(None);
            };
            let Some(dir) = self.resolve_dir(parents, false)? else {
                return Ok(None);
            };
            let name_os = OsStr::from_bytes(name);
            let st = match rustix::fs::statat(&dir, name_os, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(_) => return Ok(None),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {
                    let fd = rustix::fs::openat(
                        &dir,
                        name_os,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_error(name, "open", e.into()))?;
                    return Ok(Some(std::fs::File::from(fd)));
                }
                FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Ok(None);
                    }
                    let target = rustix::fs::readlinkat(&dir, name_os, Vec::new())
                        .map_err(|e| io_error(name, "readlink", e.into()))?
                        .into_bytes();
                    path = if target.starts_with(b"/") {
                        target
                    } else {
                        let mut p = parents.join(&b'/');
                        p.push(b'/');
                        p.extend_from_slice(&target);
                        p
                    };
                }
                _ => return Ok(None),
            }
        }
    }

    /// Resolves the parent directory of an entry (all but the last component), using a
    /// one-entry cache since tar entries come grouped by directory.
    fn resolve_parent(
        &mut self,
        parents: &[&[u8]],
        create: bool,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let key = parents.join(&b'/');
        if let Some((k, fd)) = &self.cache
            && *k == key
        {
            return fd
                .try_clone()
                .map(Some)
                .map_err(|e| io_error(&key, "dup", e));
        }
        let fd = self.resolve_dir(parents, create)?;
        if let Some(fd) = &fd {
            self.cache = Some((
                key.clone(),
                fd.try_clone().map_err(|e| io_error(&key, "dup", e))?,
            ));
        }
        Ok(fd)
    }

    /// Resolves `comps` to a directory inside the rootfs, following symlinks only by hand
    /// and only within the rootfs. With `create`, missing directories are made (0755).
    /// `Ok(None)`: something is missing and `create` is false.
    fn resolve_dir(&self, comps: &[&[u8]], create: bool) -> Result<Option<OwnedFd>, UnpackError> {
        let shown = || String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut queue: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut hops = 0u32;
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                stack.pop();
                continue;
            }
            let cur: BorrowedFd<'_> = match stack.last() {
                Some(fd) => fd.as_fd(),
                None => self.root.as_fd(),
            };
            let name = OsStr::from_bytes(&c);
            match rustix::fs::statat(cur, name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => {
                    if !create {
                        return Ok(None);
                    }
                    match mkdir(cur, name) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_error(&c, "mkdir", e)),
                    }
                    queue.push_front(c);
                }
                Err(e) => return Err(io_error(&c, "stat", e.into())),
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        let fd = fsutil::open_dir_at(cur, name)
                            .map_err(|e| io_error(&c, "open directory", e))?;
                        stack.push(fd);
                        if stack.len() > MAX_DEPTH {
                            return Err(UnpackError::Hostile {
                                path: shown(),
                                reason: "directory nesting too deep",
                            });
                        }
                    }
                    FileType::Symlink => {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(UnpackError::Hostile {
                                path: shown(),
                                reason: "too many levels of symbolic links",
                            });
                        }
                        let target = rustix::fs::readlinkat(cur, name, Vec::new())
                            .map_err(|e| io_error(&c, "readlink", e.into()))?;
                        let target = target.into_bytes();
                        if target.len() > MAX_PATH {
                            return Err(UnpackError::Hostile {
                                path: shown(),
                                reason: "symlink target too long",
                            });
                        }
                        if target.starts_with(b"/") {
                            stack.clear();
                        }
                        for part in target.split(|b| *b == b'/').rev() {
                            queue.push_front(part.to_vec());
                        }
                        if queue.len() > MAX_PATH {
                            return Err(UnpackError::Hostile {
                                path: shown(),
                                reason: "symlink resolution too long",
                            });
                        }
                    }
                    _ => {
                        if !create {
                            return Ok(None);
                        }
                        return Err(UnpackError::Hostile {
                            path: shown(),
                            reason: "a path component is not a directory",
                        });
                    }
                },
            }
        }
        match stack.pop() {
            Some(fd) => Ok(Some(fd)),
            None => self
                .root
                .try_clone()
                .map(Some)
                .map_err(|e| io_error(b"/", "dup", e)),
        }
    }
}

fn io_error(path: &[u8], op: &'static str, source: io::Error) -> UnpackError {
    UnpackError::Io {
        path: String::from_utf8_lossy(path).into_owned(),
        op,
        source,
    }
}

fn mkdir(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))?)
}

fn uid(raw: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(
        u32::try_from(raw)
            .ok()
            .filter(|u| *u != u32::MAX)
            .unwrap_or(65534),
    )
}

fn gid(raw: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(
        u32::try_from(raw)
            .ok()
            .filter(|g| *g != u32::MAX)
            .unwrap_or(65534),
    )
}

/// Splits a path into components, dropping empty and `.` ones (and so any leading `/`:
/// absolute names are taken relative to the rootfs).
fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect()
}

/// Like [`components`], but refuses `..`, NUL bytes, and overlong or overdeep names.
pub(crate) fn checked_components(path: &[u8]) -> Result<Vec<&[u8]>, UnpackError> {
    let hostile = |reason| UnpackError::Hostile {
        path: String::from_utf8_lossy(&path[..path.len().min(200)]).into_owned(),
        reason,
    };
    if path.len() > MAX_PATH {
        return Err(hostile("path too long"));
    }
    if path.contains(&0) {
        return Err(hostile("NUL byte in path"));
    }
    let comps = components(path);
    if comps.iter().any(|c| *c == b"..") {
        return Err(hostile("path contains '..'"));
    }
    if comps.len() > MAX_DEPTH {
        return Err(hostile("path nested too deep"));
    }
    Ok(comps)
}

/// Reads a tar stream entry by entry (GNU long names and PAX records folded in, each
/// bounded in size) and calls `f` with each entry and a reader of its data.
pub(crate) fn walk_tar(
    tar: &mut dyn Read,
    f: &mut dyn FnMut(&EntryMeta, &mut dyn Read) -> Result<(), UnpackError>,
) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(UnpackError::Tar)?.raw(true);
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax: Option<Vec<u8>> = None;
    let mut globals = 0u32;
    for entry in entries {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let size = header.entry_size().map_err(UnpackError::Tar)?;
        match kind {
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink | tar::EntryType::XHeader => {
                if size > MAX_EXTENSION {
                    return Err(UnpackError::Hostile {
                        path: String::new(),
                        reason: "oversized PAX or GNU long-name record",
                    });
                }
                let mut data = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut data).map_err(UnpackError::Tar)?;
                let slot = match kind {
                    tar::EntryType::GNULongName => &mut long_name,
                    tar::EntryType::GNULongLink => &mut long_link,
                    _ => &mut pax,
                };
                if slot.is_some() {
                    return Err(UnpackError::Hostile {
                        path: String::new(),
                        reason: "two extension records for one entry",
                    });
                }
                if kind != tar::EntryType::XHeader {
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                }
                *slot = Some(data);
                continue;
            }
            tar::EntryType::XGlobalHeader => {
                globals += 1;
                if size > MAX_EXTENSION || globals > 1000 {
                    return Err(UnpackError::Hostile {
                        path: String::new(),
                        reason: "oversized PAX global header",
                    });
                }
                continue;
            }
            _ => {}
        }
        let meta = build_meta(
            &header,
            kind,
            size,
            long_name.take(),
            long_link.take(),
            pax.take(),
        )?;
        f(&meta, &mut entry)?;
    }
    if long_name.is_some() || long_link.is_some() || pax.is_some() {
        return Err(UnpackError::Tar(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "extension record at end of archive describes no entry",
        )));
    }
    Ok(())
}

/// Folds GNU long names and PAX records into an entry's metadata.
fn build_meta(
    header: &tar::Header,
    kind: tar::EntryType,
    size: u64,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
) -> Result<EntryMeta, UnpackError> {
    let bad = |reason| UnpackError::Hostile {
        path: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
        reason,
    };
    let mut meta = EntryMeta {
        path: long_name.unwrap_or_else(|| header.path_bytes().into_owned()),
        link: long_link.or_else(|| header.link_name_bytes().map(|l| l.into_owned())),
        kind,
        size,
        // Empty or garbled numeric fields read as 0, as GNU tar treats empty ones.
        mode: header.mode().unwrap_or(0),
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        mtime: (i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0), 0),
        dev: (0, 0),
        xattrs: Vec::new(),
    };
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        meta.dev = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
    }
    if let Some(pax) = pax {
        for record in parse_pax(&pax).ok_or_else(|| bad("malformed PAX record"))? {
            let (key, value) = record;
            match key {
                b"path" => meta.path = value.to_vec(),
                b"linkpath" => meta.link = Some(value.to_vec()),
                b"uid" => meta.uid = parse_num(value).ok_or_else(|| bad("bad PAX uid"))?,
                b"gid" => meta.gid = parse_num(value).ok_or_else(|| bad("bad PAX gid"))?,
                b"size" if parse_num(value) != Some(size) => {
                    return Err(bad("PAX size disagrees with the header"));
                }
                b"mtime" => meta.mtime = parse_pax_time(value).unwrap_or(meta.mtime),
                _ if key.starts_with(b"SCHILY.xattr.") => {
                    meta.xattrs
                        .push((key[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
                }
                _ if key.starts_with(b"GNU.sparse.") => {
                    return Err(bad("sparse files are not supported in layers"));
                }
                _ => {}
            }
        }
    }
    Ok(meta)
}

/// Parses PAX extended header records: `LEN KEY=VALUE\n`. `None` if malformed.
fn parse_pax(mut data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=')?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Some(out)
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    Some((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_parsing() {
        let rec = b"30 mtime=1700000000.123456789\n20 path=a/b/c/d/e/f\n";
        let parsed = parse_pax(rec).unwrap();
        assert_eq!(parsed[0], (&b"mtime"[..], &b"1700000000.123456789"[..]));
        assert_eq!(parse_pax_time(parsed[0].1), Some((1700000000, 123456789)));
        assert_eq!(parsed[1].1, b"a/b/c/d/e/f");
        assert!(parse_pax(b"99 path=x\n").is_none());
        assert!(parse_pax(b"5 a\n").is_none());
    }

    #[test]
    fn component_checks() {
        assert_eq!(
            checked_components(b"/etc/./passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert!(checked_components(b"a/../../b").is_err());
        assert!(checked_components(b"a/\0b").is_err());
        assert!(checked_components(&b"a/".repeat(300)).is_err());
    }
}
