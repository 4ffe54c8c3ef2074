//! Loading the kernel (a vmlinux ELF or a bzImage) and the initramfs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{HIMEM_START, MMIO_HOLE_START};

/// Offset of the 64-bit entry point in a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors loading the guest's kernel or initramfs.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The file cannot be opened or read.
    #[error("cannot read {what} {path}")]
    Read {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither an ELF nor a bzImage.
    #[error("{0} is neither a vmlinux ELF nor a bzImage")]
    UnknownFormat(PathBuf),
    /// linux-loader rejected the image.
    #[error("cannot load kernel {path}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initramfs does not fit between the kernel and the top of low memory.
    #[error(
        "initramfs of {size} bytes does not fit in guest memory above the kernel (which ends at {kernel_end:#x}); give the guest more memory"
    )]
    InitrdTooBig {
        /// Its size.
        size: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// Writing to guest memory failed.
    #[error("cannot write the {0} into guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// The kind of kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF vmlinux.
    Elf,
    /// A bzImage (compressed, with a real-mode setup header).
    BzImage,
}

/// What loading the kernel produced.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The format found.
    pub format: KernelFormat,
    /// Guest address to start the vCPU at (64-bit entry).
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage's setup header, if it is one.
    pub setup_header: Option<setup_header>,
}

fn read_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LoaderError + 'a {
    move |source| LoaderError::Read {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Tells a vmlinux ELF from a bzImage by their magic numbers.
pub fn detect_format(file: &mut (impl Read + Seek)) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = File::open(path).map_err(read_err("kernel", path))?;
    let format = detect_format(&mut file)
        .map_err(read_err("kernel", path))?
        .ok_or_else(|| LoaderError::UnknownFormat(path.to_owned()))?;
    let kerr = |source| LoaderError::Kernel {
        path: path.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    Ok(match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(kerr)?;
            LoadedKernel {
                format,
                entry: r.kernel_load.0,
                end: r.kernel_end,
                setup_header: None,
            }
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(kerr)?;
            LoadedKernel {
                format,
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                end: r.kernel_end,
                setup_header: r.setup_header,
            }
        }
    })
}

/// Where an initramfs of `size` bytes goes: page-aligned at the top of RAM
/// below the MMIO hole, and above the kernel.
pub fn initrd_address(ram_size: u64, kernel_end: u64, size: u64) -> Result<u64, LoaderError> {
    let top = ram_size.min(MMIO_HOLE_START);
    let too_big = || LoaderError::InitrdTooBig { size, kernel_end };
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end.next_multiple_of(0x1000) {
        return Err(too_big());
    }
    Ok(addr)
}

/// Loads the initramfs at `path`; returns its guest address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<(u64, u64), LoaderError> {
    let data = std::fs::read(path).map_err(read_err("initramfs", path))?;
    let size = data.len() as u64;
    let addr = initrd_address(ram_size, kernel_end, size)?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| LoaderError::GuestMemory("initramfs", e))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn detects_formats() {
        let mut elf = Cursor::new(b"\x7fELF\x02\x01\x01".to_vec());
        assert_eq!(detect_format(&mut elf).unwrap(), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(
            detect_format(&mut Cursor::new(b"MZ".to_vec())).unwrap(),
            None
        );
        assert_eq!(detect_format(&mut Cursor::new(Vec::new())).unwrap(), None);
    }

    #[test]
    fn initrd_goes_to_top_of_low_ram() {
        let a = initrd_address(128 << 20, 20 << 20, 5000).unwrap();
        assert_eq!(a, ((128 << 20) - 5000) & !0xfff);
        // Big guests: below the MMIO hole, not at the end of RAM.
        let a = initrd_address(8 << 30, 20 << 20, 4096).unwrap();
        assert_eq!(a, MMIO_HOLE_START - 4096);
    }

    #[test]
    fn initrd_must_not_overlap_kernel() {
        assert!(matches!(
            initrd_address(64 << 20, 60 << 20, 8 << 20),
            Err(LoaderError::InitrdTooBig { .. })
        ));
        assert!(matches!(
            initrd_address(64 << 20, 0, u64::MAX),
            Err(LoaderError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn missing_and_garbage_kernels_are_clear_errors() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let e = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read kernel /nonexistent/vmlinux"),
            "{e}"
        );
        let p = std::env::temp_dir().join(format!("husk-garbage-kernel-{}", std::process::id()));
        std::fs::write(&p, b"this is not a kernel").unwrap();
        let e = load_kernel(&mem, &p).unwrap_err();
        assert!(matches!(e, LoaderError::UnknownFormat(_)), "{e}");
        // An ELF header that lies about its contents.
        let mut bad = b"\x7fELF\x02\x01\x01".to_vec();
        bad.resize(64, 0xff);
        std::fs::write(&p, &bad).unwrap();
        let e = load_kernel(&mem, &p).unwrap_err();
        assert!(matches!(e, LoaderError::Kernel { .. }), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
