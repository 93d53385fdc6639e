//! `proglog-operator`: the LogCluster operator. `run` reconciles LogClusters in a cluster;
//! `render` prints what it would apply for a resource, without a cluster. Flags map onto
//! [`RunConfig`] here and nowhere else.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use proglog_operator::config::{LogFormat, RunConfig};
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
    /// Runs the reconciler until SIGTERM or SIGINT.
    Run(RunArgs),
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Flags of `run`; each can also be set by `PROGLOG_OPERATOR_<FLAG>`.
#[derive(Debug, Args)]
struct RunArgs {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long,
        env = "PROGLOG_OPERATOR_METRICS_ADDR",
        default_value = "[::]:8080"
    )]
    metrics_addr: SocketAddr,
    /// Elect one reconciling replica through a Lease.
    #[arg(
        long,
        env = "PROGLOG_OPERATOR_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "PROGLOG_OPERATOR_LEASE_NAME",
        default_value = "proglog-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (default: `POD_NAMESPACE`); required with leader election.
    #[arg(long, env = "PROGLOG_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Reconcile LogClusters of this namespace only (default: all namespaces).
    #[arg(long, env = "PROGLOG_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Log format.
    #[arg(
        long,
        env = "PROGLOG_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormatArg,
    /// The cluster's DNS domain (node addresses, certificate names).
    #[arg(
        long,
        env = "PROGLOG_OPERATOR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
}

impl RunArgs {
    fn into_config(self) -> RunConfig {
        let from_env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        RunConfig {
            metrics_addr: self.metrics_addr,
            leader_election: self.leader_election,
            lease_name: self.lease_name,
            lease_namespace: self.lease_namespace.or_else(|| from_env("POD_NAMESPACE")),
            watch_namespace: self.watch_namespace,
            log_format: match self.log_format {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Pretty => LogFormat::Pretty,
            },
            cluster_domain: self.cluster_domain,
            pod_name: from_env("POD_NAME"),
            pod_namespace: from_env("POD_NAMESPACE"),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let config = args.into_config();
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("proglog-operator run: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(proglog_operator::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "proglog-operator run failed");
            eprintln!("proglog-operator run: {err}");
            ExitCode::FAILURE
        }
    }
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
                settings: OperatorSettings {
                    cluster_domain,
                    operator_namespace: None,
                },
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
        Command::Run(args) => run(args),
    }
}
