//! Linux boot: the command line, the zero page, loading the kernel and initramfs.

pub mod cmdline;
pub mod loader;
pub mod params;
