//! Containers that outlive their microVM: `husk run` without `--rm` leaves
//! one behind, `husk start` runs it again on the same writable layer, `husk
//! ps -a` lists them and `husk rm` removes them, as with Docker.
//!
//! A container is a directory `<root>/containers/<id>/`:
//!
//! * `config.json`: what to run and on what (the process, the image's id and
//!   unpacked rootfs, volumes, memory, vCPUs), its name and creation time;
//! * `state.json`: created, running (with the pid of the `husk` process that
//!   holds its VM) or exited (with the exit code), written atomically;
//! * `running.lock`: locked (`flock`) by the `husk` process running the
//!   container, so a crashed `husk` leaves a container that reads as exited
//!   rather than one stuck "running", and two `husk start`s of one container
//!   cannot overlap;
//! * `rw/upper` and `rw/work`: the container's writable layer. The guest
//!   mounts `rw/` over virtio-fs (read-write, tag `upper`) and puts its
//!   overlay's upper and work directories there, so what the container
//!   writes is kept on the host until `husk rm`. The image's rootfs below is
//!   shared read-only by every container of the image and never changes.
//!
//! The store knows nothing about images: the caller passes the rootfs
//! directory and the image's id and keeps the image's rootfs lease while the
//! container runs.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use husk_protocol::RunSpec;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::Volume;
use crate::logs::LogConfig;

/// Errors of the container store.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A file or directory of the store could not be used.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A container's files are not what husk wrote.
    #[error("container record {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// No container has that id, id prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An id prefix names several containers.
    #[error("multiple containers match {0:?}: give more of the id")]
    Ambiguous(String),
    /// The name is taken or malformed.
    #[error("{0}")]
    BadName(String),
    /// The container is running and `force` was not given.
    #[error(
        "cannot remove container {0}: it is running (stop it, or use --force to kill and remove it)"
    )]
    Running(String),
    /// The container is already running (`husk start` of a running one).
    #[error("container {0} is already running")]
    AlreadyRunning(String),
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// What a container runs, fixed when it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The image as the user named it (or the `--rootfs` directory).
    pub image: String,
    /// The image's id (`sha256:…`), or `None` for a `--rootfs` container.
    pub image_id: Option<String>,
    /// The read-only root directory under the container's writable layer.
    pub rootfs: PathBuf,
    /// The main process.
    pub spec: RunSpec,
    /// Host paths mounted into the container.
    pub volumes: Vec<Volume>,
    /// Paths mounted as fresh tmpfs (`--tmpfs`).
    pub tmpfs: Vec<String>,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The container's hostname (`--hostname`; default: the short id).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The signal `stop` sends first (`--stop-signal`, else the image's
    /// StopSignal, else SIGTERM), as a number.
    #[serde(default)]
    pub stop_signal: Option<i32>,
    /// Seconds `stop` waits before SIGKILL (`--stop-timeout`; default 10).
    #[serde(default)]
    pub stop_timeout: Option<u64>,
    /// `--restart`.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// `--log-opt`.
    #[serde(default)]
    pub log: LogConfig,
    /// The main process's stdin stays open for `attach` (`-i`).
    #[serde(default)]
    pub open_stdin: bool,
    /// Remove the container when it exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// How the root directory reaches the guest.
    #[serde(default)]
    pub rootfs_via: crate::RootfsVia,
    /// The guest kernel, agent and boot settings.
    #[serde(default)]
    pub vm: VmSettings,
    /// `--network`, `-p` and the rest (containers created before husk had
    /// networking have `--network none`).
    #[serde(default)]
    pub network: crate::net::NetworkConfig,
    /// Created from an OCI bundle by an engine (`husk oci create`): its
    /// bundle, hooks and stdio; `None` for husk's own containers.
    #[serde(default)]
    pub oci: Option<crate::oci::OciConfig>,
}

/// What boots a container's VM, fixed at create time (Docker's
/// `HostConfig.Runtime`, in effect).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct VmSettings {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest agent (static).
    pub agent: PathBuf,
    /// Seconds to wait for the agent after the VM starts.
    pub boot_timeout_s: u64,
    /// Extra kernel command-line arguments.
    pub kernel_args: String,
    /// Copy the guest console to the monitor's log.
    pub console: bool,
}

/// Docker's `--restart` policy, carried out by the monitor while it lives
/// (nothing restarts containers after the host reboots).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When the main process exits non-zero, at most this many times
    /// (`None`: without limit).
    OnFailure(Option<u32>),
    /// Always, until stopped.
    Always,
    /// As `always`; the difference (after a daemon restart) does not arise
    /// in husk, which has no daemon.
    UnlessStopped,
}

impl RestartPolicy {
    /// Parses `no`, `on-failure[:N]`, `always`, `unless-stopped`.
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        Ok(match s.split_once(':') {
            None if s == "no" => RestartPolicy::No,
            None if s == "always" => RestartPolicy::Always,
            None if s == "unless-stopped" => RestartPolicy::UnlessStopped,
            None if s == "on-failure" => RestartPolicy::OnFailure(None),
            Some(("on-failure", n)) => RestartPolicy::OnFailure(Some(n.parse().map_err(|_| {
                format!("invalid restart policy {s:?}: the count must be a number")
            })?)),
            Some(("always" | "no" | "unless-stopped", _)) => {
                return Err(format!(
                    "invalid restart policy {s:?}: maximum retry count can only be used with 'on-failure'"
                ));
            }
            _ => {
                return Err(format!(
                    "invalid restart policy {s:?}: expected no, on-failure[:N], always or unless-stopped"
                ));
            }
        })
    }

    /// Docker's name for it (`HostConfig.RestartPolicy.Name`).
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure(_) => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    /// Whether a main process that exited with `code` is started again,
    /// after `restarts` restarts, unless the user stopped it.
    pub fn restarts(self, code: i32, restarts: u32, stopped_by_user: bool) -> bool {
        if stopped_by_user {
            return false;
        }
        match self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure(max) => code != 0 && max.is_none_or(|m| restarts < m),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }
}

/// A container's record: identity plus configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    id: String,
    name: String,
    /// Seconds since the epoch.
    created: u64,
    config: ContainerConfig,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Never started.
    Created,
    /// Its monitor runs it (booting, or its main process running).
    Running,
    /// Running, with the VM's vCPUs stopped.
    Paused,
    /// Its main process exited and the restart policy starts it again.
    Restarting,
    /// Its main process has exited (or its monitor died).
    Exited,
}

impl Status {
    /// Docker's `State.Status` word.
    pub fn word(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
        }
    }

    /// A monitor owns the container (running, paused or restarting).
    pub fn is_live(self) -> bool {
        matches!(self, Status::Running | Status::Paused | Status::Restarting)
    }
}

/// A container's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Where it is.
    pub status: Status,
    /// The monitor process running it.
    pub pid: Option<u32>,
    /// The monitor's start time (clock ticks after boot, from
    /// `/proc/PID/stat`), which tells it from a later process that got the
    /// same pid.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The main process's exit code (128+N for signal N); `None` if it is
    /// unknown (the monitor failed or was killed).
    pub exit_code: Option<i32>,
    /// Seconds since the epoch.
    pub started_at: Option<u64>,
    /// Seconds since the epoch.
    pub finished_at: Option<u64>,
    /// How often the restart policy started it again.
    #[serde(default)]
    pub restart_count: u32,
    /// The main process has started (in this run).
    #[serde(default)]
    pub main_started: bool,
    /// Why the last start failed, for people.
    #[serde(default)]
    pub error: Option<String>,
    /// What its network is in this run (while it runs).
    #[serde(default)]
    pub network: Option<crate::net::NetworkState>,
}

impl State {
    fn created() -> State {
        State {
            status: Status::Created,
            pid: None,
            pid_start: None,
            exit_code: None,
            started_at: None,
            finished_at: None,
            restart_count: 0,
            main_started: false,
            error: None,
            network: None,
        }
    }
}

/// A container as `husk ps` shows it.
#[derive(Debug, Clone)]
pub struct Container {
    /// 64 hex digits.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// What it runs.
    pub config: ContainerConfig,
    /// Its state (running only if a `husk` process really holds it).
    pub state: State,
    dir: PathBuf,
}

impl Container {
    /// The first 12 digits of the id, as Docker shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// The directory shared read-write with the guest: the writable layer's
    /// `upper/` and overlay's `work/` are inside.
    pub fn rw_dir(&self) -> PathBuf {
        self.dir.join("rw")
    }

    /// The container's writable layer on the host (the overlay's upper
    /// directory): what the container created or changed.
    pub fn upper_dir(&self) -> PathBuf {
        self.dir.join("rw/upper")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The container's directory (0700): its records, writable layer, log,
    /// control socket and VM files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the running VM's socket, initramfs and console log go.
    pub fn sandbox_dir(&self) -> PathBuf {
        self.dir.join("sandbox")
    }

    /// The guest console of the container's last boot (kept after the VM
    /// stops, replaced at the next start).
    pub fn console_log_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The current file of the container's json-file log.
    pub fn log_path(&self) -> PathBuf {
        crate::logs::log_path(&self.dir, &self.id)
    }

    /// The name shown as the container's hostname.
    pub fn hostname(&self) -> String {
        self.config
            .hostname
            .clone()
            .unwrap_or_else(|| self.short_id().to_owned())
    }

    /// Marks the container running in this process (its monitor), for as
    /// long as the returned guard lives; it fails if another process runs
    /// it.
    pub fn begin(&mut self) -> Result<RunGuard, ContainerError> {
        let lock_path = self.dir.join("running.lock");
        let Some(lock) = try_lock(&lock_path)? else {
            return Err(ContainerError::AlreadyRunning(self.name.clone()));
        };
        let me = std::process::id();
        self.state = State {
            status: Status::Running,
            pid: Some(me),
            pid_start: process_start_time(me),
            exit_code: None,
            started_at: Some(now()),
            finished_at: None,
            restart_count: 0,
            main_started: false,
            error: None,
            network: None,
        };
        write_json(&self.state_path(), &self.state)?;
        Ok(RunGuard {
            state_path: self.state_path(),
            state: self.state.clone(),
            _lock: lock,
        })
    }
}

/// Held by a container's monitor while it runs the container;
/// [`RunGuard::finish`] records the exit. Dropped without `finish`, the
/// container reads as exited with an unknown code.
#[derive(Debug)]
pub struct RunGuard {
    state_path: PathBuf,
    state: State,
    _lock: File,
}

impl RunGuard {
    /// The state as last written.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Changes the state and writes it atomically.
    pub fn update(&mut self, f: impl FnOnce(&mut State)) -> Result<(), ContainerError> {
        f(&mut self.state);
        write_json(&self.state_path, &self.state)
    }

    /// Records how the main process ended (`None`: unknown).
    pub fn finish(mut self, exit_code: Option<i32>) -> Result<(), ContainerError> {
        self.state.exit_code = exit_code;
        self.record_exit()
    }

    fn record_exit(&mut self) -> Result<(), ContainerError> {
        self.state.status = Status::Exited;
        self.state.pid = None;
        self.state.pid_start = None;
        self.state.network = None;
        self.state.finished_at = Some(now());
        write_json(&self.state_path, &self.state)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.state.status != Status::Exited {
            let _ = self.record_exit();
        }
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, clock
/// ticks after boot), or `None` if there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 on; the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the monitor that `state` names still runs (the same process,
/// not a later one with its pid).
pub fn monitor_alive(state: &State) -> bool {
    match (state.pid, state.pid_start) {
        (Some(pid), Some(start)) => process_start_time(pid) == Some(start),
        _ => false,
    }
}

/// The containers under a store root.
#[derive(Debug, Clone)]
pub struct ContainerStore {
    dir: PathBuf,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ContainerError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| ContainerError::Corrupt {
        path: path.to_owned(),
        source: e,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("write", &tmp))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("write", path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ContainerError> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| ContainerError::Corrupt {
        path: path.to_owned(),
        source: e,
    })
}

/// A random 256-bit id in hex.
pub(crate) fn new_id() -> Result<String, ContainerError> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::io::Read::read_exact(&mut File::open(path).map_err(io("open", path))?, &mut bytes)
        .map_err(io("read", path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "clever", "eager", "fervent", "gentle", "happy", "jolly", "keen", "lucid",
    "modest", "nimble", "quiet", "serene", "sharp", "stoic", "tender", "vigilant", "wise", "zen",
];
const NAMES: &[&str] = &[
    "babbage", "curie", "dijkstra", "euler", "feynman", "gauss", "hopper", "hypatia", "knuth",
    "lamport", "liskov", "lovelace", "noether", "pascal", "ritchie", "shannon", "thompson",
    "torvalds", "turing", "wozniak",
];

/// Docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128
}

impl ContainerStore {
    /// Opens (creating if needed) `<root>/containers`, and collects what
    /// crashed creates and removals left.
    pub fn open(root: &Path) -> Result<Self, ContainerError> {
        let dir = root.join("containers");
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("create", &dir))?;
        let store = Self { dir };
        store.collect_leftovers();
        Ok(store)
    }

    /// Removes `.tmp-*` (a create that died: creates hold `.create.lock`,
    /// so none is in progress while we hold it) and `.rm-*` (a removal that
    /// died: removals hold the container's lock, so one whose lock is free
    /// is abandoned).
    fn collect_leftovers(&self) {
        let lock_path = self.dir.join(".create.lock");
        let Ok(lock) = File::create(&lock_path) else {
            return;
        };
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let abandoned = if name.starts_with(".tmp-") {
                true
            } else if name.starts_with(".rm-") {
                matches!(try_lock(&e.path().join("running.lock")), Ok(Some(_)))
            } else {
                false
            };
            if abandoned {
                log::info!("removing {}, left by a crashed husk", e.path().display());
                let _ = remove_tree(&e.path());
            }
        }
    }

    /// Gives a container a new name.
    pub fn rename(&self, container: &Container, new: &str) -> Result<(), ContainerError> {
        let lock_path = self.dir.join(".create.lock");
        let lock = File::create(&lock_path).map_err(io("open", &lock_path))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io("lock", &lock_path)(e.into()))?;
        if !valid_name(new) {
            return Err(ContainerError::BadName(format!(
                "invalid container name {new:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if let Some(c) = self.list()?.iter().find(|c| c.name == new) {
            return Err(ContainerError::BadName(format!(
                "the container name {new:?} is already in use by container {}",
                c.short_id()
            )));
        }
        let path = container.dir.join("config.json");
        let mut record: Record = read_json(&path)?;
        record.name = new.to_owned();
        write_json(&path, &record)
    }

    /// Changes a container's config (`network connect`): only while it does
    /// not run (its running lock is held meanwhile, so no start races it).
    pub fn update_config(
        &self,
        container: &Container,
        f: impl FnOnce(&mut ContainerConfig),
    ) -> Result<(), ContainerError> {
        let Some(_lock) = try_lock(&container.dir.join("running.lock"))? else {
            return Err(ContainerError::AlreadyRunning(container.name.clone()));
        };
        let path = container.dir.join("config.json");
        let mut record: Record = read_json(&path)?;
        f(&mut record.config);
        write_json(&path, &record)
    }

    /// Creates a container (its writable layer empty). `name`: as given by
    /// `--name`, or `None` for a generated one.
    pub fn create(
        &self,
        name: Option<&str>,
        config: ContainerConfig,
    ) -> Result<Container, ContainerError> {
        // One creator at a time, so names stay unique.
        let lock_path = self.dir.join(".create.lock");
        let lock = File::create(&lock_path).map_err(io("open", &lock_path))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io("lock", &lock_path)(e.into()))?;
        let existing = self.list()?;
        let id = new_id()?;
        let name = match name {
            Some(n) => {
                if !valid_name(n) {
                    return Err(ContainerError::BadName(format!(
                        "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                if let Some(c) = existing.iter().find(|c| c.name == n) {
                    return Err(ContainerError::BadName(format!(
                        "the container name {n:?} is already in use by container {}; remove it (husk rm {n}) or choose another name",
                        c.short_id()
                    )));
                }
                n.to_owned()
            }
            None => {
                let seed = u64::from_str_radix(&id[..16], 16).unwrap_or(0);
                let base = format!(
                    "{}_{}",
                    ADJECTIVES[(seed % ADJECTIVES.len() as u64) as usize],
                    NAMES[((seed >> 8) % NAMES.len() as u64) as usize]
                );
                let mut n = base.clone();
                let mut i = 1;
                while existing.iter().any(|c| c.name == n) {
                    i += 1;
                    n = format!("{base}{i}");
                }
                n
            }
        };
        let dir = self.dir.join(&id);
        let tmp = self.dir.join(format!(".tmp-{id}"));
        std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(io("create", &tmp))?;
        for sub in ["rw", "rw/upper", "rw/work"] {
            let p = tmp.join(sub);
            std::fs::create_dir(&p).map_err(io("create", &p))?;
        }
        // The root of the writable layer is the container's "/": it must
        // not be more restrictive than the image's.
        let upper = tmp.join("rw/upper");
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))
            .map_err(io("create", &upper))?;
        let record = Record {
            id: id.clone(),
            name: name.clone(),
            created: now(),
            config,
        };
        let state = State::created();
        write_json(&tmp.join("config.json"), &record)?;
        write_json(&tmp.join("state.json"), &state)?;
        std::fs::rename(&tmp, &dir).map_err(io("create", &dir))?;
        drop(lock);
        Ok(Container {
            id,
            name,
            created: record.created,
            config: record.config,
            state,
            dir,
        })
    }

    fn load(&self, dir: PathBuf) -> Result<Container, ContainerError> {
        let record: Record = read_json(&dir.join("config.json"))?;
        let mut state: State = read_json(&dir.join("state.json"))?;
        if state.status.is_live() && !monitor_alive(&state) {
            // The monitor is gone without recording the end (killed, or
            // the host rebooted). The liveness check takes no lock, so it
            // never disturbs a start; the record is mended only by whoever
            // gets the lock, after reading the state again under it.
            state.status = Status::Exited;
            state.pid = None;
            state.pid_start = None;
            state.network = None;
            if let Ok(Some(lock)) = try_lock(&dir.join("running.lock")) {
                if let Ok(mut now_state) = read_json::<State>(&dir.join("state.json"))
                    && now_state.status.is_live()
                    && !monitor_alive(&now_state)
                {
                    now_state.status = Status::Exited;
                    now_state.pid = None;
                    now_state.pid_start = None;
                    now_state.network = None;
                    now_state.finished_at = now_state.finished_at.or(Some(now()));
                    let _ = write_json(&dir.join("state.json"), &now_state);
                    state = now_state;
                }
                // What a dead monitor leaves: its sockets and VM files.
                let _ = std::fs::remove_file(dir.join(crate::control::SOCKET));
                let _ = remove_tree(&dir.join("sandbox"));
                drop(lock);
            }
        }
        Ok(Container {
            id: record.id,
            name: record.name,
            created: record.created,
            config: record.config,
            state,
            dir,
        })
    }

    /// Every container, newest first. Half-created or unreadable ones are
    /// skipped with a warning.
    pub fn list(&self) -> Result<Vec<Container>, ContainerError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            match self.load(entry.path()) {
                Ok(c) => out.push(c),
                Err(e) => log::warn!("skipping container {name}: {e}"),
            }
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Finds a container by full id, unique id prefix or name.
    pub fn find(&self, query: &str) -> Result<Container, ContainerError> {
        let all = self.list()?;
        if let Some(c) = all.iter().find(|c| c.id == query || c.name == query) {
            return Ok(c.clone());
        }
        let hits: Vec<&Container> =
            if !query.is_empty() && query.bytes().all(|b| b.is_ascii_hexdigit()) {
                all.iter().filter(|c| c.id.starts_with(query)).collect()
            } else {
                Vec::new()
            };
        match hits.as_slice() {
            [c] => Ok((*c).clone()),
            [] => Err(ContainerError::NotFound(query.to_owned())),
            _ => Err(ContainerError::Ambiguous(query.to_owned())),
        }
    }

    /// Removes a container and its writable layer. A running one needs
    /// `force`: then the `husk` process running it is killed first.
    pub fn remove(&self, container: &Container, force: bool) -> Result<(), ContainerError> {
        // Hold the running lock while removing, so a `husk start` cannot
        // begin on a layer being deleted.
        let lock_path = container.dir.join("running.lock");
        let mut lock = try_lock(&lock_path)?;
        if lock.is_none() {
            if !force {
                return Err(ContainerError::Running(container.name.clone()));
            }
            // The state as it is now (it may have started since it was
            // listed).
            let state: State = read_json(&container.state_path())?;
            kill_monitor(&container.dir, &state, &lock_path);
            if !container.dir.exists() {
                // Its monitor removed it (`--rm`) as it exited.
                return Ok(());
            }
            lock = try_lock(&lock_path)?;
            if lock.is_none() {
                return Err(ContainerError::Running(container.name.clone()));
            }
        }
        // Rename first so a half-removed container never lists.
        let doomed = self.dir.join(format!(".rm-{}", container.id));
        std::fs::rename(&container.dir, &doomed).map_err(io("remove", &container.dir))?;
        let result = remove_tree(&doomed).map_err(io("remove", &doomed));
        drop(lock);
        result
    }
}

/// Takes the exclusive lock on `path` if nobody holds it.
fn try_lock(path: &Path) -> Result<Option<File>, ContainerError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io("open", path))?;
    match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(io("lock", path)(e.into())),
    }
}

/// Whether someone holds the lock on `path`: a blocking-free probe that
/// takes the lock for an instant, so only for waiting on a monitor that was
/// told to exit.
fn is_locked(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    matches!(
        rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}

/// Ends a container's monitor (which takes its VM with it) and waits (up
/// to 10 s) for its lock to go: through its control socket, or, if that
/// fails, SIGKILL through a pidfd of the process the state names, checked
/// to be that process (not a later one with its pid).
fn kill_monitor(dir: &Path, state: &State, lock: &Path) {
    let asked = crate::control::call(
        dir,
        &crate::control::CtlRequest::Stop {
            signo: 9,
            timeout_s: 0,
        },
    )
    .is_ok();
    if !asked
        && let Some(pid) = state.pid
        && let Some(raw) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        && let Ok(fd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        && monitor_alive(state)
    {
        let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while is_locked(lock) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes a directory tree the guest wrote: it may hold directories
/// without write or search permission (for husk's user), which are opened
/// up first. Symlinks are removed, never followed.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            open_up(path);
            std::fs::remove_dir_all(path)
        }
    }
}

fn open_up(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            image: "busybox".into(),
            image_id: Some("sha256:abc".into()),
            rootfs: "/nonexistent".into(),
            spec: RunSpec::new(["sh", "-c", "true"]).main(),
            volumes: Vec::new(),
            tmpfs: vec!["/run".into()],
            mem_size: 256 << 20,
            vcpus: 1,
            hostname: None,
            stop_signal: None,
            stop_timeout: None,
            restart: RestartPolicy::No,
            log: LogConfig::default(),
            open_stdin: false,
            auto_remove: false,
            rootfs_via: crate::RootfsVia::VirtioFs,
            vm: VmSettings::default(),
            network: Default::default(),
            oci: None,
        }
    }

    #[test]
    fn restart_policies() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        assert_eq!(
            RestartPolicy::parse("on-failure:2").unwrap(),
            RestartPolicy::OnFailure(Some(2))
        );
        assert!(RestartPolicy::parse("always:3").is_err());
        assert!(RestartPolicy::parse("sometimes").is_err());
        let p = RestartPolicy::OnFailure(Some(2));
        assert!(p.restarts(1, 0, false) && p.restarts(1, 1, false));
        assert!(!p.restarts(1, 2, false) && !p.restarts(0, 0, false));
        assert!(RestartPolicy::Always.restarts(0, 100, false));
        assert!(!RestartPolicy::Always.restarts(0, 0, true));
    }

    #[test]
    fn start_times_tell_processes_apart() {
        let me = std::process::id();
        let start = process_start_time(me).unwrap();
        let mut st = State::created();
        st.pid = Some(me);
        st.pid_start = Some(start);
        assert!(monitor_alive(&st));
        st.pid_start = Some(start + 1);
        assert!(!monitor_alive(&st));
        st.pid = Some(u32::MAX - 1);
        assert!(!monitor_alive(&st));
    }

    #[test]
    fn leftovers_of_crashes_are_collected() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::open(root.path()).unwrap();
        let dir = root.path().join("containers");
        std::fs::create_dir_all(dir.join(".tmp-abc/rw")).unwrap();
        std::fs::create_dir_all(dir.join(".rm-def/rw/upper")).unwrap();
        std::fs::write(dir.join(".rm-def/running.lock"), b"").unwrap();
        // A removal in progress holds the lock: its directory stays.
        std::fs::create_dir_all(dir.join(".rm-busy")).unwrap();
        let busy = try_lock(&dir.join(".rm-busy/running.lock"))
            .unwrap()
            .unwrap();
        drop(store);
        let _store = ContainerStore::open(root.path()).unwrap();
        assert!(!dir.join(".tmp-abc").exists() && !dir.join(".rm-def").exists());
        assert!(dir.join(".rm-busy").exists());
        drop(busy);
    }

    #[test]
    fn create_find_run_and_remove() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::open(root.path()).unwrap();
        let a = store.create(Some("web"), config()).unwrap();
        let b = store.create(None, config()).unwrap();
        assert_eq!(a.id.len(), 64);
        assert_ne!(a.id, b.id);
        assert!(valid_name(&b.name), "{}", b.name);
        assert!(a.upper_dir().is_dir() && a.rw_dir().join("work").is_dir());
        assert_eq!(a.state.status, Status::Created);
        // Found by name, full id and prefix; the config round-trips.
        assert_eq!(store.find("web").unwrap().id, a.id);
        assert_eq!(store.find(&a.id).unwrap().id, a.id);
        assert_eq!(store.find(&a.id[..12]).unwrap().config, config());
        assert!(matches!(
            store.find("nope"),
            Err(ContainerError::NotFound(_))
        ));
        assert!(matches!(
            store.create(Some("web"), config()),
            Err(ContainerError::BadName(_))
        ));
        assert!(matches!(
            store.create(Some("-x"), config()),
            Err(ContainerError::BadName(_))
        ));
        assert_eq!(store.list().unwrap().len(), 2);

        // Running: the lock says so; a second start and rm without force fail.
        let mut a = store.find("web").unwrap();
        let guard = a.begin().unwrap();
        let running = store.find("web").unwrap();
        assert_eq!(running.state.status, Status::Running);
        assert_eq!(running.state.pid, Some(std::process::id()));
        assert!(matches!(
            store.find("web").unwrap().begin(),
            Err(ContainerError::AlreadyRunning(_))
        ));
        assert!(matches!(
            store.remove(&running, false),
            Err(ContainerError::Running(_))
        ));
        guard.finish(Some(3)).unwrap();
        let done = store.find("web").unwrap();
        assert_eq!(
            (done.state.status, done.state.exit_code),
            (Status::Exited, Some(3))
        );

        // The writable layer goes with the container, whatever the guest
        // left in it.
        let upper = done.upper_dir();
        std::fs::create_dir_all(upper.join("locked/deeper")).unwrap();
        std::fs::write(upper.join("locked/deeper/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", upper.join("link")).unwrap();
        std::fs::set_permissions(upper.join("locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        store.remove(&done, false).unwrap();
        assert!(!upper.exists());
        assert!(Path::new("/etc/passwd").exists());
        assert!(matches!(
            store.find("web"),
            Err(ContainerError::NotFound(_))
        ));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn a_crashed_runner_reads_as_exited() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::open(root.path()).unwrap();
        let c = store.create(Some("x"), config()).unwrap();
        // state.json says running, but nobody holds the lock.
        let state = State {
            status: Status::Running,
            pid: Some(1),
            started_at: Some(1),
            ..State::created()
        };
        write_json(&c.state_path(), &state).unwrap();
        let c = store.find("x").unwrap();
        assert_eq!((c.state.status, c.state.exit_code), (Status::Exited, None));
        // The record is mended once, with the time the death was seen.
        let seen: State = read_json(&c.state_path()).unwrap();
        assert_eq!(seen.status, Status::Exited);
        assert!(seen.finished_at.is_some());
        // A dropped guard records an unknown exit.
        let mut c = c;
        drop(c.begin().unwrap());
        let c = store.find("x").unwrap();
        assert_eq!((c.state.status, c.state.exit_code), (Status::Exited, None));
    }

    #[test]
    fn corrupt_records_are_skipped_in_lists() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::open(root.path()).unwrap();
        let c = store.create(Some("ok"), config()).unwrap();
        let bad = root.path().join("containers").join("f".repeat(64));
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("config.json"), b"{not json").unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, c.id);
    }
}
