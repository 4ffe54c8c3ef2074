//! The container's first process, from the image config plus `docker run`-style
//! overrides, resolved exactly the way Docker does.

use std::io::Read;
use std::path::Path;

use crate::spec::ImageConfig;
use crate::unpack::{UnpackError, UnpackLimits, Unpacker};

/// Docker's default `PATH`, used when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors from resolving the process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Neither the image nor the command line gives a command.
    #[error("no command specified")]
    NoCommand,
    /// `-w` is not absolute.
    #[error("the working directory '{0}' is invalid, it needs to be an absolute path")]
    RelativeWorkdir(String),
    /// A user name not in the image's `/etc/passwd`.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// A group name not in the image's `/etc/group`.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// The user spec is malformed.
    #[error("invalid user specification {0:?}")]
    BadUser(String),
    /// Reading `/etc/passwd` or `/etc/group` from the rootfs failed.
    #[error("cannot read {file} from the image")]
    ReadRootfs {
        /// Which file.
        file: &'static str,
        /// The cause.
        #[source]
        source: UnpackError,
    },
}

/// What `docker run` lets the user override.
#[derive(Clone, Debug, Default)]
pub struct RunOverrides {
    /// `--entrypoint` (`Some("")` clears the image's entrypoint).
    pub entrypoint: Option<String>,
    /// Arguments after the image name (replace the image's Cmd).
    pub cmd: Vec<String>,
    /// `-e KEY=value` (set) or `-e KEY` (take from the host, or unset if the host has none).
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u user[:group]`.
    pub user: Option<String>,
    /// The container's hostname, exported as `HOSTNAME`.
    pub hostname: Option<String>,
    /// `-t`: adds `TERM=xterm`.
    pub tty: bool,
}

/// The user the process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
}

/// The resolved process: what the guest agent should exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv (argv\[0\] is looked up in `PATH` from `env` if it has no slash).
    pub args: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// Credentials.
    pub user: ProcessUser,
}

/// Resolves the process for `config` with `overrides`. `rootfs` is the unpacked image,
/// used to look users and groups up in its `/etc/passwd` and `/etc/group` (read without
/// following symlinks out of it) and to find `HOME`. `host_env` answers `-e KEY` lookups.
pub fn resolve_process(
    config: &ImageConfig,
    rootfs: Option<&Path>,
    overrides: &RunOverrides,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<ProcessSpec, ProcessError> {
    let image = config.config.clone().unwrap_or_default();

    // Entrypoint and Cmd: a user entrypoint drops the image's Cmd.
    let (entrypoint, cmd) = match &overrides.entrypoint {
        Some(ep) => {
            let ep = if ep.is_empty() {
                Vec::new()
            } else {
                vec![ep.clone()]
            };
            (ep, overrides.cmd.clone())
        }
        None => {
            let cmd = if overrides.cmd.is_empty() {
                image.cmd.clone().unwrap_or_default()
            } else {
                overrides.cmd.clone()
            };
            (image.entrypoint.clone().unwrap_or_default(), cmd)
        }
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ProcessError::NoCommand);
    }

    // Working directory.
    let cwd = match &overrides.workdir {
        Some(w) if !w.starts_with('/') => return Err(ProcessError::RelativeWorkdir(w.clone())),
        Some(w) => clean_path(w),
        None => match image.working_dir.as_deref() {
            Some(w) if !w.is_empty() => clean_path(&format!("/{w}")),
            _ => "/".to_string(),
        },
    };

    // Environment: daemon defaults, then the image's, then -e, each replacing by key.
    let mut env: Vec<String> = vec![format!("PATH={DEFAULT_PATH}")];
    if let Some(h) = &overrides.hostname {
        env.push(format!("HOSTNAME={h}"));
    }
    if overrides.tty {
        env.push("TERM=xterm".to_string());
    }
    let user_env: Vec<String> = overrides
        .env
        .iter()
        .map(|e| {
            if e.contains('=') {
                e.clone()
            } else {
                match host_env(e) {
                    Some(v) => format!("{e}={v}"),
                    None => e.clone(),
                }
            }
        })
        .collect();
    for e in image
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(user_env)
    {
        replace_or_append(&mut env, &e);
    }

    // User.
    let user_spec = overrides
        .user
        .clone()
        .or(image.user.clone())
        .unwrap_or_default();
    let (user, home) = resolve_user(&user_spec, rootfs)?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        user,
    })
}

/// Docker's `ReplaceOrAppendEnvValues` for one value: `K=V` replaces `K` in place or
/// appends; a bare `K` removes it.
fn replace_or_append(env: &mut Vec<String>, e: &str) {
    let key = e.split('=').next().unwrap_or(e);
    let pos = env
        .iter()
        .position(|x| x.split('=').next().unwrap_or(x) == key);
    match (e.contains('='), pos) {
        (true, Some(i)) => env[i] = e.to_string(),
        (true, None) => env.push(e.to_string()),
        (false, Some(i)) => {
            env.remove(i);
        }
        (false, None) => {}
    }
}

/// Lexically cleans an absolute path (`/a/./b/../c/` → `/a/c`).
fn clean_path(p: &str) -> String {
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

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

const MAX_ETC_FILE: u64 = 4 << 20;

fn read_etc(rootfs: Option<&Path>, file: &'static str) -> Result<String, ProcessError> {
    let Some(root) = rootfs else {
        return Ok(String::new());
    };
    let err = |source| ProcessError::ReadRootfs { file, source };
    let u = Unpacker::new(root, UnpackLimits::default()).map_err(err)?;
    let Some(f) = u.open_file(file).map_err(err)? else {
        return Ok(String::new());
    };
    let mut buf = Vec::new();
    f.take(MAX_ETC_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| err(UnpackError::Tar(e)))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `user[:group]` against the image's passwd and group files (runc's rules).
pub fn resolve_user(
    spec: &str,
    rootfs: Option<&Path>,
) -> Result<(ProcessUser, String), ProcessError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if spec.len() > 256 || user_part.contains(['\n', '/']) {
        return Err(ProcessError::BadUser(spec.to_string()));
    }
    let passwd = parse_passwd(&read_etc(rootfs, "/etc/passwd")?);
    let uid: u32;
    let mut gid = 0u32;
    let mut home = "/".to_string();
    let mut name: Option<String> = None;
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    match user_part.parse::<u32>() {
        Ok(n) => {
            uid = n;
            if let Some(p) = passwd.iter().find(|p| p.uid == n) {
                gid = p.gid;
                home = p.home.clone();
                name = Some(p.name.clone());
            }
        }
        Err(_) => {
            let p = passwd
                .iter()
                .find(|p| p.name == user_part)
                .ok_or_else(|| ProcessError::UnknownUser(user_part.to_string()))?;
            uid = p.uid;
            gid = p.gid;
            home = p.home.clone();
            name = Some(p.name.clone());
        }
    }
    let mut additional_gids = Vec::new();
    match group_part {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(n) => gid = n,
            Err(_) => {
                let groups = parse_group(&read_etc(rootfs, "/etc/group")?);
                gid = groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| ProcessError::UnknownGroup(g.to_string()))?
                    .gid;
            }
        },
        Some(_) => return Err(ProcessError::BadUser(spec.to_string())),
        None => {
            if let Some(n) = &name {
                let groups = parse_group(&read_etc(rootfs, "/etc/group")?);
                for g in groups.iter().filter(|g| g.members.iter().any(|m| m == n)) {
                    if !additional_gids.contains(&g.gid) {
                        additional_gids.push(g.gid);
                    }
                }
            }
        }
    }
    if home.is_empty() {
        home = "/".to_string();
    }
    Ok((
        ProcessUser {
            uid,
            gid,
            additional_gids,
        },
        home,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ContainerConfig;

    fn cfg(
        entrypoint: Option<&[&str]>,
        cmd: Option<&[&str]>,
        env: &[&str],
        wd: Option<&str>,
        user: Option<&str>,
    ) -> ImageConfig {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ImageConfig {
            config: Some(ContainerConfig {
                entrypoint: entrypoint.map(v),
                cmd: cmd.map(v),
                env: Some(v(env)),
                working_dir: wd.map(String::from),
                user: user.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn no_host(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn entrypoint_and_cmd_like_docker() {
        let c = cfg(Some(&["/ep"]), Some(&["a", "b"]), &[], None, None);
        let r = |o: RunOverrides| resolve_process(&c, None, &o, &no_host).map(|p| p.args);
        assert_eq!(r(RunOverrides::default()).unwrap(), ["/ep", "a", "b"]);
        assert_eq!(
            r(RunOverrides {
                cmd: vec!["x".into()],
                ..Default::default()
            })
            .unwrap(),
            ["/ep", "x"]
        );
        // --entrypoint drops the image's Cmd.
        assert_eq!(
            r(RunOverrides {
                entrypoint: Some("/sh".into()),
                ..Default::default()
            })
            .unwrap(),
            ["/sh"]
        );
        assert_eq!(
            r(RunOverrides {
                entrypoint: Some("/sh".into()),
                cmd: vec!["-c".into(), "x".into()],
                ..Default::default()
            })
            .unwrap(),
            ["/sh", "-c", "x"]
        );
        // --entrypoint "" with no args: nothing to run.
        assert!(matches!(
            r(RunOverrides {
                entrypoint: Some(String::new()),
                ..Default::default()
            }),
            Err(ProcessError::NoCommand)
        ));
        let c2 = cfg(None, None, &[], None, None);
        assert!(matches!(
            resolve_process(&c2, None, &RunOverrides::default(), &no_host),
            Err(ProcessError::NoCommand)
        ));
    }

    #[test]
    fn env_workdir_user() {
        let c = cfg(
            None,
            Some(&["sh"]),
            &["PATH=/bin", "A=1", "B=2"],
            Some("/srv/./app/"),
            None,
        );
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_string());
        let p = resolve_process(
            &c,
            None,
            &RunOverrides {
                env: vec![
                    "A=9".into(),
                    "B".into(),
                    "FROM_HOST".into(),
                    "NEW=x=y".into(),
                ],
                hostname: Some("abc".into()),
                ..Default::default()
            },
            &host,
        )
        .unwrap();
        assert_eq!(
            p.env,
            [
                "PATH=/bin",
                "HOSTNAME=abc",
                "A=9",
                "FROM_HOST=h",
                "NEW=x=y",
                "HOME=/"
            ]
        );
        assert_eq!(p.cwd, "/srv/app");
        assert_eq!(
            p.user,
            ProcessUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            }
        );
        let p = resolve_process(
            &cfg(None, Some(&["sh"]), &[], None, None),
            None,
            &RunOverrides::default(),
            &no_host,
        )
        .unwrap();
        assert_eq!(p.env[0], format!("PATH={DEFAULT_PATH}"));
        assert_eq!(p.cwd, "/");
        assert!(matches!(
            resolve_process(
                &c,
                None,
                &RunOverrides {
                    workdir: Some("rel".into()),
                    ..Default::default()
                },
                &no_host
            ),
            Err(ProcessError::RelativeWorkdir(_))
        ));
        let p = resolve_process(
            &c,
            None,
            &RunOverrides {
                user: Some("1000:50".into()),
                ..Default::default()
            },
            &no_host,
        )
        .unwrap();
        assert_eq!(
            p.user,
            ProcessUser {
                uid: 1000,
                gid: 50,
                additional_gids: vec![]
            }
        );
        assert!(matches!(
            resolve_process(
                &c,
                None,
                &RunOverrides {
                    user: Some("nobody".into()),
                    ..Default::default()
                },
                &no_host
            ),
            Err(ProcessError::UnknownUser(_))
        ));
    }
}
