//! TAP devices: opening one for the device ([`open_tap`]) and the ioctls
//! the device needs on it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::VNET_HDR_LEN;

/// Longest interface name, with its NUL (`IFNAMSIZ`).
const IFNAMSIZ: usize = 16;

/// Flags every TAP of the device has.
const TAP_FLAGS: i16 = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;

/// Errors opening a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long for an interface or holds a NUL or `/`.
    #[error("invalid TAP name {0:?}: 1 to 15 bytes, without NUL or '/'")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun")]
    Open(#[source] io::Error),
    /// The kernel refused to create or attach the interface.
    #[error("cannot create TAP {name:?} (TUNSETIFF)")]
    SetIff {
        /// The requested name.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the 12-byte vnet header.
    #[error("cannot set the TAP's vnet header size (TUNSETVNETHDRSZ)")]
    VnetHdrSize(#[source] io::Error),
}

/// `struct ifreq` with the union used as `ifr_flags` (40 bytes on 64-bit
/// Linux, as the kernel copies).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Opens a TAP with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte
/// vnet header (`TUNSETVNETHDRSZ`), non-blocking and close-on-exec.
/// `name` may contain `%d` (the kernel picks a free number). The interface
/// is not persistent: it vanishes when the last fd on it closes. Returns the
/// fd and the interface's name as the kernel set it. Needs `CAP_NET_ADMIN`
/// (in the network namespace's user namespace) unless the TAP exists and
/// belongs to the caller.
pub fn open_tap(name: &str) -> Result<(OwnedFd, String), TapError> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['\0', '/']) {
        return Err(TapError::InvalidName(name.to_string()));
    }
    // SAFETY: the path is a NUL-terminated literal; open(2) touches no
    // other memory.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(TapError::Open(io::Error::last_os_error()));
    }
    // SAFETY: open(2) just returned this fd; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        flags: TAP_FLAGS,
        ..Default::default()
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` has its
    // size and layout and lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(TapError::SetIff {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    set_vnet_hdr_size(fd.as_raw_fd()).map_err(TapError::VnetHdrSize)?;
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    let actual = String::from_utf8_lossy(&req.name[..len]).into_owned();
    Ok((fd, actual))
}

/// Sets the TAP's vnet header to [`VNET_HDR_LEN`] bytes.
fn set_vnet_hdr_size(fd: RawFd) -> io::Result<()> {
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points
    // at `size` for the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size as *const libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is a TAP with the flags the device needs; if so, sets its
/// vnet header size (a caller may have opened it without).
pub(super) fn check_tap(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut req = IfReq::default();
    // SAFETY: TUNGETIFF writes one `struct ifreq` to the pointer, which
    // points at `req` for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) } < 0 {
        let e = io::Error::last_os_error();
        // Not a tun/tap fd, or one not attached to an interface.
        return match e.raw_os_error() {
            Some(libc::EINVAL | libc::ENOTTY | libc::EBADFD) => Ok(false),
            _ => Err(e),
        };
    }
    if req.flags & TAP_FLAGS != TAP_FLAGS {
        return Ok(false);
    }
    set_vnet_hdr_size(fd.as_raw_fd())?;
    Ok(true)
}

/// Tells the TAP which offloads the guest takes (`TUN_F_*`).
pub(super) fn set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
    // touched.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fd` non-blocking.
pub(super) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and touches no memory.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL takes an int by value and touches no memory.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for n in ["", "0123456789abcdef", "a/b", "a\0b"] {
            assert!(
                matches!(open_tap(n), Err(TapError::InvalidName(_))),
                "{n:?}"
            );
        }
    }

    #[test]
    fn a_socket_is_not_a_tap() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = OwnedFd::from(a);
        assert!(!check_tap(std::os::fd::AsFd::as_fd(&fd)).unwrap());
    }
}
