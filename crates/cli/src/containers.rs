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
    }
}
