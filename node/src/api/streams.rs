//! Server-wide bounds on streams: how many are open at once, and how many bytes of records
//! they hold that their clients have not taken yet.
//!
//! A `ConsumeStream` reads records ahead of its client. Every byte it reads is first taken from
//! one budget shared by the whole node ([`StreamBudget`]), and given back when the client's
//! side takes the record (gRPC encodes it into the HTTP/2 stream, which happens only as far as
//! the client's flow-control window lets it). So a client that stops reading stops its
//! stream's reads once the stream holds its allowance, and the node's read-ahead never exceeds
//! the budget, however many streams are open.
//!
//! Each stream may hold up to its own limit, or its fair share of the budget (the budget over
//! the streams open) when that is less. A stream that holds more than its fair share (it read
//! when fewer streams were open) while other streams wait for the budget, and whose client
//! takes nothing for the slow-consumer timeout, is cut off with `RESOURCE_EXHAUSTED` naming the
//! offset to resume from, as NATS cuts off a slow consumer: its records are dropped at once, so
//! the budget goes to streams that read.
//!
//! The budget covers what the node reads ahead. Each stream also has up to its HTTP/2 window
//! (and a message) encoded and handed to the connection, outside the budget: that part is
//! bounded per stream by flow control, and in total by `--max-streams`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::telemetry::LoadCounters;

/// The least a stream may read ahead, however many streams share the budget.
const MIN_ALLOWANCE: usize = 4 << 10;

/// The bounds, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Streams (`ConsumeStream` and `ProduceStream`) open at once, at most (`--max-streams`).
    pub max_streams: usize,
    /// Bytes all consume streams together may hold read ahead of their clients
    /// (`--stream-memory-bytes`).
    pub budget_bytes: usize,
    /// Bytes one consume stream may hold read ahead, at most (it may exceed this by its last
    /// batch).
    pub per_stream_bytes: usize,
    /// The largest batch a read can return: what a read takes from the budget before it knows
    /// what it reads.
    pub max_batch_bytes: usize,
    /// How long a stream over its share may go without its client taking anything while
    /// others wait (`--slow-consumer-timeout-ms`).
    pub slow_consumer_after: Duration,
}

/// The node's stream bounds and the budget they share.
#[derive(Debug)]
pub struct StreamBudget {
    limits: StreamLimits,
    bytes: Arc<Semaphore>,
    open: AtomicUsize,
    /// Streams waiting for the budget now: while any does, streams over their share are
    /// holding others up.
    waiting: AtomicUsize,
    counters: Arc<LoadCounters>,
}

impl StreamBudget {
    /// A budget with `limits`, reporting to `counters`.
    pub fn new(limits: StreamLimits, counters: Arc<LoadCounters>) -> Arc<Self> {
        Arc::new(StreamBudget {
            bytes: Arc::new(Semaphore::new(limits.budget_bytes)),
            limits,
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            counters,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// A slot for a new stream, or `RESOURCE_EXHAUSTED` when `max_streams` are open.
    pub fn open(self: &Arc<Self>) -> Result<StreamSlot, Status> {
        let opened = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.limits.max_streams).then_some(open + 1)
            });
        if opened.is_err() {
            self.counters
                .streams_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "this node serves at most {} streams at once (--max-streams); retry later or on another node",
                self.limits.max_streams
            )));
        }
        self.counters.streams_open.fetch_add(1, Ordering::Relaxed);
        Ok(StreamSlot {
            budget: Arc::clone(self),
        })
    }

    /// Bytes held by streams now.
    pub fn held_bytes(&self) -> usize {
        self.limits
            .budget_bytes
            .saturating_sub(self.bytes.available_permits())
    }

    /// Half the budget over the streams open: what a stream may hold while others wait. The
    /// other half is for reads in progress, which hold a batch only while they copy from it.
    fn fair_share(&self) -> usize {
        self.limits.budget_bytes / 2 / self.open.load(Ordering::Acquire).max(1)
    }

    /// A stream's fair share, within its own limit, but never so little that reads become
    /// tiny.
    fn share(&self) -> usize {
        self.limits
            .per_stream_bytes
            .min(self.fair_share().max(MIN_ALLOWANCE))
    }

    fn others_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }
}

/// One open stream's place under `max_streams`; dropping it frees the place.
#[derive(Debug)]
pub struct StreamSlot {
    budget: Arc<StreamBudget>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::AcqRel);
        self.budget
            .counters
            .streams_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes of one read, held from the budget until the last of its records leaves the queue.
#[derive(Debug)]
pub struct Held {
    permit: OwnedSemaphorePermit,
    account: Arc<Account>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let bytes = self.permit.num_permits();
        self.account.held.fetch_sub(bytes, Ordering::AcqRel);
        self.account
            .counters
            .stream_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed);
        self.account.note_taken();
        self.account.changed.notify_one();
    }
}

/// One stream's bytes held, and the signal that its client took some or went away.
#[derive(Debug)]
struct Account {
    held: AtomicUsize,
    changed: Notify,
    counters: Arc<LoadCounters>,
    /// When the client last took a read's records (or the stream opened), in milliseconds
    /// since `opened`.
    last_taken_ms: AtomicU64,
    opened: Instant,
}

impl Account {
    fn note_taken(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_taken_ms.store(now, Ordering::Release);
    }

    /// How long the client has taken nothing.
    fn since_taken(&self) -> Duration {
        let last = Duration::from_millis(self.last_taken_ms.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(last)
    }
}

#[derive(Debug)]
struct State<T> {
    /// Items not taken yet, each with the bytes it holds and its log offset.
    items: VecDeque<(T, Option<Arc<Held>>, u64)>,
    /// The status the stream ends with once `items` are taken.
    end: Option<Status>,
    finished: bool,
    receiver_gone: bool,
    waker: Option<Waker>,
}

/// The producing end of a stream's queue: the task that reads the log.
#[derive(Debug)]
pub struct QueueSender<T> {
    state: Arc<Mutex<State<T>>>,
    account: Arc<Account>,
    /// What this stream may hold read ahead (see [`QueueSender::allowance`]).
    allowance: AtomicUsize,
    budget: Arc<StreamBudget>,
    _slot: StreamSlot,
}

/// The consuming end: the response stream gRPC sends from.
#[derive(Debug)]
pub struct QueueStream<T> {
    state: Arc<Mutex<State<T>>>,
    account: Arc<Account>,
}

/// Why a wait for budget ended without it.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// The client went away.
    Gone,
    /// The stream was cut off as a slow consumer (its end status is queued).
    CutOff,
    /// `stop` fired.
    Stopped,
}

/// A new queue for a stream holding `slot`.
pub fn queue<T>(budget: &Arc<StreamBudget>, slot: StreamSlot) -> (QueueSender<T>, QueueStream<T>) {
    let state = Arc::new(Mutex::new(State {
        items: VecDeque::new(),
        end: None,
        finished: false,
        receiver_gone: false,
        waker: None,
    }));
    let account = Arc::new(Account {
        held: AtomicUsize::new(0),
        changed: Notify::new(),
        counters: Arc::clone(&budget.counters),
        last_taken_ms: AtomicU64::new(0),
        opened: Instant::now(),
    });
    (
        QueueSender {
            state: Arc::clone(&state),
            account: Arc::clone(&account),
            allowance: AtomicUsize::new(0),
            budget: Arc::clone(budget),
            _slot: slot,
        },
        QueueStream { state, account },
    )
}

impl<T> QueueSender<T> {
    /// Whether the stream holds bytes its client has not taken.
    pub fn holds_any(&self) -> bool {
        self.account.held.load(Ordering::Acquire) > 0
    }

    /// Whether the client's side has gone (the call was cancelled or the connection closed).
    pub fn is_gone(&self) -> bool {
        self.state.lock().receiver_gone
    }

    /// Resolves when the client's side goes away.
    pub async fn gone(&self) {
        loop {
            let taken = self.account.changed.notified();
            if self.is_gone() {
                return;
            }
            taken.await;
        }
    }

    /// Queues the item at log offset `offset`, holding `held` (shared by the items of one
    /// read) until it is taken.
    pub fn push(&self, item: T, held: Option<Arc<Held>>, offset: u64) {
        let mut state = self.state.lock();
        if state.receiver_gone || state.finished {
            return;
        }
        state.items.push_back((item, held, offset));
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Ends the stream after the queued items, with `status` (or cleanly, with `None`).
    pub fn finish(&self, status: Option<Status>) {
        let mut state = self.state.lock();
        if state.finished {
            return;
        }
        state.finished = true;
        state.end = status;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Ends the stream now: queued items are dropped (their bytes go back to the budget) and
    /// `status` is what the client gets next.
    fn cut(&self, status: Status) {
        let dropped = {
            let mut state = self.state.lock();
            state.finished = true;
            state.end = Some(status);
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
            std::mem::take(&mut state.items)
        };
        drop(dropped);
    }

    /// Takes bytes for a read from the budget: first waits until this stream holds less than
    /// its allowance, then for up to `read_bytes` of the budget. While waiting, a stream over
    /// its fair share whose client takes nothing for the slow-consumer timeout while others
    /// wait is cut off with a status naming `resume_from`. Returns the permit; its size is what
    /// the read may take.
    pub async fn reserve(
        &self,
        read_bytes: usize,
        resume_from: u64,
        stop: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit, WaitEnd> {
        let limits = *self.budget.limits();
        // Room in this stream's allowance.
        let allowance = loop {
            let changed = self.account.changed.notified();
            if self.is_gone() {
                return Err(WaitEnd::Gone);
            }
            let held = self.account.held.load(Ordering::Acquire);
            let allowance = self.allowance(held);
            if held < allowance {
                break allowance;
            }
            tokio::select! {
                _ = stop.cancelled() => return Err(WaitEnd::Stopped),
                _ = changed => {}
                _ = tokio::time::sleep(self.check_every()) => {
                    if self.slow(resume_from, false) {
                        return Err(WaitEnd::CutOff);
                    }
                }
            }
        };
        let held = self.account.held.load(Ordering::Acquire);
        let want = read_bytes
            .min(allowance.saturating_sub(held))
            .clamp(1, limits.budget_bytes);
        self.take(want, resume_from, stop).await
    }

    /// What this stream may hold now. While others wait for the budget: its fair share. Else
    /// it grows (doubling up to the per-stream limit) each time its client has taken all it
    /// held, so a client that reads gets large reads and one that does not stays small.
    fn allowance(&self, held: usize) -> usize {
        let share = self.budget.share();
        let grown = self.allowance.load(Ordering::Acquire);
        let allowance = if self.budget.others_waiting() {
            share
        } else if held == 0 {
            grown
                .saturating_mul(2)
                .clamp(share, self.budget.limits.per_stream_bytes.max(share))
        } else {
            grown.max(share)
        };
        self.allowance.store(allowance, Ordering::Release);
        allowance
    }

    /// Takes `bytes` of the budget (at most the whole budget) for a read whose first batch is
    /// that large. The caller gives back what [`QueueSender::reserve`] took first: a stream
    /// never waits for the budget while holding some of it unsettled, so waiting streams
    /// cannot block each other.
    pub async fn reserve_batch(
        &self,
        bytes: usize,
        resume_from: u64,
        stop: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit, WaitEnd> {
        let bytes = bytes.clamp(1, self.budget.limits().budget_bytes);
        self.take(bytes, resume_from, stop).await
    }

    fn check_every(&self) -> Duration {
        (self.budget.limits().slow_consumer_after / 4).max(Duration::from_millis(10))
    }

    /// Waits for `bytes` of the budget (counted as waiting meanwhile), applying the
    /// slow-consumer rule to this stream.
    async fn take(
        &self,
        bytes: usize,
        resume_from: u64,
        stop: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit, WaitEnd> {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        if let Ok(permit) = Arc::clone(&self.budget.bytes).try_acquire_many_owned(bytes) {
            return Ok(permit);
        }
        let _waiting = Waiting::new(&self.budget);
        let mut acquire = std::pin::pin!(Arc::clone(&self.budget.bytes).acquire_many_owned(bytes));
        loop {
            let changed = self.account.changed.notified();
            if self.is_gone() {
                return Err(WaitEnd::Gone);
            }
            tokio::select! {
                _ = stop.cancelled() => return Err(WaitEnd::Stopped),
                // The semaphore is never closed.
                permit = &mut acquire => return permit.map_err(|_| WaitEnd::Stopped),
                _ = changed => {}
                _ = tokio::time::sleep(self.check_every()) => {
                    if self.slow(resume_from, true) {
                        return Err(WaitEnd::CutOff);
                    }
                }
            }
        }
    }

    /// Waits, after the stream's last read (it finished), until its client has taken every
    /// queued record or gone, applying the slow-consumer rule meanwhile, so a stream that stops
    /// reading cannot keep its records' bytes for good. Stops at `stop`.
    pub async fn hold_until_taken(&self, resume_from: u64, stop: &CancellationToken) {
        loop {
            let changed = self.account.changed.notified();
            if self.is_gone() || self.account.held.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => {}
                _ = tokio::time::sleep(self.check_every()) => {
                    if self.slow(resume_from, false) {
                        return;
                    }
                }
            }
        }
    }

    /// Applies the slow-consumer rule after a check interval: for a stream that waits for new
    /// records while it holds some its client has not taken. `true` when it cut the stream off.
    pub async fn check_slow(&self, resume_from: u64) -> bool {
        tokio::time::sleep(self.check_every()).await;
        self.slow(resume_from, false)
    }

    /// Keeps `bytes` of `permit` as what the read holds (giving the rest back), counted against
    /// this stream until the returned [`Held`] and its clones are dropped.
    pub fn settle(&self, mut permit: OwnedSemaphorePermit, bytes: usize) -> Arc<Held> {
        let keep = bytes.clamp(1, permit.num_permits());
        if let Some(rest) = permit.split(permit.num_permits() - keep) {
            drop(rest);
        }
        self.account.held.fetch_add(keep, Ordering::AcqRel);
        self.budget
            .counters
            .stream_bytes
            .fetch_add(keep as u64, Ordering::Relaxed);
        Arc::new(Held {
            permit,
            account: Arc::clone(&self.account),
        })
    }

    /// The slow-consumer rule: cuts the stream off (and says so) when it holds more than its
    /// share, others wait (`self_waiting`: counting this stream's own wait out), and nothing
    /// was taken for the timeout. The client is told to resume from the first record it did
    /// not get: the first one queued, or `resume_from` when none is.
    fn slow(&self, resume_from: u64, self_waiting: bool) -> bool {
        let limits = self.budget.limits();
        let held = self.account.held.load(Ordering::Acquire);
        let waiting = self.budget.waiting.load(Ordering::Acquire);
        if self.account.since_taken() < limits.slow_consumer_after
            || waiting <= usize::from(self_waiting)
            || held <= self.budget.fair_share()
        {
            return false;
        }
        let resume_from = self
            .state
            .lock()
            .items
            .front()
            .map_or(resume_from, |(_, _, offset)| *offset);
        self.budget
            .counters
            .slow_consumers
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            held,
            resume_from,
            "cut off a slow consumer: its stream held more than its share of the stream memory while others waited"
        );
        self.cut(Status::resource_exhausted(format!(
            "slow consumer: this stream held {held} bytes its client did not take for {} ms while the node's stream memory was full; resume from offset {resume_from}",
            limits.slow_consumer_after.as_millis()
        )));
        true
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        // A task that ends without finishing ends the stream cleanly.
        self.finish(None);
    }
}

/// Counts a stream as waiting for the budget while it lives.
struct Waiting<'a>(&'a StreamBudget);

impl<'a> Waiting<'a> {
    fn new(budget: &'a StreamBudget) -> Self {
        budget.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(budget)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T: Unpin> Stream for QueueStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (item, held, _) = {
            let mut state = self.state.lock();
            match state.items.pop_front() {
                Some(next) => next,
                None if state.finished => return Poll::Ready(state.end.take().map(Err)),
                None => {
                    state.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        // The read's bytes go back to the budget when its last record is taken.
        drop(held);
        Poll::Ready(Some(Ok(item)))
    }
}

impl<T> Drop for QueueStream<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.state.lock();
            state.receiver_gone = true;
            std::mem::take(&mut state.items)
        };
        drop(dropped);
        self.account.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const KIB: usize = 1 << 10;

    fn budget(max_streams: usize, budget_bytes: usize) -> Arc<StreamBudget> {
        StreamBudget::new(
            StreamLimits {
                max_streams,
                budget_bytes,
                per_stream_bytes: budget_bytes,
                max_batch_bytes: budget_bytes,
                slow_consumer_after: Duration::from_secs(1),
            },
            Arc::new(LoadCounters::default()),
        )
    }

    /// A stream that has read `bytes` (one queued item) that its client has not taken.
    async fn holding(
        budget: &Arc<StreamBudget>,
        bytes: usize,
    ) -> (QueueSender<u64>, QueueStream<u64>) {
        let (sender, stream) = queue(budget, budget.open().expect("a slot"));
        let permit = sender
            .reserve(bytes, 0, &CancellationToken::new())
            .await
            .expect("budget for the first read");
        assert_eq!(
            permit.num_permits(),
            bytes,
            "the first read gets what it asked"
        );
        let held = sender.settle(permit, bytes);
        sender.push(0, Some(held), 3);
        (sender, stream)
    }

    #[test]
    fn streams_beyond_the_cap_are_refused_until_one_closes() {
        let budget = budget(2, 64 * KIB);
        let first = budget.open().expect("first");
        let _second = budget.open().expect("second");
        let refused = budget.open().expect_err("a third stream is over the cap");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("--max-streams"), "{refused:?}");
        assert_eq!(budget.counters.streams_refused.load(Ordering::Relaxed), 1);
        assert_eq!(budget.counters.streams_open.load(Ordering::Relaxed), 2);
        drop(first);
        budget.open().expect("a closed stream frees its place");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_over_its_share_is_cut_off_while_another_waits() {
        let budget = budget(8, 32 * KIB);
        // Alone, the stream reads half the budget; then a second stream opens, making its
        // fair share a quarter, and asks for the whole budget.
        let (reader, mut stalled) = holding(&budget, 16 * KIB).await;
        let (waiter, _waiter_stream) = queue::<u64>(&budget, budget.open().expect("slot"));
        let stop = CancellationToken::new();
        let next_read = tokio::spawn({
            let stop = stop.clone();
            async move { reader.reserve(16 * KIB, 7, &stop).await.map(|_| ()) }
        });
        let permit = tokio::time::timeout(
            Duration::from_secs(60),
            waiter.reserve_batch(32 * KIB, 0, &stop),
        )
        .await
        .expect("the waiting stream gets the budget once the slow one is cut off")
        .expect("budget");
        assert_eq!(permit.num_permits(), 32 * KIB);
        assert_eq!(next_read.await.expect("reader task"), Err(WaitEnd::CutOff));
        // The stalled client gets no more records, only the status naming where to resume.
        let ended = stalled.next().await.expect("an end").expect_err("cut off");
        assert_eq!(ended.code(), tonic::Code::ResourceExhausted);
        // The dropped record (offset 3) is where to resume, not where the reader had got to.
        assert!(
            ended.message().contains("resume from offset 3"),
            "{ended:?}"
        );
        assert!(stalled.next().await.is_none());
        assert_eq!(budget.counters.slow_consumers.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_stream_whose_client_stops_reading_is_still_cut_off() {
        let budget = budget(8, 32 * KIB);
        // The stream read its last records (its range ended) and its client took none of them.
        let (reader, mut stalled) = holding(&budget, 16 * KIB).await;
        reader.finish(None);
        let (waiter, _waiter_stream) = queue::<u64>(&budget, budget.open().expect("slot"));
        let stop = CancellationToken::new();
        let holding_on = tokio::spawn({
            let stop = stop.clone();
            async move { reader.hold_until_taken(9, &stop).await }
        });
        let permit = tokio::time::timeout(
            Duration::from_secs(60),
            waiter.reserve_batch(32 * KIB, 0, &stop),
        )
        .await
        .expect("the waiting stream gets the budget once the finished one is cut off")
        .expect("budget");
        assert_eq!(permit.num_permits(), 32 * KIB);
        holding_on.await.expect("holding task");
        let ended = stalled.next().await.expect("an end").expect_err("cut off");
        assert!(
            ended.message().contains("resume from offset 3"),
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_within_its_share_is_never_cut_off() {
        let budget = budget(8, 32 * KIB);
        // Two streams: a fair share is 8 KiB, and this one holds no more than that.
        let (reader, stalled) = holding(&budget, 8 * KIB).await;
        let (waiter, _waiter_stream) = queue::<u64>(&budget, budget.open().expect("slot"));
        let stop = CancellationToken::new();
        let next_read = tokio::spawn({
            let stop = stop.clone();
            async move { reader.reserve(8 * KIB, 7, &stop).await.map(|_| ()) }
        });
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            waiter.reserve_batch(32 * KIB, 0, &stop),
        )
        .await;
        assert!(
            waited.is_err(),
            "the budget stays with a stream within its share"
        );
        assert!(!next_read.is_finished());
        assert_eq!(budget.counters.slow_consumers.load(Ordering::Relaxed), 0);
        // Its client going away gives the budget back at once.
        drop(stalled);
        assert_eq!(next_read.await.expect("reader task"), Err(WaitEnd::Gone));
        let permit = waiter
            .reserve_batch(32 * KIB, 0, &stop)
            .await
            .expect("the whole budget is free again");
        assert_eq!(permit.num_permits(), 32 * KIB);
        assert_eq!(budget.held_bytes(), 32 * KIB);
    }
}
