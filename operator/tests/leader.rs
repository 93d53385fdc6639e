//! Leader election against the fake API server: the work starts once this replica holds the
//! Lease, stops as soon as another replica is found holding it, and a stop ends everything.
//! It takes about ten seconds of real time: the Lease library renews (and so notices the
//! takeover) at a wall-clock moment, `LEASE_SECONDS - RENEW_GRACE_SECONDS` after taking it.

#![allow(clippy::unwrap_used)] // test code: a failure is the test failing

mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use fixtures::{Env, log_cluster};
use k8s_openapi::jiff::Timestamp;
use proglog_operator::leader::{LeaseSettings, run_while_leader};
use proglog_operator::metrics::Metrics;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/prod/leases/proglog-operator";

/// An election for `operator-0` against `env`'s API server, whose work says when it starts
/// and stops; returns the task, what the work said, the leader gauge and the stop token.
fn election(
    env: &Env,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<&'static str>,
    Arc<Metrics>,
    CancellationToken,
) {
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let (sender, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn({
        let client = env.ctx.client.clone();
        let metrics = Arc::clone(&metrics);
        let stop = stop.clone();
        async move {
            let lease = LeaseSettings {
                name: "proglog-operator".into(),
                namespace: "prod".into(),
                identity: "operator-0".into(),
            };
            run_while_leader(client, lease, &metrics, stop, move |term| {
                let sender = sender.clone();
                async move {
                    sender.send("started").unwrap();
                    term.cancelled().await;
                    sender.send("stopped").unwrap();
                }
            })
            .await;
        }
    });
    (task, seen, metrics, stop)
}

/// Waits for the leader gauge to drop: it does once the work has wound down, just after the
/// work said it stopped.
async fn gauge_drops(metrics: &Metrics) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.leader.get() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still counted as leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn losing_the_lease_stops_the_work_and_a_stop_ends_the_election() {
    let env = Env::new(log_cluster(json!({})));
    let (election, mut seen, metrics, stop) = election(&env);

    let first = timeout(Duration::from_secs(20), seen.recv()).await.unwrap();
    assert_eq!(first, Some("started"));
    assert_eq!(metrics.leader.get(), 1);
    let lease = env.store.lock().unwrap().get(LEASE).cloned().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "operator-0", "{lease}");

    // Another replica takes the Lease over (as after a partition): the work stops.
    env.store.lock().unwrap().edit(LEASE, |lease| {
        lease["spec"]["holderIdentity"] = json!("operator-1");
        lease["spec"]["renewTime"] = json!(Timestamp::now().to_string());
        lease["spec"]["leaseDurationSeconds"] = json!(3600);
    });
    let next = timeout(Duration::from_secs(30), seen.recv()).await.unwrap();
    assert_eq!(next, Some("stopped"));
    gauge_drops(&metrics).await;

    // Standing by, a stop ends the election loop.
    stop.cancel();
    timeout(Duration::from_secs(15), election)
        .await
        .unwrap()
        .unwrap();
}

/// The Lease library only logs a renewal that fails; the holder must still stop working
/// before its Lease can expire and another replica take it.
#[tokio::test]
async fn failing_renewals_stop_the_work_before_the_lease_can_expire() {
    let env = Env::new(log_cluster(json!({})));
    let (election, mut seen, metrics, stop) = election(&env);
    let first = timeout(Duration::from_secs(20), seen.recv()).await.unwrap();
    assert_eq!(first, Some("started"));

    // From now on the API server refuses every write to the Lease: no renewal lands.
    env.fault("PATCH", "/leases/proglog-operator", 500, 10_000);
    let next = timeout(Duration::from_secs(30), seen.recv()).await.unwrap();
    assert_eq!(next, Some("stopped"));
    let stopped_at = Timestamp::now();
    let lease = env.store.lock().unwrap().get(LEASE).cloned().unwrap();
    let renewed: Timestamp = lease["spec"]["renewTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let seconds = lease["spec"]["leaseDurationSeconds"].as_i64().unwrap();
    assert!(
        stopped_at < renewed + k8s_openapi::jiff::SignedDuration::from_secs(seconds),
        "the work stopped at {stopped_at}, after the Lease renewed at {renewed} expired"
    );
    gauge_drops(&metrics).await;
    stop.cancel();
    timeout(Duration::from_secs(15), election)
        .await
        .unwrap()
        .unwrap();
}
