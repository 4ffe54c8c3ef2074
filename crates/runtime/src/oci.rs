//! husk as an OCI runtime: what `husk oci create|start|state|kill|delete|
//! exec|ps|pause|resume` do for an engine (dockerd through containerd's runc
//! shim, containerd, podman through conmon), on the same container store,
//! [`Engine`] and monitor as husk's own containers.
//!
//! `create` translates the bundle's `config.json` ([`translate`]) into a
//! [`ContainerConfig`] whose root is the bundle's `root.path` itself
//! ([`RootfsVia::Bundle`]), and spawns the monitor as a child of the
//! calling command: its pid goes into `--pid-file`; it keeps the stdio
//! `create` inherited as the container's (or sends a pty master over
//! `--console-socket`), boots the VM, runs the main process on `start` and
//! exits with its status. `state` maps husk's state onto the spec's
//! statuses; `delete` removes the record. `exec --detach` spawns a proxy
//! per process ([`OciRuntime::exec_proxy`]) that writes its own pid,
//! forwards signals and exits with the guest process's status.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use husk_protocol::{RunSpec, TermSize};
use oci_spec::runtime::{Capability, LinuxNamespaceType, PosixRlimitType, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::container::{Container, ContainerConfig, ContainerStore, Status, VmSettings};
use crate::control::{CtlEvent, CtlRequest};
use crate::engine::{Engine, EngineError, MonitorCommand};
use crate::{Control, RootfsVia, Stdio, Volume};

/// The runtime-spec version husk implements.
pub const OCI_VERSION: &str = "1.0.2";

/// Where container state lives when `--root` is not given (podman calls
/// `state` without global flags).
pub const DEFAULT_ROOT: &str = "/run/husk-oci";

/// Guest memory without an annotation or a memory limit, MiB (as `husk run`).
const DEFAULT_MEMORY_MIB: u64 = 256;

/// The least guest memory husk boots with, MiB.
const MIN_MEMORY_MIB: u64 = 64;

/// Errors of the OCI runtime.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// No container has that id ("does not exist": the shim ignores it
    /// when deleting).
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container with id {0} already exists")]
    Exists(String),
    /// The id is malformed.
    #[error("invalid container id {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-], at most 128 characters")]
    BadId(String),
    /// The container is not running (the shim treats "not running" as
    /// already exited).
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The operation does not fit the container's status.
    #[error("container {id} is {status}: cannot {what}")]
    BadState {
        /// The container.
        id: String,
        /// Its OCI status.
        status: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// The bundle's `config.json` (or exec's process file) cannot be read.
    #[error("cannot read {path}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The spec asks for something husk cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// A hook failed.
    #[error("{kind} hook {path} failed: {detail}")]
    Hook {
        /// prestart, createRuntime, ...
        kind: &'static str,
        /// The hook's program.
        path: PathBuf,
        /// What happened.
        detail: String,
    },
    /// The lifecycle API failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// `linux.cgroupsPath` could not be joined.
    #[error("cannot put the container's VM in its cgroup")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// A file could not be used.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OciError + 'a {
    move |source| OciError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Which network namespace the container's monitor lives in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetNs {
    /// A fresh one (the spec's `network` namespace without a path).
    New,
    /// The one at this path (`/proc/PID/ns/net`, `/run/netns/X`).
    Path(PathBuf),
}

/// A hook of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// Absolute path of the program.
    pub path: PathBuf,
    /// argv, with argv[0].
    pub args: Vec<String>,
    /// `K=V`.
    pub env: Vec<String>,
    /// Seconds before it is killed.
    pub timeout_s: Option<u64>,
}

/// The hooks husk runs on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hooks {
    /// `prestart` (deprecated in the spec, still used by Docker ≤ 27).
    pub prestart: Vec<HookSpec>,
    /// `createRuntime`.
    pub create_runtime: Vec<HookSpec>,
    /// `createContainer` (run on the host: the container's namespaces are
    /// in the guest).
    pub create_container: Vec<HookSpec>,
    /// `poststart`.
    pub poststart: Vec<HookSpec>,
    /// `poststop`.
    pub poststop: Vec<HookSpec>,
}

/// What a container created from a bundle keeps besides husk's own config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciConfig {
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Hooks run on the host.
    pub hooks: Hooks,
    /// `--console-socket` (with `process.terminal`).
    pub console_socket: Option<PathBuf>,
    /// The monitor's network namespace.
    pub netns: NetNs,
    /// When `create` ran, RFC 3339 with nanoseconds.
    pub created: String,
    /// `linux.cgroupsPath` and the limits written there (none: the
    /// monitor stays in the caller's cgroup).
    #[serde(default)]
    pub cgroup: Option<crate::cgroup::CgroupSpec>,
}

/// A bundle translated into a container, and what of it husk does not do.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The container.
    pub config: ContainerConfig,
    /// Parts of the spec that are accepted but not applied.
    pub warnings: Vec<String>,
}

/// Paths the guest agent mounts itself (proc, sysfs, devpts, mqueue,
/// cgroup, /dev, /dev/shm): the spec's mounts at or under them are the
/// guest's own, not shares.
const GUEST_SYSTEM_PATHS: &[&str] = &["/proc", "/sys", "/dev"];

fn is_system_path(dest: &str) -> bool {
    GUEST_SYSTEM_PATHS
        .iter()
        .any(|p| dest == *p || dest.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

/// Makes the mount point `guest` (a directory, or an empty file if
/// `file`) in the container root `root`, and the directories above it,
/// where missing. The root is the image's, so each step resolves inside
/// it (`RESOLVE_IN_ROOT`: a symlink such as `data -> /etc` leads to the
/// root's /etc, never the host's), and new entries are made relative to
/// their resolved parent, never following a symlink in their own name.
fn make_mount_point(root: &Path, guest: &str, file: bool) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let parts: Vec<&str> = guest
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a mount point may not contain ..",
        ));
    }
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let resolve = |rel: &str, flags: OFlags| {
        rustix::fs::openat2(
            &root_fd,
            if rel.is_empty() { "." } else { rel },
            flags | OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    };
    for (i, name) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match resolve(&parts[..=i].join("/"), OFlags::empty()) {
            Ok(_) => continue,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let parent = resolve(&parts[..i].join("/"), OFlags::DIRECTORY)?;
        let made = if last && file {
            rustix::fs::openat(
                &parent,
                *name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o755))
        };
        match made {
            // A racing creator, or a dangling symlink in the image: the
            // guest's mount reports what is there.
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Translates a bundle's spec into a container: `bundle` is the (absolute)
/// bundle directory, `vm` the kernel and agent.
pub fn translate(bundle: &Path, spec: &Spec, vm: VmSettings) -> Result<Translation, OciError> {
    let mut warnings = Vec::new();
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| OciError::Unsupported("the bundle's config.json has no root".into()))?;
    let root_path = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let root_path = std::fs::canonicalize(&root_path).map_err(io("use root.path", &root_path))?;
    if !root_path.is_dir() {
        return Err(OciError::Unsupported(format!(
            "root.path {} is not a directory",
            root_path.display()
        )));
    }
    let read_only = root.readonly().unwrap_or(false);
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| OciError::Unsupported("the bundle's config.json has no process".into()))?;
    let mut run = process_spec(process)?;
    run.main = true;

    let mut volumes = Vec::new();
    let mut tmpfs = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m
            .destination()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let typ = m.typ().as_deref().unwrap_or("");
        let opts = m.options().clone().unwrap_or_default();
        let bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
        if is_system_path(&dest) {
            log::debug!("mount {dest} ({typ}): made by the guest itself");
            continue;
        }
        if bind {
            let source = m
                .source()
                .as_ref()
                .ok_or_else(|| OciError::Unsupported(format!("bind mount {dest} has no source")))?;
            let host = std::fs::canonicalize(source).map_err(io("bind-mount", source))?;
            if !host.is_dir() && !host.is_file() {
                return Err(OciError::Unsupported(format!(
                    "bind mount {dest}: {} is neither a directory nor a regular file",
                    host.display()
                )));
            }
            crate::check_guest_path(&dest)
                .map_err(|e| OciError::Unsupported(format!("bind mount {dest}: {e}")))?;
            volumes.push(Volume {
                host,
                guest: dest,
                read_only: opts.iter().any(|o| o == "ro"),
            });
        } else if typ == "tmpfs" {
            crate::check_guest_path(&dest)
                .map_err(|e| OciError::Unsupported(format!("tmpfs mount {dest}: {e}")))?;
            tmpfs.push(dest);
        } else {
            warnings.push(format!(
                "mount {dest} of type {typ:?} is not supported; left out"
            ));
        }
    }

    // As runc does: the mount points are made in the bundle's root on the
    // host, so a read-only root (`--read-only`) can still take volumes.
    for v in &volumes {
        if let Err(e) = make_mount_point(&root_path, &v.guest, v.host.is_file()) {
            warnings.push(format!("mount point {}: {e}", v.guest));
        }
    }
    for t in &tmpfs {
        if let Err(e) = make_mount_point(&root_path, t, false) {
            warnings.push(format!("mount point {t}: {e}"));
        }
    }

    let hostname = match spec.hostname() {
        Some(h) if !h.is_empty() => {
            if !crate::engine::valid_hostname(h) {
                return Err(OciError::Unsupported(format!(
                    "invalid hostname {h:?}: 1 to 63 letters, digits, '-' and '.'"
                )));
            }
            Some(h.clone())
        }
        _ => None,
    };

    let annotations: BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let memory_limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| l as u64);
    let memory_mib = match annotations.get("io.husk.memory") {
        Some(v) => v.parse::<u64>().ok().filter(|m| *m > 0).ok_or_else(|| {
            OciError::Unsupported(format!("annotation io.husk.memory={v:?}: expected MiB"))
        })?,
        // The limit is the whole VM's (its cgroup's): the guest gets what
        // the VMM leaves of it.
        None => match memory_limit {
            Some(limit) => (limit >> 20).saturating_sub(crate::cgroup::VMM_OVERHEAD_MIB),
            None => DEFAULT_MEMORY_MIB,
        },
    };
    if memory_mib < MIN_MEMORY_MIB {
        warnings.push(format!(
            "a {memory_mib} MiB VM cannot boot; giving it {MIN_MEMORY_MIB} MiB"
        ));
    }
    let memory_mib = memory_mib.max(MIN_MEMORY_MIB);
    // A limit too small for the VM would have the kernel kill it as soon
    // as the guest touched its memory: the cgroup gets what the VM needs.
    let vm_needs = (memory_mib + crate::cgroup::VMM_OVERHEAD_MIB) << 20;
    let memory_limit = memory_limit.map(|l| {
        if l < vm_needs {
            warnings.push(format!(
                "a memory limit of {} MiB is below what a {memory_mib} MiB VM needs; its cgroup gets {} MiB",
                l >> 20,
                vm_needs >> 20
            ));
            vm_needs
        } else {
            l
        }
    });
    let cpus = match annotations.get("io.husk.cpus") {
        Some(v) => v.parse::<u8>().ok().filter(|c| *c > 0).ok_or_else(|| {
            OciError::Unsupported(format!("annotation io.husk.cpus={v:?}: expected 1 to 255"))
        })?,
        None => {
            let cpu = resources.and_then(|r| r.cpu().as_ref());
            match (cpu.and_then(|c| c.quota()), cpu.and_then(|c| c.period())) {
                (Some(q), Some(p)) if q > 0 && p > 0 => {
                    (q as u64).div_ceil(p).clamp(1, u64::from(u8::MAX)) as u8
                }
                _ => 1,
            }
        }
    };

    let netns = match linux
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network))
    {
        Some(n) => match n.path() {
            Some(p) => NetNs::Path(p.clone()),
            None => NetNs::New,
        },
        None => {
            return Err(OciError::Unsupported(
                "the host's network namespace (--network host) is not supported: a husk \
                 container is a VM with its own kernel; give it a network namespace"
                    .into(),
            ));
        }
    };
    if linux.is_some_and(|l| l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())) {
        warnings.push("user namespace mappings are not applied (the guest has its own)".into());
    }
    if linux.is_some_and(|l| l.seccomp().is_some()) {
        warnings.push(
            "linux.seccomp is not applied: the VM boundary isolates the container, the guest process has no seccomp filter"
                .into(),
        );
    }
    // Container-wide, applied by the agent in the main process's mount
    // namespace (execs join it) and in the guest kernel.
    if let Some(l) = linux {
        for (what, paths, into) in [
            ("linux.maskedPaths", l.masked_paths(), &mut run.masked_paths),
            (
                "linux.readonlyPaths",
                l.readonly_paths(),
                &mut run.readonly_paths,
            ),
        ] {
            for p in paths.iter().flatten() {
                husk_protocol::check_path(what, p.as_bytes()).map_err(OciError::Unsupported)?;
                into.push(p.as_bytes().to_vec());
            }
        }
        run.sysctls = sysctls(l.sysctl().as_ref())?;
    }
    run.check()
        .map_err(|e| OciError::Unsupported(format!("the spec's process: {e}")))?;
    // Resolved (systemd form, validity) by `create`, which knows
    // --systemd-cgroup.
    let cgroup = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| crate::cgroup::CgroupSpec {
            path: p.display().to_string(),
            limits: cgroup_limits(resources, memory_limit),
        });

    let hooks = spec.hooks().as_ref();
    let conv = |v: Option<&Vec<oci_spec::runtime::Hook>>| -> Vec<HookSpec> {
        v.into_iter()
            .flatten()
            .map(|h| HookSpec {
                path: h.path().clone(),
                args: h.args().clone().unwrap_or_default(),
                env: h.env().clone().unwrap_or_default(),
                timeout_s: h.timeout().filter(|t| *t > 0).map(|t| t as u64),
            })
            .collect()
    };
    #[allow(deprecated)]
    let hooks = Hooks {
        prestart: conv(hooks.and_then(|h| h.prestart().as_ref())),
        create_runtime: conv(hooks.and_then(|h| h.create_runtime().as_ref())),
        create_container: conv(hooks.and_then(|h| h.create_container().as_ref())),
        poststart: conv(hooks.and_then(|h| h.poststart().as_ref())),
        poststop: conv(hooks.and_then(|h| h.poststop().as_ref())),
    };
    if spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().as_ref())
        .is_some_and(|v| !v.is_empty())
    {
        warnings.push("startContainer hooks are not run (they would run in the guest)".into());
    }

    let config = ContainerConfig {
        image: root_path.display().to_string(),
        image_id: None,
        rootfs: root_path,
        spec: run,
        volumes,
        tmpfs,
        mem_size: memory_mib << 20,
        vcpus: cpus,
        hostname,
        stop_signal: None,
        stop_timeout: None,
        restart: Default::default(),
        log: Default::default(),
        open_stdin: false,
        auto_remove: false,
        rootfs_via: RootfsVia::Bundle { read_only },
        vm,
        // The interface the engine puts in the namespace, carried into
        // the VM when it boots (at start).
        network: crate::net::NetworkConfig {
            mode: crate::net::NetworkMode::Engine,
            ..Default::default()
        },
        oci: Some(OciConfig {
            bundle: bundle.to_owned(),
            annotations,
            hooks,
            console_socket: None,
            netns,
            created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            cgroup,
        }),
    };
    Ok(Translation { config, warnings })
}

/// The spec's `process` as a process for the agent.
fn process_spec(p: &Process) -> Result<RunSpec, OciError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(OciError::Unsupported("process.args is empty".into()));
    }
    let mut spec = RunSpec::new(&args);
    for kv in p.env().iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        spec = spec.env(k, v);
    }
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(OciError::Unsupported(format!(
            "process.cwd {} must be absolute",
            cwd.display()
        )));
    }
    spec = spec.cwd(cwd);
    let user = p.user();
    spec = spec.user(user.uid(), user.gid());
    spec.additional_gids = user.additional_gids().clone().unwrap_or_default();
    if p.terminal().unwrap_or(false) {
        let size = p.console_size().as_ref().map(|b| TermSize {
            rows: b.height() as u16,
            cols: b.width() as u16,
        });
        spec = spec.tty(size);
    }
    // Applied by the agent between fork and exec, in runc's order.
    spec.rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| husk_protocol::Rlimit {
            resource: rlimit_number(r.typ()),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    spec.capabilities = p
        .capabilities()
        .as_ref()
        .map(|c| husk_protocol::Capabilities {
            bounding: cap_mask(c.bounding().as_ref()),
            effective: cap_mask(c.effective().as_ref()),
            permitted: cap_mask(c.permitted().as_ref()),
            inheritable: cap_mask(c.inheritable().as_ref()),
            ambient: cap_mask(c.ambient().as_ref()),
        });
    spec.no_new_privileges = p.no_new_privileges().unwrap_or(false);
    spec.umask = p.user().umask();
    spec.oom_score_adj = p.oom_score_adj();
    spec.check()
        .map_err(|e| OciError::Unsupported(format!("process: {e}")))?;
    Ok(spec)
}

/// Linux's number of a capability (`CAP_CHOWN` is 0).
fn cap_number(c: Capability) -> u32 {
    use Capability::*;
    match c {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

/// Every capability oci-spec knows, by number (for `features`).
const CAPABILITY_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A set of the spec as the agent's mask (a missing set is empty, as
/// with runc).
fn cap_mask(set: Option<&oci_spec::runtime::Capabilities>) -> u64 {
    set.into_iter()
        .flatten()
        .fold(0, |m, c| m | 1u64 << cap_number(*c))
}

/// Linux's (x86-64, the guest's) number of a resource limit.
fn rlimit_number(t: PosixRlimitType) -> u32 {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => 0,
        RlimitFsize => 1,
        RlimitData => 2,
        RlimitStack => 3,
        RlimitCore => 4,
        RlimitRss => 5,
        RlimitNproc => 6,
        RlimitNofile => 7,
        RlimitMemlock => 8,
        RlimitAs => 9,
        RlimitLocks => 10,
        RlimitSigpending => 11,
        RlimitMsgqueue => 12,
        RlimitNice => 13,
        RlimitRtprio => 14,
        RlimitRttime => 15,
    }
}

/// `linux.sysctl`, checked (names are written as paths under the guest's
/// /proc/sys: dot-separated segments of `[a-z0-9_-]` only), in name
/// order.
fn sysctls(
    map: Option<&std::collections::HashMap<String, String>>,
) -> Result<Vec<(String, String)>, OciError> {
    let mut out: Vec<(String, String)> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort();
    for (k, v) in &out {
        if !husk_protocol::valid_sysctl_name(k) {
            return Err(OciError::Unsupported(format!(
                "linux.sysctl: invalid name {k:?}: dot-separated segments of [a-z0-9_-], e.g. net.ipv4.ip_forward"
            )));
        }
        if v.contains('\0') || v.len() > husk_protocol::MAX_PATH_LEN {
            return Err(OciError::Unsupported(format!(
                "linux.sysctl: the value of {k} must be at most {} bytes without NUL",
                husk_protocol::MAX_PATH_LEN
            )));
        }
    }
    Ok(out)
}

/// Parses a spec (`config.json`, or exec's process JSON with `process`
/// false: the object is the process) with oci-spec; a capability name
/// oci-spec does not know (a newer kernel's) fails its parse, so such
/// names are left out with a warning instead, as runc ignores them.
fn parse_lenient<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    process: bool,
    warnings: &mut Vec<String>,
) -> Result<T, serde_json::Error> {
    let strict = match serde_json::from_slice::<T>(bytes) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Err(strict);
    };
    let caps = if process {
        value.get_mut("process")
    } else {
        Some(&mut value)
    }
    .and_then(|p| p.get_mut("capabilities"))
    .and_then(|c| c.as_object_mut());
    let mut dropped = Vec::new();
    for (set, names) in caps.into_iter().flatten() {
        if let Some(list) = names.as_array_mut() {
            list.retain(|n| {
                let known = serde_json::from_value::<Capability>(n.clone()).is_ok();
                if !known {
                    dropped.push(format!("{set}: {n}"));
                }
                known
            });
        }
    }
    if dropped.is_empty() {
        return Err(strict);
    }
    let parsed = serde_json::from_value::<T>(value).map_err(|_| strict)?;
    warnings.push(format!(
        "unknown capabilities left out (as runc does): {}",
        dropped.join(", ")
    ));
    Ok(parsed)
}

/// The spec's status of a container.
pub fn status_of(c: &Container) -> &'static str {
    match c.state.status {
        Status::Created | Status::Exited => "stopped",
        Status::Paused => "paused",
        Status::Running | Status::Restarting => {
            if c.state.main_started {
                "running"
            } else if c.state.exit_code.is_some() || c.state.error.is_some() {
                "stopped"
            } else {
                "created"
            }
        }
    }
}

/// The state JSON of the spec (with runc's `rootfs`, `created`, `owner`).
pub fn state_json(c: &Container) -> serde_json::Value {
    let status = status_of(c);
    let oci = c.config.oci.as_ref();
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": c.name,
        "pid": if status == "stopped" { 0 } else { c.state.pid.unwrap_or(0) },
        "status": status,
        "bundle": oci.map(|o| o.bundle.clone()).unwrap_or_default(),
        "rootfs": c.config.rootfs,
        "created": oci.map(|o| o.created.clone()).unwrap_or_else(|| crate::engine::rfc3339(c.created)),
        "owner": "",
        "annotations": oci.map(|o| o.annotations.clone()).unwrap_or_default(),
    })
}

/// What the runtime supports (`husk oci features`), in the spec's
/// The limits of `linux.resources` that go to the VM's cgroup
/// (`memory`: the limit as the VM's size made it).
fn cgroup_limits(
    resources: Option<&oci_spec::runtime::LinuxResources>,
    memory: Option<u64>,
) -> crate::cgroup::Limits {
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    crate::cgroup::Limits {
        memory,
        cpu_shares: cpu.and_then(|c| c.shares()),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        // Docker writes "" for "not set": an empty cpuset takes no task.
        cpuset_cpus: cpu.and_then(|c| c.cpus().clone()).filter(|c| !c.is_empty()),
        cpuset_mems: cpu.and_then(|c| c.mems().clone()).filter(|m| !m.is_empty()),
        pids: resources.and_then(|r| r.pids().as_ref()).map(|p| p.limit()),
    }
}

/// features format.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            "namespaces": ["network"],
            "capabilities": &CAPABILITY_NAMES[..],
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "io.husk.cpus": "vCPUs of the container's VM",
            "io.husk.memory": "memory of the container's VM, MiB",
        },
    })
}

/// `create`'s options besides the bundle.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// `--bundle` (default: the current directory).
    pub bundle: PathBuf,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is `slice:prefix:name`.
    pub systemd_cgroup: bool,
    /// The guest kernel and agent.
    pub vm: VmSettings,
}

/// The OCI lifecycle over one `--root`.
#[derive(Debug)]
pub struct OciRuntime {
    engine: Engine,
    root: PathBuf,
    program: PathBuf,
}

impl OciRuntime {
    /// Opens the state under `root`; `program` is the `husk` binary (its
    /// monitors and exec proxies are that binary too), `log_level` theirs.
    pub fn open(root: &Path, program: &Path, log_level: &str) -> Result<OciRuntime, OciError> {
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        let engine = Engine::open(
            root,
            MonitorCommand {
                program: program.to_owned(),
                args: vec!["--log-level".into(), log_level.into(), "__monitor".into()],
            },
        )?;
        Ok(OciRuntime {
            engine,
            root: root.to_owned(),
            program: program.to_owned(),
        })
    }

    /// The container whose OCI id is `id` (exactly: no prefixes).
    pub fn find(&self, id: &str) -> Result<Container, OciError> {
        self.engine
            .list()?
            .into_iter()
            .find(|c| c.name == id && c.config.oci.is_some())
            .ok_or_else(|| OciError::NotFound(id.to_owned()))
    }

    /// `create`: returns the parts of the spec that are not applied.
    pub fn create(&self, id: &str, req: &CreateRequest) -> Result<Vec<String>, OciError> {
        if !crate::container::valid_name(id) {
            return Err(OciError::BadId(id.to_owned()));
        }
        if self.engine.list()?.iter().any(|c| c.name == id) {
            return Err(OciError::Exists(id.to_owned()));
        }
        let bundle = std::fs::canonicalize(&req.bundle).map_err(io("use bundle", &req.bundle))?;
        let path = bundle.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| OciError::Spec {
            path: path.clone(),
            source: oci_spec::OciSpecError::Io(e),
        })?;
        let mut parse_warnings = Vec::new();
        let spec: Spec =
            parse_lenient(&bytes, true, &mut parse_warnings).map_err(|e| OciError::Spec {
                path: path.clone(),
                source: oci_spec::OciSpecError::SerDe(e),
            })?;
        let Translation {
            mut config,
            mut warnings,
        } = translate(&bundle, &spec, req.vm.clone())?;
        warnings.splice(0..0, parse_warnings);
        if config.spec.tty && req.console_socket.is_none() {
            return Err(OciError::Unsupported(
                "process.terminal is set but no --console-socket was given".into(),
            ));
        }
        let netns_new = if let Some(oci) = config.oci.as_mut() {
            if let Some(cg) = oci.cgroup.as_mut() {
                cg.path = crate::cgroup::resolve_path(&cg.path, req.systemd_cgroup)?;
            }
            oci.console_socket = req
                .console_socket
                .as_ref()
                .map(|s| std::fs::canonicalize(s).unwrap_or_else(|_| s.clone()));
            oci.netns == NetNs::New
        } else {
            false
        };
        let c = self.engine.create_config(id, config)?;
        let result = self
            .engine
            .spawn_oci_monitor(&c, netns_new)
            .map_err(OciError::from);
        let pid = match result {
            Ok(pid) => pid,
            Err(e) => {
                let _ = self.engine.remove(&c.id, true);
                return Err(e);
            }
        };
        let undo = |e: OciError| {
            let _ = self.engine.remove(&c.id, true);
            e
        };
        let c = self.engine.find(&c.id).map_err(|e| undo(e.into()))?;
        // Before the pid file is written: the engine reads the cgroup of
        // that pid (containerd's shim, for stats and OOM events). Nothing
        // is charged to the caller's cgroup yet: the VM boots at start.
        if let Some(cg) = c.config.oci.as_ref().and_then(|o| o.cgroup.as_ref()) {
            crate::cgroup::join(cg, pid).map_err(|e| undo(e.into()))?;
        }
        let hooks = &c
            .config
            .oci
            .as_ref()
            .map(|o| o.hooks.clone())
            .unwrap_or_default();
        let state = state_json(&c);
        for (kind, list) in [
            ("prestart", &hooks.prestart),
            ("createRuntime", &hooks.create_runtime),
            ("createContainer", &hooks.create_container),
        ] {
            for h in list {
                run_hook(kind, h, &state).map_err(undo)?;
            }
        }
        if let Some(p) = &req.pid_file {
            write_pid_file(p, pid).map_err(undo)?;
        }
        Ok(warnings)
    }

    /// `start`: runs the main process; returns once it started.
    pub fn start(&self, id: &str) -> Result<Vec<String>, OciError> {
        let c = self.find(id)?;
        let status = status_of(&c);
        if status != "created" {
            return Err(OciError::BadState {
                id: id.to_owned(),
                status,
                what: "start it (only a created container starts)",
            });
        }
        let c = self.engine.start_created(&c.id)?;
        let mut warnings = Vec::new();
        let state = state_json(&c);
        for h in c.config.oci.iter().flat_map(|o| &o.hooks.poststart) {
            if let Err(e) = run_hook("poststart", h, &state) {
                warnings.push(e.to_string());
            }
        }
        Ok(warnings)
    }

    /// `state`.
    pub fn state(&self, id: &str) -> Result<serde_json::Value, OciError> {
        Ok(state_json(&self.find(id)?))
    }

    /// `kill`: the signal to the main process (`all`: the same, since every
    /// process of the container is in its VM and dies with it).
    pub fn kill(&self, id: &str, signo: i32, _all: bool) -> Result<(), OciError> {
        let c = self.find(id)?;
        if status_of(&c) == "stopped" {
            return Err(OciError::NotRunning(id.to_owned()));
        }
        match self.engine.kill(&c.id, signo) {
            Err(EngineError::NotRunning(_)) => Err(OciError::NotRunning(id.to_owned())),
            r => Ok(r?),
        }
    }

    /// `delete`: removes a stopped container (`force`: any, ending its VM);
    /// then runs its poststop hooks. Returns their failures.
    pub fn delete(&self, id: &str, force: bool) -> Result<Vec<String>, OciError> {
        let c = self.find(id)?;
        let status = status_of(&c);
        if status != "stopped" && !force {
            return Err(OciError::BadState {
                id: id.to_owned(),
                status,
                what: "delete it (stop it first, or use --force)",
            });
        }
        let state = state_json(&c);
        self.engine.remove(&c.id, true)?;
        let mut warnings = Vec::new();
        if let Some(cg) = c.config.oci.as_ref().and_then(|o| o.cgroup.as_ref())
            && let Err(e) = crate::cgroup::remove(cg)
        {
            warnings.push(error_chain(&e));
        }
        for h in c.config.oci.iter().flat_map(|o| &o.hooks.poststop) {
            if let Err(e) = run_hook("poststop", h, &state) {
                warnings.push(e.to_string());
            }
        }
        Ok(warnings)
    }

    /// `update --resources`: new limits for the VM's cgroup. CPU (shares,
    /// quota, period, cpuset) and pids apply at once to the whole VM, as
    /// to a runc container. Memory only as far as the VM fits: a running
    /// guest cannot shrink (husk has no balloon), so a limit below what
    /// it booted with (its memory plus the VMM's) is refused rather than
    /// have the kernel OOM-kill the VM; a higher one applies (the guest
    /// keeps its size). Returns what the caller should be told.
    pub fn update(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<Vec<String>, OciError> {
        let c = self.find(id)?;
        if status_of(&c) == "stopped" {
            return Err(OciError::NotRunning(id.to_owned()));
        }
        let Some(cg) = c.config.oci.as_ref().and_then(|o| o.cgroup.as_ref()) else {
            return Err(OciError::Unsupported(format!(
                "container {id} has no cgroup (its spec had no linux.cgroupsPath) to update"
            )));
        };
        let memory = resources
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|l| l as u64);
        let mut notes = Vec::new();
        if let Some(l) = memory {
            let needs = c.config.mem_size + (crate::cgroup::VMM_OVERHEAD_MIB << 20);
            if l < needs {
                return Err(OciError::Unsupported(format!(
                    "a memory limit of {} MiB is below what container {id}'s VM needs ({} MiB: {} MiB of guest memory and {} MiB for the VMM); a running VM cannot shrink",
                    l >> 20,
                    needs >> 20,
                    c.config.mem_size >> 20,
                    crate::cgroup::VMM_OVERHEAD_MIB
                )));
            }
            notes.push(format!(
                "memory: the VM's cgroup may now use {} MiB; the guest keeps the {} MiB it booted with",
                l >> 20,
                c.config.mem_size >> 20
            ));
        }
        crate::cgroup::update(cg, &cgroup_limits(Some(resources), memory))?;
        Ok(notes)
    }

    /// `pause`: the VM's vCPUs stop.
    pub fn pause(&self, id: &str) -> Result<(), OciError> {
        let c = self.find(id)?;
        Ok(self.engine.pause(&c.id)?)
    }

    /// `resume`.
    pub fn resume(&self, id: &str) -> Result<(), OciError> {
        let c = self.find(id)?;
        Ok(self.engine.unpause(&c.id)?)
    }

    /// `ps`: the host pids of the container (its monitor, which holds the
    /// VM, and the exec proxies).
    pub fn ps(&self, id: &str) -> Result<Vec<u32>, OciError> {
        let c = self.find(id)?;
        if status_of(&c) == "stopped" {
            return Ok(Vec::new());
        }
        let mut pids: Vec<u32> = c.state.pid.into_iter().collect();
        let dir = c.dir().join("execs");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && Path::new(&format!("/proc/{pid}")).exists()
            {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// The process of an `exec` (`--process FILE`'s JSON, read by the
    /// caller at once: go-runc removes the file as soon as `exec` returns),
    /// for a running container. `what` names it in errors.
    pub fn exec_spec(
        &self,
        id: &str,
        process_json: &[u8],
        what: &Path,
    ) -> Result<RunSpec, OciError> {
        let c = self.find(id)?;
        if status_of(&c) != "running" {
            return Err(OciError::NotRunning(id.to_owned()));
        }
        let mut warnings = Vec::new();
        let p: Process =
            parse_lenient(process_json, false, &mut warnings).map_err(|e| OciError::Spec {
                path: what.to_owned(),
                source: oci_spec::OciSpecError::SerDe(e),
            })?;
        let spec = process_spec(&p)?;
        for w in warnings {
            log::warn!("{w}");
        }
        Ok(spec)
    }

    /// `exec --detach`: spawns a proxy (this binary's hidden
    /// `oci __exec-proxy`) with this command's stdio, which runs `spec` in
    /// the container, writes its own pid to `pid_file` once the process
    /// started, and exits with its status; returns then.
    pub fn exec_detached(
        &self,
        id: &str,
        spec: &RunSpec,
        pid_file: &Path,
        console_socket: Option<&Path>,
        debug: bool,
    ) -> Result<(), OciError> {
        let c = self.find(id)?;
        let staged = c.dir().join(format!(
            "exec-{}-{}.json",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let bytes = serde_json::to_vec(spec)
            .map_err(|e| OciError::Unsupported(format!("cannot encode the process: {e}")))?;
        std::fs::write(&staged, bytes).map_err(io("write", &staged))?;
        let err_path = staged.with_extension("err");
        let mut cmd = Command::new(&self.program);
        cmd.arg("oci");
        if debug {
            cmd.arg("--debug");
        }
        cmd.arg("--root")
            .arg(&self.root)
            .arg("__exec-proxy")
            .arg("--spec")
            .arg(&staged)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(s) = console_socket {
            cmd.arg("--console-socket").arg(s);
        }
        cmd.arg(id);
        if console_socket.is_some() {
            // The process's stdio is the pty. The proxy outlives this
            // command, so it must not hold what the engine gave it: the
            // runc shim reads a terminal exec's stdout and stderr to EOF
            // before the exec counts as started (Docker then times out
            // `exec -it`'s resizes and never attaches).
            cmd.stdin(ProcStdio::null())
                .stdout(ProcStdio::null())
                .stderr(ProcStdio::null());
        } else {
            cmd.stdin(ProcStdio::inherit())
                .stdout(ProcStdio::inherit())
                .stderr(ProcStdio::inherit());
        }
        let mut child = cmd.spawn().map_err(io("start", &self.program))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if pid_file.exists() {
                return Ok(());
            }
            if let Ok(Some(st)) = child.try_wait() {
                let msg = std::fs::read_to_string(&err_path).unwrap_or_default();
                let _ = std::fs::remove_file(&err_path);
                let _ = std::fs::remove_file(&staged);
                return Err(OciError::Unsupported(if msg.is_empty() {
                    format!("the exec proxy exited ({st}) before the process started")
                } else {
                    msg
                }));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(OciError::Unsupported(
                    "the exec'd process did not start within 60 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exec proxy `exec --detach` spawned: runs the staged process
    /// ([`OciRuntime::exec_process`]); its errors before the start go to the
    /// staged file's `.err`, for `exec` to report.
    pub fn exec_proxy(
        &self,
        id: &str,
        staged: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        signals: Receiver<Control>,
    ) -> Result<i32, OciError> {
        let err_path = staged.with_extension("err");
        let result = std::fs::read(staged)
            .map_err(io("read", staged))
            .and_then(|bytes| {
                let _ = std::fs::remove_file(staged);
                serde_json::from_slice::<RunSpec>(&bytes)
                    .map_err(|e| OciError::Unsupported(format!("bad staged process: {e}")))
            })
            .and_then(|spec| self.exec_process(id, spec, Some(pid_file), console_socket, signals));
        if let Err(e) = &result
            && !pid_file.exists()
        {
            let _ = std::fs::write(&err_path, error_chain(e));
        }
        result
    }

    /// Runs `spec` in the container with this process's stdio (or a pty
    /// sent over `console_socket`), writes this process's pid to
    /// `pid_file` once it started, passes on what arrives on `signals`,
    /// and returns its exit code (128+N for signal N).
    pub fn exec_process(
        &self,
        id: &str,
        spec: RunSpec,
        pid_file: Option<&Path>,
        console_socket: Option<&Path>,
        signals: Receiver<Control>,
    ) -> Result<i32, OciError> {
        let c = self.find(id)?;
        let (tty, term_size) = (spec.tty, spec.term_size);
        let console = match (tty, console_socket) {
            (true, Some(s)) => Some(open_console(s, spec.term_size)?),
            (true, None) => {
                return Err(OciError::Unsupported(
                    "process.terminal is set but no --console-socket was given".into(),
                ));
            }
            _ => None,
        };
        let mut session = self.engine.exec(&c.id, spec, false)?;
        match session.recv().map_err(EngineError::from)? {
            Some(CtlEvent::Started) => {}
            Some(CtlEvent::Error { message, .. }) => return Err(OciError::Unsupported(message)),
            other => {
                return Err(OciError::Unsupported(format!(
                    "unexpected answer from the monitor: {other:?}"
                )));
            }
        }
        let me = std::process::id();
        let execs = c.dir().join("execs");
        let _ = std::fs::create_dir_all(&execs);
        let marker = execs.join(me.to_string());
        let _ = std::fs::write(&marker, b"");
        // As runc puts an exec'd process in the container's cgroup.
        if let Some(cg) = c.config.oci.as_ref().and_then(|o| o.cgroup.as_ref())
            && let Err(e) = crate::cgroup::add(cg, me)
        {
            log::warn!("exec: {}", error_chain(&e));
        }
        if let Some(p) = pid_file {
            write_pid_file(p, me)?;
        }
        let (mut input, mut out, mut err): (File, File, Option<File>) = match console {
            Some(tty) => {
                let input = tty.try_clone().map_err(io("use", Path::new("the pty")))?;
                let resizes = Resizes {
                    tty: tty.try_clone().map_err(io("use", Path::new("the pty")))?,
                    initial: term_size,
                };
                let w = session.writer();
                std::thread::spawn(move || {
                    resizes.watch(&|| true, &mut |sz| {
                        let _ = w.send(&CtlRequest::Resize {
                            rows: sz.rows,
                            cols: sz.cols,
                        });
                    })
                });
                (input, tty, None)
            }
            None => {
                let dup = |f: std::io::Result<OwnedFd>| {
                    f.map(File::from).map_err(io("use", Path::new("stdio")))
                };
                (
                    dup(std::io::stdin().as_fd().try_clone_to_owned())?,
                    dup(std::io::stdout().as_fd().try_clone_to_owned())?,
                    Some(dup(std::io::stderr().as_fd().try_clone_to_owned())?),
                )
            }
        };
        {
            let w = session.writer();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.send(&CtlRequest::Stdin {
                                data: buf[..n].to_vec(),
                            })
                            .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                let _ = w.send(&CtlRequest::CloseStdin);
            });
        }
        {
            let w = session.writer();
            std::thread::spawn(move || {
                while let Ok(c) = signals.recv() {
                    let req = match c {
                        Control::Signal(signo) => CtlRequest::Signal { signo },
                        Control::Resize(TermSize { rows, cols }) => {
                            CtlRequest::Resize { rows, cols }
                        }
                    };
                    if w.send(&req).is_err() {
                        break;
                    }
                }
            });
        }
        let code = loop {
            match session.recv() {
                Ok(Some(CtlEvent::Stdout { data })) => {
                    let _ = out.write_all(&data);
                }
                Ok(Some(CtlEvent::Stderr { data })) => {
                    let w: &mut File = err.as_mut().unwrap_or(&mut out);
                    let _ = w.write_all(&data);
                }
                Ok(Some(CtlEvent::Exited { code })) => break code,
                Ok(Some(CtlEvent::Error { message, code })) => {
                    log::error!("exec in {id}: {message}");
                    break code.unwrap_or(255);
                }
                Ok(Some(_)) => {}
                // The container (its VM) is gone: as a killed process.
                Ok(None) | Err(_) => break 137,
            }
        };
        let _ = std::fs::remove_file(&marker);
        Ok(code)
    }
}

/// The chain of an error's causes, joined with ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Writes a pid file as go-runc reads it: decimal digits, no newline,
/// atomically (a reader never sees it half-written).
pub fn write_pid_file(path: &Path, pid: u32) -> Result<(), OciError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(|| "pid".into(), |n| n.to_string_lossy())
    ));
    std::fs::write(&tmp, pid.to_string()).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("write", path))
}

/// Runs one hook with the state on its stdin, its output captured, within
/// its timeout.
fn run_hook(kind: &'static str, h: &HookSpec, state: &serde_json::Value) -> Result<(), OciError> {
    let fail = |detail: String| OciError::Hook {
        kind,
        path: h.path.clone(),
        detail,
    };
    let mut cmd = Command::new(&h.path);
    if let Some((argv0, rest)) = h.args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        cmd.args(rest);
    }
    cmd.env_clear();
    for kv in &h.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        cmd.env(k, v);
    }
    // Its output must not reach the caller's stdio (the shim reads that to
    // EOF): captured, and shown when it fails.
    let out_file = tempfile_in_tmp().map_err(|e| fail(e.to_string()))?;
    let mut child = cmd
        .stdin(ProcStdio::piped())
        .stdout(ProcStdio::from(
            out_file.try_clone().map_err(|e| fail(e.to_string()))?,
        ))
        .stderr(ProcStdio::from(
            out_file.try_clone().map_err(|e| fail(e.to_string()))?,
        ))
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let deadline = h.timeout_s.map(|t| Instant::now() + Duration::from_secs(t));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {} s",
                h.timeout_s.unwrap_or(0)
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut output = String::new();
    let mut f = out_file;
    let _ = std::io::Seek::rewind(&mut f);
    let _ = f.take(4096).read_to_string(&mut output);
    Err(fail(format!("{status}: {}", output.trim())))
}

/// An anonymous file for a hook's output.
fn tempfile_in_tmp() -> std::io::Result<File> {
    let fd = rustix::fs::memfd_create("husk-hook-output", rustix::fs::MemfdFlags::CLOEXEC)?;
    Ok(File::from(fd))
}

/// Opens a host pty, sends its master over the engine's console socket
/// (one SCM_RIGHTS fd, its name as the payload, as runc does) and returns
/// the replica, in raw mode (the guest's own pty does the line discipline).
fn open_console(socket: &Path, size: Option<TermSize>) -> Result<File, OciError> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let pty_err = |e: rustix::io::Errno| io("open a pty for", socket)(e.into());
    let master = rustix::pty::openpt(
        rustix::pty::OpenptFlags::RDWR
            | rustix::pty::OpenptFlags::NOCTTY
            | rustix::pty::OpenptFlags::CLOEXEC,
    )
    .map_err(pty_err)?;
    rustix::pty::grantpt(&master).map_err(pty_err)?;
    rustix::pty::unlockpt(&master).map_err(pty_err)?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(pty_err)?;
    let replica = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(pty_err)?;
    if let Ok(mut t) = rustix::termios::tcgetattr(&replica) {
        t.make_raw();
        let _ = rustix::termios::tcsetattr(&replica, rustix::termios::OptionalActions::Now, &t);
    }
    if let Some(sz) = size {
        let _ = rustix::termios::tcsetwinsize(
            &master,
            rustix::termios::Winsize {
                ws_row: sz.rows,
                ws_col: sz.cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        );
    }
    let stream = UnixStream::connect(socket).map_err(io("connect to", socket))?;
    let fds = [master.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(name.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| io("send the pty over", socket)(e.into()))?;
    Ok(File::from(replica))
}

/// Watches a pty's size (the engine resizes the master it holds).
pub(crate) struct Resizes {
    tty: File,
    /// The size the guest process started with (the spec's
    /// `consoleSize`), if any.
    initial: Option<TermSize>,
}

impl Resizes {
    /// Calls `each` with every new size while `alive()`.
    pub(crate) fn watch(&self, alive: &dyn Fn() -> bool, each: &mut dyn FnMut(TermSize)) {
        let mut last = self.initial;
        while alive() {
            if let Ok(w) = rustix::termios::tcgetwinsize(&self.tty)
                && let Some(sz) = next_size(last, w.ws_row, w.ws_col)
            {
                each(sz);
                last = Some(sz);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The size to send the guest when the pty is `rows` x `cols` and the
/// guest last heard `last`: none while the engine has not sized the pty
/// (0 x 0) or nothing changed. Engines that give no `consoleSize` (Docker
/// 20.10) size the pty only after `start`: that first size must reach the
/// guest too, which started at its default.
fn next_size(last: Option<TermSize>, rows: u16, cols: u16) -> Option<TermSize> {
    let sz = TermSize { rows, cols };
    (rows > 0 && cols > 0 && last != Some(sz)).then_some(sz)
}

/// The container's stdio as the monitor holds them.
#[derive(Debug)]
pub struct OciStdio {
    kind: StdioKind,
}

#[derive(Debug)]
enum StdioKind {
    /// The fds 0/1/2 `create` inherited.
    Pipes {
        stdin: File,
        stdout: File,
        stderr: File,
    },
    /// The replica of the pty whose master went to the console socket.
    Terminal {
        tty: File,
        /// The size the main process starts with.
        size: Option<TermSize>,
    },
}

impl OciStdio {
    /// First thing in an OCI monitor: keeps copies of the inherited fds
    /// 0/1/2 (the container's), points 0 and 1 at /dev/null and 2 at the
    /// container's `monitor.log` (so nothing of husk's reaches the
    /// container's streams), joins the spec's network namespace when it
    /// names one, and with a terminal sends a pty over the console socket.
    pub(crate) fn take(root: &Path, id: &str) -> Result<OciStdio, OciError> {
        let dup =
            |f: std::io::Result<OwnedFd>| f.map(File::from).map_err(io("use", Path::new("stdio")));
        let stdin = dup(std::io::stdin().as_fd().try_clone_to_owned())?;
        let stdout = dup(std::io::stdout().as_fd().try_clone_to_owned())?;
        let stderr = dup(std::io::stderr().as_fd().try_clone_to_owned())?;
        let c = ContainerStore::open(root)
            .and_then(|s| s.find(id))
            .map_err(EngineError::from)?;
        let log_path = c.dir().join("monitor.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(io("open", Path::new("/dev/null")))?;
        let redirect = |e: rustix::io::Errno| io("redirect the stdio of", &log_path)(e.into());
        rustix::stdio::dup2_stdin(&null).map_err(redirect)?;
        rustix::stdio::dup2_stdout(&null).map_err(redirect)?;
        rustix::stdio::dup2_stderr(&log).map_err(redirect)?;
        let oci = c.config.oci.as_ref();
        if let Some(NetNs::Path(p)) = oci.map(|o| &o.netns) {
            let ns = File::open(p).map_err(io("open the network namespace", p))?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| io("join the network namespace", p)(e.into()))?;
        }
        let kind = match oci.and_then(|o| o.console_socket.as_ref()) {
            Some(socket) if c.config.spec.tty => StdioKind::Terminal {
                tty: open_console(socket, c.config.spec.term_size)?,
                size: c.config.spec.term_size,
            },
            _ => StdioKind::Pipes {
                stdin,
                stdout,
                stderr,
            },
        };
        Ok(OciStdio { kind })
    }

    /// A watcher of the terminal's size, with a terminal.
    pub(crate) fn resizes(&self) -> Option<Resizes> {
        match &self.kind {
            StdioKind::Terminal { tty, size } => tty.try_clone().ok().map(|tty| Resizes {
                tty,
                initial: *size,
            }),
            StdioKind::Pipes { .. } => None,
        }
    }

    /// The main process's stdio.
    pub(crate) fn into_stdio(self) -> Stdio {
        match self.kind {
            StdioKind::Pipes {
                stdin,
                stdout,
                stderr,
            } => Stdio {
                stdin: Some(Box::new(stdin)),
                stdout: Box::new(stdout),
                stderr: Box::new(stderr),
            },
            StdioKind::Terminal { tty, .. } => match tty.try_clone() {
                Ok(input) => Stdio {
                    stdin: Some(Box::new(input)),
                    stdout: Box::new(tty),
                    stderr: Box::new(std::io::sink()),
                },
                Err(e) => {
                    log::warn!("cannot use the terminal's input: {e}");
                    Stdio {
                        stdin: None,
                        stdout: Box::new(tty),
                        stderr: Box::new(std::io::sink()),
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_made_inside_the_root_even_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        make_mount_point(&root, "/data/deep/", false).unwrap();
        assert!(root.join("data/deep").is_dir());
        make_mount_point(&root, "/etc/hosts", true).unwrap();
        assert!(root.join("etc/hosts").is_file());
        // Already there: nothing changes.
        std::fs::write(root.join("etc/hosts"), "x").unwrap();
        make_mount_point(&root, "/etc/hosts", true).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "x"
        );
        // A hostile image: symlinks to the host's paths, absolute and
        // climbing out, resolve in the root.
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("up")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("host")).unwrap();
        std::fs::create_dir(root.join("outside")).unwrap();
        make_mount_point(&root, "/abs/x", false).unwrap();
        assert!(root.join("etc/x").is_dir());
        make_mount_point(&root, "/up/y", true).unwrap();
        assert!(root.join("outside/y").is_file());
        // Leading nowhere in the root: refused, and nothing made outside.
        assert!(make_mount_point(&root, "/host/z", false).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(make_mount_point(&root, "/a/../b", false).is_err());
    }

    #[test]
    fn the_first_size_an_engine_gives_the_pty_reaches_the_guest() {
        let sz = |rows, cols| TermSize { rows, cols };
        // Docker 20.10: no consoleSize, the pty is 0 x 0 until the client
        // resizes it after start.
        assert_eq!(next_size(None, 0, 0), None);
        assert_eq!(next_size(None, 24, 80), Some(sz(24, 80)));
        assert_eq!(next_size(Some(sz(24, 80)), 24, 80), None);
        assert_eq!(next_size(Some(sz(24, 80)), 50, 132), Some(sz(50, 132)));
        // A half-set size is not a size.
        assert_eq!(next_size(Some(sz(24, 80)), 0, 132), None);
    }

    fn bundle(config: &str) -> (tempfile::TempDir, Spec) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs/etc")).unwrap();
        std::fs::write(dir.path().join("hosts"), b"127.0.0.1 localhost\n").unwrap();
        std::fs::create_dir(dir.path().join("vol")).unwrap();
        let config = config.replace("BUNDLE", &dir.path().display().to_string());
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let spec = Spec::load(dir.path().join("config.json")).unwrap();
        (dir, spec)
    }

    const DOCKER_LIKE: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]},
            "args": ["sh", "-c", "exit 3"],
            "env": ["PATH=/bin", "A=b=c"],
            "cwd": "/tmp",
            "capabilities": {"bounding": ["CAP_CHOWN"]}
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "web1",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/dev/shm", "type": "bind", "source": "BUNDLE/vol", "options": ["rbind"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            {"destination": "/etc/hosts", "type": "bind", "source": "BUNDLE/hosts", "options": ["rbind", "rprivate", "ro"]},
            {"destination": "/data/", "type": "bind", "source": "BUNDLE/vol", "options": ["rbind", "rw"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/weird", "type": "nfs", "source": "x"}
        ],
        "hooks": {"prestart": [{"path": "/bin/true", "args": ["true", "x"], "timeout": 5}]},
        "annotations": {"io.husk.cpus": "2"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}],
            "cgroupsPath": "/docker/abc",
            "resources": {"memory": {"limit": 536870912}, "cpu": {"shares": 512}, "pids": {"limit": 100}}
        }
    }"#;

    #[test]
    fn a_docker_like_bundle_translates() {
        let (dir, spec) = bundle(DOCKER_LIKE);
        let t = translate(dir.path(), &spec, VmSettings::default()).unwrap();
        let c = &t.config;
        assert_eq!(
            c.rootfs,
            std::fs::canonicalize(dir.path().join("rootfs")).unwrap()
        );
        assert_eq!(c.rootfs_via, RootfsVia::Bundle { read_only: true });
        assert_eq!(
            c.spec.argv,
            vec![b"sh".to_vec(), b"-c".to_vec(), b"exit 3".to_vec()]
        );
        assert!(c.spec.main && !c.spec.tty);
        assert_eq!((c.spec.uid, c.spec.gid), (1000, 1000));
        assert_eq!(c.spec.additional_gids, vec![10, 20]);
        assert_eq!(c.spec.cwd.as_deref(), Some(&b"/tmp"[..]));
        assert!(c.spec.env.contains(&(b"A".to_vec(), b"b=c".to_vec())));
        assert_eq!(c.hostname.as_deref(), Some("web1"));
        // The system mounts are the guest's; binds are shares (files too).
        let guests: Vec<&str> = c.volumes.iter().map(|v| v.guest.as_str()).collect();
        assert_eq!(guests, vec!["/etc/hosts", "/data"]);
        assert!(c.volumes[0].read_only && !c.volumes[1].read_only);
        assert_eq!(c.tmpfs, vec!["/run".to_string()]);
        assert!(
            t.warnings.iter().any(|w| w.contains("/weird")),
            "{:?}",
            t.warnings
        );
        // The annotation wins over the spec for vCPUs; memory from the
        // limit, less what the VMM takes of it.
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.mem_size, (512 - crate::cgroup::VMM_OVERHEAD_MIB) << 20);
        let oci = c.config_oci();
        let cg = oci.cgroup.as_ref().unwrap();
        assert_eq!(cg.path, "/docker/abc");
        assert_eq!(cg.limits.memory, Some(512 << 20));
        assert_eq!(cg.limits.cpu_shares, Some(512));
        assert_eq!(cg.limits.pids, Some(100));
        assert_eq!(oci.netns, NetNs::New);
        assert_eq!(oci.hooks.prestart.len(), 1);
        assert_eq!(oci.hooks.prestart[0].args, vec!["true", "x"]);
        assert_eq!(oci.hooks.prestart[0].timeout_s, Some(5));
    }

    trait OciOf {
        fn config_oci(&self) -> &OciConfig;
    }
    impl OciOf for ContainerConfig {
        fn config_oci(&self) -> &OciConfig {
            self.oci.as_ref().unwrap()
        }
    }

    #[test]
    fn an_absolute_root_and_defaults() {
        let (dir, _) = bundle("{}");
        let root = dir.path().join("rootfs");
        let text = format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"{}"}},
                "process":{{"args":["true"],"cwd":"/","user":{{"uid":0,"gid":0}},"terminal":true,
                            "consoleSize":{{"height":40,"width":120}}}},
                "linux":{{"namespaces":[{{"type":"network","path":"/proc/1/ns/net"}}],
                          "resources":{{"cpu":{{"quota":150000,"period":100000}}}}}}}}"#,
            root.display()
        );
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        let spec = Spec::load(dir.path().join("config.json")).unwrap();
        let t = translate(dir.path(), &spec, VmSettings::default()).unwrap();
        let c = &t.config;
        assert_eq!(c.rootfs_via, RootfsVia::Bundle { read_only: false });
        assert_eq!(c.mem_size, DEFAULT_MEMORY_MIB << 20);
        assert_eq!(c.vcpus, 2, "1.5 CPUs of quota round up");
        assert!(c.spec.tty);
        assert_eq!(
            c.spec.term_size,
            Some(TermSize {
                rows: 40,
                cols: 120
            })
        );
        assert_eq!(c.config_oci().netns, NetNs::Path("/proc/1/ns/net".into()));
    }

    #[test]
    fn what_husk_cannot_do_is_refused() {
        let base = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"args":ARGS,"cwd":"CWD","user":{"uid":0,"gid":0}},
            "linux":{"namespaces":NS}, "annotations": ANN}"#;
        let case = |args: &str, cwd: &str, ns: &str, ann: &str| {
            let (dir, spec) = bundle(
                &base
                    .replace("ARGS", args)
                    .replace("CWD", cwd)
                    .replace("NS", ns)
                    .replace("ANN", ann),
            );
            translate(dir.path(), &spec, VmSettings::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let net = r#"[{"type":"network"}]"#;
        assert!(case(r#"["true"]"#, "/", "[]", "{}").contains("--network host"));
        assert!(case("[]", "/", net, "{}").contains("process.args"));
        assert!(case(r#"["true"]"#, "rel", net, "{}").contains("absolute"));
        assert!(case(r#"["true"]"#, "/", net, r#"{"io.husk.memory":"lots"}"#).contains("MiB"));
        assert!(case(r#"["true"]"#, "/", net, r#"{"io.husk.cpus":"0"}"#).contains("io.husk.cpus"));
        assert_eq!(
            case(r#"["true"]"#, "/", net, r#"{"io.husk.memory":"1024"}"#),
            ""
        );
    }

    /// Docker 20.10's spec for `docker run --ulimit nofile=1024:2048
    /// --sysctl net.ipv4.ip_forward=1 --security-opt no-new-privileges`.
    const DOCKER_SECURITY: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0, "umask": 18},
            "args": ["sh"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"],
                "effective": ["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"],
                "permitted": ["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}, {"type": "RLIMIT_NPROC", "hard": 500, "soft": 400}],
            "noNewPrivileges": true,
            "oomScoreAdj": 0
        },
        "root": {"path": "rootfs"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}],
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
            "maskedPaths": ["/proc/asound","/proc/acpi","/proc/kcore","/proc/keys","/proc/latency_stats","/proc/timer_list","/proc/timer_stats","/proc/sched_debug","/proc/scsi","/sys/firmware"],
            "readonlyPaths": ["/proc/bus","/proc/fs","/proc/irq","/proc/sys","/proc/sysrq-trigger"]
        }
    }"#;

    /// Docker's default capabilities as a mask.
    const DOCKER_CAPS: u64 = 1 << 0
        | 1 << 1
        | 1 << 4
        | 1 << 3
        | 1 << 27
        | 1 << 13
        | 1 << 6
        | 1 << 7
        | 1 << 31
        | 1 << 8
        | 1 << 10
        | 1 << 18
        | 1 << 5
        | 1 << 29;

    #[test]
    fn docker_security_settings_reach_the_run_spec() {
        let (dir, spec) = bundle(DOCKER_SECURITY);
        let t = translate(dir.path(), &spec, VmSettings::default()).unwrap();
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let r = &t.config.spec;
        assert_eq!(
            r.rlimits,
            vec![
                husk_protocol::Rlimit {
                    resource: 7,
                    soft: 1024,
                    hard: 2048
                },
                husk_protocol::Rlimit {
                    resource: 6,
                    soft: 400,
                    hard: 500
                },
            ]
        );
        assert_eq!(
            r.capabilities,
            Some(husk_protocol::Capabilities {
                bounding: DOCKER_CAPS,
                effective: DOCKER_CAPS,
                permitted: DOCKER_CAPS,
                inheritable: 0,
                ambient: 0,
            })
        );
        assert_eq!(
            DOCKER_CAPS, 0xa80425fb,
            "Docker's default set, as runc shows it"
        );
        assert!(r.no_new_privileges);
        assert_eq!(r.umask, Some(0o022));
        assert_eq!(r.oom_score_adj, Some(0));
        assert_eq!(r.masked_paths.len(), 10);
        assert_eq!(r.masked_paths[2], b"/proc/kcore");
        assert_eq!(r.readonly_paths[3], b"/proc/sys");
        assert_eq!(
            r.sysctls,
            vec![
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
                ("net.ipv4.ip_forward".to_string(), "1".to_string()),
            ]
        );
        r.check().unwrap();

        // Without any of them (husk's own processes), nothing is set.
        let (dir, spec) = bundle(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
                "process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},
                "linux":{"namespaces":[{"type":"network"}]}}"#,
        );
        let r = translate(dir.path(), &spec, VmSettings::default())
            .unwrap()
            .config
            .spec;
        assert_eq!(r.capabilities, None);
        assert!(r.rlimits.is_empty() && r.masked_paths.is_empty() && r.sysctls.is_empty());
        assert!(!r.no_new_privileges && r.umask.is_none() && r.oom_score_adj.is_none());
    }

    #[test]
    fn bad_sysctls_and_paths_are_refused_at_create() {
        let err = |linux: &str| {
            let config = DOCKER_SECURITY.replace(
                r#""sysctl": {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},"#,
                linux,
            );
            let (dir, spec) = bundle(&config);
            translate(dir.path(), &spec, VmSettings::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        for bad in [
            "net/ipv4/ip_forward",
            "../../etc/passwd",
            "net..ipv4",
            "net.ipv4.ip_forward/../../x",
            "",
            "NET.IPV4",
            "net.ipv4.ip forward",
        ] {
            let e = err(&format!(r#""sysctl": {{"{bad}": "1"}},"#));
            assert!(e.contains("linux.sysctl: invalid name"), "{bad}: {e}");
        }
        assert!(err(r#""sysctl": {"kernel.x": "a\u0000b"},"#).contains("without NUL"));
        assert_eq!(
            err(r#""sysctl": {"net.ipv4.conf.all.rp_filter": "2"},"#),
            ""
        );
        let config = DOCKER_SECURITY.replace(r#""/proc/kcore""#, r#""/proc/../etc""#);
        let (dir, spec) = bundle(&config);
        let e = translate(dir.path(), &spec, VmSettings::default()).unwrap_err();
        assert!(e.to_string().contains("linux.maskedPaths"), "{e}");
        let config = DOCKER_SECURITY.replace(r#""/proc/sys""#, r#""relative""#);
        let (dir, spec) = bundle(&config);
        let e = translate(dir.path(), &spec, VmSettings::default()).unwrap_err();
        assert!(e.to_string().contains("linux.readonlyPaths"), "{e}");
        // Effective outside permitted cannot be set (capset(2) refuses it).
        let config = DOCKER_SECURITY.replace(
            r#""effective": ["CAP_CHOWN","#,
            r#""effective": ["CAP_SYS_ADMIN","CAP_CHOWN","#,
        );
        let (dir, spec) = bundle(&config);
        let e = translate(dir.path(), &spec, VmSettings::default()).unwrap_err();
        assert!(e.to_string().contains("effective capabilities"), "{e}");
    }

    #[test]
    fn unknown_capability_names_are_left_out_with_a_warning() {
        let config = DOCKER_SECURITY.replace(
            r#""bounding": ["CAP_CHOWN","#,
            r#""bounding": ["CAP_FUTURE_THING","CAP_CHOWN","#,
        );
        assert!(
            serde_json::from_str::<Spec>(&config).is_err(),
            "oci-spec refuses it"
        );
        let mut warnings = Vec::new();
        let spec: Spec = parse_lenient(config.as_bytes(), true, &mut warnings).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("CAP_FUTURE_THING"), "{warnings:?}");
        let r = process_spec(spec.process().as_ref().unwrap()).unwrap();
        assert_eq!(r.capabilities.unwrap().bounding, DOCKER_CAPS);
        // A good spec parses strictly, without warnings; a bad one (not a
        // capability) still fails.
        let mut warnings = Vec::new();
        parse_lenient::<Spec>(DOCKER_SECURITY.as_bytes(), true, &mut warnings).unwrap();
        assert!(warnings.is_empty());
        let bad = DOCKER_SECURITY.replace(r#""RLIMIT_NOFILE""#, r#""RLIMIT_BOGUS""#);
        assert!(parse_lenient::<Spec>(bad.as_bytes(), true, &mut warnings).is_err());
        assert!(warnings.is_empty());

        // An exec's process JSON: its own capabilities and rlimits.
        let exec = r#"{"user":{"uid":1000,"gid":1000},"args":["id"],"cwd":"/",
            "capabilities":{"bounding":["CAP_KILL","CAP_NOPE"],"effective":[],"permitted":[],
                            "inheritable":["CAP_KILL"],"ambient":["CAP_KILL"]},
            "rlimits":[{"type":"RLIMIT_CORE","hard":0,"soft":0}],"noNewPrivileges":true}"#;
        let mut warnings = Vec::new();
        let p: Process = parse_lenient(exec.as_bytes(), false, &mut warnings).unwrap();
        assert!(warnings[0].contains("CAP_NOPE"), "{warnings:?}");
        // Ambient needs permitted too: refused before anything starts.
        let e = process_spec(&p).unwrap_err().to_string();
        assert!(e.contains("ambient"), "{e}");
        let exec = exec.replace(r#""permitted":[]"#, r#""permitted":["CAP_KILL"]"#);
        let p: Process = parse_lenient(exec.as_bytes(), false, &mut warnings).unwrap();
        let r = process_spec(&p).unwrap();
        assert!(!r.main && r.no_new_privileges);
        assert_eq!(
            r.capabilities,
            Some(husk_protocol::Capabilities {
                bounding: 1 << 5,
                effective: 0,
                permitted: 1 << 5,
                inheritable: 1 << 5,
                ambient: 1 << 5,
            })
        );
        assert_eq!(r.rlimits[0].resource, 4);
    }

    #[test]
    fn every_capability_has_its_linux_number() {
        for (n, name) in CAPABILITY_NAMES.iter().enumerate() {
            let c: Capability = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(cap_number(c) as usize, n, "{name}");
        }
        assert_eq!(features()["linux"]["capabilities"][21], "CAP_SYS_ADMIN");
    }

    #[test]
    fn statuses_follow_the_spec() {
        let (dir, spec) = bundle(DOCKER_LIKE);
        let t = translate(dir.path(), &spec, VmSettings::default()).unwrap();
        let store = ContainerStore::open(dir.path()).unwrap();
        let mut c = store.create(Some("abc"), t.config).unwrap();
        assert_eq!(status_of(&c), "stopped", "never started: no monitor");
        c.state.status = Status::Running;
        assert_eq!(status_of(&c), "created");
        c.state.main_started = true;
        assert_eq!(status_of(&c), "running");
        c.state.status = Status::Paused;
        assert_eq!(status_of(&c), "paused");
        c.state.status = Status::Running;
        c.state.main_started = false;
        c.state.exit_code = Some(3);
        assert_eq!(status_of(&c), "stopped", "exited, the monitor finishing");
        c.state.pid = Some(42);
        let s = state_json(&c);
        assert_eq!(s["id"], "abc");
        assert_eq!(s["status"], "stopped");
        assert_eq!(s["pid"], 0);
        assert_eq!(s["ociVersion"], OCI_VERSION);
        assert_eq!(s["annotations"]["io.husk.cpus"], "2");
        assert!(s["created"].as_str().unwrap().ends_with('Z'));
        c.state.exit_code = None;
        c.state.main_started = true;
        assert_eq!(state_json(&c)["pid"], 42);
    }

    #[test]
    fn pid_files_are_digits_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init.pid");
        write_pid_file(&p, 4242).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"4242");
        write_pid_file(&p, 7).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"7");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn hooks_get_the_state_and_their_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("state");
        let state = serde_json::json!({"id": "x", "pid": 1});
        let ok = HookSpec {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), format!("cat > {}", out.display())],
            env: vec![],
            timeout_s: Some(10),
        };
        run_hook("prestart", &ok, &state).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got, state);
        let bad = HookSpec {
            args: vec!["sh".into(), "-c".into(), "echo nope >&2; exit 2".into()],
            ..ok.clone()
        };
        let e = run_hook("prestart", &bad, &state).unwrap_err().to_string();
        assert!(
            e.contains("prestart hook /bin/sh failed") && e.contains("nope"),
            "{e}"
        );
        let slow = HookSpec {
            args: vec!["sh".into(), "-c".into(), "sleep 5".into()],
            timeout_s: Some(1),
            ..ok
        };
        assert!(
            run_hook("poststop", &slow, &state)
                .unwrap_err()
                .to_string()
                .contains("timed out")
        );
    }

    #[test]
    fn features_name_the_annotations() {
        let f = features();
        assert_eq!(f["ociVersionMax"], OCI_VERSION);
        assert!(f["annotations"]["io.husk.memory"].is_string());
    }
}
