//! A container's output log in Docker's `json-file` format: one JSON object
//! a line, `{"log":"…\n","stream":"stdout","time":"2026-12-01T23:00:00.123456789Z"}`,
//! in `<container>/<id>-json.log`, rotated at `max-size` into
//! `<id>-json.log.1` … `<id>-json.log.<max-file − 1>` (`--log-opt`).
//!
//! The monitor writes it ([`LogWriter`]); `husk logs` reads it
//! ([`read`], [`follow`]). Lines are split as Docker splits them: at each
//! newline, and a partial line is written once it reaches 16 KiB or the
//! stream ends.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Errors reading or writing a log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A log file could not be used.
    #[error("cannot {what} log file {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A `--log-opt` is malformed or unknown.
    #[error("invalid log option {0:?}: expected max-size=SIZE (10k, 5m, 1g) or max-file=N")]
    BadOption(String),
    /// `--since`/`--until` is not a time.
    #[error(
        "invalid time {0:?}: expected an RFC 3339 time, a Unix timestamp or a duration such as 10m"
    )]
    BadTime(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Docker splits lines longer than this.
const MAX_PARTIAL: usize = 16 * 1024;
/// Longest line a reader accepts (a corrupt or hostile file must not make
/// it allocate without bound); longer ones are skipped.
const MAX_LINE: u64 = 1 << 20;

/// How large the log may grow (`--log-opt max-size=… max-file=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LogConfig {
    /// Rotate when the current file would pass this many bytes; `None`:
    /// never (Docker's default).
    pub max_size: Option<u64>,
    /// Files kept, the current one included (at least 1; Docker's default 1).
    pub max_file: u32,
}

impl LogConfig {
    /// Applies `--log-opt KEY=VALUE` options.
    pub fn parse(opts: &[String]) -> Result<LogConfig, LogError> {
        let mut c = LogConfig {
            max_size: None,
            max_file: 1,
        };
        for o in opts {
            let bad = || LogError::BadOption(o.clone());
            match o.split_once('=') {
                Some(("max-size", v)) => c.max_size = Some(parse_size(v).ok_or_else(bad)?),
                Some(("max-file", v)) => {
                    c.max_file = v.parse().ok().filter(|n| *n >= 1).ok_or_else(bad)?
                }
                _ => return Err(bad()),
            }
        }
        Ok(c)
    }

    fn files(&self) -> u32 {
        self.max_file.max(1)
    }
}

/// `10`, `10k`, `5m`, `1g` (powers of 1024, as Docker's units).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k') => (&s[..i], 1u64 << 10),
        (i, 'm') => (&s[..i], 1 << 20),
        (i, 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output (and a terminal's output).
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The text, with its newline if it had one (invalid UTF-8 replaced).
    pub log: String,
    /// Where it came from.
    pub stream: Stream,
    /// When the monitor read it, RFC 3339 with nanoseconds, UTC.
    pub time: String,
}

impl Entry {
    /// The entry's time, if it parses.
    pub fn timestamp(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.time).ok()
    }
}

/// The current log file of container `id` in `dir`.
pub fn log_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}-json.log"))
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Writes a container's log, splitting lines and rotating files.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    config: LogConfig,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path, config: LogConfig) -> Result<LogWriter, LogError> {
        let file = open_append(path)?;
        let size = file.metadata().map_err(io("stat", path))?.len();
        Ok(LogWriter {
            path: path.to_owned(),
            file,
            size,
            config,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Adds output of `stream`; complete lines are written at once.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> Result<(), LogError> {
        let i = stream as usize;
        let mut rest = data;
        while !rest.is_empty() {
            let room = MAX_PARTIAL - self.partial[i].len();
            let take = rest.len().min(room);
            let chunk = &rest[..take];
            match chunk.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.partial[i].extend_from_slice(&chunk[..=nl]);
                    rest = &rest[nl + 1..];
                    self.emit(stream)?;
                }
                None => {
                    self.partial[i].extend_from_slice(chunk);
                    rest = &rest[take..];
                    if self.partial[i].len() >= MAX_PARTIAL {
                        self.emit(stream)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes any partial lines (the stream ended).
    pub fn flush_partial(&mut self) -> Result<(), LogError> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !self.partial[stream as usize].is_empty() {
                self.emit(stream)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, stream: Stream) -> Result<(), LogError> {
        let bytes = std::mem::take(&mut self.partial[stream as usize]);
        let entry = Entry {
            log: String::from_utf8_lossy(&bytes).into_owned(),
            stream,
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        };
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        if let Some(max) = self.config.max_size
            && self.size > 0
            && self.size + line.len() as u64 > max
        {
            self.rotate()?;
        }
        self.file
            .write_all(&line)
            .map_err(io("write", &self.path))?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let keep = self.config.files();
        if keep <= 1 {
            // Docker with max-file=1: the file starts again.
            self.file.set_len(0).map_err(io("truncate", &self.path))?;
            self.file.seek(SeekFrom::End(0)).ok();
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(rotated(&self.path, keep - 1));
        for n in (1..keep - 1).rev() {
            let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
        }
        std::fs::rename(&self.path, rotated(&self.path, 1)).map_err(io("rotate", &self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush_partial();
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(io("open", path))
}

/// What `husk logs` shows.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Only the last N lines (`--tail N`; `None`: all).
    pub tail: Option<usize>,
    /// Only lines at or after this time (`--since`).
    pub since: Option<SystemTime>,
    /// Only lines before this time (`--until`).
    pub until: Option<SystemTime>,
}

impl ReadOptions {
    fn keep(&self, e: &Entry) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Some(t) = e.timestamp() else { return false };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-12-01T10:00:00Z`, or
/// without a zone as UTC), a Unix timestamp (`1764583200[.5]`), or a
/// duration before now (`10m`, `1h30m`, `42s`).
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, LogError> {
    let bad = || LogError::BadTime(s.to_owned());
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    if let Some((secs, frac)) = s.split_once('.').or(Some((s, "")))
        && !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
    {
        let secs: u64 = secs.parse().map_err(|_| bad())?;
        let nanos: u32 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}").parse().map_err(|_| bad())?
        };
        return Ok(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos));
    }
    let d = humantime::parse_duration(s).map_err(|_| bad())?;
    now.checked_sub(d).ok_or_else(bad)
}

/// The log files of container `id`, oldest first.
fn files(dir: &Path, id: &str) -> Vec<PathBuf> {
    let current = log_path(dir, id);
    let mut out: Vec<PathBuf> = (1..1000)
        .map(|n| rotated(&current, n))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    out.push(current);
    out
}

/// Reads lines of at most [`MAX_LINE`] bytes; longer ones are skipped.
fn entries_of(reader: impl Read, mut each: impl FnMut(Entry)) -> std::io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            // Too long: skip to its end.
            let mut sink = Vec::new();
            loop {
                sink.clear();
                let m = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut sink)?;
                if m == 0 || sink.last() == Some(&b'\n') {
                    break;
                }
            }
            continue;
        }
        if let Ok(e) = serde_json::from_slice::<Entry>(&buf) {
            each(e);
        }
    }
}

/// Every entry of the log as `opts` selects, oldest first.
pub fn read(dir: &Path, id: &str, opts: &ReadOptions) -> Result<Vec<Entry>, LogError> {
    read_upto(dir, id, opts, None)
}

/// Follows the log (`husk logs -f`): what [`read`] selects first, then new
/// entries as they are written, across rotations (a file rotated twice
/// within one 50 ms poll is lost to the follower, as with Docker's), until `done()` says the
/// container has stopped (and everything written until then was passed on)
/// or `each` fails (the reader went away).
pub fn follow(
    dir: &Path,
    id: &str,
    opts: &ReadOptions,
    done: &mut dyn FnMut() -> bool,
    each: &mut dyn FnMut(Entry) -> std::io::Result<()>,
) -> Result<(), LogError> {
    let path = log_path(dir, id);
    // Open the current file first, so nothing written after the snapshot
    // below is lost.
    let mut file = File::open(&path).map_err(io("open", &path))?;
    let mut ino = file.metadata().map_err(io("stat", &path))?.ino();
    let mut offset = file.metadata().map_err(io("stat", &path))?.len();
    // The snapshot: everything up to `offset` of the current file.
    let mut first = read_upto(dir, id, opts, Some((&path, offset)))?;
    for e in first.drain(..) {
        if each(e).is_err() {
            return Ok(());
        }
    }
    let mut partial = Vec::new();
    loop {
        let stopped = done();
        // New bytes of the file we hold.
        file.seek(SeekFrom::Start(offset))
            .map_err(io("read", &path))?;
        let mut chunk = Vec::new();
        let n = (&mut file)
            .take(4 << 20)
            .read_to_end(&mut chunk)
            .map_err(io("read", &path))?;
        offset += n as u64;
        partial.extend_from_slice(&chunk);
        if let Some(end) = partial.iter().rposition(|&b| b == b'\n') {
            let complete: Vec<u8> = partial.drain(..=end).collect();
            let mut failed = false;
            entries_of(&complete[..], |e| {
                if !failed && opts.keep(&e) && each(e).is_err() {
                    failed = true;
                }
            })
            .map_err(io("read", &path))?;
            if failed {
                return Ok(());
            }
        }
        if partial.len() as u64 > MAX_LINE {
            partial.clear();
        }
        if n > 0 {
            continue;
        }
        // At the end of the file we hold: was it rotated away?
        match std::fs::metadata(&path) {
            Ok(m) if m.ino() != ino || m.len() < offset => {
                if let Ok(f) = File::open(&path) {
                    ino = m.ino();
                    file = f;
                    offset = 0;
                    partial.clear();
                    continue;
                }
            }
            _ => {}
        }
        if stopped {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`read`], with the file `limit` names read only up to its byte count.
fn read_upto(
    dir: &Path,
    id: &str,
    opts: &ReadOptions,
    limit: Option<(&Path, u64)>,
) -> Result<Vec<Entry>, LogError> {
    let mut out = std::collections::VecDeque::new();
    for path in files(dir, id) {
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("open", &path)(e)),
        };
        let r: Box<dyn Read> = match limit {
            Some((p, n)) if p == path => Box::new(f.take(n)),
            _ => Box::new(f),
        };
        entries_of(r, |e| {
            if opts.keep(&e) {
                out.push_back(e);
                if let Some(t) = opts.tail
                    && out.len() > t
                {
                    out.pop_front();
                }
            }
        })
        .map_err(io("read", &path))?;
    }
    Ok(out.into())
}

/// Removes a container's log files.
pub fn remove(dir: &Path, id: &str) {
    for p in files(dir, id) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_like_docker() {
        let c = LogConfig::parse(&["max-size=10k".into(), "max-file=3".into()]).unwrap();
        assert_eq!((c.max_size, c.max_file), (Some(10 << 10), 3));
        assert_eq!(parse_size("5m"), Some(5 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        for bad in [
            "max-size=",
            "max-size=x",
            "max-file=0",
            "mode=fast",
            "nokey",
        ] {
            assert!(LogConfig::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_split_and_partial_lines_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "c");
        let mut w = LogWriter::open(&path, LogConfig::default()).unwrap();
        w.write(Stream::Stdout, b"one\ntw").unwrap();
        w.write(Stream::Stderr, b"err\n").unwrap();
        w.write(Stream::Stdout, b"o\nthree").unwrap();
        drop(w);
        let all = read(dir.path(), "c", &ReadOptions::default()).unwrap();
        let lines: Vec<(&str, Stream)> = all.iter().map(|e| (e.log.as_str(), e.stream)).collect();
        assert_eq!(
            lines,
            vec![
                ("one\n", Stream::Stdout),
                ("err\n", Stream::Stderr),
                ("two\n", Stream::Stdout),
                ("three", Stream::Stdout)
            ]
        );
        // Docker's format, one object a line.
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["log"], "one\n");
        assert_eq!(first["stream"], "stdout");
        assert!(all[0].timestamp().is_some(), "{}", all[0].time);
        let tail = read(
            dir.path(),
            "c",
            &ReadOptions {
                tail: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(tail[0].log, "two\n");
        // A line longer than 16 KiB is split.
        let mut w = LogWriter::open(&path, LogConfig::default()).unwrap();
        w.write(Stream::Stdout, &vec![b'x'; 40_000]).unwrap();
        drop(w);
        let all = read(dir.path(), "c", &ReadOptions::default()).unwrap();
        assert_eq!(all.len(), 4 + 3);
        assert_eq!(all[4].log.len(), MAX_PARTIAL);
    }

    #[test]
    fn rotation_keeps_max_file_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "c");
        let config = LogConfig {
            max_size: Some(1000),
            max_file: 3,
        };
        let mut w = LogWriter::open(&path, config).unwrap();
        for i in 0..200 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(w);
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            assert!(std::fs::metadata(&p).unwrap().len() <= 1000, "{p:?}");
        }
        let all = read(dir.path(), "c", &ReadOptions::default()).unwrap();
        // The newest lines survive, in order.
        assert_eq!(all.last().unwrap().log, "line 199\n");
        let nums: Vec<u32> = all
            .iter()
            .map(|e| e.log.trim()[5..].parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    }

    #[test]
    fn hostile_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "c");
        let mut junk = b"{not json}\n".to_vec();
        junk.extend(vec![b'a'; (MAX_LINE as usize) * 2]);
        junk.extend(
            b"\n{\"log\":\"ok\\n\",\"stream\":\"stderr\",\"time\":\"2026-01-01T00:00:00Z\"}\n",
        );
        std::fs::write(&path, junk).unwrap();
        let all = read(dir.path(), "c", &ReadOptions::default()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].log.as_str(), all[0].stream),
            ("ok\n", Stream::Stderr)
        );
    }

    #[test]
    fn times_parse() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_time("10m", now).unwrap(),
            now - Duration::from_secs(600)
        );
        assert_eq!(
            parse_time("1700000000.5", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("1970-01-01T00:00:10Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(10)
        );
        assert!(parse_time("yesterday-ish", now).is_err());
    }

    #[test]
    fn follow_sees_new_lines_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "c");
        let config = LogConfig {
            max_size: Some(400),
            max_file: 2,
        };
        let mut w = LogWriter::open(&path, config).unwrap();
        w.write(Stream::Stdout, b"first\n").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for i in 0..30 {
                    w.write(Stream::Stdout, format!("n{i}\n").as_bytes())
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(40));
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut got = Vec::new();
        follow(
            dir.path(),
            "c",
            &ReadOptions::default(),
            &mut || stop.load(std::sync::atomic::Ordering::SeqCst),
            &mut |e| {
                got.push(e.log);
                Ok(())
            },
        )
        .unwrap();
        writer.join().unwrap();
        assert_eq!(got[0], "first\n");
        assert_eq!(got.last().unwrap(), "n29\n");
        assert_eq!(got.len(), 31, "{got:?}");
    }
}
