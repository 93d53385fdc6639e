//! The consensus state machine: elections, replication by fetch, and the high watermark.
//!
//! It does no network I/O and reads no clock. The driver (or the simulation) feeds it the time,
//! ticks and messages, and sends what it leaves in its outbox. Its log and quorum state sit
//! behind [`ReplicaLog`] and [`QuorumStore`], so the same rules run against the real storage
//! engine and against the simulation's in-memory log.
//!
//! The rules (KIP-595 in spirit, plus pre-vote from KIP-996 and voters bound to their data
//! directories from KIP-853):
//! - A follower that has not fetched successfully for a randomized election timeout asks the
//!   voters for a pre-vote; only with a majority does it bump the epoch, vote for itself
//!   (saved first) and ask for real votes. A voter grants one vote per epoch, and only to a
//!   candidate whose log is at least as up to date as its own.
//! - Every change of epoch, vote and leader is saved before it takes effect, in memory
//!   included: a change whose save fails never happened. (Voter sets are in force once in the
//!   log, which holds them too; the state file only remembers them.)
//! - A new leader appends a leader-change control record in its epoch, which binds every voter
//!   that voted for it to its data directory, and announces itself with `BeginQuorumEpoch`;
//!   followers then pull with `Fetch`.
//! - Every request names the node it is for and every answer the node that gives it; a vote or
//!   a fetch answer counts only from the node that was asked, and only from the data directory
//!   the voter set binds that voter to (a node that lost its data is not the voter it was).
//! - A node that has not learned the voter set (a new data directory) does not campaign, and
//!   votes only for a candidate whose voter set names its directory, except in a new cluster's
//!   first election, which needs every initial voter and binds each of them. Everything else
//!   it learns from the log, or from the leader's snapshot of the voter set when retention
//!   removed the records that held it. (A node cannot tell a new cluster from one whose every
//!   initial voter lost its disk; there is no cluster id yet.)
//! - The leader answers a fetch whose last epoch does not match its log with `Diverging`; the
//!   follower truncates (never below its high watermark) and fetches again. A fetch it cannot
//!   match (retention removed what would tell) is answered with the leader's start and voter
//!   set, and the follower copies the leader's log from there.
//! - A fetch's offset is what the follower holds durably. The high watermark is the offset a
//!   majority of voters hold, moves only forward, and only once the leader's own epoch has a
//!   committed record. Retention never removes records at or above it.
//! - A leader that has not heard from a majority for the check-quorum timeout steps down.

use std::collections::{BTreeMap, BTreeSet};

use super::error::ReplicationError;
use super::log::ReplicaLog;
use super::messages::{
    BeginQuorumEpoch, EndQuorumEpoch, Envelope, FetchRequest, FetchResponse, FetchResult, Message,
    NodeId, VoteRequest, VoteResponse,
};
use super::quorum::{QuorumState, QuorumStore, VoterSet};
use crate::storage::{AppendInfo, Record};

/// Record type of the control record a new leader appends (never user data). Its value is
/// JSON: `{"leader": id, "epoch": n, "voters": [ids], "directories": {id: directory}}`.
pub const LEADER_CHANGE_RECORD_TYPE: u32 = 0x4c43; // "LC"
/// Record type of a voter-set change (control, never user data):
/// `{"voters": [ids], "directories": {id: directory}}`.
pub const VOTERS_RECORD_TYPE: u32 = 0x5653; // "VS"

/// Epochs above this are refused as impossible (corrupt or hostile peers): at one election a
/// millisecond, a cluster would need 285,000 years to get there.
pub const MAX_EPOCH: u64 = 1 << 53;
/// A peer's epoch more than this past a node's own is refused as impossible: even a node that
/// was away for a long time misses at most a few elections a second.
pub const MAX_EPOCH_JUMP: u64 = 1 << 20;
/// Offsets above this are refused as impossible: the wire format's offsets are signed 64-bit
/// in Kafka's and proglog's clients.
pub const MAX_OFFSET: u64 = i64::MAX as u64;
/// Node ids and directory ids longer than this are refused (a DNS name's limit).
pub const MAX_ID_BYTES: usize = 253;

/// How often a node saves how far its log was scanned for voter changes, so a restart scans
/// only the tail.
const HISTORY_SAVE_INTERVAL_MS: u64 = 10_000;

/// How long a follower waits before fetching again after fetched records could not be written
/// for lack of disk space or descriptors.
const STORAGE_RETRY_MS: u64 = 1000;

/// A change of the voter set, one node at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// Make an observer (a caught-up replica outside the set) a voter.
    Add(NodeId),
    /// Remove a voter (not the leader: transfer leadership first).
    Remove(NodeId),
}

/// Timing and sizes of the protocol.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node's id.
    pub id: NodeId,
    /// The election timeout's lower bound; each timeout is drawn from `[t, 2t)`.
    pub election_timeout_ms: u64,
    /// How long a fetch may be outstanding before it is taken as lost and sent again. Must be
    /// longer than `fetch_max_wait_ms`.
    pub fetch_timeout_ms: u64,
    /// How long the leader may hold a fetch when it has nothing new.
    pub fetch_max_wait_ms: u32,
    /// Upper bound on the bytes of one fetch response.
    pub fetch_max_bytes: u32,
    /// Seed of the election-timeout randomness (the simulation fixes it; nodes use entropy).
    pub seed: u64,
}

impl ReplicaConfig {
    /// Defaults for a node with id `id`: elections after 1-2 s without a leader, so a failover
    /// takes about 2 s.
    pub fn new(id: impl Into<NodeId>) -> ReplicaConfig {
        ReplicaConfig {
            id: id.into(),
            election_timeout_ms: 1000,
            fetch_timeout_ms: 1500,
            fetch_max_wait_ms: 500,
            fetch_max_bytes: 1 << 20,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<(), ReplicationError> {
        if self.id.is_empty() || self.id.len() > MAX_ID_BYTES {
            return Err(ReplicationError::Config(format!(
                "the node id must be 1 to {MAX_ID_BYTES} bytes"
            )));
        }
        if self.election_timeout_ms == 0 {
            return Err(ReplicationError::Config(
                "the election timeout must be above 0 ms".into(),
            ));
        }
        if self.fetch_timeout_ms <= u64::from(self.fetch_max_wait_ms) {
            return Err(ReplicationError::Config(format!(
                "the fetch timeout ({} ms) must be longer than the fetch long-poll wait ({} ms)",
                self.fetch_timeout_ms, self.fetch_max_wait_ms
            )));
        }
        if self.fetch_max_bytes == 0 {
            return Err(ReplicationError::Config(
                "the fetch size limit must be above 0 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// A replica's role, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    /// Follows a leader, or waits to learn of one.
    Follower,
    /// Not a voter: outside the voter set, bound to another data directory (it lost its data),
    /// or not yet aware of the voter set. Replicates, never votes or campaigns.
    Observer,
    /// Asking for pre-votes.
    Prospective,
    /// Asking for votes in a new epoch.
    Candidate,
    /// Leads the current epoch.
    Leader,
}

impl RoleKind {
    /// The lowercase name used in logs, metrics, gossip tags and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Follower => "follower",
            RoleKind::Observer => "observer",
            RoleKind::Prospective => "prospective",
            RoleKind::Candidate => "candidate",
            RoleKind::Leader => "leader",
        }
    }
}

/// What the leader knows about one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// The replica's id.
    pub id: NodeId,
    /// Whether it counts as a voter: in the voter set, and fetching with the data directory
    /// the voter set binds it to.
    pub voter: bool,
    /// Its durable log end, as of its last fetch in this epoch (`None` before one).
    pub end_offset: Option<u64>,
    /// When it last fetched (the driver's clock, ms).
    pub last_fetch_ms: Option<u64>,
    /// The data directory it last fetched with.
    pub directory_id: String,
}

impl ReplicaProgress {
    /// Records it is behind `leader_end`, as of its last fetch (all of them before one).
    pub fn lag(&self, leader_end: u64) -> u64 {
        leader_end.saturating_sub(self.end_offset.unwrap_or(0))
    }

    /// Milliseconds from its last fetch to `now` (the driver's clock); 0 before one.
    pub fn fetched_ago_ms(&self, now: u64) -> u64 {
        self.last_fetch_ms.map_or(0, |at| now.saturating_sub(at))
    }
}

/// A snapshot of the replica for status, metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: RoleKind,
    /// The current epoch.
    pub epoch: u64,
    /// The leader, when known.
    pub leader_id: Option<NodeId>,
    /// Records below it are committed.
    pub high_watermark: u64,
    /// The log's first offset.
    pub start_offset: u64,
    /// The log's end.
    pub end_offset: u64,
    /// The voters.
    pub voters: Vec<NodeId>,
    /// This node's data directory id.
    pub directory_id: String,
    /// On the leader: each other replica's progress.
    pub replicas: Vec<ReplicaProgress>,
}

/// How often the protocol took each of its rarer branches, since the replica started: what a
/// reader of metrics (and of the simulation's report) looks at to see that they happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounters {
    /// Pre-vote rounds started.
    pub pre_votes: u64,
    /// Elections started (real votes, a new epoch).
    pub elections: u64,
    /// Elections won.
    pub leaderships: u64,
    /// A new cluster's first elections won.
    pub bootstraps: u64,
    /// Follower log suffixes truncated because they diverged from the leader's.
    pub truncations: u64,
    /// Logs emptied to copy the leader's from its start (retention, or a log the leader could
    /// not match).
    pub resets: u64,
    /// Hand-overs acted on (`EndQuorumEpoch` from this node's leader).
    pub hand_overs: u64,
    /// Voter sets learned or put in force (changes and bindings).
    pub voter_sets: u64,
    /// Retention passes that moved the log's start.
    pub retentions: u64,
    /// Peer messages refused as impossible or misdirected.
    pub refused_messages: u64,
    /// Votes refused because the candidate or this node is not who the voter set says.
    pub refused_votes: u64,
    /// Fetches that could not be delivered.
    pub fetch_failures: u64,
}

#[derive(Debug)]
struct InFlightFetch {
    to: NodeId,
    fetch_offset: u64,
    fetch_id: u64,
    sent_at: u64,
}

#[derive(Debug)]
struct FollowerState {
    leader: Option<NodeId>,
    election_deadline: u64,
    in_flight: Option<InFlightFetch>,
    last_fetch_ok: Option<u64>,
    /// No fetch before this time: the last fetched records could not be written for lack of
    /// disk space or descriptors, and asking again at once would only fail again.
    retry_at: u64,
}

#[derive(Debug)]
struct ElectionState {
    /// Voters that granted, with the data directory each answered from.
    granted: BTreeMap<NodeId, String>,
    rejected: BTreeSet<NodeId>,
    deadline: u64,
    previous_leader: Option<NodeId>,
    /// A new cluster's first election: every initial voter must grant.
    bootstrap: bool,
}

#[derive(Debug, Default, Clone)]
struct Progress {
    end_offset: Option<u64>,
    last_fetch_at: Option<u64>,
    /// The data directory the replica last fetched with.
    directory_id: String,
}

#[derive(Debug)]
struct LeaderState {
    /// Offset of this epoch's leader-change record: the high watermark must pass it first.
    /// `None` for a sole voter, which needs none.
    epoch_start: Option<u64>,
    progress: BTreeMap<NodeId, Progress>,
    next_quorum_check: u64,
    next_announce: u64,
}

#[derive(Debug)]
enum Role {
    Follower(FollowerState),
    Prospective(ElectionState),
    Candidate(ElectionState),
    Leader(LeaderState),
}

impl Role {
    /// A follower of `leader` (or waiting to learn one) with no fetch out yet; it campaigns
    /// (a voter) or looks for a new leader (an observer) at `election_deadline`.
    fn follower(leader: Option<NodeId>, election_deadline: u64) -> Role {
        Role::Follower(FollowerState {
            leader,
            election_deadline,
            in_flight: None,
            last_fetch_ok: None,
            retry_at: 0,
        })
    }
}

/// One replica's consensus state machine.
#[derive(Debug)]
pub struct Replica<L, Q> {
    config: ReplicaConfig,
    log: L,
    store: Q,
    state: QuorumState,
    role: Role,
    high_watermark: u64,
    rng: u64,
    /// Peers an observer may ask who leads (voters, plus members gossip knows).
    known_peers: Vec<NodeId>,
    next_peer: usize,
    /// The id of the last fetch sent (random at start, so answers to fetches of an earlier
    /// run of the node are not taken for answers to this one's).
    last_fetch_id: u64,
    next_history_save: u64,
    /// Set by a resignation for good (shutdown): this node never campaigns again.
    retired: bool,
    counters: ReplicaCounters,
    outbox: Vec<Envelope>,
}

impl ReplicaCounters {
    /// Each counter with the name metrics give it.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("pre_vote", self.pre_votes),
            ("election", self.elections),
            ("leadership", self.leaderships),
            ("first_election", self.bootstraps),
            ("truncation", self.truncations),
            ("reset", self.resets),
            ("hand_over", self.hand_overs),
            ("voter_set", self.voter_sets),
            ("retention", self.retentions),
            ("refused_message", self.refused_messages),
            ("refused_vote", self.refused_votes),
            ("fetch_failure", self.fetch_failures),
        ]
    }
}

impl<L: ReplicaLog, Q: QuorumStore> Replica<L, Q> {
    /// Starts a replica over `log`. A node with no saved quorum state starts with
    /// `initial_voters` (every node of a new cluster is given the same list) as what it
    /// assumes until it learns the voter set; one with saved state resumes it and ignores the
    /// list. It always starts as a follower: a node that led before a restart may have been
    /// replaced.
    pub fn new(
        config: ReplicaConfig,
        log: L,
        mut store: Q,
        initial_voters: Vec<NodeId>,
        now: u64,
    ) -> Result<Self, ReplicationError> {
        config.validate()?;
        let state = match store.load()? {
            Some(mut state) => {
                let mut changed = false;
                if state.directory_id.is_empty() {
                    // Saved before directories were tracked: this directory is the same one.
                    state.directory_id = new_directory_id(config.seed);
                    changed = true;
                }
                // A log written under a later epoch than the saved state (a lost or restored
                // state file) must not let this node vote in an epoch it already wrote in.
                let last_epoch = log.last_epoch();
                if last_epoch > state.epoch {
                    state.epoch = last_epoch;
                    state.voted_for = None;
                    state.leader_id = None;
                    changed = true;
                }
                if changed {
                    store.save(&state).map_err(save_failed)?;
                }
                state
            }
            None => {
                let voters = if initial_voters.is_empty() {
                    vec![config.id.clone()]
                } else {
                    initial_voters
                };
                let mut state = QuorumState::bootstrap(voters, new_directory_id(config.seed));
                state.epoch = log.last_epoch();
                store.save(&state).map_err(save_failed)?;
                state
            }
        };
        if state.voters.is_empty() {
            return Err(ReplicationError::Config(
                "the voter set is empty; give --initial-voters".into(),
            ));
        }
        let mut replica = Replica {
            rng: config.seed ^ 0x9e37_79b9_7f4a_7c15,
            config,
            log,
            store,
            high_watermark: 0,
            known_peers: Vec::new(),
            next_peer: 0,
            last_fetch_id: 0,
            next_history_save: now + HISTORY_SAVE_INTERVAL_MS,
            retired: false,
            counters: ReplicaCounters::default(),
            outbox: Vec::new(),
            role: Role::follower(None, now),
            state,
        };
        replica.high_watermark = replica.log.start_offset();
        replica.last_fetch_id = replica.config.seed.rotate_left(17) ^ 0x5851_f42d_4c95_7f2d;
        replica.recover_voter_history()?;
        let leader = replica
            .state
            .leader_id
            .clone()
            .filter(|leader| *leader != replica.config.id);
        let deadline = now + replica.random_election_timeout();
        replica.role = Role::follower(leader, deadline);
        if replica.is_sole_voter() {
            replica.start_candidacy(now)?;
        }
        Ok(replica)
    }

    /// The log.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Records below this offset are committed.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// The epoch this node leads, if it is the leader.
    pub fn leader_epoch(&self) -> Option<u64> {
        matches!(self.role, Role::Leader(_)).then_some(self.state.epoch)
    }

    /// The high watermark a leader may give as the end of the log, with its epoch: `Some` only
    /// while this node leads, has committed a record of its own epoch (before that, its high
    /// watermark may lag what an earlier leader acknowledged), and a majority of voters (itself
    /// included) fetched from it within the shortest election timeout, so none of them can
    /// have helped elect another leader since (a voter with a live leader refuses pre-votes).
    /// A read index, as Raft's, with the leader's lease standing in for a heartbeat round.
    pub fn read_index(&self, now: u64) -> Option<(u64, u64)> {
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        if leader
            .epoch_start
            .is_some_and(|start| self.high_watermark <= start)
        {
            return None;
        }
        let live = self.voters_fetched_within(leader, now, self.config.election_timeout_ms);
        (live >= self.majority()).then_some((self.state.epoch, self.high_watermark))
    }

    /// The leader of the current epoch, when known.
    pub fn leader_id(&self) -> Option<&str> {
        match &self.role {
            Role::Leader(_) => Some(&self.config.id),
            Role::Follower(follower) => follower.leader.as_deref(),
            Role::Prospective(_) | Role::Candidate(_) => None,
        }
    }

    /// The voters in force: the latest voter set in the log, or the first quorum's.
    pub fn voters(&self) -> &[NodeId] {
        self.state
            .voter_history
            .last()
            .map_or(&self.state.voters, |set| &set.voters)
    }

    /// This node's data directory id.
    pub fn directory_id(&self) -> &str {
        &self.state.directory_id
    }

    /// Counters of the protocol's branches since the replica started.
    pub fn counters(&self) -> &ReplicaCounters {
        &self.counters
    }

    /// The role.
    pub fn role(&self) -> RoleKind {
        match &self.role {
            Role::Follower(_) if !self.is_self_voter() || !self.voters_known() => {
                RoleKind::Observer
            }
            Role::Follower(_) => RoleKind::Follower,
            Role::Prospective(_) => RoleKind::Prospective,
            Role::Candidate(_) => RoleKind::Candidate,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// A snapshot for status and metrics.
    pub fn status(&self) -> ReplicaStatus {
        let replicas = match &self.role {
            Role::Leader(leader) => leader
                .progress
                .iter()
                .map(|(id, progress)| ReplicaProgress {
                    id: id.clone(),
                    voter: self.counts_as_voter(id, &progress.directory_id),
                    end_offset: progress.end_offset,
                    last_fetch_ms: progress.last_fetch_at,
                    directory_id: progress.directory_id.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        ReplicaStatus {
            id: self.config.id.clone(),
            role: self.role(),
            epoch: self.state.epoch,
            leader_id: self.leader_id().map(str::to_owned),
            high_watermark: self.high_watermark,
            start_offset: self.log.start_offset(),
            end_offset: self.log.end_offset(),
            voters: self.voters().to_vec(),
            directory_id: self.state.directory_id.clone(),
            replicas,
        }
    }

    /// Messages to send, oldest first.
    pub fn take_outbox(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.outbox)
    }

    /// Peers an observer (a node outside the voter set) may ask who leads, and that may fetch
    /// from this node (members discovery knows).
    pub fn set_known_peers(&mut self, peers: Vec<NodeId>) {
        self.known_peers = peers;
    }

    /// The members this node knows: the voters and the peers discovery knows, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = self
            .voters()
            .iter()
            .chain(&self.known_peers)
            .cloned()
            .collect();
        members.sort();
        members.dedup();
        members
    }

    /// Appends `records` as the leader. The caller waits for the high watermark to pass the
    /// returned offsets, and treats a change of epoch before then as an unknown outcome.
    pub fn propose(
        &mut self,
        now: u64,
        records: &[Record<'_>],
    ) -> Result<AppendInfo, ReplicationError> {
        let Some(epoch) = self.leader_epoch() else {
            return Err(ReplicationError::NotLeader {
                leader: self.leader_id().map(str::to_owned),
            });
        };
        let info = self.log.append(epoch, records, false)?;
        self.advance_high_watermark(now);
        Ok(info)
    }

    /// Tells the leader its own log grew (appends the driver made outside the state machine,
    /// to let concurrent appends share an fsync).
    pub fn note_local_append(&mut self, now: u64) {
        self.advance_high_watermark(now);
    }

    /// The last fetch could not be delivered (the leader is unreachable): send it again after a
    /// short pause rather than after the whole fetch timeout.
    pub fn fetch_failed(&mut self, now: u64) {
        const RETRY_MS: u64 = 100;
        let timeout = self.config.fetch_timeout_ms;
        if let Role::Follower(follower) = &mut self.role
            && let Some(fetch) = &mut follower.in_flight
        {
            self.counters.fetch_failures += 1;
            fetch.sent_at = fetch
                .sent_at
                .min(now.saturating_sub(timeout.saturating_sub(RETRY_MS)));
        }
    }

    /// The offset retention may remove records below: the high watermark (Kafka's rule).
    /// Whatever is not committed may still be the only copy a future leader needs.
    pub fn retention_limit(&self) -> u64 {
        self.high_watermark
    }

    /// Tells the replica that retention moved the log's start: voter sets that no longer
    /// matter are forgotten (the one in force at the new start is kept, for followers that
    /// copy from there), so the quorum state stays small.
    pub fn note_retention(&mut self) -> Result<(), ReplicationError> {
        let start = self.log.start_offset();
        debug_assert!(start <= self.high_watermark.max(self.log.end_offset()));
        self.counters.retentions += 1;
        let keep_from = self
            .state
            .voter_history
            .iter()
            .rposition(|set| set.offset < start)
            .unwrap_or(0);
        if keep_from > 0 {
            self.state.voter_history.drain(..keep_from);
            self.persist()?;
        }
        Ok(())
    }

    /// Hands leadership over: tells the voters, most caught up first, to elect someone else
    /// now. `for_good` (graceful shutdown) also stops this node from campaigning again.
    pub fn resign(&mut self, now: u64, for_good: bool) -> Result<(), ReplicationError> {
        let mut successors: Vec<(u64, NodeId)> = match &self.role {
            Role::Leader(leader) => leader
                .progress
                .iter()
                .filter(|(id, progress)| self.counts_as_voter(id, &progress.directory_id))
                .map(|(id, progress)| (progress.end_offset.unwrap_or(0), id.clone()))
                .collect(),
            _ => {
                self.retired |= for_good;
                return Ok(());
            }
        };
        successors.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let preferred_successors: Vec<NodeId> = successors.into_iter().map(|(_, id)| id).collect();
        self.update_state(|state| state.leader_id = None)?;
        self.retired |= for_good;
        for to in &preferred_successors {
            self.send(
                to,
                Message::EndQuorumEpoch(EndQuorumEpoch {
                    epoch: self.state.epoch,
                    leader_id: self.config.id.clone(),
                    preferred_successors: preferred_successors.clone(),
                }),
            );
        }
        self.role = Role::follower(None, now + self.random_election_timeout());
        Ok(())
    }

    /// Advances timers: fetches, elections, check-quorum.
    pub fn tick(&mut self, now: u64) -> Result<(), ReplicationError> {
        enum Action {
            None,
            PreVote,
            Fetch,
            StepDown,
            Announce,
            BackToFollower(Option<NodeId>),
        }
        if now >= self.next_history_save {
            self.next_history_save = now + HISTORY_SAVE_INTERVAL_MS;
            if self.state.history_end != self.log.end_offset() {
                self.persist()?;
            }
        }
        let is_voter = self.is_self_voter();
        let knows_voters = self.voters_known();
        let action = match &mut self.role {
            Role::Follower(follower) => {
                if is_voter && !self.retired && now >= follower.election_deadline {
                    Action::PreVote
                } else if !(is_voter && knows_voters)
                    && follower.leader.is_some()
                    && now >= follower.election_deadline
                {
                    // An observer whose leader went quiet looks for the new one among the
                    // peers it knows (leaders announce themselves only to voters).
                    follower.leader = None;
                    follower.in_flight = None;
                    follower.election_deadline = now + 2 * self.config.election_timeout_ms;
                    Action::Fetch
                } else if now >= follower.retry_at
                    && follower
                        .in_flight
                        .as_ref()
                        .is_none_or(|fetch| now >= fetch.sent_at + self.config.fetch_timeout_ms)
                {
                    follower.in_flight = None;
                    Action::Fetch
                } else {
                    Action::None
                }
            }
            Role::Prospective(election) if now >= election.deadline => {
                Action::BackToFollower(election.previous_leader.clone())
            }
            Role::Candidate(election) if now >= election.deadline && !self.retired => {
                Action::PreVote
            }
            Role::Prospective(_) | Role::Candidate(_) => Action::None,
            Role::Leader(leader) => {
                if now >= leader.next_quorum_check {
                    leader.next_quorum_check = now + self.config.election_timeout_ms;
                    Action::StepDown
                } else if now >= leader.next_announce {
                    leader.next_announce = now + self.config.fetch_timeout_ms;
                    Action::Announce
                } else {
                    Action::None
                }
            }
        };
        match action {
            Action::None => Ok(()),
            Action::PreVote => self.start_pre_vote(now),
            Action::Fetch => {
                self.send_fetch(now);
                Ok(())
            }
            Action::StepDown => self.check_quorum(now),
            Action::Announce => {
                self.announce();
                Ok(())
            }
            Action::BackToFollower(leader) => {
                // The pre-vote failed: follow the previous leader again if there was one, and
                // try again after a new timeout otherwise.
                self.role = Role::follower(leader, now + self.random_election_timeout());
                Ok(())
            }
        }
    }

    /// Handles one message from `from`. A message no correct peer sends is refused with
    /// [`ReplicationError::InvalidMessage`] before it changes anything.
    pub fn step(&mut self, now: u64, from: &str, message: Message) -> Result<(), ReplicationError> {
        if let Err(reason) = check_message(from, &message, self.state.epoch) {
            self.counters.refused_messages += 1;
            return Err(ReplicationError::InvalidMessage {
                kind: message.kind(),
                reason,
            });
        }
        match message {
            Message::VoteRequest(request) => self.on_vote_request(now, from, request),
            Message::VoteResponse(response) => self.on_vote_response(now, from, response),
            Message::BeginQuorumEpoch(begin) => self.on_begin_quorum_epoch(now, begin),
            Message::EndQuorumEpoch(end) => self.on_end_quorum_epoch(now, end),
            Message::FetchRequest(request) => self.on_fetch_request(now, from, request),
            Message::FetchResponse(response) => self.on_fetch_response(now, from, response),
        }
    }

    // ---- elections ----

    fn start_pre_vote(&mut self, now: u64) -> Result<(), ReplicationError> {
        if self.is_sole_voter() {
            return self.start_candidacy(now);
        }
        let previous_leader = match &self.role {
            Role::Follower(follower) => follower.leader.clone(),
            _ => None,
        };
        self.counters.pre_votes += 1;
        self.role = Role::Prospective(self.new_election(now, previous_leader));
        tracing::debug!(id = %self.config.id, epoch = self.state.epoch + 1, "asking for pre-votes");
        self.request_votes(true);
        Ok(())
    }

    /// An election with this node's own vote in it.
    fn new_election(&mut self, now: u64, previous_leader: Option<NodeId>) -> ElectionState {
        ElectionState {
            granted: BTreeMap::from([(self.config.id.clone(), self.state.directory_id.clone())]),
            rejected: BTreeSet::new(),
            deadline: now + self.random_election_timeout(),
            previous_leader,
            bootstrap: !self.voters_known(),
        }
    }

    fn start_candidacy(&mut self, now: u64) -> Result<(), ReplicationError> {
        let epoch = self.state.epoch + 1;
        if epoch >= MAX_EPOCH {
            return Err(ReplicationError::Config(
                "the epoch space is exhausted".into(),
            ));
        }
        let id = self.config.id.clone();
        self.update_state(|state| {
            state.epoch = epoch;
            state.voted_for = Some(id);
            state.leader_id = None;
        })?;
        self.counters.elections += 1;
        self.role = Role::Candidate(self.new_election(now, None));
        tracing::info!(id = %self.config.id, epoch = self.state.epoch, "starting an election");
        if self.is_sole_voter() {
            return self.become_leader(now);
        }
        self.request_votes(false);
        Ok(())
    }

    fn request_votes(&mut self, pre_vote: bool) {
        let bootstrap = !self.voters_known();
        let (last_offset_epoch, end_offset) = self.log_position();
        for voter in self.other_voters() {
            let request = VoteRequest {
                pre_vote,
                candidate_epoch: if pre_vote {
                    self.state.epoch + 1
                } else {
                    self.state.epoch
                },
                candidate_id: self.config.id.clone(),
                last_offset_epoch,
                end_offset,
                candidate_directory_id: self.state.directory_id.clone(),
                voter_directory_id: self.directories().get(&voter).cloned().unwrap_or_default(),
                voter_id: voter.clone(),
                bootstrap,
            };
            self.send(&voter, Message::VoteRequest(request));
        }
    }

    fn become_leader(&mut self, now: u64) -> Result<(), ReplicationError> {
        let granted = match &self.role {
            Role::Candidate(election) => election.granted.clone(),
            _ => BTreeMap::new(),
        };
        let bootstrap = !self.voters_known();
        let id = self.config.id.clone();
        self.update_state(|state| state.leader_id = Some(id))?;
        let epoch = self.state.epoch;
        // A sole voter commits what it holds durably: no other leader can have written
        // elsewhere, so it needs no record of its own epoch first (and a single node's offsets
        // stay exactly those of its records).
        let epoch_start = if self.is_sole_voter() {
            None
        } else {
            // Every voter that voted is bound to the directory it voted from, if it was not
            // bound yet: after a new cluster's first election, that is every voter.
            let mut directories = self.directories().clone();
            for (voter, directory) in granted {
                if self.is_voter(&voter) && !directory.is_empty() {
                    directories.entry(voter).or_insert(directory);
                }
            }
            let voters = self.voters().to_vec();
            let marker = serde_json::json!({
                "leader": self.config.id,
                "epoch": epoch,
                "voters": voters,
                "directories": directories,
            })
            .to_string();
            let record = Record {
                value: marker.as_bytes(),
                key: None,
                timestamp_ms: 0,
                record_type: LEADER_CHANGE_RECORD_TYPE,
            };
            let offset = self.log.append(epoch, &[record], true)?.base_offset;
            self.put_in_force(offset, voters, directories)?;
            Some(offset)
        };
        let progress = self
            .other_voters()
            .into_iter()
            .map(|id| (id, Progress::default()))
            .collect();
        self.role = Role::Leader(LeaderState {
            epoch_start,
            progress,
            next_quorum_check: now + 2 * self.config.election_timeout_ms,
            next_announce: now + self.config.fetch_timeout_ms,
        });
        self.counters.leaderships += 1;
        if bootstrap {
            self.counters.bootstraps += 1;
        }
        tracing::info!(id = %self.config.id, epoch, "became the leader");
        self.announce();
        self.advance_high_watermark(now);
        Ok(())
    }

    fn announce(&mut self) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        // Voters that have fetched in this epoch know the leader already.
        let silent: Vec<NodeId> = leader
            .progress
            .iter()
            .filter(|(id, progress)| progress.last_fetch_at.is_none() && self.is_voter(id))
            .map(|(id, _)| id.clone())
            .collect();
        for to in silent {
            self.send(
                &to,
                Message::BeginQuorumEpoch(BeginQuorumEpoch {
                    epoch: self.state.epoch,
                    leader_id: self.config.id.clone(),
                }),
            );
        }
    }

    /// A leader that has not heard from a majority (itself included) within the check-quorum
    /// timeout may be cut off: it steps down so it stops acknowledging.
    fn check_quorum(&mut self, now: u64) -> Result<(), ReplicationError> {
        let Role::Leader(leader) = &self.role else {
            return Ok(());
        };
        let live = self.voters_fetched_within(leader, now, 2 * self.config.election_timeout_ms);
        if live >= self.majority() {
            return Ok(());
        }
        tracing::warn!(
            id = %self.config.id,
            epoch = self.state.epoch,
            live,
            "lost contact with a majority of voters; stepping down"
        );
        self.update_state(|state| state.leader_id = None)?;
        self.role = Role::follower(None, now + self.random_election_timeout());
        Ok(())
    }

    /// The voters, this leader included, that fetched from it within the last `window` ms.
    fn voters_fetched_within(&self, leader: &LeaderState, now: u64, window: u64) -> usize {
        1 + leader
            .progress
            .iter()
            .filter(|(id, progress)| {
                self.counts_as_voter(id, &progress.directory_id)
                    && progress
                        .last_fetch_at
                        .is_some_and(|at| now.saturating_sub(at) < window)
            })
            .count()
    }

    /// Why this node must not vote for the candidate of `request`, whatever the logs say.
    fn vote_refusal(&self, request: &VoteRequest) -> Option<&'static str> {
        if request.voter_id != self.config.id {
            return Some("the request is for another node (a stale address?)");
        }
        if !self.is_voter(&request.candidate_id) {
            return Some("the candidate is not a voter");
        }
        if !request.voter_directory_id.is_empty()
            && request.voter_directory_id != self.state.directory_id
        {
            return Some("the candidate counts on another data directory of this node");
        }
        // (A node of an earlier version names no directory: nothing to compare.)
        if !request.candidate_directory_id.is_empty()
            && self
                .directories()
                .get(&request.candidate_id)
                .is_some_and(|bound| *bound != request.candidate_directory_id)
        {
            return Some("the candidate lost the data directory it is bound to");
        }
        if request.bootstrap {
            if self.voters_known() {
                return Some("the cluster has a voter set; a first election is over");
            }
            if self.log.end_offset() != 0 || request.end_offset != 0 {
                return Some("a first election needs logs that were never written");
            }
            if !self.is_voter(&request.candidate_id) || !self.is_voter(&self.config.id) {
                return Some("a first election is among the initial voters only");
            }
        } else if !self.voters_known() && request.voter_directory_id != self.state.directory_id {
            // Its data directory is new: it may have been a voter that lost its data. Only a
            // candidate whose voter set binds this very directory proves it is a voter.
            return Some("this node has not learned the voter set");
        }
        None
    }

    fn on_vote_request(
        &mut self,
        now: u64,
        from: &str,
        request: VoteRequest,
    ) -> Result<(), ReplicationError> {
        let refusal = self.vote_refusal(&request);
        if let Some(reason) = refusal {
            self.counters.refused_votes += 1;
            tracing::debug!(id = %self.config.id, candidate = %request.candidate_id, reason, "refusing a vote");
        }
        let log_ok = (request.last_offset_epoch, request.end_offset) >= self.log_position();
        // Votes do not consult this node's own voter set (as in Raft): a node added as a voter
        // may not have the record that says so yet, and the cluster needs its vote. The
        // candidate counts only votes from its own voter set.
        let granted = if refusal.is_some() {
            false
        } else if request.pre_vote {
            // No state changes: a pre-vote only says whether a real vote would be granted.
            request.candidate_epoch > self.state.epoch && log_ok && !self.has_live_leader(now)
        } else {
            if request.candidate_epoch > self.state.epoch {
                self.observe_epoch(now, request.candidate_epoch, None)?;
            }
            let free = self
                .state
                .voted_for
                .as_ref()
                .is_none_or(|voted| *voted == request.candidate_id);
            let grant = request.candidate_epoch == self.state.epoch
                && self.state.leader_id.is_none()
                && free
                && log_ok;
            if grant && self.state.voted_for.is_none() {
                let candidate = request.candidate_id.clone();
                self.update_state(|state| state.voted_for = Some(candidate))?;
                let deadline = now + self.random_election_timeout();
                if let Role::Follower(follower) = &mut self.role {
                    follower.election_deadline = deadline;
                }
            }
            grant
        };
        self.send(
            from,
            Message::VoteResponse(VoteResponse {
                pre_vote: request.pre_vote,
                candidate_epoch: request.candidate_epoch,
                epoch: self.state.epoch,
                leader_id: self.leader_id().map(str::to_owned),
                granted,
                voter_id: self.config.id.clone(),
                // Never handed to whoever asks: only to a candidate that names it already, or
                // that this node votes for in a first election (which binds it).
                voter_directory_id: if request.voter_directory_id == self.state.directory_id
                    || (request.bootstrap && granted)
                {
                    self.state.directory_id.clone()
                } else {
                    String::new()
                },
            }),
        );
        Ok(())
    }

    fn on_vote_response(
        &mut self,
        now: u64,
        from: &str,
        response: VoteResponse,
    ) -> Result<(), ReplicationError> {
        if response.voter_id != from {
            // Another node answered a call to `from` (a stale address): its vote is its own,
            // and counting it for `from` could count one vote twice.
            self.counters.refused_messages += 1;
            tracing::warn!(id = %self.config.id, asked = from, answered = %response.voter_id, "a vote answer came from another node than the one asked; ignoring it");
            return Ok(());
        }
        if response.epoch > self.state.epoch {
            return self.observe_epoch(now, response.epoch, response.leader_id);
        }
        let majority = self.majority();
        let voters = self.voters().len();
        // A vote counts only from the directory the voter is bound to: not from a node that
        // lost its data and came back under the same id.
        let from_voter = self.counts_as_voter(from, &response.voter_directory_id);
        let pre_epoch = self.state.epoch + 1;
        let epoch = self.state.epoch;
        let (election, needed_epoch, pre_vote) = match &mut self.role {
            Role::Prospective(election) => (election, pre_epoch, true),
            Role::Candidate(election) => (election, epoch, false),
            _ => return Ok(()),
        };
        if response.pre_vote != pre_vote || response.candidate_epoch != needed_epoch || !from_voter
        {
            return Ok(());
        }
        if response.granted {
            election
                .granted
                .insert(from.to_owned(), response.voter_directory_id.clone());
        } else {
            election.rejected.insert(from.to_owned());
        }
        // A new cluster's first election needs every initial voter, so that each is bound to
        // its directory from the first record on; any other needs a majority.
        let needed = if election.bootstrap { voters } else { majority };
        if election.granted.len() >= needed {
            return if pre_vote {
                self.start_candidacy(now)
            } else {
                self.become_leader(now)
            };
        }
        let lost = if election.bootstrap {
            !election.rejected.is_empty()
        } else {
            election.rejected.len() > voters - majority
        };
        if pre_vote && lost {
            // A majority has a live leader or a better log: follow whoever they name.
            let leader = response
                .leader_id
                .filter(|leader| response.epoch == self.state.epoch && *leader != self.config.id)
                .or_else(|| election.previous_leader.clone());
            self.role = Role::follower(leader, now + self.random_election_timeout());
        }
        Ok(())
    }

    fn on_begin_quorum_epoch(
        &mut self,
        now: u64,
        begin: BeginQuorumEpoch,
    ) -> Result<(), ReplicationError> {
        if begin.epoch < self.state.epoch || begin.leader_id == self.config.id {
            return Ok(());
        }
        if !self.is_voter(&begin.leader_id) {
            // Only a voter can lead. A leader this node's voter set does not know yet (it was
            // added after what this node has) is found by asking peers instead.
            self.counters.refused_messages += 1;
            return Err(ReplicationError::UnknownPeer {
                kind: "begin_quorum_epoch",
                id: begin.leader_id,
                reason: "only a voter can lead, and it is not one in this node's voter set",
            });
        }
        if begin.epoch > self.state.epoch {
            return self.observe_epoch(now, begin.epoch, Some(begin.leader_id));
        }
        if self.leader_id() == Some(begin.leader_id.as_str()) {
            return Ok(());
        }
        self.follow(now, begin.leader_id)
    }

    fn on_end_quorum_epoch(
        &mut self,
        now: u64,
        end: EndQuorumEpoch,
    ) -> Result<(), ReplicationError> {
        if end.epoch != self.state.epoch || self.leader_id() != Some(end.leader_id.as_str()) {
            return Ok(());
        }
        self.update_state(|state| state.leader_id = None)?;
        self.counters.hand_overs += 1;
        // The most caught-up successor campaigns at once; the others wait their turn, so the
        // best candidate usually wins without a split vote.
        let rank = end
            .preferred_successors
            .iter()
            .position(|id| *id == self.config.id)
            .unwrap_or(end.preferred_successors.len());
        let delay = if rank == 0 {
            0
        } else {
            rank as u64 * self.config.election_timeout_ms / 2 + self.random_below(100)
        };
        self.role = Role::follower(None, now + delay);
        Ok(())
    }

    /// Moves to a later epoch learned from a message, as a follower of `leader` if known.
    fn observe_epoch(
        &mut self,
        now: u64,
        epoch: u64,
        leader: Option<NodeId>,
    ) -> Result<(), ReplicationError> {
        debug_assert!(epoch > self.state.epoch);
        let leader = leader.filter(|leader| *leader != self.config.id);
        let named = leader.clone();
        self.update_state(|state| {
            state.epoch = epoch;
            state.voted_for = None;
            state.leader_id = named;
        })?;
        if matches!(self.role, Role::Leader(_)) {
            tracing::info!(id = %self.config.id, epoch, "a later epoch exists; stepping down");
        }
        self.role = Role::follower(leader, now + self.random_election_timeout());
        Ok(())
    }

    /// Follows `leader` in the current epoch.
    fn follow(&mut self, now: u64, leader: NodeId) -> Result<(), ReplicationError> {
        if matches!(self.role, Role::Leader(_)) {
            // Two leaders in one epoch would break everything; a correct peer never says so.
            tracing::error!(id = %self.config.id, other = %leader, epoch = self.state.epoch, "another node claims to lead this node's epoch; ignoring it");
            return Ok(());
        }
        if self.state.leader_id.as_ref() != Some(&leader) {
            let named = leader.clone();
            self.update_state(|state| state.leader_id = Some(named))?;
        }
        self.role = Role::follower(Some(leader), now + self.random_election_timeout());
        self.send_fetch(now);
        Ok(())
    }

    /// True while this node leads, or follows a leader it fetched from within the minimum
    /// election timeout: it then refuses pre-votes, so a returning node cannot depose a
    /// healthy leader.
    fn has_live_leader(&self, now: u64) -> bool {
        match &self.role {
            Role::Leader(_) => true,
            Role::Follower(follower) => {
                follower.leader.is_some()
                    && follower
                        .last_fetch_ok
                        .is_some_and(|at| now.saturating_sub(at) < self.config.election_timeout_ms)
            }
            Role::Prospective(_) | Role::Candidate(_) => false,
        }
    }

    // ---- replication ----

    fn send_fetch(&mut self, now: u64) {
        // With no leader known, ask the peers in turn: one that knows the leader says so. An
        // observer has no other way to find it; a voter that was removed from the voter set,
        // or whose voters lost their data, may not either (pre-vote answers from voters that
        // do not count never add up to a majority that names the leader).
        let target = match &self.role {
            Role::Follower(follower) => match &follower.leader {
                Some(leader) => Some(leader.clone()),
                None => self.next_known_peer(),
            },
            _ => None,
        };
        let Some(to) = target else {
            return;
        };
        let fetch_offset = self.log.end_offset();
        self.last_fetch_id = self.last_fetch_id.wrapping_add(1).max(1);
        let fetch_id = self.last_fetch_id;
        let request = FetchRequest {
            epoch: self.state.epoch,
            replica_id: self.config.id.clone(),
            fetch_offset,
            log_start_offset: self.log.start_offset(),
            last_fetched_epoch: self.log.last_epoch(),
            max_bytes: self.config.fetch_max_bytes,
            max_wait_ms: self.config.fetch_max_wait_ms,
            fetch_id,
            directory_id: self.state.directory_id.clone(),
        };
        if let Role::Follower(follower) = &mut self.role {
            follower.in_flight = Some(InFlightFetch {
                to: to.clone(),
                fetch_offset,
                fetch_id,
                sent_at: now,
            });
        }
        self.send(&to, Message::FetchRequest(request));
    }

    fn next_known_peer(&mut self) -> Option<NodeId> {
        let mut peers: Vec<NodeId> = self
            .voters()
            .iter()
            .chain(self.known_peers.iter())
            .filter(|id| **id != self.config.id)
            .cloned()
            .collect();
        peers.sort();
        peers.dedup();
        if peers.is_empty() {
            return None;
        }
        self.next_peer = (self.next_peer + 1) % peers.len();
        Some(peers[self.next_peer].clone())
    }

    fn on_fetch_request(
        &mut self,
        now: u64,
        from: &str,
        request: FetchRequest,
    ) -> Result<(), ReplicationError> {
        if !self.is_member(from) {
            // A replica that is neither a voter nor a member discovery knows: not served, and
            // never counted or listed.
            self.counters.refused_messages += 1;
            return Err(ReplicationError::UnknownPeer {
                kind: "fetch_request",
                id: from.to_owned(),
                reason: "it is neither a voter nor a member discovery knows",
            });
        }
        if request.epoch > self.state.epoch {
            self.observe_epoch(now, request.epoch, None)?;
        }
        let respond = |replica: &mut Self, result: FetchResult| {
            let response = FetchResponse {
                epoch: replica.state.epoch,
                leader_id: replica.leader_id().map(str::to_owned),
                responder_id: replica.config.id.clone(),
                high_watermark: replica.high_watermark,
                fetch_offset: request.fetch_offset,
                fetch_id: request.fetch_id,
                result,
            };
            replica.send(from, Message::FetchResponse(response));
        };
        if !matches!(self.role, Role::Leader(_)) || request.epoch < self.state.epoch {
            // Not the leader of the fetcher's epoch: tell it who is, so it moves on.
            respond(self, FetchResult::NotLeader);
            return Ok(());
        }
        let start = self.log.start_offset();
        let resync = |replica: &mut Self| {
            let (start_offset, start_epoch) = replica.log.start();
            let voters = replica.voters_before(start_offset);
            respond(
                replica,
                FetchResult::OffsetOutOfRange {
                    start_offset,
                    start_epoch,
                    voters,
                },
            );
        };
        // Below the leader's start the fetcher asks for what retention removed: it copies the
        // leader's log from its start. A fetcher holds `log_start_offset..fetch_offset`, and
        // what lies below its start was committed when it went (retention stays below the high
        // watermark, and a reset starts at a leader's start), so counting it never counts it
        // for an uncommitted record it lacks.
        if request.fetch_offset < start {
            resync(self);
            return Ok(());
        }
        // An empty log has nothing to compare: everything before its start is committed, so
        // the fetcher copies from where it starts.
        let empty = request.log_start_offset == request.fetch_offset;
        if empty {
            if request.fetch_offset > self.log.end_offset() {
                resync(self);
                return Ok(());
            }
        } else {
            // The fetcher's last batch must be in the leader's log with the same epoch.
            let Some((epoch, end_offset)) = self
                .log
                .epoch_end_offset(request.last_fetched_epoch)
                .or_else(|| (start == 0).then_some((0, 0)))
            else {
                // The fetcher's last epoch is older than anything retention left here: the
                // leader cannot tell where the logs diverge, only that the fetcher must resync.
                resync(self);
                return Ok(());
            };
            if epoch != request.last_fetched_epoch || end_offset < request.fetch_offset {
                respond(
                    self,
                    FetchResult::Diverging {
                        epoch,
                        end_offset: end_offset.min(request.fetch_offset),
                    },
                );
                return Ok(());
            }
        }
        if let Role::Leader(leader) = &mut self.role {
            let progress = leader.progress.entry(from.to_owned()).or_default();
            progress.end_offset = Some(request.fetch_offset);
            progress.last_fetch_at = Some(now);
            progress.directory_id.clone_from(&request.directory_id);
        }
        if self.needs_binding(from, &request.directory_id) {
            self.bind_directory(from, &request.directory_id)?;
        }
        self.advance_high_watermark(now);
        let batches = if request.fetch_offset < self.log.end_offset() {
            let max_bytes = request.max_bytes.clamp(1, self.config.fetch_max_bytes) as usize;
            self.log.read(request.fetch_offset, max_bytes)?
        } else {
            Vec::new()
        };
        respond(self, FetchResult::Records(batches));
        Ok(())
    }

    /// Whether stepping `response` from `from` only copies records into the page cache: this
    /// follower's answer from its leader, in its own epoch, carrying data batches that extend
    /// the log where it ends, which the log can append without an fsync, a segment roll or a
    /// new epoch ([`ReplicaLog::append_stays_in_page_cache`]). Such a step saves no quorum
    /// state, truncates nothing and learns no voter set, so the driver may run it in place
    /// instead of on the blocking pool.
    pub fn fetch_response_is_light(&self, from: &str, response: &FetchResponse) -> bool {
        let Role::Follower(follower) = &self.role else {
            return false;
        };
        let FetchResult::Records(batches) = &response.result else {
            return false;
        };
        let end = self.log.end_offset();
        response.epoch == self.state.epoch
            && response.responder_id == from
            && follower.leader.as_deref() == Some(from)
            && response.fetch_offset == end
            && batches.iter().all(|batch| {
                !batch.is_control() && (batch.base_offset() >= end || batch.next_offset() <= end)
            })
            && self.log.append_stays_in_page_cache(batches)
    }

    fn on_fetch_response(
        &mut self,
        now: u64,
        from: &str,
        response: FetchResponse,
    ) -> Result<(), ReplicationError> {
        if response.responder_id != from {
            // Another node answered a fetch sent to `from` (a stale address).
            self.counters.refused_messages += 1;
            tracing::warn!(id = %self.config.id, asked = from, answered = %response.responder_id, "a fetch answer came from another node than the one asked; ignoring it");
            return Ok(());
        }
        if response.epoch > self.state.epoch {
            return self.observe_epoch(now, response.epoch, response.leader_id);
        }
        let next_deadline = now + self.random_election_timeout();
        let Role::Follower(follower) = &mut self.role else {
            return Ok(());
        };
        // The answer to the fetch out now, not a late copy of one to an earlier fetch (a
        // node of an earlier version echoes no id: the offset is all there is to compare).
        let matches_in_flight = follower.in_flight.as_ref().is_some_and(|fetch| {
            fetch.to == from
                && fetch.fetch_offset == response.fetch_offset
                && (response.fetch_id == 0 || fetch.fetch_id == response.fetch_id)
        });
        if response.epoch < self.state.epoch || !matches_in_flight {
            return Ok(());
        }
        follower.in_flight = None;
        let following = follower.leader.as_deref() == Some(from);
        match response.result {
            FetchResult::NotLeader => {
                match response.leader_id {
                    Some(leader) if leader != self.config.id && leader != from => {
                        self.follow(now, leader)?;
                    }
                    _ if following => {
                        // Our leader no longer leads this epoch (it stepped down): wait for
                        // the election that follows.
                        follower.leader = None;
                        self.update_state(|state| state.leader_id = None)?;
                    }
                    _ => {}
                }
                Ok(())
            }
            _ if !following => {
                // An observer found the leader by asking around.
                match response.leader_id {
                    Some(leader) if leader == from => self.follow(now, leader),
                    _ => Ok(()),
                }
            }
            FetchResult::Records(batches) => {
                follower.last_fetch_ok = Some(now);
                follower.election_deadline = next_deadline;
                let mut end = self.log.end_offset();
                if end != response.fetch_offset {
                    return Ok(());
                }
                let mut fresh = Vec::with_capacity(batches.len());
                for batch in batches {
                    if batch.next_offset() <= end {
                        continue;
                    }
                    if batch.base_offset() < end && fresh.is_empty() {
                        // Our log ends inside this batch (we truncated mid-batch); the records
                        // before our end are the same, so take the whole batch again.
                        self.truncate(batch.base_offset(), true)?;
                        end = batch.base_offset();
                    }
                    if batch.base_offset() != end {
                        break;
                    }
                    end = batch.next_offset();
                    fresh.push(batch);
                }
                if !fresh.is_empty() {
                    if let Err(err) = self.log.append_fetched(&fresh) {
                        if err.shortage().is_some()
                            && let Role::Follower(follower) = &mut self.role
                        {
                            follower.retry_at = now + STORAGE_RETRY_MS;
                        }
                        return Err(err.into());
                    }
                    let mut learned = false;
                    for batch in &fresh {
                        learned |= self.learn_voters(batch);
                    }
                    if learned {
                        self.persist()?;
                    }
                }
                let durable = self.log.durable_end();
                self.high_watermark = self
                    .high_watermark
                    .max(response.high_watermark.min(durable));
                // Fetch again at once: the leader long-polls, so this is not a busy loop.
                self.send_fetch(now);
                Ok(())
            }
            FetchResult::Diverging { epoch, end_offset } => {
                follower.last_fetch_ok = Some(now);
                if self.log.last_epoch() >= response.epoch {
                    // Our last batch was written by this very leader (one leader per epoch),
                    // so our log agrees with its log: this answer is a late copy of one about
                    // a tail we have since replaced (a retried fetch that had the same offset).
                    // Truncating now would drop records the leader counts as ours.
                    self.send_fetch(now);
                    return Ok(());
                }
                // Where our own log leaves `epoch`. When our retention removed every batch of
                // `epoch` and before, the logs agree up to our start at least: everything
                // below it was committed when it was removed.
                let start = self.log.start_offset();
                let own_end = self
                    .log
                    .epoch_end_offset(epoch)
                    .map_or(start, |(_, end)| end)
                    .min(self.log.end_offset());
                let target = end_offset.min(own_end).max(start);
                tracing::info!(
                    id = %self.config.id,
                    epoch,
                    truncate_to = target,
                    end = self.log.end_offset(),
                    "log diverged from the leader's; truncating"
                );
                self.truncate(target, false)?;
                self.send_fetch(now);
                Ok(())
            }
            FetchResult::OffsetOutOfRange {
                start_offset,
                start_epoch,
                voters,
            } => {
                follower.last_fetch_ok = Some(now);
                self.reset(start_offset, start_epoch, voters)?;
                self.send_fetch(now);
                Ok(())
            }
        }
    }

    /// Empties the log and restarts it at `start` (the leader's start), taking the leader's
    /// voter set in force there as its own: the records that held it may be gone everywhere.
    ///
    /// The emptied log keeps `start_epoch` as the epoch it ends in, so it compares in an
    /// election as a log that reached `start`. What it discards is never a committed record
    /// the leader still holds: a reset comes only when its log ends before the leader's start
    /// (what it held there is committed, and retention removed it), or when its last epoch is
    /// unknown to the leader, which holds committed records from its start on, so that tail
    /// diverged and was never committed. The quorum state is saved before the log is touched,
    /// and the log's reset is atomic across a crash (the engine finishes one cut short when it
    /// reopens).
    fn reset(
        &mut self,
        start: u64,
        start_epoch: u64,
        voters: Option<VoterSet>,
    ) -> Result<(), ReplicationError> {
        tracing::warn!(
            id = %self.config.id,
            start_offset = start,
            end = self.log.end_offset(),
            "the leader cannot give this replica the records that follow its log (retention \
             removed them, or the leader cannot match its last epoch); emptying the log and \
             copying the leader's from its start"
        );
        let mut next = self.state.clone();
        // Voter sets from our own log are gone with it, committed or not: the leader's is the
        // one in force at its start.
        next.voter_history = voters.into_iter().collect();
        self.commit_state(next)?;
        self.log.reset_to(start, start_epoch)?;
        // It knows nothing committed past what it holds: the emptied log.
        self.high_watermark = self.high_watermark.min(start);
        self.counters.resets += 1;
        Ok(())
    }

    /// Truncates the log to `offset`. Below the high watermark only to re-fetch a batch whose
    /// records before `offset` are known identical (`same_records`).
    fn truncate(&mut self, offset: u64, same_records: bool) -> Result<(), ReplicationError> {
        if offset >= self.log.end_offset() {
            return Ok(());
        }
        if offset < self.high_watermark && !same_records {
            return Err(ReplicationError::TruncateBelowHighWatermark {
                offset,
                high_watermark: self.high_watermark,
            });
        }
        self.log.truncate_suffix(offset)?;
        if !same_records {
            self.counters.truncations += 1;
        }
        let before = self.state.voter_history.len();
        self.state.voter_history.retain(|set| set.offset < offset);
        if self.state.voter_history.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// On the leader: the high watermark is the largest offset a majority of voters hold
    /// durably, and it only counts once this epoch's own record is committed.
    fn advance_high_watermark(&mut self, _now: u64) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let mut offsets: Vec<u64> = vec![self.log.durable_end()];
        for (id, progress) in &leader.progress {
            if self.counts_as_voter(id, &progress.directory_id) {
                offsets.push(progress.end_offset.unwrap_or(0));
            }
        }
        // Voters that never fetched count as 0.
        offsets.resize(self.voters().len().max(offsets.len()), 0);
        offsets.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = offsets[self.majority() - 1];
        if leader.epoch_start.is_none_or(|start| candidate > start)
            && candidate > self.high_watermark
        {
            self.high_watermark = candidate;
        }
    }

    // ---- helpers ----

    /// Saves `next` as the quorum state, then puts it in force. A transition whose save fails
    /// never takes effect, not even in memory, where a retried request would find it.
    fn commit_state(&mut self, mut next: QuorumState) -> Result<(), ReplicationError> {
        // The history always reflects the whole log, so any save can record how far.
        next.history_end = self.log.end_offset();
        self.store.save(&next).map_err(save_failed)?;
        self.state = next;
        Ok(())
    }

    /// Applies `change` to a copy of the quorum state and commits it.
    fn update_state(
        &mut self,
        change: impl FnOnce(&mut QuorumState),
    ) -> Result<(), ReplicationError> {
        let mut next = self.state.clone();
        change(&mut next);
        self.commit_state(next)
    }

    /// Saves the quorum state as it is (voter sets learned from the log, which holds them too).
    fn persist(&mut self) -> Result<(), ReplicationError> {
        self.commit_state(self.state.clone())
    }

    /// The log's `(last epoch, end offset)`, what a candidate's log is compared with.
    fn log_position(&self) -> (u64, u64) {
        (self.log.last_epoch(), self.log.end_offset())
    }

    /// On start: forget voter sets past the log's end (a truncation whose state save was cut
    /// short) and pick up those appended after the last save.
    fn recover_voter_history(&mut self) -> Result<(), ReplicationError> {
        let end = self.log.end_offset();
        let before = self.state.voter_history.len();
        self.state.voter_history.retain(|set| set.offset < end);
        let mut changed = self.state.voter_history.len() != before;
        let mut offset = self.state.history_end.min(end).max(self.log.start_offset());
        while offset < end {
            let batches = self.log.read(offset, 1 << 20)?;
            let Some(last) = batches.last() else {
                break;
            };
            let next = last.next_offset();
            for batch in batches.iter().filter(|batch| batch.base_offset() >= offset) {
                changed |= self.learn_voters(batch);
            }
            if next <= offset {
                break;
            }
            offset = next;
        }
        if changed || self.state.history_end != end {
            self.persist()?;
        }
        Ok(())
    }

    /// Records the voter set a control batch carries, if any. Returns whether it did.
    fn learn_voters(&mut self, batch: &crate::storage::Batch) -> bool {
        if !batch.is_control() {
            return false;
        }
        let mut learned = false;
        for record in batch.records() {
            if record.record_type != LEADER_CHANGE_RECORD_TYPE
                && record.record_type != VOTERS_RECORD_TYPE
            {
                continue;
            }
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&record.value) else {
                tracing::warn!(
                    offset = record.offset,
                    "unreadable control record; ignoring it"
                );
                continue;
            };
            let Ok(mut voters) = super::quorum::id_list(&value["voters"]) else {
                continue;
            };
            let Ok(directories) = super::quorum::directory_map(&value["directories"]) else {
                continue;
            };
            voters.sort();
            voters.dedup();
            let known = !self.state.voter_history.is_empty();
            if voters.is_empty()
                || (known
                    && voters.as_slice() == self.voters()
                    && directories == *self.directories())
            {
                continue;
            }
            if self
                .state
                .voter_history
                .last()
                .is_some_and(|set| set.offset >= record.offset)
            {
                continue;
            }
            tracing::info!(id = %self.config.id, offset = record.offset, ?voters, ?directories, "voter set changed");
            self.state.voter_history.push(VoterSet {
                offset: record.offset,
                voters,
                directories,
            });
            self.counters.voter_sets += 1;
            learned = true;
        }
        learned
    }

    /// The voter set in force just before `offset` (set by a record below it), if this node
    /// knows one.
    fn voters_before(&self, offset: u64) -> Option<VoterSet> {
        self.state
            .voter_history
            .iter()
            .rev()
            .find(|set| set.offset < offset)
            .cloned()
    }

    /// Changes the voter set by one node, through the log: the leader appends the new set as
    /// a control record, in force at once (on every replica as soon as it has the record), and
    /// accepts the next change only once this one is committed. An added node must be an
    /// observer that has caught up (`max_lag` records behind the high watermark at most); it
    /// is bound to the data directory it fetches with from the record that adds it.
    pub fn change_voters(
        &mut self,
        now: u64,
        change: VoterChange,
        max_lag: u64,
    ) -> Result<AppendInfo, ReplicationError> {
        let Some(epoch) = self.leader_epoch() else {
            return Err(ReplicationError::NotLeader {
                leader: self.leader_id().map(str::to_owned),
            });
        };
        let refuse = |reason: String| Err(ReplicationError::VoterChangeRefused { reason });
        if let Some(pending) = self.state.voter_history.last()
            && pending.offset >= self.high_watermark
        {
            return refuse(format!(
                "the previous voter change (offset {}) is not committed yet; retry shortly",
                pending.offset
            ));
        }
        let Role::Leader(leader) = &self.role else {
            return refuse("not the leader".into());
        };
        if leader
            .epoch_start
            .is_some_and(|start| self.high_watermark <= start)
        {
            return refuse(
                "the new leader has not committed its first record yet; retry shortly".into(),
            );
        }
        let mut voters = self.voters().to_vec();
        let mut directories = self.directories().clone();
        match &change {
            VoterChange::Add(id) => {
                if self.is_voter(id) {
                    return refuse(format!("{id} is already a voter"));
                }
                let progress = leader.progress.get(id);
                let Some(end) = progress.and_then(|p| p.end_offset) else {
                    return refuse(format!(
                        "{id} has not fetched from the leader yet: start it (it joins as an \
                         observer) and retry once it has caught up"
                    ));
                };
                let lag = self.high_watermark.saturating_sub(end);
                if lag > max_lag {
                    return refuse(format!(
                        "{id} is {lag} records behind the high watermark (at most {max_lag} \
                         allowed); retry once it has caught up"
                    ));
                }
                if let Some(directory) = progress
                    .map(|p| p.directory_id.clone())
                    .filter(|d| !d.is_empty())
                {
                    directories.insert(id.clone(), directory);
                }
                voters.push(id.clone());
            }
            VoterChange::Remove(id) => {
                if !self.is_voter(id) {
                    return refuse(format!("{id} is not a voter"));
                }
                if *id == self.config.id {
                    return refuse(format!(
                        "{id} is the leader: transfer leadership first, then remove it"
                    ));
                }
                if voters.len() == 1 {
                    return refuse("the last voter cannot be removed".into());
                }
                voters.retain(|voter| voter != id);
            }
        }
        voters.sort();
        // A removed voter's binding goes with it: if it is added again, it binds anew to the
        // directory it then fetches with.
        directories.retain(|id, _| voters.contains(id));
        // As etcd's strict reconfiguration check: the new set must have a majority that is
        // alive and counts (fetched lately, with the directory it is bound to), or the change
        // could never commit and the cluster would be stuck without a quorum.
        let window = 2 * self.config.election_timeout_ms;
        let live = voters
            .iter()
            .filter(|id| {
                **id == self.config.id
                    || leader.progress.get(*id).is_some_and(|progress| {
                        progress
                            .last_fetch_at
                            .is_some_and(|at| now.saturating_sub(at) < window)
                            && directories
                                .get(*id)
                                .is_none_or(|bound| *bound == progress.directory_id)
                    })
            })
            .count();
        if live < voters.len() / 2 + 1 {
            return refuse(format!(
                "after this change only {live} of the {} voters would be reachable with the                  data directory they are bound to, not a majority: bring the others back (or                  remove a voter that lost its data) first",
                voters.len()
            ));
        }
        let info = self.append_voter_set(epoch, voters, directories)?;
        if let Role::Leader(leader) = &mut self.role {
            for voter in self
                .state
                .voter_history
                .last()
                .map(|set| set.voters.clone())
                .unwrap_or_default()
            {
                if voter != self.config.id {
                    leader.progress.entry(voter).or_default();
                }
            }
        }
        self.advance_high_watermark(now);
        Ok(info)
    }

    fn send(&mut self, to: &str, message: Message) {
        self.outbox.push(Envelope {
            to: to.to_owned(),
            message,
        });
    }

    fn is_voter(&self, id: &str) -> bool {
        self.voters().iter().any(|voter| voter == id)
    }

    /// Whether `id` is a member this node knows: a voter, or a peer discovery knows (an
    /// observer, or a voter this node's voter set does not have yet).
    pub fn is_member(&self, id: &str) -> bool {
        self.is_voter(id) || self.known_peers.iter().any(|peer| peer == id)
    }

    /// Whether this node knows the voter set: it learned one from the log (or the leader's
    /// snapshot), or it is the sole voter it was started as. A node in a new data directory
    /// does not: it may be a voter that lost its data, and only the cluster can tell it.
    pub fn voters_known(&self) -> bool {
        !self.state.voter_history.is_empty()
            || (self.state.voters.len() == 1 && self.state.voters[0] == self.config.id)
    }

    /// Whether this node is a voter: its id is in the voter set and bound, if at all, to this
    /// data directory (a node that lost its data is not the voter it was).
    fn is_self_voter(&self) -> bool {
        self.is_voter(&self.config.id) && self.bound_to(&self.config.id, &self.state.directory_id)
    }

    /// Whether `id`, speaking from `directory_id`, counts as a voter.
    fn counts_as_voter(&self, id: &str, directory_id: &str) -> bool {
        self.is_voter(id) && self.bound_to(id, directory_id)
    }

    /// The data directories the voters in force are bound to.
    pub fn directories(&self) -> &BTreeMap<NodeId, String> {
        static NONE: BTreeMap<NodeId, String> = BTreeMap::new();
        self.state
            .voter_history
            .last()
            .map_or(&NONE, |set| &set.directories)
    }

    /// Whether `directory_id` may act as voter `id`: it is the bound one, or none is bound.
    fn bound_to(&self, id: &str, directory_id: &str) -> bool {
        self.directories()
            .get(id)
            .is_none_or(|bound| bound == directory_id)
    }

    /// On the leader: whether a fetch from voter `id` with `directory_id` should bind it.
    pub fn needs_binding(&self, id: &str, directory_id: &str) -> bool {
        matches!(self.role, Role::Leader(_))
            && !directory_id.is_empty()
            && self.is_voter(id)
            && !self.directories().contains_key(id)
    }

    /// Binds voter `id` to `directory_id` through the log (a voter-set record with the same
    /// voters), in force at once like any voter set.
    fn bind_directory(&mut self, id: &str, directory_id: &str) -> Result<(), ReplicationError> {
        let Some(epoch) = self.leader_epoch() else {
            return Ok(());
        };
        let mut directories = self.directories().clone();
        directories.insert(id.to_owned(), directory_id.to_owned());
        tracing::info!(id = %self.config.id, voter = id, directory_id, "binding a voter to its data directory");
        self.append_voter_set(epoch, self.voters().to_vec(), directories)?;
        Ok(())
    }

    /// Appends a voter-set record (durable under the node's policy) and puts it in force. The
    /// leader binds itself too, if it was not bound yet.
    fn append_voter_set(
        &mut self,
        epoch: u64,
        voters: Vec<NodeId>,
        mut directories: BTreeMap<NodeId, String>,
    ) -> Result<AppendInfo, ReplicationError> {
        if voters.contains(&self.config.id) {
            directories
                .entry(self.config.id.clone())
                .or_insert_with(|| self.state.directory_id.clone());
        }
        let value = serde_json::json!({ "voters": voters, "directories": directories }).to_string();
        let record = Record {
            value: value.as_bytes(),
            key: None,
            timestamp_ms: 0,
            record_type: VOTERS_RECORD_TYPE,
        };
        let info = self.log.append(epoch, &[record], true)?;
        self.put_in_force(info.base_offset, voters, directories)?;
        Ok(info)
    }

    /// Puts the voter set a control record at `offset` carries in force on this node (the
    /// leader that wrote it), if it changes anything.
    fn put_in_force(
        &mut self,
        offset: u64,
        voters: Vec<NodeId>,
        directories: BTreeMap<NodeId, String>,
    ) -> Result<(), ReplicationError> {
        if !self.state.voter_history.is_empty()
            && voters.as_slice() == self.voters()
            && directories == *self.directories()
        {
            return Ok(());
        }
        self.state.voter_history.push(VoterSet {
            offset,
            voters,
            directories,
        });
        self.counters.voter_sets += 1;
        self.persist()
    }

    fn is_sole_voter(&self) -> bool {
        self.voters().len() == 1 && self.voters()[0] == self.config.id
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.voters()
            .iter()
            .filter(|id| **id != self.config.id)
            .cloned()
            .collect()
    }

    fn majority(&self) -> usize {
        self.voters().len() / 2 + 1
    }

    fn random_election_timeout(&mut self) -> u64 {
        self.config.election_timeout_ms + self.random_below(self.config.election_timeout_ms)
    }

    /// splitmix64: deterministic for a seed, which the simulation relies on.
    fn random_below(&mut self, bound: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if bound == 0 { 0 } else { z % bound }
    }
}

/// Checks the values of a peer message that no correct peer can send, before anything acts on
/// it: epochs and offsets past any that can exist, missing or oversized ids, a sender that
/// speaks for someone else. What the message means is checked by the handlers.
fn check_message(from: &str, message: &Message, own_epoch: u64) -> Result<(), String> {
    let limit = own_epoch.saturating_add(MAX_EPOCH_JUMP).min(MAX_EPOCH - 1);
    let epoch = |name: &str, value: u64| {
        if value > limit {
            Err(format!(
                "{name} {value} is past any possible epoch (at most {limit} while this node \
                 is at {own_epoch})"
            ))
        } else {
            Ok(())
        }
    };
    let offset = |name: &str, value: u64| {
        if value > MAX_OFFSET {
            Err(format!(
                "{name} {value} is past any possible offset ({MAX_OFFSET})"
            ))
        } else {
            Ok(())
        }
    };
    let id = |name: &str, value: &str| {
        if value.is_empty() || value.len() > MAX_ID_BYTES {
            Err(format!("{name} must be 1 to {MAX_ID_BYTES} bytes"))
        } else {
            Ok(())
        }
    };
    let sender = |name: &str, value: &str| {
        if value != from {
            Err(format!("{name} `{value}` is not the sender `{from}`"))
        } else {
            Ok(())
        }
    };
    let directory = |name: &str, value: &str| {
        if value.len() > MAX_ID_BYTES {
            Err(format!("{name} is longer than {MAX_ID_BYTES} bytes"))
        } else {
            Ok(())
        }
    };
    id("the sender's id", from)?;
    match message {
        Message::VoteRequest(request) => {
            sender("candidate_id", &request.candidate_id)?;
            id("voter_id", &request.voter_id)?;
            epoch("candidate_epoch", request.candidate_epoch)?;
            epoch("last_offset_epoch", request.last_offset_epoch)?;
            offset("end_offset", request.end_offset)?;
            directory("candidate_directory_id", &request.candidate_directory_id)?;
            directory("voter_directory_id", &request.voter_directory_id)?;
            if request.last_offset_epoch > request.candidate_epoch {
                return Err(format!(
                    "the candidate's log has epoch {} past the epoch {} it asks to lead",
                    request.last_offset_epoch, request.candidate_epoch
                ));
            }
        }
        Message::VoteResponse(response) => {
            id("voter_id", &response.voter_id)?;
            epoch("epoch", response.epoch)?;
            epoch("candidate_epoch", response.candidate_epoch)?;
            directory("voter_directory_id", &response.voter_directory_id)?;
            if let Some(leader) = &response.leader_id {
                id("leader_id", leader)?;
            }
        }
        Message::BeginQuorumEpoch(begin) => {
            sender("leader_id", &begin.leader_id)?;
            epoch("epoch", begin.epoch)?;
        }
        Message::EndQuorumEpoch(end) => {
            sender("leader_id", &end.leader_id)?;
            epoch("epoch", end.epoch)?;
            for successor in &end.preferred_successors {
                id("a preferred successor", successor)?;
            }
        }
        Message::FetchRequest(request) => {
            sender("replica_id", &request.replica_id)?;
            epoch("epoch", request.epoch)?;
            epoch("last_fetched_epoch", request.last_fetched_epoch)?;
            offset("fetch_offset", request.fetch_offset)?;
            directory("directory_id", &request.directory_id)?;
            if request.log_start_offset > request.fetch_offset {
                return Err(format!(
                    "log_start_offset {} is past fetch_offset {}",
                    request.log_start_offset, request.fetch_offset
                ));
            }
            if request.last_fetched_epoch > request.epoch {
                return Err(format!(
                    "last_fetched_epoch {} is past the fetcher's epoch {}",
                    request.last_fetched_epoch, request.epoch
                ));
            }
        }
        Message::FetchResponse(response) => {
            id("responder_id", &response.responder_id)?;
            epoch("epoch", response.epoch)?;
            offset("high_watermark", response.high_watermark)?;
            offset("fetch_offset", response.fetch_offset)?;
            if let Some(leader) = &response.leader_id {
                id("leader_id", leader)?;
            }
            match &response.result {
                FetchResult::Records(batches) => {
                    for batch in batches {
                        epoch("a batch's epoch", batch.leader_epoch())?;
                        offset("a batch's offset", batch.next_offset())?;
                        if batch.leader_epoch() > response.epoch {
                            return Err(format!(
                                "a batch of epoch {} comes from a leader of epoch {}",
                                batch.leader_epoch(),
                                response.epoch
                            ));
                        }
                    }
                }
                FetchResult::Diverging {
                    epoch: diverging,
                    end_offset,
                } => {
                    epoch("the diverging epoch", *diverging)?;
                    offset("the diverging end offset", *end_offset)?;
                }
                FetchResult::OffsetOutOfRange {
                    start_offset,
                    start_epoch,
                    voters,
                } => {
                    offset("start_offset", *start_offset)?;
                    epoch("start_epoch", *start_epoch)?;
                    if *start_epoch > response.epoch {
                        return Err(format!(
                            "the leader of epoch {} names a record of epoch {start_epoch}",
                            response.epoch
                        ));
                    }
                    if let Some(set) = voters {
                        if set.voters.is_empty() {
                            return Err("the leader's voter set is empty".into());
                        }
                        if set.offset >= *start_offset {
                            return Err(format!(
                                "the voter set of offset {} is not before the start {start_offset}",
                                set.offset
                            ));
                        }
                        if !set.voters.is_sorted_by(|a, b| a < b) {
                            return Err("the leader's voters are not sorted and distinct".into());
                        }
                        for voter in &set.voters {
                            id("a voter", voter)?;
                        }
                        for (voter, directory) in &set.directories {
                            if !set.voters.contains(voter) {
                                return Err(format!(
                                    "a directory is bound to {voter}, which is not a voter"
                                ));
                            }
                            id("a bound directory", directory)?;
                        }
                    }
                }
                FetchResult::NotLeader => {}
            }
        }
    }
    Ok(())
}

fn save_failed(err: ReplicationError) -> ReplicationError {
    match err {
        already @ ReplicationError::SaveQuorumState(_) => already,
        other => ReplicationError::SaveQuorumState(Box::new(other)),
    }
}

/// A new data directory's id: 128 random bits in hex, from the replica's seed (random per
/// start in a node, fixed per seed in the simulation).
fn new_directory_id(seed: u64) -> String {
    let mut state = seed ^ 0xd1b5_4a32_d192_ed03;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    format!("{:016x}{:016x}", next(), next())
}
