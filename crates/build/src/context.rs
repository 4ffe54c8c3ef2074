//! The build context and COPY/ADD: `.dockerignore`, source globs, and the
//! layer a COPY or ADD makes, written on the host (no VM).
//!
//! The context is untrusted. Every path is resolved inside a root directory
//! fd with `openat2(RESOLVE_IN_ROOT)`, so neither `..` nor a symlink can
//! reach outside it: a source that climbs out with `..` is refused, an
//! absolute source names a path inside the context (as in Docker), and
//! symlinks are copied as symlinks, never followed. Names that would be
//! OCI whiteouts (`.wh.*`) are refused, in the context and in ADD's
//! archives.

// `Stat`'s field types differ between targets; the casts are for the others.
#![allow(clippy::unnecessary_cast)]

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use sha2::{Digest as _, Sha256};

/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 256;
/// Most entries one COPY may take.
const MAX_ENTRIES: usize = 1_000_000;

/// Errors reading the context or writing a COPY/ADD layer.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A file could not be read or written.
    #[error("cannot read {path}")]
    Io {
        /// The path (in the source tree).
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A source is outside the context.
    #[error("forbidden path outside the build context: {0}")]
    Outside(String),
    /// A source does not exist (or is excluded).
    #[error("{0}: no such file or directory in the build context (or excluded by .dockerignore)")]
    NotFound(String),
    /// A glob matched nothing.
    #[error("{0}: no source files were specified (the pattern matches nothing)")]
    NoMatch(String),
    /// Several sources need a directory destination.
    #[error(
        "when using {0} with more than one source file, the destination must be a directory and end with a /"
    )]
    NotADirectory(&'static str),
    /// A name would become an OCI whiteout in the layer.
    #[error("{0}: names starting with .wh. are reserved for layer whiteouts")]
    Whiteout(String),
    /// A tree too deep or too large.
    #[error("{0}")]
    TooLarge(String),
    /// ADD of a URL.
    #[error("ADD {0}: downloading from a URL is not supported by husk build; use RUN wget or curl")]
    Url(String),
    /// A malformed archive for ADD.
    #[error("ADD {path}: the archive is malformed")]
    Archive {
        /// The archive.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &str) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_string(),
        source,
    }
}

/// ENOENT or ENOTDIR: the path is not there.
fn is_missing(e: &io::Error) -> bool {
    let errno = |x: rustix::io::Errno| Some(x.raw_os_error());
    e.raw_os_error() == errno(rustix::io::Errno::NOENT)
        || e.raw_os_error() == errno(rustix::io::Errno::NOTDIR)
}

/// A `.dockerignore` pattern or a COPY glob: `*` and `?` within a path
/// segment, `[...]` classes, `\` escapes, and (in `.dockerignore`) `**`
/// for any number of directories.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                // `**/` matches zero or more directories; `**` anything.
                let rest = &p[2..];
                if let Some(after) = rest.strip_prefix(b"/") {
                    if m(after, s) {
                        return true;
                    }
                    (0..s.len()).any(|i| s[i] == b'/' && m(after, &s[i + 1..]))
                } else {
                    (0..=s.len()).any(|i| m(rest, &s[i..]))
                }
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=s.len() {
                    if m(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        break;
                    }
                }
                false
            }
            Some(b'?') => !s.is_empty() && s[0] != b'/' && m(&p[1..], &s[1..]),
            Some(b'[') => {
                let Some((&c, srest)) = s.split_first() else {
                    return false;
                };
                let mut i = 1;
                let negate = matches!(p.get(1), Some(b'^' | b'!'));
                if negate {
                    i += 1;
                }
                let mut hit = false;
                let mut first = true;
                while i < p.len() && (p[i] != b']' || first) {
                    first = false;
                    let mut lo = p[i];
                    if lo == b'\\' && i + 1 < p.len() {
                        i += 1;
                        lo = p[i];
                    }
                    let mut hi = lo;
                    if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|b| *b != b']') {
                        hi = p[i + 2];
                        i += 2;
                    }
                    if lo <= c && c <= hi {
                        hit = true;
                    }
                    i += 1;
                }
                if i >= p.len() {
                    // No closing bracket: a literal '['.
                    return c == b'[' && m(&p[1..], srest);
                }
                hit != negate && c != b'/' && m(&p[i + 1..], srest)
            }
            Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && m(&p[2..], &s[1..]),
            Some(&c) => s.first() == Some(&c) && m(&p[1..], &s[1..]),
        }
    }
    m(pattern.as_bytes(), path.as_bytes())
}

/// Does the pattern have glob characters?
pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Cleans a path lexically into one relative to a root: no leading `/`,
/// no `.`, `..` applied; `None` if `..` climbs above the root.
pub fn clean_rel(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

/// `.dockerignore` rules.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<(String, bool)>,
}

impl Ignore {
    /// Parses `.dockerignore` text: one pattern a line, `#` comments,
    /// `!` for exceptions.
    pub fn parse(text: &str) -> Ignore {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pat, exception) = match line.strip_prefix('!') {
                Some(p) => (p.trim(), true),
                None => (line, false),
            };
            // Docker cleans patterns; `..` above the root matches nothing.
            let Some(clean) = clean_rel(pat) else {
                continue;
            };
            if clean.is_empty() {
                continue;
            }
            rules.push((clean, exception));
        }
        Ignore { rules }
    }

    /// Is `path` (relative to the context) excluded? A pattern matches a
    /// path or any of its parent directories; the last matching rule wins.
    pub fn excluded(&self, path: &str) -> bool {
        if path.is_empty() {
            return false;
        }
        let mut excluded = false;
        for (pat, exception) in &self.rules {
            let mut hit = glob_match(pat, path);
            if !hit {
                let mut prefix = path;
                while let Some((parent, _)) = prefix.rsplit_once('/') {
                    if glob_match(pat, parent) {
                        hit = true;
                        break;
                    }
                    prefix = parent;
                }
            }
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }

    /// Whether any rule is an exception (then excluded directories must
    /// still be walked).
    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, e)| *e)
    }
}

/// A tree to copy from: the build context (with its `.dockerignore`) or
/// a stage's or image's root directory.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
    ignore: Ignore,
    label: String,
}

fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// One entry found in a tree.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its path in the tree (relative, `/`-separated; "" for the root).
    pub path: String,
    /// Its path below the COPY source it came from ("" for the source).
    pub below: String,
    /// Its `lstat`.
    pub st: Stat,
}

impl Entry {
    fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.st.st_mode as _)
    }
}

/// What one COPY source named: its entries, the source itself first.
#[derive(Debug, Clone)]
pub struct Source {
    /// The source as written (after expansion).
    pub given: String,
    /// Its entries; the first is the source itself.
    pub entries: Vec<Entry>,
}

impl Source {
    /// Is the source a directory (its contents are copied)?
    pub fn is_dir(&self) -> bool {
        self.entries[0].kind() == FileType::Directory
    }
}

impl Tree {
    /// The build context at `dir`, with its `.dockerignore`.
    pub fn context(dir: &Path) -> Result<Tree, CopyError> {
        let label = dir.display().to_string();
        let root = open_dir_path(dir).map_err(io_at(&label))?;
        let mut t = Tree {
            root,
            ignore: Ignore::default(),
            label,
        };
        if let Some(text) = t.read_small(".dockerignore", 1 << 20)? {
            t.ignore = Ignore::parse(&String::from_utf8_lossy(&text));
        }
        Ok(t)
    }

    /// A root directory (a stage's or an image's), nothing ignored.
    pub fn rootfs(dir: &Path, label: &str) -> Result<Tree, CopyError> {
        Ok(Tree {
            root: open_dir_path(dir).map_err(io_at(label))?,
            ignore: Ignore::default(),
            label: label.to_string(),
        })
    }

    /// The `.dockerignore` rules.
    pub fn ignore(&self) -> &Ignore {
        &self.ignore
    }

    /// Opens the directory `rel` inside the root (symlinks resolved inside).
    fn open_dir(&self, rel: &str) -> io::Result<OwnedFd> {
        let p = if rel.is_empty() { "." } else { rel };
        Ok(rustix::fs::openat2(
            &self.root,
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?)
    }

    /// The parent directory of `rel` and its last component.
    fn parent_of<'a>(&self, rel: &'a str) -> io::Result<(OwnedFd, &'a str)> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok((self.open_dir(dir)?, name))
    }

    /// `lstat` of `rel` (its last component not followed).
    pub fn lstat(&self, rel: &str) -> io::Result<Option<Stat>> {
        if rel.is_empty() {
            return Ok(Some(rustix::fs::fstat(&self.root)?));
        }
        let (dir, name) = match self.parent_of(rel) {
            Ok(x) => x,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Is `rel` a directory (following symlinks inside the root)?
    pub fn is_dir(&self, rel: &str) -> bool {
        self.open_dir(rel).is_ok()
    }

    /// Reads a small regular file, `None` if absent.
    fn read_small(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>, CopyError> {
        let Some(st) = self.lstat(rel).map_err(io_at(rel))? else {
            return Ok(None);
        };
        if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
            return Ok(None);
        }
        let mut f = self.open_file(rel).map_err(io_at(rel))?;
        let mut buf = Vec::new();
        (&mut f)
            .take(max)
            .read_to_end(&mut buf)
            .map_err(io_at(rel))?;
        Ok(Some(buf))
    }

    /// Opens the regular file `rel` without following its last component.
    fn open_file(&self, rel: &str) -> io::Result<std::fs::File> {
        let (dir, name) = self.parent_of(rel)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(std::fs::File::from(fd))
    }

    fn readlink(&self, rel: &str) -> io::Result<Vec<u8>> {
        let (dir, name) = self.parent_of(rel)?;
        Ok(rustix::fs::readlinkat(&dir, name, Vec::new())?.into_bytes())
    }

    /// The entries of directory `rel`, sorted.
    fn list(&self, rel: &str) -> io::Result<Vec<(String, Stat)>> {
        let dir = self.open_dir(rel)?;
        let mut out = Vec::new();
        for e in rustix::fs::Dir::read_from(&dir)? {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = String::from_utf8(name.to_vec()).map_err(|_| {
                io::Error::other(format!(
                    "{}: a file name that is not UTF-8",
                    String::from_utf8_lossy(name)
                ))
            })?;
            match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => out.push((name, st)),
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn join(a: &str, b: &str) -> String {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}/{b}")
        }
    }

    /// Every entry below directory `rel` (not ignored), depth first.
    fn walk(
        &self,
        rel: &str,
        below: &str,
        depth: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), CopyError> {
        if depth > MAX_DEPTH {
            return Err(CopyError::TooLarge(format!(
                "{}: nested deeper than {MAX_DEPTH} directories",
                self.label
            )));
        }
        for (name, st) in self.list(rel).map_err(io_at(rel))? {
            let path = Self::join(rel, &name);
            let sub = Self::join(below, &name);
            let is_dir = FileType::from_raw_mode(st.st_mode as _) == FileType::Directory;
            if self.ignore.excluded(&path) {
                // An exception may bring back something inside.
                if is_dir && self.ignore.has_exceptions() {
                    self.walk(&path, &sub, depth + 1, out)?;
                }
                continue;
            }
            if out.len() >= MAX_ENTRIES {
                return Err(CopyError::TooLarge(format!(
                    "more than {MAX_ENTRIES} files to copy"
                )));
            }
            out.push(Entry {
                path: path.clone(),
                below: sub.clone(),
                st,
            });
            if is_dir {
                self.walk(&path, &sub, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// Every path in the tree (for globs), not ignored.
    fn all_paths(&self) -> Result<Vec<Entry>, CopyError> {
        let mut out = Vec::new();
        self.walk("", "", 0, &mut out)?;
        Ok(out)
    }

    /// The sources a COPY names (each expanded already): globs matched,
    /// directories walked, `..` out of the root refused.
    pub fn sources(&self, given: &[String]) -> Result<Vec<Source>, CopyError> {
        let mut out = Vec::new();
        let mut all: Option<Vec<Entry>> = None;
        for g in given {
            let rel = clean_rel(g).ok_or_else(|| CopyError::Outside(g.clone()))?;
            let tops: Vec<(String, Stat)> = if has_glob(&rel) {
                if all.is_none() {
                    all = Some(self.all_paths()?);
                }
                let hits: Vec<(String, Stat)> = all
                    .as_ref()
                    .into_iter()
                    .flatten()
                    .filter(|e| glob_match(&rel, &e.path))
                    .map(|e| (e.path.clone(), e.st))
                    .collect();
                if hits.is_empty() {
                    return Err(CopyError::NoMatch(g.clone()));
                }
                hits
            } else {
                if self.ignore.excluded(&rel) {
                    return Err(CopyError::NotFound(g.clone()));
                }
                match self.lstat(&rel).map_err(io_at(g))? {
                    Some(st) => vec![(rel, st)],
                    None => return Err(CopyError::NotFound(g.clone())),
                }
            };
            for (path, st) in tops {
                let mut entries = vec![Entry {
                    path: path.clone(),
                    below: String::new(),
                    st,
                }];
                if FileType::from_raw_mode(st.st_mode as _) == FileType::Directory {
                    self.walk(&path, "", 0, &mut entries)?;
                }
                for e in &entries {
                    let name = e.path.rsplit('/').next().unwrap_or("");
                    if name.starts_with(".wh.") {
                        return Err(CopyError::Whiteout(e.path.clone()));
                    }
                }
                out.push(Source {
                    given: g.clone(),
                    entries,
                });
            }
        }
        Ok(out)
    }

    /// A hash of what the sources hold (names, kinds, modes, contents,
    /// link targets; not times or owners, which COPY does not keep or
    /// sets itself), for the build cache.
    pub fn hash(&self, sources: &[Source]) -> Result<String, CopyError> {
        let mut h = Sha256::new();
        for s in sources {
            h.update(format!("source {}\n", s.given).as_bytes());
            for e in &s.entries {
                h.update(
                    format!(
                        "{}\0{:o}\0{}\0",
                        e.path, e.st.st_mode as u32, e.st.st_size as u64
                    )
                    .as_bytes(),
                );
                match e.kind() {
                    FileType::RegularFile => {
                        let mut f = self.open_file(&e.path).map_err(io_at(&e.path))?;
                        let mut fh = Sha256::new();
                        io::copy(&mut f, &mut HashWriter(&mut fh)).map_err(io_at(&e.path))?;
                        h.update(fh.finalize());
                    }
                    FileType::Symlink => {
                        h.update(self.readlink(&e.path).map_err(io_at(&e.path))?);
                    }
                    _ => {}
                }
                h.update(b"\n");
            }
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How COPY places its sources.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The destination in the image, absolute.
    pub dest: String,
    /// Owner of what is copied (COPY: 0:0 unless `--chown`).
    pub owner: Option<(u32, u32)>,
    /// `--chmod`.
    pub chmod: Option<u32>,
    /// ADD: extract local tar archives.
    pub extract: bool,
    /// The instruction, for messages.
    pub keyword: &'static str,
}

fn header(kind: tar::EntryType, mode: u32, (uid, gid): (u32, u32), mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// Writes the tar of a COPY/ADD of `sources` (found in `tree`) placed as
/// `place` says, over an image whose root is `lower` (`None`: scratch),
/// which decides whether the destination is an existing directory and
/// which parent directories must be made.
pub fn write_copy(
    tree: &Tree,
    sources: &[Source],
    place: &Placement,
    lower: Option<&Tree>,
    out: &mut dyn Write,
) -> Result<(), CopyError> {
    let dest = clean_rel(&place.dest).unwrap_or_default();
    let exists_dir = |p: &str| lower.is_some_and(|l| l.is_dir(p));
    let multiple = sources.len() > 1;
    let into_dir = place.dest.ends_with('/')
        || exists_dir(&dest)
        || dest.is_empty()
        || (sources.len() == 1 && sources[0].is_dir());
    if multiple && !place.dest.ends_with('/') && !exists_dir(&dest) {
        return Err(CopyError::NotADirectory(place.keyword));
    }
    let owner = place.owner.unwrap_or((0, 0));
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    let mut out = Out {
        tar,
        made: Default::default(),
        lower,
        owner,
    };
    let werr = |path: &str| {
        let path = path.to_string();
        move |source| CopyError::Io { path, source }
    };
    for s in sources {
        let top_is_dir = s.is_dir();
        let base = if top_is_dir {
            dest.clone()
        } else if into_dir {
            let name = s.entries[0].path.rsplit('/').next().unwrap_or("");
            Tree::join(&dest, name)
        } else {
            dest.clone()
        };
        for e in &s.entries {
            let target = if e.below.is_empty() {
                base.clone()
            } else {
                Tree::join(&base, &e.below)
            };
            if target.is_empty() {
                // The image's root itself: keep it as it is.
                continue;
            }
            out.parents(&target).map_err(werr(&e.path))?;
            let mode = place.chmod.unwrap_or(e.st.st_mode as u32 & 0o7777);
            let mtime = e.st.st_mtime as i64;
            match e.kind() {
                FileType::Directory => {
                    if e.below.is_empty() && (out.exists_dir(&target) || out.made.contains(&target))
                    {
                        continue;
                    }
                    let dmode = if e.below.is_empty() {
                        place.chmod.unwrap_or(0o755)
                    } else {
                        mode
                    };
                    let mut h = header(tar::EntryType::Directory, dmode, owner, mtime);
                    out.tar
                        .append_data(&mut h, format!("{target}/"), io::empty())
                        .map_err(werr(&e.path))?;
                    out.made.insert(target);
                }
                FileType::RegularFile => {
                    let f = tree.open_file(&e.path).map_err(werr(&e.path))?;
                    // ADD extracts a local archive named as a source (not
                    // one inside a directory it copies) into the destination.
                    if place.extract && e.below.is_empty() && is_archive(tree, &e.path)? {
                        extract(f, &dest, &e.path, &mut out)?;
                        continue;
                    }
                    let size = e.st.st_size.max(0) as u64;
                    let mut h = header(tar::EntryType::Regular, mode, owner, mtime);
                    h.set_size(size);
                    out.tar
                        .append_data(
                            &mut h,
                            &target,
                            Exact {
                                inner: f.take(size),
                                left: size,
                            },
                        )
                        .map_err(werr(&e.path))?;
                }
                FileType::Symlink => {
                    let link = tree.readlink(&e.path).map_err(werr(&e.path))?;
                    let mut h = header(tar::EntryType::Symlink, 0o777, owner, mtime);
                    out.tar
                        .append_link(&mut h, &target, Path::new(OsStr::from_bytes(&link)))
                        .map_err(werr(&e.path))?;
                }
                FileType::Fifo => {
                    let mut h = header(tar::EntryType::Fifo, mode, owner, mtime);
                    out.tar
                        .append_data(&mut h, &target, io::empty())
                        .map_err(werr(&e.path))?;
                }
                // Sockets and device nodes are not copied.
                _ => log::warn!("{}: not a file, directory or symlink; skipped", e.path),
            }
        }
    }
    out.tar.finish().map_err(werr(&dest))?;
    Ok(())
}

/// The tar of a COPY being written, with the directories it made.
struct Out<'a, 'w> {
    tar: tar::Builder<&'w mut dyn Write>,
    made: std::collections::BTreeSet<String>,
    lower: Option<&'a Tree>,
    owner: (u32, u32),
}

impl Out<'_, '_> {
    fn exists_dir(&self, p: &str) -> bool {
        self.lower.is_some_and(|l| l.is_dir(p))
    }

    /// Entries for the parent directories of `path` that neither the
    /// image nor this layer has yet.
    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut acc = String::new();
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            acc = Tree::join(&acc, c);
            if self.made.contains(&acc) || self.exists_dir(&acc) {
                continue;
            }
            let mut h = header(tar::EntryType::Directory, 0o755, self.owner, 0);
            self.tar
                .append_data(&mut h, format!("{acc}/"), io::empty())?;
            self.made.insert(acc.clone());
        }
        Ok(())
    }
}

/// Is the file a tar (plain, gzip or zstd)? As Docker, a compressed file
/// that is not a tar is copied as it is.
fn is_archive(tree: &Tree, rel: &str) -> Result<bool, CopyError> {
    let f = tree.open_file(rel).map_err(io_at(rel))?;
    let Ok(mut r) = husk_image::unpack::decompress(f) else {
        return Ok(false);
    };
    let mut head = [0u8; 512];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    Ok(got == 512 && &head[257..262] == b"ustar")
}

/// Extracts an archive into `dest` in the layer being written: names
/// cleaned inside `dest` (`..` out of it refused), whiteout names refused,
/// hard links kept inside it.
fn extract(
    f: std::fs::File,
    dest: &str,
    label: &str,
    out: &mut Out<'_, '_>,
) -> Result<(), CopyError> {
    let bad = |source| CopyError::Archive {
        path: label.to_string(),
        source,
    };
    let reader =
        husk_image::unpack::decompress(f).map_err(|e| bad(io::Error::other(e.to_string())))?;
    let mut archive = tar::Archive::new(reader);
    let inside = |p: &[u8]| -> Result<Option<String>, CopyError> {
        let s = std::str::from_utf8(p)
            .map_err(|_| bad(io::Error::other("a name that is not UTF-8")))?;
        let rel = clean_rel(s).ok_or_else(|| {
            bad(io::Error::other(format!(
                "{s}: a path outside the destination"
            )))
        })?;
        if rel.rsplit('/').next().unwrap_or("").starts_with(".wh.") {
            return Err(CopyError::Whiteout(format!("{label}: {rel}")));
        }
        Ok((!rel.is_empty()).then(|| Tree::join(dest, &rel)))
    };
    // A hostile archive (a decompression bomb, millions of entries) is
    // bounded as image layers are.
    let limits = husk_image::UnpackLimits::default();
    let (mut bytes, mut entries) = (0u64, 0u64);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        entries += 1;
        bytes = bytes.saturating_add(entry.size());
        if entries > limits.max_entries || bytes > limits.max_bytes {
            return Err(bad(io::Error::other(format!(
                "the archive holds more than {} entries or {} GiB: refused",
                limits.max_entries,
                limits.max_bytes >> 30
            ))));
        }
        let Some(target) = inside(&entry.path_bytes())? else {
            continue;
        };
        let mut h = entry.header().clone();
        let kind = h.entry_type();
        out.parents(&target).map_err(bad)?;
        let tar = &mut out.tar;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                h.set_entry_type(tar::EntryType::Regular);
                let size = entry.size();
                h.set_size(size);
                tar.append_data(&mut h, &target, &mut entry).map_err(bad)?;
            }
            tar::EntryType::Directory => {
                tar.append_data(&mut h, format!("{target}/"), io::empty())
                    .map_err(bad)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(io::Error::other("a symlink without a target")))?
                    .into_owned();
                tar.append_link(&mut h, &target, Path::new(OsStr::from_bytes(&link)))
                    .map_err(bad)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(io::Error::other("a hard link without a target")))?
                    .into_owned();
                let Some(to) = inside(&link)? else {
                    continue;
                };
                tar.append_link(&mut h, &target, Path::new(&to))
                    .map_err(bad)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                h.set_size(0);
                tar.append_data(&mut h, &target, io::empty()).map_err(bad)?;
            }
            // Pax and GNU extension headers are read by the tar crate;
            // anything else is not a file.
            _ => {}
        }
    }
    Ok(())
}

/// Reads exactly `left` bytes, failing if the file ends early (it shrank
/// while being archived, which would otherwise corrupt the tar).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a file shrank while being copied",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
