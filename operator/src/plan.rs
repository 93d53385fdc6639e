//! The reconciler's decisions as pure functions: what the cluster looks like goes in, the one
//! next step comes out. No I/O here, so every rule (scale steps, roll order, pause, when a
//! child needs applying, when a volume needs growing) is unit-tested without a cluster.
//!
//! Everything the decisions need is read again on every pass (the StatefulSet, the pods, the
//! leader's `ClusterStatus`), so the operator keeps no state between passes: a restarted
//! operator, or a new leader among its replicas, carries on where the last one stopped.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::crd::LogCluster;

/// Annotation that pauses reconciliation like `spec.paused` (value `"true"`), for tools that
/// may change metadata but not the spec.
pub const PAUSED_ANNOTATION: &str = "proglog.dev/paused";

/// An observer is promoted to voter once it is at most this many records behind the leader
/// (the node itself refuses beyond 1000): it then catches up within a fetch or two and does not
/// hold the quorum back.
pub const PROMOTION_MAX_LAG: u64 = 100;

/// A replica further behind the leader's end than this is out of sync in the status.
pub const IN_SYNC_MAX_LAG: u64 = 10_000;

/// A replica whose last fetch is older than this is out of sync in the status.
pub const IN_SYNC_MAX_FETCH_AGO_MS: u64 = 10_000;

/// Whether the operator must leave the cluster's children alone: `spec.paused`, or the
/// [`PAUSED_ANNOTATION`] set to `"true"`.
pub fn is_paused(cluster: &LogCluster) -> bool {
    cluster.spec.paused
        || cluster
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(PAUSED_ANNOTATION))
            .is_some_and(|value| value == "true")
}

/// One replica as the leader reports it (`ClusterStatus.replicas`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaProgress {
    /// Node id (pod name).
    pub id: String,
    /// Whether it is a voter.
    pub voter: bool,
    /// The offset after its last record, as the leader knows it.
    pub end_offset: u64,
    /// Records behind the leader's end.
    pub lag: u64,
    /// Whether it fetched in this epoch at all.
    pub fetched: bool,
    /// Milliseconds since its last fetch (0 when it never fetched in this epoch).
    pub last_fetch_ago_ms: u64,
}

/// The quorum as the leader sees it: the answer of its `ClusterStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quorum {
    /// The node that answered.
    pub node_id: String,
    /// Its role (`leader`, `follower`, `candidate`, `observer`).
    pub role: String,
    /// The leader of the current epoch, if one is elected.
    pub leader: Option<String>,
    /// The answering node's leader epoch.
    pub epoch: u64,
    /// The committed end.
    pub high_watermark: u64,
    /// The end of the answering node's log.
    pub end_offset: u64,
    /// The voter set.
    pub voters: Vec<String>,
    /// Every replica that fetched from the leader (empty when a follower answered).
    pub replicas: Vec<ReplicaProgress>,
    /// SHA-256 of the trust bundle the answering node has loaded (empty without TLS).
    pub trust_bundle_sha256: String,
    /// SHA-256 of the certificate the answering node has loaded (empty without TLS).
    pub certificate_sha256: String,
}

impl Quorum {
    /// Whether `node` is a voter.
    pub fn is_voter(&self, node: &str) -> bool {
        self.voters.iter().any(|voter| voter == node)
    }

    /// Whether `node` leads.
    pub fn is_leader(&self, node: &str) -> bool {
        self.leader.as_deref() == Some(node)
    }

    fn replica(&self, node: &str) -> Option<&ReplicaProgress> {
        self.replicas.iter().find(|replica| replica.id == node)
    }

    /// Whether `node` holds everything committed: it is the leader, or it fetched up to the
    /// high watermark.
    pub fn caught_up(&self, node: &str) -> bool {
        self.is_leader(node)
            || self
                .replica(node)
                .is_some_and(|replica| replica.fetched && replica.end_offset >= self.high_watermark)
    }

    /// Whether `node` keeps up with the leader, for the status: the leader itself, or a
    /// replica that fetched within [`IN_SYNC_MAX_FETCH_AGO_MS`] and was at most
    /// [`IN_SYNC_MAX_LAG`] records behind. Wide bounds on purpose: a follower under steady
    /// produce load stays on one side of them, so the status does not flap with every write.
    /// `None` when the answering node is not the leader (it knows no replica's progress).
    pub fn in_sync(&self, node: &str) -> Option<bool> {
        if self.is_leader(node) {
            return Some(true);
        }
        if self.leader.as_deref() != Some(self.node_id.as_str()) {
            return None;
        }
        Some(self.replica(node).is_some_and(|replica| {
            replica.fetched
                && replica.last_fetch_ago_ms <= IN_SYNC_MAX_FETCH_AGO_MS
                && replica.lag <= IN_SYNC_MAX_LAG
        }))
    }
}

/// One pod of the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// Its name (`NAME-i`), also the node id.
    pub name: String,
    /// Its ordinal.
    pub ordinal: u32,
    /// Whether it is Ready.
    pub ready: bool,
    /// Its `controller-revision-hash` label: the StatefulSet revision it was made from.
    pub revision: Option<String>,
    /// Whether it is being deleted.
    pub terminating: bool,
}

/// The ordinal of node `id` in the StatefulSet `name` (`events-3` is 3).
pub fn ordinal_of(name: &str, id: &str) -> Option<u32> {
    id.strip_prefix(name)?.strip_prefix('-')?.parse().ok()
}

/// The next step of scaling, and the StatefulSet size to apply in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleDecision {
    /// `spec.replicas` of the StatefulSet to apply now.
    pub statefulset_replicas: u32,
    /// What to do.
    pub step: ScaleStep,
}

/// What scaling does in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleStep {
    /// Nothing to do: every pod up to `spec.replicas` is a voter and none above it is.
    Steady,
    /// The StatefulSet is raised to the target; new pods start as observers.
    Grow {
        /// From.
        from: u32,
        /// To.
        to: u32,
    },
    /// The pods above the founding quorum are observers not caught up yet.
    AwaitCatchUp {
        /// The observers waited for.
        nodes: Vec<String>,
    },
    /// Make `node` a voter (it has caught up).
    AddVoter {
        /// The node.
        node: String,
    },
    /// The node to remove leads: hand leadership over first.
    TransferLeadership {
        /// The leader.
        from: String,
    },
    /// Remove `node` from the voters (through the leader).
    RemoveVoter {
        /// The node.
        node: String,
    },
    /// The highest pod is out of the voter set: the StatefulSet shrinks by one.
    Shrink {
        /// From.
        from: u32,
        /// To.
        to: u32,
    },
    /// Scaling needs the quorum's state and it is unknown (no node answers).
    NeedsQuorum,
}

impl ScaleStep {
    /// Whether the cluster is scaling up (`Some(true)`), down (`Some(false)`), or not.
    pub fn direction(&self) -> Option<bool> {
        match self {
            ScaleStep::Grow { .. }
            | ScaleStep::AwaitCatchUp { .. }
            | ScaleStep::AddVoter { .. } => Some(true),
            ScaleStep::TransferLeadership { .. }
            | ScaleStep::RemoveVoter { .. }
            | ScaleStep::Shrink { .. } => Some(false),
            ScaleStep::Steady | ScaleStep::NeedsQuorum => None,
        }
    }
}

/// Decides the next scaling step for cluster `name` towards `target` pods.
///
/// - No StatefulSet yet: create it at `target` (every pod is a founding voter).
/// - Fewer pods than `target`: raise the StatefulSet; new pods join as observers.
/// - More pods than `target`: the highest pod leaves the voter set first (leadership handed
///   over first if it leads), and only then does the StatefulSet shrink, by one. One step per
///   pass, each decided from what the cluster reports, so a pass interrupted anywhere resumes.
/// - As many pods as `target`: promote observers that have caught up, one per pass.
pub fn decide_scaling(
    name: &str,
    target: u32,
    statefulset_replicas: Option<u32>,
    pods: &[PodState],
    quorum: Option<&Quorum>,
) -> ScaleDecision {
    let Some(current) = statefulset_replicas else {
        return ScaleDecision {
            statefulset_replicas: target,
            step: ScaleStep::Steady,
        };
    };
    let hold = |step| ScaleDecision {
        statefulset_replicas: current,
        step,
    };
    if current < target {
        return ScaleDecision {
            statefulset_replicas: target,
            step: ScaleStep::Grow {
                from: current,
                to: target,
            },
        };
    }
    let Some(quorum) = quorum else {
        return hold(if current > target {
            ScaleStep::NeedsQuorum
        } else {
            ScaleStep::Steady
        });
    };
    if current > target {
        let highest = format!("{name}-{}", current - 1);
        if !quorum.is_voter(&highest) {
            return ScaleDecision {
                statefulset_replicas: current - 1,
                step: ScaleStep::Shrink {
                    from: current,
                    to: current - 1,
                },
            };
        }
        if quorum.is_leader(&highest) {
            return hold(ScaleStep::TransferLeadership { from: highest });
        }
        return hold(ScaleStep::RemoveVoter { node: highest });
    }
    // current == target. A voter whose pod came back without its data (a new volume) is in
    // the voter set but not counted: the nodes bind each voter to its data directory. Take it
    // out, so that it is added back, bound to its new directory, once it has caught up.
    for ordinal in 0..target {
        let node = format!("{name}-{ordinal}");
        let lost_its_data = quorum.is_voter(&node)
            && quorum
                .replica(&node)
                .is_some_and(|replica| replica.fetched && !replica.voter);
        if lost_its_data {
            return hold(ScaleStep::RemoveVoter { node });
        }
    }
    // Observers among the pods become voters once caught up.
    let mut waiting = Vec::new();
    for ordinal in 0..target {
        let node = format!("{name}-{ordinal}");
        if quorum.is_voter(&node) {
            continue;
        }
        let ready = pods.iter().any(|pod| pod.name == node && pod.ready);
        let caught_up = quorum
            .replica(&node)
            .is_some_and(|replica| replica.fetched && replica.lag <= PROMOTION_MAX_LAG);
        if ready && caught_up {
            return hold(ScaleStep::AddVoter { node });
        }
        waiting.push(node);
    }
    if waiting.is_empty() {
        hold(ScaleStep::Steady)
    } else {
        hold(ScaleStep::AwaitCatchUp { nodes: waiting })
    }
}

/// What a rolling change does in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollStep {
    /// Every pod runs the StatefulSet's current revision.
    UpToDate,
    /// Pods need replacing, but not now (a pod is not ready or not caught up).
    Wait {
        /// Why, for the status.
        reason: String,
        /// Pods still on an old revision.
        remaining: usize,
    },
    /// Delete this pod; the StatefulSet recreates it from the new revision.
    DeletePod {
        /// The pod.
        pod: String,
        /// Pods on an old revision, this one included.
        remaining: usize,
    },
    /// The only out-of-date pod leads: hand leadership over, then it is deleted next pass.
    TransferLeadership {
        /// The leader.
        from: String,
        /// Pods on an old revision.
        remaining: usize,
    },
}

/// Decides the next step of a roll: one pod at a time, only while every pod is Ready and
/// every voter holds everything committed (so the last restarted node has recovered), followers
/// first from the highest ordinal, the leader last after handing leadership over.
pub fn decide_roll(
    update_revision: Option<&str>,
    replicas: u32,
    pods: &[PodState],
    quorum: Option<&Quorum>,
) -> RollStep {
    let Some(update_revision) = update_revision else {
        return RollStep::UpToDate;
    };
    let mut outdated: Vec<&PodState> = pods
        .iter()
        .filter(|pod| pod.revision.as_deref() != Some(update_revision))
        .collect();
    if outdated.is_empty() {
        return RollStep::UpToDate;
    }
    let remaining = outdated.len();
    let wait = |reason: String| RollStep::Wait { reason, remaining };
    if let Some(pod) = pods.iter().find(|pod| pod.terminating || !pod.ready) {
        return wait(format!("pod {} is not ready", pod.name));
    }
    let present: BTreeSet<u32> = pods.iter().map(|pod| pod.ordinal).collect();
    if let Some(missing) = (0..replicas).find(|ordinal| !present.contains(ordinal)) {
        return wait(format!("pod with ordinal {missing} does not exist yet"));
    }
    let Some(quorum) = quorum else {
        return wait("the cluster status is unknown".to_owned());
    };
    let Some(leader) = quorum.leader.clone() else {
        return wait("no leader is elected".to_owned());
    };
    if let Some(behind) = quorum
        .voters
        .iter()
        .find(|voter| !quorum.caught_up(voter.as_str()))
    {
        return wait(format!("{behind} is catching up"));
    }
    outdated.sort_by_key(|pod| std::cmp::Reverse(pod.ordinal));
    if let Some(follower) = outdated.iter().find(|pod| pod.name != leader) {
        return RollStep::DeletePod {
            pod: follower.name.clone(),
            remaining,
        };
    }
    // Only the leader is left.
    if quorum.voters.len() > 1 {
        RollStep::TransferLeadership {
            from: leader,
            remaining,
        }
    } else {
        RollStep::DeletePod {
            pod: leader,
            remaining,
        }
    }
}

/// Whether `existing` already holds everything `desired` sets: every field of `desired` is in
/// `existing` with the same value (objects recursively; lists element by element, same length).
/// Fields the API server adds (defaults, status, metadata it keeps) do not count, so a child
/// applied once compares equal afterwards and the operator does not write it again. Resource
/// quantities (under `requests`, `limits`, and `sizeLimit`) compare by value: the API server
/// stores `0.5` as `500m` and `1024Mi` as `1Gi`.
pub fn contains(existing: &Value, desired: &Value) -> bool {
    contains_in(existing, desired, false)
}

fn contains_in(existing: &Value, desired: &Value, quantities: bool) -> bool {
    match (existing, desired) {
        (Value::Object(existing), Value::Object(desired)) => {
            desired.iter().all(|(key, value)| match existing.get(key) {
                Some(found) => contains_in(
                    found,
                    value,
                    quantities || matches!(key.as_str(), "requests" | "limits" | "sizeLimit"),
                ),
                None => value.is_null(),
            })
        }
        (Value::Array(existing), Value::Array(desired)) => {
            existing.len() == desired.len()
                && existing
                    .iter()
                    .zip(desired)
                    .all(|(existing, desired)| contains_in(existing, desired, quantities))
        }
        (Value::Number(existing), Value::Number(desired)) => {
            existing == desired || existing.as_f64() == desired.as_f64()
        }
        (Value::String(existing), Value::String(desired)) if quantities => {
            existing == desired
                || parse_quantity(existing)
                    .is_some_and(|value| Some(value) == parse_quantity(desired))
        }
        (existing, desired) => existing == desired,
    }
}

/// A Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1000`) in thousandths of a unit, for
/// comparing sizes; `None` for what it cannot read (exponents, negative values).
pub fn parse_quantity(text: &str) -> Option<u128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier_milli: u128 = match suffix {
        "" => 1000,
        "m" => 1,
        "k" => 1000 * 1000,
        "M" => 1000 * 1000u128.pow(2),
        "G" => 1000 * 1000u128.pow(3),
        "T" => 1000 * 1000u128.pow(4),
        "P" => 1000 * 1000u128.pow(5),
        "E" => 1000 * 1000u128.pow(6),
        "Ki" => 1000 * 1024,
        "Mi" => 1000 * 1024u128.pow(2),
        "Gi" => 1000 * 1024u128.pow(3),
        "Ti" => 1000 * 1024u128.pow(4),
        "Pi" => 1000 * 1024u128.pow(5),
        "Ei" => 1000 * 1024u128.pow(6),
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = digits.parse().ok()?;
    let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    mantissa
        .checked_mul(multiplier_milli)
        .map(|value| value / scale)
}

/// Whether a PVC requesting `current` must grow to `desired`: only when both read and
/// `desired` is larger (volumes never shrink; one already larger is left as it is).
pub fn volume_needs_growth(current: &str, desired: &str) -> bool {
    match (parse_quantity(current), parse_quantity(desired)) {
        (Some(current), Some(desired)) => desired > current,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ordinal: u32, ready: bool, revision: &str) -> PodState {
        PodState {
            name: format!("events-{ordinal}"),
            ordinal,
            ready,
            revision: Some(revision.to_owned()),
            terminating: false,
        }
    }

    fn quorum(leader: u32, voters: &[u32], replicas: &[(u32, bool, u64)]) -> Quorum {
        Quorum {
            node_id: format!("events-{leader}"),
            role: "leader".into(),
            leader: Some(format!("events-{leader}")),
            epoch: 1,
            high_watermark: 100,
            end_offset: 100,
            voters: voters.iter().map(|v| format!("events-{v}")).collect(),
            replicas: replicas
                .iter()
                .map(|(ordinal, voter, end)| ReplicaProgress {
                    id: format!("events-{ordinal}"),
                    voter: *voter,
                    end_offset: *end,
                    lag: 100 - end,
                    fetched: true,
                    last_fetch_ago_ms: 10,
                })
                .collect(),
            ..Quorum::default()
        }
    }

    #[test]
    fn paused_by_spec_or_annotation() {
        let mut cluster = crate::resources::tests::cluster(3);
        assert!(!is_paused(&cluster));
        cluster.spec.paused = true;
        assert!(is_paused(&cluster));
        cluster.spec.paused = false;
        cluster.metadata.annotations =
            Some([(PAUSED_ANNOTATION.to_owned(), "true".to_owned())].into());
        assert!(is_paused(&cluster));
        cluster.metadata.annotations =
            Some([(PAUSED_ANNOTATION.to_owned(), "no".to_owned())].into());
        assert!(!is_paused(&cluster));
    }

    #[test]
    fn ordinals_come_from_pod_names() {
        assert_eq!(ordinal_of("events", "events-3"), Some(3));
        assert_eq!(ordinal_of("events", "events-x"), None);
        assert_eq!(ordinal_of("events", "other-1"), None);
        assert_eq!(ordinal_of("ev", "events-1"), None);
    }

    #[test]
    fn a_new_cluster_is_created_at_its_size() {
        let decision = decide_scaling("events", 3, None, &[], None);
        assert_eq!(decision.statefulset_replicas, 3);
        assert_eq!(decision.step, ScaleStep::Steady);
    }

    #[test]
    fn a_voter_that_lost_its_data_is_removed_then_added_back_once_caught_up() {
        let pods: Vec<_> = (0..3).map(|o| pod(o, true, "r1")).collect();
        // events-1 is in the voter set, but the leader no longer counts it.
        let wiped = quorum(0, &[0, 1, 2], &[(1, false, 40), (2, true, 100)]);
        let decision = decide_scaling("events", 3, Some(3), &pods, Some(&wiped));
        assert_eq!(decision.statefulset_replicas, 3);
        assert_eq!(
            decision.step,
            ScaleStep::RemoveVoter {
                node: "events-1".into()
            }
        );
        // Removed, it is an observer: added back once caught up, not before.
        let mut behind = quorum(0, &[0, 2], &[(1, false, 0), (2, true, 100)]);
        behind.replicas[0].lag = PROMOTION_MAX_LAG + 1;
        let decision = decide_scaling("events", 3, Some(3), &pods, Some(&behind));
        assert!(matches!(decision.step, ScaleStep::AwaitCatchUp { .. }));
        let caught_up = quorum(0, &[0, 2], &[(1, false, 100), (2, true, 100)]);
        let decision = decide_scaling("events", 3, Some(3), &pods, Some(&caught_up));
        assert_eq!(
            decision.step,
            ScaleStep::AddVoter {
                node: "events-1".into()
            }
        );
    }

    #[test]
    fn scale_down_removes_the_voter_before_shrinking_one_at_a_time() {
        let pods: Vec<_> = (0..5).map(|o| pod(o, true, "r1")).collect();
        // 5 -> 3, leader 0: remove events-4 first, keeping 5 pods.
        let all = quorum(0, &[0, 1, 2, 3, 4], &[]);
        let decision = decide_scaling("events", 3, Some(5), &pods, Some(&all));
        assert_eq!(decision.statefulset_replicas, 5);
        assert_eq!(
            decision.step,
            ScaleStep::RemoveVoter {
                node: "events-4".into()
            }
        );
        // Once committed, shrink by one.
        let removed = quorum(0, &[0, 1, 2, 3], &[]);
        let decision = decide_scaling("events", 3, Some(5), &pods, Some(&removed));
        assert_eq!(decision.statefulset_replicas, 4);
        assert_eq!(decision.step, ScaleStep::Shrink { from: 5, to: 4 });
        // Next ordinal leads: hand over first, keep the size.
        let leads = quorum(3, &[0, 1, 2, 3], &[]);
        let decision = decide_scaling("events", 3, Some(4), &pods[..4], Some(&leads));
        assert_eq!(decision.statefulset_replicas, 4);
        assert_eq!(
            decision.step,
            ScaleStep::TransferLeadership {
                from: "events-3".into()
            }
        );
        // Without the quorum's state nothing shrinks.
        let decision = decide_scaling("events", 3, Some(4), &pods[..4], None);
        assert_eq!(decision.statefulset_replicas, 4);
        assert_eq!(decision.step, ScaleStep::NeedsQuorum);
    }

    #[test]
    fn scale_up_grows_then_promotes_only_caught_up_ready_observers() {
        let decision = decide_scaling("events", 5, Some(3), &[], None);
        assert_eq!(decision.statefulset_replicas, 5);
        assert_eq!(decision.step, ScaleStep::Grow { from: 3, to: 5 });

        let pods: Vec<_> = (0..5).map(|o| pod(o, o != 4, "r1")).collect();
        // events-3 is far behind, events-4 caught up but not ready.
        let mut behind = quorum(
            0,
            &[0, 1, 2],
            &[(1, true, 100), (3, false, 0), (4, false, 100)],
        );
        behind.replicas[1].lag = 5000;
        let decision = decide_scaling("events", 5, Some(5), &pods, Some(&behind));
        assert_eq!(
            decision.step,
            ScaleStep::AwaitCatchUp {
                nodes: vec!["events-3".into(), "events-4".into()]
            }
        );
        let caught_up = quorum(0, &[0, 1, 2], &[(3, false, 95), (4, false, 100)]);
        let decision = decide_scaling("events", 5, Some(5), &pods, Some(&caught_up));
        assert_eq!(
            decision.step,
            ScaleStep::AddVoter {
                node: "events-3".into()
            }
        );
        let done = quorum(0, &[0, 1, 2, 3, 4], &[]);
        let decision = decide_scaling("events", 5, Some(5), &pods, Some(&done));
        assert_eq!(decision.step, ScaleStep::Steady);
    }

    #[test]
    fn roll_takes_followers_from_the_top_and_the_leader_last() {
        let synced = quorum(1, &[0, 1, 2], &[(0, true, 100), (2, true, 100)]);
        let pods = vec![
            pod(0, true, "old"),
            pod(1, true, "old"),
            pod(2, true, "old"),
        ];
        assert_eq!(
            decide_roll(Some("new"), 3, &pods, Some(&synced)),
            RollStep::DeletePod {
                pod: "events-2".into(),
                remaining: 3
            }
        );
        let pods = vec![
            pod(0, true, "old"),
            pod(1, true, "old"),
            pod(2, true, "new"),
        ];
        assert_eq!(
            decide_roll(Some("new"), 3, &pods, Some(&synced)),
            RollStep::DeletePod {
                pod: "events-0".into(),
                remaining: 2
            }
        );
        let pods = vec![
            pod(0, true, "new"),
            pod(1, true, "old"),
            pod(2, true, "new"),
        ];
        assert_eq!(
            decide_roll(Some("new"), 3, &pods, Some(&synced)),
            RollStep::TransferLeadership {
                from: "events-1".into(),
                remaining: 1
            }
        );
        let pods = vec![
            pod(0, true, "new"),
            pod(1, true, "new"),
            pod(2, true, "new"),
        ];
        assert_eq!(
            decide_roll(Some("new"), 3, &pods, Some(&synced)),
            RollStep::UpToDate
        );
    }

    #[test]
    fn roll_waits_for_the_restarted_pod_to_be_ready_and_caught_up() {
        let synced = quorum(1, &[0, 1, 2], &[(0, true, 100), (2, true, 100)]);
        let pods = vec![
            pod(0, true, "old"),
            pod(1, true, "old"),
            pod(2, false, "new"),
        ];
        assert!(matches!(
            decide_roll(Some("new"), 3, &pods, Some(&synced)),
            RollStep::Wait { remaining: 2, .. }
        ));
        let missing = vec![pod(0, true, "old"), pod(1, true, "old")];
        assert!(matches!(
            decide_roll(Some("new"), 3, &missing, Some(&synced)),
            RollStep::Wait { .. }
        ));
        let lagging = quorum(1, &[0, 1, 2], &[(0, true, 100), (2, true, 40)]);
        let pods = vec![
            pod(0, true, "old"),
            pod(1, true, "old"),
            pod(2, true, "new"),
        ];
        match decide_roll(Some("new"), 3, &pods, Some(&lagging)) {
            RollStep::Wait { reason, .. } => assert!(reason.contains("events-2"), "{reason}"),
            other => panic!("expected a wait, got {other:?}"),
        }
        assert!(matches!(
            decide_roll(Some("new"), 3, &pods, None),
            RollStep::Wait { .. }
        ));
    }

    #[test]
    fn a_single_node_is_rolled_without_a_transfer() {
        let alone = quorum(0, &[0], &[]);
        assert_eq!(
            decide_roll(Some("new"), 1, &[pod(0, true, "old")], Some(&alone)),
            RollStep::DeletePod {
                pod: "events-0".into(),
                remaining: 1
            }
        );
    }

    #[test]
    fn contains_ignores_what_the_server_adds() {
        let existing = json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1"}},
                              "spec": {"ports": [{"port": 1, "protocol": "TCP"}]}, "status": {}});
        assert!(contains(
            &existing,
            &json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 1}]}})
        ));
        assert!(!contains(
            &existing,
            &json!({"spec": {"ports": [{"port": 2}]}})
        ));
        assert!(!contains(
            &existing,
            &json!({"spec": {"ports": [{"port": 1}, {"port": 2}]}})
        ));
        assert!(!contains(
            &existing,
            &json!({"metadata": {"labels": {"y": "2"}}})
        ));
        assert!(contains(&existing, &json!({"metadata": {"gone": null}})));
    }

    #[test]
    fn quantities_compare_across_units() {
        assert_eq!(parse_quantity("1Ki"), Some(1024 * 1000));
        assert_eq!(parse_quantity("1.5Gi"), parse_quantity("1536Mi"));
        assert_eq!(parse_quantity("1G"), parse_quantity("1000M"));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("1e3"), None);
        // As the API server stores them: equal by value where quantities are, and only there.
        let resources = |cpu: &str, memory: &str| {
            json!({"resources": {"requests": {"cpu": cpu, "memory": memory}},
                   "labels": {"size": memory}})
        };
        let stored = resources("500m", "1Gi");
        assert!(contains(
            &stored,
            &json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}})
        ));
        assert!(!contains(
            &stored,
            &json!({"resources": {"requests": {"cpu": "0.6"}}})
        ));
        assert!(!contains(&stored, &json!({"labels": {"size": "1024Mi"}})));
        assert!(volume_needs_growth("10Gi", "20Gi"));
        assert!(!volume_needs_growth("20Gi", "10Gi"), "never shrink");
        assert!(!volume_needs_growth("10Gi", "10240Mi"));
        assert!(
            !volume_needs_growth("11Gi", "10Gi"),
            "already larger is fine"
        );
        assert!(!volume_needs_growth("what", "10Gi"));
    }
}
