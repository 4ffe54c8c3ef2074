//! The few raw system calls the agent needs that std does not offer:
//! mounts, AF_VSOCK sockets, pseudo-terminals, waitpid(-1), reboot.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let (src, tgt, fs) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    let data = data.map(cstr).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are valid NUL-terminated strings (or null for
    // data) that outlive the call.
    check(unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, data_ptr) })
        .map(drop)
}

/// mknod(2) of a character device.
pub fn mknod_char(path: &str, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let p = cstr(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: p is a valid NUL-terminated path.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | mode, dev) }).map(drop)
}

/// A listening AF_VSOCK stream socket on `port`, any CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    let (sock, addr) = vsock_socket(libc::VMADDR_CID_ANY, port)?;
    use std::os::fd::AsRawFd;
    // SAFETY: addr is a valid sockaddr_vm of the size passed.
    check(unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), VM_ADDR_LEN) })?;
    // SAFETY: plain listen(2) on our socket.
    check(unsafe { libc::listen(sock.as_raw_fd(), 16) })?;
    Ok(sock)
}

const VM_ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// A fresh vsock stream socket, and the address of `cid`:`port`.
fn vsock_socket(cid: u32, port: u32) -> io::Result<(OwnedFd, libc::sockaddr_vm)> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd =
        check(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    Ok((sock, addr))
}

/// A stream connected to the host (CID 2) on vsock `port`.
pub fn vsock_connect_host(port: u32) -> io::Result<File> {
    let (sock, addr) = vsock_socket(libc::VMADDR_CID_HOST, port)?;
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: addr is a valid sockaddr_vm of the size passed.
        match check(unsafe {
            libc::connect(sock.as_raw_fd(), (&raw const addr).cast(), VM_ADDR_LEN)
        }) {
            Ok(_) => return Ok(File::from(sock)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Read and write timeouts on a socket (SO_RCVTIMEO, SO_SNDTIMEO).
pub fn set_timeouts(sock: &File, d: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: tv is a valid timeval of the size passed; the fd is ours.
        check(unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
    }
    Ok(())
}

/// Accepts one connection on a listening socket, as a `File` for read/write.
pub fn accept(listener: &OwnedFd) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: accept4 with null address pointers is allowed; result checked.
        let r = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match check(r) {
            // SAFETY: r is a fresh connected socket that we now own.
            Ok(fd) => return Ok(unsafe { File::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A pseudo-terminal pair (master, slave), both close-on-exec.
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers are valid; name and termios may be null.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: openpty returned a fresh descriptor that we now own.
    let m = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: as above, for the slave side.
    let s = unsafe { OwnedFd::from_raw_fd(slave) };
    use std::os::fd::AsRawFd;
    for fd in [m.as_raw_fd(), s.as_raw_fd()] {
        // SAFETY: fcntl on a descriptor we own.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok((m, s))
}

/// Sets a terminal's size.
pub fn set_winsize(fd: libc::c_int, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// kill(2).
pub fn kill(pid: i32, signo: i32) -> io::Result<()> {
    // SAFETY: plain kill(2).
    check(unsafe { libc::kill(pid, signo) }).map(drop)
}

/// Waits until some child has exited and returns its pid without reaping
/// it (`waitid` with `WNOWAIT`); `Ok(None)` when there are no children.
pub fn peek_exited() -> io::Result<Option<i32>> {
    loop {
        // SAFETY: siginfo_t is plain data; all-zero is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid out-pointer.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            // SAFETY: waitid succeeded for WEXITED, so si_pid is the valid field.
            return Ok(Some(unsafe { info.si_pid() }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Reaps `pid` if it is a zombie; `None` if it is not (someone else reaped
/// it, or it is still running).
pub fn reap(pid: i32) -> Option<libc::c_int> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r == pid).then_some(status)
}

/// Flushes filesystems and powers the VM off. Does not return on success.
pub fn power_off() -> io::Error {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
    }
    // SAFETY: as above.
    let r = unsafe { libc::reboot(libc::RB_POWER_OFF) };
    let _ = r;
    io::Error::last_os_error()
}

/// unshare(2).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain unshare(2).
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// setns(2) on a namespace descriptor.
pub fn setns(fd: &OwnedFd, nstype: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fd is an open namespace descriptor we borrow for the call.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: name points to name.len() valid bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}
