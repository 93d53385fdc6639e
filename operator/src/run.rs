//! `proglog-operator run`: connects to the API server, serves metrics and health, elects a
//! leader when asked to, and runs the controller until SIGTERM or SIGINT. One shutdown token
//! is the root of every task; the process returns once they have all stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::admin::GrpcAdmin;
use crate::config::RunConfig;
use crate::controller::{self, Context, system_clock};
use crate::http::{BindError, HttpServer};
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::resources::{MANAGER, OperatorSettings};

/// Why `run` could not start or ended early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No Kubernetes client (no in-cluster service account, no kubeconfig).
    #[error("cannot configure a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The HTTP server cannot listen.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Signal handlers cannot be installed.
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// Cancels `stop` on SIGTERM or SIGINT.
fn watch_signals(stop: CancellationToken) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = stop.cancelled() => return,
        }
        stop.cancel();
    });
    Ok(())
}

/// Runs the operator; see the module documentation.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    config.validate()?;
    let stop = CancellationToken::new();
    watch_signals(stop.clone())?;
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let server = HttpServer::bind(
        config.metrics_addr,
        Arc::clone(&metrics),
        Arc::clone(&ready),
    )
    .await?;
    let http = tokio::spawn(server.serve(stop.clone()));

    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(GrpcAdmin),
        Arc::clone(&metrics),
        OperatorSettings {
            cluster_domain: config.cluster_domain.clone(),
            operator_namespace: config.pod_namespace.clone(),
        },
        config.pod_name.clone(),
        system_clock(),
    ));
    ready.store(true, Ordering::Release);
    let namespace = config.watch_namespace.clone();
    tracing::info!(
        watch_namespace = namespace.as_deref().unwrap_or("(all)"),
        leader_election = config.leader_election,
        "proglog-operator started"
    );
    match (config.leader_election, config.lease_namespace.clone()) {
        (true, Some(lease_namespace)) => {
            let lease = LeaseSettings {
                name: config.lease_name.clone(),
                namespace: lease_namespace,
                identity: config
                    .pod_name
                    .clone()
                    .unwrap_or_else(|| format!("{MANAGER}-{}", std::process::id())),
            };
            leader::run_while_leader(client, lease, &metrics, stop.clone(), |term| {
                let ctx = Arc::clone(&ctx);
                let namespace = namespace.clone();
                async move { controller::run(ctx, namespace.as_deref(), term).await }
            })
            .await;
        }
        _ => {
            metrics.leader.set(1);
            controller::run(ctx, namespace.as_deref(), stop.clone()).await;
        }
    }
    stop.cancel();
    if let Err(err) = http.await {
        tracing::warn!(error = %err, "the HTTP server task failed");
    }
    tracing::info!("proglog-operator stopped");
    Ok(())
}
