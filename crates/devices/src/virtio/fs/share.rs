//! The filesystem one share serves: fuse-backend-rs's `PassthroughFs` on the
//! share's host directory, behind a wrapper that enforces what the
//! passthrough does not:
//!
//! * **read-only shares** refuse every request that would change the host
//!   directory with `EROFS` (and `W_OK` access checks), whatever the guest
//!   mounted;
//! * **every share** refuses to create block or character devices (except
//!   overlayfs's 0:0 whiteout) and to set or remove `security.*` extended
//!   attributes (file capabilities, LSM labels), which the host would honour;
//! * requests the passthrough has no safe use for here (DAX mappings,
//!   `ioctl`, `bmap`, `poll`) get `ENOSYS` because the wrapper does not pass
//!   them on;
//! * **single-file shares** (`only`) show one entry in the root and
//!   nothing else: LOOKUP of any other name in the root is `ENOENT`,
//!   READDIR and READDIRPLUS of the root list only that entry (built from
//!   a lookup of it, so the passthrough never even opens the siblings),
//!   every request that would create, remove, rename or link a name in the
//!   root is `EPERM` (renaming the file away or replacing it would break
//!   the guest's bind mount of it), and so are SETATTR, SETXATTR and
//!   REMOVEXATTR of the root itself. The file itself is served like any
//!   file of a directory share; LOOKUP opens it with `O_NOFOLLOW`, so if
//!   the host swaps in a symlink the guest gets the link, not its target.
//!
//! Containment (the guest reaching host files outside the share) is the
//! passthrough's own design, configured in [`passthrough_config`]; see the
//! module documentation of [`super`].

use std::ffi::{CStr, CString};
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FsOptions, OpenOptions, SetattrValid, stat64, statvfs64,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, ListxattrReply, ROOT_ID,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

/// The passthrough's configuration for a share rooted at `root_dir` (an
/// absolute, canonical path).
///
/// * `do_import: true`: the passthrough is used on its own (no
///   fuse-backend-rs `Vfs` above it), so it must import its root itself at
///   INIT and must itself check names in create/link/rename requests (it
///   does that only when `do_import` is set).
/// * `inode_file_handles: false`: inodes are held as `O_PATH` descriptors,
///   never as kernel file handles; nothing opens by handle
///   (`open_by_handle_at` could reach any file on the host filesystem).
/// * `xattr: true`: extended attributes behave as on a local filesystem
///   (the wrapper keeps `security.*` read-only).
/// * `writeback: false`, `no_open: false`, `cache_policy: Auto`
///   (close-to-open consistency): the host may change shared files behind
///   the guest's back (volumes), so the guest must not cache writes.
pub(super) fn passthrough_config(root_dir: String) -> Config {
    Config {
        root_dir,
        do_import: true,
        inode_file_handles: false,
        xattr: true,
        writeback: false,
        no_open: false,
        no_opendir: false,
        killpriv_v2: false,
        cache_policy: CachePolicy::Auto,
        entry_timeout: Duration::from_secs(1),
        attr_timeout: Duration::from_secs(1),
        // Size changes from the guest are ordinary file operations.
        seal_size: false,
        dax_file_size: None,
        ..Config::default()
    }
}

/// The filesystem behind one share.
pub(super) struct ShareFs {
    inner: PassthroughFs,
    read_only: bool,
    /// Whether husk runs as root. If not, the passthrough cannot switch
    /// the thread to the guest caller's uid/gid (it would fail every
    /// request from a non-root guest user with EPERM), so every request
    /// runs as husk's own user: files the guest creates belong to it.
    host_root: bool,
    /// A single-file share: the one name the root shows.
    only: Option<CString>,
    /// Keep set-id bits off the host ([`super::FsConfig::no_setid`]).
    no_setid: bool,
}

impl std::fmt::Debug for ShareFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareFs")
            .field("read_only", &self.read_only)
            .field("host_root", &self.host_root)
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn eperm() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

/// Whether open(2) flags ask for write access or truncation.
fn open_writes(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Names a request may create: one path component, not `.` or `..`. (The
/// passthrough checks this too; the wrapper does not rely on it.)
fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(einval());
    }
    Ok(())
}

impl ShareFs {
    /// `only`: see [`super::FsConfig::only`] (the caller checked it is one
    /// name).
    pub(super) fn new(
        inner: PassthroughFs,
        read_only: bool,
        host_root: bool,
        only: Option<CString>,
        no_setid: bool,
    ) -> Self {
        Self {
            inner,
            read_only,
            host_root,
            only,
            no_setid,
        }
    }

    /// A mode without the set-id bits [`super::FsConfig::no_setid`] keeps
    /// off the host (`S_ISGID` stays on directories).
    fn mode(&self, mode: u32, dir: bool) -> u32 {
        if !self.no_setid {
            return mode;
        }
        let strip = if dir {
            libc::S_ISUID
        } else {
            libc::S_ISUID | libc::S_ISGID
        };
        mode & !strip
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only { Err(erofs()) } else { Ok(()) }
    }

    /// In a single-file share, names in the root and the root itself are
    /// fixed: refuses a change to `dir` (a directory whose entries change,
    /// or an inode whose attributes change) if it is the root.
    fn root_fixed(&self, dir: Inode) -> io::Result<()> {
        if self.only.is_some() && dir == ROOT_ID {
            Err(eperm())
        } else {
            Ok(())
        }
    }

    /// A request that creates, removes or renames `name` in `dir`: the
    /// share must be writable, the name one path component, and `dir` not
    /// a single-file share's fixed root.
    fn entry_change(&self, dir: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name)?;
        self.root_fixed(dir)
    }

    /// In a single-file share, the one name the root shows (`.` and `..`,
    /// the root itself there, too).
    fn visible(&self, parent: Inode, name: &CStr) -> io::Result<()> {
        match &self.only {
            Some(only) if parent == ROOT_ID => {
                let b = name.to_bytes();
                if b == only.as_bytes() || b == b"." || b == b".." {
                    Ok(())
                } else {
                    Err(enoent())
                }
            }
            _ => Ok(()),
        }
    }

    /// The root of a single-file share as READDIR(PLUS) shows it: the one
    /// entry at offset 0, nothing after it. Looks the entry up (the caller
    /// forgets it unless it hands the node id to the guest); `None` when it
    /// is gone from the host or `offset` is past it.
    fn only_entry(&self, ctx: &Context, offset: u64) -> io::Result<Option<(&[u8], Entry)>> {
        let Some(only) = &self.only else {
            return Ok(None);
        };
        if offset > 0 {
            return Ok(None);
        }
        match self.inner.lookup(ctx, ROOT_ID, only) {
            Ok(e) => Ok(Some((only.as_bytes(), e))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn xattr_writable(&self, name: &CStr) -> io::Result<()> {
        self.writable()?;
        if name.to_bytes().starts_with(b"security.") {
            return Err(eperm());
        }
        Ok(())
    }
}

type Inode = u64;
type Handle = u64;

impl FileSystem for ShareFs {
    type Inode = Inode;
    type Handle = Handle;

    /// The passthrough used without fuse-backend-rs's `Vfs` offers only
    /// READDIRPLUS; `Vfs` adds the options below, and so does the wrapper.
    /// Without BIG_WRITES and MAX_PAGES the kernel sends writes of at most
    /// 4 KiB (the server's minimal `max_write`), one request per page;
    /// with them, up to 1 MiB per request. ASYNC_READ and PARALLEL_DIROPS
    /// let the guest keep several reads and lookups in flight,
    /// AUTO_INVAL_DATA drops cached pages when the host changed a file
    /// (volumes), ATOMIC_O_TRUNC passes O_TRUNC with OPEN (checked as a
    /// write by `open`).
    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let extra = FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::AUTO_INVAL_DATA
            | FsOptions::ATOMIC_O_TRUNC;
        Ok(self.inner.init(capable)? | (capable & extra))
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        // The passthrough switches credentials only for non-zero ids.
        if !self.host_root {
            ctx.uid = 0;
            ctx.gid = 0;
        }
        Ok(())
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        self.visible(parent, name)?;
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        self.root_fixed(inode)?;
        let mut attr = attr;
        if self.no_setid && valid.contains(SetattrValid::MODE) {
            let dir = self
                .inner
                .getattr(ctx, inode, handle)
                .is_ok_and(|(st, _)| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            attr.st_mode = self.mode(attr.st_mode, dir);
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.entry_change(parent, name)?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.entry_change(inode, name)?;
        let kind = mode & libc::S_IFMT;
        // A device node in a share would be a device node on the host.
        // overlayfs's whiteout (a 0:0 character device) is harmless.
        if kind == libc::S_IFBLK || (kind == libc::S_IFCHR && rdev != 0) {
            return Err(eperm());
        }
        self.inner
            .mknod(ctx, inode, name, self.mode(mode, false), rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.entry_change(parent, name)?;
        self.inner
            .mkdir(ctx, parent, name, self.mode(mode, true), umask)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.entry_change(parent, name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.entry_change(parent, name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.entry_change(olddir, oldname)?;
        self.entry_change(newdir, newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.entry_change(newparent, newname)?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        if open_writes(flags) {
            self.writable()?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        self.entry_change(parent, name)?;
        let mut args = args;
        args.mode = self.mode(args.mode, false);
        self.inner.create(ctx, parent, name, args)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.xattr_writable(name)?;
        self.root_fixed(inode)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.xattr_writable(name)?;
        self.root_fixed(inode)?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.only.is_some() && inode == ROOT_ID {
            // Built from a lookup, not the host directory's listing: the
            // handle is not used (the listing is what LOOKUP shows anyway).
            if let Some((name, e)) = self.only_entry(ctx, offset)? {
                // Like the passthrough's READDIR: the node id as ino, and
                // no reference kept.
                self.inner.forget(ctx, e.inode, 1);
                add_entry(DirEntry {
                    ino: e.inode,
                    offset: 1,
                    type_: (e.attr.st_mode & libc::S_IFMT) >> 12,
                    name,
                })?;
            }
            return Ok(());
        }
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.only.is_some() && inode == ROOT_ID {
            if let Some((name, e)) = self.only_entry(ctx, offset)? {
                let node = e.inode;
                let de = DirEntry {
                    ino: e.attr.st_ino,
                    offset: 1,
                    type_: (e.attr.st_mode & libc::S_IFMT) >> 12,
                    name,
                };
                // The guest holds the lookup's reference only if the entry
                // went into the reply.
                match add_entry(de, e) {
                    Ok(0) | Err(_) => self.inner.forget(ctx, node, 1),
                    Ok(_) => {}
                }
            }
            return Ok(());
        }
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }
}
