//! The image commands: `pull`, `push`, `load`, `import`, `images`, `rmi`, `tag`,
//! `image inspect`, `login`, `logout`, with Docker's output.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use husk_image::{ImportConfig, Reference, RegistryOptions, StderrProgress, Store};

/// `--root`, or the default store.
pub fn open_store(root: Option<PathBuf>) -> anyhow::Result<Store> {
    let root = root.unwrap_or_else(Store::default_root);
    Store::open(&root).with_context(|| format!("cannot open the image store at {}", root.display()))
}

/// Registry options for a command: the store's credentials,
/// `$HUSK_INSECURE_REGISTRIES`, and `--tls-verify`.
fn registry_options(store: &Store, tls_verify: bool) -> RegistryOptions {
    RegistryOptions {
        tls_verify,
        ..RegistryOptions::for_store(store)
    }
}

/// `husk pull [--tls-verify=false] NAME[:TAG|@DIGEST]`.
pub fn pull(store: &Store, name: &str, tls_verify: bool) -> anyhow::Result<ExitCode> {
    if husk_image::reference::uses_default_tag(name) {
        eprintln!("Using default tag: latest");
    }
    let r = Reference::parse(name).with_context(|| format!("invalid reference format: {name}"))?;
    let opts = registry_options(store, tls_verify);
    husk_image::pull(store, &r, &opts, &StderrProgress::new())
        .with_context(|| format!("cannot pull {name}"))?;
    println!("{r}");
    Ok(ExitCode::SUCCESS)
}

/// `husk push [--tls-verify=false] NAME[:TAG]`: Docker's progress lines on stderr,
/// as `husk pull` prints them, ending with `TAG: digest: sha256:… size: N`.
pub fn push(store: &Store, name: &str, tls_verify: bool) -> anyhow::Result<ExitCode> {
    if husk_image::reference::uses_default_tag(name) {
        eprintln!("Using default tag: latest");
    }
    let r = Reference::parse(name).with_context(|| format!("invalid reference format: {name}"))?;
    let opts = registry_options(store, tls_verify);
    husk_image::push(store, &r, &opts, &StderrProgress::new())
        .with_context(|| format!("cannot push {name}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `husk load [-i FILE]` (a `docker save` tar or OCI archive, or an OCI layout directory).
pub fn load(store: &Store, input: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let loaded = match input {
        Some(p) if p.is_dir() => husk_image::load_layout(store, &p, None)
            .with_context(|| format!("cannot load {}", p.display()))?,
        Some(p) => {
            let f =
                std::fs::File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
            husk_image::load(store, f, None)
                .with_context(|| format!("cannot load {}", p.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the archive from stdin")?;
            husk_image::load(store, &buf[..], None).context("cannot load the archive from stdin")?
        }
    };
    for img in loaded {
        for line in img.lines() {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `husk import DIR NAME [-c CMD]`: an image from a root directory, offline.
pub fn import(
    store: &Store,
    dir: PathBuf,
    name: &str,
    cmd: Option<String>,
) -> anyhow::Result<ExitCode> {
    let cmd: Vec<String> = match cmd.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(j) if j.starts_with('[') => serde_json::from_str(j)
            .with_context(|| format!("--cmd {j}: not a JSON array of strings"))?,
        Some(words) => words.split_whitespace().map(str::to_owned).collect(),
    };
    let loaded = husk_image::import_dir(
        store,
        &dir,
        name,
        &ImportConfig {
            cmd,
            env: Vec::new(),
        },
    )
    .with_context(|| format!("cannot import {}", dir.display()))?;
    for img in loaded {
        println!("{}", img.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `husk images`, SIZE being the unpacked size, as Docker shows it.
pub fn images(store: &Store) -> anyhow::Result<ExitCode> {
    let mut rows = store.images().context("cannot list images")?;
    let mut sizes = std::collections::BTreeMap::new();
    for img in store.list().context("cannot list images")? {
        let size = husk_image::sizes::image_size(store, &img)
            .with_context(|| format!("cannot measure image {}", img.id))?;
        sizes.insert(img.id, size);
    }
    for r in &mut rows {
        if let Some(s) = sizes.get(&r.id) {
            r.size = *s;
        }
    }
    print!(
        "{}",
        husk_image::format::images_table(&rows, std::time::SystemTime::now())
    );
    Ok(ExitCode::SUCCESS)
}

/// `husk rmi [-f] IMAGE...`.
/// An image a container uses is kept unless forced, as Docker does.
pub fn rmi(
    store: &Store,
    containers: &husk_runtime::container::ContainerStore,
    images: &[String],
    force: bool,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for i in images {
        if !force
            && let Ok(image) = store.resolve(i)
            && let Some(c) = containers
                .list()?
                .into_iter()
                .filter(|c| c.config.image_id.as_deref() == Some(image.id.to_string().as_str()))
                .collect::<Vec<_>>()
                .first()
        {
            eprintln!(
                "husk: error: conflict: unable to remove image {i} (must force): container {} ({}) is using it",
                c.short_id(),
                c.name
            );
            failed = true;
            continue;
        }
        match store.remove(i, force) {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("husk: error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `husk image inspect IMAGE...`.
pub fn inspect(store: &Store, images: &[String]) -> anyhow::Result<ExitCode> {
    let mut all = Vec::new();
    for i in images {
        let v = store
            .inspect(i)
            .with_context(|| format!("no such image: {i}"))?;
        match v {
            serde_json::Value::Array(items) => all.extend(items),
            other => all.push(other),
        }
    }
    println!("{}", serde_json::to_string_pretty(&all)?);
    Ok(ExitCode::SUCCESS)
}

/// `husk tag SOURCE TARGET`.
pub fn tag(store: &Store, source: &str, target: &str) -> anyhow::Result<ExitCode> {
    store
        .tag(source, target)
        .with_context(|| format!("cannot tag {source} as {target}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `husk login [-u USER] [--password-stdin] REGISTRY`.
pub fn login(
    store: &Store,
    registry: &str,
    user: Option<String>,
    password_stdin: bool,
) -> anyhow::Result<ExitCode> {
    let user = match user {
        Some(u) => u,
        None => anyhow::bail!("give the user name with -u (interactive prompts are not supported)"),
    };
    if !password_stdin {
        anyhow::bail!("give the password on standard input with --password-stdin");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password")?;
    let password = password.trim_end_matches(['\r', '\n']);
    husk_image::login(
        registry,
        &user,
        password,
        &RegistryOptions::for_store(store),
    )
    .with_context(|| format!("cannot log in to {registry}"))?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

/// `husk logout REGISTRY`.
pub fn logout(store: &Store, registry: &str) -> anyhow::Result<ExitCode> {
    if husk_image::logout(registry, &RegistryOptions::for_store(store)).context("cannot log out")? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `husk save [-o FILE] IMAGE...`: a `docker save` archive to FILE (written
/// beside it and renamed into place when complete) or to standard output,
/// which must not be a terminal.
pub fn save(store: &Store, images: &[String], output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    write_archive(output, |w| {
        husk_image::save(store, images, w).context("cannot save")
    })
}

/// Writes an archive to `output` (beside it, renamed into place when
/// complete) or to standard output, which must not be a terminal.
fn write_archive(
    output: Option<PathBuf>,
    write: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    match output {
        Some(path) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let mut tmp = tempfile_in(&dir, &path)?;
            let written = (|| {
                let mut w = std::io::BufWriter::new(&mut tmp.1);
                write(&mut w)?;
                w.flush().context("cannot write the archive")?;
                drop(w);
                tmp.1.sync_all().context("cannot sync the archive")?;
                std::fs::rename(&tmp.0, &path)
                    .with_context(|| format!("cannot write {}", path.display()))
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp.0);
            }
            written?;
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                anyhow::bail!(
                    "cowardly refusing to save to a terminal. Use the -o flag or redirect"
                );
            }
            let mut w = std::io::BufWriter::new(stdout.lock());
            write(&mut w)?;
            w.flush().context("cannot write to standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A new file beside `path` for writing it atomically.
fn tempfile_in(
    dir: &std::path::Path,
    path: &std::path::Path,
) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    Ok((tmp, f))
}

/// `husk history [--no-trunc] [-q] [--human=false] IMAGE`.
pub fn history(
    store: &Store,
    image: &str,
    f: husk_image::HistoryFormat,
) -> anyhow::Result<ExitCode> {
    let img = store.resolve(image)?;
    let rows = husk_image::history(store, &img)?;
    print!(
        "{}",
        husk_image::history_table(&rows, f, std::time::SystemTime::now())
    );
    Ok(ExitCode::SUCCESS)
}

/// Docker's prune prompt: the warning, then `y` on standard input to go on.
fn confirm(warning: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    print!("WARNING! {warning}\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y"))
}

/// A container that no monitor runs.
fn stopped(c: &husk_runtime::container::Container) -> bool {
    !c.state.status.is_live() || !husk_runtime::container::monitor_alive(&c.state)
}

/// `husk image prune [-a] [-f]`: dangling images, or with `-a` every image
/// no container uses.
pub fn image_prune(
    store: &Store,
    containers: &husk_runtime::container::ContainerStore,
    all: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let warning = if all {
        "This will remove all images without at least one container associated to them."
    } else {
        "This will remove all dangling images."
    };
    if !force && !confirm(warning)? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut in_use = std::collections::BTreeSet::new();
    for c in containers.list()? {
        if let Some(id) = c.config.image_id.as_deref().and_then(|i| i.parse().ok()) {
            in_use.insert(id);
        }
    }
    let report = husk_image::prune(store, &in_use, all).context("cannot prune images")?;
    print!("{}", report.text());
    Ok(ExitCode::SUCCESS)
}

/// `husk system prune [-a] [-f]`: stopped containers, networks no
/// container uses, and dangling images (with `-a`: every image no
/// container uses), as `docker system prune`. (`husk build`'s cache is
/// kept: its entries whose layers are gone are dropped when looked up.)
pub fn system_prune(
    engine: &husk_runtime::engine::Engine,
    store: &Store,
    all: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let images = if all {
        "all images without at least one container associated to them"
    } else {
        "all dangling images"
    };
    let warning = format!(
        "This will remove:\n  - all stopped containers\n  - all networks not used by at least one container\n  - {images}\n"
    );
    if !force && !confirm(&warning)? {
        return Ok(ExitCode::SUCCESS);
    }
    let code = container_prune(engine, true)?;
    let gone = engine.network_prune().context("cannot prune networks")?;
    if !gone.is_empty() {
        println!("Deleted Networks:");
        for n in gone {
            println!("{n}");
        }
        println!();
    }
    let containers = husk_runtime::container::ContainerStore::open(store.root())?;
    let images = image_prune(store, &containers, all, true)?;
    Ok(if code == ExitCode::SUCCESS {
        images
    } else {
        code
    })
}

/// `husk container prune [-f]`: every container no monitor runs.
pub fn container_prune(
    engine: &husk_runtime::engine::Engine,
    force: bool,
) -> anyhow::Result<ExitCode> {
    if !force && !confirm("This will remove all stopped containers.")? {
        return Ok(ExitCode::SUCCESS);
    }
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    let mut failed = false;
    for c in engine.list()?.into_iter().filter(stopped) {
        let size = husk_image::dir_size(&c.upper_dir()).unwrap_or(0);
        match engine.remove(&c.id, false) {
            Ok(_) => {
                deleted.push(c.id.clone());
                reclaimed += size;
            }
            Err(e) => {
                eprintln!("husk: error: cannot remove container {}: {e}", c.short_id());
                failed = true;
            }
        }
    }
    if !deleted.is_empty() {
        println!("Deleted Containers:");
        for id in &deleted {
            println!("{id}");
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        husk_image::progress::human_size(reclaimed)
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `husk system df`.
pub fn system_df(
    store: &Store,
    containers: &husk_runtime::container::ContainerStore,
) -> anyhow::Result<ExitCode> {
    let mut usage = Vec::new();
    for c in containers.list()? {
        usage.push(husk_image::ContainerUsage {
            image_id: c.config.image_id.as_deref().and_then(|i| i.parse().ok()),
            size: husk_image::dir_size(&c.upper_dir())
                .with_context(|| format!("cannot measure container {}", c.short_id()))?,
            active: !stopped(&c),
        });
    }
    let rows = husk_image::disk_usage(store, &usage).context("cannot measure the images")?;
    print!("{}", husk_image::disk_usage_table(&rows));
    Ok(ExitCode::SUCCESS)
}

/// A container's image and the lower directory of its writable layer (the
/// image's rootfs, unpacked again if it was collected; kept while the lease lives).
fn container_lower(
    store: &Store,
    c: &husk_runtime::container::Container,
) -> anyhow::Result<(
    Option<husk_image::Image>,
    PathBuf,
    Option<husk_image::Rootfs>,
)> {
    let image = c
        .config
        .image_id
        .as_deref()
        .and_then(|id| store.resolve(id).ok());
    match &image {
        Some(img) => {
            let rootfs = store
                .rootfs(img, husk_image::UnpackLimits::default())
                .with_context(|| format!("cannot unpack image {}", img.id))?;
            Ok((image.clone(), rootfs.path.clone(), Some(rootfs)))
        }
        None => Ok((None, c.config.rootfs.clone(), None)),
    }
}

/// `husk commit [-c CHANGE]... [-m MSG] [-a AUTHOR] CONTAINER [REPO[:TAG]]`:
/// prints the new image's id.
pub fn commit(
    store: &Store,
    containers: &husk_runtime::container::ContainerStore,
    container: &str,
    tag: Option<String>,
    changes: &[String],
    message: Option<String>,
    author: Option<String>,
) -> anyhow::Result<ExitCode> {
    let c = containers.find(container)?;
    let changes = husk_image::CommitChanges::parse(changes)?;
    let (image, lower, _lease) = container_lower(store, &c)?;
    let base = image.with_context(|| {
        format!(
            "container {} has no image to commit on (it was run with --rootfs, or its image was removed)",
            c.name
        )
    })?;
    let created_by = c
        .config
        .spec
        .argv
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let opts = husk_image::CommitOptions {
        changes,
        author,
        message,
        created_by: Some(created_by),
        created: None,
        tag,
    };
    let img = husk_image::commit(store, &base, &c.upper_dir(), &lower, &opts)
        .with_context(|| format!("cannot commit container {}", c.name))?;
    println!("{}", img.id);
    Ok(ExitCode::SUCCESS)
}

/// `husk export [-o FILE] CONTAINER`: its merged filesystem as a tar.
pub fn export(
    store: &Store,
    containers: &husk_runtime::container::ContainerStore,
    container: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let c = containers.find(container)?;
    let (_, lower, _lease) = container_lower(store, &c)?;
    let upper = c.upper_dir();
    write_archive(output, |w| {
        husk_image::export(&lower, &upper, w)
            .with_context(|| format!("cannot export container {}", c.name))
    })
}
