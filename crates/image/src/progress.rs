//! Pull and push progress, printed on stderr the way `docker pull` and
//! `docker push` do.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// What is happening to one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerStatus {
    /// Already in the store.
    AlreadyExists,
    /// Queued.
    PullingFsLayer,
    /// Another husk process is downloading the same blob.
    Waiting,
    /// Bytes are arriving.
    Downloading,
    /// The connection broke; trying again from where it stopped.
    Retrying,
    /// Checking the digest.
    VerifyingChecksum,
    /// Downloaded and verified.
    DownloadComplete,
    /// Stored.
    PullComplete,
    /// Push: about to check or upload.
    Preparing,
    /// Push: bytes are being sent.
    Pushing,
    /// Push: uploaded.
    Pushed,
    /// Push: the registry has it already.
    LayerAlreadyExists,
}

impl LayerStatus {
    /// Docker's wording.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerStatus::AlreadyExists => "Already exists",
            LayerStatus::PullingFsLayer => "Pulling fs layer",
            LayerStatus::Waiting => "Waiting",
            LayerStatus::Downloading => "Downloading",
            LayerStatus::Retrying => "Retrying",
            LayerStatus::VerifyingChecksum => "Verifying Checksum",
            LayerStatus::DownloadComplete => "Download complete",
            LayerStatus::PullComplete => "Pull complete",
            LayerStatus::Preparing => "Preparing",
            LayerStatus::Pushing => "Pushing",
            LayerStatus::Pushed => "Pushed",
            LayerStatus::LayerAlreadyExists => "Layer already exists",
        }
    }
}

/// A progress event.
#[derive(Clone, Copy, Debug)]
pub enum ProgressEvent<'a> {
    /// A whole line (`latest: Pulling from library/alpine`, `Digest: …`, `Status: …`).
    Line(&'a str),
    /// A layer changed state or made progress.
    Layer {
        /// Short (12-digit) layer digest.
        id: &'a str,
        /// State.
        status: LayerStatus,
        /// Bytes so far.
        current: u64,
        /// Bytes in all.
        total: u64,
    },
}

/// Receives progress events (from several download threads at once).
pub trait Progress: Sync {
    /// Called for each event.
    fn event(&self, event: ProgressEvent<'_>);
}

/// Discards progress.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: ProgressEvent<'_>) {}
}

/// Docker's size format: decimal units, three significant digits (`2.81MB`, `512B`).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        return format!("{n}B");
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

fn bar(current: u64, total: u64) -> String {
    const WIDTH: u64 = 50;
    let filled = (current.min(total) * WIDTH).checked_div(total).unwrap_or(0) as usize;
    let mut s = String::from("[");
    for i in 0..WIDTH as usize {
        s.push(if i < filled {
            '='
        } else if i == filled {
            '>'
        } else {
            ' '
        });
    }
    s.push(']');
    format!("{s}  {}/{}", human_size(current), human_size(total))
}

#[derive(Debug, Default)]
struct State {
    /// Layer ids in the order their lines were printed (TTY mode).
    lines: Vec<String>,
    /// Last status printed per layer (plain mode).
    last: Vec<(String, LayerStatus)>,
}

/// Prints progress on stderr: redrawn bars when stderr is a terminal, one line per state
/// change otherwise.
#[derive(Debug)]
pub struct StderrProgress {
    tty: bool,
    state: Mutex<State>,
}

impl Default for StderrProgress {
    fn default() -> Self {
        StderrProgress {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State::default()),
        }
    }
}

impl StderrProgress {
    /// A printer that detects whether stderr is a terminal.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for StderrProgress {
    fn event(&self, event: ProgressEvent<'_>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let mut err = std::io::stderr().lock();
        match event {
            ProgressEvent::Line(line) => {
                state.lines.clear();
                let _ = writeln!(err, "{line}");
            }
            ProgressEvent::Layer {
                id,
                status,
                current,
                total,
            } => {
                let bar_status = matches!(status, LayerStatus::Downloading | LayerStatus::Pushing);
                let text = if bar_status && self.tty {
                    format!("{id}: {} {}", status.as_str(), bar(current, total))
                } else {
                    format!("{id}: {}", status.as_str())
                };
                if self.tty {
                    match state.lines.iter().position(|l| l == id) {
                        Some(pos) => {
                            let up = state.lines.len() - pos;
                            let _ = write!(err, "\x1b[{up}A\r\x1b[2K{text}\r\x1b[{up}B");
                        }
                        None => {
                            state.lines.push(id.to_string());
                            let _ = writeln!(err, "{text}");
                        }
                    }
                } else {
                    let changed = match state.last.iter_mut().find(|(l, _)| l == id) {
                        Some((_, s)) if *s == status => false,
                        Some((_, s)) => {
                            *s = status;
                            true
                        }
                        None => {
                            state.last.push((id.to_string(), status));
                            true
                        }
                    };
                    if changed {
                        let _ = writeln!(err, "{text}");
                    }
                }
            }
        }
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(2_810_000), "2.81MB");
        assert_eq!(human_size(28_100_000), "28.1MB");
        assert_eq!(human_size(281_000_000), "281MB");
        assert_eq!(human_size(1_000), "1kB");
        assert!(bar(5, 10).starts_with("[=========================>"));
    }
}
