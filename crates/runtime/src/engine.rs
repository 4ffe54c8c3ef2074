//! The container lifecycle, as one API for every front end (the `husk`
//! CLI today; an OCI-runtime front end or a REST server later): create,
//! start, attach, exec, signal, stop, restart, wait, pause, resume, top,
//! stats, logs, rename, remove, inspect, diff, list. It prints nothing and
//! takes no CLI types; each running container is served by its own monitor
//! process ([`crate::monitor`]) that this API starts and talks to.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::time::{Duration, Instant, SystemTime};

use husk_protocol::{RunSpec, TermSize};

use crate::container::{
    Container, ContainerConfig, ContainerError, ContainerStore, RestartPolicy, Status, VmSettings,
    monitor_alive,
};
use crate::control::{self, CtlEvent, CtlRequest, MonitorStats, Session};
use crate::logs::{self, Entry, LogConfig, LogError, ReadOptions};
use crate::net::store::{CreateNetwork, Network, NetworkStore};
use crate::net::{NetworkConfig, NetworkMode};
use crate::{RootfsVia, Volume};

/// Errors of the lifecycle API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No container has that name or id.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// The container must be running for this.
    #[error("Container {0} is not running")]
    NotRunning(String),
    /// The container is paused.
    #[error("Container {0} is paused, unpause the container first")]
    Paused(String),
    /// The container store failed.
    #[error(transparent)]
    Container(ContainerError),
    /// The image store failed.
    #[error("the image store failed")]
    Store(#[source] husk_image::StoreError),
    /// The image could not be found or pulled.
    #[error("cannot find or pull image {name}")]
    Pull {
        /// As given.
        name: String,
        /// Cause.
        #[source]
        source: husk_image::PullError,
    },
    /// The process could not be worked out from the image.
    #[error("cannot work out the container's process from the image")]
    Process(#[source] husk_image::ProcessError),
    /// The log could not be read or written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The monitor could not be reached.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The monitor failed or answered with an error.
    #[error("{0}")]
    Monitor(String),
    /// The request is malformed.
    #[error("{0}")]
    BadInput(String),
    /// A network operation failed.
    #[error(transparent)]
    Network(#[from] crate::net::store::NetworkError),
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

impl From<ContainerError> for EngineError {
    fn from(e: ContainerError) -> Self {
        match e {
            ContainerError::NotFound(n) => EngineError::NoSuchContainer(n),
            e => EngineError::Container(e),
        }
    }
}

/// How to start a monitor: a program and its first arguments; the engine
/// adds `--root ROOT [--attach] ID`.
#[derive(Debug, Clone)]
pub struct MonitorCommand {
    /// The program (the `husk` binary).
    pub program: PathBuf,
    /// Its first arguments (`["__monitor"]`).
    pub args: Vec<OsString>,
}

/// How a monitor is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// In the background (`start`, `run -d`).
    Background,
    /// Running the main process once a client attached (`run`).
    AttachFirst,
    /// For an OCI engine: stdio inherited, the main process on `Start`.
    Oci {
        /// In a network namespace of its own.
        new_netns: bool,
    },
}

/// What `create` (and `run`) take: Docker's `run` options.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The image (name, id), or with `rootfs` a label.
    pub image: String,
    /// Run in this root directory instead of an image.
    pub rootfs: Option<PathBuf>,
    /// `--name`.
    pub name: Option<String>,
    /// Arguments after the image (replace its Cmd).
    pub cmd: Vec<String>,
    /// `--entrypoint`.
    pub entrypoint: Option<String>,
    /// `-e`.
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// The terminal's size, with `tty`.
    pub term_size: Option<TermSize>,
    /// `-i`.
    pub open_stdin: bool,
    /// `-v HOST:GUEST[:ro]`.
    pub volumes: Vec<String>,
    /// `--tmpfs`.
    pub tmpfs: Vec<String>,
    /// `-m`, MiB.
    pub memory_mib: u64,
    /// `--cpus`.
    pub cpus: u8,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--stop-signal` (a name or number).
    pub stop_signal: Option<String>,
    /// `--stop-timeout`.
    pub stop_timeout: Option<u64>,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// `--log-opt`.
    pub log_opts: Vec<String>,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--rootfs-via`.
    pub rootfs_via: RootfsVia,
    /// Kernel, agent, boot timeout.
    pub vm: VmSettings,
    /// `--network` (`None`: the default network).
    pub network: Option<String>,
    /// `-p`.
    pub publish: Vec<String>,
    /// `-P`.
    pub publish_all: bool,
    /// `--expose`.
    pub expose: Vec<String>,
    /// `--dns`.
    pub dns: Vec<String>,
    /// `--dns-search`.
    pub dns_search: Vec<String>,
    /// `--dns-option`.
    pub dns_option: Vec<String>,
    /// `--add-host NAME:IP`.
    pub add_host: Vec<String>,
    /// `--network-alias`.
    pub network_alias: Vec<String>,
}

/// What `exec` takes: Docker's `exec` options.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// `-e`.
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// The terminal's size, with `tty`.
    pub term_size: Option<TermSize>,
}

/// The lifecycle API over one store root.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    images: husk_image::Store,
    containers: ContainerStore,
    monitor: MonitorCommand,
}

/// Linux signal names and numbers (x86-64), as `kill -s` and
/// `--stop-signal` take them.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// Parses a signal: `9`, `KILL`, `SIGKILL`, `sigkill`, `RTMIN+3`.
pub fn parse_signal(s: &str) -> Result<i32, EngineError> {
    let bad = || EngineError::BadInput(format!("invalid signal: {s}"));
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    let rt = |base: i32, off: &str| -> Result<i32, EngineError> {
        let o: i32 = if off.is_empty() {
            0
        } else {
            off.parse().map_err(|_| bad())?
        };
        let n = base + o;
        if (34..=64).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(off) = name.strip_prefix("RTMIN") {
        return rt(34, off.trim_start_matches('+'));
    }
    if let Some(off) = name.strip_prefix("RTMAX") {
        return rt(64, off);
    }
    Err(bad())
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Turns a monitor's answer into a result.
fn expect_ok(ev: CtlEvent) -> Result<(), EngineError> {
    match ev {
        CtlEvent::Ok => Ok(()),
        CtlEvent::Error { message, .. } => Err(EngineError::Monitor(message)),
        other => Err(EngineError::Monitor(format!("unexpected answer {other:?}"))),
    }
}

impl Engine {
    /// Opens the image and container stores at `root`.
    pub fn open(root: &Path, monitor: MonitorCommand) -> Result<Engine, EngineError> {
        let images = husk_image::Store::open(root).map_err(EngineError::Store)?;
        let containers = ContainerStore::open(images.root())?;
        Ok(Engine {
            root: images.root().to_owned(),
            images,
            containers,
            monitor,
        })
    }

    /// The image store.
    pub fn images(&self) -> &husk_image::Store {
        &self.images
    }

    /// The container store.
    pub fn containers(&self) -> &ContainerStore {
        &self.containers
    }

    /// Finds a container by name, id or id prefix.
    pub fn find(&self, query: &str) -> Result<Container, EngineError> {
        Ok(self.containers.find(query)?)
    }

    /// Every container, newest first.
    pub fn list(&self) -> Result<Vec<Container>, EngineError> {
        Ok(self.containers.list()?)
    }

    /// Checks what can be checked of `opts` without an image or a VM:
    /// bad flags fail before anything is created or pulled.
    pub fn check(&self, opts: &CreateOptions) -> Result<(), EngineError> {
        self.checked(opts).map(|_| ())
    }

    fn checked(&self, opts: &CreateOptions) -> Result<(Vec<Volume>, LogConfig, u64), EngineError> {
        if let Some(n) = &opts.name
            && !crate::container::valid_name(n)
        {
            return Err(EngineError::BadInput(format!(
                "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if let Some(h) = &opts.hostname
            && !valid_hostname(h)
        {
            return Err(EngineError::BadInput(format!(
                "invalid hostname {h:?}: 1 to 63 letters, digits, '-' and '.'"
            )));
        }
        let volumes = opts
            .volumes
            .iter()
            .map(|v| Volume::parse(v).map_err(EngineError::BadInput))
            .collect::<Result<Vec<_>, _>>()?;
        for t in &opts.tmpfs {
            crate::check_guest_path(t)
                .map_err(|e| EngineError::BadInput(format!("--tmpfs {t}: {e}")))?;
        }
        let log = LogConfig::parse(&opts.log_opts)?;
        let mem_size = opts
            .memory_mib
            .checked_mul(1 << 20)
            .filter(|m| *m > 0)
            .ok_or_else(|| EngineError::BadInput("invalid --memory".into()))?;
        if opts.cpus == 0 {
            return Err(EngineError::BadInput("--cpus must be at least 1".into()));
        }
        if let Some(s) = &opts.stop_signal {
            parse_signal(s)?;
        }
        Ok((volumes, log, mem_size))
    }

    /// Creates a container (`docker create`): resolves (or pulls) the
    /// image, unpacks it once, works out the process as Docker does, and
    /// records it with an empty writable layer.
    pub fn create(
        &self,
        opts: &CreateOptions,
        progress: &dyn husk_image::Progress,
    ) -> Result<Container, EngineError> {
        let checked = self.checked(opts)?;
        let (image, image_id, rootfs, spec, image_stop) = match &opts.rootfs {
            Some(dir) => {
                if opts.entrypoint.is_some() {
                    return Err(EngineError::BadInput(
                        "--entrypoint needs an image, not --rootfs".into(),
                    ));
                }
                let path = std::fs::canonicalize(dir).map_err(io("use --rootfs", dir))?;
                if !path.is_dir() {
                    return Err(EngineError::BadInput(format!(
                        "--rootfs {}: not a directory",
                        dir.display()
                    )));
                }
                let spec = rootfs_spec(opts)?;
                (path.display().to_string(), None, path, spec, None)
            }
            None => {
                let reg = husk_image::RegistryOptions::for_store(&self.images);
                let image = husk_image::resolve_or_pull(&self.images, &opts.image, &reg, progress)
                    .map_err(|source| EngineError::Pull {
                        name: opts.image.clone(),
                        source,
                    })?;
                let rootfs = self
                    .images
                    .rootfs(&image, husk_image::UnpackLimits::default())
                    .map_err(EngineError::Store)?;
                let spec = image_spec(opts, &image, &rootfs.path)?;
                let stop = image
                    .config
                    .config
                    .as_ref()
                    .and_then(|c| c.stop_signal.clone());
                (
                    opts.image.clone(),
                    Some(image.id.to_string()),
                    rootfs.path.clone(),
                    spec,
                    stop,
                )
            }
        };
        let image_exposed: Vec<String> = match &image_id {
            Some(id) => self
                .images
                .resolve(id)
                .ok()
                .and_then(|i| i.config.config.and_then(|c| c.exposed_ports))
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        self.record(
            opts,
            checked,
            (image, image_id, rootfs),
            spec,
            image_stop,
            &image_exposed,
        )
    }

    /// Creates a container on an image the caller holds rather than one
    /// named in the store: an image built step by step (`husk build`'s
    /// intermediate images are not in the store's index). The process is
    /// worked out from `image`'s config and `opts` as [`Engine::create`]
    /// does; `opts.image` is only the label `ps` shows. The container
    /// records no image id: its root is `rootfs`, whose lease the caller
    /// keeps until the container is removed.
    pub fn create_on(
        &self,
        opts: &CreateOptions,
        image: &husk_image::Image,
        rootfs: &husk_image::Rootfs,
    ) -> Result<Container, EngineError> {
        let checked = self.checked(opts)?;
        if opts.rootfs.is_some() {
            return Err(EngineError::BadInput(
                "create_on takes an image, not --rootfs".into(),
            ));
        }
        let spec = image_spec(opts, image, &rootfs.path)?;
        let stop = image
            .config
            .config
            .as_ref()
            .and_then(|c| c.stop_signal.clone());
        let image_exposed: Vec<String> = image
            .config
            .config
            .as_ref()
            .and_then(|c| c.exposed_ports.as_ref())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        self.record(
            opts,
            checked,
            (opts.image.clone(), None, rootfs.path.clone()),
            spec,
            stop,
            &image_exposed,
        )
    }

    /// Records a new container (the common end of `create` and `create_on`).
    fn record(
        &self,
        opts: &CreateOptions,
        (volumes, log, mem_size): (Vec<Volume>, LogConfig, u64),
        (image, image_id, rootfs): (String, Option<String>, PathBuf),
        spec: RunSpec,
        image_stop: Option<String>,
        image_exposed: &[String],
    ) -> Result<Container, EngineError> {
        let network = self.network_config(opts, image_exposed)?;
        let stop_signal = match opts.stop_signal.as_ref().or(image_stop.as_ref()) {
            Some(s) => Some(parse_signal(s)?),
            None => None,
        };
        let config = ContainerConfig {
            image,
            image_id,
            rootfs,
            spec,
            volumes,
            tmpfs: opts.tmpfs.clone(),
            mem_size,
            vcpus: opts.cpus,
            hostname: opts.hostname.clone(),
            stop_signal,
            stop_timeout: opts.stop_timeout,
            restart: opts.restart,
            log,
            open_stdin: opts.open_stdin,
            auto_remove: opts.auto_remove,
            rootfs_via: opts.rootfs_via,
            vm: opts.vm.clone(),
            network,
            oci: None,
        };
        Ok(self.containers.create(opts.name.as_deref(), config)?)
    }

    /// Works out a container's network settings from `create`'s options,
    /// as Docker checks them.
    fn network_config(
        &self,
        opts: &CreateOptions,
        image_exposed: &[String],
    ) -> Result<NetworkConfig, EngineError> {
        let bad = |m: String| EngineError::BadInput(m);
        let mode = match opts.network.as_deref() {
            None | Some("default") | Some("bridge") => NetworkMode::Default,
            Some("none") => NetworkMode::None,
            Some("host") => {
                return Err(bad(
                    "--network host is not supported: a husk container has its own kernel and network stack; publish ports with -p".into(),
                ));
            }
            Some(n) if n.starts_with("container:") => {
                return Err(bad(format!(
                    "--network {n} is not supported: husk containers do not share network stacks"
                )));
            }
            Some(n) => NetworkMode::Named(self.networks()?.find(n)?.id),
        };
        let mut exposed = Vec::new();
        for e in image_exposed.iter().chain(&opts.expose) {
            exposed.extend(crate::net::ports::parse_exposed(e).map_err(|e| bad(e.to_string()))?);
        }
        exposed.sort();
        exposed.dedup();
        let mut ports = Vec::new();
        for p in &opts.publish {
            ports.extend(crate::net::ports::parse_publish(p).map_err(|e| bad(e.to_string()))?);
        }
        if opts.publish_all {
            for (port, proto) in &exposed {
                if !ports.iter().any(|b: &crate::net::PortBinding| {
                    b.container_port == *port && b.proto == *proto
                }) {
                    ports.push(crate::net::PortBinding {
                        host_ip: None,
                        host_port: 0,
                        container_port: *port,
                        proto: *proto,
                    });
                }
            }
        }
        crate::net::ports::check_conflicts(&ports).map_err(bad)?;
        if mode == NetworkMode::None && !ports.is_empty() {
            return Err(bad(
                "conflicting options: port publishing and the container type network mode (--network none)".into(),
            ));
        }
        let mut dns = Vec::new();
        for d in &opts.dns {
            dns.push(
                d.parse::<std::net::IpAddr>()
                    .map_err(|_| bad(format!("{d} is not an ip address (--dns)")))?,
            );
        }
        let mut extra_hosts = Vec::new();
        for h in &opts.add_host {
            let (name, ip) = h
                .split_once(':')
                .or_else(|| h.split_once('='))
                .ok_or_else(|| bad(format!("bad format for add-host: {h:?} (expected NAME:IP)")))?;
            if !crate::net::valid_host_name(name) {
                return Err(bad(format!("invalid host name in add-host: {name:?}")));
            }
            if ip != crate::net::HOST_GATEWAY && ip.parse::<std::net::IpAddr>().is_err() {
                return Err(bad(format!("invalid IP address in add-host: {ip:?}")));
            }
            extra_hosts.push((name.to_owned(), ip.to_owned()));
        }
        for d in opts.dns_search.iter().chain(&opts.dns_option) {
            if d.is_empty()
                || d.len() > 253
                || d.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(format!("invalid DNS search domain or option {d:?}")));
            }
        }
        if !opts.network_alias.is_empty() && !matches!(mode, NetworkMode::Named(_)) {
            return Err(bad(
                "network-scoped aliases are supported only for containers in user-defined networks"
                    .into(),
            ));
        }
        for a in &opts.network_alias {
            if !crate::net::valid_host_name(a) {
                return Err(bad(format!("invalid network alias {a:?}")));
            }
        }
        if mode == NetworkMode::Default {
            crate::net::passt::find().map_err(|e| bad(e.to_string()))?;
        }
        Ok(NetworkConfig {
            mode,
            ports,
            exposed,
            dns,
            dns_search: opts.dns_search.clone(),
            dns_options: opts.dns_option.clone(),
            extra_hosts,
            aliases: opts.network_alias.clone(),
        })
    }

    /// The store's user-defined networks.
    pub fn networks(&self) -> Result<NetworkStore, EngineError> {
        Ok(NetworkStore::open(&self.root)?)
    }

    /// `network create`.
    pub fn network_create(&self, name: &str, opts: &CreateNetwork) -> Result<Network, EngineError> {
        Ok(self.networks()?.create(name, opts)?)
    }

    /// The containers whose config names network `id`.
    fn containers_on(&self, id: &str) -> Result<Vec<Container>, EngineError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| c.config.network.mode == NetworkMode::Named(id.to_owned()))
            .collect())
    }

    /// `network rm`: refused while a container runs on it.
    pub fn network_remove(&self, query: &str) -> Result<Network, EngineError> {
        if crate::net::store::RESERVED.contains(&query) {
            return Err(EngineError::BadInput(format!(
                "{query} is a pre-defined network and cannot be removed"
            )));
        }
        let store = self.networks()?;
        let net = store.find(query)?;
        if self
            .containers_on(&net.id)?
            .iter()
            .any(|c| c.state.status.is_live())
        {
            return Err(crate::net::store::NetworkError::InUse {
                name: net.name.clone(),
                id: net.id.clone(),
            }
            .into());
        }
        store.remove(&net)?;
        Ok(net)
    }

    /// `network prune`: removes the networks no container uses; their names.
    pub fn network_prune(&self) -> Result<Vec<String>, EngineError> {
        let store = self.networks()?;
        let mut gone = Vec::new();
        for net in store.list()? {
            if self.containers_on(&net.id)?.is_empty() && store.endpoints(&net)?.is_empty() {
                store.remove(&net)?;
                gone.push(net.name);
            }
        }
        Ok(gone)
    }

    /// `network inspect`: Docker's JSON.
    pub fn network_inspect_json(&self, query: &str) -> Result<serde_json::Value, EngineError> {
        let store = self.networks()?;
        let net = store.find(query)?;
        Ok(net.inspect_json(&store.endpoints(&net)?))
    }

    /// `network connect NET CONTAINER`: a husk container has one NIC, set
    /// when its VM boots, so it must not be running; its network becomes
    /// `NET` (replacing the default network) from its next start.
    pub fn network_connect(
        &self,
        net: &str,
        container: &str,
        aliases: &[String],
    ) -> Result<(), EngineError> {
        let net = self.networks()?.find(net)?;
        let c = self.find(container)?;
        if c.state.status.is_live() {
            return Err(EngineError::BadInput(format!(
                "container {} is running: a husk container's network interface is fixed while its VM runs; stop it, connect, then start it",
                c.name
            )));
        }
        if let NetworkMode::Named(id) = &c.config.network.mode
            && *id != net.id
        {
            return Err(EngineError::BadInput(format!(
                "container {} is already on a user-defined network: husk containers have one network interface; disconnect it first",
                c.name
            )));
        }
        for a in aliases {
            if !crate::net::valid_host_name(a) {
                return Err(EngineError::BadInput(format!(
                    "invalid network alias {a:?}"
                )));
            }
        }
        let id = net.id.clone();
        let aliases = aliases.to_vec();
        self.containers.update_config(&c, move |cfg| {
            cfg.network.mode = NetworkMode::Named(id);
            for a in aliases {
                if !cfg.network.aliases.contains(&a) {
                    cfg.network.aliases.push(a);
                }
            }
        })?;
        Ok(())
    }

    /// `network disconnect NET CONTAINER`: from its next start the
    /// container has no network (`--network none`); it must not be running.
    pub fn network_disconnect(&self, net: &str, container: &str) -> Result<(), EngineError> {
        let c = self.find(container)?;
        let wanted = match net {
            "default" | "bridge" => NetworkMode::Default,
            "none" => NetworkMode::None,
            n => NetworkMode::Named(self.networks()?.find(n)?.id),
        };
        if c.config.network.mode != wanted {
            return Err(EngineError::BadInput(format!(
                "container {} is not connected to network {net}",
                c.name
            )));
        }
        if c.state.status.is_live() {
            return Err(EngineError::BadInput(format!(
                "container {} is running: a husk container's network interface is fixed while its VM runs; stop it first",
                c.name
            )));
        }
        self.containers.update_config(&c, |cfg| {
            cfg.network.mode = NetworkMode::None;
            cfg.network.ports.clear();
            cfg.network.aliases.clear();
        })?;
        Ok(())
    }

    /// `port CONTAINER`: the published ports of a running container.
    pub fn ports(&self, query: &str) -> Result<Vec<crate::net::PortBinding>, EngineError> {
        let c = self.find(query)?;
        if !c.state.status.is_live() {
            return Ok(Vec::new());
        }
        Ok(c.state.network.map(|n| n.ports).unwrap_or_default())
    }

    fn spawn_monitor(&self, c: &Container, launch: Launch) -> Result<u32, EngineError> {
        let log_path = c.dir().join("monitor.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let mut cmd = match launch {
            // A network namespace of its own, as runc gives the container
            // process: through util-linux's unshare, which execs the
            // monitor in place (the same pid).
            Launch::Oci { new_netns: true } => {
                let mut cmd = Command::new("unshare");
                cmd.arg("--net").arg("--").arg(&self.monitor.program);
                cmd
            }
            _ => Command::new(&self.monitor.program),
        };
        cmd.args(&self.monitor.args).arg("--root").arg(&self.root);
        match launch {
            Launch::Background => {}
            Launch::AttachFirst => {
                cmd.arg("--attach");
            }
            Launch::Oci { .. } => {
                cmd.arg("--oci");
            }
        }
        cmd.arg(&c.id);
        if matches!(launch, Launch::Oci { .. }) {
            // The container's stdio are the fds this command inherited
            // (the engine's pipes); the monitor keeps copies, points its
            // own 0/1/2 at /dev/null and monitor.log first thing, and
            // bridges them to the main process.
            cmd.stdin(ProcStdio::inherit())
                .stdout(ProcStdio::inherit())
                .stderr(ProcStdio::inherit());
        } else {
            cmd.stdin(ProcStdio::null())
                .stdout(ProcStdio::null())
                .stderr(log);
        }
        // Out of the terminal's process group: Ctrl-C goes to the command
        // that attached, which decides what the container gets.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(io("start", &self.monitor.program))?;
        let pid = child.id();
        // The monitor is ready when its control socket answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let c = self.containers.find(&c.id)?;
                return Err(EngineError::Monitor(c.state.error.clone().unwrap_or_else(
                    || {
                        let tail = crate::tail_lines(&log_path, 10);
                        format!("the container's monitor exited ({st}): {tail}")
                    },
                )));
            }
            if control::call(c.dir(), &CtlRequest::Ping).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(EngineError::Monitor(
                    "the container's monitor did not come up within 60 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // It outlives us; reap it if we live longer.
        std::thread::spawn(move || child.wait());
        Ok(pid)
    }

    /// Records a container made elsewhere (an OCI bundle's translation,
    /// [`crate::oci`]) under `name`.
    pub fn create_config(
        &self,
        name: &str,
        config: ContainerConfig,
    ) -> Result<Container, EngineError> {
        Ok(self.containers.create(Some(name), config)?)
    }

    /// Starts the monitor of a container created from an OCI bundle: it
    /// keeps this process's stdio as the container's, boots the VM and
    /// waits for [`Engine::start_created`]. Returns the monitor's pid (a
    /// child of this process) once its control socket answers.
    pub fn spawn_oci_monitor(&self, c: &Container, new_netns: bool) -> Result<u32, EngineError> {
        self.spawn_monitor(c, Launch::Oci { new_netns })
    }

    /// Runs the main process of a container whose monitor waits for it
    /// (OCI `start`); returns once it has started.
    pub fn start_created(&self, query: &str) -> Result<Container, EngineError> {
        let c = self.live(query)?;
        expect_ok(control::call(c.dir(), &CtlRequest::Start)?)?;
        self.await_started(&c)
    }

    /// Starts a created or stopped container (`docker start`), in the
    /// background; returns once its main process has started. Starting a
    /// running container does nothing.
    pub fn start(&self, query: &str) -> Result<Container, EngineError> {
        let c = self.find(query)?;
        if c.state.status.is_live() {
            return Ok(c);
        }
        self.spawn_monitor(&c, Launch::Background)?;
        self.await_started(&c)
    }

    /// Starts a container whose monitor waits for [`Engine::attach`] before
    /// it runs the main process (a foreground `run`/`start -a`), so no
    /// output is missed.
    pub fn start_attached(&self, query: &str, stdin: bool) -> Result<Session, EngineError> {
        let c = self.find(query)?;
        if c.state.status.is_live() {
            return self.attach(query, stdin);
        }
        self.spawn_monitor(&c, Launch::AttachFirst)?;
        Ok(Session::open(c.dir(), &CtlRequest::Attach { stdin })?)
    }

    fn await_started(&self, c: &Container) -> Result<Container, EngineError> {
        let boot = Duration::from_secs(c.config.vm.boot_timeout_s.max(1)) + Duration::from_secs(60);
        let deadline = Instant::now() + boot;
        loop {
            let now = self.find(&c.id)?;
            if now.state.main_started || now.state.status == Status::Restarting {
                return Ok(now);
            }
            if !now.state.status.is_live() {
                return Err(EngineError::Monitor(
                    now.state.error.clone().unwrap_or_else(|| {
                        format!(
                            "container {} exited before its process started (exit code {})",
                            now.name,
                            now.state
                                .exit_code
                                .map_or_else(|| "unknown".into(), |c| c.to_string())
                        )
                    }),
                ));
            }
            if Instant::now() > deadline {
                return Err(EngineError::Monitor(format!(
                    "container {} did not start within {boot:?}",
                    now.name
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn live(&self, query: &str) -> Result<Container, EngineError> {
        let c = self.find(query)?;
        if !c.state.status.is_live() || !monitor_alive(&c.state) {
            return Err(EngineError::NotRunning(c.name.clone()));
        }
        Ok(c)
    }

    /// Attaches to a running container's main process (`docker attach`).
    pub fn attach(&self, query: &str, stdin: bool) -> Result<Session, EngineError> {
        let c = self.live(query)?;
        Ok(Session::open(c.dir(), &CtlRequest::Attach { stdin })?)
    }

    /// Runs another process in a running container (`docker exec`); a
    /// session streaming its output, or with `detach` an answer once it
    /// started.
    pub fn exec(&self, query: &str, spec: RunSpec, detach: bool) -> Result<Session, EngineError> {
        let c = self.live(query)?;
        if c.state.status == Status::Paused {
            return Err(EngineError::Paused(c.name.clone()));
        }
        Ok(Session::open(c.dir(), &CtlRequest::Exec { spec, detach })?)
    }

    /// The process spec for `exec`: the container's environment and user,
    /// with the overrides.
    pub fn exec_spec(&self, c: &Container, opts: &ExecOptions) -> Result<RunSpec, EngineError> {
        let ExecOptions {
            cmd,
            env,
            workdir,
            user,
            tty,
            term_size,
        } = opts;
        let (workdir, user, tty, term_size) =
            (workdir.as_deref(), user.as_deref(), *tty, *term_size);
        if cmd.is_empty() {
            return Err(EngineError::BadInput("exec needs a command".into()));
        }
        let main = &c.config.spec;
        let mut spec = RunSpec::new(cmd);
        spec.env = main.env.clone();
        spec.cwd = main.cwd.clone();
        spec.uid = main.uid;
        spec.gid = main.gid;
        spec.additional_gids = main.additional_gids.clone();
        for e in env {
            let (k, v) = match e.split_once('=') {
                Some(("", _)) => {
                    return Err(EngineError::BadInput(format!(
                        "-e {e}: empty variable name"
                    )));
                }
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => match std::env::var(e) {
                    Ok(v) => (e.clone(), v),
                    Err(_) => continue,
                },
            };
            spec.env.retain(|(ek, _)| ek != k.as_bytes());
            spec = spec.env(k, v);
        }
        if let Some(w) = workdir {
            if !w.starts_with('/') {
                return Err(EngineError::BadInput(format!(
                    "-w {w}: the working directory must be an absolute path"
                )));
            }
            spec = spec.cwd(w);
        }
        if let Some(u) = user {
            let (uid, gid) = husk_image::process::resolve_user(u, Some(&c.config.rootfs))
                .map(|(p, _)| (p.uid, p.gid))
                .map_err(EngineError::Process)?;
            spec = spec.user(uid, gid);
            spec.additional_gids.clear();
        }
        if tty {
            spec = spec.tty(term_size);
            if !spec.env.iter().any(|(k, _)| k == b"TERM") {
                spec = spec.env("TERM", "xterm");
            }
        }
        Ok(spec)
    }

    /// Sends a signal to the main process (`docker kill`).
    pub fn kill(&self, query: &str, signo: i32) -> Result<(), EngineError> {
        let c = self.live(query)?;
        expect_ok(control::call(c.dir(), &CtlRequest::Signal { signo })?)
    }

    /// Stops a container (`docker stop`): its stop signal, then SIGKILL
    /// after `timeout` seconds (default: its `--stop-timeout`, else 10);
    /// returns once it has stopped. Stopping a stopped container does
    /// nothing.
    pub fn stop(&self, query: &str, timeout: Option<u64>) -> Result<Container, EngineError> {
        let c = self.find(query)?;
        if !c.state.status.is_live() || !monitor_alive(&c.state) {
            return Ok(c);
        }
        let req = CtlRequest::Stop {
            signo: c.config.stop_signal.unwrap_or(15),
            timeout_s: timeout.or(c.config.stop_timeout).unwrap_or(10),
        };
        match control::call(c.dir(), &req) {
            // The monitor closes the connection as it exits: stopped too.
            Ok(CtlEvent::Ok) | Err(control::ControlError::Closed) => {}
            Ok(other) => expect_ok(other)?,
            Err(e) => return Err(e.into()),
        }
        self.wait_gone(&c);
        self.find(&c.id).or(Ok(c))
    }

    /// Waits (up to 10 s) until a monitor that answered is gone.
    fn wait_gone(&self, c: &Container) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.find(&c.id) {
                Ok(now) if now.state.status.is_live() && monitor_alive(&now.state) => {}
                _ => return,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and starts a container again (`docker restart`).
    pub fn restart(&self, query: &str, timeout: Option<u64>) -> Result<Container, EngineError> {
        let c = self.stop(query, timeout)?;
        self.start(&c.id)
    }

    /// Waits for a container to stop; its exit code (`docker wait`).
    pub fn wait(&self, query: &str) -> Result<i32, EngineError> {
        let c = self.find(query)?;
        if c.state.status.is_live() && monitor_alive(&c.state) {
            match control::call(c.dir(), &CtlRequest::Wait) {
                Ok(CtlEvent::Exited { code }) => return Ok(code),
                Ok(other) => expect_ok(other)?,
                // The monitor went away: read what it recorded.
                Err(_) => {}
            }
        }
        let c = self.find(&c.id)?;
        Ok(c.state.exit_code.unwrap_or(255))
    }

    /// Stops the container's vCPUs (`docker pause`).
    pub fn pause(&self, query: &str) -> Result<(), EngineError> {
        let c = self.live(query)?;
        if c.state.status == Status::Paused {
            return Err(EngineError::Monitor(format!(
                "Container {} is already paused",
                c.name
            )));
        }
        expect_ok(control::call(c.dir(), &CtlRequest::Pause)?)
    }

    /// Runs them again (`docker unpause`).
    pub fn unpause(&self, query: &str) -> Result<(), EngineError> {
        let c = self.live(query)?;
        if c.state.status != Status::Paused {
            return Err(EngineError::Monitor(format!(
                "Container {} is not paused",
                c.name
            )));
        }
        expect_ok(control::call(c.dir(), &CtlRequest::Resume)?)
    }

    /// The container's processes (`docker top`).
    #[allow(clippy::type_complexity)]
    pub fn top(&self, query: &str) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        let c = self.live(query)?;
        match control::call(c.dir(), &CtlRequest::Top)? {
            CtlEvent::Top { titles, processes } => Ok((titles, processes)),
            other => Err(expect_ok(other)
                .err()
                .unwrap_or(EngineError::Monitor("unexpected answer to top".into()))),
        }
    }

    /// Resource use (`docker stats`).
    pub fn stats(&self, query: &str) -> Result<(Container, MonitorStats), EngineError> {
        let c = self.live(query)?;
        match control::call(c.dir(), &CtlRequest::Stats)? {
            CtlEvent::Stats(s) => Ok((c, s)),
            other => Err(expect_ok(other)
                .err()
                .unwrap_or(EngineError::Monitor("unexpected answer to stats".into()))),
        }
    }

    /// Renames a container (`docker rename`).
    pub fn rename(&self, query: &str, new: &str) -> Result<(), EngineError> {
        let c = self.find(query)?;
        Ok(self.containers.rename(&c, new)?)
    }

    /// Removes a container and its writable layer and log (`docker rm`);
    /// a running one needs `force` (then its monitor and VM are ended).
    pub fn remove(&self, query: &str, force: bool) -> Result<Container, EngineError> {
        let c = self.find(query)?;
        self.containers.remove(&c, force)?;
        Ok(c)
    }

    /// The container's log as `opts` selects.
    pub fn logs(&self, query: &str, opts: &ReadOptions) -> Result<Vec<Entry>, EngineError> {
        let c = self.find(query)?;
        Ok(logs::read(c.dir(), &c.id, opts)?)
    }

    /// Follows the container's log until it stops or `each` fails.
    pub fn follow_logs(
        &self,
        query: &str,
        opts: &ReadOptions,
        each: &mut dyn FnMut(Entry) -> std::io::Result<()>,
    ) -> Result<(), EngineError> {
        let c = self.find(query)?;
        let path = c.log_path();
        if !path.exists() {
            // Never started: nothing to follow yet.
            std::fs::write(&path, b"").map_err(io("create", &path))?;
        }
        let store = &self.containers;
        let id = c.id.clone();
        let mut done = || match store.find(&id) {
            Ok(now) => !(now.state.status.is_live() && monitor_alive(&now.state)),
            Err(_) => true,
        };
        Ok(logs::follow(c.dir(), &c.id, opts, &mut done, each)?)
    }

    /// What the container changed in its root (`docker diff`): `A path`,
    /// `C path`, `D path`.
    pub fn diff(&self, query: &str) -> Result<Vec<String>, EngineError> {
        let c = self.find(query)?;
        let mut lines = Vec::new();
        walk(&c.upper_dir(), &c.config.rootfs, "", &mut lines)
            .map_err(io("read the writable layer of", &c.upper_dir()))?;
        Ok(lines)
    }

    /// `docker inspect`-shaped JSON.
    pub fn inspect(&self, c: &Container) -> serde_json::Value {
        inspect_json(c, &self.network_name(c))
    }

    /// The name of a container's network as `inspect` shows it.
    pub fn network_name(&self, c: &Container) -> String {
        match &c.config.network.mode {
            NetworkMode::None => "none".into(),
            NetworkMode::Default => crate::net::DEFAULT_NETWORK.into(),
            NetworkMode::Engine => "engine".into(),
            NetworkMode::Named(id) => self
                .networks()
                .ok()
                .and_then(|s| s.find(id).ok())
                .map_or_else(|| id.clone(), |n| n.name),
        }
    }
}

/// 1-63 of `[A-Za-z0-9.-]`, not starting with '-' or '.'.
pub fn valid_hostname(h: &str) -> bool {
    (1..=63).contains(&h.len())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with(['-', '.'])
}

/// The process for `--rootfs`: the command as given, Docker's default
/// environment.
fn rootfs_spec(opts: &CreateOptions) -> Result<RunSpec, EngineError> {
    if opts.cmd.is_empty() {
        return Err(EngineError::BadInput(
            "no command specified: give one after --rootfs DIR".into(),
        ));
    }
    let mut spec = RunSpec::new(&opts.cmd).env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if let Some(h) = &opts.hostname {
        spec = spec.env("HOSTNAME", h);
    }
    if opts.tty {
        spec = spec.env("TERM", "xterm");
    }
    for e in &opts.env {
        match e.split_once('=') {
            Some(("", _)) => {
                return Err(EngineError::BadInput(format!(
                    "-e {e}: empty variable name"
                )));
            }
            Some((k, v)) => spec = spec.env(k, v),
            None => {
                if let Some(v) = std::env::var_os(e) {
                    spec = spec.env(e, v);
                }
            }
        }
    }
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(EngineError::BadInput(format!(
                "-w {w}: the working directory must be an absolute path"
            )));
        }
        spec = spec.cwd(w);
    }
    if let Some(u) = &opts.user {
        let (p, _) = husk_image::process::resolve_user(u, opts.rootfs.as_deref())
            .map_err(EngineError::Process)?;
        spec = spec.user(p.uid, p.gid);
        spec.additional_gids = p.additional_gids;
    }
    if opts.tty {
        spec = spec.tty(opts.term_size);
    }
    Ok(spec)
}

/// The process for an image: its config with the overrides, as Docker
/// resolves it.
fn image_spec(
    opts: &CreateOptions,
    image: &husk_image::Image,
    rootfs: &Path,
) -> Result<RunSpec, EngineError> {
    let overrides = husk_image::RunOverrides {
        entrypoint: opts.entrypoint.clone(),
        cmd: opts.cmd.clone(),
        env: opts.env.clone(),
        workdir: opts.workdir.clone(),
        user: opts.user.clone(),
        hostname: opts.hostname.clone(),
        tty: opts.tty,
    };
    let p = husk_image::resolve_process(&image.config, Some(rootfs), &overrides, &|k| {
        std::env::var(k).ok()
    })
    .map_err(EngineError::Process)?;
    if p.args.is_empty() {
        return Err(EngineError::BadInput(
            "no command specified: the image has no Entrypoint or Cmd; give one after the image name"
                .into(),
        ));
    }
    let mut spec = RunSpec::new(&p.args)
        .cwd(&p.cwd)
        .user(p.user.uid, p.user.gid);
    spec.additional_gids = p.user.additional_gids.clone();
    for kv in &p.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        spec = spec.env(k, v);
    }
    if opts.tty {
        spec = spec.tty(opts.term_size);
    }
    Ok(spec)
}

/// An overlayfs whiteout: a 0:0 character device.
fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// The mount points the agent makes in the writable layer when the image
/// lacks them (Docker keeps these in an init layer, so its diff omits them).
const AGENT_STUBS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
];

/// Whether `path` in the writable layer is only an agent stub.
fn is_stub(path: &str, lower: &Path) -> bool {
    AGENT_STUBS.contains(&path)
        && std::fs::symlink_metadata(lower.join(path.trim_start_matches('/'))).is_err()
}

fn walk(upper: &Path, lower: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries: Vec<_> =
        std::fs::read_dir(upper.join(rel.trim_start_matches('/')))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let path = format!("{rel}/{}", name.to_string_lossy());
        let meta = std::fs::symlink_metadata(e.path())?;
        let in_lower = std::fs::symlink_metadata(lower.join(path.trim_start_matches('/'))).is_ok();
        if is_stub(&path, lower) {
            continue;
        }
        if is_whiteout(&meta) {
            out.push(format!("D {path}"));
            continue;
        }
        if meta.is_dir() {
            let mut below = Vec::new();
            walk(upper, lower, &path, &mut below)?;
            // A directory copied up only to hold stubs (the image's /etc
            // for /etc/hosts) is not a change.
            let only_stubs = in_lower
                && below.is_empty()
                && std::fs::read_dir(e.path())?.flatten().all(|c| {
                    is_stub(
                        &format!("{path}/{}", c.file_name().to_string_lossy()),
                        lower,
                    )
                })
                && std::fs::read_dir(e.path())?.next().is_some();
            if !only_stubs {
                out.push(format!("{} {path}", if in_lower { "C" } else { "A" }));
                out.extend(below);
            }
            continue;
        }
        out.push(format!("{} {path}", if in_lower { "C" } else { "A" }));
    }
    Ok(())
}

/// RFC 3339 (UTC) for seconds since the epoch, as Docker prints times.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}

/// `docker inspect`-shaped JSON for a container.
pub fn inspect_json(c: &Container, net_name: &str) -> serde_json::Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let spec = &c.config.spec;
    let time = |t: Option<u64>| t.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), rfc3339);
    let mut mounts: Vec<serde_json::Value> = c
        .config
        .volumes
        .iter()
        .map(|v| {
            serde_json::json!({
                "Type": "bind",
                "Source": v.host,
                "Destination": v.guest,
                "RW": !v.read_only,
            })
        })
        .collect();
    mounts.extend(c.config.tmpfs.iter().map(
        |t| serde_json::json!({ "Type": "tmpfs", "Source": "", "Destination": t, "RW": true }),
    ));
    let live = c.state.status.is_live();
    let restart_max = match c.config.restart {
        RestartPolicy::OnFailure(Some(n)) => n,
        _ => 0,
    };
    serde_json::json!({
        "Id": c.id,
        "Name": format!("/{}", c.name),
        "Created": rfc3339(c.created),
        "Path": spec.argv.first().map(|a| text(a)).unwrap_or_default(),
        "Args": spec.argv.iter().skip(1).map(|a| text(a)).collect::<Vec<_>>(),
        "State": {
            "Status": c.state.status.word(),
            "Running": live,
            "Paused": c.state.status == Status::Paused,
            "Restarting": c.state.status == Status::Restarting,
            "Dead": false,
            "Pid": if live { c.state.pid.unwrap_or(0) } else { 0 },
            "ExitCode": c.state.exit_code.unwrap_or(if live { 0 } else { 255 }),
            "Error": c.state.error.clone().unwrap_or_default(),
            "StartedAt": time(c.state.started_at),
            "FinishedAt": time(c.state.finished_at),
        },
        "Image": c.config.image_id.clone().unwrap_or_default(),
        "LogPath": c.log_path(),
        "RestartCount": c.state.restart_count,
        "Config": {
            "Hostname": c.hostname(),
            "Image": c.config.image,
            "Cmd": spec.argv.iter().map(|a| text(a)).collect::<Vec<_>>(),
            "Env": spec.env.iter().map(|(k, v)| format!("{}={}", text(k), text(v))).collect::<Vec<_>>(),
            "WorkingDir": spec.cwd.as_deref().map(text).unwrap_or_else(|| "/".into()),
            "User": format!("{}:{}", spec.uid, spec.gid),
            "Tty": spec.tty,
            "OpenStdin": c.config.open_stdin,
            "StopSignal": c.config.stop_signal.map(|s| s.to_string()),
            "StopTimeout": c.config.stop_timeout,
            "ExposedPorts": c.config.network.exposed.iter().map(|(p, proto)| (format!("{p}/{proto}"), serde_json::json!({}))).collect::<serde_json::Map<_, _>>(),
        },
        "HostConfig": {
            "Memory": c.config.mem_size,
            "NanoCpus": u64::from(c.config.vcpus) * 1_000_000_000,
            "AutoRemove": c.config.auto_remove,
            "RestartPolicy": {
                "Name": c.config.restart.name(),
                "MaximumRetryCount": restart_max,
            },
            "LogConfig": {
                "Type": "json-file",
                "Config": {
                    "max-size": c.config.log.max_size.map(|s| s.to_string()),
                    "max-file": c.config.log.max_file.to_string(),
                },
            },
            "Runtime": "husk",
            "NetworkMode": net_name,
            "PortBindings": crate::net::ports_json(&c.config.network.ports, &[]),
            "Dns": c.config.network.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "DnsSearch": c.config.network.dns_search,
            "DnsOptions": c.config.network.dns_options,
            "ExtraHosts": c.config.network.extra_hosts.iter().map(|(n, i)| format!("{n}:{i}")).collect::<Vec<_>>(),
        },
        "NetworkSettings": crate::net::settings_json(
            &c.config.network,
            net_name,
            c.state.network.as_ref().filter(|_| c.state.status.is_live()),
        ),
        "Mounts": mounts,
        "GraphDriver": {
            "Name": "overlay (in the guest, over virtio-fs)",
            "Data": {
                "LowerDir": c.config.rootfs,
                "UpperDir": c.upper_dir(),
                "WorkDir": c.rw_dir().join("work"),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_docker() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), 10);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("RTMIN+3").unwrap(), 37);
        assert_eq!(parse_signal("RTMAX").unwrap(), 64);
        for bad in ["0", "65", "SIGNOPE", "", "RTMIN+40", "-1"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diff_leaves_out_the_agents_stubs() {
        let (upper, lower) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (u, l) = (upper.path(), lower.path());
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::write(l.join("etc/passwd"), b"root").unwrap();
        // The agent's stubs, in a copied-up /etc, and the mount points.
        std::fs::create_dir_all(u.join("etc")).unwrap();
        std::fs::write(u.join("etc/hostname"), b"").unwrap();
        std::fs::write(u.join("etc/hosts"), b"").unwrap();
        std::fs::write(u.join("etc/resolv.conf"), b"").unwrap();
        for d in ["proc", "sys", "dev"] {
            std::fs::create_dir(u.join(d)).unwrap();
        }
        std::fs::write(u.join("marker"), b"").unwrap();
        let mut out = Vec::new();
        walk(u, l, "", &mut out).unwrap();
        assert_eq!(out, vec!["A /marker"]);
        // A real change in /etc shows, with /etc itself.
        std::fs::write(u.join("etc/passwd"), b"changed").unwrap();
        let mut out = Vec::new();
        walk(u, l, "", &mut out).unwrap();
        assert_eq!(out, vec!["C /etc", "C /etc/passwd", "A /marker"]);
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("web-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("-x"));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname(&"a".repeat(64)));
    }

    #[test]
    fn times_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(981_173_106), "2001-02-03T04:05:06Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
