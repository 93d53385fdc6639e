//! The peer protocol's messages (KIP-595 in spirit), as plain Rust values.
//!
//! The state machine consumes and produces these; the gRPC peer service and the simulated
//! network only carry them. Every request has exactly one response type, so a transport that
//! loses, delays, duplicates or reorders messages is something the state machine must (and
//! does) tolerate.

use crate::storage::Batch;

/// A node's stable identity (a StatefulSet pod name, for example `proglog-0`).
pub type NodeId = String;

/// Any message between two replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Ask for a (pre-)vote.
    VoteRequest(VoteRequest),
    /// The answer to a [`VoteRequest`].
    VoteResponse(VoteResponse),
    /// A new leader announces itself; followers pull, so they would not learn of it otherwise.
    BeginQuorumEpoch(BeginQuorumEpoch),
    /// A leader hands over on shutdown: start an election now.
    EndQuorumEpoch(EndQuorumEpoch),
    /// A follower or observer pulls records from the leader.
    FetchRequest(FetchRequest),
    /// The leader's answer to a [`FetchRequest`].
    FetchResponse(FetchResponse),
}

impl Message {
    /// The message's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::VoteRequest(req) if req.pre_vote => "pre_vote_request",
            Message::VoteRequest(_) => "vote_request",
            Message::VoteResponse(resp) if resp.pre_vote => "pre_vote_response",
            Message::VoteResponse(_) => "vote_response",
            Message::BeginQuorumEpoch(_) => "begin_quorum_epoch",
            Message::EndQuorumEpoch(_) => "end_quorum_epoch",
            Message::FetchRequest(_) => "fetch_request",
            Message::FetchResponse(_) => "fetch_response",
        }
    }
}

/// A message and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The recipient.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// Ask for a vote in `candidate_epoch`.
///
/// A pre-vote (KIP-996, Raft's PreVote) asks "would you vote for me?" without anyone changing
/// epoch: a node that was cut off cannot disrupt a healthy leader when it comes back, because it
/// only starts a real election once a majority says it would win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteRequest {
    /// True for a pre-vote.
    pub pre_vote: bool,
    /// The epoch the candidate asks to lead.
    pub candidate_epoch: u64,
    /// The candidate.
    pub candidate_id: NodeId,
    /// Epoch of the candidate's last batch.
    pub last_offset_epoch: u64,
    /// The candidate's log end offset.
    pub end_offset: u64,
}

/// The answer to a [`VoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteResponse {
    /// Echoes the request's `pre_vote`.
    pub pre_vote: bool,
    /// Echoes the request's `candidate_epoch`, so a late answer to an older round is ignored.
    pub candidate_epoch: u64,
    /// The voter's epoch, so a stale candidate catches up.
    pub epoch: u64,
    /// The leader the voter knows in `epoch`, if any.
    pub leader_id: Option<NodeId>,
    /// Whether the vote was granted.
    pub granted: bool,
    /// The voter's data directory id (see [`FetchRequest::directory_id`]).
    pub voter_directory_id: String,
}

/// A new leader announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginQuorumEpoch {
    /// The new epoch.
    pub epoch: u64,
    /// Its leader.
    pub leader_id: NodeId,
}

/// A leader resigns (graceful shutdown) and names who should take over, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndQuorumEpoch {
    /// The epoch that ends.
    pub epoch: u64,
    /// The resigning leader.
    pub leader_id: NodeId,
    /// Voters ordered by how caught up they are: the first should campaign at once.
    pub preferred_successors: Vec<NodeId>,
}

/// A follower pulls from the leader.
///
/// `fetch_offset` is the follower's log end, and it is durable: the leader counts it towards
/// the high watermark. `last_fetched_epoch` is the epoch of the batch just before it, which the
/// leader checks against its own log to detect divergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The epoch the fetcher believes is current.
    pub epoch: u64,
    /// The fetcher.
    pub replica_id: NodeId,
    /// The fetcher's log end offset.
    pub fetch_offset: u64,
    /// Epoch of the fetcher's last batch (0 when its log is empty).
    pub last_fetched_epoch: u64,
    /// Upper bound on the bytes returned.
    pub max_bytes: u32,
    /// How long the leader may hold the request when there is nothing new (long poll).
    pub max_wait_ms: u32,
    /// The fetcher's data directory id: random, new with every empty data directory. The
    /// leader binds a voter to the directory it first fetches with and from then on counts
    /// only that directory as the voter, so a node that lost its data is not (KIP-853).
    pub directory_id: String,
}

/// The leader's answer to a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    /// The responder's epoch.
    pub epoch: u64,
    /// The leader the responder knows in `epoch`.
    pub leader_id: Option<NodeId>,
    /// The leader's high watermark.
    pub high_watermark: u64,
    /// Echoes the request's `fetch_offset`, so a late answer to an older fetch is ignored.
    pub fetch_offset: u64,
    /// What to do.
    pub result: FetchResult,
}

/// The outcome of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResult {
    /// Batches starting at `fetch_offset` (possibly none).
    Records(Vec<Batch>),
    /// The fetcher's log diverges from the leader's: truncate to at most `end_offset`, the end of
    /// the largest epoch `<= epoch` in the leader's log, and fetch again.
    Diverging {
        /// The largest epoch in the leader's log not after the fetcher's last fetched epoch.
        epoch: u64,
        /// Where that epoch ends in the leader's log.
        end_offset: u64,
    },
    /// The responder is not the leader of the fetcher's epoch; see `leader_id`.
    NotLeader,
    /// The fetch asks for records before the leader's log start (removed by retention).
    OffsetOutOfRange {
        /// The leader's first offset.
        start_offset: u64,
    },
}
