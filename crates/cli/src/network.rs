//! `husk network ...` and `husk port`: parse and print; the work is
//! `husk_runtime::engine` and `husk_runtime::net`.

use std::process::ExitCode;

use clap::Subcommand;
use husk_runtime::engine::Engine;
use husk_runtime::net::store::CreateNetwork;

/// `husk network` subcommands.
#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network (a bridge on the host; needs root).
    Create {
        /// Driver (only bridge).
        #[arg(short = 'd', long)]
        driver: Option<String>,
        /// Subnet in CIDR form, e.g. 10.89.7.0/24 (default: a free /24 of 10.89.0.0/16).
        #[arg(long)]
        subnet: Option<String>,
        /// The host's address on it (default: the subnet's first).
        #[arg(long)]
        gateway: Option<String>,
        /// No outbound access.
        #[arg(long)]
        internal: bool,
        /// Set metadata: KEY=VALUE.
        #[arg(long)]
        label: Vec<String>,
        /// The network's name.
        name: String,
    },
    /// List networks.
    #[command(visible_alias = "list")]
    Ls {
        /// Only show network IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Do not truncate the IDs.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Remove networks.
    #[command(visible_alias = "remove")]
    Rm {
        /// The networks.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Show networks' details as JSON.
    Inspect {
        /// The networks.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Connect a (stopped) container to a network, from its next start.
    Connect {
        /// Network-scoped aliases.
        #[arg(long)]
        alias: Vec<String>,
        /// The network.
        network: String,
        /// The container.
        container: String,
    },
    /// Disconnect a (stopped) container from a network.
    Disconnect {
        /// Ignored (the container must not be running anyway).
        #[arg(short = 'f', long)]
        force: bool,
        /// The network.
        network: String,
        /// The container.
        container: String,
    },
    /// Remove all networks no container uses.
    Prune {
        /// Do not ask.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("Error response from daemon: {e}");
    ExitCode::from(1)
}

/// Runs a `husk network` subcommand.
pub fn network(e: &Engine, cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NetworkCommand::Create {
            driver,
            subnet,
            gateway,
            internal,
            label,
            name,
        } => {
            let opts = CreateNetwork {
                subnet,
                gateway,
                internal,
                labels: label,
                driver,
            };
            match e.network_create(&name, &opts) {
                Ok(n) => {
                    println!("{}", n.id);
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => Ok(fail(err)),
            }
        }
        NetworkCommand::Ls { quiet, no_trunc } => {
            let nets = e.networks()?.list()?;
            let id = |s: &str| {
                if no_trunc {
                    s.to_owned()
                } else {
                    s.chars().take(12).collect()
                }
            };
            let mut rows = vec![[
                "NETWORK ID".to_string(),
                "NAME".into(),
                "DRIVER".into(),
                "SCOPE".into(),
            ]];
            // The built-in ones first, as Docker lists bridge, host, none.
            rows.push([
                "default".into(),
                husk_runtime::net::DEFAULT_NETWORK.into(),
                "passt".into(),
                "local".into(),
            ]);
            rows.push(["none".into(), "none".into(), "null".into(), "local".into()]);
            for n in &nets {
                rows.push([id(&n.id), n.name.clone(), "bridge".into(), "local".into()]);
            }
            if quiet {
                for n in &nets {
                    println!("{}", id(&n.id));
                }
            } else {
                print!("{}", husk_image::format::columns(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Rm { networks } => {
            let mut code = ExitCode::SUCCESS;
            for n in networks {
                match e.network_remove(&n) {
                    Ok(_) => println!("{n}"),
                    Err(err) => code = fail(err),
                }
            }
            Ok(code)
        }
        NetworkCommand::Inspect { networks } => {
            let mut out = Vec::new();
            let mut code = ExitCode::SUCCESS;
            for n in networks {
                match e.network_inspect_json(&n) {
                    Ok(j) => out.push(j),
                    Err(err) => code = fail(err),
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(code)
        }
        NetworkCommand::Connect {
            alias,
            network,
            container,
        } => match e.network_connect(&network, &container, &alias) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(err) => Ok(fail(err)),
        },
        NetworkCommand::Disconnect {
            force: _,
            network,
            container,
        } => match e.network_disconnect(&network, &container) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(err) => Ok(fail(err)),
        },
        NetworkCommand::Prune { force: _ } => {
            let gone = e.network_prune()?;
            if !gone.is_empty() {
                println!("Deleted Networks:");
                for n in gone {
                    println!("{n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `husk port CONTAINER [PRIVATE_PORT[/PROTO]]`, as `docker port` prints it.
pub fn port(e: &Engine, container: &str, private: Option<&str>) -> anyhow::Result<ExitCode> {
    let ports = match e.ports(container) {
        Ok(p) => p,
        Err(err) => return Ok(fail(err)),
    };
    match private {
        None => {
            for p in &ports {
                println!("{}/{} -> {}", p.container_port, p.proto, p.host_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(q) => {
            let wanted = husk_runtime::net::ports::parse_exposed(q)
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            let hits: Vec<_> = ports
                .iter()
                .filter(|p| wanted.contains(&(p.container_port, p.proto)))
                .collect();
            if hits.is_empty() {
                return Ok(fail(format!(
                    "No public port '{q}' published for {container}"
                )));
            }
            for p in hits {
                println!("{}", p.host_text());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
