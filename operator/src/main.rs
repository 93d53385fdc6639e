//! `proglog-operator`: the LogCluster operator. `render` prints what it would apply for a
//! resource, without a cluster; `run` (the reconciler) comes next.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use proglog_operator::render::{RenderOptions, render_stream};
use proglog_operator::resources::OperatorSettings;

/// The proglog Kubernetes operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints every object the operator would apply for the LogClusters in a file (as a YAML
    /// stream, certificates included), without a cluster, like `helm template`. The file may
    /// also hold the ACL ConfigMap and CA Secret the spec names, and the certificate Secrets
    /// of an earlier render, which are then kept or renewed as the operator would.
    Render {
        /// The YAML file (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The time certificates are issued and checked at (RFC 3339). Default: now.
        #[arg(long)]
        now: Option<Timestamp>,
        /// Namespace of resources whose metadata names none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The cluster's DNS domain.
        #[arg(long, env = "PROGLOG_CLUSTER_DOMAIN", default_value = "cluster.local")]
        cluster_domain: String,
        /// Print `<redacted>` instead of certificates and keys.
        #[arg(long)]
        redact_secrets: bool,
    },
    /// Runs the reconciler (not implemented yet).
    Run,
}

fn now() -> Timestamp {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    Timestamp::from_second(i64::try_from(seconds).unwrap_or(0)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Render {
            file,
            now: at,
            namespace,
            cluster_domain,
            redact_secrets,
        } => {
            let input = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map(|_| text)
            } else {
                std::fs::read_to_string(&file)
            };
            let input = match input {
                Ok(input) => input,
                Err(err) => {
                    eprintln!(
                        "proglog-operator render: cannot read {}: {err}",
                        file.display()
                    );
                    return ExitCode::from(2);
                }
            };
            let options = RenderOptions {
                now: at.unwrap_or_else(now),
                namespace,
                settings: OperatorSettings { cluster_domain },
                redact_secrets,
            };
            match render_stream(&input, &options) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("proglog-operator render: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => {
            eprintln!("proglog-operator run: the reconciler is not implemented yet (issue 5)");
            ExitCode::from(2)
        }
    }
}
