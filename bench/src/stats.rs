//! Latency histograms and the outcome of one benchmark case.
//!
//! Latencies are recorded in nanoseconds in an HdrHistogram (3 significant digits, up to one
//! minute) per task and merged at the end, so recording never contends.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest latency the histograms track; longer ones are clamped to it.
const MAX_LATENCY_NANOS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Latencies {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_NANOS, 3)?,
        })
    }

    /// Records one operation's latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(MAX_LATENCY_NANOS);
        self.histogram.saturating_record(nanos.max(1));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latencies) -> Result<(), hdrhistogram::AdditionError> {
        self.histogram.add(&other.histogram)
    }

    /// Operations recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0.5 for the median), in microseconds.
    pub fn quantile_micros(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1_000.0
    }
}

/// What one case measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Messages (records) acknowledged or read.
    pub messages: u64,
    /// Payload bytes of those messages (record values only, no framing).
    pub payload_bytes: u64,
    /// Wall time from the first send to the last acknowledgement or read.
    pub elapsed: Duration,
    /// Per-operation latency (one produce call, one batch call, one stream message from send
    /// to its response); `None` where it means nothing (reading a stream).
    pub latencies: Option<Latencies>,
}

impl Outcome {
    /// Messages per second.
    pub fn messages_per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabytes (10^6 bytes) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        self.payload_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
