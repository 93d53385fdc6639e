//! The async driver of the state machine in a running node.
//!
//! [`Consensus`] owns the [`Replica`] behind a mutex. Every call into it runs on tokio's
//! blocking pool (a step may fsync: a follower appending fetched records, or saving quorum
//! state), except [`Consensus::note_local_append`], which only reads offsets. After each call
//! the driver sends what the replica left in its outbox through a [`PeerTransport`] and
//! publishes a [`ClusterView`] (role, leader, high watermark) that the API layer waits on.
//!
//! Requests are RPCs: the answer to a request this node sent comes back as the call's result
//! and is fed to the replica as a message from the peer; a request another node sent is
//! answered with the message the replica addresses back to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::error::ReplicationError;
use super::messages::{Envelope, FetchResult, Message, NodeId};
use super::quorum::FileQuorumStore;
use super::replica::{Replica, ReplicaCounters, ReplicaStatus, RoleKind, VoterChange};
use crate::storage::{Log, RetentionOutcome, now_ms};

/// The replica as a running node uses it.
pub type NodeReplica = Replica<Arc<Log>, FileQuorumStore>;

/// How often timers are checked.
const TICK: Duration = Duration::from_millis(20);
/// Peer calls in flight at once, across all peers.
const MAX_CALLS_IN_FLIGHT: usize = 64;
/// A peer call that is not a fetch gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a parked fetch waits for new records before answering with only a new high
/// watermark (see [`Consensus::handle`]).
const HIGH_WATERMARK_LINGER: Duration = Duration::from_millis(2);

/// Sends a request to a peer and returns its response. Implemented by the gRPC peer client in
/// `api`; a failure (unreachable, timed out) means the message was lost, which the protocol
/// tolerates: the replica sends again when its timers say so.
pub trait PeerTransport: Send + Sync + 'static {
    /// Delivers `message` to `to`; `Ok(None)` for requests without an answer.
    fn call(
        &self,
        to: NodeId,
        message: Message,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Option<Message>, String>>;
}

/// Where peers are: the replication layer asks, discovery (gossip) or static configuration
/// answers.
pub trait PeerDirectory: Send + Sync + std::fmt::Debug + 'static {
    /// The RPC address of node `id` (its client services), if known.
    fn rpc_addr(&self, id: &str) -> Option<String>;
    /// Where node `id` serves the peer service, if known: its RPC address unless peers have a
    /// listener of their own.
    fn peer_addr(&self, id: &str) -> Option<String> {
        self.rpc_addr(id)
    }
    /// Every known member's id and RPC address, this node included.
    fn members(&self) -> Vec<(NodeId, String)>;
}

/// Addresses given on the command line (`--peers id=host:port,...`).
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory(pub BTreeMap<NodeId, String>);

impl PeerDirectory for StaticDirectory {
    fn rpc_addr(&self, id: &str) -> Option<String> {
        self.0.get(id).cloned()
    }

    fn members(&self) -> Vec<(NodeId, String)> {
        self.0
            .iter()
            .map(|(id, addr)| (id.clone(), addr.clone()))
            .collect()
    }
}

/// What the API layer needs to know about the cluster, published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// The current epoch.
    pub epoch: u64,
    /// This node's role.
    pub role: RoleKind,
    /// The leader, when known.
    pub leader_id: Option<NodeId>,
    /// `Some(epoch)` while this node leads `epoch`.
    pub leader_epoch: Option<u64>,
    /// Records below it are committed (and visible to consumers on this node).
    pub high_watermark: u64,
    /// How many voters are in force.
    pub voters: usize,
}

/// The running consensus of one node.
pub struct Consensus {
    node_id: NodeId,
    replica: Mutex<NodeReplica>,
    started: Instant,
    view: watch::Sender<ClusterView>,
    /// The log's end as soon as records are written (before the leader's fsync): a parked
    /// fetch wakes on it, so followers copy and sync a batch while the leader syncs it too.
    written: watch::Receiver<u64>,
    transport: Arc<dyn PeerTransport>,
    calls: Arc<Semaphore>,
    fatal: CancellationToken,
    /// The replica's counters as of its last step, for metrics (read without its lock).
    counters: Mutex<ReplicaCounters>,
    /// The members the replica knows as of its last step (see [`Consensus::is_member`]).
    members: Mutex<Vec<NodeId>>,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("view", &*self.view.borrow())
            .finish_non_exhaustive()
    }
}

impl Consensus {
    /// Wraps a replica. `fatal` is cancelled when the replica fails in a way the node cannot
    /// continue from (storage failure, a refused truncation below the high watermark).
    pub fn new(
        replica: NodeReplica,
        transport: Arc<dyn PeerTransport>,
        fatal: CancellationToken,
    ) -> Arc<Consensus> {
        let view = watch::Sender::new(view_of(&replica));
        let written = replica.log().subscribe_written();
        let consensus = Arc::new(Consensus {
            node_id: replica.id().to_owned(),
            replica: Mutex::new(replica),
            started: Instant::now(),
            view,
            written,
            transport,
            calls: Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            fatal,
            counters: Mutex::new(ReplicaCounters::default()),
            members: Mutex::new(Vec::new()),
        });
        // A sole voter elected itself while starting: announce nothing, but publish.
        consensus.publish();
        consensus
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Milliseconds since this driver started: the replica's clock.
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The latest view.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// `(epoch, high watermark)` when this node leads and may answer where the log ends (see
    /// [`crate::replication::replica::Replica::read_index`]); on the blocking pool, as a step
    /// may hold the replica across an fsync.
    pub async fn read_index(self: &Arc<Self>) -> Option<(u64, u64)> {
        self.view().leader_epoch?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let now = this.now();
            this.replica.lock().read_index(now)
        })
        .await
        .ok()
        .flatten()
    }

    /// [`Consensus::read_index`], waiting until `deadline` while this node leads but cannot
    /// answer yet (its epoch's first record is not committed, or the lease lapsed). `Ok(None)`
    /// once it does not lead; `Err` at the deadline, with why.
    pub async fn wait_read_index(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Result<Option<(u64, u64)>, String> {
        loop {
            if self.view().leader_epoch.is_none() {
                return Ok(None);
            }
            if let Some(index) = self.read_index().await {
                return Ok(Some(index));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "node {} leads but cannot confirm the end of the log yet: its epoch's first \
                     record is not committed, or a majority has not fetched from it lately",
                    self.node_id
                ));
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + TICK)).await;
        }
    }

    /// A receiver that changes with the view.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.view.subscribe()
    }

    /// A snapshot of the replica for the admin API (on the blocking pool: a step may hold the
    /// replica across an fsync).
    pub async fn status(self: &Arc<Self>) -> Result<ReplicaStatus, ReplicationError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.replica.lock().status())
            .await
            .map_err(|_| ReplicationError::ShuttingDown)
    }

    /// Milliseconds on the replica's clock, to turn its fetch times into ages.
    pub fn clock_ms(&self) -> u64 {
        self.now()
    }

    /// Peers an observer may ask who leads (from gossip).
    pub async fn set_known_peers(self: &Arc<Self>, peers: Vec<NodeId>) {
        let this = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            let mut replica = this.replica.lock();
            replica.set_known_peers(peers);
            this.publish_locked(&replica);
        })
        .await;
    }

    /// Tells the leader its log grew (records appended outside the replica, so concurrent
    /// appends can share an fsync). Cheap: no I/O.
    ///
    /// Called from async code, so it never waits for the replica's lock, which a step may hold
    /// across an fsync: when the lock is busy the work moves to the blocking pool.
    pub fn note_local_append(self: &Arc<Self>) {
        if let Some(mut replica) = self.replica.try_lock() {
            let now = self.now();
            replica.note_local_append(now);
            self.publish_locked(&replica);
            return;
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let now = this.now();
            let mut replica = this.replica.lock();
            replica.note_local_append(now);
            this.publish_locked(&replica);
        });
    }

    /// Runs the timers until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    // Failures are logged (and fatal ones stop the node) inside.
                    let _ = self.blocking(|replica, now| replica.tick(now)).await;
                }
            }
        }
    }

    /// Applies the log's retention below the limit the replica allows (its high watermark:
    /// nothing uncommitted is ever removed), off the replica's lock, then lets the replica
    /// forget voter sets the new start leaves behind.
    pub async fn apply_retention(self: &Arc<Self>) -> Result<RetentionOutcome, ReplicationError> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let (log, limit) = {
                let replica = this.replica.lock();
                (Arc::clone(replica.log()), replica.retention_limit())
            };
            let before = log.start_offset();
            let outcome = log.apply_retention(now_ms(), limit)?;
            if log.start_offset() > before {
                let mut replica = this.replica.lock();
                let result = replica.note_retention();
                this.publish_locked(&replica);
                result?;
            }
            Ok(outcome)
        })
        .await
        .map_err(|_| ReplicationError::ShuttingDown)?
    }

    /// Hands leadership over if this node leads (the admin API, or graceful shutdown with
    /// `for_good`, which also stops this node from campaigning). Returns the epoch that ended,
    /// if it led.
    pub async fn resign(self: &Arc<Self>, for_good: bool) -> Option<u64> {
        let this = Arc::clone(self);
        let epoch = self.view().leader_epoch;
        let _ = tokio::task::spawn_blocking(move || {
            let now = this.now();
            let mut replica = this.replica.lock();
            let result = replica.resign(now, for_good);
            let outbox = replica.take_outbox();
            this.publish_locked(&replica);
            drop(replica);
            this.dispatch(outbox);
            result
        })
        .await;
        epoch
    }

    /// Changes the voter set by one node (on the leader) and waits until the change is
    /// committed. An added node may lag the high watermark by `max_lag` records at most.
    pub async fn change_voters(
        self: &Arc<Self>,
        change: VoterChange,
        max_lag: u64,
    ) -> Result<(u64, Vec<NodeId>), ReplicationError> {
        let this = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let now = this.now();
            let mut replica = this.replica.lock();
            let result = replica
                .change_voters(now, change, max_lag)
                .map(|info| (info.base_offset, replica.epoch(), replica.voters().to_vec()));
            let outbox = replica.take_outbox();
            this.publish_locked(&replica);
            drop(replica);
            this.dispatch(outbox);
            result
        })
        .await
        .map_err(|_| ReplicationError::ShuttingDown)?;
        let (offset, epoch, voters) = joined?;
        let mut view = self.subscribe();
        loop {
            {
                let now = view.borrow_and_update();
                if now.leader_epoch != Some(epoch) {
                    return Err(ReplicationError::LeadershipLost { epoch, offset });
                }
                if now.high_watermark > offset {
                    return Ok((offset, voters));
                }
            }
            if view.changed().await.is_err() {
                return Err(ReplicationError::ShuttingDown);
            }
        }
    }

    /// Handles a request from peer `from` and returns the replica's answer to it. A fetch with
    /// nothing new waits (long poll) until the leader's log or high watermark moves, or until
    /// the request's `max_wait_ms`.
    ///
    /// The log counts as moved once new records are written, not once they are durable: the
    /// follower then copies and fsyncs them while the leader's own fsync runs, instead of after
    /// it. That is safe because the high watermark still counts only durable offsets (the
    /// leader's included), and it halves the time to commit under `--durability always`.
    pub async fn handle(
        self: &Arc<Self>,
        from: NodeId,
        message: Message,
    ) -> Result<Option<Message>, ReplicationError> {
        let max_wait = match &message {
            Message::FetchRequest(request) => {
                Duration::from_millis(u64::from(request.max_wait_ms).min(5_000))
            }
            _ => Duration::ZERO,
        };
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut view = self.subscribe();
        let high_watermark_before = view.borrow_and_update().high_watermark;
        let mut written = self.written.clone();
        let mut lingered = false;
        loop {
            // Marked seen before the step reads the log, so a write after it wakes the wait.
            written.mark_unchanged();
            let answer = self
                .step_request(&from, message.clone())
                .await?
                .into_iter()
                .find_map(|envelope| {
                    (envelope.to == from && is_response(&envelope.message))
                        .then_some(envelope.message)
                });
            let Some(Message::FetchResponse(response)) = &answer else {
                return Ok(answer);
            };
            let empty =
                matches!(&response.result, FetchResult::Records(batches) if batches.is_empty());
            let now = tokio::time::Instant::now();
            if !empty || now >= deadline {
                return Ok(answer);
            }
            if response.high_watermark > high_watermark_before {
                // Only the high watermark moved. Under load the next records follow within
                // moments and the watermark rides along with them, instead of costing the
                // follower a round trip (and both nodes CPU) of its own; when idle the follower
                // learns it HIGH_WATERMARK_LINGER late.
                if lingered {
                    return Ok(answer);
                }
                lingered = true;
                let linger = deadline.min(now + HIGH_WATERMARK_LINGER);
                match tokio::time::timeout_at(linger, written.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Ok(answer),
                }
            }
            let moved = async {
                tokio::select! {
                    changed = view.changed() => changed,
                    changed = written.changed() => changed,
                }
            };
            match tokio::time::timeout_at(deadline, moved).await {
                Ok(Ok(())) => continue,
                _ => return Ok(answer),
            }
        }
    }

    /// Steps a request from a peer. A caught-up follower's fetch on the leader runs in place
    /// when the replica is free: it reads only records written moments ago (in the page cache),
    /// updates offsets in memory and never fsyncs, and the hop to the blocking pool and back
    /// would cost more than the step. Anything else runs on the blocking pool.
    async fn step_request(
        self: &Arc<Self>,
        from: &NodeId,
        message: Message,
    ) -> Result<Vec<Envelope>, ReplicationError> {
        if let Message::FetchRequest(request) = &message
            && let Some(replica) = self.replica.try_lock()
        {
            // A fetch that binds a voter to its directory appends (and syncs) a record.
            let in_place = replica.role() == RoleKind::Leader
                && request.epoch == replica.epoch()
                && request.fetch_offset >= replica.high_watermark()
                && !replica.needs_binding(&request.replica_id, &request.directory_id);
            if in_place {
                return self.step_in_place(replica, from, message);
            }
        }
        let from = from.clone();
        self.blocking(move |replica, now| replica.step(now, &from, message))
            .await
    }

    /// Steps a peer's answer to a request this node sent. A follower's fetch answer that only
    /// copies records into the page cache ([`Replica::fetch_response_is_light`]: under
    /// `interval` and `never`) runs in place when the replica is free, as a caught-up fetch
    /// does on the leader: the hop to the blocking pool and back would cost more than the
    /// write, and it sits on the path of every commit. Anything else runs on the blocking pool.
    async fn step_answer(
        self: &Arc<Self>,
        from: NodeId,
        answer: Message,
    ) -> Result<Vec<Envelope>, ReplicationError> {
        if let Message::FetchResponse(response) = &answer
            && let Some(replica) = self.replica.try_lock()
            && replica.fetch_response_is_light(&from, response)
        {
            return self.step_in_place(replica, &from, answer);
        }
        self.blocking(move |replica, now| replica.step(now, &from, answer))
            .await
    }

    /// Steps `message` from `from` on the caller's task, with the replica already locked (a
    /// step the caller knows does no file work), then does what [`Consensus::blocking`] does
    /// after a step.
    fn step_in_place(
        self: &Arc<Self>,
        mut replica: parking_lot::MutexGuard<'_, NodeReplica>,
        from: &str,
        message: Message,
    ) -> Result<Vec<Envelope>, ReplicationError> {
        let result = replica.step(self.now(), from, message);
        let outbox = replica.take_outbox();
        self.publish_locked(&replica);
        drop(replica);
        self.finish_step(result, outbox)
    }

    /// Runs `f` on the replica on the blocking pool, then sends its outbox (except responses
    /// to requests, which the caller returns) and publishes the view.
    async fn blocking<F>(self: &Arc<Self>, f: F) -> Result<Vec<Envelope>, ReplicationError>
    where
        F: FnOnce(&mut NodeReplica, u64) -> Result<(), ReplicationError> + Send + 'static,
    {
        let this = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let now = this.now();
            let mut replica = this.replica.lock();
            let result = f(&mut replica, now);
            let outbox = replica.take_outbox();
            this.publish_locked(&replica);
            drop(replica);
            (result, outbox)
        })
        .await;
        let (result, outbox) = match joined {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(error = %err, "replica task failed");
                self.fatal.cancel();
                return Err(ReplicationError::ShuttingDown);
            }
        };
        self.finish_step(result, outbox)
    }

    /// After a step: stops the node on a fatal error, sends the requests in `outbox` and
    /// returns its responses.
    fn finish_step(
        self: &Arc<Self>,
        result: Result<(), ReplicationError>,
        outbox: Vec<Envelope>,
    ) -> Result<Vec<Envelope>, ReplicationError> {
        if let Err(err) = &result {
            if err.is_fatal() {
                tracing::error!(error = %err, "replication failed; stopping the node");
                self.fatal.cancel();
            } else {
                tracing::warn!(error = %err, "replication step failed");
            }
        }
        result?;
        let (responses, requests): (Vec<Envelope>, Vec<Envelope>) = outbox
            .into_iter()
            .partition(|envelope| is_response(&envelope.message));
        self.dispatch(requests);
        Ok(responses)
    }

    /// Sends requests to peers; their answers come back as steps.
    fn dispatch(self: &Arc<Self>, envelopes: Vec<Envelope>) {
        for envelope in envelopes {
            if is_response(&envelope.message) {
                // A response without a caller waiting (the request came some other way).
                continue;
            }
            let Ok(permit) = Arc::clone(&self.calls).try_acquire_owned() else {
                tracing::warn!(to = %envelope.to, kind = envelope.message.kind(), "too many peer calls in flight; dropping a message (it will be sent again)");
                continue;
            };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let _permit = permit;
                let timeout = match &envelope.message {
                    Message::FetchRequest(request) => {
                        Duration::from_millis(u64::from(request.max_wait_ms)) + CALL_TIMEOUT
                    }
                    _ => CALL_TIMEOUT,
                };
                let kind = envelope.message.kind();
                let to = envelope.to.clone();
                match this
                    .transport
                    .call(envelope.to, envelope.message, timeout)
                    .await
                {
                    Ok(Some(answer)) => {
                        let _ = this.step_answer(to, answer).await;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::debug!(to = %to, kind, error = %err, "peer call failed");
                        if kind == "fetch_request" {
                            let _ = this
                                .blocking(|replica, now| {
                                    replica.fetch_failed(now);
                                    Ok(())
                                })
                                .await;
                        }
                    }
                }
            });
        }
    }

    fn publish(&self) {
        let replica = self.replica.lock();
        self.publish_locked(&replica);
    }

    /// How often the protocol took each of its branches (see [`ReplicaCounters`]).
    pub fn counters(&self) -> ReplicaCounters {
        *self.counters.lock()
    }

    /// Whether `id` is a member of this cluster as this node knows it: a voter, or a peer
    /// discovery knows (an observer). Peer calls over TLS come only from members.
    pub fn is_member(&self, id: &str) -> bool {
        self.members
            .lock()
            .binary_search_by(|member| member.as_str().cmp(id))
            .is_ok()
    }

    fn publish_locked(&self, replica: &NodeReplica) {
        *self.counters.lock() = *replica.counters();
        let members = replica.members();
        let mut known = self.members.lock();
        if *known != members {
            *known = members;
        }
        drop(known);
        let next = view_of(replica);
        self.view.send_if_modified(|view| {
            if *view == next {
                false
            } else {
                *view = next;
                true
            }
        });
    }
}

fn view_of(replica: &NodeReplica) -> ClusterView {
    ClusterView {
        epoch: replica.epoch(),
        role: replica.role(),
        leader_id: replica.leader_id().map(str::to_owned),
        leader_epoch: replica.leader_epoch(),
        high_watermark: replica.high_watermark(),
        voters: replica.voters().len(),
    }
}

fn is_response(message: &Message) -> bool {
    matches!(
        message,
        Message::VoteResponse(_) | Message::FetchResponse(_)
    )
}
