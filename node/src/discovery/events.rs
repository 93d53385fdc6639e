//! The event task: drains serf's event stream into the [`MemberTable`] and forwards
//! [`MembershipEvent`]s to the node.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use super::gossip::{self, Change, GossipEvents, GossipNode, MemberEventKind};
use super::member::{MemberTable, MembershipEvent};

/// How often the table is compared with serf's own member list.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// Capacity of the channel of [`MembershipEvent`]s. Generous: a whole cluster joining at once
/// is a few events per node, and a consumer that falls this far behind can re-read
/// [`Discovery::members`](super::Discovery::members), which stays right.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// Runs as long as serf does: its event stream ends when serf shuts down.
///
/// Serf's channel is unbounded, so if this loop waited for a slow consumer serf's queue would
/// grow without limit: it `try_send`s instead, and drops an event the consumer has no room
/// for, with a warning. The table is updated
/// first either way, so a consumer that missed events still sees the truth in `members()`.
///
/// Every [`RECONCILE_INTERVAL`] the table is also compared with serf's own member list, and a
/// member whose entry differs is put right (and announced): events are the fast path, but one
/// lost or applied out of order would otherwise leave a member unknown, or failed, for good,
/// and replication unable to reach it (seen in CI: a pod never learnt the leader's address).
///
/// When `shutdown` is cancelled it stops forwarding (the channel closes, telling the consumer)
/// but keeps reading until serf stops: the table stays current while the node drains, and serf
/// never writes into a dropped receiver (it logs an error for every such event).
pub(super) async fn run(
    events: GossipEvents,
    node: GossipNode,
    table: MemberTable,
    local_id: String,
    forward: mpsc::Sender<MembershipEvent>,
    shutdown: CancellationToken,
) {
    let mut forward = Some(forward);
    let mut dropped: u64 = 0;
    let mut reconcile = tokio::time::interval(RECONCILE_INTERVAL);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let change = tokio::select! {
            biased;
            () = shutdown.cancelled(), if forward.is_some() => {
                forward = None;
                continue;
            }
            change = gossip::next_change(&events) => match change {
                Some(change) => change,
                None => break,
            },
            _ = reconcile.tick() => {
                if !gossip::is_alive(&node) {
                    continue;
                }
                let differ = differences(&table, gossip::members(&node).await, &local_id);
                if differ.is_empty() {
                    continue;
                }
                Change::Upsert(MemberEventKind::Updated, differ)
            }
        };
        match change {
            Change::Other => {}
            Change::Remove(ids) => {
                for id in ids.iter().filter(|id| **id != local_id) {
                    tracing::debug!(member = %id, "gossip: member reaped");
                    table.remove(id);
                }
            }
            Change::Upsert(kind, members) => {
                // This node's own entry is kept by `Discovery` (it knows its role first); serf
                // reports our own join too, which the rest of the node does not need.
                for member in members.into_iter().filter(|m| m.id != local_id) {
                    tracing::info!(
                        member = %member.id,
                        rpc_addr = %member.rpc_addr,
                        role = %member.role,
                        gossip_addr = %member.gossip_addr,
                        event = ?kind,
                        "gossip: membership changed",
                    );
                    table.upsert(member.clone());
                    let Some(forward) = &forward else { continue };
                    let event = match kind {
                        MemberEventKind::Joined => MembershipEvent::Joined(member),
                        MemberEventKind::Updated => MembershipEvent::Updated(member),
                        MemberEventKind::Left => MembershipEvent::Left(member),
                        MemberEventKind::Failed => MembershipEvent::Failed(member),
                    };
                    match forward.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(event)) => {
                            dropped += 1;
                            tracing::warn!(
                                member = %event.member().id,
                                dropped,
                                capacity = EVENT_CHANNEL_CAPACITY,
                                "gossip: membership event dropped, consumer is behind; \
                                 members() is still current",
                            );
                        }
                        // Nobody listens: the table is all that is needed.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
    }
    tracing::debug!("gossip: event stream ended");
}

/// The members (other than `local_id`) whose entry in `table` differs from serf's view, as
/// serf has them. Members serf no longer lists are left to its reap events.
fn differences(
    table: &MemberTable,
    serf: Vec<super::member::Member>,
    local_id: &str,
) -> Vec<super::member::Member> {
    let known = table.snapshot();
    serf.into_iter()
        .filter(|member| member.id != local_id)
        .filter(|member| !known.contains(member))
        .inspect(|member| {
            tracing::info!(
                member = %member.id,
                status = ?member.status,
                "gossip: member table caught up with serf (an event was missed)",
            );
        })
        .collect()
}
