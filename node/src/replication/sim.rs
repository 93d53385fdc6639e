//! A deterministic simulation of a cluster of [`Replica`]s: an in-memory log and quorum store
//! per node (they survive a crash, as a disk does), and a network that loses, delays,
//! duplicates and reorders messages and can cut nodes off. Everything random comes from the
//! seed, so a failing seed replays exactly: `PROGLOG_SIM_SEED=<seed> cargo test -p
//! proglog-node --lib replication::sim`.
//!
//! After every step the checkers assert: at most one leader per epoch; a committed offset never
//! changes its record; every acknowledged record is on a majority; every replica's committed
//! prefix agrees with every other's. At the end the network heals and the cluster must commit a
//! new record (liveness).

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::Bytes;

use super::error::ReplicationError;
use super::log::ReplicaLog;
use super::messages::{Message, NodeId};
use super::quorum::{QuorumState, QuorumStore};
use super::replica::{Replica, ReplicaConfig, VoterChange};
use crate::storage::{
    ATTR_CONTROL, AppendInfo, Batch, Record, StorageError, StoredRecord, encode_batch,
};

const MAX_BYTES: u32 = 1 << 20;

/// A log in memory: a list of batches, all durable (the simulated disk never loses an fsync'd
/// write; the real engine's crash safety is tested in `storage`).
#[derive(Debug, Clone, Default)]
struct MemLog(Rc<RefCell<Vec<Batch>>>);

impl MemLog {
    fn record_at(&self, offset: u64) -> Option<StoredRecord> {
        let batches = self.0.borrow();
        let index = batches.partition_point(|batch| batch.next_offset() <= offset);
        let batch = batches.get(index)?;
        batch.records().find(|record| record.offset == offset)
    }

    fn push_checked(batches: &mut Vec<Batch>, batch: Batch) -> Result<(), StorageError> {
        let end = batches.last().map_or(0, Batch::next_offset);
        if batch.base_offset() != end {
            return Err(StorageError::NonContiguousBatch {
                expected: end,
                found: batch.base_offset(),
            });
        }
        if let Some(last) = batches.last()
            && batch.leader_epoch() < last.leader_epoch()
        {
            return Err(StorageError::EpochRegression {
                epoch: batch.leader_epoch(),
                latest: last.leader_epoch(),
            });
        }
        batches.push(batch);
        Ok(())
    }
}

fn encode(
    base: u64,
    epoch: u64,
    attributes: u16,
    records: &[Record<'_>],
) -> Result<Batch, StorageError> {
    let mut buf = Vec::new();
    encode_batch(
        &mut buf, base, epoch, attributes, records, MAX_BYTES, MAX_BYTES,
    )?;
    Ok(Batch::decode(Bytes::from(buf), MAX_BYTES).unwrap())
}

impl ReplicaLog for MemLog {
    fn start_offset(&self) -> u64 {
        0
    }

    fn end_offset(&self) -> u64 {
        self.0.borrow().last().map_or(0, Batch::next_offset)
    }

    fn durable_end(&self) -> u64 {
        self.end_offset()
    }

    fn last_epoch(&self) -> u64 {
        self.0.borrow().last().map_or(0, Batch::leader_epoch)
    }

    fn epoch_end_offset(&self, epoch: u64) -> Option<(u64, u64)> {
        let batches = self.0.borrow();
        let found = batches
            .iter()
            .rev()
            .find(|batch| batch.leader_epoch() <= epoch)?
            .leader_epoch();
        let end = batches
            .iter()
            .find(|batch| batch.leader_epoch() > found)
            .map_or_else(
                || batches.last().map_or(0, Batch::next_offset),
                Batch::base_offset,
            );
        Some((found, end))
    }

    fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>, StorageError> {
        let batches = self.0.borrow();
        let index = batches.partition_point(|batch| batch.next_offset() <= offset);
        let mut out = Vec::new();
        let mut bytes = 0;
        for batch in &batches[index..] {
            if !out.is_empty() && bytes + batch.as_bytes().len() > max_bytes {
                break;
            }
            bytes += batch.as_bytes().len();
            out.push(batch.clone());
        }
        Ok(out)
    }

    fn append(
        &self,
        epoch: u64,
        records: &[Record<'_>],
        control: bool,
    ) -> Result<AppendInfo, StorageError> {
        let base = self.end_offset();
        let batch = encode(base, epoch, if control { ATTR_CONTROL } else { 0 }, records)?;
        let info = AppendInfo {
            base_offset: batch.base_offset(),
            last_offset: batch.last_offset(),
        };
        MemLog::push_checked(&mut self.0.borrow_mut(), batch)?;
        Ok(info)
    }

    fn append_stays_in_page_cache(&self, _batches: &[Batch]) -> bool {
        // Nothing in the simulation runs on a thread pool; the answer changes nothing.
        false
    }

    fn append_fetched(&self, batches: &[Batch]) -> Result<(), StorageError> {
        let mut log = self.0.borrow_mut();
        for batch in batches {
            MemLog::push_checked(&mut log, batch.clone())?;
        }
        Ok(())
    }

    fn truncate_suffix(&self, offset: u64) -> Result<(), StorageError> {
        let mut log = self.0.borrow_mut();
        while let Some(last) = log.last() {
            if last.base_offset() >= offset {
                log.pop();
            } else if last.next_offset() > offset {
                let kept: Vec<StoredRecord> =
                    last.records().filter(|r| r.offset < offset).collect();
                let records: Vec<Record<'_>> = kept.iter().map(StoredRecord::as_record).collect();
                let attributes = if last.is_control() { ATTR_CONTROL } else { 0 };
                let batch = encode(
                    last.base_offset(),
                    last.leader_epoch(),
                    attributes,
                    &records,
                )?;
                log.pop();
                log.push(batch);
            } else {
                break;
            }
        }
        Ok(())
    }

    fn reset_to(&self, offset: u64) -> Result<(), StorageError> {
        // The simulation has no retention, so its logs always start at 0: the only start a
        // leader can name.
        if offset != 0 {
            return Err(StorageError::NonContiguousBatch {
                expected: 0,
                found: offset,
            });
        }
        self.0.borrow_mut().clear();
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct MemStore(Rc<RefCell<Option<QuorumState>>>);

impl QuorumStore for MemStore {
    fn load(&self) -> Result<Option<QuorumState>, ReplicationError> {
        Ok(self.0.borrow().clone())
    }

    fn save(&mut self, state: &QuorumState) -> Result<(), ReplicationError> {
        *self.0.borrow_mut() = Some(state.clone());
        Ok(())
    }
}

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
}

struct SimNode {
    id: NodeId,
    log: MemLog,
    store: MemStore,
    replica: Option<Replica<MemLog, MemStore>>,
    restart_at: u64,
    /// Offsets below this were already compared with the committed history.
    checked_to: u64,
    isolated_until: u64,
}

struct Pending {
    node: usize,
    epoch: u64,
    offset: u64,
    value: Bytes,
}

/// An acknowledged record and the voter set that acknowledged it.
struct Acknowledged {
    offset: u64,
    value: Bytes,
    voters: Vec<NodeId>,
}

/// Fault settings drawn per seed.
struct Faults {
    loss: u64,
    duplicate: u64,
    max_delay: u64,
    crash_per_mille: u64,
    isolate_per_mille: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    network: BTreeMap<(u64, u64), (usize, usize, Message)>,
    sequence: u64,
    faults: Faults,
    leaders: HashMap<u64, NodeId>,
    committed: Vec<Bytes>,
    pending: Vec<Pending>,
    acknowledged: Vec<Acknowledged>,
    next_value: u64,
    seed: u64,
    initial_voters: Vec<NodeId>,
    /// Per-mille chance per step of asking the leader for a voter change.
    churn_per_mille: u64,
    voter_changes: usize,
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
            crash_per_mille: rng.below(4),
            isolate_per_mille: rng.below(4),
        };
        let mut sim = Sim {
            rng,
            now: 0,
            nodes: Vec::new(),
            network: BTreeMap::new(),
            sequence: 0,
            faults,
            leaders: HashMap::new(),
            committed: Vec::new(),
            pending: Vec::new(),
            acknowledged: Vec::new(),
            next_value: 0,
            seed,
            initial_voters,
            churn_per_mille: if churn { 20 } else { 0 },
            voter_changes: 0,
        };
        for id in &ids {
            let log = MemLog::default();
            let store = MemStore::default();
            sim.nodes.push(SimNode {
                id: id.clone(),
                log,
                store,
                replica: None,
                restart_at: 0,
                checked_to: 0,
                isolated_until: 0,
            });
        }
        for index in 0..size {
            sim.start(index);
        }
        sim
    }

    fn start(&mut self, index: usize) {
        let voters = self.initial_voters.clone();
        let all: Vec<NodeId> = self.nodes.iter().map(|node| node.id.clone()).collect();
        let node = &mut self.nodes[index];
        let mut config = ReplicaConfig::new(node.id.clone());
        config.election_timeout_ms = 150;
        config.fetch_timeout_ms = 100;
        config.fetch_max_wait_ms = 0;
        config.fetch_max_bytes = 4096;
        config.seed = self
            .seed
            .wrapping_mul(31)
            .wrapping_add(index as u64 + self.now);
        let replica = Replica::new(
            config,
            node.log.clone(),
            node.store.clone(),
            voters,
            self.now,
        )
        .unwrap_or_else(|err| panic!("seed {}: {} failed to start: {err}", self.seed, node.id));
        let mut replica = replica;
        replica.set_known_peers(all);
        node.replica = Some(replica);
        node.checked_to = 0;
    }

    fn index_of(&self, id: &str) -> usize {
        self.nodes.iter().position(|node| node.id == id).unwrap()
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.nodes[a].isolated_until <= self.now && self.nodes[b].isolated_until <= self.now
    }

    fn collect_outbox(&mut self, from: usize) {
        let Some(replica) = self.nodes[from].replica.as_mut() else {
            return;
        };
        for envelope in replica.take_outbox() {
            let to = self.index_of(&envelope.to);
            if self.rng.chance(self.faults.loss) {
                continue;
            }
            let copies = if self.rng.chance(self.faults.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = 1 + self.rng.below(self.faults.max_delay);
                self.sequence += 1;
                self.network.insert(
                    (self.now + delay, self.sequence),
                    (from, to, envelope.message.clone()),
                );
            }
        }
    }

    fn fail(&self, what: &str) -> ! {
        for node in &self.nodes {
            match &node.replica {
                Some(replica) => eprintln!("{:?}", replica.status()),
                None => eprintln!("{} is down", node.id),
            }
        }
        panic!(
            "seed {} at {} ms: {what}\nreplay: PROGLOG_SIM_SEED={} cargo test -p proglog-node --lib replication::sim",
            self.seed, self.now, self.seed
        )
    }

    fn step(&mut self, faults_on: bool) {
        self.now += 5;
        // Deliver what is due.
        let due: Vec<(u64, u64)> = self
            .network
            .range(..(self.now + 1, 0))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            let Some((from, to, message)) = self.network.remove(&key) else {
                continue;
            };
            if !self.connected(from, to) {
                continue;
            }
            let from_id = self.nodes[from].id.clone();
            let now = self.now;
            if let Some(replica) = self.nodes[to].replica.as_mut()
                && let Err(err) = replica.step(now, &from_id, message)
            {
                self.fail(&format!("{} failed a step: {err}", self.nodes[to].id));
            }
            self.collect_outbox(to);
        }
        // Ticks, restarts, faults.
        for index in 0..self.nodes.len() {
            if self.nodes[index].replica.is_none() {
                if self.now >= self.nodes[index].restart_at {
                    self.start(index);
                }
                continue;
            }
            if faults_on && self.rng.below(1000) < self.faults.crash_per_mille {
                self.nodes[index].replica = None;
                self.nodes[index].restart_at = self.now + 50 + self.rng.below(2000);
                continue;
            }
            if faults_on && self.rng.below(1000) < self.faults.isolate_per_mille {
                self.nodes[index].isolated_until = self.now + 100 + self.rng.below(3000);
            }
            let now = self.now;
            if let Some(replica) = self.nodes[index].replica.as_mut()
                && let Err(err) = replica.tick(now)
            {
                self.fail(&format!("{} failed a tick: {err}", self.nodes[index].id));
            }
            self.collect_outbox(index);
        }
        // Check before a voter change, so records are judged by the voter set that committed
        // them.
        self.check();
        // Voter changes, one node at a time, at whoever believes it leads.
        if self.rng.below(1000) < self.churn_per_mille {
            let leader = (0..self.nodes.len()).find(|&i| {
                self.nodes[i]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.leader_epoch().is_some())
            });
            if let Some(leader) = leader {
                let pick = self.rng.below(self.nodes.len() as u64) as usize;
                let id = self.nodes[pick].id.clone();
                let now = self.now;
                let replica = self.nodes[leader].replica.as_mut().unwrap();
                let change = if replica.voters().contains(&id) {
                    VoterChange::Remove(id)
                } else {
                    VoterChange::Add(id)
                };
                match replica.change_voters(now, change, 50) {
                    Ok(_) => self.voter_changes += 1,
                    Err(ReplicationError::VoterChangeRefused { .. }) => {}
                    Err(err) => self.fail(&format!("voter change failed: {err}")),
                }
                self.collect_outbox(leader);
            }
        }
        // Clients produce to whoever believes it leads.
        if self.rng.chance(30) {
            let leaders: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| {
                    self.nodes[i]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.leader_epoch().is_some())
                })
                .collect();
            if !leaders.is_empty() {
                let node = leaders[self.rng.below(leaders.len() as u64) as usize];
                self.propose(node);
            }
        }
        self.check();
    }

    fn propose(&mut self, node: usize) -> Option<u64> {
        self.next_value += 1;
        let value = Bytes::from(format!("v{}", self.next_value));
        let now = self.now;
        let replica = self.nodes[node].replica.as_mut()?;
        let epoch = replica.leader_epoch()?;
        let record = Record::new(&value, 1);
        let info = replica
            .propose(now, &[record])
            .unwrap_or_else(|err| panic!("seed {}: propose failed: {err}", self.seed));
        self.collect_outbox(node);
        self.pending.push(Pending {
            node,
            epoch,
            offset: info.base_offset,
            value,
        });
        Some(info.base_offset)
    }

    fn check(&mut self) {
        // At most one leader per epoch.
        for node in &self.nodes {
            if let Some(replica) = &node.replica
                && let Some(epoch) = replica.leader_epoch()
            {
                let leader = self.leaders.entry(epoch).or_insert_with(|| node.id.clone());
                if *leader != node.id {
                    let message = format!("two leaders in epoch {epoch}: {leader} and {}", node.id);
                    self.fail(&message);
                }
            }
        }
        // Every committed prefix agrees, and a committed offset never changes its record.
        for index in 0..self.nodes.len() {
            let Some(replica) = &self.nodes[index].replica else {
                continue;
            };
            let high_watermark = replica.high_watermark();
            let log = self.nodes[index].log.clone();
            for offset in self.nodes[index].checked_to..high_watermark {
                let Some(record) = log.record_at(offset) else {
                    self.fail(&format!(
                        "{} has no record at committed offset {offset}",
                        self.nodes[index].id
                    ));
                };
                match self.committed.get(offset as usize) {
                    Some(value) if *value != record.value => self.fail(&format!(
                        "committed offset {offset} changed: {value:?} then {:?} on {}",
                        record.value, self.nodes[index].id
                    )),
                    Some(_) => {}
                    None if offset as usize == self.committed.len() => {
                        self.committed.push(record.value.clone());
                    }
                    None => self.fail("committed offsets are not contiguous"),
                }
            }
            self.nodes[index].checked_to = high_watermark.max(self.nodes[index].checked_to);
        }
        // Acknowledge produces whose leader committed them in their epoch; forget those whose
        // leader moved on (their outcome is unknown to the client).
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
                acknowledged.push(Acknowledged {
                    offset: pending.offset,
                    value: pending.value.clone(),
                    voters: replica.voters().to_vec(),
                });
                return false;
            }
            true
        });
        for record in acknowledged {
            self.check_on_majority(&record);
            self.acknowledged.push(record);
        }
    }

    /// An acknowledged record is on a majority of the voters that acknowledged it.
    fn check_on_majority(&self, record: &Acknowledged) {
        let holders = self
            .nodes
            .iter()
            .filter(|node| record.voters.contains(&node.id))
            .filter(|node| {
                node.log
                    .record_at(record.offset)
                    .is_some_and(|stored| stored.value == record.value)
            })
            .count();
        if holders <= record.voters.len() / 2 {
            self.fail(&format!(
                "acknowledged {:?} at {} is on {holders} of the voters {:?}",
                record.value, record.offset, record.voters
            ));
        }
    }

    fn run(&mut self, millis: u64) {
        let faulty_until = self.now + millis;
        while self.now < faulty_until {
            self.step(true);
        }
        // Heal: everyone up and connected, then a new record must commit everywhere.
        self.faults.loss = self.faults.loss.min(5);
        for node in &mut self.nodes {
            node.isolated_until = 0;
            node.restart_at = 0;
        }
        let deadline = self.now + 20_000;
        let mut proposed: Option<(u64, Bytes)> = None;
        loop {
            if self.now > deadline {
                self.fail("no progress within 20 s after the faults stopped");
            }
            self.step(false);
            if proposed.is_none() {
                let leader = (0..self.nodes.len()).find(|&i| {
                    self.nodes[i]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.leader_epoch().is_some())
                });
                if let Some(leader) = leader
                    && let Some(offset) = self.propose(leader)
                {
                    proposed = Some((offset, Bytes::from(format!("v{}", self.next_value))));
                }
            }
            if let Some((offset, value)) = &proposed {
                if self
                    .acknowledged
                    .iter()
                    .any(|a| a.offset == *offset && a.value == *value)
                {
                    let all_have = self.nodes.iter().all(|node| {
                        node.replica
                            .as_ref()
                            .is_some_and(|r| r.high_watermark() > *offset)
                    });
                    if all_have {
                        break;
                    }
                } else if !self.pending.iter().any(|p| p.offset == *offset) {
                    proposed = None; // lost with a leader change; produce again
                }
            }
        }
        for record in &self.acknowledged {
            if self.committed.get(record.offset as usize) != Some(&record.value) {
                self.fail(&format!(
                    "acknowledged {:?} at {} is not committed",
                    record.value, record.offset
                ));
            }
        }
    }
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
fn safety_holds_under_loss_delay_duplication_partitions_and_crashes() {
    let mut acknowledged = 0;
    let mut epochs = 0;
    let mut voter_changes = 0;
    for seed in seeds() {
        let mut sim = Sim::new(seed);
        sim.run(6_000);
        acknowledged += sim.acknowledged.len();
        epochs += sim.leaders.len();
        voter_changes += sim.voter_changes;
    }
    // The simulation must exercise something: records committed, leaders replaced, voters
    // changed.
    assert!(acknowledged > 0 && epochs > 0, "{acknowledged} {epochs}");
    eprintln!(
        "simulation: {acknowledged} acknowledged records, {epochs} epochs, {voter_changes} voter changes"
    );
}

#[test]
fn a_single_node_cluster_leads_at_once_and_commits_what_it_appends() {
    let mut sim = Sim { ..Sim::new(7) };
    // Replace with one node.
    sim.nodes.truncate(1);
    sim.nodes[0].log = MemLog::default();
    sim.nodes[0].store = MemStore::default();
    sim.initial_voters = vec![sim.nodes[0].id.clone()];
    sim.start(0);
    let replica = sim.nodes[0].replica.as_mut().unwrap();
    assert_eq!(replica.leader_epoch(), Some(1));
    let info = replica.propose(0, &[Record::new(b"x", 1)]).unwrap();
    assert!(replica.high_watermark() > info.base_offset);
}
