//! Starting the container's process as the host's [`RunSpec`] says: in the
//! container root, with exactly the given environment, working directory and
//! user, in a new session, on pipes or on a pseudo-terminal; with the
//! spec's resource limits, OOM score, umask, capability sets and
//! no_new_privs applied as runc applies them, and, for the main process,
//! the container's masked and read-only paths in its mount namespace.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use husk_protocol::{RLIMIT_NLIMITS, RunSpec};

use crate::sys;

/// The default terminal size when the host gives none.
const DEFAULT_TERM: (u16, u16) = (24, 80);

/// A started process and the host ends of its streams.
pub struct Started {
    /// Where its stdin goes (`None` after close).
    pub stdin: Option<File>,
    /// Its stdout (or the terminal's master side).
    pub stdout: File,
    /// Its stderr (`None` on a terminal).
    pub stderr: Option<File>,
    /// The terminal's master side, for resizing.
    pub pty: Option<File>,
}

/// Where a process lives.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// The agent's own root (there is no container root).
    Agent,
    /// The container root, entered in a mount namespace of its own.
    /// `fresh_proc`: replace the agent's /proc there with a procfs of the
    /// process's own PID namespace (the main process, PID 1 of its
    /// namespace, does this; its namespace then shows only the container).
    Root {
        /// The container root's path in the agent.
        root: &'a str,
        /// Mount a fresh /proc.
        fresh_proc: bool,
    },
    /// The main process's mount namespace and root directory (descriptors
    /// of its `/proc/PID/ns/mnt` and `/proc/PID/root`, opened before the
    /// fork).
    Join {
        /// `/proc/MAIN/ns/mnt`.
        mnt: &'a OwnedFd,
        /// `/proc/MAIN/root`.
        root: &'a OwnedFd,
    },
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

/// The capability sets the child gives itself, masked to the capabilities
/// the guest kernel has (bits above `last` are left out, as runc leaves
/// out capabilities the kernel does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CapSets {
    /// The highest capability of the guest kernel (`cap_last_cap`).
    last: u32,
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
}

/// What the child applies to itself after the fork, prepared (checked,
/// converted, allocated) before it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Security {
    /// (resource, soft, hard).
    rlimits: Vec<(u32, u64, u64)>,
    /// The text written to `/proc/self/oom_score_adj` and its length.
    oom_score_adj: Option<([u8; 8], usize)>,
    umask: Option<libc::mode_t>,
    caps: Option<CapSets>,
    no_new_privs: bool,
}

/// The capabilities `0..=last` as a mask.
fn cap_mask(last: u32) -> u64 {
    if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    }
}

/// The guest kernel's highest capability (`/proc/sys/kernel/cap_last_cap`;
/// 40, CAP_CHECKPOINT_RESTORE, where it cannot be read).
fn cap_last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|n| *n <= husk_protocol::CAP_MAX)
            .unwrap_or(40)
    })
}

/// Checks the spec's limits and security settings (untrusted input, see
/// [`RunSpec::check`]) and prepares them for the child; `last_cap` is the
/// guest kernel's highest capability.
fn prepare(spec: &RunSpec, last_cap: u32) -> io::Result<Security> {
    spec.check().map_err(|e| invalid(&e))?;
    let rlimits = spec
        .rlimits
        .iter()
        .map(|r| {
            debug_assert!(r.resource < RLIMIT_NLIMITS);
            (r.resource, r.soft, r.hard)
        })
        .collect();
    let oom_score_adj = spec.oom_score_adj.map(|v| {
        let text = v.to_string();
        let mut buf = [0u8; 8];
        // check(): -1000 to 1000, at most 5 bytes.
        buf[..text.len()].copy_from_slice(text.as_bytes());
        (buf, text.len())
    });
    let caps = spec.capabilities.map(|c| {
        let m = cap_mask(last_cap);
        CapSets {
            last: last_cap,
            bounding: c.bounding & m,
            effective: c.effective & m,
            permitted: c.permitted & m,
            inheritable: c.inheritable & m,
            ambient: c.ambient & m,
        }
    });
    Ok(Security {
        rlimits,
        oom_score_adj,
        umask: spec.umask.map(|m| m as libc::mode_t),
        caps,
        no_new_privs: spec.no_new_privileges,
    })
}

/// What the child was doing when it failed, reported to the parent over
/// a pipe (the error std returns carries only the errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Session,
    Terminal,
    Root,
    Proc,
    Join,
    Cwd,
    ReadOnly,
    Mask,
    Rlimit,
    OomScoreAdj,
    Bounding,
    KeepCaps,
    Groups,
    Gid,
    Uid,
    Capset,
    Ambient,
    NoNewPrivs,
}

const STEPS: [Step; 18] = [
    Step::Session,
    Step::Terminal,
    Step::Root,
    Step::Proc,
    Step::Join,
    Step::Cwd,
    Step::ReadOnly,
    Step::Mask,
    Step::Rlimit,
    Step::OomScoreAdj,
    Step::Bounding,
    Step::KeepCaps,
    Step::Groups,
    Step::Gid,
    Step::Uid,
    Step::Capset,
    Step::Ambient,
    Step::NoNewPrivs,
];

/// What failed, for the error: `idx` is the path, rlimit or capability
/// the step was at.
fn describe_step(
    step: Step,
    idx: usize,
    spec: &RunSpec,
    masked: &[CString],
    readonly: &[CString],
) -> String {
    let path = |v: &[CString]| {
        v.get(idx)
            .map_or_else(String::new, |p| p.to_string_lossy().into_owned())
    };
    match step {
        Step::Session => "setsid".into(),
        Step::Terminal => "set the controlling terminal".into(),
        Step::Root => "enter the container root".into(),
        Step::Proc => "mount the container's /proc".into(),
        Step::Join => "join the container's mount namespace".into(),
        Step::Cwd => "change to the working directory".into(),
        Step::ReadOnly => format!("make {} read-only", path(readonly)),
        Step::Mask => format!("mask {}", path(masked)),
        Step::Rlimit => match spec.rlimits.get(idx) {
            Some(r) => format!("set rlimit {} to {}:{}", r.resource, r.soft, r.hard),
            None => "set an rlimit".into(),
        },
        Step::OomScoreAdj => "write /proc/self/oom_score_adj".into(),
        Step::Bounding => format!("drop capability {idx} from the bounding set"),
        Step::KeepCaps => "keep capabilities across setuid".into(),
        Step::Groups => "set the supplementary groups".into(),
        Step::Gid => format!("set gid {}", spec.gid),
        Step::Uid => format!("set uid {}", spec.uid),
        Step::Capset => "set the capability sets".into(),
        Step::Ambient => format!("raise ambient capability {idx}"),
        Step::NoNewPrivs => "set no_new_privs".into(),
    }
}

/// `capset(2)`'s header (`struct __user_cap_header_struct`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One 32-bit word of `capset(2)`'s data (`struct __user_cap_data_struct`).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Version 3: two words (64 capabilities).
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `capset(2)`'s data for the sets (low word first).
fn cap_data(c: &CapSets) -> [CapData; 2] {
    let word = |shift: u32| CapData {
        effective: (c.effective >> shift) as u32,
        permitted: (c.permitted >> shift) as u32,
        inheritable: (c.inheritable >> shift) as u32,
    };
    [word(0), word(32)]
}

/// Starts `spec` in `place`.
pub fn start(spec: &RunSpec, place: Place<'_>) -> io::Result<(i32, Started)> {
    let argv0 = spec.argv.first().ok_or_else(|| invalid("empty argv"))?;
    let mut cmd = Command::new(OsString::from_vec(argv0.clone()));
    cmd.args(spec.argv[1..].iter().map(|a| OsString::from_vec(a.clone())));
    cmd.env_clear();
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) || v.contains(&0) {
            return Err(invalid("bad environment variable"));
        }
        cmd.env(OsString::from_vec(k.clone()), OsString::from_vec(v.clone()));
    }
    // On PVM hosts husk gives the agent (init) a GLIBC_TUNABLES that keeps
    // glibc off AVX, whose registers the guest kernel cannot save there
    // (see husk-vmm's PVM_ARGS); every process gets it unless it sets its own.
    if let Some(t) = std::env::var_os("GLIBC_TUNABLES")
        && !spec.env.iter().any(|(k, _)| k == b"GLIBC_TUNABLES")
    {
        cmd.env("GLIBC_TUNABLES", t);
    }
    let cwd = CString::new(spec.cwd.clone().unwrap_or_else(|| b"/".to_vec()))
        .map_err(|_| invalid("NUL in cwd"))?;
    let (root, fresh_proc, join) = match place {
        Place::Agent => (None, false, None),
        Place::Root { root, fresh_proc } => (
            Some(CString::new(root).map_err(|_| invalid("NUL in root"))?),
            fresh_proc,
            None,
        ),
        Place::Join { mnt, root } => (None, false, Some((mnt.as_raw_fd(), root.as_raw_fd()))),
    };
    let (uid, gid, tty) = (spec.uid, spec.gid, spec.tty);
    let groups: Vec<libc::gid_t> = spec.additional_gids.clone();
    if groups.len() > 1024 {
        return Err(invalid("too many supplementary groups"));
    }
    let sec = prepare(spec, cap_last_cap())?;
    // The container's sysctls, in the guest kernel (the container's own),
    // before its first process starts; `prepare` has refused them for any
    // process but the main one.
    write_sysctls(&spec.sysctls, "/proc/sys")?;
    // The container's masked and read-only paths: made by the main
    // process in its fresh mount namespace, after its /proc (execs join
    // that namespace and see them).
    let cpaths = |paths: &[Vec<u8>]| -> io::Result<Vec<CString>> {
        paths
            .iter()
            .map(|p| CString::new(p.clone()).map_err(|_| invalid("NUL in a path")))
            .collect()
    };
    let masked = cpaths(&spec.masked_paths)?;
    let readonly = cpaths(&spec.readonly_paths)?;
    let container_wide = !(masked.is_empty() && readonly.is_empty());
    if container_wide && !(root.is_some() && fresh_proc) {
        return Err(invalid(
            "masked and read-only paths need the container root and the main process",
        ));
    }

    let mut pty: Option<(OwnedFd, OwnedFd)> = None;
    if tty {
        let (rows, cols) = spec.term_size.map_or(DEFAULT_TERM, |t| (t.rows, t.cols));
        let (m, s) = sys::openpty(rows, cols)?;
        cmd.stdin(Stdio::from(s.try_clone()?));
        cmd.stdout(Stdio::from(s.try_clone()?));
        cmd.stderr(Stdio::from(s.try_clone()?));
        pty = Some((m, s));
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }

    // What the child failed at: a step and an index (see `Step`).
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is an array of two ints, as pipe2(2) needs.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let step_r = File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    // SAFETY: as above.
    let step_w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    let step_fd = step_w.as_raw_fd();
    let (masked_c, readonly_c) = (masked.clone(), readonly.clone());

    // Runs in the forked child before exec: only async-signal-safe system
    // calls on data prepared before the fork (no allocation). The order
    // is runc's: the root and its mounts, rlimits, oom_score_adj, umask,
    // the bounding set, the user switch keeping capabilities, capset,
    // ambient capabilities, no_new_privs.
    let setup = move || -> io::Result<()> {
        let fail = |step: Step, idx: usize| -> io::Error {
            let e = io::Error::last_os_error();
            let msg = [step as u8, idx as u8, (idx >> 8) as u8];
            // SAFETY: write(2) of a 3-byte stack buffer to the step pipe.
            let _ = unsafe { libc::write(step_fd, msg.as_ptr().cast(), msg.len()) };
            e
        };
        let check = |r: libc::c_int, step: Step| {
            if r < 0 { Err(fail(step, 0)) } else { Ok(()) }
        };
        // SAFETY: setsid(2) takes no arguments.
        check(unsafe { libc::setsid() }, Step::Session)?;
        if tty {
            // SAFETY: fd 0 is the terminal's slave side; TIOCSCTTY takes an int.
            let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
            check(r, Step::Terminal)?;
        }
        if let Some(root) = &root {
            // Enter the container root as switch_root does (pivot_root
            // cannot leave the initramfs): in a mount namespace of its own,
            // move the root's mount onto "/" and chroot there. The agent's
            // initramfs is then under the container's "/" mount, where no
            // chroot escape can reach it.
            // SAFETY: plain unshare(2).
            check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, Step::Root)?;
            // SAFETY: constant NUL-terminated strings; null fs type and data are allowed.
            let r = unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            };
            check(r, Step::Root)?;
            // SAFETY: root is a valid NUL-terminated path.
            check(unsafe { libc::chdir(root.as_ptr()) }, Step::Root)?;
            // SAFETY: constant NUL-terminated strings; null fs type and data are allowed.
            let r = unsafe {
                libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_MOVE,
                    std::ptr::null(),
                )
            };
            check(r, Step::Root)?;
            // SAFETY: constant NUL-terminated path.
            check(unsafe { libc::chroot(c".".as_ptr()) }, Step::Root)?;
            if fresh_proc {
                // The agent's /proc (all of the guest's processes, and
                // /proc/1/root: the agent's files) goes; a procfs of this
                // process's PID namespace replaces it.
                // SAFETY: constant NUL-terminated path.
                let r = unsafe { libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) };
                check(r, Step::Proc)?;
                // SAFETY: constant NUL-terminated strings; null data is allowed.
                let r = unsafe {
                    libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    )
                };
                check(r, Step::Proc)?;
            }
            // runc's readonlyPath and maskPath, in its order.
            for (i, p) in readonly.iter().enumerate() {
                // SAFETY: p is a valid NUL-terminated path; null fs type and data are allowed.
                let r = unsafe {
                    libc::mount(
                        p.as_ptr(),
                        p.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    )
                };
                if r < 0 {
                    if io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                        continue;
                    }
                    return Err(fail(Step::ReadOnly, i));
                }
                // SAFETY: statfs64 is plain data; all-zero is a valid value.
                let mut st: libc::statfs64 = unsafe { std::mem::zeroed() };
                // SAFETY: p is a valid path, st a statfs to fill.
                if unsafe { libc::statfs64(p.as_ptr(), &mut st) } < 0 {
                    return Err(fail(Step::ReadOnly, i));
                }
                // Keep the mount's nosuid/nodev/noexec (ST_* are MS_*).
                let keep = (st.f_flags as libc::c_ulong)
                    & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
                // SAFETY: as above.
                let r = unsafe {
                    libc::mount(
                        p.as_ptr(),
                        p.as_ptr(),
                        std::ptr::null(),
                        keep | libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    )
                };
                if r < 0 {
                    return Err(fail(Step::ReadOnly, i));
                }
            }
            for (i, p) in masked.iter().enumerate() {
                // SAFETY: constant and valid NUL-terminated paths; null fs type and data are allowed.
                let r = unsafe {
                    libc::mount(
                        c"/dev/null".as_ptr(),
                        p.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if r == 0 {
                    continue;
                }
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOENT) => continue,
                    // A directory: an empty read-only tmpfs over it.
                    Some(libc::ENOTDIR) => {
                        // SAFETY: constant and valid NUL-terminated strings; null data is allowed.
                        let r = unsafe {
                            libc::mount(
                                c"tmpfs".as_ptr(),
                                p.as_ptr(),
                                c"tmpfs".as_ptr(),
                                libc::MS_RDONLY,
                                std::ptr::null(),
                            )
                        };
                        if r < 0 {
                            return Err(fail(Step::Mask, i));
                        }
                    }
                    _ => return Err(fail(Step::Mask, i)),
                }
            }
        }
        if let Some((mnt, root)) = join {
            // The main process's mount namespace; setns leaves us at that
            // namespace's bottom root (the agent's initramfs), so go to
            // the main process's root directory, as nsenter --root does.
            // SAFETY: mnt is an open /proc/PID/ns/mnt descriptor.
            check(unsafe { libc::setns(mnt, libc::CLONE_NEWNS) }, Step::Join)?;
            // SAFETY: root is an open directory descriptor.
            check(unsafe { libc::fchdir(root) }, Step::Join)?;
            // SAFETY: constant NUL-terminated path.
            check(unsafe { libc::chroot(c".".as_ptr()) }, Step::Join)?;
        }
        // SAFETY: cwd is a valid NUL-terminated path.
        check(unsafe { libc::chdir(cwd.as_ptr()) }, Step::Cwd)?;
        for (i, &(resource, soft, hard)) in sec.rlimits.iter().enumerate() {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: resource was checked below RLIMIT_NLIMITS; lim is a valid rlimit.
            if unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &lim) } < 0 {
                return Err(fail(Step::Rlimit, i));
            }
        }
        if let Some((text, len)) = &sec.oom_score_adj {
            // SAFETY: constant NUL-terminated path.
            let fd = unsafe {
                libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                )
            };
            check(fd, Step::OomScoreAdj)?;
            // SAFETY: text holds len valid bytes; fd is open.
            let n = unsafe { libc::write(fd, text.as_ptr().cast(), *len) };
            let err = (n != *len as isize).then(|| fail(Step::OomScoreAdj, 0));
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            if let Some(e) = err {
                return Err(e);
            }
        }
        if let Some(m) = sec.umask {
            // SAFETY: umask(2) cannot fail.
            unsafe { libc::umask(m) };
        }
        if let Some(c) = &sec.caps {
            // Before the user switch, which needs CAP_SETUID and CAP_SETGID.
            for cap in 0..=c.last {
                if c.bounding & (1 << cap) == 0 {
                    // SAFETY: plain prctl(2) with integer arguments.
                    let r = unsafe {
                        libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)
                    };
                    if r < 0 {
                        return Err(fail(Step::Bounding, cap as usize));
                    }
                }
            }
            if uid != 0 {
                // SAFETY: plain prctl(2) with integer arguments.
                let r = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
                check(r, Step::KeepCaps)?;
            }
        }
        // SAFETY: groups is a valid array of groups.len() gids (prepared before the fork).
        let r = unsafe { libc::setgroups(groups.len(), groups.as_ptr()) };
        check(r, Step::Groups)?;
        // SAFETY: plain setgid(2).
        check(unsafe { libc::setgid(gid) }, Step::Gid)?;
        // SAFETY: plain setuid(2).
        check(unsafe { libc::setuid(uid) }, Step::Uid)?;
        if let Some(c) = &sec.caps {
            if uid != 0 {
                // SAFETY: plain prctl(2) with integer arguments.
                let r = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
                check(r, Step::KeepCaps)?;
            }
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = cap_data(c);
            // SAFETY: capset(2) with a version 3 header and its two data words.
            let r = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
            if r < 0 {
                return Err(fail(Step::Capset, 0));
            }
            // SAFETY: plain prctl(2) with integer arguments.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            check(r, Step::Ambient)?;
            for cap in 0..=c.last {
                if c.ambient & (1 << cap) != 0 {
                    // SAFETY: plain prctl(2) with integer arguments.
                    let r = unsafe {
                        libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                            cap as libc::c_ulong,
                            0,
                            0,
                        )
                    };
                    if r < 0 {
                        return Err(fail(Step::Ambient, cap as usize));
                    }
                }
            }
        }
        if sec.no_new_privs {
            // SAFETY: plain prctl(2) with integer arguments.
            let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            check(r, Step::NoNewPrivs)?;
        }
        Ok(())
    };
    // SAFETY: `setup` only makes async-signal-safe calls (see above).
    unsafe {
        cmd.pre_exec(setup);
    }
    let spawned = cmd.spawn();
    // The child has exec'd or failed (and written its step) by now.
    drop(step_w);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let mut msg = [0u8; 3];
            let mut step_r = step_r;
            return Err(match std::io::Read::read(&mut step_r, &mut msg) {
                Ok(3) => match STEPS.get(usize::from(msg[0])) {
                    Some(&step) => {
                        let idx = usize::from(msg[1]) | usize::from(msg[2]) << 8;
                        io::Error::new(
                            e.kind(),
                            format!(
                                "cannot {}: {e}",
                                describe_step(step, idx, spec, &masked_c, &readonly_c)
                            ),
                        )
                    }
                    None => e,
                },
                _ => e,
            });
        }
    };
    let pid = child.id() as i32;
    let started = match pty {
        Some((m, _slave)) => {
            let master = File::from(m);
            Started {
                stdin: Some(master.try_clone()?),
                stdout: master.try_clone()?,
                stderr: None,
                pty: Some(master),
            }
        }
        None => Started {
            stdin: child.stdin.take().map(|s| File::from(OwnedFd::from(s))),
            stdout: File::from(OwnedFd::from(
                child.stdout.take().ok_or_else(|| invalid("no stdout"))?,
            )),
            stderr: child.stderr.take().map(|s| File::from(OwnedFd::from(s))),
            pty: None,
        },
    };
    // The reaper owns waiting; `child` is dropped without wait (std does not
    // reap on drop).
    drop(child);
    Ok((pid, started))
}

/// Writes the container's sysctls (`name`, `value`) under `proc_sys` (the
/// guest's `/proc/sys`: the guest kernel is the container's own), in
/// order, before its main process starts. Names are checked again here
/// (untrusted input); the file must exist (a sysctl the kernel lacks is
/// an error, as with runc).
fn write_sysctls(sysctls: &[(String, String)], proc_sys: &str) -> io::Result<()> {
    for (name, value) in sysctls {
        let rel = husk_protocol::sysctl_path(name)
            .ok_or_else(|| invalid(&format!("invalid sysctl name {name:?}")))?;
        let path = format!(
            "{proc_sys}{}",
            rel.strip_prefix("/proc/sys").unwrap_or(&rel)
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {name}={value}: {e}")))?;
    }
    Ok(())
}

/// Resizes a process's terminal.
pub fn resize(pty: &File, rows: u16, cols: u16) -> io::Result<()> {
    sys::set_winsize(pty.as_raw_fd(), rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::{Capabilities, Rlimit};

    fn docker_caps() -> u64 {
        // CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID
        // SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE
        [0, 1, 4, 3, 27, 13, 6, 7, 31, 8, 10, 18, 5, 29]
            .iter()
            .fold(0u64, |m, c| m | 1 << c)
    }

    #[test]
    fn cap_masks_and_capset_words() {
        assert_eq!(cap_mask(0), 1);
        assert_eq!(cap_mask(40), (1u64 << 41) - 1);
        assert_eq!(cap_mask(63), u64::MAX);
        assert_eq!(cap_mask(99), u64::MAX);
        let c = CapSets {
            last: 40,
            bounding: 0,
            effective: docker_caps() | 1 << 40,
            permitted: 1 << 33,
            inheritable: 0,
            ambient: 0,
        };
        let d = cap_data(&c);
        assert_eq!(d[0].effective, docker_caps() as u32);
        assert_eq!((d[1].effective, d[1].permitted), (1 << 8, 1 << 1));
        assert_eq!(
            (d[0].permitted, d[0].inheritable, d[1].inheritable),
            (0, 0, 0)
        );
    }

    #[test]
    fn prepare_converts_and_masks_to_the_kernel() {
        let mut spec = RunSpec::new(["sh"]);
        assert_eq!(
            prepare(&spec, 40).unwrap(),
            Security {
                rlimits: Vec::new(),
                oom_score_adj: None,
                umask: None,
                caps: None,
                no_new_privs: false,
            }
        );
        spec.rlimits = vec![Rlimit {
            resource: 7,
            soft: 1024,
            hard: 2048,
        }];
        // Bit 45 is no capability of a kernel whose last is 40.
        let all = docker_caps() | 1 << 45;
        spec.capabilities = Some(Capabilities {
            bounding: all,
            effective: all,
            permitted: all,
            inheritable: 0,
            ambient: 0,
        });
        spec.oom_score_adj = Some(-1000);
        spec.umask = Some(0o027);
        spec.no_new_privileges = true;
        let sec = prepare(&spec, 40).unwrap();
        assert_eq!(sec.rlimits, vec![(7, 1024, 2048)]);
        let (text, len) = sec.oom_score_adj.unwrap();
        assert_eq!(&text[..len], b"-1000");
        assert_eq!(sec.umask, Some(0o027));
        assert!(sec.no_new_privs);
        let caps = sec.caps.unwrap();
        assert_eq!(caps.last, 40);
        assert_eq!(
            (caps.bounding, caps.effective, caps.permitted),
            (docker_caps(), docker_caps(), docker_caps())
        );
    }

    #[test]
    fn prepare_refuses_hostile_specs_before_the_fork() {
        let mut spec = RunSpec::new(["sh"]);
        spec.rlimits = vec![
            Rlimit {
                resource: 7,
                soft: 1,
                hard: 1
            };
            husk_protocol::MAX_RLIMITS + 1
        ];
        assert!(prepare(&spec, 40).is_err());
        spec.rlimits = vec![Rlimit {
            resource: 99,
            soft: 1,
            hard: 1,
        }];
        assert!(prepare(&spec, 40).is_err());
        spec.rlimits.clear();
        spec.capabilities = Some(Capabilities {
            effective: 1,
            ..Default::default()
        });
        assert!(
            prepare(&spec, 40)
                .unwrap_err()
                .to_string()
                .contains("effective")
        );
        spec.capabilities = None;
        spec.oom_score_adj = Some(i32::MIN);
        assert!(prepare(&spec, 40).is_err());
        spec.oom_score_adj = None;
        // An exec may not carry the container's settings.
        spec.sysctls = vec![("net.ipv4.ip_forward".into(), "1".into())];
        assert!(
            prepare(&spec, 40)
                .unwrap_err()
                .to_string()
                .contains("main process")
        );
        spec.main = true;
        prepare(&spec, 40).unwrap();
        spec.masked_paths = vec![b"/proc/../../x".to_vec()];
        assert!(prepare(&spec, 40).is_err());
    }

    #[test]
    fn steps_are_indexed_by_their_discriminant() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
        let spec = RunSpec::new(["sh"]).user(1000, 100);
        let m = [CString::new("/proc/kcore").unwrap()];
        assert_eq!(
            describe_step(Step::Mask, 0, &spec, &m, &[]),
            "mask /proc/kcore"
        );
        assert_eq!(describe_step(Step::Uid, 0, &spec, &m, &[]), "set uid 1000");
        assert_eq!(
            describe_step(Step::ReadOnly, 5, &spec, &m, &[]),
            "make  read-only"
        );
    }

    #[test]
    fn sysctls_are_written_under_proc_sys_and_bad_names_refused() {
        let dir = std::env::temp_dir().join(format!("husk-agent-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/ipv4")).unwrap();
        std::fs::write(dir.join("net/ipv4/ip_forward"), "0").unwrap();
        let base = dir.to_str().unwrap();
        write_sysctls(&[("net.ipv4.ip_forward".into(), "1".into())], base).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        // A sysctl the kernel lacks is an error, not a new file.
        let e = write_sysctls(&[("net.ipv4.nope".into(), "1".into())], base).unwrap_err();
        assert!(e.to_string().contains("sysctl net.ipv4.nope=1"), "{e}");
        assert!(!dir.join("net/ipv4/nope").exists());
        for bad in ["net/ipv4/ip_forward", "..", "net..ipv4", "a.b/../c"] {
            assert!(
                write_sysctls(&[(bad.into(), "1".into())], base).is_err(),
                "{bad}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
