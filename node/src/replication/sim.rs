//! A deterministic simulation of a cluster of [`Replica`]s over [`MemDisk`]s, with the faults
//! production has: a network that loses, delays, duplicates and reorders messages, cuts nodes
//! off and delivers to stale addresses; hostile messages; crashes between steps and in the
//! middle of one (between any two storage operations: after a quorum-state save and before the
//! leader-change append, between a truncation and the next save, part-way through a reset);
//! quorum-state saves that fail; produces appended outside the state machine and synced later,
//! whose unsynced tail a crash loses; retention (bounded as the node bounds it); lost disks; and
//! hand-overs, leadership transfers and graceful shutdowns. An operator removes voters that lost
//! their disk and adds them back once they caught up, as the Kubernetes operator does.
//!
//! Everything random comes from the seed, so a failing seed replays exactly:
//! `PROGLOG_SIM_SEED=<seed> cargo test -p proglog-node --lib replication::sim`.
//!
//! After every event (a message delivered, a tick, an append, a fault) the checkers assert:
//! - at most one leader per epoch;
//! - every node's log agrees, below its high watermark, with the committed log by (epoch,
//!   offset, bytes), and a committed offset never changes;
//! - when an offset is first committed, a majority of the voters the committing node counts,
//!   each with the data directory it is bound to, holds it durably;
//! - a majority of the committed voter set protects the newest committed records: the log
//!   position each votes with (what survives a crash) is past them, so it refuses a candidate
//!   that ends before them. Voters with another directory than their
//!   binding (a lost disk) do not count, since no candidate counts their votes;
//! - a new leader's log holds every committed record from its start on;
//! - a binding in the committed voter set changes only by removing the voter first, and no
//!   node leads or is counted with a directory other than its binding.
//!
//! At the end the faults stop, the network heals, every node restarts, and the cluster must
//! commit a new record on every node (liveness).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use bytes::Bytes;

use super::error::ReplicationError;
use super::log::ReplicaLog;
use super::messages::{BeginQuorumEpoch, FetchRequest, Message, NodeId, VoteRequest, VoteResponse};
use super::replica::{
    LEADER_CHANGE_RECORD_TYPE, MAX_OFFSET, ReplicaConfig, ReplicaCounters, VOTERS_RECORD_TYPE,
    VoterChange,
};
use super::testkit::{MemDisk, MemReplica};
use super::{Replica, quorum};
use crate::storage::{Record, StorageError};

/// How many of the newest committed offsets the protection check looks at after each event.
const PROTECTED_WINDOW: u64 = 4;

/// splitmix64, the simulation's only source of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn per_mille(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

struct SimNode {
    id: NodeId,
    disk: MemDisk,
    replica: Option<MemReplica>,
    restart_at: u64,
    /// A failed save is fatal: the node stops this soon (its driver drains meanwhile).
    doomed_until: Option<u64>,
    /// Offsets below this were already compared with the committed log.
    checked_to: u64,
    isolated_until: u64,
    starts: u64,
    /// The disk it lost last: messages it sent before are still in flight, and the leader
    /// may count what they said, which was true when they were sent.
    lost_disk: Option<MemDisk>,
}

/// A message in flight.
struct InFlight {
    /// Who the recipient takes it to be from (the node called, for an answer).
    from: usize,
    /// The node it reaches.
    to: usize,
    /// The node it was addressed to (another than `to` when the address was stale).
    called: usize,
    /// The node that really sent it.
    sent_by: usize,
    message: Message,
    /// A fetch the transport could not deliver: tell the sender instead.
    fetch_failed: bool,
}

/// A client's produce on its way to the node it believes leads: the driver appends outside the
/// state machine with the epoch it saw, and the sync task makes it durable later.
struct ClientWrite {
    node: usize,
    epoch: u64,
    due: u64,
    value: Bytes,
}

struct Pending {
    node: usize,
    epoch: u64,
    offset: u64,
    value: Bytes,
}

/// A committed record, as first seen committed.
#[derive(Clone)]
struct Committed {
    epoch: u64,
    value: Bytes,
}

/// Fault settings drawn per seed.
struct Faults {
    loss: u64,
    duplicate: u64,
    max_delay: u64,
    misroute_per_mille: u64,
    crash_per_mille: u64,
    crash_in_step_per_mille: u64,
    wipe_per_10k: u64,
    failing_save_per_mille: u64,
    isolate_per_mille: u64,
    retention_per_mille: u64,
    keep_records: u64,
    transfer_per_mille: u64,
    shutdown_per_mille: u64,
    hostile_per_mille: u64,
    sync_percent: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    network: BTreeMap<(u64, u64), InFlight>,
    sequence: u64,
    faults: Faults,
    faults_on: bool,
    leaders: HashMap<u64, NodeId>,
    committed: Vec<Committed>,
    /// The latest committed voter set and its bindings.
    committed_voters: Vec<NodeId>,
    committed_bindings: BTreeMap<NodeId, String>,
    writes: Vec<ClientWrite>,
    pending: Vec<Pending>,
    acknowledged: Vec<(u64, Bytes)>,
    next_value: u64,
    seed: u64,
    initial_voters: Vec<NodeId>,
    /// Per-mille chance per step of asking the leader for a random voter change.
    churn_per_mille: u64,
    /// Disk generations and committed length at the last protection check.
    last_protection_check: (Vec<u64>, usize),
    counters: ReplicaCounters,
    stats: BTreeMap<&'static str, u64>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        // Half the seeds: 3 or 5 voters. The other half: 5 nodes, 3 of them voters, and
        // voters added and removed one at a time while everything else goes wrong.
        let churn = rng.chance(50);
        let size = if churn || rng.chance(50) { 5 } else { 3 };
        let ids: Vec<NodeId> = (0..size).map(|i| format!("n{i}")).collect();
        let initial_voters: Vec<NodeId> = if churn {
            ids[..3].to_vec()
        } else {
            ids.clone()
        };
        let faults = Faults {
            loss: rng.below(20),
            duplicate: rng.below(10),
            max_delay: 1 + rng.below(60),
            misroute_per_mille: rng.below(5),
            crash_per_mille: rng.below(4),
            crash_in_step_per_mille: rng.below(4),
            wipe_per_10k: rng.below(4),
            failing_save_per_mille: rng.below(2),
            isolate_per_mille: rng.below(4),
            retention_per_mille: rng.below(40),
            keep_records: 5 + rng.below(40),
            transfer_per_mille: rng.below(3),
            shutdown_per_mille: rng.below(2),
            hostile_per_mille: rng.below(10),
            sync_percent: 20 + rng.below(80),
        };
        let mut sim = Sim {
            rng,
            now: 0,
            nodes: Vec::new(),
            network: BTreeMap::new(),
            sequence: 0,
            faults,
            faults_on: true,
            leaders: HashMap::new(),
            committed: Vec::new(),
            committed_voters: initial_voters.clone(),
            committed_bindings: BTreeMap::new(),
            writes: Vec::new(),
            pending: Vec::new(),
            acknowledged: Vec::new(),
            next_value: 0,
            seed,
            initial_voters,
            churn_per_mille: if churn { 20 } else { 0 },
            last_protection_check: (Vec::new(), 0),
            counters: ReplicaCounters::default(),
            stats: BTreeMap::new(),
        };
        for id in &ids {
            sim.nodes.push(SimNode {
                id: id.clone(),
                disk: MemDisk::default(),
                replica: None,
                restart_at: 0,
                doomed_until: None,
                checked_to: 0,
                isolated_until: 0,
                starts: 0,
                lost_disk: None,
            });
        }
        for index in 0..size {
            sim.start(index);
        }
        sim
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn start(&mut self, index: usize) {
        let voters = self.initial_voters.clone();
        let all: Vec<NodeId> = self.nodes.iter().map(|node| node.id.clone()).collect();
        let now = self.now;
        let seed = self.seed;
        let node = &mut self.nodes[index];
        node.disk.restart();
        node.starts += 1;
        let mut config = ReplicaConfig::new(node.id.clone());
        config.election_timeout_ms = 150;
        config.fetch_timeout_ms = 100;
        config.fetch_max_wait_ms = 0;
        config.fetch_max_bytes = 4096;
        config.seed = seed
            .wrapping_mul(31)
            .wrapping_add(index as u64 + now)
            .wrapping_add(node.starts << 40);
        let mut replica = Replica::new(config, node.disk.log(), node.disk.store(), voters, now)
            .unwrap_or_else(|err| panic!("seed {seed}: {} failed to start: {err}", node.id));
        replica.set_known_peers(all);
        node.replica = Some(replica);
        node.doomed_until = None;
        node.checked_to = 0;
    }

    /// Stops `index` as a crash does: what it did not sync is lost at its restart.
    fn crash(&mut self, index: usize) {
        let restart_in = 50 + self.rng.below(2000);
        let node = &mut self.nodes[index];
        if let Some(replica) = node.replica.take() {
            add_counters(&mut self.counters, replica.counters());
        }
        node.disk.power_cut();
        node.doomed_until = None;
        node.restart_at = self.now + restart_in;
    }

    fn index_of(&self, id: &str) -> usize {
        self.nodes.iter().position(|node| node.id == id).unwrap()
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.nodes[a].isolated_until <= self.now && self.nodes[b].isolated_until <= self.now
    }

    fn send(&mut self, entry: InFlight, delay: u64) {
        self.sequence += 1;
        self.network
            .insert((self.now + delay, self.sequence), entry);
    }

    /// Puts what `index` left in its outbox on the network. `answering` names the node a
    /// misrouted request was meant for: answers go back as from it, as an RPC's would.
    fn collect_outbox(&mut self, index: usize, answering: Option<(usize, usize)>) {
        let Some(replica) = self.nodes[index].replica.as_mut() else {
            return;
        };
        for envelope in replica.take_outbox() {
            let to = self.index_of(&envelope.to);
            let is_answer = matches!(
                envelope.message,
                Message::VoteResponse(_) | Message::FetchResponse(_)
            );
            let from = match answering {
                Some((caller, called)) if is_answer && caller == to => called,
                _ => index,
            };
            // A stale address: a request for one node reaches another.
            let mut reaches = to;
            if !is_answer && self.faults_on && self.rng.per_mille(self.faults.misroute_per_mille) {
                reaches = self.rng.below(self.nodes.len() as u64) as usize;
                if reaches != to && reaches != index {
                    self.count("messages delivered to a stale address");
                }
            }
            let lost = self.rng.chance(self.faults.loss);
            if lost {
                self.count("messages lost");
                if matches!(envelope.message, Message::FetchRequest(_)) && self.rng.chance(50) {
                    // The transport tells the caller its call failed.
                    let delay = 1 + self.rng.below(self.faults.max_delay);
                    self.send(
                        InFlight {
                            from: to,
                            to: index,
                            called: index,
                            sent_by: index,
                            message: envelope.message,
                            fetch_failed: true,
                        },
                        delay,
                    );
                }
                continue;
            }
            let copies = if self.rng.chance(self.faults.duplicate) {
                self.count("messages duplicated");
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = 1 + self.rng.below(self.faults.max_delay);
                self.send(
                    InFlight {
                        from,
                        to: reaches,
                        called: to,
                        sent_by: index,
                        message: envelope.message.clone(),
                        fetch_failed: false,
                    },
                    delay,
                );
            }
        }
    }

    fn fail(&self, what: &str) -> ! {
        for node in &self.nodes {
            match &node.replica {
                Some(replica) => eprintln!(
                    "{:?} bindings {:?} counters {:?}",
                    replica.status(),
                    replica.directories(),
                    replica.counters()
                ),
                None => eprintln!("{} is down", node.id),
            }
        }
        panic!(
            "seed {} at {} ms: {what}\nreplay: PROGLOG_SIM_SEED={} cargo test -p proglog-node --lib replication::sim",
            self.seed, self.now, self.seed
        )
    }

    /// Deals with what a step, tick or append of `index` returned.
    fn handle(&mut self, index: usize, what: &str, result: Result<(), ReplicationError>) {
        let Err(err) = result else {
            return;
        };
        let node = &self.nodes[index];
        if node.disk.is_down() {
            // The power went out during one of its storage operations.
            let op = node.disk.take_crashed_in().unwrap_or("an operation");
            let name: &'static str = match op {
                "save" => "crashes during a quorum-state save",
                "append_control" => "crashes during a control-record append",
                "append" => "crashes during an append",
                "append_fetched" => "crashes during a follower's append",
                "truncate" => "crashes during a truncation",
                "reset_start" | "reset_delete" | "reset_done" => "crashes part-way through a reset",
                "retention" => "crashes during retention",
                "sync" => "crashes during a sync",
                _ => "crashes during another operation",
            };
            self.count(name);
            self.crash(index);
            return;
        }
        if node.doomed_until.is_some() {
            // Stopping after a failed save; what it does meanwhile fails the same way.
            return;
        }
        if matches!(err, ReplicationError::UnknownPeer { .. }) {
            // Views of the membership differ for a while (a voter added after what this node
            // has); the message is refused and its sender tries again.
            self.count("messages refused from nodes not known as members");
            return;
        }
        if matches!(err, ReplicationError::SaveQuorumState(_)) {
            self.count("quorum-state saves that failed (the node stops)");
            self.nodes[index].doomed_until = Some(self.now + 1 + self.rng.below(30));
            return;
        }
        self.fail(&format!("{} failed {what}: {err}", self.nodes[index].id));
    }

    fn deliver(&mut self, entry: InFlight) {
        let InFlight {
            from,
            to,
            called,
            sent_by,
            message,
            fetch_failed,
        } = entry;
        let now = self.now;
        if fetch_failed {
            if let Some(replica) = self.nodes[to].replica.as_mut() {
                replica.fetch_failed(now);
                self.count("fetch failures reported");
            }
            self.check();
            return;
        }
        if !self.connected(sent_by, to) || self.nodes[to].replica.is_none() {
            return;
        }
        let from_id = self.nodes[from].id.clone();
        let result = self.nodes[to]
            .replica
            .as_mut()
            .unwrap()
            .step(now, &from_id, message);
        // An answer to a call that reached another node than the one called goes back as
        // from the node called.
        self.handle(to, "a step", result);
        self.collect_outbox(to, Some((sent_by, called)));
        self.check();
    }

    fn step(&mut self) {
        self.now += 5;
        let due: Vec<(u64, u64)> = self
            .network
            .range(..(self.now + 1, 0))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            if let Some(entry) = self.network.remove(&key) {
                self.deliver(entry);
            }
        }
        for index in 0..self.nodes.len() {
            self.node_step(index);
        }
        self.client_writes();
        self.operator();
        if self.faults_on && self.rng.per_mille(self.faults.hostile_per_mille) {
            self.hostile();
        }
    }

    /// Restarts, faults, the sync task and the tick of one node.
    fn node_step(&mut self, index: usize) {
        let now = self.now;
        if self.nodes[index].replica.is_none() {
            if now >= self.nodes[index].restart_at {
                self.start(index);
                self.check();
            }
            return;
        }
        if self.nodes[index].doomed_until.is_some_and(|at| now >= at) {
            self.crash(index);
            return;
        }
        if self.faults_on {
            let faults = &self.faults;
            let (crash, crash_in_step, wipe, failing_save, isolate, transfer, shutdown) = (
                faults.crash_per_mille,
                faults.crash_in_step_per_mille,
                faults.wipe_per_10k,
                faults.failing_save_per_mille,
                faults.isolate_per_mille,
                faults.transfer_per_mille,
                faults.shutdown_per_mille,
            );
            if self.rng.per_mille(crash) {
                self.count("crashes between steps");
                self.crash(index);
                self.check();
                return;
            }
            if self.rng.below(10_000) < wipe && self.may_wipe(index) {
                self.count("disks lost");
                self.crash(index);
                let lost = std::mem::take(&mut self.nodes[index].disk);
                self.nodes[index].lost_disk = Some(lost);
                self.check();
                return;
            }
            if self.rng.per_mille(crash_in_step) {
                let ops = self.rng.below(6) as u32;
                self.nodes[index].disk.crash_after(ops);
            }
            if self.rng.per_mille(failing_save) {
                self.nodes[index].disk.fail_saves(true);
            }
            if self.rng.per_mille(isolate) {
                self.count("isolations");
                self.nodes[index].isolated_until = now + 100 + self.rng.below(3000);
            }
            let leads = self.nodes[index]
                .replica
                .as_ref()
                .is_some_and(|r| r.leader_epoch().is_some());
            if leads && self.rng.per_mille(transfer) {
                self.count("leadership transfers asked for");
                let result = self.nodes[index]
                    .replica
                    .as_mut()
                    .unwrap()
                    .resign(now, false);
                self.handle(index, "a transfer", result);
                self.collect_outbox(index, None);
                self.check();
            } else if self.rng.per_mille(shutdown) {
                // SIGTERM: a leader hands over, then the node stops a little later.
                self.count("graceful shutdowns");
                if let Some(replica) = self.nodes[index].replica.as_mut() {
                    let result = replica.resign(now, true);
                    self.handle(index, "a shutdown", result);
                    self.collect_outbox(index, None);
                }
                if self.nodes[index].replica.is_some() {
                    self.nodes[index].doomed_until = Some(now + 1 + self.rng.below(20));
                }
                self.check();
                return;
            }
        }
        if self.faults_on && self.rng.per_mille(self.faults.retention_per_mille) {
            self.retention(index);
        }
        // The sync task: what the leader wrote outside the state machine becomes durable.
        let disk = self.nodes[index].disk.clone();
        if disk.has_unsynced() && self.rng.chance(self.faults.sync_percent) {
            let result = disk.sync().map_err(ReplicationError::from);
            if result.is_ok()
                && let Some(replica) = self.nodes[index].replica.as_mut()
            {
                replica.note_local_append(now);
            }
            self.handle(index, "a sync", result);
            self.collect_outbox(index, None);
            self.check();
        }
        if let Some(replica) = self.nodes[index].replica.as_mut() {
            let result = replica.tick(now);
            self.handle(index, "a tick", result);
            self.collect_outbox(index, None);
            self.check();
        }
    }

    /// Retention on `index`, bounded as the node bounds it.
    fn retention(&mut self, index: usize) {
        let Some(replica) = self.nodes[index].replica.as_ref() else {
            return;
        };
        let limit = replica.retention_limit();
        let disk = self.nodes[index].disk.clone();
        let before = disk.start();
        let result = disk
            .remove_front(self.faults.keep_records, limit)
            .map_err(ReplicationError::from)
            .and_then(|start| {
                if start > before {
                    self.count("retention passes that moved a log's start");
                    self.nodes[index]
                        .replica
                        .as_mut()
                        .map_or(Ok(()), Replica::note_retention)
                } else {
                    Ok(())
                }
            });
        self.handle(index, "retention", result);
        self.check();
    }

    /// Whether losing the disk of `index` leaves a majority of voters with the directories
    /// they are bound to, in the committed voter set and in every node's view (beyond that no
    /// protocol can keep data, or even elect a leader).
    fn may_wipe(&self, index: usize) -> bool {
        let mut views = vec![(
            self.committed_voters.clone(),
            self.committed_bindings.clone(),
        )];
        for node in &self.nodes {
            if let Some(replica) = &node.replica {
                views.push((replica.voters().to_vec(), replica.directories().clone()));
            } else if let Some(set) = node
                .disk
                .quorum_state()
                .and_then(|state| state.voter_history.last().cloned())
            {
                views.push((set.voters, set.directories));
            }
        }
        views.iter().all(|(voters, bindings)| {
            let bound = voters
                .iter()
                .filter(|id| {
                    let other = self.index_of(id);
                    other != index && bound(&self.nodes[other].disk, id, bindings)
                })
                .count();
            bound > voters.len() / 2
        })
    }

    /// Whether the voter set of the most up-to-date log has lost a majority of its disks.
    fn quorum_lost(&self) -> bool {
        let Some(freshest) = self.nodes.iter().max_by_key(|node| {
            let log = node.disk.log();
            (log.last_epoch(), log.end_offset())
        }) else {
            return false;
        };
        let (voters, bindings) = freshest
            .disk
            .quorum_state()
            .and_then(|state| state.voter_history.last().cloned())
            .map_or((self.initial_voters.clone(), BTreeMap::new()), |set| {
                (set.voters, set.directories)
            });
        let bound = voters
            .iter()
            .filter(|id| bound(&self.nodes[self.index_of(id)].disk, id, &bindings))
            .count();
        bound <= voters.len() / 2
    }

    /// Whether `index` has the data directory the committed voter set binds it to (or none is
    /// bound).
    fn bound_as_committed(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        bound(&node.disk, &node.id, &self.committed_bindings)
    }

    /// Produces: clients ask whoever believes it leads; the node appends later, with the epoch
    /// it saw, outside the state machine, as the driver does.
    fn client_writes(&mut self) {
        let now = self.now;
        let due: Vec<ClientWrite> = {
            let (due, later) = std::mem::take(&mut self.writes)
                .into_iter()
                .partition(|write| write.due <= now);
            self.writes = later;
            due
        };
        for write in due {
            if self.nodes[write.node].replica.is_none() {
                continue;
            }
            let disk = self.nodes[write.node].disk.clone();
            match disk.append_unsynced(write.epoch, &[Record::new(&write.value, 1)]) {
                Ok(offset) => {
                    if let Some(replica) = self.nodes[write.node].replica.as_mut() {
                        replica.note_local_append(now);
                    }
                    self.pending.push(Pending {
                        node: write.node,
                        epoch: write.epoch,
                        offset,
                        value: write.value,
                    });
                    self.collect_outbox(write.node, None);
                }
                // A later epoch is in the log: the node no longer leads (the client hears
                // NOT_LEADER).
                Err(StorageError::EpochRegression { .. }) => {
                    self.count("produces refused for a stale epoch");
                }
                Err(err) => {
                    self.handle(write.node, "an append", Err(err.into()));
                }
            }
            self.check();
        }
        if self.rng.chance(30) {
            let leaders: Vec<(usize, u64)> = (0..self.nodes.len())
                .filter_map(|i| {
                    self.nodes[i]
                        .replica
                        .as_ref()
                        .and_then(|r| r.leader_epoch())
                        .map(|epoch| (i, epoch))
                })
                .collect();
            if !leaders.is_empty() {
                let (node, epoch) = leaders[self.rng.below(leaders.len() as u64) as usize];
                self.next_value += 1;
                let due = now + self.rng.below(15);
                self.writes.push(ClientWrite {
                    node,
                    epoch,
                    due,
                    value: Bytes::from(format!("v{}", self.next_value)),
                });
            }
        }
    }

    /// What the Kubernetes operator does about voters, and (on churn seeds) random voter
    /// changes, at whoever believes it leads.
    fn operator(&mut self) {
        let Some(leader) = (0..self.nodes.len()).find(|&i| {
            self.nodes[i]
                .replica
                .as_ref()
                .is_some_and(|r| r.leader_epoch().is_some())
        }) else {
            return;
        };
        let now = self.now;
        let mut change = None;
        if self.rng.per_mille(50) {
            let replica = self.nodes[leader].replica.as_ref().unwrap();
            let status = replica.status();
            // A voter fetching with another directory than its binding lost its disk: remove
            // it, then add it back once it caught up.
            let unbound = status
                .replicas
                .iter()
                .find(|p| p.end_offset.is_some() && !p.voter && replica.voters().contains(&p.id))
                .map(|p| p.id.clone());
            let missing = self
                .initial_voters
                .iter()
                .find(|id| !replica.voters().contains(id))
                .cloned();
            change = match (unbound, missing) {
                (Some(id), _) => Some(VoterChange::Remove(id)),
                (None, Some(id)) if self.churn_per_mille == 0 => Some(VoterChange::Add(id)),
                _ => None,
            };
        }
        if change.is_none() && self.rng.per_mille(self.churn_per_mille) {
            let pick = self.rng.below(self.nodes.len() as u64) as usize;
            let id = self.nodes[pick].id.clone();
            let replica = self.nodes[leader].replica.as_ref().unwrap();
            change = Some(if replica.voters().contains(&id) {
                VoterChange::Remove(id)
            } else {
                VoterChange::Add(id)
            });
        }
        let Some(change) = change else {
            return;
        };
        let result = self.nodes[leader]
            .replica
            .as_mut()
            .unwrap()
            .change_voters(now, change, 50);
        match result {
            Ok(_) => self.count("voter changes made"),
            Err(ReplicationError::VoterChangeRefused { .. }) => {}
            Err(err) => self.handle(leader, "a voter change", Err(err)),
        }
        self.collect_outbox(leader, None);
        self.check();
    }

    /// A message no correct peer sends: it must be refused, and change nothing on disk.
    fn hostile(&mut self) {
        let index = self.rng.below(self.nodes.len() as u64) as usize;
        let Some(replica) = self.nodes[index].replica.as_ref() else {
            return;
        };
        let epoch = replica.epoch();
        let target = self.nodes[index].id.clone();
        let member = self.nodes[self.rng.below(self.nodes.len() as u64) as usize]
            .id
            .clone();
        let (from, message) = match self.rng.below(5) {
            0 => (
                "evil".to_owned(),
                Message::BeginQuorumEpoch(BeginQuorumEpoch {
                    epoch: u64::MAX,
                    leader_id: "evil".into(),
                }),
            ),
            1 => (
                member.clone(),
                Message::VoteRequest(VoteRequest {
                    pre_vote: false,
                    candidate_epoch: epoch.saturating_add(1 << 60),
                    candidate_id: member.clone(),
                    last_offset_epoch: 0,
                    end_offset: 0,
                    candidate_directory_id: String::new(),
                    voter_id: target.clone(),
                    voter_directory_id: String::new(),
                    bootstrap: false,
                }),
            ),
            2 => (
                member.clone(),
                hostile_fetch(epoch, &member, MAX_OFFSET + 1),
            ),
            3 => (member.clone(), hostile_fetch(epoch, "someone else", 0)),
            _ => (
                member.clone(),
                Message::VoteResponse(VoteResponse {
                    pre_vote: false,
                    candidate_epoch: epoch,
                    epoch: u64::MAX,
                    leader_id: None,
                    granted: true,
                    voter_id: member.clone(),
                    voter_directory_id: String::new(),
                }),
            ),
        };
        let saved = self.nodes[index].disk.quorum_state();
        let now = self.now;
        let result = self.nodes[index]
            .replica
            .as_mut()
            .unwrap()
            .step(now, &from, message);
        match result {
            Err(ReplicationError::InvalidMessage { .. }) => {
                self.count("hostile messages refused");
            }
            other => self.fail(&format!(
                "{target} took a hostile message from {from}: {other:?}"
            )),
        }
        if self.nodes[index].disk.quorum_state() != saved {
            self.fail(&format!(
                "{target} saved state because of a hostile message"
            ));
        }
        self.collect_outbox(index, None);
    }

    /// The checkers, after every event.
    fn check(&mut self) {
        self.check_leaders();
        self.check_committed();
        self.check_acknowledged();
        self.check_protected();
    }

    /// At most one leader per epoch; a new leader holds every committed record; no node leads
    /// or is counted with another directory than its committed binding.
    fn check_leaders(&mut self) {
        for index in 0..self.nodes.len() {
            let node = &self.nodes[index];
            let Some(replica) = &node.replica else {
                continue;
            };
            let Some(epoch) = replica.leader_epoch() else {
                continue;
            };
            let new = match self.leaders.get(&epoch) {
                Some(leader) if *leader != node.id => {
                    let message = format!("two leaders in epoch {epoch}: {leader} and {}", node.id);
                    self.fail(&message);
                }
                Some(_) => false,
                None => true,
            };
            if new {
                self.leaders.insert(epoch, node.id.clone());
                if !self.bound_as_committed(index) {
                    self.fail(&format!(
                        "{} leads epoch {epoch} with a directory other than its binding",
                        node.id
                    ));
                }
                let log = replica.log();
                let start = log.start_offset();
                if log.end_offset() < self.committed.len() as u64 {
                    self.fail(&format!(
                        "{} leads epoch {epoch} with its log ending at {} before the committed end {}",
                        node.id,
                        log.end_offset(),
                        self.committed.len()
                    ));
                }
                for offset in start..self.committed.len() as u64 {
                    if !self.holds(index, offset, false) {
                        self.fail(&format!(
                            "{} leads epoch {epoch} without committed offset {offset}",
                            node.id
                        ));
                    }
                }
            }
            for progress in replica.status().replicas {
                if !progress.voter {
                    continue;
                }
                // Counted with a directory that neither the committed voter set nor the
                // leader's own (possibly newer) one binds it to.
                if let Some(bound) = self.committed_bindings.get(&progress.id)
                    && *bound != progress.directory_id
                    && replica.directories().get(&progress.id) != Some(&progress.directory_id)
                {
                    self.fail(&format!(
                        "the leader {} counts {} fetching from directory {} though it is bound to {bound}",
                        node.id, progress.id, progress.directory_id
                    ));
                }
            }
        }
    }

    /// Whether `index` holds `offset` as committed (durably, if `durable`).
    fn holds(&self, index: usize, offset: u64, durable: bool) -> bool {
        self.disk_holds(&self.nodes[index].disk, offset, durable)
    }

    /// Whether `disk` holds `offset` as committed (durably, if `durable`).
    fn disk_holds(&self, disk: &MemDisk, offset: u64, durable: bool) -> bool {
        let Some(committed) = self.committed.get(offset as usize) else {
            return false;
        };
        let record = if durable {
            disk.durable_record_at(offset)
        } else {
            disk.record_at(offset)
        };
        record.is_some_and(|r| r.leader_epoch == committed.epoch && r.value == committed.value)
    }

    /// Every node's log below its high watermark agrees with the committed log; an offset seen
    /// committed for the first time is on a majority of the voters that count.
    fn check_committed(&mut self) {
        for index in 0..self.nodes.len() {
            let Some(replica) = &self.nodes[index].replica else {
                continue;
            };
            let high_watermark = replica.high_watermark();
            let start = replica.log().start_offset();
            let voters = replica.voters().to_vec();
            let bindings = replica.directories().clone();
            let from = self.nodes[index].checked_to.max(start);
            for offset in from..high_watermark {
                let Some(record) = self.nodes[index].disk.record_at(offset) else {
                    self.fail(&format!(
                        "{} has no record at committed offset {offset}",
                        self.nodes[index].id
                    ));
                };
                match self.committed.get(offset as usize) {
                    Some(committed)
                        if committed.epoch != record.leader_epoch
                            || committed.value != record.value =>
                    {
                        self.fail(&format!(
                            "committed offset {offset} changed: {:?} of epoch {} then {:?} of epoch {} on {}",
                            committed.value,
                            committed.epoch,
                            record.value,
                            record.leader_epoch,
                            self.nodes[index].id
                        ))
                    }
                    Some(_) => {}
                    None if offset as usize == self.committed.len() => {
                        self.committed.push(Committed {
                            epoch: record.leader_epoch,
                            value: record.value.clone(),
                        });
                        self.check_first_commit(offset, &voters, &bindings);
                        if record.record_type == LEADER_CHANGE_RECORD_TYPE
                            || record.record_type == VOTERS_RECORD_TYPE
                        {
                            self.commit_voter_set(offset, &record.value);
                        }
                    }
                    None => self.fail(&format!(
                        "{} commits offset {offset} past the committed end {}",
                        self.nodes[index].id,
                        self.committed.len()
                    )),
                }
            }
            let node = &mut self.nodes[index];
            node.checked_to = high_watermark.max(node.checked_to);
        }
    }

    /// A newly committed offset is held durably by a majority of `voters`, each counted only
    /// with the directory `bindings` binds it to.
    fn check_first_commit(
        &self,
        offset: u64,
        voters: &[NodeId],
        bindings: &BTreeMap<NodeId, String>,
    ) {
        let bound_and_holds = |disk: &MemDisk, id: &str| {
            bound(disk, id, bindings) && self.disk_holds(disk, offset, true)
        };
        let holders = voters
            .iter()
            .filter(|id| {
                let node = &self.nodes[self.index_of(id)];
                bound_and_holds(&node.disk, id)
                    || node
                        .lost_disk
                        .as_ref()
                        .is_some_and(|lost| bound_and_holds(lost, id))
            })
            .count();
        if holders <= voters.len() / 2 {
            for id in voters {
                let index = self.index_of(id);
                let disk = &self.nodes[index].disk;
                eprintln!(
                    "{id}: dir {:?} bound {:?} durable {:?} any {:?} start {}",
                    disk.quorum_state().map(|s| s.directory_id),
                    bindings.get(id),
                    disk.durable_record_at(offset)
                        .map(|r| (r.leader_epoch, r.value)),
                    disk.record_at(offset).map(|r| (r.leader_epoch, r.value)),
                    disk.start()
                );
            }
            self.fail(&format!(
                "offset {offset} was committed while {holders} of the voters {voters:?} held it durably"
            ));
        }
    }

    /// Takes in force the voter set of a committed control record, checking that no binding
    /// changed without the voter being removed first.
    fn commit_voter_set(&mut self, offset: u64, value: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(value) else {
            return;
        };
        let (Ok(mut voters), Ok(bindings)) = (
            quorum::id_list(&value["voters"]),
            quorum::directory_map(&value["directories"]),
        ) else {
            return;
        };
        voters.sort();
        for voter in &voters {
            if !self.committed_voters.contains(voter) {
                continue;
            }
            if let Some(before) = self.committed_bindings.get(voter)
                && bindings.get(voter) != Some(before)
            {
                self.fail(&format!(
                    "the voter set committed at {offset} changes the binding of {voter} from {before} to {:?} without removing it first",
                    bindings.get(voter)
                ));
            }
        }
        self.committed_voters = voters;
        self.committed_bindings = bindings;
    }

    /// Produces whose node committed them in the epoch they were appended in are acknowledged;
    /// those whose node moved on are forgotten (their outcome is unknown to the client).
    fn check_acknowledged(&mut self) {
        let nodes = &self.nodes;
        let mut acknowledged = Vec::new();
        self.pending.retain(|pending| {
            let Some(replica) = &nodes[pending.node].replica else {
                return false;
            };
            if replica.leader_epoch() != Some(pending.epoch) {
                return false;
            }
            if replica.high_watermark() > pending.offset {
                acknowledged.push((pending.offset, pending.value.clone()));
                return false;
            }
            true
        });
        for (offset, value) in acknowledged {
            if self
                .committed
                .get(offset as usize)
                .is_none_or(|c| c.value != value)
            {
                self.fail(&format!(
                    "acknowledged {value:?} at {offset} is not the committed record there"
                ));
            }
            self.acknowledged.push((offset, value));
        }
    }

    /// The newest committed records are protected by the committed voter set: fewer than a
    /// majority of its voters (with the directory they are bound to) could vote for a
    /// candidate without them.
    fn check_protected(&mut self) {
        let generations: Vec<u64> = self.nodes.iter().map(|n| n.disk.generation()).collect();
        let key = (generations, self.committed.len());
        if self.last_protection_check == key {
            return;
        }
        self.last_protection_check = key;
        let end = self.committed.len() as u64;
        let voters = self.committed_voters.clone();
        let majority = voters.len() / 2 + 1;
        for offset in end.saturating_sub(PROTECTED_WINDOW)..end {
            let exposed: Vec<&NodeId> = voters
                .iter()
                .filter(|id| {
                    let index = self.index_of(id);
                    self.bound_as_committed(index) && !self.protects(index, offset)
                })
                .collect();
            if exposed.len() >= majority {
                self.fail(&format!(
                    "committed offset {offset} is not protected by a majority of {voters:?}: {exposed:?} would vote without it"
                ));
            }
        }
    }

    /// Whether `index`'s vote protects committed `offset`: the log position it votes with
    /// (what survives a crash) is past the record's, so it refuses candidates that end before
    /// it. It holds the record, or held it and removed it by retention, or emptied its log to
    /// copy the leader's from a start past it (its log keeps the start's epoch).
    fn protects(&self, index: usize, offset: u64) -> bool {
        self.nodes[index].disk.durable_position()
            >= (self.committed[offset as usize].epoch, offset + 1)
    }

    fn run(&mut self, millis: u64) {
        let faulty_until = self.now + millis;
        while self.now < faulty_until {
            self.step();
        }
        // Heal: faults stop, everyone up and connected, then a new record must commit
        // everywhere.
        self.faults_on = false;
        self.faults.loss = self.faults.loss.min(5);
        for node in &mut self.nodes {
            node.isolated_until = 0;
            node.restart_at = 0;
            node.disk.fail_saves(false);
        }
        let deadline = self.now + 30_000;
        let mut proposed: Option<Bytes> = None;
        loop {
            if self.now > deadline {
                if self.quorum_lost() {
                    // Disk losses (or one racing a voter change) left the voter set without a
                    // majority of its disks: no protocol can elect a leader, it needs an
                    // operator. Safety was checked all along.
                    self.count("seeds whose voter set lost a majority of its disks");
                    break;
                }
                self.fail("no progress within 30 s after the faults stopped");
            }
            self.step();
            let Some(value) = &proposed else {
                proposed = self.writes.last().map(|write| write.value.clone());
                continue;
            };
            if let Some((offset, _)) = self.acknowledged.iter().find(|(_, v)| v == value) {
                let offset = *offset;
                let all_have = self.nodes.iter().all(|node| {
                    node.replica
                        .as_ref()
                        .is_some_and(|r| r.high_watermark() > offset)
                });
                if all_have {
                    break;
                }
            } else if !self.pending.iter().any(|p| p.value == *value)
                && !self.writes.iter().any(|w| w.value == *value)
            {
                proposed = None; // lost with a leader change; produce again
            }
        }
        for node in &self.nodes {
            if let Some(replica) = &node.replica {
                add_counters(&mut self.counters, replica.counters());
            }
        }
        let lost: u64 = self.nodes.iter().map(|n| n.disk.lost_unsynced()).sum();
        *self
            .stats
            .entry("unsynced records lost in crashes")
            .or_default() += lost;
    }
}

/// A fetch from `replica_id` at `fetch_offset` (impossible past `MAX_OFFSET`, or sent as someone
/// else than its sender).
fn hostile_fetch(epoch: u64, replica_id: &str, fetch_offset: u64) -> Message {
    Message::FetchRequest(FetchRequest {
        epoch,
        replica_id: replica_id.into(),
        fetch_offset,
        log_start_offset: 0,
        last_fetched_epoch: 0,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
        fetch_id: 1,
        directory_id: String::new(),
    })
}

/// Whether `disk`'s data directory is the one `bindings` binds `id` to (or none is bound).
fn bound(disk: &MemDisk, id: &str, bindings: &BTreeMap<NodeId, String>) -> bool {
    let directory = disk.quorum_state().map(|s| s.directory_id);
    bindings
        .get(id)
        .is_none_or(|bound| directory.as_deref() == Some(bound.as_str()))
}

fn add_counters(total: &mut ReplicaCounters, more: &ReplicaCounters) {
    total.pre_votes += more.pre_votes;
    total.elections += more.elections;
    total.leaderships += more.leaderships;
    total.bootstraps += more.bootstraps;
    total.truncations += more.truncations;
    total.resets += more.resets;
    total.hand_overs += more.hand_overs;
    total.voter_sets += more.voter_sets;
    total.retentions += more.retentions;
    total.refused_messages += more.refused_messages;
    total.refused_votes += more.refused_votes;
    total.fetch_failures += more.fetch_failures;
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("PROGLOG_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("PROGLOG_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    (1..=count).collect()
}

#[test]
fn safety_holds_under_every_fault_the_simulation_injects() {
    let mut acknowledged = 0;
    let mut epochs = 0;
    let mut counters = ReplicaCounters::default();
    let mut stats: BTreeMap<&'static str, u64> = BTreeMap::new();
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        sim.run(6_000);
        acknowledged += sim.acknowledged.len();
        epochs += sim.leaders.len();
        add_counters(&mut counters, &sim.counters);
        for (what, count) in sim.stats {
            *stats.entry(what).or_default() += count;
        }
    }
    let mut report = format!(
        "simulation of {} seeds: {acknowledged} acknowledged records, {epochs} epochs\n",
        seeds.len()
    );
    for (what, count) in &stats {
        let _ = writeln!(report, "  faults: {what}: {count}");
    }
    let ReplicaCounters {
        pre_votes,
        elections,
        leaderships,
        bootstraps,
        truncations,
        resets,
        hand_overs,
        voter_sets,
        retentions,
        refused_messages,
        refused_votes,
        fetch_failures,
    } = counters;
    let _ = writeln!(
        report,
        "  protocol: {pre_votes} pre-vote rounds, {elections} elections, {leaderships} leaders \
         ({bootstraps} first elections), {truncations} diverging truncations, {resets} resets \
         to the leader's start, {hand_overs} hand-overs, {voter_sets} voter sets put in force, \
         {retentions} retention passes, {refused_messages} messages and {refused_votes} votes \
         refused, {fetch_failures} failed fetches"
    );
    eprint!("{report}");
    // The simulation must exercise what it claims to: records committed, leaders replaced,
    // and (over the full run) every fault and rare branch.
    assert!(acknowledged > 0 && epochs > 0, "{report}");
    if seeds.len() >= 200 {
        for (what, count) in [
            ("diverging truncations", truncations),
            ("resets", resets),
            ("hand-overs", hand_overs),
            ("voter sets", voter_sets),
            ("retention passes", retentions),
        ] {
            assert!(count > 0, "no {what} in {} seeds\n{report}", seeds.len());
        }
        for what in [
            "disks lost",
            "crashes part-way through a reset",
            "crashes during a quorum-state save",
            "quorum-state saves that failed (the node stops)",
            "hostile messages refused",
            "messages delivered to a stale address",
            "graceful shutdowns",
            "leadership transfers asked for",
        ] {
            assert!(
                stats.get(what).is_some_and(|&n| n > 0),
                "no {what} in {} seeds\n{report}",
                seeds.len()
            );
        }
    }
}

#[test]
fn a_single_node_cluster_leads_at_once_and_commits_what_it_appends() {
    let disk = MemDisk::default();
    let mut replica = Replica::new(
        ReplicaConfig::new("solo"),
        disk.log(),
        disk.store(),
        vec!["solo".into()],
        0,
    )
    .unwrap();
    assert_eq!(replica.leader_epoch(), Some(1));
    let info = replica.propose(0, &[Record::new(b"x", 1)]).unwrap();
    assert!(replica.high_watermark() > info.base_offset);
    assert_eq!(
        info.base_offset, 0,
        "a single node writes no leader-change record"
    );
}
