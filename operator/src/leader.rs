//! Leader election: with more than one operator replica, only the one holding the Lease
//! reconciles. Built on `kube-lease-manager`, which takes and renews the Lease with
//! server-side apply and hands it over when it expires.
//!
//! [`run_while_leader`] waits for the Lease, runs the work with a stop token of its own, and
//! cancels that token as soon as the Lease is lost, then waits for the work to wind down
//! (kube-runtime's graceful shutdown lets passes in flight finish) before standing by again.
//! The library only logs a renewal that fails, so the holder also checks the Lease itself:
//! when its own last renewal is older than the Lease's duration less [`STOP_MARGIN_SECONDS`]
//! (the API server unreachable, renewals refused), it stops the work before another replica
//! may take the Lease, as if it had been lost.
//! A pass that was already running when the Lease was lost may complete; every pass is
//! idempotent and decided from fresh reads, so a new leader running one at the same time
//! converges on the same state rather than fighting it.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, Client};
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
/// The holder stops working this long before its Lease would expire without a renewal: less
/// than the renew grace, so a renewal on time (at `RENEW_GRACE_SECONDS` before expiry) never
/// stops it.
const STOP_MARGIN_SECONDS: u64 = 2;
/// How often the holder reads its Lease to see its renewals land.
const CHECK_EVERY: Duration = Duration::from_secs(1);

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
            let mut lapsed = false;
            let lost = tokio::select! {
                _ = &mut running => false,
                changed = leading.wait_for(|leading| !*leading) => {
                    drop(changed);
                    true
                }
                () = renewals_lapse(&client, &lease) => {
                    lapsed = true;
                    true
                }
            };
            if lost {
                tracing::warn!(lease = %lease.name, "lost the Lease: stopping reconciliation");
                term.cancel();
                running.await;
            }
            metrics.leader.set(0);
            if lapsed {
                // The library may still believe it holds the Lease: work resumes only once a
                // renewal of ours is seen again, or after the library notices the loss and
                // takes the Lease anew.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        changed = leading.wait_for(|leading| !*leading) => {
                            drop(changed);
                            break;
                        }
                        renewed = renewed_recently(&client, &lease) => if renewed { break },
                    }
                }
            }
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

/// Whether the Lease, read after a check interval, shows a renewal of this replica's recent
/// enough to count on.
async fn renewed_recently(client: &Client, lease: &LeaseSettings) -> bool {
    tokio::time::sleep(CHECK_EVERY).await;
    let api: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let valid_for = SignedDuration::from_secs((LEASE_SECONDS - STOP_MARGIN_SECONDS) as i64);
    matches!(
        api.get_opt(&lease.name).await,
        Ok(Some(Lease { spec: Some(spec), .. }))
            if spec.holder_identity.as_deref() == Some(lease.identity.as_str())
                && spec.renew_time.as_ref().is_some_and(|time| Timestamp::now().duration_since(time.0) < valid_for)
    )
}

/// Resolves when this replica's hold on the Lease can no longer be counted on: another holds
/// it, or its last renewal seen is so old that the Lease expires within
/// [`STOP_MARGIN_SECONDS`] (reads that fail count as no renewal).
async fn renewals_lapse(client: &Client, lease: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
    let valid_for = SignedDuration::from_secs((LEASE_SECONDS - STOP_MARGIN_SECONDS) as i64);
    // The Lease was taken just now.
    let mut renewed = Timestamp::now();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if let Ok(Some(current)) = api.get_opt(&lease.name).await
            && let Some(spec) = current.spec
        {
            if spec.holder_identity.as_deref() != Some(lease.identity.as_str()) {
                return;
            }
            if let Some(time) = spec.renew_time {
                renewed = renewed.max(time.0);
            }
        }
        if Timestamp::now().duration_since(renewed) >= valid_for {
            tracing::warn!(
                lease = %lease.name,
                last_renewal = %renewed,
                "the Lease has not been renewed in time: stopping before it can expire"
            );
            return;
        }
    }
}
