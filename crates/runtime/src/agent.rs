//! Finding the guest kernel and the guest agent, and refusing an agent the
//! guest cannot run.
//!
//! The agent is `/init` in the guest's initramfs, which holds nothing else: it
//! must be a static x86-64 executable. `./dev build` installs it as
//! `husk-init` beside `husk`, a name cargo never writes, so a plain
//! `cargo build` cannot put a dynamically linked `husk-agent` in its place.
//! [`check_agent`] reads the ELF header and program headers and refuses
//! anything else, before a guest panics with "Failed to execute /init".

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The name `./dev build` installs the static agent under, beside `husk`.
pub const AGENT_FILE_NAME: &str = "husk-init";
/// The name of the guest kernel beside `husk`.
pub const KERNEL_FILE_NAME: &str = "husk-vmlinux";

/// How to build a usable agent (part of every agent error).
pub const AGENT_BUILD_HINT: &str = "build it with `./dev build` (installs target/release/husk-init), or: \
RUSTFLAGS=\"-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols\" \
cargo build --release -p husk-agent --target x86_64-unknown-linux-gnu --target-dir target/agent \
&& cp target/agent/x86_64-unknown-linux-gnu/release/husk-agent target/release/husk-init";

/// Errors finding the kernel or the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No kernel given and none found.
    #[error(
        "no guest kernel found (give --kernel or HUSK_KERNEL, or build one with guest-kernel/build.sh)"
    )]
    NoKernel,
    /// No agent given and none beside `husk`.
    #[error(
        "no guest agent found (give --agent or HUSK_AGENT, or put husk-init beside husk); {AGENT_BUILD_HINT}"
    )]
    NoAgent,
    /// The agent file cannot be opened or read.
    #[error("cannot read the guest agent {path}; {AGENT_BUILD_HINT}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Not an ELF file (or a truncated one).
    #[error("guest agent {path} is not an ELF executable ({detail}); {AGENT_BUILD_HINT}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An ELF file for another machine or class.
    #[error("guest agent {path} is not an x86-64 executable ({detail}); {AGENT_BUILD_HINT}")]
    WrongMachine {
        /// The file.
        path: PathBuf,
        /// What it is.
        detail: String,
    },
    /// Not a regular file with an execute bit.
    #[error("guest agent {path} is not executable (mode {mode:o}); {AGENT_BUILD_HINT}")]
    NotExecutable {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Dynamically linked: the guest has no loader or libraries.
    #[error(
        "guest agent {path} is dynamically linked (it asks for the loader {interpreter}), but the guest has no libraries; \
         a plain `cargo build` makes such a binary. {AGENT_BUILD_HINT}"
    )]
    Dynamic {
        /// The file.
        path: PathBuf,
        /// Its `PT_INTERP`.
        interpreter: String,
    },
}

fn beside_exe(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join(name);
    p.exists().then_some(p)
}

/// The guest kernel: `explicit` (`--kernel`/`$HUSK_KERNEL`), else `husk-vmlinux`
/// beside the running binary, else the newest one `guest-kernel/build.sh` cached
/// (`$HUSK_CACHE_DIR`, `$XDG_CACHE_HOME/husk` or `~/.cache/husk`, `kernel/*/vmlinux`).
pub fn find_kernel(explicit: Option<PathBuf>) -> Result<PathBuf, AgentError> {
    if let Some(k) = explicit.or_else(|| beside_exe(KERNEL_FILE_NAME)) {
        return Ok(k);
    }
    let home = std::env::var_os("HUSK_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("husk")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/husk")));
    let newest = home.and_then(|h| {
        std::fs::read_dir(h.join("kernel"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("vmlinux"))
            .filter(|p| p.is_file())
            .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
    });
    newest.ok_or(AgentError::NoKernel)
}

/// The guest agent: `explicit` (`--agent`/`$HUSK_AGENT`), else `husk-init`
/// beside the running binary; checked with [`check_agent`].
pub fn find_agent(explicit: Option<PathBuf>) -> Result<PathBuf, AgentError> {
    let path = explicit
        .or_else(|| beside_exe(AGENT_FILE_NAME))
        .ok_or(AgentError::NoAgent)?;
    check_agent(&path)?;
    Ok(path)
}

const ELF_HEADER_LEN: usize = 64;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
const PHDR_LEN: usize = 56;
/// More program headers than any real executable has.
const MAX_PHNUM: usize = 256;
/// Longest `PT_INTERP` path read for the message.
const MAX_INTERP: u64 = 256;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Refuses a guest agent the guest cannot run as `/init`: not a regular file with
/// an execute bit, not ELF, not x86-64 (64-bit little-endian), not an executable
/// (`ET_EXEC`, or `ET_DYN` for static-pie), or dynamically linked (`PT_INTERP`).
/// Reads only the 64-byte header and at most [`MAX_PHNUM`] program headers.
pub fn check_agent(path: &Path) -> Result<(), AgentError> {
    let read_err = |source| AgentError::Read {
        path: path.to_path_buf(),
        source,
    };
    let not_elf = |detail: &str| AgentError::NotElf {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let wrong = |detail: String| AgentError::WrongMachine {
        path: path.to_path_buf(),
        detail,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.permissions().mode();
    if !meta.is_file() || mode & 0o111 == 0 {
        return Err(AgentError::NotExecutable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut header = [0u8; ELF_HEADER_LEN];
    let n = read_up_to(&mut file, &mut header).map_err(read_err)?;
    if n < 4 || &header[..4] != b"\x7fELF" {
        return Err(not_elf("no ELF magic"));
    }
    if n < ELF_HEADER_LEN {
        return Err(not_elf("truncated ELF header"));
    }
    if header[4] != 2 {
        return Err(wrong(format!("ELF class {} is not 64-bit", header[4])));
    }
    if header[5] != 1 {
        return Err(wrong("big-endian".into()));
    }
    let machine = u16_at(&header, 18);
    if machine != EM_X86_64 {
        return Err(wrong(format!("ELF machine {machine}")));
    }
    let e_type = u16_at(&header, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(not_elf(&format!("ELF type {e_type} is not an executable")));
    }
    let phoff = u64_at(&header, 32);
    let phentsize = usize::from(u16_at(&header, 54));
    let phnum = usize::from(u16_at(&header, 56));
    if phnum == 0 {
        return Err(not_elf("no program headers"));
    }
    if phnum > MAX_PHNUM || !(PHDR_LEN..=4 * PHDR_LEN).contains(&phentsize) {
        return Err(not_elf(&format!(
            "implausible program headers ({phnum} of {phentsize} bytes)"
        )));
    }
    if phoff > meta.len() {
        return Err(not_elf("program headers beyond the end of the file"));
    }
    let mut table = vec![0u8; phnum * phentsize];
    file.seek(SeekFrom::Start(phoff)).map_err(read_err)?;
    if read_up_to(&mut file, &mut table).map_err(read_err)? != table.len() {
        return Err(not_elf("truncated program headers"));
    }
    for ph in table.chunks_exact(phentsize) {
        if u32_at(ph, 0) == PT_INTERP {
            let offset = u64_at(ph, 8);
            let size = u64_at(ph, 32).min(MAX_INTERP);
            let mut interp = vec![0u8; size as usize];
            let got = file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| read_up_to(&mut file, &mut interp))
                .unwrap_or(0);
            interp.truncate(got);
            let interpreter = String::from_utf8_lossy(&interp)
                .trim_end_matches('\0')
                .to_string();
            return Err(AgentError::Dynamic {
                path: path.to_path_buf(),
                interpreter: if interpreter.is_empty() {
                    "?".into()
                } else {
                    interpreter
                },
            });
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 x86-64 executable image: header plus program headers
    /// (`PT_LOAD`, optionally `PT_INTERP` with its path after the table).
    fn elf(machine: u16, interp: Option<&str>) -> Vec<u8> {
        let phnum: u16 = if interp.is_some() { 2 } else { 1 };
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little-endian
        b[6] = 1; // version
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&0x401000u64.to_le_bytes()); // entry
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        b[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        let mut load = vec![0u8; PHDR_LEN];
        load[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        b.extend_from_slice(&load);
        if let Some(i) = interp {
            let off = 64 + 2 * PHDR_LEN as u64;
            let mut ph = vec![0u8; PHDR_LEN];
            ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[32..40].copy_from_slice(&(i.len() as u64 + 1).to_le_bytes());
            b.extend_from_slice(&ph);
            b.extend_from_slice(i.as_bytes());
            b.push(0);
        }
        b
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn static_elf_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "husk-init", &elf(EM_X86_64, None), 0o755);
        check_agent(&p).unwrap();
        assert_eq!(find_agent(Some(p.clone())).unwrap(), p);
    }

    #[test]
    fn crafted_dynamic_elf_is_refused_with_the_build_command() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "husk-agent",
            &elf(EM_X86_64, Some("/lib64/ld-linux-x86-64.so.2")),
            0o755,
        );
        let e = find_agent(Some(p)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, AgentError::Dynamic { .. }), "{e:?}");
        assert!(msg.contains("/lib64/ld-linux-x86-64.so.2"), "{msg}");
        assert!(msg.contains("./dev build"), "{msg}");
        assert!(msg.contains("crt-static"), "{msg}");
        assert!(msg.contains("--target x86_64-unknown-linux-gnu"), "{msg}");
    }

    #[test]
    fn host_ls_is_dynamic() {
        // Debian's coreutils are dynamically linked; the test fails loudly if
        // that stops being true rather than checking nothing.
        let ls = Path::new("/bin/ls");
        assert!(
            ls.exists(),
            "/bin/ls is missing: cannot test a dynamic binary"
        );
        let e = check_agent(ls).unwrap_err();
        assert!(matches!(e, AgentError::Dynamic { .. }), "{e:?}");
    }

    #[test]
    fn other_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let text = write(d.path(), "text", b"#!/bin/sh\necho hi\n", 0o755);
        assert!(matches!(
            check_agent(&text).unwrap_err(),
            AgentError::NotElf { .. }
        ));
        let short = write(d.path(), "short", b"\x7fELF\x02\x01", 0o755);
        assert!(matches!(
            check_agent(&short).unwrap_err(),
            AgentError::NotElf { .. }
        ));
        let arm = write(d.path(), "arm", &elf(183, None), 0o755);
        assert!(matches!(
            check_agent(&arm).unwrap_err(),
            AgentError::WrongMachine { .. }
        ));
        let noexec = write(d.path(), "noexec", &elf(EM_X86_64, None), 0o644);
        assert!(matches!(
            check_agent(&noexec).unwrap_err(),
            AgentError::NotExecutable { .. }
        ));
        let mut huge = elf(EM_X86_64, None);
        huge[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        let huge = write(d.path(), "huge", &huge, 0o755);
        assert!(matches!(
            check_agent(&huge).unwrap_err(),
            AgentError::NotElf { .. }
        ));
        assert!(matches!(
            check_agent(d.path()).unwrap_err(),
            AgentError::NotExecutable { .. }
        ));
    }

    #[test]
    fn missing_file_is_refused() {
        let e = find_agent(Some(PathBuf::from("/nonexistent/husk-init"))).unwrap_err();
        assert!(matches!(e, AgentError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("./dev build"));
    }

    #[test]
    fn explicit_kernel_is_taken_as_given() {
        assert_eq!(
            find_kernel(Some(PathBuf::from("/k/vmlinux"))).unwrap(),
            PathBuf::from("/k/vmlinux")
        );
    }
}
