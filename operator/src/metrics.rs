//! The operator's Prometheus metrics: reconcile passes by outcome, their duration, errors by
//! kind (what `error_policy` counts), and the admin and Kubernetes actions taken. One registry,
//! encoded on each scrape of `/metrics`.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Buckets of the reconcile duration, seconds: a pass is a few API calls, and a voter change
/// waits for a commit.
const DURATION_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Label of a reconcile pass: `success` or `error`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `success` or `error`.
    pub outcome: &'static str,
}

/// Label of an error: what kind it is (`conflict`, `server`, `api`, `admin`, `tls`, `spec`,
/// `status`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind.
    pub kind: &'static str,
}

/// Label of an action on a cluster (`voter_added`, `pod_rolled`, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// The action.
    pub action: &'static str,
}

/// Labels of one member of one cluster.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// The LogCluster's namespace.
    pub namespace: String,
    /// The LogCluster's name.
    pub cluster: String,
    /// The member (pod name).
    pub member: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `proglog_operator_reconciles_total{outcome}`.
    pub reconciles: Family<OutcomeLabels, Counter>,
    /// `proglog_operator_reconcile_duration_seconds`.
    pub reconcile_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    /// `proglog_operator_reconcile_errors_total{kind}`.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// `proglog_operator_actions_total{action}`.
    pub actions: Family<ActionLabels, Counter>,
    /// `proglog_operator_leader`: 1 while this replica holds the lease (or runs without
    /// leader election).
    pub leader: Gauge,
    /// `proglog_operator_member_lag_records{namespace,cluster,member}`: records behind the
    /// leader's end at the member's last fetch, as the leader last reported it.
    pub member_lag: Family<MemberLabels, Gauge>,
    /// The members each cluster last reported, so that a member that left loses its series.
    reported: std::sync::Mutex<HashMap<(String, String), Vec<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("proglog_operator");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        let reconcile_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        let leader = Gauge::default();
        let member_lag = Family::<MemberLabels, Gauge>::default();
        registry.register(
            "reconciles",
            "Reconcile passes of LogClusters, by outcome",
            reconciles.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "How long a reconcile pass took",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconcile passes, by kind of error (each is requeued with backoff)",
            reconcile_errors.clone(),
        );
        registry.register(
            "actions",
            "Changes the operator made to clusters, by action",
            actions.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica reconciles (holds the lease)",
            leader.clone(),
        );
        registry.register(
            "member_lag_records",
            "Records a member was behind the leader's end at its last fetch, as the leader reported it",
            member_lag.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            reconcile_errors,
            actions,
            leader,
            member_lag,
            reported: std::sync::Mutex::default(),
        }
    }

    /// Sets the lag of every member of one cluster the leader reported; members it no longer
    /// reports (scaled away, or the cluster is gone when `lags` is empty) lose their series.
    pub fn report_lags(&self, namespace: &str, cluster: &str, lags: &[(String, u64)]) {
        let labels = |member: &str| MemberLabels {
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            member: member.to_owned(),
        };
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (namespace.to_owned(), cluster.to_owned());
        let now: Vec<String> = lags.iter().map(|(member, _)| member.clone()).collect();
        for gone in reported
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|member| !now.contains(member))
        {
            self.member_lag.remove(&labels(gone));
        }
        for (member, lag) in lags {
            self.member_lag
                .get_or_create(&labels(member))
                .set(i64::try_from(*lag).unwrap_or(i64::MAX));
        }
        if now.is_empty() {
            reported.remove(&key);
        } else {
            reported.insert(key, now);
        }
    }

    /// Counts one `action`.
    pub fn action(&self, action: &'static str) {
        self.actions.get_or_create(&ActionLabels { action }).inc();
    }

    /// How many errors of `kind` were counted.
    pub fn errors_of(&self, kind: &'static str) -> u64 {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { kind })
            .get()
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.action("voter_added");
        metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels { kind: "server" })
            .inc();
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("proglog_operator_actions_total{action=\"voter_added\"} 1"),
            "{text}"
        );
        assert!(text.contains("proglog_operator_reconcile_errors_total{kind=\"server\"} 1"));
        assert_eq!(metrics.errors_of("server"), 1);
    }

    #[test]
    fn member_lag_series_follow_the_members_and_go_with_the_cluster() {
        let metrics = Metrics::new();
        let lags = |members: &[(&str, u64)]| -> Vec<(String, u64)> {
            members
                .iter()
                .map(|(member, lag)| ((*member).to_owned(), *lag))
                .collect()
        };
        metrics.report_lags("prod", "events", &lags(&[("events-0", 0), ("events-1", 7)]));
        metrics.report_lags("prod", "other", &lags(&[("other-0", 0)]));
        let text = metrics.encode().unwrap();
        assert!(text.contains("member=\"events-1\"} 7"), "{text}");
        metrics.report_lags("prod", "events", &lags(&[("events-0", 0)]));
        let text = metrics.encode().unwrap();
        assert!(!text.contains("events-1"), "{text}");
        // A deleted cluster reports nothing: its series go, the other cluster's stay.
        metrics.report_lags("prod", "events", &[]);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("cluster=\"events\""), "{text}");
        assert!(text.contains("member=\"other-0\"} 0"), "{text}");
    }
}
