//! What kind of KVM this host offers.
//!
//! husk runs the same guest everywhere, but how it must boot depends on the
//! hypervisor behind `/dev/kvm`:
//!
//! * **hardware**: KVM on VT-x or AMD-V (bare metal, or a cloud VM with
//!   nested virtualisation). The guest runs at native speed.
//! * **PVM**: the `kvm_pvm` module, a page-table based hypervisor that needs
//!   no VT-x, used to offer KVM inside ordinary cloud VMs. A standard guest
//!   kernel runs there with kernel mode emulated (about 1,500 times slower)
//!   and a broken SYSCALL, so husk switches the guest kernel's PVM
//!   compatibility mode on (see guest-kernel/README.md).
//! * **none**: no usable `/dev/kvm`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// The hypervisor behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// KVM on hardware virtualisation (`vmx` or `svm` in the CPU flags).
    Hardware {
        /// Which vendor extension.
        vendor: HwVendor,
    },
    /// KVM provided by the `kvm_pvm` module (no VT-x/AMD-V).
    Pvm,
    /// `/dev/kvm` exists but neither of the above was recognised.
    Unknown,
    /// There is no `/dev/kvm`.
    NoKvm,
}

/// The CPU vendor's virtualisation extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwVendor {
    /// Intel VT-x.
    Vmx,
    /// AMD-V.
    Svm,
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKind::Hardware {
                vendor: HwVendor::Vmx,
            } => f.write_str("hardware KVM (Intel VT-x)"),
            HostKind::Hardware {
                vendor: HwVendor::Svm,
            } => f.write_str("hardware KVM (AMD-V)"),
            HostKind::Pvm => f.write_str("PVM (kvm_pvm, no hardware virtualisation)"),
            HostKind::Unknown => f.write_str("KVM of an unrecognised kind"),
            HostKind::NoKvm => f.write_str("no KVM"),
        }
    }
}

impl HostKind {
    /// Whether the guest kernel's PVM compatibility mode is needed here.
    pub fn needs_pvm_compat(self) -> bool {
        self == HostKind::Pvm
    }
}

/// Where detection looks; tests point it at a fake root.
#[derive(Debug, Clone)]
pub struct HostProbe {
    root: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }
}

impl HostProbe {
    /// A probe that reads `dev/kvm`, `sys/module/*` and `proc/cpuinfo` below `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Detects the host kind. Order matters: a PVM host may also show `vmx`
    /// in a nested guest's flags, and it is `kvm_pvm` that serves `/dev/kvm`.
    pub fn detect(&self) -> HostKind {
        if !self.path("dev/kvm").exists() {
            return HostKind::NoKvm;
        }
        if self.path("sys/module/kvm_pvm").exists() {
            return HostKind::Pvm;
        }
        let flags = cpu_flags(&self.path("proc/cpuinfo"));
        let intel_mod = self.path("sys/module/kvm_intel").exists();
        let amd_mod = self.path("sys/module/kvm_amd").exists();
        if flags.iter().any(|f| f == "vmx") || intel_mod {
            HostKind::Hardware {
                vendor: HwVendor::Vmx,
            }
        } else if flags.iter().any(|f| f == "svm") || amd_mod {
            HostKind::Hardware {
                vendor: HwVendor::Svm,
            }
        } else {
            HostKind::Unknown
        }
    }
}

/// The first `flags` line of a cpuinfo file, split into words.
fn cpu_flags(cpuinfo: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(cpuinfo) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then(|| v.split_whitespace().map(str::to_owned).collect())
        })
        .unwrap_or_default()
}

/// Detects the kind of this machine.
pub fn detect() -> HostKind {
    HostProbe::default().detect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(files: &[&str], cpuinfo: &str) -> (tempdir::Dir, HostProbe) {
        let d = tempdir::Dir::new();
        for f in files {
            let p = d.0.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            if f.starts_with("sys/") {
                fs::create_dir_all(&p).unwrap();
            } else {
                fs::write(&p, "").unwrap();
            }
        }
        fs::create_dir_all(d.0.join("proc")).unwrap();
        fs::write(d.0.join("proc/cpuinfo"), cpuinfo).unwrap();
        let probe = HostProbe::with_root(&d.0);
        (d, probe)
    }

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n\nprocessor\t: 1\nflags\t\t: fpu vmx\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm sse2\n";
    const NONE: &str = "processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n";

    #[test]
    fn no_dev_kvm() {
        let (_d, p) = fake(&[], INTEL);
        assert_eq!(p.detect(), HostKind::NoKvm);
    }

    #[test]
    fn pvm_module_wins() {
        let (_d, p) = fake(&["dev/kvm", "sys/module/kvm_pvm"], NONE);
        assert_eq!(p.detect(), HostKind::Pvm);
        assert!(p.detect().needs_pvm_compat());
        // Even if the flags also show vmx (nested).
        let (_d, p) = fake(&["dev/kvm", "sys/module/kvm_pvm"], INTEL);
        assert_eq!(p.detect(), HostKind::Pvm);
    }

    #[test]
    fn hardware_by_flags_or_module() {
        let (_d, p) = fake(&["dev/kvm"], INTEL);
        assert_eq!(
            p.detect(),
            HostKind::Hardware {
                vendor: HwVendor::Vmx
            }
        );
        assert!(!p.detect().needs_pvm_compat());
        let (_d, p) = fake(&["dev/kvm"], AMD);
        assert_eq!(
            p.detect(),
            HostKind::Hardware {
                vendor: HwVendor::Svm
            }
        );
        let (_d, p) = fake(&["dev/kvm", "sys/module/kvm_amd"], NONE);
        assert_eq!(
            p.detect(),
            HostKind::Hardware {
                vendor: HwVendor::Svm
            }
        );
    }

    #[test]
    fn unknown_kvm() {
        let (_d, p) = fake(&["dev/kvm"], NONE);
        assert_eq!(p.detect(), HostKind::Unknown);
        let (_d, p) = fake(&["dev/kvm"], "garbage without colons\n");
        assert_eq!(p.detect(), HostKind::Unknown);
    }

    #[test]
    fn display_names_the_kind() {
        assert!(HostKind::Pvm.to_string().contains("PVM"));
        assert!(HostKind::NoKvm.to_string().contains("no KVM"));
    }

    /// A temporary directory removed on drop (no extra dependency).
    mod tempdir {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct Dir(pub PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "husk-host-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
