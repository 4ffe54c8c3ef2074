//! The messages. Their order of variants is part of the wire format (see
//! [`crate::PROTOCOL_VERSION`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{MAGIC, PROTOCOL_VERSION};

/// The first message each side sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: u32,
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The sending program and its version, for logs ("husk 0.1.0").
    pub software: String,
}

impl Hello {
    /// Our hello, naming `software`.
    pub fn new(software: &str) -> Self {
        Self {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            software: software.to_owned(),
        }
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run. Strings are bytes, as Linux has them (argv, environment and
/// paths need not be UTF-8); the builder methods take `OsStr`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` by the agent
    /// if it has no slash. Must not be empty.
    pub argv: Vec<Vec<u8>>,
    /// The environment, as (name, value) pairs. The process gets exactly
    /// these (no inherited variables).
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory; `None` means `/`.
    pub cwd: Option<Vec<u8>>,
    /// User id to run as.
    pub uid: u32,
    /// Group id to run as.
    pub gid: u32,
    /// Supplementary group ids (none: the process has no supplementary groups).
    pub additional_gids: Vec<u32>,
    /// Run on a pseudo-terminal (its output comes as [`Event::Stdout`] only).
    pub tty: bool,
    /// Initial terminal size, when `tty`.
    pub term_size: Option<TermSize>,
    /// This is the container's main process: when it has exited and its
    /// connection is closed, the agent powers the VM off (a container ends
    /// when its main process does). At most one per sandbox.
    pub main: bool,
    /// Resource limits set before the process starts (setrlimit(2)), in
    /// order; at most [`MAX_RLIMITS`].
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// The process's capability sets. `None` keeps what the agent's
    /// children get by default: all of root's (`husk run`/`husk exec`).
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Set `PR_SET_NO_NEW_PRIVS` before the process starts.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// The file mode creation mask (at most `0o777`); `None`: the agent's.
    #[serde(default)]
    pub umask: Option<u32>,
    /// `/proc/self/oom_score_adj` (-1000 to 1000); `None`: inherited.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Container-wide, main process only: paths hidden in the container's
    /// mount namespace once its `/proc` is mounted (`/dev/null` bound
    /// over a file, a read-only empty tmpfs over a directory; a path that
    /// does not exist is skipped). At most [`MAX_PATHS`].
    #[serde(default)]
    pub masked_paths: Vec<Vec<u8>>,
    /// Container-wide, main process only: paths bind-mounted onto
    /// themselves read-only (a path that does not exist is skipped). At
    /// most [`MAX_PATHS`].
    #[serde(default)]
    pub readonly_paths: Vec<Vec<u8>>,
    /// Container-wide, main process only: sysctls (`net.ipv4.ip_forward`,
    /// see [`sysctl_path`]) written under `/proc/sys` in the guest before
    /// the main process starts, in order. At most [`MAX_SYSCTLS`].
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

/// Most [`RunSpec::rlimits`] a process may ask for.
pub const MAX_RLIMITS: usize = 64;
/// Most [`RunSpec::masked_paths`] (and, separately,
/// [`RunSpec::readonly_paths`]) a container may ask for.
pub const MAX_PATHS: usize = 256;
/// Most [`RunSpec::sysctls`] a container may ask for.
pub const MAX_SYSCTLS: usize = 256;
/// Longest path or sysctl value, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest sysctl name, in bytes.
pub const MAX_SYSCTL_NAME_LEN: usize = 256;
/// Linux's number of resource limits (`RLIMIT_NLIMITS`): a resource is
/// below it.
pub const RLIMIT_NLIMITS: u32 = 16;
/// Linux's highest capability a [`Capabilities`] mask may name: masks
/// are `u64`s, capability `N` is bit `N`.
pub const CAP_MAX: u32 = 63;

/// A resource limit (setrlimit(2)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The resource, in Linux's numbering (`RLIMIT_NOFILE` is 7), below
    /// [`RLIMIT_NLIMITS`].
    pub resource: u32,
    /// The soft limit (`u64::MAX`: unlimited).
    pub soft: u64,
    /// The hard limit, at least `soft`.
    pub hard: u64,
}

/// A process's capability sets, as masks: bit `N` is capability `N` in
/// Linux's numbering (`CAP_CHOWN` is 0, `CAP_SYS_ADMIN` 21). A bit the
/// guest kernel does not know is ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The bounding set: every other capability is dropped from it.
    pub bounding: u64,
    /// The effective set (within `permitted`).
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
    /// The inheritable set (within `bounding`).
    pub inheritable: u64,
    /// The ambient set (within `permitted` and `inheritable`).
    pub ambient: u64,
}

/// Whether `name` is a sysctl name husk writes: dot-separated segments of
/// `[a-z0-9_-]`, none empty (so no `..` and no slash), at most
/// [`MAX_SYSCTL_NAME_LEN`] bytes.
pub fn valid_sysctl_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SYSCTL_NAME_LEN
        && name.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// The file of sysctl `name` under `/proc/sys` (`net.ipv4.ip_forward`:
/// `/proc/sys/net/ipv4/ip_forward`); `None` for a name
/// [`valid_sysctl_name`] refuses.
pub fn sysctl_path(name: &str) -> Option<String> {
    valid_sysctl_name(name).then(|| format!("/proc/sys/{}", name.replace('.', "/")))
}

/// Checks a masked or read-only path (`what` names it in the error):
/// absolute, not `/`, at most [`MAX_PATH_LEN`] bytes, without NUL or `..`.
pub fn check_path(what: &str, p: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(p);
    if p.len() > MAX_PATH_LEN {
        return Err(format!("{what} path longer than {MAX_PATH_LEN} bytes"));
    }
    if p.first() != Some(&b'/') || p.iter().all(|b| *b == b'/') {
        return Err(format!(
            "{what} {shown:?}: the path must be absolute and not /"
        ));
    }
    if p.contains(&0) {
        return Err(format!("{what} {shown:?}: NUL in the path"));
    }
    if p.split(|b| *b == b'/').any(|c| c == b"..") {
        return Err(format!("{what} {shown:?}: the path must not contain .."));
    }
    Ok(())
}

impl RunSpec {
    /// Runs `argv` as root in `/`, with no environment and no tty.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self {
            argv: argv
                .into_iter()
                .map(|a| a.as_ref().as_bytes().to_vec())
                .collect(),
            env: Vec::new(),
            cwd: None,
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            tty: false,
            term_size: None,
            main: false,
            rlimits: Vec::new(),
            capabilities: None,
            no_new_privileges: false,
            umask: None,
            oom_score_adj: None,
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            sysctls: Vec::new(),
        }
    }

    /// Checks the limits and security settings against what Linux takes
    /// and the bounds of this module, as the agent does before it starts
    /// anything (the spec is untrusted input); says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.rlimits.len() > MAX_RLIMITS {
            return Err(format!("more than {MAX_RLIMITS} rlimits"));
        }
        for r in &self.rlimits {
            if r.resource >= RLIMIT_NLIMITS {
                return Err(format!("unknown rlimit resource {}", r.resource));
            }
            if r.soft > r.hard {
                return Err(format!(
                    "rlimit {}: soft limit {} above hard limit {}",
                    r.resource, r.soft, r.hard
                ));
            }
        }
        if let Some(c) = &self.capabilities {
            if c.effective & !c.permitted != 0 {
                return Err(format!(
                    "effective capabilities {:#x} not within the permitted {:#x}",
                    c.effective, c.permitted
                ));
            }
            if c.inheritable & !c.bounding != 0 {
                return Err(format!(
                    "inheritable capabilities {:#x} not within the bounding set {:#x}",
                    c.inheritable, c.bounding
                ));
            }
            if c.ambient & !(c.permitted & c.inheritable) != 0 {
                return Err(format!(
                    "ambient capabilities {:#x} not within both permitted {:#x} and inheritable {:#x}",
                    c.ambient, c.permitted, c.inheritable
                ));
            }
        }
        if let Some(m) = self.umask
            && m > 0o777
        {
            return Err(format!("umask {m:#o} above 0o777"));
        }
        if let Some(o) = self.oom_score_adj
            && !(-1000..=1000).contains(&o)
        {
            return Err(format!("oom_score_adj {o} outside -1000 to 1000"));
        }
        for (what, paths) in [
            ("masked path", &self.masked_paths),
            ("read-only path", &self.readonly_paths),
        ] {
            if paths.len() > MAX_PATHS {
                return Err(format!("more than {MAX_PATHS} {what}s"));
            }
            for p in paths {
                check_path(what, p)?;
            }
        }
        if self.sysctls.len() > MAX_SYSCTLS {
            return Err(format!("more than {MAX_SYSCTLS} sysctls"));
        }
        for (name, value) in &self.sysctls {
            if !valid_sysctl_name(name) {
                return Err(format!(
                    "invalid sysctl name {name:?}: dot-separated segments of [a-z0-9_-]"
                ));
            }
            if value.len() > MAX_PATH_LEN || value.contains('\0') {
                return Err(format!(
                    "sysctl {name}: the value must be at most {MAX_PATH_LEN} bytes without NUL"
                ));
            }
        }
        let container_wide = !(self.masked_paths.is_empty()
            && self.readonly_paths.is_empty()
            && self.sysctls.is_empty());
        if container_wide && !self.main {
            return Err(
                "masked paths, read-only paths and sysctls are the container's: only its main process may carry them"
                    .into(),
            );
        }
        Ok(())
    }

    /// Marks this as the container's main process.
    pub fn main(mut self) -> Self {
        self.main = true;
        self
    }

    /// Adds the environment variable `name=value`.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((
            name.as_ref().as_bytes().to_vec(),
            value.as_ref().as_bytes().to_vec(),
        ));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().as_os_str().as_bytes().to_vec());
        self
    }

    /// Sets the user and group.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Runs on a pseudo-terminal of `size` (or the agent's default size).
    pub fn tty(mut self, size: Option<TermSize>) -> Self {
        self.tty = true;
        self.term_size = size;
        self
    }

    /// `argv` as `OsString`s.
    pub fn argv_os(&self) -> Vec<OsString> {
        self.argv
            .iter()
            .map(|a| OsString::from_vec(a.clone()))
            .collect()
    }
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The exit code a shell (and `docker run`) reports: the code, or 128
    /// plus the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }
}

/// Host to agent.
// `Run` is sent once per connection, and a request lives only until it is
// handled: boxing the spec would save nothing worth the indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The handshake; must be the first message.
    Hello(Hello),
    /// Start the connection's process (once per connection).
    Run(RunSpec),
    /// Send a signal to the process.
    Signal {
        /// Signal number (Linux numbering).
        signo: i32,
    },
    /// Bytes for the process's stdin (at most [`MAX_DATA_CHUNK`](crate::MAX_DATA_CHUNK)).
    Stdin {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Close the process's stdin (it reads end-of-file).
    CloseStdin,
    /// Resize the process's terminal (ignored without a tty).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Ask for [`Event::Exited`]: sent when the process exits, or again at
    /// once if it already has.
    Wait,
    /// Instead of [`Request::Run`], as a connection's first request: list
    /// the container's processes (those in the main process's PID
    /// namespace); answered by [`Event::Top`], then the agent closes.
    Top,
    /// Instead of [`Request::Run`], as a connection's first request: the
    /// guest's own view of its resources; answered by [`Event::Stats`],
    /// then the agent closes.
    Stats,
}

/// The guest's view of its memory and CPU ([`Request::Stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// `MemTotal` of the guest's `/proc/meminfo`, in bytes.
    pub mem_total: u64,
    /// `MemAvailable`, in bytes.
    pub mem_available: u64,
    /// CPU time the guest spent busy (user, nice, system, irq, softirq of
    /// `/proc/stat`), in nanoseconds.
    pub cpu_busy_ns: u64,
    /// Processes in the container (its PID namespace), 0 if it has none.
    pub pids: u32,
}

/// Agent to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The handshake answer.
    Hello(Hello),
    /// The process started.
    Started {
        /// Its pid in the guest.
        pid: u32,
    },
    /// Output on the process's stdout (or its terminal).
    Stdout {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Output on the process's stderr.
    Stderr {
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The process ended; all its output was sent before this.
    Exited(ExitStatus),
    /// Something failed (the process could not start, a request was
    /// invalid, the handshake failed).
    Error {
        /// What, for people.
        message: String,
    },
    /// The answer to [`Request::Top`]: `ps`-style columns (PID, USER,
    /// TIME, CMD, ...) and one row per process of the container.
    Top {
        /// Column titles.
        titles: Vec<String>,
        /// One row per process, as many cells as titles.
        processes: Vec<Vec<String>>,
    },
    /// The answer to [`Request::Stats`].
    Stats(GuestStats),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn builder_keeps_non_utf8_bytes() {
        let bad = OsStr::from_bytes(b"caf\xe9");
        let spec = RunSpec::new(["/bin/echo", "x"])
            .env("A", bad)
            .cwd(Path::new("/tmp"))
            .user(1000, 100)
            .tty(Some(TermSize { rows: 24, cols: 80 }));
        assert_eq!(spec.argv, vec![b"/bin/echo".to_vec(), b"x".to_vec()]);
        assert_eq!(spec.env, vec![(b"A".to_vec(), b"caf\xe9".to_vec())]);
        assert_eq!(spec.cwd.as_deref(), Some(&b"/tmp"[..]));
        assert_eq!((spec.uid, spec.gid, spec.tty), (1000, 100, true));
        assert_eq!(spec.argv_os()[0], OsString::from("/bin/echo"));
    }

    #[test]
    fn a_stored_spec_without_the_new_fields_parses() {
        // A container's config.json from before rlimits and capabilities.
        let old = r#"{"argv":[[115,104]],"env":[],"cwd":null,"uid":0,"gid":0,
            "additional_gids":[],"tty":false,"term_size":null,"main":true}"#;
        let spec: RunSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec, RunSpec::new(["sh"]).main());
        assert_eq!(spec.capabilities, None);
        assert!(spec.rlimits.is_empty() && spec.sysctls.is_empty());
        spec.check().unwrap();
    }

    /// A main process's spec with every limit and security field set.
    pub(crate) fn full() -> RunSpec {
        let mut s = RunSpec::new(["/bin/sh"]).main();
        s.rlimits = vec![Rlimit {
            resource: 7,
            soft: 1024,
            hard: 4096,
        }];
        s.capabilities = Some(Capabilities {
            bounding: 0xa80425fb,
            effective: 0xa80425fb,
            permitted: 0xa80425fb,
            inheritable: 0x1,
            ambient: 0x1,
        });
        s.no_new_privileges = true;
        s.umask = Some(0o022);
        s.oom_score_adj = Some(-999);
        s.masked_paths = vec![b"/proc/kcore".to_vec(), b"/sys/firmware".to_vec()];
        s.readonly_paths = vec![b"/proc/sys".to_vec()];
        s.sysctls = vec![("net.ipv4.ip_forward".into(), "1".into())];
        s
    }

    #[test]
    fn new_fields_round_trip_through_json_and_postcard() {
        let s = full();
        s.check().unwrap();
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<RunSpec>(&json).unwrap(), s);
        let bytes = postcard::to_stdvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<RunSpec>(&bytes).unwrap(), s);
    }

    #[test]
    fn check_refuses_what_linux_would_not_take_or_is_too_much() {
        let bad = |f: &dyn Fn(&mut RunSpec)| {
            let mut s = full();
            f(&mut s);
            s.check().unwrap_err()
        };
        assert!(bad(&|s| s.rlimits[0].resource = 16).contains("unknown rlimit"));
        assert!(bad(&|s| s.rlimits[0].soft = 5000).contains("soft limit"));
        assert!(bad(&|s| s.rlimits = vec![s.rlimits[0]; MAX_RLIMITS + 1]).contains("more than"));
        assert!(
            bad(&|s| s.capabilities.as_mut().unwrap().effective |= 1 << 21).contains("effective")
        );
        assert!(
            bad(&|s| s.capabilities.as_mut().unwrap().inheritable |= 1 << 21)
                .contains("inheritable")
        );
        assert!(bad(&|s| s.capabilities.as_mut().unwrap().ambient = 1 << 5).contains("ambient"));
        assert!(bad(&|s| s.umask = Some(0o1000)).contains("umask"));
        assert!(bad(&|s| s.oom_score_adj = Some(1001)).contains("oom_score_adj"));
        assert!(bad(&|s| s.masked_paths.push(b"proc/x".to_vec())).contains("absolute"));
        assert!(bad(&|s| s.masked_paths.push(b"/".to_vec())).contains("absolute"));
        assert!(bad(&|s| s.readonly_paths.push(b"/proc/../etc".to_vec())).contains(".."));
        assert!(bad(&|s| s.readonly_paths.push(b"/a\0b".to_vec())).contains("NUL"));
        assert!(bad(&|s| s.readonly_paths.push(vec![b'/'; MAX_PATH_LEN + 1])).contains("longer"));
        assert!(
            bad(&|s| s.masked_paths = vec![b"/x".to_vec(); MAX_PATHS + 1]).contains("more than")
        );
        assert!(bad(&|s| s.sysctls.push(("net/ipv4".into(), "1".into()))).contains("invalid"));
        assert!(bad(&|s| s.sysctls.push(("k".into(), "a\0".into()))).contains("NUL"));
        assert!(
            bad(&|s| s.sysctls = vec![("a".into(), "1".into()); MAX_SYSCTLS + 1])
                .contains("more than")
        );
        // Container-wide settings belong to the main process only.
        assert!(bad(&|s| s.main = false).contains("main process"));
        let mut exec = full();
        exec.main = false;
        exec.masked_paths.clear();
        exec.readonly_paths.clear();
        exec.sysctls.clear();
        exec.check().unwrap();
    }

    #[test]
    fn sysctl_names_and_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Some("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.rp_filter").as_deref(),
            Some("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
        assert!(valid_sysctl_name("kernel.shm_rmid_forced"));
        assert!(valid_sysctl_name("net.ipv6.conf.eth-0.disable_ipv6"));
        for bad in [
            "",
            ".",
            "..",
            "net..ipv4",
            ".net",
            "net.",
            "net/ipv4/ip_forward",
            "net.ipv4.../x",
            "Net.ipv4",
            "net.ipv4.ip forward",
            "net.ipv4.ip_forward\n",
            "net.é",
        ] {
            assert!(!valid_sysctl_name(bad), "{bad:?}");
            assert_eq!(sysctl_path(bad), None, "{bad:?}");
        }
        assert!(!valid_sysctl_name(&"a".repeat(MAX_SYSCTL_NAME_LEN + 1)));
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(0).shell_code(), 0);
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }
}
