//! A bounded tail of the guest's console output, kept by the VMM so that a
//! failed guest can be explained (the last lines before a panic) without
//! the caller keeping a log.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// How many bytes of console output the tail keeps.
pub const TAIL_BYTES: usize = 8 * 1024;

/// What the kernel prints when it panics.
pub const PANIC_MARKER: &str = "Kernel panic";

/// The last [`TAIL_BYTES`] of console output; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    /// An empty tail.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `buf`, dropping the oldest bytes beyond [`TAIL_BYTES`].
    pub fn push(&self, buf: &[u8]) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let buf = &buf[buf.len().saturating_sub(TAIL_BYTES)..];
        let excess = (q.len() + buf.len()).saturating_sub(TAIL_BYTES);
        q.drain(..excess);
        q.extend(buf);
    }

    /// Everything kept, as text (carriage returns removed, invalid UTF-8
    /// replaced).
    pub fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = q.iter().copied().filter(|&b| b != b'\r').collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `n` lines kept (the first kept line may be cut).
    pub fn last_lines(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.trim_end_matches('\n').lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the kept output shows a kernel panic.
    pub fn shows_panic(&self) -> bool {
        self.text().contains(PANIC_MARKER)
    }
}

/// A console sink that also feeds a [`ConsoleTail`].
pub struct TailSink {
    inner: Box<dyn Write + Send>,
    tail: ConsoleTail,
}

impl std::fmt::Debug for TailSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailSink").finish_non_exhaustive()
    }
}

impl TailSink {
    /// Wraps `inner`, copying what it gets into `tail`.
    pub fn new(inner: Box<dyn Write + Send>, tail: ConsoleTail) -> Self {
        Self { inner, tail }
    }
}

impl Write for TailSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tail.push(buf);
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_bytes_and_lines() {
        let t = ConsoleTail::new();
        for i in 0..5000 {
            t.push(format!("line {i}\r\n").as_bytes());
        }
        let text = t.text();
        assert!(text.len() <= TAIL_BYTES);
        assert!(!text.contains('\r'));
        assert!(text.ends_with("line 4999\n"));
        assert_eq!(t.last_lines(2), "line 4998\nline 4999");
        // One write larger than the whole tail keeps its end.
        t.push(&vec![b'x'; 3 * TAIL_BYTES]);
        assert_eq!(t.text(), "x".repeat(TAIL_BYTES));
    }

    #[test]
    fn sink_copies_and_detects_a_panic() {
        let t = ConsoleTail::new();
        let mut sink = TailSink::new(Box::new(std::io::sink()), t.clone());
        sink.write_all(b"booting\n").unwrap();
        assert!(!t.shows_panic());
        sink.write_all(b"Kernel panic - not syncing: Attempted to kill init!\n")
            .unwrap();
        assert!(t.shows_panic());
        assert!(t.last_lines(1).starts_with("Kernel panic"));
        assert_eq!(ConsoleTail::new().last_lines(30), "");
    }
}
