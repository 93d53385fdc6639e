//! Leader election: with more than one operator replica, only the one holding the Lease
//! reconciles. Built on `kube-lease-manager`, which takes and renews the Lease with
//! server-side apply and hands it over when it expires.
//!
//! [`run_while_leader`] waits for the Lease, runs the work with a stop token of its own, and
//! cancels that token as soon as the Lease is lost, then waits for the work to wind down
//! (kube-runtime's graceful shutdown lets passes in flight finish) before standing by again.
//! A pass that was already running when the Lease was lost may complete; every pass is
//! idempotent and decided from fresh reads, so a new leader running one at the same time
//! converges on the same state rather than fighting it.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::resources::MANAGER;

/// Seconds a Lease stays valid without renewal: how long a crashed leader blocks the others.
const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry the holder renews.
const RENEW_GRACE_SECONDS: u64 = 5;
/// Wait before trying again after the Lease could not be read or created.
const RETRY: Duration = Duration::from_secs(5);

/// Where the Lease lives and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
}

/// Runs `work` whenever this replica holds the Lease, until `stop` is cancelled; see the module
/// documentation. `work` receives a token cancelled when the Lease is lost or `stop` is.
pub async fn run_while_leader<F, Fut>(
    client: Client,
    lease: LeaseSettings,
    metrics: &Metrics,
    stop: CancellationToken,
    work: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    while !stop.is_cancelled() {
        let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
            .with_namespace(&lease.namespace)
            .with_identity(&lease.identity)
            .with_field_manager(format!("{MANAGER}-{}", lease.identity))
            .with_duration(LEASE_SECONDS)
            .with_grace(RENEW_GRACE_SECONDS)
            .build()
            .await;
        let manager = match manager {
            Ok(manager) => manager,
            Err(err) => {
                tracing::warn!(error = %err, lease = %lease.name, "cannot set up the Lease; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let (mut leading, watcher) = manager.watch().await;
        tracing::info!(lease = %lease.name, identity = %lease.identity, "standing by for the Lease");
        loop {
            let acquired = tokio::select! {
                _ = stop.cancelled() => break,
                acquired = leading.wait_for(|leading| *leading) => acquired.is_ok(),
            };
            if !acquired {
                // The watcher ended (it logs why): make a new one.
                break;
            }
            tracing::info!(lease = %lease.name, "holding the Lease: reconciling");
            metrics.leader.set(1);
            let term = stop.child_token();
            let running = work(term.clone());
            tokio::pin!(running);
            // The watch guard must not live across the wait for the work to end.
            let lost = tokio::select! {
                _ = &mut running => false,
                changed = leading.wait_for(|leading| !*leading) => {
                    drop(changed);
                    true
                }
            };
            if lost {
                tracing::warn!(lease = %lease.name, "lost the Lease: stopping reconciliation");
                term.cancel();
                running.await;
            }
            metrics.leader.set(0);
        }
        // Dropping the receiver makes the watcher release the Lease and end.
        drop(leading);
        match tokio::time::timeout(RETRY, watcher).await {
            Ok(Ok(Ok(_))) => tracing::info!(lease = %lease.name, "Lease released"),
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "Lease watcher ended with an error"),
            Ok(Err(err)) => tracing::warn!(error = %err, "Lease watcher task failed"),
            Err(_) => tracing::warn!("Lease watcher did not end in time"),
        }
    }
}
