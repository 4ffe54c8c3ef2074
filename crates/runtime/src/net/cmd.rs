//! Running the host's network tools (`ip`, `tc`, `nft`, `iptables`), as
//! Docker and libvirt drive them: one place that runs a tool, names the
//! Debian package it comes from when it is missing, and quotes the command
//! line and its stderr when it fails.

use std::io::Write;
use std::process::{Command, Stdio};

/// Why a network tool failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The tool could not be run (not installed, most often).
    #[error("cannot run {tool} (from Debian's {package} package)")]
    Tool {
        /// The command.
        tool: &'static str,
        /// The Debian package it comes from.
        package: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// The Debian package `tool` comes from.
fn package(tool: &'static str) -> &'static str {
    match tool {
        "nft" => "nftables",
        "iptables" => "iptables",
        _ => "iproute2",
    }
}

/// Runs `tool args...`; its stdout when it succeeds.
pub fn run(tool: &'static str, args: &[&str]) -> Result<String, CmdError> {
    run_with_stdin(tool, args, None)
}

/// Runs `tool args...` with `stdin` (a script for `nft -f -`) on its
/// standard input; its stdout when it succeeds.
pub fn run_with_stdin(
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CmdError> {
    let tool_err = |source| CmdError::Tool {
        tool,
        package: package(tool),
        source,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(tool_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits before reading it all fails below, with its
        // own message; a broken pipe here says less.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(tool_err)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut command = format!("{tool} {}", args.join(" "));
    if let Some(text) = stdin {
        command.push_str(&format!(" <<< {text:?}"));
    }
    Err(CmdError::Failed {
        command,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let e = run("husk-no-such-tool", &[]).unwrap_err();
        assert!(matches!(e, CmdError::Tool { .. }), "{e}");
        let e = Command::new("husk-no-such-tool").output().unwrap_err();
        let wrapped = CmdError::Tool {
            tool: "nft",
            package: package("nft"),
            source: e,
        };
        assert_eq!(
            wrapped.to_string(),
            "cannot run nft (from Debian's nftables package)"
        );
    }

    #[test]
    fn a_failing_tool_quotes_its_command_and_stderr() {
        let e = run("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        assert_eq!(e.to_string(), "sh -c echo nope >&2; exit 3 failed: nope");
        let out = run_with_stdin("sh", &["-c", "cat"], Some("fed")).unwrap();
        assert_eq!(out, "fed");
    }
}
