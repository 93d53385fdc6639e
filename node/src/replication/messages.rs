//! The peer protocol's messages (KIP-595 in spirit), as plain Rust values.
//!
//! The state machine consumes and produces these; the gRPC peer service and the simulated
//! network only carry them. Every request has exactly one response type, so a transport that
//! loses, delays, duplicates or reorders messages is something the state machine must (and
//! does) tolerate.

use super::quorum::VoterSet;
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
    /// The candidate's data directory id: a voter that knows the candidate bound to another
    /// directory refuses (the candidate lost its data).
    pub candidate_directory_id: String,
    /// The voter the request is for. A node that is not it (a stale address) refuses, so one
    /// node's vote can never count as another's.
    pub voter_id: NodeId,
    /// The directory the candidate's voter set binds `voter_id` to, empty when none is bound. A
    /// voter with another directory refuses: it is not the voter the candidate counts on.
    pub voter_directory_id: String,
    /// The candidate has not learned a voter set: this is a new cluster's first election, which
    /// only nodes that know nothing either may take part in, and which needs every initial
    /// voter (see [`crate::replication::replica`]).
    pub bootstrap: bool,
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
    /// The node that answers: the candidate counts the answer only when it is the node it
    /// asked.
    pub voter_id: NodeId,
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
/// `fetch_offset` is the follower's log end, and the leader counts it towards the high
/// watermark: a follower syncs what it copies before it fetches again (and that sync covers a
/// deposed leader's own unsynced tail, before the new leader's first record reaches it, which
/// must commit first). `last_fetched_epoch` is the epoch of the batch just before it, which the
/// leader checks against its own log to detect divergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The epoch the fetcher believes is current.
    pub epoch: u64,
    /// The fetcher.
    pub replica_id: NodeId,
    /// The fetcher's log end offset.
    pub fetch_offset: u64,
    /// The fetcher's first offset: it holds `log_start_offset..fetch_offset`, and what lies
    /// before was committed when retention removed it or when the fetcher reset past it. An
    /// empty log (`log_start_offset == fetch_offset`) copies from where it starts.
    pub log_start_offset: u64,
    /// Epoch of the fetcher's last batch (0 when its log is empty).
    pub last_fetched_epoch: u64,
    /// Upper bound on the bytes returned.
    pub max_bytes: u32,
    /// How long the leader may hold the request when there is nothing new (long poll).
    pub max_wait_ms: u32,
    /// Names this fetch among the fetcher's (never 0); the answer echoes it, so an answer to an
    /// earlier fetch at the same offset (a retry, or a duplicate on the wire) is told apart.
    pub fetch_id: u64,
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
    /// The node that answers: the fetcher acts on the answer only when it is the node it asked.
    pub responder_id: NodeId,
    /// The leader's high watermark.
    pub high_watermark: u64,
    /// Echoes the request's `fetch_offset`, so a late answer to an older fetch is ignored.
    pub fetch_offset: u64,
    /// Echoes the request's `fetch_id` (0 from a node of an earlier version, which does not).
    pub fetch_id: u64,
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
    /// The fetcher must copy the leader's log from the leader's start: it asks for records
    /// retention removed, or its log cannot be matched with the leader's.
    OffsetOutOfRange {
        /// The leader's first offset.
        start_offset: u64,
        /// The epoch of the leader's record just before `start_offset`: the fetcher's emptied
        /// log keeps it, as a KRaft follower's log ends at the snapshot it loaded, so it still
        /// compares in an election as a log that reached `start_offset`.
        start_epoch: u64,
        /// The voter set in force at `start_offset` (the latest one before it), which retention
        /// may have removed from every log: the fetcher takes it as its own when it resets, as
        /// a KRaft follower loads the leader's snapshot. `None` when the leader knows no voter
        /// set before its start.
        voters: Option<VoterSet>,
    },
}
