//! `husk ps`, `rm`, `diff`, `inspect`, `stop`, `kill`, `restart`, `wait`,
//! `pause`, `unpause`, `top`, `stats`, `rename` and `logs`: views of
//! `husk_runtime::engine` with Docker's output and exit codes.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_image::format::human_age;
use husk_runtime::container::{Container, Status};
use husk_runtime::engine::{Engine, EngineError};
use husk_runtime::logs::{ReadOptions, parse_time};

use crate::run::daemon_error;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Docker's STATUS column.
pub fn status(c: &Container, now: i64) -> String {
    let since = |t: Option<u64>| t.map_or(0, |t| now - t as i64);
    let up = || {
        human_age(since(c.state.started_at))
            .trim_end_matches(" ago")
            .to_string()
    };
    let code = || {
        c.state
            .exit_code
            .map_or_else(|| "unknown".to_string(), |c| c.to_string())
    };
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", up()),
        Status::Paused => format!("Up {} (Paused)", up()),
        Status::Restarting => format!(
            "Restarting ({}) {}",
            code(),
            human_age(since(c.state.finished_at))
        ),
        Status::Exited => format!(
            "Exited ({}) {}",
            code(),
            human_age(since(c.state.finished_at))
        ),
    }
}

/// The command as Docker's COMMAND column shows it: quoted, cut at 20.
fn command(c: &Container) -> String {
    let words: Vec<String> = c
        .config
        .spec
        .argv
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut s = words.join(" ");
    if s.chars().count() > 20 {
        s = s.chars().take(19).collect::<String>() + "…";
    }
    format!("\"{s}\"")
}

/// A `ps` field by its Go-template name.
fn field(c: &Container, name: &str, now: i64) -> Option<String> {
    Some(match name {
        "ID" => c.short_id().to_string(),
        "Names" => c.name.clone(),
        "Image" => c.config.image.clone(),
        "Command" => command(c),
        "CreatedAt" => husk_runtime::engine::rfc3339(c.created),
        "RunningFor" => human_age(now - c.created as i64),
        "Status" => status(c, now),
        "State" => c.state.status.word().to_string(),
        "Ports" => ports(c),
        "Networks" => {
            if c.config.network.mode == husk_runtime::net::NetworkMode::None {
                "none".into()
            } else {
                String::new()
            }
        }
        _ => return None,
    })
}

/// Renders `--format`: `{{.Field}}` placeholders, `\t`, and a leading
/// `table` for a header and aligned columns.
pub fn format_rows(template: &str, list: &[Container], now: i64) -> anyhow::Result<String> {
    let (table, tpl) = match template.strip_prefix("table") {
        Some(rest) => (true, rest.trim_start()),
        None => (false, template),
    };
    let tpl = tpl.replace("\\t", "\t").replace("\\n", "\n");
    let render = |f: &dyn Fn(&str) -> Option<String>| -> anyhow::Result<String> {
        let mut out = String::new();
        let mut rest = tpl.as_str();
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| anyhow::anyhow!("template: unclosed action in {template:?}"))?;
            let inner = rest[start + 2..start + end].trim();
            let name = inner
                .strip_prefix('.')
                .ok_or_else(|| anyhow::anyhow!("template: can't evaluate {inner:?}"))?;
            out.push_str(&f(name).ok_or_else(|| {
                anyhow::anyhow!("template: can't evaluate field {name} in type container")
            })?);
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    };
    let mut lines = Vec::new();
    if table {
        lines.push(render(&|n| {
            Some(
                match n {
                    "ID" => "CONTAINER ID",
                    "Names" => "NAMES",
                    "Image" => "IMAGE",
                    "Command" => "COMMAND",
                    "CreatedAt" => "CREATED AT",
                    "RunningFor" => "CREATED",
                    "Status" => "STATUS",
                    "State" => "STATE",
                    "Ports" => "PORTS",
                    _ => return None,
                }
                .to_string(),
            )
        })?);
    }
    for c in list {
        lines.push(render(&|n| field(c, n, now))?);
    }
    if table {
        // Align tab-separated cells.
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect();
        return Ok(husk_image::format::layout(rows.iter().map(|r| &r[..]), 0));
    }
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// The PORTS column: what a running container publishes and exposes.
pub fn ports(c: &Container) -> String {
    if !c.state.status.is_live() {
        return String::new();
    }
    let published = c
        .state
        .network
        .as_ref()
        .map(|n| n.ports.as_slice())
        .unwrap_or_default();
    husk_runtime::net::ports::ps_column(published, &c.config.network.exposed)
}

/// The `husk ps` table.
pub fn table(containers: &[Container], now: i64) -> String {
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "IMAGE".to_string(),
        "COMMAND".to_string(),
        "CREATED".to_string(),
        "STATUS".to_string(),
        "PORTS".to_string(),
        "NAMES".to_string(),
    ]];
    for c in containers {
        rows.push([
            c.short_id().to_string(),
            c.config.image.clone(),
            command(c),
            human_age(now - c.created as i64),
            status(c, now),
            ports(c),
            c.name.clone(),
        ]);
    }
    husk_image::format::columns(&rows)
}

/// `husk ps` options.
#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only show container ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Filter: name=, id=, status=, ancestor=.
    #[arg(short = 'f', long = "filter")]
    pub filters: Vec<String>,
    /// Go-template-like format: `{{.ID}} {{.Names}} {{.Status}}`, `table ...`.
    #[arg(long)]
    pub format: Option<String>,
    /// Don't cut the command and ids.
    #[arg(long)]
    pub no_trunc: bool,
}

fn matches(c: &Container, key: &str, value: &str) -> bool {
    match key {
        "name" => c.name.contains(value),
        "id" => c.id.starts_with(value),
        "status" => c.state.status.word() == value,
        "ancestor" => c.config.image == value || c.config.image_id.as_deref() == Some(value),
        _ => false,
    }
}

/// `husk ps`.
pub fn ps(engine: &Engine, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let mut filters = Vec::new();
    for f in &args.filters {
        match f.split_once('=') {
            Some((k @ ("name" | "id" | "status" | "ancestor"), v)) => filters.push((k, v)),
            _ => {
                eprintln!("Error response from daemon: Invalid filter '{f}'");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let all = args.all || filters.iter().any(|(k, _)| *k == "status");
    let list: Vec<Container> = engine
        .list()?
        .into_iter()
        .filter(|c| all || c.state.status.is_live())
        .filter(|c| {
            // Same key: any value; different keys: all.
            let keys: std::collections::BTreeSet<&str> = filters.iter().map(|(k, _)| *k).collect();
            keys.iter().all(|k| {
                filters
                    .iter()
                    .filter(|(fk, _)| fk == k)
                    .any(|(_, v)| matches(c, k, v))
            })
        })
        .collect();
    let now = now();
    if args.quiet {
        for c in &list {
            println!("{}", if args.no_trunc { &c.id } else { c.short_id() });
        }
    } else if let Some(f) = &args.format {
        print!("{}", format_rows(f, &list, now)?);
    } else {
        print!("{}", table(&list, now));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` for each name, printing the name on success and Docker's error
/// on failure; exit 1 if any failed.
pub fn each(
    names: &[String],
    mut f: impl FnMut(&str) -> Result<(), EngineError>,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for n in names {
        match f(n) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("{}", daemon_error(&e));
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

/// One engine call; Docker's error and exit 1 on failure.
pub fn one<T>(r: Result<T, EngineError>) -> Result<T, ExitCode> {
    r.map_err(|e| {
        eprintln!("{}", daemon_error(&e));
        ExitCode::FAILURE
    })
}

/// `husk diff CONTAINER`.
pub fn diff(engine: &Engine, name: &str) -> anyhow::Result<ExitCode> {
    match one(engine.diff(name)) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

/// `husk inspect NAME...`: containers, then images; unknown names print
/// `[]` (with what was found) and Docker's error.
pub fn inspect(engine: &Engine, names: &[String]) -> anyhow::Result<ExitCode> {
    let mut all = Vec::new();
    let mut failed = false;
    for n in names {
        match engine.find(n) {
            Ok(c) => all.push(engine.inspect(&c)),
            Err(EngineError::NoSuchContainer(_)) => match engine.images().inspect(n) {
                Ok(serde_json::Value::Array(items)) => all.extend(items),
                Ok(other) => all.push(other),
                Err(_) => {
                    eprintln!("Error: No such object: {n}");
                    failed = true;
                }
            },
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&all)?);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `husk top CONTAINER`.
pub fn top(engine: &Engine, name: &str) -> anyhow::Result<ExitCode> {
    let (titles, processes) = match one(engine.top(name)) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let mut rows = vec![titles];
    rows.extend(processes);
    print!(
        "{}",
        husk_image::format::layout(rows.iter().map(|r| &r[..]), 0)
    );
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= (1u64 << 30) as f64 {
        format!("{:.3}GiB", f / (1u64 << 30) as f64)
    } else if f >= (1u64 << 20) as f64 {
        format!("{:.2}MiB", f / (1u64 << 20) as f64)
    } else if f >= 1024.0 {
        format!("{:.2}KiB", f / 1024.0)
    } else {
        format!("{n}B")
    }
}

/// `husk stats [--no-stream] [CONTAINER...]`.
pub fn stats(engine: &Engine, names: &[String], no_stream: bool) -> anyhow::Result<ExitCode> {
    loop {
        let targets: Vec<String> = if names.is_empty() {
            engine
                .list()?
                .into_iter()
                .filter(|c| c.state.status.is_live())
                .map(|c| c.id)
                .collect()
        } else {
            names.to_vec()
        };
        // Two samples a second apart, for CPU %.
        let mut first = Vec::new();
        for n in &targets {
            match engine.stats(n) {
                Ok(s) => first.push((n.clone(), s, std::time::Instant::now())),
                Err(e) => {
                    eprintln!("{}", daemon_error(&e));
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let mut rows = vec![[
            "CONTAINER ID".to_string(),
            "NAME".to_string(),
            "CPU %".to_string(),
            "MEM USAGE / LIMIT".to_string(),
            "MEM %".to_string(),
            "GUEST MEM USED".to_string(),
            "PIDS".to_string(),
        ]];
        for (n, (c, s0), t0) in first {
            let Ok((_, s1)) = engine.stats(&n) else {
                continue;
            };
            // CPU time over the wall time between the two samples (the
            // monitor's threads: the vCPUs and the devices).
            let wall = t0.elapsed().as_secs_f64().max(1e-3);
            let cpu = (s1.host_cpu_ns.saturating_sub(s0.host_cpu_ns)) as f64 / 1e9 / wall * 100.0;
            let mem_pct = s1.host_rss as f64 / s1.mem_limit.max(1) as f64 * 100.0;
            let guest = s1.guest.map_or_else(
                || "--".to_string(),
                |g| human_bytes(g.mem_total.saturating_sub(g.mem_available)),
            );
            rows.push([
                c.short_id().to_string(),
                c.name.clone(),
                format!("{cpu:.2}%"),
                format!(
                    "{} / {}",
                    human_bytes(s1.host_rss),
                    human_bytes(s1.mem_limit)
                ),
                format!("{mem_pct:.2}%"),
                guest,
                s1.guest.map_or_else(|| "--".into(), |g| g.pids.to_string()),
            ]);
        }
        print!("{}", husk_image::format::columns(&rows));
        let _ = std::io::stdout().flush();
        if no_stream {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// `husk logs` options.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Follow the log output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Number of lines to show from the end ("all" for all).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Only lines since this time (RFC 3339, Unix timestamp, or a duration: 10m).
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// The container.
    pub container: String,
}

/// `husk logs`.
pub fn logs(engine: &Engine, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    let tail = match args.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("invalid --tail {n:?}: a number or \"all\""))?,
        ),
    };
    let opts = ReadOptions {
        tail,
        since: args
            .since
            .as_deref()
            .map(|s| parse_time(s, now))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|s| parse_time(s, now))
            .transpose()?,
    };
    if let Err(code) = one(engine.find(&args.container)) {
        return Ok(code);
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let ts = args.timestamps;
    let mut print = |e: husk_runtime::logs::Entry| -> std::io::Result<()> {
        let w: &mut dyn Write = match e.stream {
            husk_runtime::logs::Stream::Stdout => &mut out,
            husk_runtime::logs::Stream::Stderr => &mut err,
        };
        if ts {
            write!(w, "{} ", e.time)?;
        }
        w.write_all(e.log.as_bytes())?;
        w.flush()
    };
    let r = if args.follow {
        engine.follow_logs(&args.container, &opts, &mut print)
    } else {
        engine.logs(&args.container, &opts).map(|entries| {
            for e in entries {
                if print(e).is_err() {
                    break;
                }
            }
        })
    };
    Ok(match one(r) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_table_and_formats_like_docker() {
        let root = tempfile::tempdir().unwrap();
        let store = husk_runtime::container::ContainerStore::open(root.path()).unwrap();
        let config = husk_runtime::container::ContainerConfig {
            image: "busybox".into(),
            image_id: None,
            rootfs: "/".into(),
            spec: husk_runtime::RunSpec::new(["sh", "-c", "echo a long command line here"]),
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            mem_size: 1 << 28,
            vcpus: 1,
            hostname: None,
            stop_signal: None,
            stop_timeout: None,
            restart: Default::default(),
            log: Default::default(),
            open_stdin: false,
            auto_remove: false,
            rootfs_via: Default::default(),
            vm: Default::default(),
            network: Default::default(),
            oci: None,
        };
        let c = store.create(Some("web"), config).unwrap();
        let t = table(std::slice::from_ref(&c), c.created as i64 + 5);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CONTAINER ID   IMAGE"), "{t}");
        assert!(
            lines[0].contains("STATUS") && lines[0].contains("PORTS   NAMES"),
            "{t}"
        );
        assert!(lines[1].starts_with(c.short_id()), "{t}");
        assert!(lines[1].contains("\"sh -c echo a long c…\""), "{t}");
        assert!(lines[1].contains("5 seconds ago   Created"), "{t}");
        assert!(lines[1].ends_with("web"), "{t}");
        let f = format_rows(
            "{{.ID}} {{.Names}} {{.Status}}",
            std::slice::from_ref(&c),
            c.created as i64,
        )
        .unwrap();
        assert_eq!(f, format!("{} web Created\n", c.short_id()));
        let f = format_rows("table {{.Names}}\\t{{.State}}", std::slice::from_ref(&c), 0).unwrap();
        assert_eq!(f, "NAMES   STATE\nweb     created\n");
        assert!(format_rows("{{.Nope}}", std::slice::from_ref(&c), 0).is_err());
        assert!(format_rows("{{.ID", std::slice::from_ref(&c), 0).is_err());
        let mut paused = c.clone();
        paused.state.status = Status::Paused;
        paused.state.started_at = Some(c.created);
        assert_eq!(
            status(&paused, c.created as i64 + 180),
            "Up 3 minutes (Paused)"
        );
        let j = husk_runtime::engine::inspect_json(&c, "none");
        assert_eq!(j["Name"], "/web");
        assert_eq!(j["State"]["Status"], "created");
        assert_eq!(j["Config"]["Cmd"][2], "echo a long command line here");
    }
}
