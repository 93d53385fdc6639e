//! The peer service (`log.v1.Peer`) and the gRPC transport replicas use to call it.
//!
//! Only this file knows both the protobuf messages and replication's message types; the
//! conversions are here, and a malformed peer message is an `INVALID_ARGUMENT` naming the field.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::replication::ReplicationError;
use crate::replication::driver::{Consensus, PeerDirectory, PeerTransport};
use crate::replication::messages::{self as msg, Message, NodeId};
use crate::replication::quorum::VoterSet;
use crate::security::PeerIdentity;
use crate::storage::Batch;
use proglog_proto::log::v1 as pb;
use proglog_proto::log::v1::peer_client::PeerClient;
use proglog_proto::log::v1::peer_server::Peer;

/// How long the leader waits to be able to answer a `ReadIndex` (a new leader until its
/// epoch's first record commits).
const READ_INDEX_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The `log.v1.Peer` service: hands each request to the node's consensus driver.
#[derive(Debug, Clone)]
pub struct PeerService {
    consensus: Arc<Consensus>,
    max_batch_bytes: u32,
}

impl PeerService {
    /// A service over `consensus`.
    pub fn new(consensus: Arc<Consensus>, max_batch_bytes: u32) -> Self {
        PeerService {
            consensus,
            max_batch_bytes,
        }
    }

    /// Refuses a call from anyone but the cluster member `from` says it is.
    fn check_caller(&self, identity: Option<&PeerIdentity>, from: &str) -> Result<(), Status> {
        if from.is_empty() {
            return Err(Status::invalid_argument(
                "the sender's node id is empty; peers must say who they are",
            ));
        }
        // With mutual TLS a peer is who its certificate says: a member of this cluster (a
        // voter, or a member discovery knows), whatever the ACL says, and only for itself.
        if let Some(identity) = identity.filter(|id| id.certificates().is_some()) {
            let Some(name) = identity.common_name() else {
                return Err(Status::unauthenticated(
                    "the client certificate has no common name: peers are named by it",
                ));
            };
            if !self.consensus.is_member(name) {
                tracing::info!(subject = name, remote_addr = %identity.remote_addr(), "peer call refused: not a member");
                return Err(Status::permission_denied(format!(
                    "`{name}` is not a member of this cluster: only its voters and the members \
                     discovery knows may call the peer service"
                )));
            }
            if name != from {
                return Err(Status::permission_denied(format!(
                    "the certificate of `{name}` cannot speak for node `{from}`"
                )));
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        identity: Option<PeerIdentity>,
        from: String,
        message: Message,
    ) -> Result<Option<Message>, Status> {
        self.check_caller(identity.as_ref(), &from)?;
        self.consensus
            .handle(from, message)
            .await
            .map_err(|err| match err {
                ReplicationError::ShuttingDown => Status::unavailable(err.to_string()),
                ReplicationError::InvalidMessage { .. } => {
                    Status::invalid_argument(err.to_string())
                }
                ReplicationError::UnknownPeer { .. } => Status::permission_denied(err.to_string()),
                other => Status::internal(other.to_string()),
            })
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        let request = request.into_inner();
        self.check_caller(identity.as_ref(), &request.replica_id)?;
        let epoch = self.consensus.view().epoch;
        if request.epoch > epoch {
            return Err(Status::failed_precondition(format!(
                "{} asks about epoch {}, newer than this node's {epoch}: ask its leader",
                request.replica_id, request.epoch
            )));
        }
        let deadline = tokio::time::Instant::now() + READ_INDEX_ANSWER_WAIT;
        match self.consensus.wait_read_index(deadline).await {
            Ok(Some((epoch, high_watermark))) => Ok(Response::new(pb::ReadIndexResponse {
                epoch,
                high_watermark,
            })),
            Ok(None) => Err(Status::failed_precondition(format!(
                "node {} does not lead (epoch {} asked); ask the leader",
                self.consensus.node_id(),
                request.epoch
            ))),
            Err(reason) => Err(Status::unavailable(reason)),
        }
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        let request = request.into_inner();
        let from = request.candidate_id.clone();
        match self
            .handle(
                identity,
                from,
                Message::VoteRequest(vote_request_from_pb(request, self.consensus.node_id())),
            )
            .await?
        {
            Some(Message::VoteResponse(response)) => {
                Ok(Response::new(vote_response_to_pb(response)))
            }
            _ => Err(Status::unavailable("no answer to the vote request; retry")),
        }
    }

    async fn begin_quorum_epoch(
        &self,
        request: Request<pb::BeginQuorumEpochRequest>,
    ) -> Result<Response<pb::PeerAck>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        let request = request.into_inner();
        let from = request.leader_id.clone();
        let message = Message::BeginQuorumEpoch(msg::BeginQuorumEpoch {
            epoch: request.epoch,
            leader_id: request.leader_id,
        });
        self.handle(identity, from, message).await?;
        Ok(Response::new(pb::PeerAck {}))
    }

    async fn end_quorum_epoch(
        &self,
        request: Request<pb::EndQuorumEpochRequest>,
    ) -> Result<Response<pb::PeerAck>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        let request = request.into_inner();
        let from = request.leader_id.clone();
        let message = Message::EndQuorumEpoch(msg::EndQuorumEpoch {
            epoch: request.epoch,
            leader_id: request.leader_id,
            preferred_successors: request.preferred_successors,
        });
        self.handle(identity, from, message).await?;
        Ok(Response::new(pb::PeerAck {}))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        let request = request.into_inner();
        let from = request.replica_id.clone();
        let message = Message::FetchRequest(msg::FetchRequest {
            epoch: request.epoch,
            replica_id: request.replica_id,
            fetch_offset: request.fetch_offset,
            log_start_offset: request.log_start_offset,
            last_fetched_epoch: request.last_fetched_epoch,
            max_bytes: request
                .max_bytes
                .min(self.max_batch_bytes.saturating_mul(4)),
            max_wait_ms: request.max_wait_ms,
            fetch_id: request.fetch_id,
            directory_id: request.directory_id,
        });
        match self.handle(identity, from, message).await? {
            Some(Message::FetchResponse(response)) => {
                Ok(Response::new(fetch_response_to_pb(response)))
            }
            _ => Err(Status::unavailable("no answer to the fetch; retry")),
        }
    }
}

fn optional_id(id: String) -> Option<NodeId> {
    (!id.is_empty()).then_some(id)
}

/// A request from a node of an earlier version names no recipient: it is meant for the node it
/// reached.
fn vote_request_from_pb(request: pb::VoteRequest, to: &str) -> msg::VoteRequest {
    msg::VoteRequest {
        pre_vote: request.pre_vote,
        candidate_epoch: request.candidate_epoch,
        candidate_id: request.candidate_id,
        last_offset_epoch: request.last_offset_epoch,
        end_offset: request.end_offset,
        candidate_directory_id: request.candidate_directory_id,
        voter_id: if request.voter_id.is_empty() {
            to.to_owned()
        } else {
            request.voter_id
        },
        voter_directory_id: request.voter_directory_id,
        bootstrap: request.bootstrap,
    }
}

fn vote_request_to_pb(request: msg::VoteRequest) -> pb::VoteRequest {
    pb::VoteRequest {
        pre_vote: request.pre_vote,
        candidate_epoch: request.candidate_epoch,
        candidate_id: request.candidate_id,
        last_offset_epoch: request.last_offset_epoch,
        end_offset: request.end_offset,
        candidate_directory_id: request.candidate_directory_id,
        voter_id: request.voter_id,
        voter_directory_id: request.voter_directory_id,
        bootstrap: request.bootstrap,
    }
}

fn vote_response_to_pb(response: msg::VoteResponse) -> pb::VoteResponse {
    pb::VoteResponse {
        pre_vote: response.pre_vote,
        candidate_epoch: response.candidate_epoch,
        epoch: response.epoch,
        leader_id: response.leader_id.unwrap_or_default(),
        granted: response.granted,
        voter_directory_id: response.voter_directory_id,
        voter_id: response.voter_id,
    }
}

/// An answer from a node of an earlier version names no responder: it is taken as from the
/// node that was called.
fn vote_response_from_pb(response: pb::VoteResponse, called: &str) -> msg::VoteResponse {
    msg::VoteResponse {
        pre_vote: response.pre_vote,
        candidate_epoch: response.candidate_epoch,
        epoch: response.epoch,
        leader_id: optional_id(response.leader_id),
        granted: response.granted,
        voter_id: if response.voter_id.is_empty() {
            called.to_owned()
        } else {
            response.voter_id
        },
        voter_directory_id: response.voter_directory_id,
    }
}

fn voter_set_to_pb(set: VoterSet) -> pb::VoterSet {
    pb::VoterSet {
        offset: set.offset,
        voters: set.voters,
        directories: set.directories.into_iter().collect(),
    }
}

fn voter_set_from_pb(set: pb::VoterSet) -> VoterSet {
    VoterSet {
        offset: set.offset,
        voters: set.voters,
        directories: set.directories.into_iter().collect(),
    }
}

fn fetch_response_to_pb(response: msg::FetchResponse) -> pb::FetchResponse {
    use pb::fetch_response::Result as PbResult;
    let result = match response.result {
        msg::FetchResult::Records(batches) => PbResult::Records(pb::FetchedBatches {
            batches: batches
                .into_iter()
                .map(|batch| batch.as_bytes().clone())
                .collect(),
        }),
        msg::FetchResult::Diverging { epoch, end_offset } => {
            PbResult::Diverging(pb::Diverging { epoch, end_offset })
        }
        msg::FetchResult::NotLeader => PbResult::NotLeader(pb::NotLeader {}),
        msg::FetchResult::OffsetOutOfRange {
            start_offset,
            start_epoch,
            voters,
        } => PbResult::OffsetOutOfRange(pb::OffsetOutOfRange {
            start_offset,
            start_epoch,
            voters: voters.map(voter_set_to_pb),
        }),
    };
    pb::FetchResponse {
        epoch: response.epoch,
        leader_id: response.leader_id.unwrap_or_default(),
        responder_id: response.responder_id,
        high_watermark: response.high_watermark,
        fetch_offset: response.fetch_offset,
        fetch_id: response.fetch_id,
        result: Some(result),
    }
}

fn fetch_response_from_pb(
    response: pb::FetchResponse,
    called: &str,
    max_batch_bytes: u32,
) -> Result<msg::FetchResponse, String> {
    use pb::fetch_response::Result as PbResult;
    let result = match response.result {
        Some(PbResult::Records(records)) => msg::FetchResult::Records(
            records
                .batches
                .into_iter()
                .map(|bytes: Bytes| {
                    Batch::decode(bytes, max_batch_bytes)
                        .map_err(|err| format!("a fetched batch is damaged: {err}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(PbResult::Diverging(diverging)) => msg::FetchResult::Diverging {
            epoch: diverging.epoch,
            end_offset: diverging.end_offset,
        },
        Some(PbResult::NotLeader(_)) => msg::FetchResult::NotLeader,
        Some(PbResult::OffsetOutOfRange(range)) => msg::FetchResult::OffsetOutOfRange {
            start_offset: range.start_offset,
            start_epoch: range.start_epoch,
            voters: range.voters.map(voter_set_from_pb),
        },
        None => return Err("the fetch response has no result".into()),
    };
    Ok(msg::FetchResponse {
        epoch: response.epoch,
        leader_id: optional_id(response.leader_id),
        // A node of an earlier version names no responder: taken as the node called.
        responder_id: if response.responder_id.is_empty() {
            called.to_owned()
        } else {
            response.responder_id
        },
        high_watermark: response.high_watermark,
        fetch_offset: response.fetch_offset,
        fetch_id: response.fetch_id,
        result,
    })
}

/// Calls peers over gRPC, one lazily connected channel per address, with the node's own
/// certificate when TLS is on: the peer service at each peer's peer address, and (to forward a
/// client's produce) the client service at its RPC address, each with its own TLS. A renewed
/// certificate ([`GrpcPeerTransport::set_peer_tls`], [`GrpcPeerTransport::set_rpc_tls`]) is
/// used by the next call to each peer; calls already in flight finish on their connection.
pub struct GrpcPeerTransport {
    directory: Arc<dyn PeerDirectory>,
    peer: Mutex<Channels>,
    rpc: Mutex<Channels>,
    max_batch_bytes: u32,
}

/// The client TLS in force and the channels made with it.
struct Channels {
    tls: Option<ClientTlsConfig>,
    by_addr: HashMap<String, Channel>,
}

impl Channels {
    fn new(tls: Option<ClientTlsConfig>) -> Mutex<Channels> {
        Mutex::new(Channels {
            tls,
            by_addr: HashMap::new(),
        })
    }

    /// The channel to `addr` (node `to`), made lazily.
    fn to(&mut self, to: &str, addr: String) -> Result<Channel, String> {
        if let Some(channel) = self.by_addr.get(&addr) {
            return Ok(channel.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|err| format!("bad address {addr} for node {to}: {err}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|err| format!("TLS for node {to}: {err}"))?;
        }
        // Lazy: no I/O here, so making it under the lock is cheap.
        let channel = endpoint.connect_lazy();
        self.by_addr.insert(addr, channel.clone());
        Ok(channel)
    }

    fn set_tls(&mut self, tls: ClientTlsConfig) {
        self.tls = Some(tls);
        self.by_addr.clear();
    }
}

impl std::fmt::Debug for GrpcPeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcPeerTransport")
            .field("peer_tls", &self.peer.lock().tls.is_some())
            .field("rpc_tls", &self.rpc.lock().tls.is_some())
            .finish_non_exhaustive()
    }
}

impl GrpcPeerTransport {
    /// A transport that finds peers in `directory`, calling their peer service with
    /// `peer_tls` and their client service with `rpc_tls`.
    pub fn new(
        directory: Arc<dyn PeerDirectory>,
        rpc_tls: Option<ClientTlsConfig>,
        peer_tls: Option<ClientTlsConfig>,
        max_batch_bytes: u32,
    ) -> Self {
        GrpcPeerTransport {
            directory,
            peer: Channels::new(peer_tls),
            rpc: Channels::new(rpc_tls),
            max_batch_bytes,
        }
    }

    /// Calls peers' peer service with `tls` from now on (the node's certificate was renewed):
    /// the channels made with the old one are dropped from the cache, so each peer's next call
    /// connects anew and presents the new certificate.
    pub fn set_peer_tls(&self, tls: ClientTlsConfig) {
        self.peer.lock().set_tls(tls);
    }

    /// Calls peers' client service (forwarded produces) with `tls` from now on.
    pub fn set_rpc_tls(&self, tls: ClientTlsConfig) {
        self.rpc.lock().set_tls(tls);
    }

    /// A channel to node `to`'s client service, for forwarding a client's produce to the
    /// leader.
    pub fn channel_to(&self, to: &str) -> Result<Channel, String> {
        let addr = self
            .directory
            .rpc_addr(to)
            .ok_or_else(|| format!("no address known for node {to} yet"))?;
        self.rpc.lock().to(to, addr)
    }

    /// Asks node `leader` for its high watermark (see the `ReadIndex` call), as node `from`
    /// believing it leads `epoch`, until `deadline`.
    pub async fn read_index(
        &self,
        leader: &str,
        from: &str,
        epoch: u64,
        deadline: tokio::time::Instant,
    ) -> Result<pb::ReadIndexResponse, Status> {
        let (channel, fallback) = self
            .peer_channels(leader)
            .map_err(|reason| Status::unavailable(format!("cannot reach {leader}: {reason}")))?;
        let request = pb::ReadIndexRequest {
            replica_id: from.to_owned(),
            epoch,
        };
        let ask = |channel: Channel| {
            let request = request.clone();
            async move {
                let mut client = PeerClient::new(channel);
                match tokio::time::timeout_at(deadline, client.read_index(request)).await {
                    Ok(answer) => answer.map(Response::into_inner),
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "no answer from {leader} in time"
                    ))),
                }
            }
        };
        match (ask(channel).await, fallback) {
            // Nothing listens there: a node of an earlier version, on its RPC port.
            (Err(status), Some(fallback)) if status.code() == tonic::Code::Unavailable => {
                match ask(fallback).await {
                    // A node of this version serves no peer service on its RPC port: its peer
                    // port is only out of reach, which says nothing about its version.
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        Err(Status::unavailable(format!(
                            "{leader}'s peer listener is out of reach ({})",
                            status.message()
                        )))
                    }
                    answer => answer,
                }
            }
            (answer, _) => answer,
        }
    }

    /// A channel to node `to`'s peer service, and, when that is a listener of its own, one to
    /// its RPC address: a node of an earlier version serves the peer service there.
    fn peer_channels(&self, to: &str) -> Result<(Channel, Option<Channel>), String> {
        let addr = self
            .directory
            .peer_addr(to)
            .ok_or_else(|| format!("no address known for node {to} yet"))?;
        let rpc = self.directory.rpc_addr(to).filter(|rpc| *rpc != addr);
        let peer = self.peer.lock().to(to, addr)?;
        let fallback = match rpc {
            Some(rpc) => Some(self.rpc.lock().to(to, rpc)?),
            None => None,
        };
        Ok((peer, fallback))
    }
}

impl PeerTransport for GrpcPeerTransport {
    fn call(
        &self,
        to: NodeId,
        message: Message,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Option<Message>, String>> {
        let channels = self.peer_channels(&to);
        let max_batch_bytes = self.max_batch_bytes;
        Box::pin(async move {
            let (channel, fallback) = channels?;
            let deadline = tokio::time::Instant::now() + timeout;
            let result = call_peer(channel, &to, message.clone(), max_batch_bytes, deadline).await;
            match (result, fallback) {
                // Nothing listens there: a node of an earlier version, on its RPC port.
                (Err(status), Some(fallback)) if status.code() == tonic::Code::Unavailable => {
                    call_peer(fallback, &to, message, max_batch_bytes, deadline).await
                }
                (result, _) => result,
            }
            .map_err(|status: Status| format!("{}: {}", status.code(), status.message()))
        })
    }
}

/// One call of `message` to node `to` over `channel`, until `deadline`.
async fn call_peer(
    channel: Channel,
    to: &str,
    message: Message,
    max_batch_bytes: u32,
    deadline: tokio::time::Instant,
) -> Result<Option<Message>, Status> {
    let mut client = PeerClient::new(channel)
        .max_decoding_message_size(max_batch_bytes as usize * 4 + (1 << 16));
    let call = async {
        match message {
            Message::VoteRequest(request) => {
                let response = client.vote(vote_request_to_pb(request)).await?.into_inner();
                Ok(Some(Message::VoteResponse(vote_response_from_pb(
                    response, to,
                ))))
            }
            Message::BeginQuorumEpoch(begin) => {
                client
                    .begin_quorum_epoch(pb::BeginQuorumEpochRequest {
                        epoch: begin.epoch,
                        leader_id: begin.leader_id,
                    })
                    .await?;
                Ok(None)
            }
            Message::EndQuorumEpoch(end) => {
                client
                    .end_quorum_epoch(pb::EndQuorumEpochRequest {
                        epoch: end.epoch,
                        leader_id: end.leader_id,
                        preferred_successors: end.preferred_successors,
                    })
                    .await?;
                Ok(None)
            }
            Message::FetchRequest(request) => {
                let response = client
                    .fetch(pb::FetchRequest {
                        epoch: request.epoch,
                        replica_id: request.replica_id,
                        fetch_offset: request.fetch_offset,
                        log_start_offset: request.log_start_offset,
                        last_fetched_epoch: request.last_fetched_epoch,
                        max_bytes: request.max_bytes,
                        max_wait_ms: request.max_wait_ms,
                        fetch_id: request.fetch_id,
                        directory_id: request.directory_id,
                    })
                    .await?
                    .into_inner();
                Ok(Some(Message::FetchResponse(
                    fetch_response_from_pb(response, to, max_batch_bytes)
                        .map_err(Status::data_loss)?,
                )))
            }
            Message::VoteResponse(_) | Message::FetchResponse(_) => Ok(None),
        }
    };
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer from {to} in time"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::ClusterDirectory;
    use std::collections::BTreeMap;

    /// A leader of this version serves no peer service on its RPC port. When its peer listener
    /// is out of reach, the fallback to the RPC port answers UNIMPLEMENTED, which must not read
    /// as "a leader of an earlier version" (whose answer is to serve reads from this node's own
    /// end): the leader is only out of reach, so the read index is UNAVAILABLE.
    #[tokio::test]
    async fn an_unreachable_peer_listener_is_not_an_earlier_version() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rpc_addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
        });
        let directory = ClusterDirectory::new(
            BTreeMap::from([("leader".to_owned(), rpc_addr.to_string())]),
            None,
        )
        .with_peer_listeners(closed_port, BTreeMap::new());
        let transport = GrpcPeerTransport::new(Arc::new(directory), None, None, 1 << 20);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let status = transport
            .read_index("leader", "follower", 1, deadline)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("out of reach"), "{status:?}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
