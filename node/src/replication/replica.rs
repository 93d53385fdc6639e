//! The consensus state machine: elections, replication by fetch, and the high watermark.
//!
//! It does no network I/O and reads no clock. The driver (or the simulation) feeds it the time,
//! ticks and messages, and sends what it leaves in its outbox. Its log and quorum state sit
//! behind [`ReplicaLog`] and [`QuorumStore`], so the same rules run against the real storage
//! engine and against the simulation's in-memory log.
//!
//! The rules (KIP-595 in spirit, plus pre-vote from KIP-996):
//! - A follower that has not fetched successfully for a randomized election timeout asks the
//!   voters for a pre-vote; only with a majority does it bump the epoch, vote for itself
//!   (persisted first) and ask for real votes. A voter grants one vote per epoch, and only to a
//!   candidate whose log is at least as up to date as its own.
//! - A new leader appends a leader-change control record in its epoch and announces itself with
//!   `BeginQuorumEpoch`; followers then pull with `Fetch`.
//! - The leader answers a fetch whose last epoch does not match its log with `Diverging`; the
//!   follower truncates (never below its high watermark) and fetches again.
//! - A fetch's offset is what the follower holds durably. The high watermark is the offset a
//!   majority of voters hold, moves only forward, and only once the leader's own epoch has a
//!   committed record.
//! - A leader that has not heard from a majority for the check-quorum timeout steps down.

use std::collections::{BTreeMap, BTreeSet};

use super::error::ReplicationError;
use super::log::ReplicaLog;
use super::messages::{
    BeginQuorumEpoch, EndQuorumEpoch, Envelope, FetchRequest, FetchResponse, FetchResult, Message,
    NodeId, VoteRequest, VoteResponse,
};
use super::quorum::{QuorumState, QuorumStore};
use crate::storage::{AppendInfo, Record};

/// Record type of the control record a new leader appends (never user data). Its value is
/// JSON: `{"leader": id, "epoch": n, "voters": [ids]}`.
pub const LEADER_CHANGE_RECORD_TYPE: u32 = 0x4c43; // "LC"
/// Record type of a voter-set change (control, never user data): `{"voters": [ids]}`.
pub const VOTERS_RECORD_TYPE: u32 = 0x5653; // "VS"

/// Epochs above this are refused as impossible (corrupt or hostile peers).
pub const MAX_EPOCH: u64 = 1 << 53;

/// How often a node saves how far its log was scanned for voter changes, so a restart scans
/// only the tail.
const HISTORY_SAVE_INTERVAL_MS: u64 = 10_000;

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
        if self.id.is_empty() {
            return Err(ReplicationError::Config("the node id is empty".into()));
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
    /// A voter that is not in the voter set: replicates but never votes or campaigns.
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
    /// Whether it votes.
    pub voter: bool,
    /// Its durable log end, as of its last fetch in this epoch (`None` before one).
    pub end_offset: Option<u64>,
    /// When it last fetched (the driver's clock, ms).
    pub last_fetch_ms: Option<u64>,
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
    /// On the leader: each other replica's progress.
    pub replicas: Vec<ReplicaProgress>,
}

#[derive(Debug)]
struct InFlightFetch {
    to: NodeId,
    fetch_offset: u64,
    sent_at: u64,
}

#[derive(Debug)]
struct FollowerState {
    leader: Option<NodeId>,
    election_deadline: u64,
    in_flight: Option<InFlightFetch>,
    last_fetch_ok: Option<u64>,
}

#[derive(Debug)]
struct ElectionState {
    granted: BTreeSet<NodeId>,
    rejected: BTreeSet<NodeId>,
    deadline: u64,
    previous_leader: Option<NodeId>,
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
    next_history_save: u64,
    /// Set by a resignation for good (shutdown): this node never campaigns again.
    retired: bool,
    outbox: Vec<Envelope>,
}

impl<L: ReplicaLog, Q: QuorumStore> Replica<L, Q> {
    /// Starts a replica over `log`. A node with no saved quorum state starts with
    /// `initial_voters` (every node of a new cluster is given the same list); one with saved
    /// state resumes it and ignores the list. It always starts as a follower: a node that led
    /// before a restart may have been replaced.
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
                if state.directory_id.is_empty() {
                    // Saved before directories were tracked: this directory is the same one.
                    state.directory_id = new_directory_id(config.seed);
                    store.save(&state).map_err(save_failed)?;
                }
                // A log written under a later epoch than the saved state (a lost or restored
                // state file) must not let this node vote in an epoch it already wrote in.
                let last_epoch = log.last_epoch();
                if last_epoch > state.epoch {
                    state.epoch = last_epoch;
                    state.voted_for = None;
                    state.leader_id = None;
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
            next_history_save: now + HISTORY_SAVE_INTERVAL_MS,
            retired: false,
            outbox: Vec::new(),
            role: Role::follower(None, now),
            state,
        };
        replica.high_watermark = replica.log.start_offset();
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

    /// The role.
    pub fn role(&self) -> RoleKind {
        match &self.role {
            Role::Follower(_) if !self.is_self_voter() => RoleKind::Observer,
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
                    // A node that lost its data (another directory) is not the voter it was.
                    voter: self.is_voter(id) && self.bound_to(id, &progress.directory_id),
                    end_offset: progress.end_offset,
                    last_fetch_ms: progress.last_fetch_at,
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
            replicas,
        }
    }

    /// Messages to send, oldest first.
    pub fn take_outbox(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.outbox)
    }

    /// Peers an observer (a node outside the voter set) may ask who leads.
    pub fn set_known_peers(&mut self, peers: Vec<NodeId>) {
        self.known_peers = peers;
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
            fetch.sent_at = fetch
                .sent_at
                .min(now.saturating_sub(timeout.saturating_sub(RETRY_MS)));
        }
    }

    /// Hands leadership over: tells the voters, most caught up first, to elect someone else
    /// now. `for_good` (graceful shutdown) also stops this node from campaigning again.
    pub fn resign(&mut self, now: u64, for_good: bool) -> Result<(), ReplicationError> {
        let mut successors: Vec<(u64, NodeId)> = match &self.role {
            Role::Leader(leader) => leader
                .progress
                .iter()
                .filter(|(id, _)| self.is_voter(id))
                .map(|(id, progress)| (progress.end_offset.unwrap_or(0), id.clone()))
                .collect(),
            _ => {
                self.retired |= for_good;
                return Ok(());
            }
        };
        successors.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let preferred_successors: Vec<NodeId> = successors.into_iter().map(|(_, id)| id).collect();
        self.state.leader_id = None;
        self.persist()?;
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
        let action = match &mut self.role {
            Role::Follower(follower) => {
                if is_voter && !self.retired && now >= follower.election_deadline {
                    Action::PreVote
                } else if !is_voter
                    && follower.leader.is_some()
                    && now >= follower.election_deadline
                {
                    // An observer whose leader went quiet looks for the new one among the
                    // peers it knows (leaders announce themselves only to voters).
                    follower.leader = None;
                    follower.in_flight = None;
                    follower.election_deadline = now + 2 * self.config.election_timeout_ms;
                    Action::Fetch
                } else if follower
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

    /// Handles one message from `from`.
    pub fn step(&mut self, now: u64, from: &str, message: Message) -> Result<(), ReplicationError> {
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
        let mut granted = BTreeSet::new();
        granted.insert(self.config.id.clone());
        self.role = Role::Prospective(ElectionState {
            granted,
            rejected: BTreeSet::new(),
            deadline: now + self.random_election_timeout(),
            previous_leader,
        });
        tracing::debug!(id = %self.config.id, epoch = self.state.epoch + 1, "asking for pre-votes");
        self.request_votes(true);
        Ok(())
    }

    fn start_candidacy(&mut self, now: u64) -> Result<(), ReplicationError> {
        self.state.epoch = self
            .state
            .epoch
            .checked_add(1)
            .ok_or_else(|| ReplicationError::Config("the epoch space is exhausted".into()))?;
        self.state.voted_for = Some(self.config.id.clone());
        self.state.leader_id = None;
        self.persist()?;
        let mut granted = BTreeSet::new();
        granted.insert(self.config.id.clone());
        self.role = Role::Candidate(ElectionState {
            granted,
            rejected: BTreeSet::new(),
            deadline: now + self.random_election_timeout(),
            previous_leader: None,
        });
        tracing::info!(id = %self.config.id, epoch = self.state.epoch, "starting an election");
        if self.is_sole_voter() {
            return self.become_leader(now);
        }
        self.request_votes(false);
        Ok(())
    }

    fn request_votes(&mut self, pre_vote: bool) {
        let request = VoteRequest {
            pre_vote,
            candidate_epoch: if pre_vote {
                self.state.epoch.saturating_add(1)
            } else {
                self.state.epoch
            },
            candidate_id: self.config.id.clone(),
            last_offset_epoch: self.log.last_epoch(),
            end_offset: self.log.end_offset(),
        };
        for voter in self.other_voters() {
            self.send(&voter, Message::VoteRequest(request.clone()));
        }
    }

    fn become_leader(&mut self, now: u64) -> Result<(), ReplicationError> {
        self.state.leader_id = Some(self.config.id.clone());
        self.persist()?;
        let epoch = self.state.epoch;
        // A sole voter commits what it holds durably: no other leader can have written
        // elsewhere, so it needs no record of its own epoch first (and a single node's offsets
        // stay exactly those of its records).
        let epoch_start = if self.is_sole_voter() {
            None
        } else {
            let marker = serde_json::json!({
                "leader": self.config.id,
                "epoch": epoch,
                "voters": self.voters(),
                "directories": self.directories(),
            })
            .to_string();
            let record = Record {
                value: marker.as_bytes(),
                key: None,
                timestamp_ms: 0,
                record_type: LEADER_CHANGE_RECORD_TYPE,
            };
            Some(self.log.append(epoch, &[record], true)?.base_offset)
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
        let window = 2 * self.config.election_timeout_ms;
        let live = 1 + leader
            .progress
            .iter()
            .filter(|(id, progress)| {
                self.is_voter(id)
                    && progress
                        .last_fetch_at
                        .is_some_and(|at| now.saturating_sub(at) < window)
            })
            .count();
        if live >= self.majority() {
            return Ok(());
        }
        tracing::warn!(
            id = %self.config.id,
            epoch = self.state.epoch,
            live,
            "lost contact with a majority of voters; stepping down"
        );
        self.state.leader_id = None;
        self.persist()?;
        self.role = Role::follower(None, now + self.random_election_timeout());
        Ok(())
    }

    fn on_vote_request(
        &mut self,
        now: u64,
        from: &str,
        request: VoteRequest,
    ) -> Result<(), ReplicationError> {
        let log_ok = (request.last_offset_epoch, request.end_offset)
            >= (self.log.last_epoch(), self.log.end_offset());
        // Votes do not consult this node's own voter set (as in Raft): a node added as a voter
        // may not have the record that says so yet, and the cluster needs its vote. The
        // candidate counts only votes from its own voter set.
        let granted = if request.pre_vote {
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
                self.state.voted_for = Some(request.candidate_id.clone());
                self.persist()?;
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
                voter_directory_id: self.state.directory_id.clone(),
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
        if response.epoch > self.state.epoch {
            return self.observe_epoch(now, response.epoch, response.leader_id);
        }
        let majority = self.majority();
        let voters = self.voters().len();
        // A vote counts only from the directory the voter is bound to: not from a node that
        // lost its data and came back under the same id.
        let from_voter = self.is_voter(from) && self.bound_to(from, &response.voter_directory_id);
        match &mut self.role {
            Role::Prospective(election)
                if response.pre_vote
                    && response.candidate_epoch == self.state.epoch.saturating_add(1) =>
            {
                if !from_voter {
                    return Ok(());
                }
                if response.granted {
                    election.granted.insert(from.to_owned());
                } else {
                    election.rejected.insert(from.to_owned());
                }
                if election.granted.len() >= majority {
                    return self.start_candidacy(now);
                }
                if election.rejected.len() > voters - majority {
                    // A majority has a live leader or a better log: follow whoever they name.
                    let leader = response
                        .leader_id
                        .filter(|leader| {
                            response.epoch == self.state.epoch && *leader != self.config.id
                        })
                        .or_else(|| election.previous_leader.clone());
                    self.role = Role::follower(leader, now + self.random_election_timeout());
                }
                Ok(())
            }
            Role::Candidate(election)
                if !response.pre_vote && response.candidate_epoch == self.state.epoch =>
            {
                if !from_voter {
                    return Ok(());
                }
                if response.granted {
                    election.granted.insert(from.to_owned());
                } else {
                    election.rejected.insert(from.to_owned());
                }
                if election.granted.len() >= majority {
                    return self.become_leader(now);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_begin_quorum_epoch(
        &mut self,
        now: u64,
        begin: BeginQuorumEpoch,
    ) -> Result<(), ReplicationError> {
        if begin.epoch < self.state.epoch || begin.leader_id == self.config.id {
            return Ok(());
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
        self.state.leader_id = None;
        self.persist()?;
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
        if matches!(self.role, Role::Leader(_)) {
            tracing::info!(id = %self.config.id, epoch, "a later epoch exists; stepping down");
        }
        self.state.epoch = epoch;
        self.state.voted_for = None;
        self.state.leader_id = leader.clone();
        self.persist()?;
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
            self.state.leader_id = Some(leader.clone());
            self.persist()?;
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
        let target = match &self.role {
            Role::Follower(follower) => match &follower.leader {
                Some(leader) => Some(leader.clone()),
                None if !self.is_self_voter() => self.next_known_peer(),
                None => None,
            },
            _ => None,
        };
        let Some(to) = target else {
            return;
        };
        let fetch_offset = self.log.end_offset();
        let request = FetchRequest {
            epoch: self.state.epoch,
            replica_id: self.config.id.clone(),
            fetch_offset,
            last_fetched_epoch: self.log.last_epoch(),
            max_bytes: self.config.fetch_max_bytes,
            max_wait_ms: self.config.fetch_max_wait_ms,
            directory_id: self.state.directory_id.clone(),
        };
        if let Role::Follower(follower) = &mut self.role {
            follower.in_flight = Some(InFlightFetch {
                to: to.clone(),
                fetch_offset,
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
        if request.epoch > self.state.epoch {
            self.observe_epoch(now, request.epoch, None)?;
        }
        let respond = |replica: &mut Self, high_watermark: u64, result: FetchResult| {
            let response = FetchResponse {
                epoch: replica.state.epoch,
                leader_id: replica.leader_id().map(str::to_owned),
                high_watermark,
                fetch_offset: request.fetch_offset,
                result,
            };
            replica.send(from, Message::FetchResponse(response));
        };
        if !matches!(self.role, Role::Leader(_)) || request.epoch < self.state.epoch {
            // Not the leader of the fetcher's epoch: tell it who is, so it moves on.
            let high_watermark = self.high_watermark;
            respond(self, high_watermark, FetchResult::NotLeader);
            return Ok(());
        }
        if request.fetch_offset < self.log.start_offset() {
            let start_offset = self.log.start_offset();
            let high_watermark = self.high_watermark;
            respond(
                self,
                high_watermark,
                FetchResult::OffsetOutOfRange { start_offset },
            );
            return Ok(());
        }
        // A fetcher whose log holds no batch and starts where the leader's log starts (it was
        // reset to it) has nothing to compare: it copies from here.
        let fresh_at_start =
            request.last_fetched_epoch == 0 && request.fetch_offset == self.log.start_offset();
        if request.fetch_offset > 0 && !fresh_at_start {
            // The fetcher's last batch must be in the leader's log with the same epoch.
            let Some((epoch, end_offset)) = self
                .log
                .epoch_end_offset(request.last_fetched_epoch)
                .or_else(|| (self.log.start_offset() == 0).then_some((0, 0)))
            else {
                // The fetcher's last epoch is older than anything retention left here: the
                // leader cannot tell where the logs diverge, only that the fetcher must resync.
                let start_offset = self.log.start_offset();
                let high_watermark = self.high_watermark;
                respond(
                    self,
                    high_watermark,
                    FetchResult::OffsetOutOfRange { start_offset },
                );
                return Ok(());
            };
            if epoch != request.last_fetched_epoch || end_offset < request.fetch_offset {
                let high_watermark = self.high_watermark;
                respond(
                    self,
                    high_watermark,
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
        let high_watermark = self.high_watermark;
        respond(self, high_watermark, FetchResult::Records(batches));
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
        if response.epoch > self.state.epoch {
            return self.observe_epoch(now, response.epoch, response.leader_id);
        }
        let next_deadline = now + self.random_election_timeout();
        let Role::Follower(follower) = &mut self.role else {
            return Ok(());
        };
        let matches_in_flight = follower
            .in_flight
            .as_ref()
            .is_some_and(|fetch| fetch.to == from && fetch.fetch_offset == response.fetch_offset);
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
                        self.state.leader_id = None;
                        self.persist()?;
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
                    self.log.append_fetched(&fresh)?;
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
                let own_end = self
                    .log
                    .epoch_end_offset(epoch)
                    .map_or(0, |(_, end)| end)
                    .min(self.log.end_offset());
                let target = end_offset.min(own_end);
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
            FetchResult::OffsetOutOfRange { start_offset } => {
                follower.last_fetch_ok = Some(now);
                if self.high_watermark > start_offset {
                    // Committed records past the leader's start that the leader cannot match
                    // by epoch: never thrown away. Not expected; needs an operator.
                    tracing::error!(
                        id = %self.config.id,
                        start_offset,
                        high_watermark = self.high_watermark,
                        end = self.log.end_offset(),
                        "the leader cannot match this replica's log and it holds committed \
                         records past the leader's start; not resetting"
                    );
                    return Ok(());
                }
                // Retention removed, on the leader, the records this replica lacks (or the
                // epoch of its last batch): what it holds below the leader's start is gone
                // there too, and what it holds past it is uncommitted here. Start over from
                // the leader's start, as a Kafka follower does.
                tracing::warn!(
                    id = %self.config.id,
                    start_offset,
                    end = self.log.end_offset(),
                    "the leader no longer holds the records this replica lacks (retention); \
                     emptying the log and copying the leader's from its start"
                );
                self.log.reset_to(start_offset)?;
                self.state
                    .voter_history
                    .retain(|set| set.offset < start_offset);
                self.persist()?;
                self.send_fetch(now);
                Ok(())
            }
        }
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
            if self.is_voter(id) && self.bound_to(id, &progress.directory_id) {
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

    fn persist(&mut self) -> Result<(), ReplicationError> {
        // The history always reflects the whole log, so any save can record how far.
        self.state.history_end = self.log.end_offset();
        self.store.save(&self.state).map_err(save_failed)
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
            if voters.is_empty()
                || (voters.as_slice() == self.voters() && directories == *self.directories())
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
            self.state.voter_history.push(super::quorum::VoterSet {
                offset: record.offset,
                voters,
                directories,
            });
            learned = true;
        }
        learned
    }

    /// Changes the voter set by one node, through the log: the leader appends the new set as
    /// a control record, in force at once (on every replica as soon as it has the record), and
    /// accepts the next change only once this one is committed. An added node must be an
    /// observer that has caught up (`max_lag` records behind the high watermark at most).
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
        let mut directories = self.directories().clone();
        directories.retain(|id, _| voters.contains(id));
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

    /// Whether this node is a voter: its id is in the voter set and bound, if at all, to this
    /// data directory (a node that lost its data is not the voter it was).
    fn is_self_voter(&self) -> bool {
        self.is_voter(&self.config.id) && self.bound_to(&self.config.id, &self.state.directory_id)
    }

    /// The data directories the voters in force are bound to.
    fn directories(&self) -> &BTreeMap<NodeId, String> {
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

    /// Appends a voter-set record (durable under the node's policy) and puts it in force.
    fn append_voter_set(
        &mut self,
        epoch: u64,
        voters: Vec<NodeId>,
        directories: BTreeMap<NodeId, String>,
    ) -> Result<AppendInfo, ReplicationError> {
        let value = serde_json::json!({ "voters": voters, "directories": directories }).to_string();
        let record = Record {
            value: value.as_bytes(),
            key: None,
            timestamp_ms: 0,
            record_type: VOTERS_RECORD_TYPE,
        };
        let info = self.log.append(epoch, &[record], true)?;
        self.state.voter_history.push(super::quorum::VoterSet {
            offset: info.base_offset,
            voters,
            directories,
        });
        self.persist()?;
        Ok(info)
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
