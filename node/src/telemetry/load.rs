//! [`LoadCounters`]: what the node's bounds on load are doing (streams, their memory,
//! connections per listener, a full disk), updated where the bounds act and read at scrape
//! time.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The listeners whose connections are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The clients' gRPC port (`--rpc-addr`).
    Rpc,
    /// The peer and admin port (`--peer-addr`).
    Peer,
    /// `/metrics`, `/healthz`, `/readyz` (`--http-addr`).
    Http,
}

impl Listener {
    const ALL: [Listener; 3] = [Listener::Rpc, Listener::Peer, Listener::Http];

    fn name(self) -> &'static str {
        match self {
            Listener::Rpc => "rpc",
            Listener::Peer => "peer",
            Listener::Http => "http",
        }
    }
}

/// Connections of one listener.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Open now.
    pub open: AtomicU64,
    /// Closed at once because the listener had as many as it may.
    pub refused: AtomicU64,
    /// Closed because the client did not finish its handshake or send a request in time.
    pub timed_out: AtomicU64,
    /// Closed to make room for a new connection while they had sent no request.
    pub evicted: AtomicU64,
}

/// The counters. Cheap to update: relaxed atomics.
#[derive(Debug, Default)]
pub struct LoadCounters {
    /// Streams open now.
    pub streams_open: AtomicU64,
    /// Streams refused at `--max-streams`.
    pub streams_refused: AtomicU64,
    /// Streams cut off as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Bytes streams hold read ahead of their clients.
    pub stream_bytes: AtomicU64,
    /// Failed RPCs whose log line was left out by the rate limit.
    pub failures_not_logged: AtomicU64,
    rpc: ConnectionCounters,
    peer: ConnectionCounters,
    http: ConnectionCounters,
}

impl LoadCounters {
    /// The connection counters of `listener`.
    pub fn connections(&self, listener: Listener) -> &ConnectionCounters {
        match listener {
            Listener::Rpc => &self.rpc,
            Listener::Peer => &self.peer,
            Listener::Http => &self.http,
        }
    }
}

/// Log lines for failed RPCs, at most, per second; the rest are counted.
pub const FAILURE_LINES_PER_SECOND: u32 = 10;

/// A limit on how many lines of one kind are logged per second, so that a client that keeps
/// failing cannot flood the node's log; lines left out are counted
/// (`proglog_rpc_failures_not_logged_total`), and the first line of each second says how many
/// the previous one left out.
#[derive(Debug)]
pub struct LogRate {
    per_second: u32,
    load: std::sync::Arc<LoadCounters>,
    window: parking_lot::Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<std::time::Instant>,
    logged: u32,
    left_out: u64,
}

impl LogRate {
    /// At most `per_second` lines a second, counting the rest in `load`.
    pub fn new(per_second: u32, load: std::sync::Arc<LoadCounters>) -> Self {
        LogRate {
            per_second,
            load,
            window: parking_lot::Mutex::new(Window {
                started: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the lines left out since the last one
    /// logged, or `None` (counted) when the second's lines are used up.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut window = self.window.lock();
        let fresh = window
            .started
            .is_none_or(|started| now.duration_since(started) >= std::time::Duration::from_secs(1));
        if fresh {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged < self.per_second {
            window.logged += 1;
            Some(std::mem::take(&mut window.left_out))
        } else {
            window.left_out += 1;
            self.load
                .failures_not_logged
                .fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Reads [`LoadCounters`] at scrape time.
#[derive(Debug)]
pub(crate) struct LoadCollector(pub(crate) std::sync::Arc<LoadCounters>);

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for LoadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = &self.0;
        for (name, help, unit, value) in [
            (
                "streams_open",
                "ConsumeStream and ProduceStream calls open now",
                None,
                &load.streams_open,
            ),
            (
                "stream_buffered",
                "Bytes of records streams have read ahead of their clients (bounded by --stream-memory-bytes)",
                Some(Unit::Bytes),
                &load.stream_bytes,
            ),
        ] {
            let gauge = ConstGauge::new(read(value));
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "streams_refused",
                "Streams refused because --max-streams were open",
                &load.streams_refused,
            ),
            (
                "slow_consumers",
                "Streams cut off because their clients took nothing while holding more than their share of the stream memory",
                &load.slow_consumers,
            ),
            (
                "rpc_failures_not_logged",
                "Failed RPCs left out of the log by its rate limit (all are counted in proglog_rpc_requests_total)",
                &load.failures_not_logged,
            ),
        ] {
            let counter = ConstCounter::new(read(value));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut open = encoder.encode_descriptor(
            "connections_open",
            "Connections open now, by listener",
            None,
            MetricType::Gauge,
        )?;
        for listener in Listener::ALL {
            ConstGauge::new(read(&load.connections(listener).open))
                .encode(open.encode_family(&[("listener", listener.name())])?)?;
        }
        let mut closed = encoder.encode_descriptor(
            "connections_closed",
            "Connections the node closed to stay within its bounds, by listener and reason: \
             refused (the listener was full), timed_out (no handshake or request in time), \
             evicted (closed to make room while it had sent no request)",
            None,
            MetricType::Counter,
        )?;
        for listener in Listener::ALL {
            let counters = load.connections(listener);
            for (reason, value) in [
                ("refused", &counters.refused),
                ("timed_out", &counters.timed_out),
                ("evicted", &counters.evicted),
            ] {
                ConstCounter::new(read(value)).encode(
                    closed.encode_family(&[("listener", listener.name()), ("reason", reason)])?,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_log_rate_admits_its_lines_each_second_and_counts_the_rest() {
        let load = Arc::new(LoadCounters::default());
        let rate = LogRate::new(3, Arc::clone(&load));
        let start = Instant::now();
        let admitted: Vec<Option<u64>> = (0..5).map(|_| rate.admit(start)).collect();
        assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(load.failures_not_logged.load(Ordering::Relaxed), 2);
        // The next second's first line says how many were left out.
        let later = start + Duration::from_secs(1);
        assert_eq!(rate.admit(later), Some(2));
        assert_eq!(rate.admit(later), Some(0));
    }
}
