//! [`Metrics`]: the node's Prometheus registry. RPC metrics are updated by the RPC layer; the
//! log's gauges are read from the log at scrape time through [`LogStats`].

use std::sync::{Arc, OnceLock};

use proglog_client::names::DEFAULT_LOG;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the RPC latency buckets, in seconds: 50 µs (a cached read) to 10 s (a
/// produce stuck behind a slow disk), roughly 1-2.5-5 per decade.
const DURATION_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The log's state as the gauges report it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogSnapshot {
    /// How often replication took each of its branches.
    pub replication: crate::replication::replica::ReplicaCounters,
    /// The first offset the log holds.
    pub start_offset: u64,
    /// The offset the next record gets.
    pub end_offset: u64,
    /// Bytes of data in all segments.
    pub size_bytes: u64,
    /// Number of segments.
    pub segments: u64,
    /// `fdatasync` calls made for appends.
    pub fsyncs: u64,
    /// Time spent in them, in nanoseconds.
    pub fsync_nanos: u64,
    /// Records below it are committed and visible to consumers.
    pub high_watermark: u64,
    /// The current leader epoch.
    pub epoch: u64,
    /// 1 while this node leads, else 0.
    pub is_leader: u64,
    /// Voters in force.
    pub voters: u64,
    /// 1 while the log refuses writes because the disk is full.
    pub disk_full: u64,
}

/// Where the log gauges come from. Called on every scrape, on a runtime thread: it must be cheap
/// and must not block on I/O.
pub trait LogStats: Send + Sync + 'static {
    /// The log's state now.
    fn log_snapshot(&self) -> LogSnapshot;
}

impl LogStats for crate::api::LogStore {
    fn log_snapshot(&self) -> LogSnapshot {
        let log = self.log();
        let sync = log.sync_stats();
        let view = self.consensus().view();
        LogSnapshot {
            replication: self.consensus().counters(),
            start_offset: log.start_offset(),
            end_offset: log.end_offset(),
            size_bytes: log.size_bytes(),
            segments: log.segment_count() as u64,
            fsyncs: sync.syncs,
            fsync_nanos: sync.sync_nanos,
            high_watermark: view.high_watermark,
            epoch: view.epoch,
            is_leader: u64::from(view.leader_epoch.is_some()),
            voters: view.voters as u64,
            disk_full: u64::from(log.shortage() == Some(crate::storage::Shortage::Disk)),
        }
    }
}

/// Labels of the per-method metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub(crate) method: &'static str,
}

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodCodeLabels {
    pub(crate) method: &'static str,
    pub(crate) code: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The four golden signals per RPC method; cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    pub(crate) requests: Family<MethodCodeLabels, Counter>,
    pub(crate) duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub(crate) in_flight: Family<MethodLabels, Gauge>,
    /// How many failed calls get a log line.
    pub(crate) failure_log: Arc<super::load::LogRate>,
}

impl RpcMetrics {
    fn new(load: &Arc<super::LoadCounters>) -> Self {
        RpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            failure_log: Arc::new(super::load::LogRate::new(
                super::load::FAILURE_LINES_PER_SECOND,
                Arc::clone(load),
            )),
        }
    }
}

/// The node's metrics: one registry, encoded on each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc: RpcMetrics,
    log: Arc<LogCollector>,
    load: Arc<super::LoadCounters>,
}

impl Metrics {
    /// A registry with every metric of the node (the log gauges stay absent until
    /// [`Metrics::watch_log`]).
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("proglog");
        let load = Arc::new(super::LoadCounters::default());
        let rpc = RpcMetrics::new(&load);
        registry.register(
            "rpc_requests",
            "RPCs finished, by method and gRPC status code name",
            rpc.requests.clone(),
        );
        registry.register_with_unit(
            "rpc_request_duration",
            "Time from an RPC's arrival to its response headers (a stream's set-up only)",
            Unit::Seconds,
            rpc.duration.clone(),
        );
        registry.register(
            "rpc_in_flight",
            "RPCs started and not yet finished, open streams included",
            rpc.in_flight.clone(),
        );
        let log = Arc::new(LogCollector::default());
        registry.register_collector(Box::new(Arc::clone(&log)));
        registry.register_collector(Box::new(super::load::LoadCollector(Arc::clone(&load))));
        Arc::new(Metrics {
            registry,
            rpc,
            log,
            load,
        })
    }

    /// The counters of the node's bounds on load (streams, connections, a full disk).
    pub fn load(&self) -> &Arc<super::LoadCounters> {
        &self.load
    }

    /// The RPC metrics, for [`super::RpcMetricsLayer`].
    pub fn rpc(&self) -> &RpcMetrics {
        &self.rpc
    }

    /// Reports the gauges of `log` from now on. Only the first call counts: a node has one log.
    pub fn watch_log(&self, log: Arc<dyn LogStats>) {
        if self.log.source.set(log).is_err() {
            tracing::warn!("metrics already watch a log; ignoring another");
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Reads the log's gauges when scraped.
#[derive(Default)]
struct LogCollector {
    source: OnceLock<Arc<dyn LogStats>>,
}

impl std::fmt::Debug for LogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCollector")
            .field("watching", &self.source.get().is_some())
            .finish()
    }
}

impl Collector for LogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.source.get() else {
            return Ok(());
        };
        let log = source.log_snapshot();
        // What belongs to one log carries its name, as every log's will once a cluster holds
        // more than one; what belongs to the node or the cluster does not.
        let per_log = [
            (
                "log_start_offset",
                "First offset the log holds",
                log.start_offset,
            ),
            (
                "log_end_offset",
                "Offset the next record gets",
                log.end_offset,
            ),
            (
                "log_size_bytes",
                "Bytes of data in all segments",
                log.size_bytes,
            ),
            ("log_segments", "Number of segments", log.segments),
            (
                "log_high_watermark",
                "Records below this offset are committed on a majority and visible to consumers",
                log.high_watermark,
            ),
            ("leader_epoch", "The log's current leader epoch", log.epoch),
            (
                "is_leader",
                "1 while this node leads the log",
                log.is_leader,
            ),
        ];
        for (name, help, value) in per_log {
            let gauge = ConstGauge::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(family.encode_family(&[("log", DEFAULT_LOG)])?)?;
        }
        let gauges = [
            ("logs", "Logs this node holds a replica of", 1),
            ("leaders", "Logs this node leads", log.is_leader),
            (
                "voters",
                "Voters in the quorum, as this node knows it",
                log.voters,
            ),
            (
                "disk_full",
                "1 while the disk is full: writes are refused (and retried), reads are served",
                log.disk_full,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let fsyncs = ConstCounter::new(log.fsyncs);
        fsyncs.encode(encoder.encode_descriptor(
            "fsync",
            "fdatasync calls made for appends",
            None,
            fsyncs.metric_type(),
        )?)?;
        let mut events = encoder.encode_descriptor(
            "replication_events",
            "Times replication took each branch since the node started: elections, truncations, \
             resets to the leader's start, hand-overs, voter sets put in force, retention passes, \
             peer messages and votes refused as impossible or misdirected, failed fetches",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, count) in log.replication.named() {
            ConstCounter::new(count).encode(events.encode_family(&[("event", event)])?)?;
        }
        let seconds = ConstCounter::new(log.fsync_nanos as f64 / 1e9);
        seconds.encode(encoder.encode_descriptor(
            "fsync",
            "Time spent in fdatasync calls for appends",
            Some(&Unit::Seconds),
            seconds.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FixedLog(LogSnapshot);

    impl LogStats for FixedLog {
        fn log_snapshot(&self) -> LogSnapshot {
            self.0
        }
    }

    #[test]
    fn log_gauges_appear_once_a_log_is_watched() {
        let metrics = Metrics::new();
        let before = metrics.encode().unwrap();
        assert!(!before.contains("proglog_log_end_offset"), "{before}");
        assert!(before.ends_with("# EOF\n"), "{before}");

        metrics.watch_log(Arc::new(FixedLog(LogSnapshot {
            start_offset: 2,
            end_offset: 7,
            size_bytes: 4096,
            segments: 3,
            fsyncs: 5,
            fsync_nanos: 1_500_000_000,
            high_watermark: 6,
            epoch: 4,
            is_leader: 1,
            voters: 3,
            disk_full: 1,
            replication: crate::replication::replica::ReplicaCounters {
                refused_messages: 2,
                ..Default::default()
            },
        })));
        let text = metrics.encode().unwrap();
        for line in [
            "proglog_log_start_offset{log=\"default\"} 2\n",
            "proglog_log_high_watermark{log=\"default\"} 6\n",
            "proglog_leader_epoch{log=\"default\"} 4\n",
            "proglog_is_leader{log=\"default\"} 1\n",
            "proglog_voters 3\n",
            "proglog_logs 1\n",
            "proglog_leaders 1\n",
            "proglog_disk_full 1\n",
            "proglog_log_end_offset{log=\"default\"} 7\n",
            "proglog_log_size_bytes{log=\"default\"} 4096\n",
            "proglog_log_segments{log=\"default\"} 3\n",
            "proglog_fsync_total 5\n",
            "proglog_fsync_seconds_total 1.5\n",
            "# TYPE proglog_fsync counter\n",
            "proglog_replication_events_total{event=\"refused_message\"} 2\n",
            "proglog_replication_events_total{event=\"reset\"} 0\n",
            "# TYPE proglog_fsync_seconds counter\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn rpc_metrics_are_named_as_documented() {
        let metrics = Metrics::new();
        let rpc = metrics.rpc();
        let labels = MethodCodeLabels {
            method: "Produce",
            code: "Ok",
        };
        rpc.requests.get_or_create(&labels).inc();
        rpc.duration
            .get_or_create(&MethodLabels { method: "Produce" })
            .observe(0.000_07);
        rpc.in_flight
            .get_or_create(&MethodLabels { method: "Produce" })
            .set(0);
        let text = metrics.encode().unwrap();
        for line in [
            "proglog_rpc_requests_total{method=\"Produce\",code=\"Ok\"} 1\n",
            "proglog_rpc_request_duration_seconds_bucket{le=\"0.00005\",method=\"Produce\"} 0\n",
            "proglog_rpc_request_duration_seconds_bucket{le=\"0.0001\",method=\"Produce\"} 1\n",
            "proglog_rpc_request_duration_seconds_bucket{le=\"10.0\",method=\"Produce\"} 1\n",
            "proglog_rpc_request_duration_seconds_count{method=\"Produce\"} 1\n",
            "proglog_rpc_in_flight{method=\"Produce\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
