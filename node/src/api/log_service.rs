//! `LogService`: proglog's `log.v1.Log` API over the storage engine.
//!
//! Every stream is bounded (a fixed channel or pipeline depth per call) and ends cleanly when
//! the node shuts down; `ConsumeStream` waits for new records on the store's watch channel
//! rather than polling.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::limits::oversize_status;
use super::peer::GrpcPeerTransport;
use super::status::to_status;
use super::store::{LogStore, NewRecord};
use super::streams::{QueueStream, StreamBudget, WaitEnd};
use crate::security::{Action, Authorizer, PeerIdentity};
use crate::storage::{
    BATCH_HEADER_LEN, BoundedRead, RECORD_HEADER_LEN, StorageError, StoredRecord,
};
use proglog_client::names::{DEFAULT_LOG, resolve_log_name};
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::log_server::Log as LogApi;
use proglog_proto::log::v1::{
    Acks, ConsumeRequest, ConsumeResponse, GetOffsetsRequest, GetOffsetsResponse,
    GetServersRequest, GetServersResponse, ProduceBatchRequest, ProduceBatchResponse,
    ProduceRequest, ProduceResponse, Record, Server,
};
use tonic::transport::Channel;

/// Limits and identity the service needs.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// This node's id.
    pub id: String,
    /// The RPC address clients should use for this node.
    pub rpc_addr: String,
    /// Bytes read from the log per step of a stream.
    pub consume_read_bytes: usize,
    /// Responses buffered per stream.
    pub stream_buffer: usize,
    /// Produce requests of one `ProduceStream` taken into one batch, at most.
    pub produce_pipeline: usize,
    /// Largest record value accepted.
    pub max_record_bytes: usize,
    /// Largest batch the log accepts.
    pub max_batch_bytes: usize,
    /// `ProduceStream`s waiting for their first request, at most (they hold no slot of the
    /// stream budget until it is allowed).
    pub max_pending_streams: usize,
    /// How long a `ProduceStream` may wait before its first request.
    pub first_request_timeout: std::time::Duration,
}

/// The `log.v1.Log` service.
#[derive(Debug, Clone)]
pub struct LogService {
    store: Arc<LogStore>,
    settings: Arc<ServiceSettings>,
    shutdown: CancellationToken,
    /// Channels to peers, to forward produces to the leader.
    peers: Arc<GrpcPeerTransport>,
    /// The node's bounds on streams and the memory they hold.
    budget: Arc<StreamBudget>,
    /// The ACL, when one is configured: decides each call on the log it names.
    acl: Option<Arc<Authorizer>>,
    /// Permits for `ProduceStream`s waiting for their first request.
    pending_streams: Arc<tokio::sync::Semaphore>,
    /// One describe at a time reads the replica's status (it takes the replica's lock on the
    /// blocking pool), so callers that may only read cannot crowd out replication.
    describe_gate: Arc<tokio::sync::Mutex<()>>,
}

impl LogService {
    /// A service over `store`; its streams end when `shutdown` is cancelled. With an `acl`,
    /// every call is decided on the log it names (the ACL layer only authenticates them).
    pub fn new(
        store: Arc<LogStore>,
        settings: ServiceSettings,
        shutdown: CancellationToken,
        peers: Arc<GrpcPeerTransport>,
        budget: Arc<StreamBudget>,
        acl: Option<Arc<Authorizer>>,
    ) -> Self {
        LogService {
            store,
            pending_streams: Arc::new(tokio::sync::Semaphore::new(settings.max_pending_streams)),
            describe_gate: Arc::default(),
            settings: Arc::new(settings),
            shutdown,
            peers,
            budget,
            acl,
        }
    }

    pub(super) fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    pub(super) fn acl(&self) -> Option<&Authorizer> {
        self.acl.as_deref()
    }

    pub(super) fn peers(&self) -> &GrpcPeerTransport {
        &self.peers
    }

    pub(super) fn describe_gate(&self) -> &tokio::sync::Mutex<()> {
        &self.describe_gate
    }

    /// Checks a request's `log` field before anything else is done with the request.
    fn open_log<T>(&self, request: &Request<T>, field: &str, action: Action) -> Result<(), Status> {
        open_log(
            self.acl.as_deref(),
            PeerIdentity::of(request),
            field,
            action,
        )
        .map(drop)
    }

    /// Relays a whole `ProduceStream` to the leader: requests in order, answers back in order,
    /// the leader's error (if any) as the stream's end. A follower stays in the path for the
    /// stream's life; clients that route themselves skip it.
    ///
    /// Each request is decided here, on the client's identity (the leader sees this node's),
    /// and nothing is held for the stream, neither a slot of the stream budget nor a stream to
    /// the leader, until its first request is allowed. A request refused, or a client stream
    /// that fails, ends what is sent to the leader; the refusal reaches the client after the
    /// leader's answers to every request sent before it.
    fn forward_produce_stream(
        &self,
        leader: &str,
        mut inbound: Streaming<ProduceRequest>,
        mut access: LogAccess,
        pending: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Response<ReceiverStream<Result<ProduceResponse, Status>>>, Status> {
        let mut client = self.leader_client(leader)?;
        let budget = Arc::clone(&self.budget);
        let buffer = self.settings.stream_buffer;
        let max_record_bytes = self.settings.max_record_bytes;
        let first_wait = self.settings.first_request_timeout;
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(buffer);
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                first = tokio::time::timeout(first_wait, inbound.next()) => first,
            };
            let first = match first {
                Err(_) => Some(Err(no_first_request(first_wait))),
                Ok(first) => first.map(|first| {
                    first
                        .map_err(|status| oversize_status(status, max_record_bytes))
                        .and_then(|request| access.check(&request.log).map(|()| request))
                }),
            };
            drop(pending);
            let first = match first {
                None => return,
                Some(Ok(first)) => first,
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let _slot = match budget.open() {
                Ok(slot) => slot,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let (requests_tx, requests_rx) = mpsc::channel(buffer);
            let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel();
            // Client -> leader, until the client ends, a request is refused, or shutdown; then
            // it says why (before the leader can see the end), so the answers can be followed
            // by the reason.
            let pump_stop = shutdown.clone();
            tokio::spawn(async move {
                let why = if requests_tx.send(first).await.is_err() {
                    None
                } else {
                    loop {
                        let next = tokio::select! {
                            _ = pump_stop.cancelled() => break Some(shutting_down_stream()),
                            next = inbound.next() => next,
                        };
                        let request = match next {
                            None => break None,
                            Some(Ok(request)) => access.check(&request.log).map(|()| request),
                            Some(Err(status)) => Err(oversize_status(status, max_record_bytes)),
                        };
                        match request {
                            Ok(request) => {
                                if requests_tx.send(request).await.is_err() {
                                    break None;
                                }
                            }
                            Err(status) => break Some(status),
                        }
                    }
                };
                let _ = ended_tx.send(why);
                drop(requests_tx);
            });
            let mut outbound = Request::new(ReceiverStream::new(requests_rx));
            outbound.metadata_mut().insert(
                FORWARDED_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            // Leader -> client.
            let mut answers = match client.produce_stream(outbound).await {
                Ok(answers) => answers.into_inner(),
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            while let Some(answer) = answers.next().await {
                let end = answer.is_err();
                if tx.send(answer).await.is_err() || end {
                    return;
                }
            }
            // The leader answered everything it was sent. If the client's requests ended
            // there, that is the end; if one was refused, or the node is stopping, say so; if
            // the leader ended first, what it was not sent was not appended.
            let why = match ended_rx.try_recv() {
                Ok(Some(status)) => Some(status),
                Ok(None) => None,
                Err(_) => Some(Status::unavailable(
                    "the leader ended the stream early: requests after the last answered one \
                     were not appended; resend them",
                )),
            };
            if let Some(status) = why {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// The end of the log as this node serves it, once it holds every record acknowledged
    /// before the call (read your writes through any node). A follower asks the leader for its
    /// high watermark (`ReadIndex`, as an etcd follower asks for a read index) and waits until
    /// its own visible end reaches it; the leader answers from its own high watermark once it
    /// may (see [`crate::replication::replica::Replica::read_index`]: its epoch's first record
    /// committed, and a majority fetched from it within the lease). At most
    /// [`READ_INDEX_WAIT`] in all, else `UNAVAILABLE` saying why. Only questions about the end
    /// pay this: a read below the visible end needs no confirmation.
    async fn confirmed_end(&self) -> Result<u64, Status> {
        let deadline = tokio::time::Instant::now() + READ_INDEX_WAIT;
        let consensus = self.store.consensus();
        let target = loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(
                    "no leader could confirm the end of the log in time; retry",
                ));
            }
            let Some(leader) = self.store.route_to_leader(false).await? else {
                match consensus.wait_read_index(deadline).await {
                    Ok(Some((_, high_watermark))) => break high_watermark,
                    // It stopped leading meanwhile: ask the one that does.
                    Ok(None) => continue,
                    Err(reason) => return Err(Status::unavailable(format!("{reason}; retry"))),
                }
            };
            let epoch = consensus.view().epoch;
            match self
                .peers
                .read_index(&leader, consensus.node_id(), epoch, deadline)
                .await
            {
                Ok(answer) if answer.epoch >= epoch => break answer.high_watermark,
                Ok(answer) => {
                    return Err(Status::unavailable(format!(
                        "the leader {leader} answered for epoch {}, before this node's {epoch}; \
                         retry",
                        answer.epoch
                    )));
                }
                // A leader of an earlier version: this node's own end is the best answer there is.
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    return Ok(self.store.visible_end());
                }
                Err(status) => {
                    return Err(Status::unavailable(format!(
                        "cannot confirm the end of the log with the leader {leader} ({}); retry",
                        status.message()
                    )));
                }
            }
        };
        let mut visible = self.store.subscribe();
        loop {
            let end = *visible.borrow_and_update();
            if end >= target {
                return Ok(end);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("the node is shutting down"));
                }
                changed = tokio::time::timeout_at(deadline, visible.changed()) => match changed {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Status::unavailable("the node is shutting down")),
                    Err(_) => {
                        return Err(Status::unavailable(format!(
                            "node {} is behind the leader: it serves offsets below {end}, the \
                             leader has committed up to {target}; retry, or read from the leader",
                            self.settings.id
                        )));
                    }
                },
            }
        }
    }

    /// A client of the leader's `Log` service, to forward a produce there.
    fn leader_client(&self, leader: &str) -> Result<LogClient<Channel>, Status> {
        let channel = self.peers.channel_to(leader).map_err(|reason| {
            tracing::warn!(leader, reason, "cannot forward a produce to the leader");
            self.store.not_leader(Some(leader.to_owned()))
        })?;
        let limit = self.settings.max_batch_bytes + (1 << 16);
        Ok(LogClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit))
    }
}

/// The log a request's `log` field names, once `peer` may `action` on it: `INVALID_ARGUMENT`
/// for a name that breaks the naming rules, `PERMISSION_DENIED` when the ACL does not allow it
/// (decided before existence, so a caller learns nothing of logs it may not use), `NOT_FOUND`
/// naming a log the cluster does not hold. Every cluster holds the log `default`.
pub(super) fn open_log(
    acl: Option<&Authorizer>,
    peer: Option<&PeerIdentity>,
    field: &str,
    action: Action,
) -> Result<&'static str, Status> {
    let name =
        resolve_log_name(field).map_err(|error| Status::invalid_argument(error.to_string()))?;
    if let Some(acl) = acl {
        acl.authorize_log(peer, name, action)?;
    }
    HELD_LOGS
        .iter()
        .copied()
        .find(|held| *held == name)
        .ok_or_else(|| {
            Status::not_found(format!(
                "log `{name}` does not exist; this cluster holds the log `{DEFAULT_LOG}`"
            ))
        })
}

/// The logs a cluster holds: the `default` log, which every cluster has.
pub(super) const HELD_LOGS: &[&str] = &[DEFAULT_LOG];

/// How a `ProduceStream` ends when the node stops under it.
fn shutting_down_stream() -> Status {
    Status::unavailable(
        "the node is shutting down: requests after the last answered one were not appended; \
         resend them to a running node",
    )
}

/// How a `ProduceStream` ends that sent no request in time.
fn no_first_request(waited: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no request within {waited:?} of opening the produce stream \
         (--first-request-timeout-ms); open a stream when there is a record to send"
    ))
}

/// What a stream's caller may produce to, decided per request of the stream and remembered
/// for the log last allowed while the same ACL rules are in force, so a stream of records to
/// one log asks the ACL once, and again only after a policy reload.
struct LogAccess {
    acl: Option<Arc<Authorizer>>,
    peer: Option<PeerIdentity>,
    /// The `log` field last allowed, and the ACL rules' generation it was allowed under.
    allowed: Option<(String, u64)>,
}

impl LogAccess {
    fn new(acl: Option<Arc<Authorizer>>, peer: Option<PeerIdentity>) -> Self {
        LogAccess {
            acl,
            peer,
            allowed: None,
        }
    }

    /// [`open_log`] for a produce to the log `field` names.
    fn check(&mut self, field: &str) -> Result<(), Status> {
        let generation = self.acl.as_ref().map_or(0, |acl| acl.generation());
        if let Some((allowed, at)) = &self.allowed
            && allowed == field
            && *at == generation
        {
            return Ok(());
        }
        open_log(
            self.acl.as_deref(),
            self.peer.as_ref(),
            field,
            Action::Produce,
        )?;
        self.allowed = Some((field.to_owned(), generation));
        Ok(())
    }
}

/// How long a question about the log's end waits for this node to catch up with the leader's
/// high watermark (followers learn it within a fetch round trip).
const READ_INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Marks a produce a follower forwarded to the leader, so it is never forwarded again.
pub const FORWARDED_METADATA: &str = "proglog-forwarded-by";

/// The request as the leader should see it: the same message and deadline, marked forwarded.
pub(super) fn forwarded_request<T>(request: Request<T>) -> Request<T> {
    let timeout = request.metadata().get("grpc-timeout").cloned();
    let mut forwarded = Request::new(request.into_inner());
    forwarded.metadata_mut().insert(
        FORWARDED_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    if let Some(timeout) = timeout {
        forwarded.metadata_mut().insert("grpc-timeout", timeout);
    }
    forwarded
}

/// Whether a produce asks to be answered once the leader has the record (`ACKS_LEADER`) rather
/// than once it is committed; a value the API does not define is refused, not read as the
/// default.
fn acks_leader(acks: i32) -> Result<bool, Status> {
    match Acks::try_from(acks) {
        Ok(Acks::Leader) => Ok(true),
        Ok(Acks::Quorum) => Ok(false),
        Err(_) => Err(Status::invalid_argument(format!(
            "`acks` {acks} is not one of ACKS_QUORUM (0) and ACKS_LEADER (1)"
        ))),
    }
}

fn to_new_record(record: Option<Record>, what: &str) -> Result<NewRecord, Status> {
    let record =
        record.ok_or_else(|| Status::invalid_argument(format!("{what}: `record` is required")))?;
    Ok(NewRecord {
        value: record.value,
        timestamp_ms: record.timestamp_ms,
        record_type: record.r#type,
    })
}

fn to_proto(record: StoredRecord) -> Record {
    Record {
        value: record.value,
        offset: record.offset,
        term: record.leader_epoch,
        r#type: record.record_type,
        timestamp_ms: record.timestamp_ms,
    }
}

/// Where a consume starts: `offset`, or the first record at or after `since_timestamp_ms`.
async fn start_offset(store: &LogStore, request: &ConsumeRequest) -> Result<u64, Status> {
    if request.since_timestamp_ms != 0 {
        return store.offset_for_time(request.since_timestamp_ms).await;
    }
    Ok(request.offset)
}

/// `OUT_OF_RANGE` with the valid range, as the storage layer words it.
fn out_of_range(requested: u64, start: u64, end: u64) -> Status {
    to_status(StorageError::OffsetOutOfRange {
        requested,
        start,
        end,
    })
}

/// Why a stream ends because the node is stopping: `UNAVAILABLE`, with where to resume, so a
/// client can tell it from the end of a stream it asked for.
fn shutting_down(resume_from: u64) -> Status {
    Status::unavailable(format!(
        "the node is shutting down; resume from offset {resume_from} on a running node"
    ))
}

/// Rejects a record over the size limit before it reaches a batch (where it would fail the
/// whole batch).
fn check_size(record: NewRecord, max_record_bytes: usize) -> Result<NewRecord, Status> {
    if record.value.len() > max_record_bytes {
        return Err(to_status(StorageError::RecordTooLarge {
            size: record.value.len(),
            max: max_record_bytes,
        }));
    }
    Ok(record)
}

/// Splits records into batches that stay under the batch size limit.
fn split_into_batches(records: Vec<NewRecord>, max_batch_bytes: usize) -> Vec<Vec<NewRecord>> {
    let mut batches: Vec<Vec<NewRecord>> = Vec::new();
    let mut bytes = BATCH_HEADER_LEN;
    for record in records {
        let size = RECORD_HEADER_LEN + record.value.len();
        match batches.last_mut() {
            Some(batch) if bytes + size <= max_batch_bytes => batch.push(record),
            _ => {
                bytes = BATCH_HEADER_LEN;
                batches.push(vec![record]);
            }
        }
        bytes += size;
    }
    batches
}

#[tonic::async_trait]
impl LogApi for LogService {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        self.open_log(&request, &request.get_ref().log, Action::Produce)?;
        let acks_leader = acks_leader(request.get_ref().acks)?;
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        if let Some(leader) = self.store.route_to_leader(forwarded).await? {
            let mut client = self.leader_client(&leader)?;
            return client.produce(forwarded_request(request)).await;
        }
        let request = request.into_inner();
        let record = to_new_record(request.record, "ProduceRequest")?;
        let info = self.store.append(vec![record], acks_leader).await?;
        Ok(Response::new(ProduceResponse {
            offset: info.base_offset,
        }))
    }

    async fn consume(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<ConsumeResponse>, Status> {
        self.open_log(&request, &request.get_ref().log, Action::Consume)?;
        let request = request.into_inner();
        // A time is looked up among the records the confirmed end covers, or a follower behind
        // the leader would answer with a record older than the time.
        let mut confirmed = request.since_timestamp_ms != 0;
        if confirmed {
            self.confirmed_end().await?;
        }
        let offset = start_offset(&self.store, &request).await?;
        let mut end = self.store.visible_end();
        if offset >= end && !confirmed {
            end = self.confirmed_end().await?;
            confirmed = true;
        }
        let start = self.store.start_offset();
        if offset < start || offset >= end {
            return Err(out_of_range(offset, start, end));
        }
        // The first record a producer wrote at or after `offset`: control records (leader
        // changes, voter sets) are the log's own, and a read moves past them as a Kafka
        // consumer's position does.
        let mut next = offset;
        loop {
            while next < end {
                let before = next;
                for batch in self.store.read(next, 0).await? {
                    if batch.next_offset() <= next {
                        continue;
                    }
                    if batch.is_control() {
                        next = batch.next_offset();
                        continue;
                    }
                    if let Some(record) = batch
                        .records()
                        .find(|record| record.offset >= next && record.offset < end)
                    {
                        return Ok(Response::new(ConsumeResponse {
                            record: Some(to_proto(record)),
                        }));
                    }
                    next = end;
                    break;
                }
                if next == before {
                    return Err(Status::data_loss(format!(
                        "the batch read for offset {next} holds no readable record at or after it"
                    )));
                }
            }
            // Only control records up to this node's end: a record acknowledged after them
            // may not have reached it yet.
            if confirmed {
                break;
            }
            end = self.confirmed_end().await?;
            confirmed = true;
        }
        Err(Status::out_of_range(format!(
            "offset {offset} holds the cluster's own control records and no record follows \
             them yet; the next record will be at offset {end} or after"
        )))
    }

    type ConsumeStreamStream = QueueStream<ConsumeResponse>;

    async fn consume_stream(
        &self,
        request: Request<ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        self.open_log(&request, &request.get_ref().log, Action::Consume)?;
        let request = request.into_inner();
        let confirmed = request.since_timestamp_ms != 0;
        if confirmed {
            // As in `consume`: a time is looked up below the confirmed end.
            self.confirmed_end().await?;
        }
        let mut next = start_offset(&self.store, &request).await?;
        let mut end = self.store.visible_end();
        if next > end && !confirmed {
            end = self.confirmed_end().await?;
        }
        let start = self.store.start_offset();
        if next < start || next > end {
            let status = out_of_range(next, start, end);
            return Err(Status::out_of_range(format!(
                "{}; a stream may start at {end} to wait for new records",
                status.message()
            )));
        }
        let until = (request.until_offset != 0).then_some(request.until_offset);
        let slot = self.budget.open()?;
        let (queue, stream) = super::streams::queue(&self.budget, slot);
        let store = Arc::clone(&self.store);
        let shutdown = self.shutdown.clone();
        let read_bytes = self.settings.consume_read_bytes;
        tokio::spawn(async move {
            let mut visible = store.subscribe();
            loop {
                if shutdown.is_cancelled() {
                    return queue.finish(Some(shutting_down(next)));
                }
                if until.is_some_and(|until| next >= until) {
                    queue.finish(None);
                    queue.hold_until_taken(next, &shutdown).await;
                    return;
                }
                let end = (*visible.borrow_and_update()).min(until.unwrap_or(u64::MAX));
                if next >= end {
                    tokio::select! {
                        _ = shutdown.cancelled() => return queue.finish(Some(shutting_down(next))),
                        _ = queue.gone() => return,
                        changed = visible.changed() => if changed.is_err() { return },
                        // Waiting for records is no reason to keep those not taken.
                        cut = queue.check_slow(next), if queue.holds_any() => if cut { return },
                    }
                    continue;
                }
                // What the read holds comes from the node's stream budget, and only while this
                // stream's client keeps taking what it holds.
                let permit = match queue.reserve(read_bytes, next, &shutdown).await {
                    Ok(permit) => permit,
                    Err(WaitEnd::Stopped) => return queue.finish(Some(shutting_down(next))),
                    Err(WaitEnd::Gone | WaitEnd::CutOff) => return,
                };
                let before = next;
                // Under pressure a stream's share may be smaller than one batch: it then reads
                // the batch again for every share's worth of records it copies out, trading
                // read work for keeping to its share of the memory.
                let want = permit.num_permits();
                let (permit, batches, oversized) = match store.read_within(next, want).await {
                    Ok(BoundedRead::Batches(batches)) => (permit, batches, false),
                    // One batch larger than this stream may hold: take its size for as long as
                    // it takes to copy out what the stream may hold.
                    Ok(BoundedRead::FirstBatchNeeds(bytes)) => {
                        drop(permit);
                        let permit = match queue.reserve_batch(bytes, next, &shutdown).await {
                            Ok(permit) => permit,
                            Err(WaitEnd::Stopped) => {
                                return queue.finish(Some(shutting_down(next)));
                            }
                            Err(WaitEnd::Gone | WaitEnd::CutOff) => return,
                        };
                        match store.read(next, permit.num_permits()).await {
                            Ok(batches) => (permit, batches, true),
                            Err(status) => {
                                queue.finish(Some(status));
                                queue.hold_until_taken(next, &shutdown).await;
                                return;
                            }
                        }
                    }
                    // The client learns why its stream ended (retention, corruption).
                    Err(status) => {
                        queue.finish(Some(status));
                        queue.hold_until_taken(next, &shutdown).await;
                        return;
                    }
                };
                let mut responses = Vec::new();
                let mut bytes = 0;
                // Leader-change markers are the log's, not the producers': streams skip them
                // (their offsets are gaps, as in Kafka).
                let records = batches.iter().flat_map(|batch| {
                    let skip = batch.is_control().then(|| batch.next_offset());
                    batch.records().map(move |record| (skip, record))
                });
                for (skip, mut record) in records {
                    if let Some(skip_to) = skip {
                        if record.offset >= next && record.offset < end {
                            next = skip_to.min(end);
                        }
                        continue;
                    }
                    if record.offset < next || record.offset >= end {
                        continue;
                    }
                    if oversized {
                        // Copied, so the large batch is not held; as many as the stream may
                        // hold, and at least one.
                        let size = record.value.len() + RECORD_HEADER_LEN;
                        if bytes + size > want && !responses.is_empty() {
                            break;
                        }
                        record.value = bytes::Bytes::copy_from_slice(&record.value);
                        bytes += size;
                    }
                    next = record.offset + 1;
                    responses.push(ConsumeResponse {
                        record: Some(to_proto(record)),
                    });
                }
                if !oversized {
                    // The records share their batches' buffers.
                    bytes = batches.iter().map(|batch| batch.as_bytes().len()).sum();
                }
                drop(batches);
                let held = queue.settle(permit, bytes);
                for response in responses {
                    let offset = response
                        .record
                        .as_ref()
                        .map_or(next, |record| record.offset);
                    queue.push(response, Some(Arc::clone(&held)), offset);
                }
                drop(held);
                if next == before {
                    // A read that yields nothing new would repeat forever.
                    return queue.finish(Some(Status::data_loss(format!(
                        "the batch read for offset {next} holds no readable record at or after it"
                    ))));
                }
            }
        });
        Ok(Response::new(stream))
    }

    type ProduceStreamStream = ReceiverStream<Result<ProduceResponse, Status>>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        let mut access = LogAccess::new(self.acl.clone(), PeerIdentity::of(&request).cloned());
        let inbound = request.into_inner();
        // Until its first request is allowed a stream holds only this permit (no slot of the
        // stream budget, no stream to the leader), for at most the first-request timeout.
        let pending = Arc::clone(&self.pending_streams)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{} produce streams already wait for their first request (--max-streams); \
                     open a stream when there is a record to send",
                    self.settings.max_pending_streams
                ))
            })?;
        if let Some(leader) = self.store.route_to_leader(forwarded).await? {
            return self.forward_produce_stream(&leader, inbound, access, pending);
        }
        // Requests are appended in the order they arrive, so offsets follow request order.
        // Whatever has arrived while the previous append synced (up to `produce_pipeline`
        // requests) goes into the next batch: one append and one fsync for many records. The
        // first bad request ends the stream; nothing after it is appended. A slot of the
        // stream budget is taken only once the first request is allowed.
        let mut inbound = inbound.ready_chunks(self.settings.produce_pipeline);
        let (tx, rx) = mpsc::channel(self.settings.stream_buffer);
        let store = Arc::clone(&self.store);
        let settings = Arc::clone(&self.settings);
        let shutdown = self.shutdown.clone();
        let budget = Arc::clone(&self.budget);
        let first_wait = self.settings.first_request_timeout;
        tokio::spawn(async move {
            let mut slot = None;
            let mut pending = Some(pending);
            loop {
                let next = async {
                    if pending.is_some() {
                        tokio::time::timeout(first_wait, inbound.next()).await
                    } else {
                        Ok(inbound.next().await)
                    }
                };
                let chunk = tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.try_send(Err(shutting_down_stream()));
                        return;
                    }
                    next = next => match next {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => return,
                        Err(_) => {
                            let _ = tx.send(Err(no_first_request(first_wait))).await;
                            return;
                        }
                    },
                };
                pending = None;
                let mut records = Vec::with_capacity(chunk.len());
                let mut rejected = None;
                for request in chunk {
                    let record = request
                        .map_err(|status| oversize_status(status, settings.max_record_bytes))
                        .and_then(|request| {
                            access.check(&request.log)?;
                            acks_leader(request.acks)?;
                            to_new_record(request.record, "ProduceRequest")
                        })
                        .and_then(|record| check_size(record, settings.max_record_bytes));
                    match record {
                        Ok(record) => records.push(record),
                        Err(status) => {
                            rejected = Some(status);
                            break;
                        }
                    }
                }
                if slot.is_none() && !records.is_empty() {
                    match budget.open() {
                        Ok(opened) => slot = Some(opened),
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                for batch in split_into_batches(records, settings.max_batch_bytes) {
                    let offsets = match store.append(batch, false).await {
                        Ok(info) => info.base_offset..=info.last_offset,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    for offset in offsets {
                        if tx.send(Ok(ProduceResponse { offset })).await.is_err() {
                            return;
                        }
                    }
                }
                if let Some(status) = rejected {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_servers(
        &self,
        request: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        self.open_log(&request, &request.get_ref().log, Action::Consume)?;
        // Every member discovery knows (this node included), and which one leads.
        let leader = self.store.consensus().view().leader_id;
        let mut servers: Vec<Server> = self
            .store
            .directory()
            .members()
            .into_iter()
            .map(|(id, rpc_addr)| Server {
                is_leader: leader.as_deref() == Some(id.as_str()),
                id,
                rpc_addr,
            })
            .collect();
        if !servers.iter().any(|server| server.id == self.settings.id) {
            servers.push(Server {
                id: self.settings.id.clone(),
                rpc_addr: self.settings.rpc_addr.clone(),
                is_leader: leader.as_deref() == Some(self.settings.id.as_str()),
            });
        }
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(GetServersResponse { servers }))
    }

    async fn produce_batch(
        &self,
        request: Request<ProduceBatchRequest>,
    ) -> Result<Response<ProduceBatchResponse>, Status> {
        self.open_log(&request, &request.get_ref().log, Action::Produce)?;
        let acks_leader = acks_leader(request.get_ref().acks)?;
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        if let Some(leader) = self.store.route_to_leader(forwarded).await? {
            let mut client = self.leader_client(&leader)?;
            return client.produce_batch(forwarded_request(request)).await;
        }
        let request = request.into_inner();
        let records = request
            .records
            .into_iter()
            .map(|record| to_new_record(Some(record), "ProduceBatchRequest"))
            .collect::<Result<Vec<_>, _>>()?;
        if records.is_empty() {
            return Err(Status::invalid_argument(
                "ProduceBatchRequest: `records` must hold at least one record",
            ));
        }
        let info = self.store.append(records, acks_leader).await?;
        Ok(Response::new(ProduceBatchResponse {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
        }))
    }

    async fn get_offsets(
        &self,
        request: Request<GetOffsetsRequest>,
    ) -> Result<Response<GetOffsetsResponse>, Status> {
        self.open_log(&request, &request.get_ref().log, Action::Consume)?;
        let end_offset = self.confirmed_end().await?;
        Ok(Response::new(GetOffsetsResponse {
            start_offset: self.store.start_offset(),
            end_offset,
        }))
    }
}
