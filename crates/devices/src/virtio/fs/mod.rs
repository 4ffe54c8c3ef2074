//! virtio-fs (device id 26): a host directory shared with the guest, served
//! in-process by fuse-backend-rs (the FUSE server and passthrough
//! filesystem Kata's Dragonball uses).
//!
//! One device serves one share ([`FsConfig`]): a tag, a host directory, and
//! read-only or read-write. The guest mounts it with
//! `mount -t virtiofs <tag> <dir>`. The device has one high-priority queue
//! and one request queue; every request goes through
//! `fuse_backend_rs::api::server::Server` over a `PassthroughFs` rooted at
//! the directory, on the device's worker thread.
//!
//! # Containment
//!
//! The guest must reach nothing on the host outside the share. This rests
//! on how `PassthroughFs` resolves names, with the settings in
//! [`share::passthrough_config`]:
//!
//! * Every inode the guest can name comes from a LOOKUP (or a create) in a
//!   directory it already holds, starting from the share's root. A lookup
//!   opens one path component relative to the parent's `O_PATH` descriptor
//!   with `openat(..., O_PATH | O_NOFOLLOW)`; names containing `/` are
//!   refused, and `..` in the root is served as `.`. So `..` never leaves
//!   the share, and nothing the guest sends is ever resolved as a path from
//!   `/`.
//! * Symbolic links are never followed on the host: LOOKUP returns the link
//!   itself and READLINK its text, which the guest kernel resolves in the
//!   guest's own namespace. An absolute symlink or one pointing up and out
//!   reaches guest paths only. Files are opened by reopening their
//!   `O_PATH` descriptor through `/proc/self/fd`, which the passthrough
//!   refuses for anything but regular files and directories (so a symlink
//!   inode is never reopened through its target).
//! * No file handles: inodes are kept as `O_PATH` descriptors
//!   (`inode_file_handles: false`), and the FUSE protocol has no request
//!   that takes a host file handle, so `open_by_handle_at` is never used.
//! * LINK and RENAME take inodes and directories the guest already holds,
//!   i.e. inside this share; each share is its own device and its own
//!   passthrough with its own inode table, so there is no naming an inode of
//!   another share (the guest kernel refuses cross-mount links and renames
//!   with `EXDEV`; a forged node id is just an unknown inode: `EBADF`).
//!
//! Limits, as with Dragonball (and unlike virtiofsd, which also pivots into
//! a mount namespace rooted at the share): the server runs in the VMM
//! process, and a *host* process that moves a directory out of the share
//! while the guest holds it lets the guest follow it there. Requests run
//! with the guest's uid/gid as the thread's effective ids when husk is root
//! (guest root is host root inside the share), so a read-write share could
//! get set-user-ID-root programs; shares with [`FsConfig::no_setid`]
//! (volumes) never do, and the wrapper ([`share`]) refuses device nodes and
//! `security.*` xattrs on every share. When husk is not root, every request runs as
//! husk's own user (the guest's ids are not switched to, which would fail),
//! so the guest can do no more on the host than husk's user can.
//!
//! The server thread runs with the least privilege that works
//! ([`jail`]): before it serves the first request it gets its own umask,
//! keeps only the capabilities the passthrough needs as root (`CAP_CHOWN`,
//! `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH` for LINK, `CAP_FOWNER`,
//! `CAP_FSETID`, `CAP_SETUID`, `CAP_SETGID`; none when husk is not root;
//! the bounding set reduced to match), sets `no_new_privs` and installs a
//! seccomp allowlist of the syscalls it makes (others fail with `EPERM`:
//! no sockets, `execve`, `clone`, `mount`, `open_by_handle_at`, ...). All
//! of it applies to that thread only. If the jail cannot be applied,
//! activation fails ([`ActivateError::Jail`]) and nothing is served. The
//! thread still opens host paths as root, so containment to the share
//! remains the passthrough's, as above.
//!
//! # Single-file shares
//!
//! With [`FsConfig::only`] set, the share is the file's directory but the
//! guest sees exactly that one entry in the share's root: lookups of other
//! names fail with `ENOENT`, READDIR lists only it, and nothing can be
//! created, removed, renamed or linked in the root, nor the root's own
//! attributes changed (`EPERM`). This serves Docker-style file volumes
//! (`-v /host/file:/etc/file`): the guest bind-mounts the one file.
//!
//! # Read-only shares
//!
//! Enforced on the host: the wrapper answers every mutating request (and
//! opens for writing or truncation, and `W_OK` access checks) with `EROFS`,
//! whatever the guest's mount flags.
//!
//! # Hostile input
//!
//! Descriptor chains are walked by virtio-queue (bounded, indirect tables
//! checked) and turned into fuse-backend-rs `Reader`/`Writer` over guest
//! memory, which check every buffer against guest memory; FUSE messages
//! are decoded by fuse-backend-rs's server, which checks lengths against
//! the buffers. A request that cannot be parsed gets an error reply, or,
//! when there is no room even for that, its chain back with nothing
//! written; a panic in the server is caught and costs only that request.

mod jail;
mod share;
mod worker;

#[cfg(test)]
mod tests;

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{
    ActivateError, Activation, VirtioDevice, WorkerThread, copy_config, device_type, features,
};
use jail::Jail;
pub use jail::JailError;
use share::ShareFs;
use worker::{FsServer, Worker};

/// Longest tag (the `tag` field of the configuration space).
pub const TAG_LEN: usize = 36;

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;

/// Number of request queues announced in the configuration space.
const NUM_REQUEST_QUEUES: u32 = 1;

/// One share: what the guest mounts with `mount -t virtiofs <tag> <dir>`.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// The mount tag: 1 to 36 bytes, no NUL.
    pub tag: String,
    /// The host directory shared.
    pub host_dir: PathBuf,
    /// Refuse every change to the share (`EROFS`), on the host side.
    pub read_only: bool,
    /// A single-file share: the name of a regular file in `host_dir`, the
    /// only entry the guest sees in the share's root (nothing can be
    /// created, removed, renamed or linked there). `None`: the whole
    /// directory.
    pub only: Option<OsString>,
    /// Never make set-user-ID or set-group-ID files on the host: the
    /// server clears `S_ISUID` and `S_ISGID` from the modes of CREATE,
    /// MKNOD and SETATTR (and `S_ISUID` from MKDIR; a set-group-ID
    /// directory only passes its group on). For shares host users reach
    /// (volumes): a guest, even as root, cannot plant a set-user-ID-root
    /// program there.
    pub no_setid: bool,
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long or contains a NUL.
    #[error("invalid virtio-fs tag {0:?}: it must be 1 to 36 bytes without NUL")]
    InvalidTag(String),
    /// The host directory cannot be used.
    #[error("cannot share {path}")]
    HostDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The host directory is not a directory.
    #[error("cannot share {0}: not a directory")]
    NotADirectory(PathBuf),
    /// `only` is not a single file name (empty, `.`, `..`, or containing
    /// `/` or NUL).
    #[error("invalid single-file share {0:?}: it must be one file name")]
    InvalidOnly(OsString),
    /// `only` does not name a regular file in the host directory (symbolic
    /// links are not followed).
    #[error("cannot share {0}: not a regular file")]
    NotAFile(PathBuf),
    /// The worker threads' jail could not be prepared.
    #[error("cannot prepare the virtio-fs worker's jail")]
    Jail(#[source] JailError),
    /// The passthrough filesystem could not be set up.
    #[error("cannot set up the passthrough filesystem for {path}")]
    Passthrough {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The virtio-fs device for one share. Put it behind a
/// [`MmioTransport`](crate::virtio::MmioTransport).
pub struct Fs {
    config: FsConfig,
    /// The canonical host directory.
    root: PathBuf,
    fs: Arc<ShareFs>,
    server: Arc<FsServer>,
    jail: Arc<Jail>,
    worker: Option<WorkerThread>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("config", &self.config)
            .field("root", &self.root)
            .field("running", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Checks the share and sets up its passthrough filesystem (the guest
    /// sees the directory once its driver sends FUSE INIT).
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        let tag = config.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains(&0) {
            return Err(FsError::InvalidTag(config.tag.clone()));
        }
        let root = std::fs::canonicalize(&config.host_dir).map_err(|source| FsError::HostDir {
            path: config.host_dir.clone(),
            source,
        })?;
        if !root.is_dir() {
            return Err(FsError::NotADirectory(config.host_dir.clone()));
        }
        let only = match &config.only {
            None => None,
            Some(name) => {
                let b = name.as_bytes();
                if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
                    return Err(FsError::InvalidOnly(name.clone()));
                }
                let c = CString::new(b).map_err(|_| FsError::InvalidOnly(name.clone()))?;
                let file = root.join(name);
                let meta = std::fs::symlink_metadata(&file).map_err(|source| FsError::HostDir {
                    path: file.clone(),
                    source,
                })?;
                if !meta.file_type().is_file() {
                    return Err(FsError::NotAFile(file));
                }
                Some(c)
            }
        };
        let root_str = root
            .to_str()
            .ok_or_else(|| FsError::HostDir {
                path: config.host_dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path is not valid UTF-8",
                ),
            })?
            .to_owned();
        let passthrough =
            PassthroughFs::new(share::passthrough_config(root_str)).map_err(|source| {
                FsError::Passthrough {
                    path: config.host_dir.clone(),
                    source,
                }
            })?;
        // SAFETY: geteuid(2) has no preconditions and touches no memory.
        let host_root = unsafe { libc::geteuid() } == 0;
        let jail = Arc::new(Jail::new(host_root).map_err(FsError::Jail)?);
        let fs = Arc::new(ShareFs::new(
            passthrough,
            config.read_only,
            host_root,
            only,
            config.no_setid,
        ));
        let server = Arc::new(Server::new(fs.clone()));
        Ok(Self {
            config,
            root,
            fs,
            server,
            jail,
            worker: None,
        })
    }

    /// The share.
    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The canonical host directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the worker thread runs.
    pub fn is_running(&self) -> bool {
        self.worker
            .as_ref()
            .is_some_and(|w| !w.handle.is_finished())
    }

    /// The configuration space: `struct virtio_fs_config { u8 tag[36];
    /// le32 num_request_queues; }`.
    fn config_space(&self) -> [u8; TAG_LEN + 4] {
        let mut c = [0u8; TAG_LEN + 4];
        let tag = self.config.tag.as_bytes();
        c[..tag.len()].copy_from_slice(tag);
        c[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        c
    }

    /// Builds the worker for `a` (without starting a thread).
    fn build_worker(&self, a: Activation, kill: EventFd) -> Result<Worker, ActivateError> {
        let n = a.queues.len().min(a.queue_evts.len());
        if a.queues.len() != 2 || a.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: n,
            });
        }
        if let Some(i) = a
            .queues
            .iter()
            .position(|q| !virtio_queue::QueueT::ready(q))
        {
            return Err(ActivateError::QueueNotReady(i));
        }
        let (Ok(queues), Ok(evts)) = (
            <[_; 2]>::try_from(a.queues),
            <[_; 2]>::try_from(a.queue_evts),
        ) else {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: n,
            });
        };
        // Queue 0 is hiprio, 1 the request queue (virtio 1.2, 5.11.2).
        Worker::new(
            self.config.tag.clone(),
            a.mem,
            queues,
            evts,
            kill,
            a.interrupt,
            self.server.clone(),
        )
        .map_err(ActivateError::Epoll)
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop(&format!("virtio-fs {}", self.config.tag));
        }
    }
}

/// `e` and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Drops every inode and open file the guest held when the worker thread
/// ends (a new driver starts from INIT). In the worker thread, not the
/// VMM's: the passthrough's DESTROY re-imports its root, which sets the
/// umask to 0, and only the worker has a umask of its own.
struct DestroyOnExit(Arc<ShareFs>);

impl Drop for DestroyOnExit {
    fn drop(&mut self) {
        self.0.destroy();
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config_space();
        copy_config(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!(
            "virtio-fs {}: guest wrote read-only config at {offset:#x}",
            self.config.tag
        );
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let kill = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::EventFd)?;
        let kill2 = kill.try_clone().map_err(ActivateError::EventFd)?;
        let worker = self.build_worker(a, kill2)?;
        let jail = self.jail.clone();
        let fs = self.fs.clone();
        // The thread jails itself before it serves anything and says how
        // that went; unjailed, it serves nothing (fail closed).
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(format!("virtio-fs-{}", self.config.tag))
            .spawn(move || {
                let jailed = jail.enter();
                let ok = jailed.is_ok();
                let _ = ready_tx.send(jailed);
                if ok {
                    let _destroy = DestroyOnExit(fs);
                    worker.run();
                }
            })
            .map_err(ActivateError::Thread)?;
        let ready = ready_rx.recv();
        match ready {
            Ok(Ok(())) => {
                self.worker = Some(WorkerThread { handle, kill });
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                log::error!(
                    "virtio-fs {}: cannot jail the worker thread, the device does not start: {}",
                    self.config.tag,
                    error_chain(&e)
                );
                Err(ActivateError::Jail(e))
            }
            Err(_) => {
                let _ = handle.join();
                Err(ActivateError::ThreadDied)
            }
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
