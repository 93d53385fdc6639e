//! The status part: what the pass saw and did, written to `status` through the status
//! subresource (server-side apply, the operator's field manager) only when it changed. A
//! condition keeps its `lastTransitionTime` while its status stays the same, so a steady
//! cluster's status does not change between passes and no write is made.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch};
use serde_json::json;

use super::apply::apply_params;
use super::{PartFailure, Progress};
use crate::crd::{Endpoints, LogCluster, LogClusterStatus, MemberStatus, condition};
use crate::plan::{PodState, Quorum};
use crate::resources::ClusterView;

/// Puts `condition` in `conditions` in place of the one of its type, keeping the previous
/// transition time when its status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    condition: Condition,
) {
    let mut condition = condition;
    if let Some(same) = previous
        .iter()
        .find(|old| old.type_ == condition.type_ && old.status == condition.status)
    {
        condition.last_transition_time = same.last_transition_time.clone();
    }
    conditions.retain(|old| old.type_ != condition.type_);
    conditions.push(condition);
}

/// Everything the parts report, for the status.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The StatefulSet as read at the start of the pass.
    pub statefulset: Option<&'a StatefulSet>,
    /// Its pods.
    pub pods: &'a [PodState],
    /// The quorum, when a node answered.
    pub quorum: Option<&'a Quorum>,
    /// The certificates part's report (`None` with TLS off).
    pub certificates: Option<&'a super::certificates::CertificateReport>,
    /// Whether the certificates part failed, and why.
    pub certificates_error: Option<String>,
    /// What is in progress.
    pub progress: &'a Progress,
    /// Parts that failed.
    pub failures: &'a [PartFailure],
    /// Whether reconciliation is paused.
    pub paused: bool,
}

/// The status the cluster should show.
pub fn build(view: &ClusterView<'_>, observed: &Observed<'_>, now: Timestamp) -> LogClusterStatus {
    let cluster = view.cluster();
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let sts_status = observed
        .statefulset
        .and_then(|statefulset| statefulset.status.as_ref());
    let replicas = sts_status.map_or(0, |status| status.replicas);
    let ready_replicas = sts_status
        .and_then(|status| status.ready_replicas)
        .unwrap_or(0);
    let quorum = observed.quorum;
    let members = observed
        .pods
        .iter()
        .map(|pod| {
            let role = quorum.map(|quorum| {
                if quorum.is_leader(&pod.name) {
                    "leader"
                } else if quorum.is_voter(&pod.name) {
                    "follower"
                } else {
                    "observer"
                }
                .to_owned()
            });
            MemberStatus {
                name: pod.name.clone(),
                ready: pod.ready,
                role,
                in_sync: quorum.and_then(|quorum| quorum.in_sync(&pod.name)),
            }
        })
        .collect();

    let mut conditions = previous.conditions.clone();
    let mut set = |type_: &str, status: bool, reason: &str, message: String| {
        set_condition(
            &mut conditions,
            &previous.conditions,
            Condition {
                type_: type_.to_owned(),
                status: if status { "True" } else { "False" }.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: generation,
                last_transition_time: Time(now),
            },
        )
    };

    // CertificatesReady: the certificates part's.
    match (observed.certificates, &observed.certificates_error) {
        (_, Some(error)) => set(
            condition::CERTIFICATES_READY,
            false,
            "Failed",
            error.clone(),
        ),
        (None, None) => set(
            condition::CERTIFICATES_READY,
            true,
            "NotRequired",
            "TLS is off: no certificates are needed".to_owned(),
        ),
        (Some(report), None) if report.ca_expiring => set(
            condition::CERTIFICATES_READY,
            false,
            "CaExpiring",
            "the CA in spec.tls.issuer.secretName expires within renewBefore; replace it"
                .to_owned(),
        ),
        (Some(report), None) if report.certs_not_after.is_none() => set(
            condition::CERTIFICATES_READY,
            false,
            "Missing",
            "the certificate Secrets do not exist yet".to_owned(),
        ),
        (Some(report), None) => set(
            condition::CERTIFICATES_READY,
            true,
            "Valid",
            match report.certs_not_after {
                Some(end) => format!("certificates are valid until {end}"),
                None => "certificates are valid".to_owned(),
            },
        ),
    }

    // Progressing: scaling, rolling, rotating certificates.
    let progress = observed.progress;
    match &progress.reason {
        Some((reason, message)) => set(condition::PROGRESSING, true, reason, message.clone()),
        None => set(
            condition::PROGRESSING,
            false,
            "Stable",
            "nothing is changing".to_owned(),
        ),
    }

    // Degraded: any part that failed.
    if observed.failures.is_empty() {
        set(
            condition::DEGRADED,
            false,
            "AsExpected",
            "every part reconciled".to_owned(),
        );
    } else {
        let message = observed
            .failures
            .iter()
            .map(|failure| format!("{}: {}", failure.part, failure.error))
            .collect::<Vec<_>>()
            .join("; ");
        set(condition::DEGRADED, true, "ReconcileFailed", message);
    }

    // ReconciliationPaused.
    if observed.paused {
        set(
            condition::RECONCILIATION_PAUSED,
            true,
            "Paused",
            "spec.paused or the proglog.dev/paused annotation is set: no changes are made"
                .to_owned(),
        );
    } else {
        set(
            condition::RECONCILIATION_PAUSED,
            false,
            "Active",
            "the operator reconciles this cluster".to_owned(),
        );
    }

    // Ready: every wanted pod ready, a leader, nothing in flight.
    let wanted = i32::try_from(view.replicas()).unwrap_or(i32::MAX);
    let leader = quorum.and_then(|quorum| quorum.leader.clone());
    let (ready, reason, message) = if observed.statefulset.is_none() {
        (
            false,
            "NotCreated",
            "the StatefulSet does not exist yet".to_owned(),
        )
    } else if ready_replicas < wanted || replicas != wanted {
        (
            false,
            "NodesNotReady",
            format!("{ready_replicas} of {wanted} nodes are ready"),
        )
    } else if leader.is_none() {
        (false, "NoLeader", "no leader is elected".to_owned())
    } else if progress.reason.is_some() {
        (false, "Progressing", "a change is in progress".to_owned())
    } else if !observed.failures.is_empty() {
        (
            false,
            "Degraded",
            "a part of the reconcile failed".to_owned(),
        )
    } else {
        (
            true,
            "ClusterReady",
            format!("{ready_replicas} nodes ready, leader elected"),
        )
    };
    set(condition::READY, ready, reason, message);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));

    let certificates = observed.certificates;
    LogClusterStatus {
        observed_generation: generation,
        conditions,
        replicas,
        ready_replicas,
        selector: Some(view.selector_string()),
        leader,
        epoch: quorum.and_then(|quorum| i64::try_from(quorum.epoch).ok()),
        members,
        endpoints: Some(Endpoints {
            rpc: view.client_endpoint(),
            headless: view.headless_fqdn(),
        }),
        seed_peers: view.seed_peers(),
        ca_not_after: certificates.and_then(|report| report.ca_not_after.map(Time)),
        certs_not_after: certificates.and_then(|report| report.certs_not_after.map(Time)),
    }
}

/// Writes `status` unless the cluster already shows it.
pub async fn write(
    api: &Api<LogCluster>,
    cluster: &LogCluster,
    status: &LogClusterStatus,
) -> Result<bool, kube::Error> {
    if cluster.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let patch = json!({
        "apiVersion": "proglog.dev/v1alpha1",
        "kind": "LogCluster",
        "status": status,
    });
    api.patch_status(&name, &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(true)
}
