//! The jail of a virtio-fs worker thread: what the thread that serves the
//! guest's FUSE requests may still do once it starts, applied to that
//! thread only, before it reads the first request.
//!
//! The FUSE server parses guest-controlled input and the passthrough acts
//! on the host for the guest, so the thread runs with the least privilege
//! that still serves a share. [`Jail::enter`] does, in order:
//!
//! 1. **`unshare(CLONE_FS)`**: the thread gets its own umask, root and
//!    working directory. The passthrough sets the umask to 0 when it
//!    imports its root, at FUSE INIT and DESTROY (so files get the modes
//!    the guest asks for); both run in the worker thread, and the rest of
//!    husk keeps its own umask.
//! 2. **Capabilities.** When husk runs as root, the thread keeps exactly
//!    [`KEPT_CAPS`] in its effective and permitted sets:
//!    `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_FSETID` (a root
//!    guest's file operations in the share), `CAP_SETUID`, `CAP_SETGID`
//!    (the passthrough switches the thread's effective ids to the guest
//!    caller's for creations, with `setresuid`/`setresgid`, and back), and
//!    `CAP_DAC_READ_SEARCH`, only because LINK needs it: the passthrough
//!    makes hard links with `linkat(fd, "", dir, name, AT_EMPTY_PATH)` on
//!    the descriptor a LOOKUP opened, which the kernel refuses (`ENOENT`)
//!    without it unless that descriptor was opened with the thread's
//!    current credentials, and every credential switch replaces those.
//!    (`CAP_DAC_OVERRIDE` already covers what it grants on paths.) Its
//!    other use, `open_by_handle_at`, is refused by the seccomp filter
//!    below. The
//!    inheritable and ambient sets are cleared, and every other capability
//!    is dropped from the bounding set: `CAP_SYS_ADMIN` (so `trusted.*`
//!    extended attributes and mounts fail), `CAP_MKNOD` (overlayfs's 0:0
//!    whiteouts need none since Linux 5.8; the wrapper refuses real device
//!    nodes anyway), `CAP_SYS_CHROOT`, `CAP_NET_*`, `CAP_SYS_PTRACE`,
//!    `CAP_SYS_MODULE`, `CAP_KILL`, `CAP_SETPCAP`, `CAP_SETFCAP` and all the
//!    others. When husk is not root the passthrough needs no capability
//!    (requests run as husk's own user), so all of them are cleared; the
//!    bounding set is then reduced only if the thread holds
//!    `CAP_SETPCAP` (without it the kernel refuses, and the bounding set
//!    only limits what an `execve` could grant, which `no_new_privs` and
//!    the filter rule out).
//! 3. **`PR_SET_NO_NEW_PRIVS`**, which seccomp without `CAP_SYS_ADMIN`
//!    requires anyway.
//! 4. **A seccomp-BPF allowlist** ([`allowed_syscalls`]) for this thread
//!    only (no `TSYNC`: the vCPU and other device threads are not
//!    affected), x86_64 only. Allowed: memory management (`mmap` and
//!    `mprotect` only without `PROT_EXEC`), `futex`, the worker's epoll
//!    loop and eventfds, the file syscalls the passthrough makes
//!    (`openat`, reads and writes, `*stat*`, `getdents64`, `*at` creation,
//!    removal and rename calls, the path and `f*` extended attribute
//!    calls, `fcntl` for a few commands, ...), credential switching
//!    (`setresuid`, `setresgid`, `setgroups`, `capget`, `capset`), and what
//!    logging, a caught panic and the thread's exit need (`write`,
//!    `getcwd`, `sigaltstack`, `rt_sigprocmask`, `tgkill` on husk's own
//!    process, `exit`). Everything else fails with `EPERM`: notably sockets,
//!    `execve`, `fork`/`clone`, `ptrace`, `mount` and friends, `chroot`,
//!    `open_by_handle_at`/`name_to_handle_at`, `bpf`, `keyctl`,
//!    `process_vm_*`, module loading, `kexec`, `kill` and `prctl`.
//!
//! The filter's default is `EPERM`, not killing: a syscall missing from the
//! list costs the one request that made it (the guest gets an error), not
//! the whole VMM and every other container's I/O with it. A thread that
//! has been subverted still gets no new syscall from that. (Only a
//! syscall through another ABI, 32-bit `int 0x80`, kills the process:
//! seccompiler's architecture check.) The list was checked with `strace`
//! over the device tests, which drive the real worker thread: nothing the
//! worker does is refused.
//!
//! What this does not do: the thread can still open any host path
//! (`openat` takes paths and runs as root), so containment to the share
//! remains the passthrough's job (see the module documentation of
//! [`super`]); the jail narrows what a bug exploited in the server could
//! reach beyond the filesystem. It does not chroot or pivot: the
//! passthrough imports its root by absolute path at INIT and reopens files
//! through `/proc/self/fd`.

use std::io;

use caps::errors::CapsError;
use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

/// The capabilities a worker thread keeps when husk runs as root.
pub const KEPT_CAPS: [Capability; 7] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
];

/// Why a worker thread could not be jailed. The worker then serves
/// nothing.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The seccomp filter could not be compiled.
    #[error("cannot compile the seccomp filter")]
    Filter(#[source] BackendError),
    /// The seccomp filter exists for x86_64 only.
    #[error("the virtio-fs seccomp filter is not defined for {0}")]
    UnsupportedArch(&'static str),
    /// `unshare(CLONE_FS)` failed.
    #[error("cannot give the thread its own umask (unshare(CLONE_FS))")]
    Unshare(#[source] io::Error),
    /// Reading or dropping a capability of the bounding set failed.
    #[error("cannot drop capability {cap} from the bounding set")]
    Bounding {
        /// The capability's number.
        cap: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Changing a capability set failed.
    #[error("cannot reduce the {set} capabilities")]
    Capabilities {
        /// The set.
        set: &'static str,
        /// Cause.
        #[source]
        source: CapsError,
    },
    /// A capability set still holds more than it should after it was
    /// reduced.
    #[error("the {set} capabilities still hold {extra:?}")]
    CapabilitiesLeft {
        /// The set.
        set: &'static str,
        /// What it holds beyond what was kept.
        extra: Vec<Capability>,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    /// Installing the seccomp filter failed.
    #[error("cannot install the seccomp filter")]
    Seccomp(#[source] seccompiler::Error),
}

/// The jail of a share's worker threads: built once per device, entered
/// by each worker thread as it starts.
#[derive(Debug)]
pub struct Jail {
    /// Whether husk runs as root (then the thread keeps [`KEPT_CAPS`]).
    host_root: bool,
    filter: BpfProgram,
}

impl Jail {
    /// Compiles the filter; `host_root` says whether husk runs as root
    /// (the passthrough then switches credentials and needs
    /// [`KEPT_CAPS`]).
    pub fn new(host_root: bool) -> Result<Self, JailError> {
        Ok(Self {
            host_root,
            filter: compile()?,
        })
    }

    /// A jail that cannot be entered (its filter is empty), to test that
    /// a device fails closed.
    #[cfg(test)]
    pub fn broken() -> Self {
        Self {
            host_root: false,
            filter: BpfProgram::new(),
        }
    }

    /// Jails the calling thread (see the module documentation), for good.
    /// On error the thread may be partly jailed, and must not serve.
    pub fn enter(&self) -> Result<(), JailError> {
        // SAFETY: unshare(2) with CLONE_FS only gives the calling thread a
        // private copy of its root, working directory and umask; it touches
        // no memory.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(JailError::Unshare(io::Error::last_os_error()));
        }
        let keep: CapsHashSet = if self.host_root {
            KEPT_CAPS.into_iter().collect()
        } else {
            CapsHashSet::new()
        };
        reduce_capabilities(&keep, self.host_root)?;
        // SAFETY: prctl(2) with PR_SET_NO_NEW_PRIVS takes only integers and
        // touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(JailError::NoNewPrivs(io::Error::last_os_error()));
        }
        // No TSYNC: this thread only.
        seccompiler::apply_filter(&self.filter).map_err(JailError::Seccomp)
    }
}

/// Reduces the calling thread's capabilities to `keep`: bounding set
/// (which `strict` requires; otherwise it is reduced only if the thread may),
/// ambient and inheritable sets cleared, then effective and permitted.
fn reduce_capabilities(keep: &CapsHashSet, strict: bool) -> Result<(), JailError> {
    let caps_err = |set| move |source| JailError::Capabilities { set, source };
    let setpcap = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(caps_err("effective"))?;
    if strict || setpcap {
        drop_bounding(keep)?;
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable"))?;
    // The effective set must stay within the permitted set: shrink it
    // first. Keep only what the thread has (a root husk in a container may
    // lack some); raising would fail.
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("permitted"))?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("permitted"))?;
    // Check what the kernel now says.
    let none = CapsHashSet::new();
    for (set, name, allowed) in [
        (CapSet::Effective, "effective", keep),
        (CapSet::Permitted, "permitted", keep),
        (CapSet::Inheritable, "inheritable", &none),
        (CapSet::Ambient, "ambient", &none),
    ] {
        let now = caps::read(None, set).map_err(caps_err(name))?;
        let mut extra: Vec<Capability> = now.difference(allowed).copied().collect();
        if !extra.is_empty() {
            extra.sort_by_key(|c| c.index());
            return Err(JailError::CapabilitiesLeft { set: name, extra });
        }
    }
    Ok(())
}

/// Drops every capability but `keep` from the calling thread's bounding
/// set, by number (so ones newer than the `caps` crate go too).
fn drop_bounding(keep: &CapsHashSet) -> Result<(), JailError> {
    for cap in 0..64u32 {
        if keep.iter().any(|c| u32::from(c.index()) == cap) {
            continue;
        }
        // SAFETY: prctl(2) with PR_CAPBSET_READ takes only integers and
        // touches no memory.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        match r {
            0 => continue,
            1 => {}
            _ => {
                let e = io::Error::last_os_error();
                // Past the last capability the kernel knows.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(JailError::Bounding { cap, source: e });
            }
        }
        // SAFETY: as above, with PR_CAPBSET_DROP.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
            return Err(JailError::Bounding {
                cap,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The syscalls a worker thread may make whatever their arguments, with
/// why (x86_64 numbers).
#[cfg(target_arch = "x86_64")]
pub fn allowed_syscalls() -> &'static [(libc::c_long, &'static str)] {
    &[
        // Memory (malloc, thread exit). mmap and mprotect have rules below.
        (libc::SYS_brk, "brk"),
        (libc::SYS_munmap, "munmap"),
        (libc::SYS_mremap, "mremap"),
        (libc::SYS_madvise, "madvise"),
        // Locks, channels, time, identity, randomness (hash maps).
        (libc::SYS_futex, "futex"),
        (libc::SYS_sched_yield, "sched_yield"),
        (libc::SYS_clock_gettime, "clock_gettime"),
        (libc::SYS_gettid, "gettid"),
        (libc::SYS_getpid, "getpid"),
        (libc::SYS_getrandom, "getrandom"),
        (libc::SYS_restart_syscall, "restart_syscall"),
        // Signals: returning from a handler, the panic and exit paths.
        (libc::SYS_rt_sigreturn, "rt_sigreturn"),
        (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
        (libc::SYS_sigaltstack, "sigaltstack"),
        // The worker's loop: epoll on the queue and kill eventfds, eventfd
        // reads and writes (and the interrupt), log lines to stderr.
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        // The passthrough: opening (by name relative to a held directory,
        // or reopening through /proc/self/fd), I/O into guest memory.
        (libc::SYS_openat, "openat"),
        (libc::SYS_close, "close"),
        (libc::SYS_dup, "dup"),
        (libc::SYS_readv, "readv"),
        (libc::SYS_writev, "writev"),
        (libc::SYS_pread64, "pread64"),
        (libc::SYS_preadv, "preadv"),
        (libc::SYS_preadv2, "preadv2"),
        (libc::SYS_pwrite64, "pwrite64"),
        (libc::SYS_pwritev, "pwritev"),
        (libc::SYS_pwritev2, "pwritev2"),
        (libc::SYS_lseek, "lseek"),
        (libc::SYS_getdents64, "getdents64"),
        (libc::SYS_fsync, "fsync"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_fallocate, "fallocate"),
        (libc::SYS_ftruncate, "ftruncate"),
        // Attributes.
        (libc::SYS_statx, "statx"),
        (libc::SYS_newfstatat, "newfstatat"),
        (libc::SYS_fstat, "fstat"),
        (libc::SYS_statfs, "statfs"),
        (libc::SYS_fstatfs, "fstatfs"),
        (libc::SYS_fchmod, "fchmod"),
        (libc::SYS_fchmodat, "fchmodat"),
        (libc::SYS_fchown, "fchown"),
        (libc::SYS_fchownat, "fchownat"),
        (libc::SYS_utimensat, "utimensat"),
        (libc::SYS_umask, "umask"),
        // Names in the share.
        (libc::SYS_mkdirat, "mkdirat"),
        (libc::SYS_mknodat, "mknodat"),
        (libc::SYS_symlinkat, "symlinkat"),
        (libc::SYS_readlinkat, "readlinkat"),
        (libc::SYS_linkat, "linkat"),
        (libc::SYS_renameat, "renameat"),
        (libc::SYS_renameat2, "renameat2"),
        (libc::SYS_unlinkat, "unlinkat"),
        // Extended attributes: the passthrough uses the path calls on
        // /proc/self/fd/N (its descriptors are O_PATH).
        (libc::SYS_setxattr, "setxattr"),
        (libc::SYS_lsetxattr, "lsetxattr"),
        (libc::SYS_fsetxattr, "fsetxattr"),
        (libc::SYS_getxattr, "getxattr"),
        (libc::SYS_lgetxattr, "lgetxattr"),
        (libc::SYS_fgetxattr, "fgetxattr"),
        (libc::SYS_listxattr, "listxattr"),
        (libc::SYS_llistxattr, "llistxattr"),
        (libc::SYS_flistxattr, "flistxattr"),
        (libc::SYS_removexattr, "removexattr"),
        (libc::SYS_lremovexattr, "lremovexattr"),
        (libc::SYS_fremovexattr, "fremovexattr"),
        // Acting as the guest caller, and back.
        (libc::SYS_setresuid, "setresuid"),
        (libc::SYS_setresgid, "setresgid"),
        (libc::SYS_setgroups, "setgroups"),
        (libc::SYS_capget, "capget"),
        (libc::SYS_capset, "capset"),
        // A panic's backtrace (with RUST_BACKTRACE) shortens paths.
        (libc::SYS_getcwd, "getcwd"),
        // The thread's end.
        (libc::SYS_exit, "exit"),
    ]
}

/// The `fcntl` commands allowed (not `F_SETOWN`/`F_SETSIG`, which would let
/// the thread direct signals at other processes).
#[cfg(target_arch = "x86_64")]
const FCNTL_CMDS: [libc::c_int; 11] = [
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_DUPFD_CLOEXEC,
    libc::F_GETLK,
    libc::F_SETLK,
    libc::F_SETLKW,
    libc::F_OFD_GETLK,
    libc::F_OFD_SETLK,
    libc::F_OFD_SETLKW,
];

#[cfg(target_arch = "x86_64")]
fn compile() -> Result<BpfProgram, JailError> {
    use std::collections::BTreeMap;

    let cond = |arg, op, value| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(JailError::Filter)
    };
    let rule = |conds| SeccompRule::new(conds).map_err(JailError::Filter);
    let no_exec = || -> Result<Vec<SeccompRule>, JailError> {
        Ok(vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls()
        .iter()
        .map(|&(nr, _)| (nr, Vec::new()))
        .collect();
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);
    rules.insert(
        libc::SYS_fcntl,
        FCNTL_CMDS
            .iter()
            .map(|&c| rule(vec![cond(1, SeccompCmpOp::Eq, c as u64)?]))
            .collect::<Result<_, _>>()?,
    );
    // abort() and the like signal this process; nothing else.
    // SAFETY: getpid(2) has no preconditions and touches no memory.
    let pid = unsafe { libc::getpid() };
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, SeccompCmpOp::Eq, pid as u64)?])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .map_err(JailError::Filter)?;
    BpfProgram::try_from(filter).map_err(JailError::Filter)
}

#[cfg(not(target_arch = "x86_64"))]
fn compile() -> Result<BpfProgram, JailError> {
    Err(JailError::UnsupportedArch(std::env::consts::ARCH))
}

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid(2) has no preconditions and touches no memory.
        unsafe { libc::geteuid() == 0 }
    }

    /// Whether a test that needs root can run. When not root it says so on
    /// stderr (`SKIPPED <test>: needs root (<reason>)`) and fails the test
    /// unless `HUSK_ALLOW_SKIP=1`: a skip is never a silent "ok".
    fn require_root(test: &str, reason: &str) -> bool {
        if is_root() {
            return true;
        }
        eprintln!("SKIPPED {test}: needs root ({reason})");
        assert!(
            std::env::var_os("HUSK_ALLOW_SKIP").is_some_and(|v| v == "1"),
            "SKIPPED {test}: needs root ({reason}); run as root, or set HUSK_ALLOW_SKIP=1 to accept the skip"
        );
        false
    }

    /// Runs `f` in a fresh thread jailed as a worker thread is, and returns
    /// what it returns.
    fn jailed<T: Send + 'static>(host_root: bool, f: impl FnOnce() -> T + Send + 'static) -> T {
        let jail = Jail::new(host_root).unwrap();
        std::thread::spawn(move || {
            jail.enter().unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn cstr(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    /// A pointer argument for [`sys`].
    fn ptr<T>(p: *const T) -> usize {
        p as usize
    }

    /// Makes syscall `nr` with `args` (unused ones 0); returns its result,
    /// or the negated errno if it failed. The callers pass integers, and
    /// pointers to NUL-terminated strings and to buffers that outlive the
    /// call, with the sizes of those buffers.
    fn sys(nr: libc::c_long, args: &[usize]) -> i64 {
        let mut a = [0usize; 6];
        a[..args.len()].copy_from_slice(args);
        // SAFETY: per the callers' contract above, every pointer the
        // kernel reads or writes is valid for the size it is given.
        let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if r == -1 {
            -i64::from(io::Error::last_os_error().raw_os_error().unwrap())
        } else {
            r
        }
    }

    /// The errno of a [`sys`] result, 0 for a success.
    fn errno(r: i64) -> i32 {
        if r < 0 { (-r) as i32 } else { 0 }
    }

    fn setxattr(path: &CStr, name: &str, value: &[u8]) -> i32 {
        let n = CString::new(name).unwrap();
        errno(sys(
            libc::SYS_setxattr,
            &[
                ptr(path.as_ptr()),
                ptr(n.as_ptr()),
                ptr(value.as_ptr()),
                value.len(),
                0,
            ],
        ))
    }

    /// `open(2)` through `openat` on the current directory: a descriptor.
    fn open(path: &CStr, flags: libc::c_int) -> usize {
        let r = sys(
            libc::SYS_openat,
            &[libc::AT_FDCWD as usize, ptr(path.as_ptr()), flags as usize],
        );
        assert!(r >= 0, "open {path:?}: {}", -r);
        r as usize
    }

    fn close(fd: usize) {
        assert_eq!(sys(libc::SYS_close, &[fd]), 0);
    }

    /// The fields of /proc/thread-self/status, as the calling thread sees
    /// them.
    fn status() -> Vec<(String, String)> {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect()
    }

    fn field(status: &[(String, String)], name: &str) -> String {
        status
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in the status"))
    }

    fn hex_field(status: &[(String, String)], name: &str) -> u64 {
        u64::from_str_radix(&field(status, name), 16).unwrap()
    }

    fn mask(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |m, c| m | c.bitmask())
    }

    #[test]
    fn the_filter_compiles_and_leaves_out_the_dangerous_syscalls() {
        let jail = Jail::new(true).unwrap();
        assert!(!jail.filter.is_empty());
        let allowed: Vec<_> = allowed_syscalls().iter().map(|&(nr, _)| nr).collect();
        let mut dedup = allowed.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), allowed.len(), "a syscall is listed twice");
        for nr in [
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
            libc::SYS_kexec_load,
            libc::SYS_bpf,
            libc::SYS_keyctl,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_kill,
            libc::SYS_prctl,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_ioctl,
            libc::SYS_mknod,
            libc::SYS_open,
            libc::SYS_exit_group,
            libc::SYS_io_uring_setup,
            libc::SYS_userfaultfd,
            libc::SYS_perf_event_open,
            libc::SYS_seccomp,
            libc::SYS_memfd_create,
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_fcntl,
            libc::SYS_tgkill,
        ] {
            // (The last four are allowed only with some arguments.)
            assert!(!allowed.contains(&nr), "syscall {nr} is allowed");
        }
    }

    #[test]
    fn a_jailed_thread_gets_eperm_for_what_the_server_never_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let file = dir.path().join("f");
        let mnt = cstr(dir.path());
        let errors = jailed(is_root(), move || {
            let pid = std::process::id() as usize;
            let mut e = Vec::new();
            let inet = sys(
                libc::SYS_socket,
                &[libc::AF_INET as usize, libc::SOCK_STREAM as usize],
            );
            e.push(("socket(AF_INET)", errno(inet)));
            let unix = sys(
                libc::SYS_socket,
                &[libc::AF_UNIX as usize, libc::SOCK_STREAM as usize],
            );
            e.push(("socket(AF_UNIX)", errno(unix)));
            let prog = CString::new("/bin/true").unwrap();
            let argv = [prog.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            let exec = sys(
                libc::SYS_execve,
                &[ptr(prog.as_ptr()), ptr(argv.as_ptr()), ptr(envp.as_ptr())],
            );
            e.push(("execve", errno(exec)));
            let tmpfs = CString::new("tmpfs").unwrap();
            let mount = sys(
                libc::SYS_mount,
                &[ptr(tmpfs.as_ptr()), ptr(mnt.as_ptr()), ptr(tmpfs.as_ptr())],
            );
            e.push(("mount", errno(mount)));
            // A handle of any kind: the filter refuses the call before the
            // kernel reads it.
            let mut handle = [0u8; 64];
            let by_handle = sys(
                libc::SYS_open_by_handle_at,
                &[
                    libc::AT_FDCWD as usize,
                    ptr(handle.as_ptr()),
                    libc::O_RDONLY as usize,
                ],
            );
            e.push(("open_by_handle_at", errno(by_handle)));
            let mut mount_id = 0i32;
            let to_handle = sys(
                libc::SYS_name_to_handle_at,
                &[
                    libc::AT_FDCWD as usize,
                    ptr(mnt.as_ptr()),
                    ptr(handle.as_mut_ptr()),
                    ptr(&raw mut mount_id),
                    0,
                ],
            );
            e.push(("name_to_handle_at", errno(to_handle)));
            // These succeed without the filter.
            e.push(("kill", errno(sys(libc::SYS_kill, &[pid, 0]))));
            e.push((
                "prctl",
                errno(sys(libc::SYS_prctl, &[libc::PR_GET_DUMPABLE as usize])),
            ));
            e.push(("chroot", errno(sys(libc::SYS_chroot, &[ptr(mnt.as_ptr())]))));
            e.push((
                "unshare",
                errno(sys(libc::SYS_unshare, &[libc::CLONE_NEWNS as usize])),
            ));
            e.push((
                "fcntl(F_SETOWN)",
                errno(sys(libc::SYS_fcntl, &[2, libc::F_SETOWN as usize, pid])),
            ));
            e.push((
                "tgkill(another process)",
                errno(sys(libc::SYS_tgkill, &[1, 1, 0])),
            ));
            let exec_map = sys(
                libc::SYS_mmap,
                &[
                    0,
                    4096,
                    (libc::PROT_READ | libc::PROT_EXEC) as usize,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as usize,
                    usize::MAX,
                    0,
                ],
            );
            e.push(("mmap(PROT_EXEC)", errno(exec_map)));
            // No new threads or processes.
            let spawned = std::thread::Builder::new().spawn(|| ());
            e.push((
                "thread spawn",
                spawned.err().and_then(|e| e.raw_os_error()).unwrap_or(0),
            ));
            // Opening a file still works.
            e.push((
                "File::open",
                std::fs::File::open(&file)
                    .err()
                    .and_then(|e| e.raw_os_error())
                    .unwrap_or(0),
            ));
            e
        });
        for (what, errno) in errors {
            let want = if what == "File::open" { 0 } else { libc::EPERM };
            assert_eq!(errno, want, "{what}");
        }
        // The test's own thread is not jailed.
        assert_eq!(sys(libc::SYS_kill, &[std::process::id() as usize, 0]), 0);
    }

    #[test]
    fn a_jailed_thread_does_the_servers_file_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        jailed(is_root(), move || {
            let f = path.join("file");
            std::fs::write(&f, b"hello").unwrap();
            assert_eq!(std::fs::read(&f).unwrap(), b"hello");
            let dfd = open(&cstr(&path), libc::O_PATH | libc::O_DIRECTORY);
            let name = |s: &str| CString::new(s).unwrap();
            let (d, file, l, l2) = (name("d"), name("file"), name("l"), name("l2"));
            assert_eq!(sys(libc::SYS_mkdirat, &[dfd, ptr(d.as_ptr()), 0o755]), 0);
            assert_eq!(
                sys(
                    libc::SYS_symlinkat,
                    &[ptr(file.as_ptr()), dfd, ptr(l.as_ptr())]
                ),
                0
            );
            assert_eq!(
                sys(
                    libc::SYS_renameat2,
                    &[dfd, ptr(l.as_ptr()), dfd, ptr(l2.as_ptr()), 0]
                ),
                0
            );
            assert_eq!(sys(libc::SYS_unlinkat, &[dfd, ptr(l2.as_ptr()), 0]), 0);
            assert_eq!(
                sys(
                    libc::SYS_unlinkat,
                    &[dfd, ptr(d.as_ptr()), libc::AT_REMOVEDIR as usize]
                ),
                0
            );
            close(dfd);
            let fp = cstr(&f);
            let key = name("user.husk");
            assert_eq!(setxattr(&fp, "user.husk", b"v"), 0);
            let mut buf = [0u8; 8];
            let got = sys(
                libc::SYS_getxattr,
                &[
                    ptr(fp.as_ptr()),
                    ptr(key.as_ptr()),
                    ptr(buf.as_mut_ptr()),
                    8,
                ],
            );
            assert_eq!(got, 1);
            assert_eq!(
                sys(
                    libc::SYS_removexattr,
                    &[ptr(fp.as_ptr()), ptr(key.as_ptr())]
                ),
                0
            );
            // A caught panic costs nothing more (the server catches them).
            let caught = std::panic::catch_unwind(|| panic!("a panic in a jailed thread"));
            assert!(caught.is_err());
        });
        assert!(!dir.path().join("d").exists());
        assert_eq!(std::fs::read(dir.path().join("file")).unwrap(), b"hello");
    }

    #[test]
    fn as_root_the_thread_keeps_only_the_passthroughs_capabilities() {
        if !require_root(
            "as_root_the_thread_keeps_only_the_passthroughs_capabilities",
            "the capabilities a root husk keeps cannot be observed without them",
        ) {
            return;
        }
        let before = status();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let fp = cstr(&f);
        // The host filesystem takes trusted.* from root with CAP_SYS_ADMIN
        // (so the refusal below is the jail's doing).
        assert_eq!(setxattr(&fp, "trusted.husk", b"v"), 0);
        let key = CString::new("trusted.husk").unwrap();
        assert_eq!(
            sys(
                libc::SYS_removexattr,
                &[ptr(fp.as_ptr()), ptr(key.as_ptr())]
            ),
            0
        );

        let parent = dir.path().to_path_buf();
        let (status, trusted, dev, whiteout) = jailed(true, move || {
            let trusted = setxattr(&fp, "trusted.husk", b"v");
            let mknod = |name: &str, mode: u32, dev: u64| {
                let p = cstr(&parent.join(name));
                errno(sys(
                    libc::SYS_mknodat,
                    &[
                        libc::AT_FDCWD as usize,
                        ptr(p.as_ptr()),
                        mode as usize,
                        dev as usize,
                    ],
                ))
            };
            let dev = mknod("null", libc::S_IFCHR | 0o600, libc::makedev(1, 3));
            let whiteout = mknod("wh", libc::S_IFCHR | 0o600, 0);
            (status(), trusted, dev, whiteout)
        });
        let kept = mask(&KEPT_CAPS);
        let had = hex_field(&before, "CapPrm");
        for (name, want) in [
            ("CapEff", kept & had),
            ("CapPrm", kept & had),
            ("CapBnd", kept),
            ("CapInh", 0),
            ("CapAmb", 0),
        ] {
            let got = hex_field(&status, name);
            assert_eq!(got, want, "{name}: {got:#x}, want {want:#x}");
        }
        assert_eq!(field(&status, "NoNewPrivs"), "1");
        assert_eq!(field(&status, "Seccomp"), "2");
        // No CAP_SYS_ADMIN: no trusted.* xattrs. No CAP_MKNOD: no device
        // nodes, but overlayfs's 0:0 whiteout needs none (Linux 5.8+).
        assert_eq!(trusted, libc::EPERM);
        assert_eq!(dev, libc::EPERM);
        assert_eq!(whiteout, 0);
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::symlink_metadata(dir.path().join("wh")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), 0);
        assert!(!dir.path().join("null").exists());
        // The test's thread still has what it had.
        assert_eq!(field(&self::status(), "CapEff"), field(&before, "CapEff"));
    }

    #[test]
    fn without_root_the_thread_keeps_no_capabilities() {
        let before = self::status();
        let status = jailed(false, status);
        for name in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(hex_field(&status, name), 0, "{name}");
        }
        if is_root() {
            // It could (CAP_SETPCAP), so it did.
            assert_eq!(hex_field(&status, "CapBnd"), 0);
        } else {
            // Without CAP_SETPCAP the bounding set cannot shrink; it is
            // left as it was (and the thread holds none of it).
            assert_eq!(hex_field(&status, "CapBnd"), hex_field(&before, "CapBnd"));
        }
        assert_eq!(field(&status, "Seccomp"), "2");
    }

    /// Why `CAP_DAC_READ_SEARCH` is kept: the passthrough's LINK is
    /// `linkat(fd, "", dir, name, AT_EMPTY_PATH)` on the `O_PATH`
    /// descriptor a LOOKUP opened. The kernel lets that through only with
    /// `CAP_DAC_READ_SEARCH` or if the descriptor was opened with the
    /// thread's current credentials, which every credential switch (and
    /// capability change) of the worker replaces.
    #[test]
    fn hard_links_from_a_descriptor_need_dac_read_search() {
        if !require_root(
            "hard_links_from_a_descriptor_need_dac_read_search",
            "it drops and raises CAP_DAC_READ_SEARCH and CAP_FSETID",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let path = dir.path().to_path_buf();
        // Opens the file and directory, lets `between` change the
        // credentials, then links.
        let link = move |name: &str, between: &dyn Fn()| {
            let fd = open(&cstr(&path.join("f")), libc::O_PATH);
            let dfd = open(&cstr(&path), libc::O_PATH | libc::O_DIRECTORY);
            between();
            let n = CString::new(name).unwrap();
            let r = sys(
                libc::SYS_linkat,
                &[
                    fd,
                    ptr(c"".as_ptr()),
                    dfd,
                    ptr(n.as_ptr()),
                    libc::AT_EMPTY_PATH as usize,
                ],
            );
            close(fd);
            close(dfd);
            errno(r)
        };
        // What the worker does between a LOOKUP and a LINK: new
        // credentials (here from a capability change, as the passthrough's
        // CAP_FSETID drops do).
        let churn = || {
            caps::drop(None, CapSet::Effective, Capability::CAP_FSETID).unwrap();
            caps::raise(None, CapSet::Effective, Capability::CAP_FSETID).unwrap();
        };
        let (link2, link3) = (link.clone(), link.clone());
        assert_eq!(jailed(true, move || link("kept", &churn)), 0);
        let without = jailed(true, move || {
            caps::drop(None, CapSet::Effective, Capability::CAP_DAC_READ_SEARCH).unwrap();
            (link2("same-creds", &|| ()), link3("new-creds", &churn))
        });
        assert_eq!(without, (0, libc::ENOENT));
        assert!(dir.path().join("kept").exists());
    }
}
