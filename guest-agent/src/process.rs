//! Starting the container's process as the host's [`RunSpec`] says: in the
//! container root, with exactly the given environment, working directory and
//! user, in a new session, on pipes or on a pseudo-terminal.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use husk_protocol::RunSpec;

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

    // Runs in the forked child before exec: only async-signal-safe system
    // calls on data prepared before the fork.
    let setup = move || -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: setsid(2) takes no arguments.
        check(unsafe { libc::setsid() })?;
        if tty {
            // SAFETY: fd 0 is the terminal's slave side; TIOCSCTTY takes an int.
            check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
        }
        if let Some(root) = &root {
            // Enter the container root as switch_root does (pivot_root
            // cannot leave the initramfs): in a mount namespace of its own,
            // move the root's mount onto "/" and chroot there. The agent's
            // initramfs is then under the container's "/" mount, where no
            // chroot escape can reach it.
            // SAFETY: plain unshare(2).
            check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
            // SAFETY: constant NUL-terminated strings; null fs type and data are allowed.
            check(unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            })?;
            // SAFETY: root is a valid NUL-terminated path.
            check(unsafe { libc::chdir(root.as_ptr()) })?;
            // SAFETY: constant NUL-terminated strings; null fs type and data are allowed.
            check(unsafe {
                libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_MOVE,
                    std::ptr::null(),
                )
            })?;
            // SAFETY: constant NUL-terminated path.
            check(unsafe { libc::chroot(c".".as_ptr()) })?;
            if fresh_proc {
                // The agent's /proc (all of the guest's processes, and
                // /proc/1/root: the agent's files) goes; a procfs of this
                // process's PID namespace replaces it.
                // SAFETY: constant NUL-terminated path.
                check(unsafe { libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) })?;
                // SAFETY: constant NUL-terminated strings; null data is allowed.
                check(unsafe {
                    libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    )
                })?;
            }
        }
        if let Some((mnt, root)) = join {
            // The main process's mount namespace; setns leaves us at that
            // namespace's bottom root (the agent's initramfs), so go to
            // the main process's root directory, as nsenter --root does.
            // SAFETY: mnt is an open /proc/PID/ns/mnt descriptor.
            check(unsafe { libc::setns(mnt, libc::CLONE_NEWNS) })?;
            // SAFETY: root is an open directory descriptor.
            check(unsafe { libc::fchdir(root) })?;
            // SAFETY: constant NUL-terminated path.
            check(unsafe { libc::chroot(c".".as_ptr()) })?;
        }
        // SAFETY: cwd is a valid NUL-terminated path.
        check(unsafe { libc::chdir(cwd.as_ptr()) })?;
        // SAFETY: groups is a valid array of groups.len() gids (prepared before the fork).
        check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
        // SAFETY: plain setgid(2).
        check(unsafe { libc::setgid(gid) })?;
        // SAFETY: plain setuid(2).
        check(unsafe { libc::setuid(uid) })
    };
    // SAFETY: `setup` only makes async-signal-safe calls (see above).
    unsafe {
        cmd.pre_exec(setup);
    }
    let mut child = cmd.spawn()?;
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

/// Resizes a process's terminal.
pub fn resize(pty: &File, rows: u16, cols: u16) -> io::Result<()> {
    sys::set_winsize(pty.as_raw_fd(), rows, cols)
}
