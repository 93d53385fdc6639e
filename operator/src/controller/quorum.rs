//! The parts that act through the nodes' admin API: reading the quorum, scaling (voter
//! changes and the StatefulSet size) and rolling pods. Each step is decided by
//! [`crate::plan`] from what was read in this pass; this file only carries it out.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};

use super::{Context, PartError};
use crate::admin::{AdminTarget, ClientCredentials};
use crate::plan::{Quorum, RollStep, ScaleStep};
use crate::resources::ClusterView;

/// The admin address of node `id`: its DNS name under the headless Service, peer port.
pub fn node_target(
    view: &ClusterView<'_>,
    id: &str,
    tls: Option<&std::sync::Arc<ClientCredentials>>,
) -> AdminTarget {
    AdminTarget {
        host: format!("{id}.{}", view.headless_fqdn()),
        port: view.spec().ports.peer,
        tls: tls.cloned(),
    }
}

/// Asks the ready pods in turn for the cluster's status (on their peer port, which the client
/// Service does not expose), then the leader itself when another node answered (only the
/// leader knows each replica's progress).
pub async fn observe(
    ctx: &Context,
    view: &ClusterView<'_>,
    ready: &[String],
    tls: Option<&std::sync::Arc<ClientCredentials>>,
) -> Result<Quorum, PartError> {
    let mut answer = Err(PartError::Blocked("no pod is ready".to_owned()));
    for id in ready {
        answer = ctx
            .admin
            .cluster_status(&node_target(view, id, tls))
            .await
            .map_err(PartError::Admin);
        if answer.is_ok() {
            break;
        }
    }
    let any = answer?;
    match any.leader.clone() {
        Some(leader) if any.node_id != leader => ctx
            .admin
            .cluster_status(&node_target(view, &leader, tls))
            .await
            .map_err(PartError::Admin),
        _ => Ok(any),
    }
}

/// Carries out a scaling step that needs the admin API (voter changes, leadership transfer);
/// StatefulSet size changes are applied by the workload part. Returns what it did, for an
/// Event, or `None`.
pub async fn scale(
    ctx: &Context,
    view: &ClusterView<'_>,
    quorum: Option<&Quorum>,
    step: &ScaleStep,
    tls: Option<&std::sync::Arc<ClientCredentials>>,
) -> Result<Option<(&'static str, String)>, PartError> {
    let leader_target = || {
        quorum
            .and_then(|quorum| quorum.leader.as_deref())
            .map(|leader| node_target(view, leader, tls))
            .ok_or_else(|| PartError::Blocked("no leader is elected".to_owned()))
    };
    match step {
        ScaleStep::AddVoter { node } => {
            let voters = ctx
                .admin
                .add_voter(&leader_target()?, node)
                .await
                .map_err(PartError::Admin)?;
            ctx.metrics.action("voter_added");
            Ok(Some((
                "VoterAdded",
                format!(
                    "{node} caught up and is a voter; voters: {}",
                    voters.join(", ")
                ),
            )))
        }
        ScaleStep::RemoveVoter { node } => {
            let voters = ctx
                .admin
                .remove_voter(&leader_target()?, node)
                .await
                .map_err(PartError::Admin)?;
            ctx.metrics.action("voter_removed");
            Ok(Some((
                "VoterRemoved",
                format!(
                    "{node} left the voters before its pod stops; voters: {}",
                    voters.join(", ")
                ),
            )))
        }
        ScaleStep::TransferLeadership { from } => {
            ctx.admin
                .transfer_leadership(&node_target(view, from, tls))
                .await
                .map_err(PartError::Admin)?;
            ctx.metrics.action("leadership_transferred");
            Ok(Some((
                "LeadershipTransferred",
                format!("{from} handed leadership over before leaving the voters"),
            )))
        }
        ScaleStep::NeedsQuorum => Err(PartError::Blocked(
            "scaling down needs the cluster's status, and no node answered".to_owned(),
        )),
        ScaleStep::Steady
        | ScaleStep::Grow { .. }
        | ScaleStep::Shrink { .. }
        | ScaleStep::AwaitCatchUp { .. } => Ok(None),
    }
}

/// Carries out a roll step. Returns what it did, for an Event, or `None`.
pub async fn roll(
    ctx: &Context,
    view: &ClusterView<'_>,
    step: &RollStep,
    tls: Option<&std::sync::Arc<ClientCredentials>>,
) -> Result<Option<(&'static str, String)>, PartError> {
    match step {
        RollStep::DeletePod { pod, remaining } => {
            // Through the eviction API, so the PodDisruptionBudget is honoured: a node drain at
            // the same moment cannot take a second pod.
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), view.namespace());
            match pods.evict(pod, &EvictParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 429 => {
                    return Err(PartError::Blocked(format!(
                        "the PodDisruptionBudget allows no disruption now, so {pod} waits to roll: {}",
                        status.message
                    )));
                }
                Err(source) => {
                    return Err(PartError::Api {
                        action: format!("evict Pod {}/{pod}", view.namespace()),
                        source,
                    });
                }
            }
            ctx.metrics.action("pod_rolled");
            Ok(Some((
                "PodRolled",
                format!("{pod} evicted to run the new revision; {remaining} pod(s) left to roll"),
            )))
        }
        RollStep::TransferLeadership { from, .. } => {
            ctx.admin
                .transfer_leadership(&node_target(view, from, tls))
                .await
                .map_err(PartError::Admin)?;
            ctx.metrics.action("leadership_transferred");
            Ok(Some((
                "LeadershipTransferred",
                format!("{from} handed leadership over before its restart"),
            )))
        }
        RollStep::UpToDate | RollStep::Wait { .. } => Ok(None),
    }
}
