//! Executing a Dockerfile: the stages the target needs, step by step, each
//! step's image kept in memory (config and layers) and in the build cache;
//! only the final image goes into the store's index, under its tags.
//!
//! RUN boots a microVM through [`husk_runtime::engine::Engine`] on the
//! rootfs of the layers so far, with the build's environment, working
//! directory and user, and turns the container's writable layer into a
//! layer ([`husk_image::store_upper_layer`], as `husk commit` does). COPY,
//! ADD and a WORKDIR that must create its directory write their layer on
//! the host ([`crate::context`]). The other instructions change only the
//! config, with an `empty_layer` history entry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use husk_image::spec::{self, Descriptor, ImageConfig, Manifest};
use husk_image::{Change, CommitChanges, Digest, Image, Reference, Store};
use husk_runtime::container::VmSettings;
use husk_runtime::control::{CtlEvent, CtlRequest};
use husk_runtime::engine::{CreateOptions, Engine, EngineError};
use serde_json::{Map, Value, json};

use crate::cache::{self, Cache};
use crate::context::{CopyError, Placement, Tree};
use crate::dockerfile::{self, Command, CopySpec, Dockerfile, Healthcheck, Instruction, Step};
use crate::shell;

/// Docker's default PATH, which images built from scratch get.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What RUN steps may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Only loopback.
    None,
    /// The default network (user-mode, through passt), as Docker's builder.
    #[default]
    Default,
}

/// What `husk build` takes.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile (default: `Dockerfile` in the context).
    pub dockerfile: Option<PathBuf>,
    /// `-t NAME[:TAG]`.
    pub tags: Vec<String>,
    /// `--build-arg K=V` (`K` alone: from this process's environment).
    pub build_args: Vec<String>,
    /// `--target STAGE`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--label K=V`, on the final image.
    pub labels: Vec<String>,
    /// `--network`.
    pub network: Network,
    /// Guest memory of RUN steps, MiB.
    pub memory_mib: u64,
    /// vCPUs of RUN steps.
    pub cpus: u8,
    /// Kernel, agent, boot timeout for RUN steps.
    pub vm: VmSettings,
    /// Set to stop the build (the running step's container is killed).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What the builder reports as it goes (Docker's classic progress).
#[derive(Debug)]
pub enum Event<'a> {
    /// `Step N/M : TEXT`.
    Step {
        /// 1-based.
        n: usize,
        /// Steps in all.
        total: usize,
        /// The instruction.
        text: &'a str,
    },
    /// The step was found in the cache.
    UsingCache,
    /// A RUN step's container (short id) started.
    Running(&'a str),
    /// A RUN step's output.
    Output {
        /// From its standard error.
        stderr: bool,
        /// The bytes.
        data: &'a [u8],
    },
    /// A RUN step's container (short id) was removed.
    Removed(&'a str),
    /// The image after the step.
    Image(&'a Digest),
    /// Something the user should know.
    Warning(&'a str),
}

/// Receives [`Event`]s.
pub trait Progress {
    /// One event.
    fn event(&self, e: Event<'_>);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event<'_>) {}
}

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A bad option.
    #[error("{0}")]
    BadOption(String),
    /// The Dockerfile cannot be read.
    #[error("cannot read the Dockerfile {path}")]
    ReadDockerfile {
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Dockerfile is malformed.
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    /// A step failed.
    #[error("Dockerfile line {line} ({text}): {message}")]
    Step {
        /// Its line.
        line: usize,
        /// The instruction.
        text: String,
        /// What went wrong.
        message: String,
    },
    /// A step failed because of a lower layer.
    #[error("Dockerfile line {line} ({text})")]
    StepSource {
        /// Its line.
        line: usize,
        /// The instruction.
        text: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A RUN step's command failed.
    #[error("The command '{command}' returned a non-zero code: {code}")]
    RunFailed {
        /// Its line.
        line: usize,
        /// The command.
        command: String,
        /// Its exit code.
        code: i32,
    },
    /// The build was stopped.
    #[error("the build was cancelled")]
    Cancelled,
    /// The image store failed.
    #[error("the image store failed")]
    Store(#[source] husk_image::StoreError),
    /// Storing the image failed.
    #[error("cannot store the image")]
    Commit(#[source] husk_image::CommitError),
    /// The build cache could not be used.
    #[error("the build cache at {path} failed")]
    Cache {
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// The exit code for the command: a failed RUN's own, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::RunFailed { code, .. } if *code != 0 => *code,
            _ => 1,
        }
    }
}

/// The result of a build.
#[derive(Debug)]
pub struct Built {
    /// The image.
    pub image: Image,
    /// The names it got (as given).
    pub tags: Vec<String>,
    /// How many RUN steps booted a VM.
    pub vms: usize,
}

/// A stage's image as it is built: its config (as bytes, whose digest is
/// the image id) and layers.
#[derive(Debug, Clone)]
struct State {
    raw: Vec<u8>,
    id: Digest,
    layers: Vec<Descriptor>,
    /// ARGs declared in this stage, and their values.
    args: BTreeMap<String, Option<String>>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl State {
    fn new(raw: Vec<u8>, layers: Vec<Descriptor>) -> State {
        State {
            id: Digest::of(&raw),
            raw,
            layers,
            args: BTreeMap::new(),
            cmd_set: false,
        }
    }

    fn map(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.raw).unwrap_or_default()
    }

    fn config(&self) -> Map<String, Value> {
        self.map()
            .get("config")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    fn env(&self) -> Vec<String> {
        self.config()
            .get("Env")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default()
    }

    /// The value of a variable for expansion: ENV, then the stage's ARGs.
    fn lookup(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.env()
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix(&prefix).map(str::to_string))
            .or_else(|| self.args.get(name).cloned().flatten())
    }

    fn workdir(&self) -> String {
        self.config()
            .get("WorkingDir")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }

    fn shell(&self) -> Vec<String> {
        self.config()
            .get("Shell")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// The image this state is, not in the store's index.
    fn image(&self) -> Result<Image, husk_image::StoreError> {
        let config: ImageConfig = serde_json::from_slice(&self.raw).map_err(|source| {
            husk_image::StoreError::BadDocument {
                what: "config",
                digest: self.id.to_string(),
                source,
            }
        })?;
        Ok(Image {
            id: self.id.clone(),
            manifest_digest: self.id.clone(),
            manifest: Manifest {
                schema_version: 2,
                media_type: Some(spec::OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: spec::OCI_CONFIG.into(),
                    digest: self.id.clone(),
                    size: self.raw.len() as u64,
                    platform: None,
                    annotations: Default::default(),
                    urls: vec![],
                },
                layers: self.layers.clone(),
                annotations: Default::default(),
            },
            config,
            config_raw: self.raw.clone(),
            repo_tags: vec![],
            repo_digests: vec![],
        })
    }
}

/// A layer's media type in an OCI manifest (a Docker schema2 base's
/// layers are the same bytes under OCI's names).
fn oci_layer(mut d: Descriptor) -> Descriptor {
    d.media_type = match d.media_type.as_str() {
        spec::DOCKER_LAYER_GZIP => spec::OCI_LAYER_GZIP.into(),
        "application/vnd.docker.image.rootfs.diff.tar" => spec::OCI_LAYER_TAR.into(),
        other => other.into(),
    };
    d
}

fn now_rfc3339() -> String {
    husk_image::commit::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    )
}

/// Lexically cleans an absolute path.
fn clean_abs(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// The builder over one engine (and its store).
#[derive(Debug)]
pub struct Builder<'a> {
    engine: &'a Engine,
    store: &'a Store,
    cache: Cache,
}

/// One build in progress.
struct Run<'a, 'b> {
    b: &'b Builder<'a>,
    opts: &'b BuildOptions,
    df: Dockerfile,
    progress: &'b dyn Progress,
    pull: &'b dyn husk_image::Progress,
    context: Tree,
    /// Build args given, and which were consumed.
    given: BTreeMap<String, Option<String>>,
    used: BTreeSet<String>,
    /// Global ARGs (before the first FROM).
    global: BTreeMap<String, Option<String>>,
    /// Finished stages.
    done: BTreeMap<usize, State>,
    step: usize,
    total: usize,
    vms: usize,
}

impl<'a> Builder<'a> {
    /// A builder over `engine`'s store.
    pub fn new(engine: &'a Engine) -> Result<Builder<'a>, BuildError> {
        let store = engine.images();
        let cache = Cache::open(store).map_err(|source| BuildError::Cache {
            path: store.root().join("build-cache"),
            source,
        })?;
        Ok(Builder {
            engine,
            store,
            cache,
        })
    }

    /// Builds the image `opts` describes and names it with its tags.
    /// Nothing is named unless every step succeeded.
    pub fn build(
        &self,
        opts: &BuildOptions,
        progress: &dyn Progress,
        pull: &dyn husk_image::Progress,
    ) -> Result<Built, BuildError> {
        let names = opts
            .tags
            .iter()
            .map(|t| {
                Reference::parse(t)
                    .ok()
                    .filter(|r| r.digest.is_none())
                    .and_then(|r| r.tagged())
                    .ok_or_else(|| {
                        BuildError::BadOption(format!("invalid reference format: {t:?}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut labels = Vec::new();
        for l in &opts.labels {
            match l.split_once('=') {
                Some((k, v)) if !k.is_empty() => labels.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(BuildError::BadOption(format!(
                        "--label {l}: expected KEY=VALUE"
                    )));
                }
            }
        }
        let mut given = BTreeMap::new();
        for a in &opts.build_args {
            match a.split_once('=') {
                Some(("", _)) => {
                    return Err(BuildError::BadOption(format!(
                        "--build-arg {a}: empty name"
                    )));
                }
                Some((k, v)) => {
                    given.insert(k.to_string(), Some(v.to_string()));
                }
                None => {
                    given.insert(a.clone(), std::env::var(a).ok());
                }
            }
        }
        let ctx_dir = &opts.context;
        if !ctx_dir.is_dir() {
            return Err(BuildError::BadOption(format!(
                "the build context {} is not a directory",
                ctx_dir.display()
            )));
        }
        let df_path = opts
            .dockerfile
            .clone()
            .unwrap_or_else(|| ctx_dir.join("Dockerfile"));
        let bytes =
            read_limited(&df_path, dockerfile::MAX_DOCKERFILE as u64 + 1).map_err(|source| {
                BuildError::ReadDockerfile {
                    path: df_path.clone(),
                    source,
                }
            })?;
        let df = dockerfile::parse(&bytes)?;
        let context = Tree::context(ctx_dir).map_err(|e| BuildError::StepSource {
            line: 0,
            text: "the build context".into(),
            source: Box::new(e),
        })?;
        // Blobs written by the build live until the image names them.
        let _gc = self.store.gc_guard().map_err(BuildError::Store)?;
        let mut run = Run {
            b: self,
            opts,
            df,
            progress,
            pull,
            context,
            given,
            used: BTreeSet::new(),
            global: BTreeMap::new(),
            done: BTreeMap::new(),
            step: 0,
            total: 0,
            vms: 0,
        };
        let state = run.all()?;
        let mut state = state;
        if !labels.is_empty() {
            let mut map = state.map();
            let cfg = config_of(&mut map);
            CommitChanges {
                changes: vec![Change::Label(labels)],
            }
            .apply(cfg);
            state = State::new(to_bytes(&map), state.layers);
        }
        let unused: Vec<&String> = run
            .given
            .keys()
            .filter(|k| !run.used.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            progress.event(Event::Warning(&format!(
                "One or more build-args [{}] were not consumed",
                list.join(" ")
            )));
        }
        let layers: Vec<Descriptor> = state.layers.iter().cloned().map(oci_layer).collect();
        let image = husk_image::put_image(self.store, &state.raw, &layers, false, &names)
            .map_err(BuildError::Commit)?;
        Ok(Built {
            image,
            tags: opts.tags.clone(),
            vms: run.vms,
        })
    }
}

/// Build args usable without an ARG (Docker's proxy variables).
const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

fn read_limited(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

fn to_bytes(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).unwrap_or_default()
}

/// The config's `config` object, made if missing.
fn config_of(map: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let cfg = map.entry("config").or_insert_with(|| json!({}));
    if !cfg.is_object() {
        *cfg = json!({});
    }
    cfg.as_object_mut().expect("an object")
}

/// The scratch image's config.
fn scratch() -> Vec<u8> {
    to_bytes(
        json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [format!("PATH={DEFAULT_PATH}")]},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        })
        .as_object()
        .expect("an object"),
    )
}

/// What a step made.
enum Outcome {
    /// A new config only.
    Config(Map<String, Value>),
    /// A new layer and config.
    Layer(Map<String, Value>, husk_image::LayerInfo),
    /// Nothing to record (ARG).
    Nothing,
}

impl Run<'_, '_> {
    fn lookup_global(&self, name: &str) -> Option<String> {
        self.global.get(name).cloned().flatten()
    }

    fn step_err(step: &Step, message: impl Into<String>) -> BuildError {
        BuildError::Step {
            line: step.line,
            text: step.text.clone(),
            message: message.into(),
        }
    }

    fn step_src(step: &Step, e: impl std::error::Error + Send + Sync + 'static) -> BuildError {
        BuildError::StepSource {
            line: step.line,
            text: step.text.clone(),
            source: Box::new(e),
        }
    }

    /// The stage a `--from` or `FROM` value names, if it is one.
    fn stage_index(&self, name: &str, before: usize) -> Option<usize> {
        self.df.stage(name).map(|s| s.index).filter(|i| *i < before)
    }

    /// Builds every stage the target needs; the target's state.
    fn all(&mut self) -> Result<State, BuildError> {
        for step in self.df.global_args.clone() {
            let Instruction::Arg(raw) = &step.instruction else {
                continue;
            };
            let pairs = shell::name_values(raw, self.df.escape, &|k| self.lookup_global(k), false)
                .map_err(|m| Self::step_err(&step, m))?;
            for (k, v) in pairs {
                let v = match self.given.get(&k) {
                    Some(g) => {
                        self.used.insert(k.clone());
                        g.clone()
                    }
                    None => v,
                };
                self.global.insert(k, v);
            }
        }
        let target = match &self.opts.target {
            Some(t) => self.df.stage(t).map(|s| s.index).ok_or_else(|| {
                BuildError::BadOption(format!("target stage {t:?} could not be found"))
            })?,
            None => self.df.stages.len() - 1,
        };
        // The stages the target needs: its base and COPY --from stages.
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !needed.insert(i) {
                continue;
            }
            let st = &self.df.stages[i];
            let base = shell::word(&st.base, self.df.escape, &|k| self.lookup_global(k))
                .unwrap_or_else(|_| st.base.clone());
            if let Some(j) = self.stage_index(&base, i) {
                todo.push(j);
            }
            for s in &st.steps {
                if let Instruction::Copy(CopySpec { from: Some(f), .. }) = &s.instruction
                    && let Some(j) = self.stage_index(f, i)
                {
                    todo.push(j);
                }
            }
        }
        self.total = needed
            .iter()
            .map(|i| self.df.stages[*i].steps.len() + 1)
            .sum();
        for i in needed {
            let state = self.stage(i)?;
            self.done.insert(i, state);
        }
        Ok(self.done.remove(&target).expect("the target was built"))
    }

    fn announce(&mut self, step: &Step) {
        self.step += 1;
        self.progress.event(Event::Step {
            n: self.step,
            total: self.total,
            text: &step.text,
        });
    }

    fn stage(&mut self, index: usize) -> Result<State, BuildError> {
        let stage = self.df.stages[index].clone();
        self.announce(&stage.from);
        let base = shell::word(&stage.base, self.df.escape, &|k| self.lookup_global(k))
            .map_err(|e| Self::step_src(&stage.from, e))?;
        if base.is_empty() {
            return Err(Self::step_err(&stage.from, "base name should not be blank"));
        }
        let mut state = if base == "scratch" {
            State::new(scratch(), vec![])
        } else if let Some(j) = self.stage_index(&base, index) {
            let mut s = self.done[&j].clone();
            s.args.clear();
            s.cmd_set = false;
            s
        } else {
            let reg = husk_image::RegistryOptions::for_store(self.b.store);
            let img = husk_image::resolve_or_pull(self.b.store, &base, &reg, self.pull)
                .map_err(|e| Self::step_src(&stage.from, e))?;
            let triggers = serde_json::from_slice::<Value>(&img.config_raw)
                .ok()
                .and_then(|c| c["config"]["OnBuild"].as_array().map(Vec::len))
                .unwrap_or(0);
            if triggers > 0 {
                self.progress.event(Event::Warning(&format!(
                    "the base image {base} has ONBUILD triggers; husk build records them but does not run them"
                )));
            }
            State {
                id: img.id.clone(),
                raw: img.config_raw.clone(),
                layers: img.manifest.layers.clone(),
                args: BTreeMap::new(),
                cmd_set: false,
            }
        };
        self.progress.event(Event::Image(&state.id));
        for step in &stage.steps {
            self.announce(step);
            state = self.step(state, step, index)?;
            self.progress.event(Event::Image(&state.id));
        }
        Ok(state)
    }

    /// Docker's cache key parts common to every step.
    fn key(&self, state: &State, step: &Step, extra: Value) -> String {
        cache::key(&json!({
            "parent": state.id.to_string(),
            "instruction": step.text,
            "args": state.args,
            "extra": extra,
        }))
    }

    fn step(&mut self, mut state: State, step: &Step, stage: usize) -> Result<State, BuildError> {
        let esc = self.df.escape;
        // ARG changes no image.
        if let Instruction::Arg(raw) = &step.instruction {
            let pairs = shell::name_values(raw, esc, &|k| state.lookup(k), false)
                .map_err(|m| Self::step_err(step, m))?;
            for (k, default) in pairs {
                let v = if let Some(g) = self.given.get(&k) {
                    self.used.insert(k.clone());
                    g.clone()
                } else if default.is_some() {
                    default
                } else {
                    self.lookup_global(&k)
                };
                state.args.insert(k, v);
            }
            return Ok(state);
        }
        // COPY and ADD: the sources' content is part of the key.
        let mut sources = None;
        let mut extra = Value::Null;
        if let Instruction::Copy(spec) = &step.instruction {
            let (tree, srcs, hash) = self.copy_sources(&state, step, spec, stage)?;
            extra = json!({ "content": hash });
            sources = Some((tree, srcs));
        }
        let key = self.key(&state, step, extra);
        if !self.opts.no_cache
            && let Some(hit) = self.b.cache.get(self.b.store, &key)
        {
            self.progress.event(Event::UsingCache);
            let mut s = State::new(hit.config.into_bytes(), hit.layers);
            s.args = state.args;
            s.cmd_set = state.cmd_set || matches!(step.instruction, Instruction::Cmd(_));
            return Ok(s);
        }
        let created = now_rfc3339();
        let outcome = self.execute(&mut state, step, sources)?;
        let (mut map, layer) = match outcome {
            Outcome::Nothing => return Ok(state),
            Outcome::Config(m) => (m, None),
            Outcome::Layer(m, l) => (m, Some(l)),
        };
        map.insert("created".into(), json!(created));
        let mut entry = json!({
            "created": created,
            "created_by": step.text,
            "comment": "husk build",
        });
        let mut layers = state.layers.clone();
        match &layer {
            Some(l) => {
                layers.push(husk_image::layer_descriptor(l, false));
                let rootfs = map
                    .entry("rootfs")
                    .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
                if !rootfs["diff_ids"].is_array() {
                    rootfs["diff_ids"] = json!([]);
                }
                if let Some(ids) = rootfs["diff_ids"].as_array_mut() {
                    ids.push(json!(l.diff_id.to_string()));
                }
            }
            None => entry["empty_layer"] = json!(true),
        }
        let history = map.entry("history").or_insert_with(|| json!([]));
        match history.as_array_mut() {
            Some(h) => h.push(entry),
            None => *history = json!([entry]),
        }
        let mut next = State::new(to_bytes(&map), layers);
        next.args = state.args;
        next.cmd_set = state.cmd_set;
        let cached = cache::Entry {
            config: String::from_utf8_lossy(&next.raw).into_owned(),
            layers: next.layers.clone(),
        };
        if let Err(e) = self.b.cache.put(&key, &cached) {
            self.progress.event(Event::Warning(&format!(
                "cannot write the build cache: {e}"
            )));
        }
        Ok(next)
    }

    fn expand(&self, state: &State, step: &Step, s: &str) -> Result<String, BuildError> {
        shell::word(s, self.df.escape, &|k| state.lookup(k)).map_err(|e| Self::step_src(step, e))
    }

    fn command(&self, state: &State, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = state.shell();
                v.push(s.clone());
                v
            }
        }
    }

    /// The tree a COPY reads, its sources and their hash.
    fn copy_sources(
        &self,
        state: &State,
        step: &Step,
        spec: &CopySpec,
        stage: usize,
    ) -> Result<(Option<Tree>, Vec<crate::context::Source>, String), BuildError> {
        let mut given = Vec::new();
        for s in &spec.sources {
            let e = self.expand(state, step, s)?;
            if spec.add && (e.contains("://") || e.starts_with("git@")) {
                return Err(Self::step_src(step, CopyError::Url(e)));
            }
            given.push(e);
        }
        let tree = match &spec.from {
            None => None,
            Some(f) => {
                let f = self.expand(state, step, f)?;
                let img = match self.stage_index(&f, stage) {
                    Some(j) => self.done[&j].image().map_err(BuildError::Store)?,
                    None if self.df.stage(&f).is_some() => {
                        return Err(Self::step_err(
                            step,
                            format!("--from={f}: a stage can only copy from an earlier stage"),
                        ));
                    }
                    None => {
                        let reg = husk_image::RegistryOptions::for_store(self.b.store);
                        husk_image::resolve_or_pull(self.b.store, &f, &reg, self.pull)
                            .map_err(|e| Self::step_src(step, e))?
                    }
                };
                let rootfs = self
                    .b
                    .store
                    .rootfs(&img, husk_image::UnpackLimits::default())
                    .map_err(|e| Self::step_src(step, e))?;
                let t = Tree::rootfs(&rootfs.path, &f).map_err(|e| Self::step_src(step, e))?;
                // The directory stays open through `t`; the lease is only
                // needed while it is opened (collection waits for builds).
                Some(t)
            }
        };
        let t = tree.as_ref().unwrap_or(&self.context);
        let srcs = t.sources(&given).map_err(|e| Self::step_src(step, e))?;
        let hash = t.hash(&srcs).map_err(|e| Self::step_src(step, e))?;
        Ok((tree, srcs, hash))
    }

    /// The absolute form of a path relative to the working directory,
    /// keeping a trailing `/` (or `.`) as "a directory".
    fn abs_dest(state: &State, dest: &str) -> String {
        let dir_like = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest == "..";
        let joined = if dest.starts_with('/') {
            dest.to_string()
        } else {
            format!("{}/{dest}", state.workdir())
        };
        let mut p = clean_abs(&joined);
        if dir_like && !p.ends_with('/') {
            p.push('/');
        }
        p
    }

    /// Resolves `--chown` against the image's passwd and group files:
    /// a user without a group keeps the user's id as the group id.
    fn owner(
        &self,
        step: &Step,
        spec: &str,
        lower: Option<&Path>,
    ) -> Result<(u32, u32), BuildError> {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (user, _) =
            husk_image::process::resolve_user(u, lower).map_err(|e| Self::step_src(step, e))?;
        let gid = match g {
            None => user.uid,
            Some(g) => {
                husk_image::process::resolve_user(&format!("0:{g}"), lower)
                    .map_err(|e| Self::step_src(step, e))?
                    .0
                    .gid
            }
        };
        Ok((user.uid, gid))
    }

    fn execute(
        &mut self,
        state: &mut State,
        step: &Step,
        sources: Option<(Option<Tree>, Vec<crate::context::Source>)>,
    ) -> Result<Outcome, BuildError> {
        let esc = self.df.escape;
        let mut map = state.map();
        let changes = |c: Change, map: &mut Map<String, Value>| {
            CommitChanges { changes: vec![c] }.apply(config_of(map));
        };
        match &step.instruction {
            Instruction::From { .. } | Instruction::Arg(_) => Ok(Outcome::Nothing),
            Instruction::Env(raw) | Instruction::Label(raw) => {
                let pairs = shell::name_values(raw, esc, &|k| state.lookup(k), true)
                    .map_err(|m| Self::step_err(step, m))?;
                let pairs: Vec<(String, String)> = pairs
                    .into_iter()
                    .map(|(k, v)| (k, v.unwrap_or_default()))
                    .collect();
                if matches!(step.instruction, Instruction::Env(_)) {
                    changes(Change::Env(pairs), &mut map);
                } else {
                    changes(Change::Label(pairs), &mut map);
                }
                Ok(Outcome::Config(map))
            }
            Instruction::User(u) => {
                let u = self.expand(state, step, u)?;
                if u.is_empty() {
                    return Err(Self::step_err(step, "USER needs a user"));
                }
                changes(Change::User(u), &mut map);
                Ok(Outcome::Config(map))
            }
            Instruction::Workdir(w) => {
                let w = self.expand(state, step, w)?;
                if w.is_empty() {
                    return Err(Self::step_err(step, "WORKDIR needs a path"));
                }
                let abs = clean_abs(&if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", state.workdir())
                });
                changes(Change::Workdir(abs.clone()), &mut map);
                // Docker makes the directory if the image lacks it.
                let image = state.image().map_err(BuildError::Store)?;
                let rootfs = if state.layers.is_empty() {
                    None
                } else {
                    Some(
                        self.b
                            .store
                            .rootfs(&image, husk_image::UnpackLimits::default())
                            .map_err(|e| Self::step_src(step, e))?,
                    )
                };
                let lower = match &rootfs {
                    Some(r) => Some(
                        Tree::rootfs(&r.path, "the image").map_err(|e| Self::step_src(step, e))?,
                    ),
                    None => None,
                };
                let rel = abs.trim_start_matches('/');
                if rel.is_empty() || lower.as_ref().is_some_and(|l| l.is_dir(rel)) {
                    return Ok(Outcome::Config(map));
                }
                let layer = self.host_layer(step, |w| {
                    let mut tar = tar::Builder::new(w);
                    let mut acc = String::new();
                    for c in rel.split('/') {
                        acc = if acc.is_empty() {
                            c.to_string()
                        } else {
                            format!("{acc}/{c}")
                        };
                        if lower.as_ref().is_some_and(|l| l.is_dir(&acc)) {
                            continue;
                        }
                        let mut h = tar::Header::new_gnu();
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_mode(0o755);
                        h.set_size(0);
                        tar.append_data(&mut h, format!("{acc}/"), std::io::empty())
                            .map_err(|source| CopyError::Io {
                                path: acc.clone(),
                                source,
                            })?;
                    }
                    tar.finish().map_err(|source| CopyError::Io {
                        path: rel.to_string(),
                        source,
                    })
                })?;
                Ok(Outcome::Layer(map, layer))
            }
            Instruction::Cmd(c) => {
                let v = self.command(state, c);
                changes(Change::Cmd(v), &mut map);
                state.cmd_set = true;
                Ok(Outcome::Config(map))
            }
            Instruction::Entrypoint(c) => {
                let v = self.command(state, c);
                changes(Change::Entrypoint(v), &mut map);
                if !state.cmd_set {
                    // Docker: an ENTRYPOINT drops the CMD inherited from the base.
                    config_of(&mut map).remove("Cmd");
                }
                Ok(Outcome::Config(map))
            }
            Instruction::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports {
                    for w in shell::words(p, esc, &|k| state.lookup(k))
                        .map_err(|e| Self::step_src(step, e))?
                    {
                        let (port, proto) = w.split_once('/').unwrap_or((&w, "tcp"));
                        let ok_port = port
                            .split_once('-')
                            .map_or(port.parse::<u16>().is_ok(), |(a, b)| {
                                a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok()
                            });
                        if !ok_port || !matches!(proto, "tcp" | "udp" | "sctp") {
                            return Err(Self::step_err(step, format!("invalid port {w:?}")));
                        }
                        out.push(format!("{port}/{proto}"));
                    }
                }
                changes(Change::Expose(out), &mut map);
                Ok(Outcome::Config(map))
            }
            Instruction::Volume(vols) => {
                let mut out = Vec::new();
                for v in vols {
                    let v = self.expand(state, step, v)?;
                    if v.trim().is_empty() {
                        return Err(Self::step_err(
                            step,
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    out.push(v);
                }
                changes(Change::Volume(out), &mut map);
                Ok(Outcome::Config(map))
            }
            Instruction::StopSignal(s) => {
                let s = self.expand(state, step, s)?;
                husk_runtime::engine::parse_signal(&s).map_err(|e| Self::step_src(step, e))?;
                config_of(&mut map).insert("StopSignal".into(), json!(s));
                Ok(Outcome::Config(map))
            }
            Instruction::Shell(v) => {
                config_of(&mut map).insert("Shell".into(), json!(v));
                Ok(Outcome::Config(map))
            }
            Instruction::Healthcheck(h) => {
                let v = match h {
                    Healthcheck::None => json!({"Test": ["NONE"]}),
                    Healthcheck::Cmd {
                        command,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => {
                        let test: Vec<String> = match command {
                            Command::Exec(v) => std::iter::once("CMD".to_string())
                                .chain(v.iter().cloned())
                                .collect(),
                            Command::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
                        };
                        let mut hc = json!({ "Test": test });
                        for (k, v) in [
                            ("Interval", interval),
                            ("Timeout", timeout),
                            ("StartPeriod", start_period),
                            ("StartInterval", start_interval),
                            ("Retries", retries),
                        ] {
                            if let Some(v) = v {
                                hc[k] = json!(v);
                            }
                        }
                        hc
                    }
                };
                config_of(&mut map).insert("Healthcheck".into(), v);
                Ok(Outcome::Config(map))
            }
            Instruction::Onbuild(text) => {
                let cfg = config_of(&mut map);
                let list = cfg.entry("OnBuild").or_insert_with(|| json!([]));
                match list.as_array_mut() {
                    Some(l) => l.push(json!(text)),
                    None => *list = json!([text]),
                }
                Ok(Outcome::Config(map))
            }
            Instruction::Maintainer(m) => {
                map.insert("author".into(), json!(m));
                Ok(Outcome::Config(map))
            }
            Instruction::Run(c) => {
                let argv = self.command(state, c);
                let layer = self.run(state, step, argv)?;
                Ok(Outcome::Layer(map, layer))
            }
            Instruction::Copy(spec) => {
                let (tree, srcs) = sources.expect("sources were collected");
                let tree = tree.as_ref().unwrap_or(&self.context);
                let dest = self.expand(state, step, &spec.dest)?;
                let dest = Self::abs_dest(state, &dest);
                let image = state.image().map_err(BuildError::Store)?;
                let rootfs = if state.layers.is_empty() {
                    None
                } else {
                    Some(
                        self.b
                            .store
                            .rootfs(&image, husk_image::UnpackLimits::default())
                            .map_err(|e| Self::step_src(step, e))?,
                    )
                };
                let owner = match &spec.chown {
                    None => None,
                    Some(c) => {
                        let c = self.expand(state, step, c)?;
                        Some(self.owner(step, &c, rootfs.as_ref().map(|r| r.path.as_path()))?)
                    }
                };
                let chmod = spec
                    .chmod
                    .as_deref()
                    .and_then(|m| u32::from_str_radix(m, 8).ok());
                let lower = match &rootfs {
                    Some(r) => Some(
                        Tree::rootfs(&r.path, "the image").map_err(|e| Self::step_src(step, e))?,
                    ),
                    None => None,
                };
                let place = Placement {
                    dest,
                    owner,
                    chmod,
                    extract: spec.add,
                    keyword: if spec.add { "ADD" } else { "COPY" },
                };
                let layer = self.host_layer(step, |w| {
                    crate::context::write_copy(tree, &srcs, &place, lower.as_ref(), w)
                })?;
                Ok(Outcome::Layer(map, layer))
            }
        }
    }

    /// Stores a layer whose tar `write` makes on the host.
    fn host_layer(
        &self,
        step: &Step,
        write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), CopyError>,
    ) -> Result<husk_image::LayerInfo, BuildError> {
        let mut failed: Option<CopyError> = None;
        let stored = husk_image::store_layer(self.b.store, &self.opts.context, |w| {
            write(w).map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                husk_image::CommitError::Layer {
                    path: PathBuf::from("."),
                    source: std::io::Error::other(msg),
                }
            })
        });
        match (stored, failed) {
            (_, Some(e)) => Err(Self::step_src(step, e)),
            (Err(e), None) => Err(Self::step_src(step, e)),
            (Ok(l), None) => Ok(l),
        }
    }

    /// A RUN step: a container on the image so far, attached; its
    /// writable layer becomes the step's layer.
    fn run(
        &mut self,
        state: &State,
        step: &Step,
        argv: Vec<String>,
    ) -> Result<husk_image::LayerInfo, BuildError> {
        let engine = self.b.engine;
        let store = self.b.store;
        let image = state.image().map_err(BuildError::Store)?;
        let rootfs = store
            .rootfs(&image, husk_image::UnpackLimits::default())
            .map_err(|e| Self::step_src(step, e))?;
        // Build args are the step's environment, unless ENV set them.
        let env_keys: BTreeSet<String> = state
            .env()
            .iter()
            .map(|e| e.split('=').next().unwrap_or("").to_string())
            .collect();
        let env: Vec<String> = state
            .args
            .iter()
            .filter(|(k, _)| !env_keys.contains(*k))
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        let opts = CreateOptions {
            image: format!("husk-build:{}", &state.id.hex()[..12]),
            cmd: argv.clone(),
            entrypoint: Some(String::new()),
            env,
            memory_mib: self.opts.memory_mib.max(1),
            cpus: self.opts.cpus.max(1),
            vm: self.opts.vm.clone(),
            network: Some(
                match self.opts.network {
                    Network::None => "none",
                    Network::Default => "default",
                }
                .into(),
            ),
            ..Default::default()
        };
        let c = engine
            .create_on(&opts, &image, &rootfs)
            .map_err(|e| Self::step_src(step, e))?;
        let short = c.short_id();
        let guard = Remove {
            engine,
            id: c.id.clone(),
        };
        self.vms += 1;
        self.progress.event(Event::Running(short));
        let code = self.attached(&c.id, step)?;
        // The monitor records the exit and stops the VM: wait for it, so
        // the writable layer is complete.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match engine.find(&c.id) {
                Ok(now)
                    if now.state.status.is_live()
                        && husk_runtime::container::monitor_alive(&now.state) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => break,
            }
        }
        if self.cancelled() {
            return Err(BuildError::Cancelled);
        }
        if code != 0 {
            return Err(BuildError::RunFailed {
                line: step.line,
                command: argv.join(" "),
                code,
            });
        }
        let layer = husk_image::store_upper_layer(store, &c.upper_dir(), &rootfs.path)
            .map_err(|e| Self::step_src(step, e))?;
        drop(guard);
        self.progress.event(Event::Removed(short));
        Ok(layer)
    }

    fn cancelled(&self) -> bool {
        self.opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Starts the container attached and streams its output; its exit code.
    fn attached(&self, id: &str, step: &Step) -> Result<i32, BuildError> {
        let engine = self.b.engine;
        let mut session = engine
            .start_attached(id, false)
            .map_err(|e| Self::step_src(step, e))?;
        let _ = session.writer().send(&CtlRequest::CloseStdin);
        let done = AtomicBool::new(false);
        let cancel = self.opts.cancel.clone();
        std::thread::scope(|s| {
            // Cancelling kills the step's process; the loop below sees it exit.
            s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    if cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst)) {
                        let _ = engine.kill(id, 9);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let result = (|| {
                let mut error: Option<String> = None;
                loop {
                    match session.recv() {
                        Ok(Some(CtlEvent::Stdout { data })) => self.progress.event(Event::Output {
                            stderr: false,
                            data: &data,
                        }),
                        Ok(Some(CtlEvent::Stderr { data })) => self.progress.event(Event::Output {
                            stderr: true,
                            data: &data,
                        }),
                        Ok(Some(CtlEvent::Exited { code })) => {
                            if let Some(e) = error {
                                return Err(Self::step_err(step, e));
                            }
                            return Ok(code);
                        }
                        Ok(Some(CtlEvent::Error { message, code })) => {
                            if let Some(code) = code {
                                return Err(Self::step_err(
                                    step,
                                    format!("{message} (exit code {code})"),
                                ));
                            }
                            error = Some(message);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            return Err(Self::step_err(
                                step,
                                error.unwrap_or_else(|| {
                                    "the step's container monitor closed the connection before the step ended".into()
                                }),
                            ));
                        }
                        Err(e) => return Err(Self::step_src(step, EngineError::from(e))),
                    }
                }
            })();
            done.store(true, Ordering::SeqCst);
            session.set_read_timeout(Some(Duration::from_secs(30)));
            while let Ok(Some(_)) = session.recv() {}
            result
        })
    }
}

/// Removes a step's container when dropped (also when the step failed).
struct Remove<'a> {
    engine: &'a Engine,
    id: String,
}

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.engine.remove(&self.id, true) {
            log::warn!("cannot remove the build container {}: {e}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_relative_to_the_working_directory() {
        let mut s = State::new(
            to_bytes(
                json!({"config": {"WorkingDir": "/app"}})
                    .as_object()
                    .unwrap(),
            ),
            vec![],
        );
        assert_eq!(Run::abs_dest(&s, "x"), "/app/x");
        assert_eq!(Run::abs_dest(&s, "./"), "/app/");
        assert_eq!(Run::abs_dest(&s, "."), "/app/");
        assert_eq!(Run::abs_dest(&s, "sub/"), "/app/sub/");
        assert_eq!(Run::abs_dest(&s, "/abs/../y"), "/y");
        assert_eq!(Run::abs_dest(&s, "../../.."), "/");
        s = State::new(scratch(), vec![]);
        assert_eq!(Run::abs_dest(&s, "x"), "/x");
        assert_eq!(s.lookup("PATH").as_deref(), Some(DEFAULT_PATH));
        assert_eq!(s.shell(), vec!["/bin/sh", "-c"]);
    }

    #[test]
    fn docker_schema2_layers_get_oci_media_types() {
        let d = Descriptor {
            media_type: spec::DOCKER_LAYER_GZIP.into(),
            digest: Digest::of(b"x"),
            size: 1,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        assert_eq!(oci_layer(d).media_type, spec::OCI_LAYER_GZIP);
    }

    #[test]
    fn failed_runs_exit_with_their_code() {
        let e = BuildError::RunFailed {
            line: 3,
            command: "/bin/sh -c exit 3".into(),
            code: 3,
        };
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "The command '/bin/sh -c exit 3' returned a non-zero code: 3"
        );
        assert_eq!(BuildError::Cancelled.exit_code(), 1);
    }

    /// Records events as text.
    #[derive(Default)]
    struct Record(std::sync::Mutex<Vec<String>>);

    impl Progress for Record {
        fn event(&self, e: Event<'_>) {
            let line = match e {
                Event::Step { n, total, text } => format!("Step {n}/{total} : {text}"),
                Event::UsingCache => "cache".into(),
                Event::Image(id) => format!("image {id}"),
                Event::Warning(w) => format!("warning {w}"),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    impl Record {
        fn lines(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Engine,
        ctx: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            &dir.path().join("store"),
            husk_runtime::engine::MonitorCommand {
                program: "/nonexistent".into(),
                args: vec![],
            },
        )
        .unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        Fixture {
            _dir: dir,
            engine,
            ctx,
        }
    }

    impl Fixture {
        fn file(&self, rel: &str, data: &str) {
            let p = self.ctx.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }

        fn build(
            &self,
            df: &str,
            tweak: impl FnOnce(&mut BuildOptions),
        ) -> (Result<Built, BuildError>, Vec<String>) {
            self.file("Dockerfile", df);
            let mut opts = BuildOptions {
                context: self.ctx.clone(),
                ..Default::default()
            };
            tweak(&mut opts);
            let rec = Record::default();
            let b = Builder::new(&self.engine).unwrap();
            let r = b.build(&opts, &rec, &husk_image::NoProgress);
            (r, rec.lines())
        }

        fn rootfs(&self, img: &Image) -> husk_image::Rootfs {
            self.engine
                .images()
                .rootfs(img, husk_image::UnpackLimits::default())
                .unwrap()
        }
    }

    fn config(img: &Image) -> Value {
        serde_json::from_slice(&img.config_raw).unwrap()
    }

    #[test]
    fn host_steps_build_an_image_and_the_second_build_is_all_cache() {
        let f = fixture();
        f.file("app/hello.txt", "hello\n");
        f.file("app/secret.key", "no\n");
        f.file("app/sub/deep.txt", "deep\n");
        f.file(".dockerignore", "# comment\n**/*.key\n");
        std::os::unix::fs::symlink("/etc/passwd", f.ctx.join("app/link")).unwrap();
        let df = "FROM scratch\n\
                  ARG WHO=nobody\n\
                  ENV GREETING=\"hello $WHO\" PLAIN=x\n\
                  WORKDIR /srv/app\n\
                  COPY app/ ./\n\
                  COPY --chown=7:8 --chmod=0600 app/hello.txt /etc/copied\n\
                  LABEL org.example.who=$WHO\n\
                  EXPOSE 80 53/udp\n\
                  ENTRYPOINT [\"/bin/app\"]\n\
                  CMD [\"--serve\"]\n";
        let (r, events) = f.build(df, |o| {
            o.tags = vec!["app:v1".into()];
            o.build_args = vec!["WHO=world".into(), "UNUSED=1".into()];
            o.labels = vec!["extra=yes".into()];
        });
        let built = r.unwrap();
        assert_eq!(built.vms, 0);
        assert_eq!(events[0], "Step 1/10 : FROM scratch");
        assert!(
            events.iter().any(|e| e == "Step 5/10 : COPY app/ ./"),
            "{events:?}"
        );
        assert!(!events.iter().any(|e| e == "cache"));
        assert!(
            events
                .iter()
                .any(|e| e.contains("[UNUSED] were not consumed")),
            "{events:?}"
        );
        let img = f.engine.images().resolve("app:v1").unwrap();
        assert_eq!(img.id, built.image.id);
        let c = config(&img);
        let cfg = &c["config"];
        assert_eq!(cfg["WorkingDir"], "/srv/app");
        assert_eq!(cfg["Entrypoint"], json!(["/bin/app"]));
        assert_eq!(cfg["Cmd"], json!(["--serve"]));
        assert!(
            cfg["Env"]
                .as_array()
                .unwrap()
                .contains(&json!("GREETING=hello world"))
        );
        assert_eq!(
            cfg["Labels"],
            json!({"org.example.who": "world", "extra": "yes"})
        );
        assert_eq!(cfg["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        // Three layers (WORKDIR made its directory, two COPYs), one history
        // entry per instruction after FROM but ARG.
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
        assert_eq!(img.manifest.layers.len(), 3);
        let hist = c["history"].as_array().unwrap();
        assert_eq!(hist.len(), 8);
        assert_eq!(
            hist.iter()
                .filter(|h| h["empty_layer"] != json!(true))
                .count(),
            3
        );
        assert!(
            img.manifest
                .layers
                .iter()
                .all(|l| l.media_type == spec::OCI_LAYER_GZIP)
        );

        let root = f.rootfs(&img);
        let r = &root.path;
        assert_eq!(
            std::fs::read_to_string(r.join("srv/app/hello.txt")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("srv/app/sub/deep.txt")).unwrap(),
            "deep\n"
        );
        assert!(!r.join("srv/app/secret.key").exists(), ".dockerignore");
        // The symlink is copied as a symlink, not followed.
        let link = r.join("srv/app/link");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/etc/passwd"));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(r.join("etc/copied")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600);
        // (Owners are kept only when the unpacker may chown; as root.)
        if rustix::process::geteuid().is_root() {
            assert_eq!((m.uid(), m.gid()), (7, 8));
        }
        drop(root);

        // The same build again: every step from the cache, the same id.
        let (again, events) = f.build(df, |o| {
            o.tags = vec!["app:v1".into(), "app:v2".into()];
            o.build_args = vec!["WHO=world".into(), "UNUSED=1".into()];
            o.labels = vec!["extra=yes".into()];
        });
        let again = again.unwrap();
        assert_eq!(again.image.id, built.image.id);
        assert_eq!(
            events.iter().filter(|e| *e == "cache").count(),
            8,
            "{events:?}"
        );
        assert_eq!(
            f.engine.images().resolve("app:v2").unwrap().id,
            built.image.id
        );

        // A changed file misses from its COPY on; a changed build arg from
        // the first step that uses it.
        f.file("app/hello.txt", "changed\n");
        let (changed, events) = f.build(df, |o| o.build_args = vec!["WHO=world".into()]);
        assert_ne!(changed.unwrap().image.id, built.image.id);
        assert_eq!(
            events.iter().filter(|e| *e == "cache").count(),
            2,
            "{events:?}"
        );
        let (other, events) = f.build(df, |o| o.build_args = vec!["WHO=you".into()]);
        assert_ne!(other.unwrap().image.id, built.image.id);
        assert_eq!(
            events.iter().filter(|e| *e == "cache").count(),
            0,
            "{events:?}"
        );
        // --no-cache uses none.
        let (_, events) = f.build(df, |o| {
            o.no_cache = true;
            o.build_args = vec!["WHO=world".into()];
        });
        assert!(!events.iter().any(|e| e == "cache"));
    }

    #[test]
    fn stages_copy_from_each_other_and_the_target_builds_only_what_it_needs() {
        let f = fixture();
        f.file("a.txt", "a\n");
        let df = "ARG BASE=scratch\n\
                  FROM $BASE AS one\n\
                  COPY a.txt /one/\n\
                  FROM scratch AS unused\n\
                  COPY a.txt /unused/\n\
                  FROM one AS two\n\
                  COPY --from=one /one/a.txt /two/b.txt\n\
                  FROM scratch\n\
                  COPY --from=two /two /final\n";
        let (r, events) = f.build(df, |_| {});
        let img = r.unwrap().image;
        assert!(!events.iter().any(|e| e.contains("/unused/")), "{events:?}");
        assert_eq!(events[0], "Step 1/6 : FROM $BASE AS one");
        let root = f.rootfs(&img);
        assert_eq!(
            std::fs::read_to_string(root.path.join("final/b.txt")).unwrap(),
            "a\n"
        );
        assert!(!root.path.join("one").exists());
        let (r, _) = f.build(df, |o| o.target = Some("TWO".into()));
        let two = r.unwrap().image;
        let root = f.rootfs(&two);
        assert!(root.path.join("one/a.txt").exists() && root.path.join("two/b.txt").exists());
        let (r, _) = f.build(df, |o| o.target = Some("nope".into()));
        assert!(r.unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn hostile_contexts_are_refused() {
        let f = fixture();
        f.file("inside.txt", "x\n");
        std::os::unix::fs::symlink("/etc", f.ctx.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../../..", f.ctx.join("up")).unwrap();
        let fails = |df: &str| -> String {
            let (r, _) = f.build(df, |o| o.tags = vec!["bad:1".into()]);
            let e = r.unwrap_err();
            assert!(
                f.engine.images().resolve("bad:1").is_err(),
                "a failed build tagged"
            );
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        };
        let m = fails("FROM scratch\nCOPY ../outside /x\n");
        assert!(
            m.contains("line 2") && m.contains("outside the build context"),
            "{m}"
        );
        assert!(
            fails("FROM scratch\nCOPY inside.txt/../../x /x\n")
                .contains("outside the build context")
        );
        // Absolute sources and symlinks name paths inside the context.
        assert!(fails("FROM scratch\nCOPY /etc/passwd /x\n").contains("no such file"));
        assert!(fails("FROM scratch\nCOPY etc-link/passwd /x\n").contains("no such file"));
        assert!(fails("FROM scratch\nCOPY up/etc/passwd /x\n").contains("no such file"));
        assert!(fails("FROM scratch\nCOPY *.nothing /x/\n").contains("matches nothing"));
        assert!(
            fails("FROM scratch\nCOPY inside.txt Dockerfile /x\n").contains("must be a directory")
        );
        assert!(fails("FROM scratch\nADD http://example.com/x /x\n").contains("URL"));
        f.file("sub/.wh.victim", "");
        assert!(fails("FROM scratch\nCOPY sub /x/\n").contains(".wh."));
        std::fs::remove_file(f.ctx.join("sub/.wh.victim")).unwrap();
        let m = fails("FROM scratch\nRUN true\nBOGUS x\n");
        assert!(
            m.contains("line 3") && m.contains("unknown instruction"),
            "{m}"
        );
        assert!(fails("FROM scratch\nENV A\n").contains("line 2"));
        assert!(fails("FROM scratch\nUSER ${X:?needs X}\n").contains("needs X"));
        assert!(fails("FROM scratch\nSTOPSIGNAL SIGNOPE\n").contains("invalid signal"));
        assert!(fails("FROM scratch\nEXPOSE 99999\n").contains("invalid port"));
        // A COPY through a symlink finds the target inside the context.
        std::fs::create_dir(f.ctx.join("real")).unwrap();
        f.file("real/passwd", "mine\n");
        std::fs::remove_file(f.ctx.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("/real", f.ctx.join("etc-link")).unwrap();
        let (r, _) = f.build("FROM scratch\nCOPY etc-link/passwd /x\n", |_| {});
        let root = f.rootfs(&r.unwrap().image);
        assert_eq!(
            std::fs::read_to_string(root.path.join("x")).unwrap(),
            "mine\n"
        );
        // A bad tag is refused before anything is built.
        let (r, events) = f.build("FROM scratch\n", |o| o.tags = vec!["Bad Name".into()]);
        assert!(r.unwrap_err().to_string().contains("invalid reference"));
        assert!(events.is_empty());
    }

    #[test]
    fn add_extracts_local_archives_safely() {
        let f = fixture();
        let tar_of = |entries: &[(&str, &[u8])]| -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                // Raw names, so a hostile one is written as it is.
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let plain = tar_of(&[("top.txt", b"top\n"), ("d/in.txt", b"in\n")]);
        let mut gz = flate2_gz(&plain);
        std::fs::write(f.ctx.join("a.tar"), &plain).unwrap();
        std::fs::write(f.ctx.join("b.tar.gz"), &mut gz).unwrap();
        f.file("not-a-tar.gz", "just text");
        let (r, _) = f.build(
            "FROM scratch\nADD a.tar /plain\nADD b.tar.gz /gz/\nADD not-a-tar.gz /files/\nCOPY a.tar /copied/\n",
            |_| {},
        );
        let img = r.unwrap().image;
        let root = f.rootfs(&img);
        let p = &root.path;
        assert_eq!(
            std::fs::read_to_string(p.join("plain/top.txt")).unwrap(),
            "top\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("plain/d/in.txt")).unwrap(),
            "in\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("gz/d/in.txt")).unwrap(),
            "in\n"
        );
        assert_eq!(
            std::fs::read_to_string(p.join("files/not-a-tar.gz")).unwrap(),
            "just text"
        );
        assert!(p.join("copied/a.tar").is_file(), "COPY does not extract");
        drop(root);
        std::fs::write(f.ctx.join("evil.tar"), tar_of(&[("../../escape", b"x")])).unwrap();
        let (r, _) = f.build("FROM scratch\nADD evil.tar /x/\n", |_| {});
        assert!(format!("{:?}", r.unwrap_err()).contains("outside the destination"));
        std::fs::write(f.ctx.join("wh.tar"), tar_of(&[("etc/.wh.passwd", b"")])).unwrap();
        let (r, _) = f.build("FROM scratch\nADD wh.tar /\n", |_| {});
        assert!(format!("{:?}", r.unwrap_err()).contains("Whiteout"));
    }

    fn flate2_gz(data: &[u8]) -> Vec<u8> {
        // The store's own gzip writer, through a one-layer blob.
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let info = husk_image::store_layer(&store, d.path(), |w| {
            w.write_all(data)
                .map_err(|source| husk_image::CommitError::Layer {
                    path: d.path().into(),
                    source,
                })
        })
        .unwrap();
        std::fs::read(store.blob_path(&info.digest)).unwrap()
    }
}
