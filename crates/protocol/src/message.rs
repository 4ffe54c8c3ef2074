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
        }
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
mod tests {
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
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(0).shell_code(), 0);
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }
}
