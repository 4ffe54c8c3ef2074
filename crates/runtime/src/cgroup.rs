//! The OCI spec's `linux.cgroupsPath` for a husk container: its monitor
//! (which holds the VM's memory and vCPU threads) joins that cgroup, in
//! every hierarchy the host mounts, and the spec's `linux.resources` are
//! written there, as runc's cgroupfs driver does for a container's init. So
//! the engine's view of the container (`docker stats`, which containerd's
//! shim reads from the cgroup of the pid in the pid file; memory limits;
//! OOM kills, reported as OOMKilled) covers the whole VM.
//!
//! No crate does this for us: the cgroups crates of the Rust ecosystem
//! (cgroups-rs, libcgroups) bring their own process models and systemd
//! bindings for what is here a few files written in a few directories.
//!
//! cgroup v2 (unified), v1 and hybrid hosts alike: each hierarchy is
//! found in `/proc/self/mountinfo`; limits go where their controller is.
//! A systemd-style path (`slice:prefix:name`, with `--systemd-cgroup`) is
//! expanded to the directory systemd would give it; the unit itself is not
//! registered with systemd (no D-Bus here).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What husk's monitor VMM adds to the guest's memory on the host, MiB:
/// the VMM and its threads, virtio-fs buffers, the agent's initramfs in
/// page cache. A memory limit L gives the guest L minus this, so the
/// whole VM fits the limit.
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// The limits from `linux.resources` that husk writes to the cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit, bytes.
    pub memory: Option<u64>,
    /// cgroup v1 CPU shares (v2 weight is derived).
    pub cpu_shares: Option<u64>,
    /// CFS quota, µs per period (-1 or none: no limit).
    pub cpu_quota: Option<i64>,
    /// CFS period, µs.
    pub cpu_period: Option<u64>,
    /// cpuset CPUs (`0-1`).
    pub cpuset_cpus: Option<String>,
    /// cpuset memory nodes.
    pub cpuset_mems: Option<String>,
    /// The most tasks (0 or less: no limit).
    pub pids: Option<i64>,
}

/// A container's cgroup, as `create` resolved it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// The path inside each hierarchy (`/docker/<id>`); relative paths
    /// are already resolved against the creator's own cgroup per
    /// hierarchy at join time.
    pub path: String,
    /// The limits.
    pub limits: Limits,
}

/// Why joining or removing a cgroup failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `linux.cgroupsPath` is malformed.
    #[error("linux.cgroupsPath {0:?}: {1}")]
    BadPath(String, &'static str),
    /// A cgroup file could not be read or written.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Resolves `linux.cgroupsPath`: cgroupfs paths are kept (absolute, or
/// relative to the creator's cgroup); with `systemd`, or in the
/// `slice:prefix:name` form, it is expanded as systemd names a scope:
/// `system.slice:docker:abc` is `/system.slice/docker-abc.scope`.
pub fn resolve_path(cgroups_path: &str, systemd: bool) -> Result<String, CgroupError> {
    let bad = |why| CgroupError::BadPath(cgroups_path.to_owned(), why);
    if cgroups_path.contains('\0') || cgroups_path.split('/').any(|c| c == "..") {
        return Err(bad("it must not contain \"..\" or NUL"));
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    if !systemd && parts.len() != 3 {
        if cgroups_path.contains(':') {
            return Err(bad("a cgroupfs path has no ':'"));
        }
        return Ok(cgroups_path.to_owned());
    }
    let [slice, prefix, name] = parts[..] else {
        return Err(bad("a systemd cgroup path is slice:prefix:name"));
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') || slice.contains('/') {
        return Err(bad("a systemd cgroup path is slice:prefix:name"));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(bad("the slice must end in .slice"));
    };
    // `a-b.slice` lives in `a.slice`; `-.slice` is the root.
    let mut dir = String::new();
    if stem != "-" {
        let mut acc = String::new();
        for (i, word) in stem.split('-').enumerate() {
            if word.is_empty() {
                return Err(bad("the slice name has an empty part"));
            }
            if i > 0 {
                acc.push('-');
            }
            acc.push_str(word);
            dir.push('/');
            dir.push_str(&acc);
            dir.push_str(".slice");
        }
    }
    let unit = if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("{dir}/{unit}"))
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// Where it is mounted.
    mount: PathBuf,
    /// The cgroup the mount's root is (mountinfo's root field).
    root: String,
    /// v1: its controllers (`memory`, `cpu`, `name=systemd`); v2: none
    /// listed here (read from `cgroup.controllers`).
    controllers: Vec<String>,
    /// cgroup2.
    unified: bool,
}

/// The cgroup hierarchies in `/proc/self/mountinfo` text, one mount each.
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let unified = match r[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        // One hierarchy can be mounted twice (bind mounts): first wins.
        if seen.contains(&l[2]) {
            continue;
        }
        seen.push(l[2]);
        let controllers = if unified {
            Vec::new()
        } else {
            r[2].split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children")
                        && !o.starts_with("release_agent=")
                })
                .map(str::to_owned)
                .collect()
        };
        out.push(Hierarchy {
            mount: PathBuf::from(unescape(l[4])),
            root: unescape(l[3]),
            controllers,
            unified,
        });
    }
    out
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The creator's own cgroup in hierarchy `h`, from `/proc/self/cgroup`.
fn own_cgroup(proc_cgroup: &str, h: &Hierarchy) -> String {
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let matches = if h.unified {
            ctrls.is_empty()
        } else {
            let mine: Vec<&str> = ctrls.split(',').collect();
            !mine.is_empty() && h.controllers.iter().all(|c| mine.contains(&c.as_str()))
        };
        if matches {
            return path.to_owned();
        }
    }
    "/".to_owned()
}

/// The directory of cgroup `path` (resolved against `own` when relative)
/// in hierarchy `h`.
fn dir_in(h: &Hierarchy, path: &str, own: &str) -> PathBuf {
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{path}", own.trim_end_matches('/'))
    };
    // A mount of a sub-cgroup (a cgroup namespace, a container host):
    // paths are below its root.
    let rel = match full.strip_prefix(h.root.trim_end_matches('/')) {
        Some(r) if h.root != "/" && (r.is_empty() || r.starts_with('/')) => r.to_owned(),
        _ => full,
    };
    h.mount.join(rel.trim_start_matches('/'))
}

/// The cgroup's directory in every hierarchy, with the hierarchy.
fn dirs(spec: &CgroupSpec) -> Result<Vec<(Hierarchy, PathBuf)>, CgroupError> {
    let mi = Path::new("/proc/self/mountinfo");
    let mountinfo = std::fs::read_to_string(mi).map_err(io("read", mi))?;
    let pc = Path::new("/proc/self/cgroup");
    let proc_cgroup = std::fs::read_to_string(pc).map_err(io("read", pc))?;
    Ok(hierarchies(&mountinfo)
        .into_iter()
        .map(|h| {
            let d = dir_in(&h, &spec.path, &own_cgroup(&proc_cgroup, &h));
            (h, d)
        })
        .collect())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(io("write", &p))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Makes `dir` and its missing parents below `mount`; for a v1 cpuset,
/// each new level copies its parent's CPUs and nodes (an empty cpuset
/// takes no task); for v2, each ancestor delegates the controllers the
/// limits need.
fn make(h: &Hierarchy, dir: &Path) -> Result<(), CgroupError> {
    let rel = dir.strip_prefix(&h.mount).unwrap_or(Path::new(""));
    let mut cur = h.mount.clone();
    let cpuset = h.controllers.iter().any(|c| c == "cpuset");
    for part in rel.components() {
        let parent = cur.clone();
        if h.unified {
            let available = read(&parent, "cgroup.controllers");
            for c in ["cpu", "cpuset", "memory", "pids"] {
                if available.split(' ').any(|a| a == c)
                    && !read(&parent, "cgroup.subtree_control")
                        .split(' ')
                        .any(|a| a == c)
                {
                    // Refused in a cgroup that holds processes itself
                    // (v2's no-internal-processes rule): the limit that
                    // needs it then fails, with its own error.
                    let _ = write(&parent, "cgroup.subtree_control", &format!("+{c}"));
                }
            }
        }
        cur.push(part);
        match std::fs::create_dir(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("create", &cur)(e)),
        }
        if cpuset {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if read(&cur, f).is_empty() {
                    write(&cur, f, &read(&parent, f))?;
                }
            }
        }
    }
    Ok(())
}

/// Writes the limits that hierarchy `h` has controllers for.
fn apply(h: &Hierarchy, dir: &Path, l: &Limits) -> Result<(), CgroupError> {
    let has = |c: &str| {
        if h.unified {
            read(dir, "cgroup.controllers").split(' ').any(|a| a == c)
        } else {
            h.controllers.iter().any(|x| x == c)
        }
    };
    if let Some(m) = l.memory
        && has("memory")
    {
        let f = if h.unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        write(dir, f, &m.to_string())?;
    }
    if has("cpu") {
        if h.unified {
            if let Some(s) = l.cpu_shares.filter(|s| *s > 0) {
                write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
            }
            if l.cpu_quota.is_some() || l.cpu_period.is_some() {
                let quota = match l.cpu_quota {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".to_owned(),
                };
                let period = l.cpu_period.unwrap_or(100_000);
                write(dir, "cpu.max", &format!("{quota} {period}"))?;
            }
        } else {
            if let Some(s) = l.cpu_shares.filter(|s| *s > 0) {
                write(dir, "cpu.shares", &s.to_string())?;
            }
            if let Some(p) = l.cpu_period.filter(|p| *p > 0) {
                write(dir, "cpu.cfs_period_us", &p.to_string())?;
            }
            if let Some(q) = l.cpu_quota {
                write(dir, "cpu.cfs_quota_us", &q.max(-1).to_string())?;
            }
        }
    }
    if has("cpuset") {
        // Empty is "not set" (written, it would empty the cpuset).
        if let Some(c) = l.cpuset_cpus.as_deref().filter(|c| !c.is_empty()) {
            write(dir, "cpuset.cpus", c)?;
        }
        if let Some(m) = l.cpuset_mems.as_deref().filter(|m| !m.is_empty()) {
            write(dir, "cpuset.mems", m)?;
        }
    }
    if let Some(p) = l.pids
        && has("pids")
    {
        let v = if p > 0 {
            p.to_string()
        } else {
            "max".to_owned()
        };
        write(dir, "pids.max", &v)?;
    }
    Ok(())
}

/// runc's conversion of v1 shares (2-262144) to a v2 weight (1-10000).
fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// Makes the container's cgroup in every hierarchy, writes its limits and
/// moves process `pid` (with all its threads) into it. Undone by
/// [`remove`] (also when this fails half way).
pub fn join(spec: &CgroupSpec, pid: u32) -> Result<(), CgroupError> {
    let all = dirs(spec)?;
    let done = (|| {
        for (h, dir) in &all {
            make(h, dir)?;
            apply(h, dir, &spec.limits)?;
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    })();
    if done.is_err() {
        let _ = remove(spec);
    }
    done
}

/// Writes `limits` into the container's cgroup (`update --resources`), in
/// every hierarchy where it exists; what `limits` leaves unset stays.
pub fn update(spec: &CgroupSpec, limits: &Limits) -> Result<(), CgroupError> {
    for (h, dir) in dirs(spec)? {
        if dir.is_dir() {
            apply(&h, &dir, limits)?;
        }
    }
    Ok(())
}

/// Moves process `pid` (an exec proxy) into the container's cgroup, in
/// every hierarchy where it exists.
pub fn add(spec: &CgroupSpec, pid: u32) -> Result<(), CgroupError> {
    for (_, dir) in dirs(spec)? {
        if dir.is_dir() {
            write(&dir, "cgroup.procs", &pid.to_string())?;
        }
    }
    Ok(())
}

/// Removes the container's cgroup (only its own directory, not the
/// engine's parents such as `/docker`), once the processes in it have
/// gone: a cgroup whose last task is still exiting is busy for a moment.
pub fn remove(spec: &CgroupSpec) -> Result<(), CgroupError> {
    let mut first = None;
    for (_, dir) in dirs(spec)? {
        for attempt in 0..100 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.kind() == ErrorKind::ResourceBusy && attempt < 99 => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    first.get_or_insert(io("remove", &dir)(e));
                    break;
                }
            }
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
99 31 0:32 / /mnt/again rw,relatime - cgroup cgroup rw,memory
50 23 0:40 / /proc rw - proc proc rw
";

    #[test]
    fn hierarchies_from_mountinfo() {
        let hs = hierarchies(HYBRID);
        let mounts: Vec<_> = hs.iter().map(|h| h.mount.display().to_string()).collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified"
            ],
            "tmpfs and proc are no hierarchies; a second mount of one is skipped"
        );
        assert_eq!(hs[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(hs[1].controllers, ["cpuset"]);
        assert_eq!(hs[3].controllers, ["xattr", "name=systemd"]);
        assert!(hs[4].unified);
        assert!(hierarchies("garbage\n1 2\n - cgroup\n").is_empty());
    }

    #[test]
    fn directories_absolute_relative_and_below_a_namespaced_root() {
        let hs = hierarchies(HYBRID);
        let proc = "4:memory:/process_api/c3\n3:cpuset:/\n2:cpu,cpuacct:/x\n0::/user.slice\n";
        let mem = &hs[2];
        assert_eq!(
            dir_in(mem, "/docker/abc", &own_cgroup(proc, mem)),
            Path::new("/sys/fs/cgroup/memory/docker/abc")
        );
        assert_eq!(
            dir_in(mem, "abc", &own_cgroup(proc, mem)),
            Path::new("/sys/fs/cgroup/memory/process_api/c3/abc")
        );
        assert_eq!(own_cgroup(proc, &hs[0]), "/x");
        assert_eq!(own_cgroup(proc, &hs[4]), "/user.slice");
        let ns = Hierarchy {
            mount: "/sys/fs/cgroup".into(),
            root: "/kubepods/pod1".into(),
            controllers: Vec::new(),
            unified: true,
        };
        assert_eq!(
            dir_in(&ns, "/kubepods/pod1/ctr", "/"),
            Path::new("/sys/fs/cgroup/ctr")
        );
        assert_eq!(
            dir_in(&ns, "/other/ctr", "/"),
            Path::new("/sys/fs/cgroup/other/ctr")
        );
    }

    #[test]
    fn systemd_paths_expand_as_systemd_names_scopes() {
        assert_eq!(
            resolve_path("system.slice:docker:abc", true).unwrap(),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            resolve_path("machine-libpod.slice:libpod:abc", false).unwrap(),
            "/machine.slice/machine-libpod.slice/libpod-abc.scope"
        );
        assert_eq!(
            resolve_path(":docker:abc", true).unwrap(),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(resolve_path("-.slice::abc", true).unwrap(), "/abc.scope");
        assert_eq!(resolve_path("/docker/abc", false).unwrap(), "/docker/abc");
        assert_eq!(resolve_path("abc", false).unwrap(), "abc");
        for (bad, systemd) in [
            ("/docker/../etc", false),
            ("a:b", false),
            ("x.slice:docker:a/b", true),
            ("nots:docker:abc", true),
            ("a--b.slice:p:n", true),
            ("s.slice:p:", true),
        ] {
            assert!(resolve_path(bad, systemd).is_err(), "{bad}");
        }
        assert!(resolve_path("/docker/abc", true).is_err());
    }

    #[test]
    fn weights_from_shares_as_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\04"), r"/a\04");
        assert_eq!(unescape(r"\"), r"\");
    }

    /// A fake v1 hierarchy in a temporary directory: make copies the
    /// cpuset of the parent, apply writes the limits, remove takes only
    /// the leaf.
    #[test]
    fn make_apply_in_a_fake_v1_cpuset_and_memory_tree() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path().to_owned();
        std::fs::write(tmp.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(tmp.join("cpuset.mems"), "0\n").unwrap();
        let h = Hierarchy {
            mount: tmp.clone(),
            root: "/".into(),
            controllers: vec!["cpuset".into(), "memory".into(), "pids".into()],
            unified: false,
        };
        let dir = dir_in(&h, "/docker/abc", "/");
        make(&h, &dir).unwrap();
        assert_eq!(read(&tmp.join("docker"), "cpuset.cpus"), "0-1");
        assert_eq!(read(&dir, "cpuset.mems"), "0");
        let limits = Limits {
            memory: Some(256 << 20),
            pids: Some(-1),
            cpu_shares: Some(512),
            ..Limits::default()
        };
        apply(&h, &dir, &limits).unwrap();
        assert_eq!(
            read(&dir, "memory.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
        assert_eq!(read(&dir, "pids.max"), "max");
        assert!(!dir.join("cpu.shares").exists(), "no cpu controller here");
        make(&h, &dir).unwrap();
    }

    /// On this host's real hierarchies (v1, v2 or hybrid), as root: a
    /// process joins, its limits are written, and remove leaves nothing.
    #[test]
    fn a_process_joins_the_hosts_real_cgroups_and_they_go_with_remove() {
        let probe = Path::new("/sys/fs/cgroup");
        if rustix::process::geteuid().as_raw() != 0 || !probe.is_dir() {
            eprintln!("SKIP a_process_joins_the_hosts_real_cgroups: needs root and /sys/fs/cgroup");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let spec = CgroupSpec {
            path: format!("/husk-unit-{pid}"),
            limits: Limits {
                memory: Some(300 << 20),
                pids: Some(50),
                ..Limits::default()
            },
        };
        join(&spec, pid).unwrap();
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            now.lines().all(|l| l.ends_with(&spec.path)),
            "not in {} in every hierarchy: {now}",
            spec.path
        );
        let all = dirs(&spec).unwrap();
        let mem = all
            .iter()
            .find(|(h, d)| {
                h.controllers.iter().any(|c| c == "memory")
                    || (h.unified && read(d, "cgroup.controllers").contains("memory"))
            })
            .map(|(h, d)| (h.unified, d.clone()));
        if let Some((unified, d)) = mem {
            let f = if unified {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            assert_eq!(read(&d, f), (300u64 << 20).to_string());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        remove(&spec).unwrap();
        for (_, d) in all {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
}
