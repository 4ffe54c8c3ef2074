//! `husk ps`, `husk rm` and `husk diff`: the containers `husk run` left.

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use husk_image::format::human_age;
use husk_runtime::container::{Container, ContainerStore, Status};

/// Opens the container store beside the image store.
pub fn open(root: Option<std::path::PathBuf>) -> anyhow::Result<ContainerStore> {
    let store = crate::images::open_store(root)?;
    ContainerStore::open(store.root()).context("cannot open the container store")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Docker's STATUS column.
fn status(c: &Container, now: i64) -> String {
    let since = |t: Option<u64>| t.map_or(0, |t| now - t as i64);
    match c.state.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let age = human_age(since(c.state.started_at));
            format!("Up {}", age.trim_end_matches(" ago"))
        }
        Status::Exited => {
            let code = c
                .state
                .exit_code
                .map_or_else(|| "unknown".to_string(), |c| c.to_string());
            format!("Exited ({code}) {}", human_age(since(c.state.finished_at)))
        }
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

/// The `husk ps` table.
pub fn table(containers: &[Container], now: i64) -> String {
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "IMAGE".to_string(),
        "COMMAND".to_string(),
        "CREATED".to_string(),
        "STATUS".to_string(),
        "NAMES".to_string(),
    ]];
    for c in containers {
        rows.push([
            c.short_id().to_string(),
            c.config.image.clone(),
            command(c),
            human_age(now - c.created as i64),
            status(c, now),
            c.name.clone(),
        ]);
    }
    husk_image::format::columns(&rows)
}

/// `husk ps [-a] [-q]`.
pub fn ps(store: &ContainerStore, all: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    let list: Vec<Container> = store
        .list()?
        .into_iter()
        .filter(|c| all || c.state.status == Status::Running)
        .collect();
    if quiet {
        for c in &list {
            println!("{}", c.short_id());
        }
    } else {
        print!("{}", table(&list, now()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `husk rm [-f] CONTAINER...`: prints each argument removed, as Docker
/// does.
pub fn rm(store: &ContainerStore, names: &[String], force: bool) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for n in names {
        match store
            .find(n)
            .and_then(|c| store.remove(&c, force).map(|()| c))
        {
            Ok(c) => {
                // A killed husk leaves its VM's socket directory behind.
                let _ = std::fs::remove_dir_all(crate::run::sandbox_dir_for(Some(c.short_id())));
                println!("{n}");
            }
            Err(e) => {
                eprintln!("husk: error: {e}");
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

/// `husk diff CONTAINER`: what the container changed in its root, from its
/// writable layer (Docker's A added, C changed, D deleted).
pub fn diff(store: &ContainerStore, name: &str) -> anyhow::Result<ExitCode> {
    let c = store.find(name)?;
    let mut lines = Vec::new();
    walk(&c.upper_dir(), &c.config.rootfs, "", &mut lines)
        .with_context(|| format!("cannot read the writable layer of {}", c.name))?;
    for l in lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// An overlayfs whiteout: a 0:0 character device.
fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
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
        // The mount points the agent makes for the kernel filesystems
        // (Docker keeps these in an init layer, so its diff omits them).
        if !in_lower && meta.is_dir() && ["/dev", "/proc", "/sys"].contains(&path.as_str()) {
            continue;
        }
        if is_whiteout(&meta) {
            out.push(format!("D {path}"));
            continue;
        }
        out.push(format!("{} {path}", if in_lower { "C" } else { "A" }));
        if meta.is_dir() {
            walk(upper, lower, &path, out)?;
        }
    }
    Ok(())
}

/// RFC 3339 (UTC) for seconds since the epoch, as Docker prints times.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `docker inspect`-shaped JSON for a container.
pub fn inspect_json(c: &Container) -> serde_json::Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let spec = &c.config.spec;
    let time = |t: Option<u64>| t.map_or_else(|| "0001-01-01T00:00:00Z".to_string(), rfc3339);
    let status = match c.state.status {
        Status::Created => "created",
        Status::Running => "running",
        Status::Exited => "exited",
    };
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
    serde_json::json!({
        "Id": c.id,
        "Name": format!("/{}", c.name),
        "Created": rfc3339(c.created),
        "Path": spec.argv.first().map(|a| text(a)).unwrap_or_default(),
        "Args": spec.argv.iter().skip(1).map(|a| text(a)).collect::<Vec<_>>(),
        "State": {
            "Status": status,
            "Running": c.state.status == Status::Running,
            "Pid": c.state.pid.unwrap_or(0),
            "ExitCode": c.state.exit_code.unwrap_or(0),
            "StartedAt": time(c.state.started_at),
            "FinishedAt": time(c.state.finished_at),
        },
        "Image": c.config.image_id.clone().unwrap_or_default(),
        "Config": {
            "Image": c.config.image,
            "Cmd": spec.argv.iter().map(|a| text(a)).collect::<Vec<_>>(),
            "Env": spec.env.iter().map(|(k, v)| format!("{}={}", text(k), text(v))).collect::<Vec<_>>(),
            "WorkingDir": spec.cwd.as_deref().map(text).unwrap_or_else(|| "/".into()),
            "User": format!("{}:{}", spec.uid, spec.gid),
            "Tty": spec.tty,
        },
        "HostConfig": {
            "Memory": c.config.mem_size,
            "NanoCpus": u64::from(c.config.vcpus) * 1_000_000_000,
        },
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

/// `husk inspect NAME...`: containers, then images, as Docker looks them up.
pub fn inspect(
    containers: &ContainerStore,
    images: &husk_image::Store,
    names: &[String],
) -> anyhow::Result<ExitCode> {
    let mut all = Vec::new();
    for n in names {
        match containers.find(n) {
            Ok(c) => all.push(inspect_json(&c)),
            Err(husk_runtime::container::ContainerError::NotFound(_)) => match images.inspect(n) {
                Ok(serde_json::Value::Array(items)) => all.extend(items),
                Ok(other) => all.push(other),
                Err(_) => anyhow::bail!("no such object: {n}"),
            },
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&all)?);
    Ok(ExitCode::SUCCESS)
}

/// Containers that use an image, for `husk rmi`'s check.
pub fn users_of(store: &ContainerStore, image_id: &str) -> anyhow::Result<Vec<Container>> {
    Ok(store
        .list()?
        .into_iter()
        .filter(|c| c.config.image_id.as_deref() == Some(image_id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(981_173_106), "2001-02-03T04:05:06Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn ps_table_like_docker() {
        let root = tempfile::tempdir().unwrap();
        let store = ContainerStore::open(root.path()).unwrap();
        let config = husk_runtime::container::ContainerConfig {
            image: "busybox".into(),
            image_id: None,
            rootfs: "/".into(),
            spec: husk_runtime::RunSpec::new(["sh", "-c", "echo a long command line here"]),
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            mem_size: 1 << 28,
            vcpus: 1,
        };
        let c = store.create(Some("web"), config).unwrap();
        let t = table(std::slice::from_ref(&c), c.created as i64 + 5);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CONTAINER ID   IMAGE"), "{t}");
        assert!(lines[1].starts_with(c.short_id()), "{t}");
        assert!(lines[1].contains("\"sh -c echo a long c…\""), "{t}");
        assert!(lines[1].contains("5 seconds ago   Created"), "{t}");
        assert!(lines[1].ends_with("web"), "{t}");
        let j = inspect_json(&c);
        assert_eq!(j["Name"], "/web");
        assert_eq!(j["State"]["Status"], "created");
        assert_eq!(j["Config"]["Cmd"][2], "echo a long command line here");
        assert_eq!(
            j["GraphDriver"]["Data"]["UpperDir"],
            serde_json::json!(c.upper_dir())
        );
    }
}
