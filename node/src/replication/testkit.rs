//! Test stand-ins for a replica's disk and network, shared by the scenario tests
//! (`replication::tests`) and the randomized simulation (`replication::sim`).
//!
//! [`MemDisk`] holds one node's log and quorum state in memory and models what a real disk
//! does to them: an append is only written until it is synced (a crash loses the unsynced
//! tail), retention moves the log's start, `reset_to` runs in steps that a crash can cut short
//! (as the storage engine's does: the new start first, then the segments oldest first), any
//! operation can be the one during which the power goes out, and a quorum-state save can fail
//! without a crash (an I/O error the node only notices by the error). A wiped disk is a new
//! `MemDisk`.
//!
//! [`Net`] is a hand-driven network of replicas for scenario tests: messages are delivered in
//! order, and a test can cut links, send a node's mail to another node (a stale address) and
//! crash, wipe and restart nodes.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

use super::error::ReplicationError;
use super::log::ReplicaLog;
use super::messages::{Message, NodeId};
use super::quorum::{QuorumState, QuorumStore};
use super::replica::{Replica, ReplicaConfig};
use crate::storage::{
    ATTR_CONTROL, AppendInfo, Batch, Record, StorageError, StoredRecord, encode_batch,
};

const MAX_BYTES: u32 = 1 << 20;

/// One node's disk: its log and its quorum state.
#[derive(Debug, Clone, Default)]
pub struct MemDisk(Rc<RefCell<Disk>>);

#[derive(Debug, Default)]
struct Disk {
    /// Batches in offset order. After a `reset_to` cut short by a crash, some may lie wholly
    /// below `start`; they are not part of the log.
    batches: Vec<Batch>,
    /// The first offset of the log.
    start: u64,
    /// The epoch of the record before `start`.
    start_epoch: u64,
    /// A reset to this start was under way (its intent saved): a restart finishes it, as the
    /// engine's open does.
    resetting: Option<(u64, u64)>,
    /// Offsets below this survive a crash.
    durable: u64,
    quorum: Option<QuorumState>,
    /// Operations left before the power goes out during the next one.
    crash_in: Option<u32>,
    /// The power is out: every operation fails until [`MemDisk::restart`].
    down: bool,
    /// Quorum-state saves fail (an I/O error), the disk stays up.
    failing_saves: bool,
    /// The last operation the power went out in, for the simulation's counters.
    crashed_in: Option<&'static str>,
    /// Records a crash lost because they were not synced yet, in all.
    lost_unsynced: u64,
    /// Bumped by every change, so a checker can skip a disk that did not change.
    generation: u64,
}

impl Disk {
    /// Every operation starts here: it fails when the power is out, or goes out now.
    fn op(&mut self, name: &'static str) -> Result<(), StorageError> {
        self.generation += 1;
        if self.down {
            return Err(StorageError::Stopped);
        }
        match self.crash_in {
            Some(0) => {
                self.down = true;
                self.crash_in = None;
                self.crashed_in = Some(name);
                Err(StorageError::Stopped)
            }
            Some(left) => {
                self.crash_in = Some(left - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The batches that are part of the log.
    fn visible(&self) -> &[Batch] {
        let from = self
            .batches
            .partition_point(|batch| batch.next_offset() <= self.start);
        &self.batches[from..]
    }

    fn end(&self) -> u64 {
        self.visible().last().map_or(self.start, Batch::next_offset)
    }

    fn push(&mut self, batch: Batch) -> Result<(), StorageError> {
        let end = self.end();
        if batch.base_offset() != end {
            return Err(StorageError::NonContiguousBatch {
                expected: end,
                found: batch.base_offset(),
            });
        }
        if let Some(last) = self.visible().last()
            && batch.leader_epoch() < last.leader_epoch()
        {
            return Err(StorageError::EpochRegression {
                epoch: batch.leader_epoch(),
                latest: last.leader_epoch(),
            });
        }
        // Leftovers of a cut-short reset are gone once the log grows past them.
        let start = self.start;
        self.batches.retain(|old| old.next_offset() > start);
        self.batches.push(batch);
        Ok(())
    }
}

impl MemDisk {
    /// The log on this disk.
    pub fn log(&self) -> MemLog {
        MemLog(self.clone())
    }

    /// The quorum state on this disk.
    pub fn store(&self) -> MemStore {
        MemStore(self.clone())
    }

    /// The power goes out during the operation after the next `ops` ones.
    pub fn crash_after(&self, ops: u32) {
        self.0.borrow_mut().crash_in = Some(ops);
    }

    /// Whether the power is out.
    pub fn is_down(&self) -> bool {
        self.0.borrow().down
    }

    /// The operation the power last went out in, once.
    pub fn take_crashed_in(&self) -> Option<&'static str> {
        self.0.borrow_mut().crashed_in.take()
    }

    /// Cuts the power now.
    pub fn power_cut(&self) {
        let mut disk = self.0.borrow_mut();
        disk.down = true;
        disk.crash_in = None;
    }

    /// Power comes back: what was not synced is gone, and operations work again.
    pub fn restart(&self) {
        let mut disk = self.0.borrow_mut();
        let durable = disk.durable;
        let end = disk.end();
        disk.lost_unsynced += end.saturating_sub(durable.max(disk.start));
        disk.batches.retain(|batch| batch.next_offset() <= durable);
        if let Some((offset, epoch)) = disk.resetting.take() {
            disk.batches.clear();
            disk.start = offset;
            disk.start_epoch = epoch;
            disk.durable = offset;
        }
        disk.generation += 1;
        disk.down = false;
        disk.crash_in = None;
        disk.failing_saves = false;
    }

    /// Quorum-state saves fail from now on (until [`MemDisk::restart`] or `false`).
    pub fn fail_saves(&self, failing: bool) {
        self.0.borrow_mut().failing_saves = failing;
    }

    /// Whether something written is not durable yet.
    pub fn has_unsynced(&self) -> bool {
        let disk = self.0.borrow();
        disk.durable < disk.end()
    }

    /// Makes everything written durable (the leader's sync task).
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut disk = self.0.borrow_mut();
        disk.op("sync")?;
        disk.durable = disk.end();
        Ok(())
    }

    /// The saved quorum state.
    pub fn quorum_state(&self) -> Option<QuorumState> {
        self.0.borrow().quorum.clone()
    }

    /// A number that changes whenever the disk does.
    pub fn generation(&self) -> u64 {
        self.0.borrow().generation
    }

    /// The log's first offset.
    pub fn start(&self) -> u64 {
        self.0.borrow().start
    }

    /// Forgets the epoch of the record before the log's start, as a log written by an earlier
    /// version, which did not keep it, reads.
    pub fn forget_start_epoch(&self) {
        self.0.borrow_mut().start_epoch = 0;
    }

    /// Records crashes lost because they were not synced, in all.
    pub fn lost_unsynced(&self) -> u64 {
        self.0.borrow().lost_unsynced
    }

    /// `(epoch of the last durable batch, durable end)`: the log position that survives a
    /// crash, what the node's vote compares candidates with.
    pub fn durable_position(&self) -> (u64, u64) {
        let disk = self.0.borrow();
        let durable = disk.durable.max(disk.start).min(disk.end());
        let epoch = disk
            .visible()
            .iter()
            .rev()
            .find(|batch| batch.next_offset() <= durable)
            .map_or(disk.start_epoch, Batch::leader_epoch);
        (epoch, durable)
    }

    /// The record at `offset`, if the log holds it.
    pub fn record_at(&self, offset: u64) -> Option<StoredRecord> {
        let disk = self.0.borrow();
        if offset < disk.start {
            return None;
        }
        let visible = disk.visible();
        let index = visible.partition_point(|batch| batch.next_offset() <= offset);
        visible
            .get(index)?
            .records()
            .find(|record| record.offset == offset)
    }

    /// The record at `offset` if it survives a crash.
    pub fn durable_record_at(&self, offset: u64) -> Option<StoredRecord> {
        (offset < self.0.borrow().durable)
            .then(|| self.record_at(offset))
            .flatten()
    }

    /// Appends a data batch without syncing it (the produce path: the node's sync task makes
    /// it durable later, see [`MemDisk::sync`]).
    pub fn append_unsynced(&self, epoch: u64, records: &[Record<'_>]) -> Result<u64, StorageError> {
        let mut disk = self.0.borrow_mut();
        disk.op("append")?;
        let batch = encode(disk.end(), epoch, 0, records)?;
        let base = batch.base_offset();
        disk.push(batch)?;
        Ok(base)
    }

    /// Deletes whole batches from the front while more than `keep` records remain, never
    /// reaching `limit` and never the last batch (the storage engine's retention by size,
    /// which never deletes the active segment, below a bound).
    pub fn remove_front(&self, keep: u64, limit: u64) -> Result<u64, StorageError> {
        let mut disk = self.0.borrow_mut();
        let end = disk.end();
        let mut new_start = disk.start;
        let visible = disk.visible();
        for batch in &visible[..visible.len().saturating_sub(1)] {
            if end - batch.next_offset() < keep || batch.next_offset() > limit {
                break;
            }
            new_start = batch.next_offset();
        }
        if new_start > disk.start {
            disk.op("retention")?;
            disk.start_epoch = disk
                .visible()
                .iter()
                .rev()
                .find(|batch| batch.next_offset() <= new_start)
                .map_or(disk.start_epoch, Batch::leader_epoch);
            disk.start = new_start;
            let start = disk.start;
            disk.batches.retain(|batch| batch.next_offset() > start);
        }
        Ok(disk.start)
    }
}

/// The log of a [`MemDisk`].
#[derive(Debug, Clone)]
pub struct MemLog(MemDisk);

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
        self.0.0.borrow().start
    }

    fn end_offset(&self) -> u64 {
        self.0.0.borrow().end()
    }

    fn durable_end(&self) -> u64 {
        let disk = self.0.0.borrow();
        disk.durable.max(disk.start).min(disk.end())
    }

    fn last_epoch(&self) -> u64 {
        let disk = self.0.0.borrow();
        disk.visible()
            .last()
            .map_or(disk.start_epoch, Batch::leader_epoch)
    }

    fn start_epoch(&self) -> u64 {
        self.0.0.borrow().start_epoch
    }

    fn epoch_end_offset(&self, epoch: u64) -> Option<(u64, u64)> {
        let disk = self.0.0.borrow();
        let batches = disk.visible();
        let Some(found) = batches
            .iter()
            .rev()
            .find(|batch| batch.leader_epoch() <= epoch)
            .map(Batch::leader_epoch)
        else {
            return (disk.start_epoch > 0 && disk.start_epoch <= epoch)
                .then_some((disk.start_epoch, disk.start));
        };
        let end = batches
            .iter()
            .find(|batch| batch.leader_epoch() > found)
            .map_or_else(|| disk.end(), Batch::base_offset);
        Some((found, end))
    }

    fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>, StorageError> {
        let disk = self.0.0.borrow();
        if disk.down {
            return Err(StorageError::Stopped);
        }
        let batches = disk.visible();
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
        let mut disk = self.0.0.borrow_mut();
        disk.op(if control { "append_control" } else { "append" })?;
        let batch = encode(
            disk.end(),
            epoch,
            if control { ATTR_CONTROL } else { 0 },
            records,
        )?;
        let info = AppendInfo {
            base_offset: batch.base_offset(),
            last_offset: batch.last_offset(),
        };
        disk.push(batch)?;
        // Synced before it returns, as the engine's `append` is under `always`.
        disk.durable = disk.end();
        Ok(info)
    }

    fn append_stays_in_page_cache(&self, _batches: &[Batch]) -> bool {
        // Nothing here runs on a thread pool; the answer changes nothing.
        false
    }

    fn append_fetched(&self, batches: &[Batch]) -> Result<(), StorageError> {
        let mut disk = self.0.0.borrow_mut();
        disk.op("append_fetched")?;
        for batch in batches {
            disk.push(batch.clone())?;
        }
        disk.durable = disk.end();
        Ok(())
    }

    fn truncate_suffix(&self, offset: u64) -> Result<(), StorageError> {
        let mut disk = self.0.0.borrow_mut();
        disk.op("truncate")?;
        if offset < disk.start {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start: disk.start,
                end: disk.end(),
            });
        }
        while let Some(last) = disk.batches.last() {
            if last.base_offset() >= offset {
                disk.batches.pop();
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
                disk.batches.pop();
                disk.batches.push(batch);
            } else {
                break;
            }
        }
        disk.durable = disk.durable.min(offset);
        Ok(())
    }

    fn reset_to(&self, offset: u64, epoch: u64) -> Result<(), StorageError> {
        // In steps, as the storage engine does it: the intent is saved first, then the old
        // batches go oldest first, then the intent is cleared. A restart finishes a reset cut
        // short.
        let disk = &self.0.0;
        disk.borrow_mut().op("reset_start")?;
        {
            let mut disk = disk.borrow_mut();
            disk.start = offset;
            disk.start_epoch = epoch;
            disk.resetting = Some((offset, epoch));
        }
        while !disk.borrow().batches.is_empty() {
            let mut disk = disk.borrow_mut();
            disk.op("reset_delete")?;
            disk.batches.remove(0);
        }
        let mut disk = disk.borrow_mut();
        disk.op("reset_done")?;
        disk.durable = offset;
        disk.resetting = None;
        Ok(())
    }
}

/// The quorum state of a [`MemDisk`].
#[derive(Debug, Clone)]
pub struct MemStore(MemDisk);

impl QuorumStore for MemStore {
    fn load(&self) -> Result<Option<QuorumState>, ReplicationError> {
        Ok(self.0.0.borrow().quorum.clone())
    }

    fn save(&mut self, state: &QuorumState) -> Result<(), ReplicationError> {
        let mut disk = self.0.0.borrow_mut();
        disk.op("save")?;
        if disk.failing_saves {
            return Err(ReplicationError::Storage(StorageError::Io {
                op: "write",
                path: "quorum-state".into(),
                source: std::io::Error::other("injected: the disk refused the write"),
            }));
        }
        disk.quorum = Some(state.clone());
        Ok(())
    }
}

/// A replica over a [`MemDisk`].
pub type MemReplica = Replica<MemLog, MemStore>;

/// One node of a [`Net`].
pub struct NetNode {
    /// Its disk.
    pub disk: MemDisk,
    /// The running replica, `None` while down.
    pub replica: Option<MemReplica>,
    /// How many times it was started: part of its seed, so a wiped node gets a new
    /// directory id.
    starts: u64,
}

/// A hand-driven network of replicas for scenario tests.
pub struct Net {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, NetNode>,
    /// Messages in flight, delivered in order: `(from, to, message, sent_by)`, where `from` is
    /// who the recipient takes it to be from and `sent_by` the node that really sent it.
    pub queue: VecDeque<(NodeId, NodeId, Message, NodeId)>,
    /// The clock, ms.
    pub now: u64,
    /// Links that lose every message, both ways.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Mail for the first node is delivered to the second (a stale address).
    pub misroute: BTreeMap<NodeId, NodeId>,
    initial_voters: Vec<NodeId>,
    election_timeout_ms: u64,
}

impl Net {
    /// Nodes `ids`, all of them started with `voters` as their initial voters.
    pub fn new(ids: &[&str], voters: &[&str]) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            now: 0,
            cut: BTreeSet::new(),
            misroute: BTreeMap::new(),
            initial_voters: voters.iter().map(|id| (*id).to_owned()).collect(),
            election_timeout_ms: 150,
        };
        for id in ids {
            net.nodes.insert(
                (*id).to_owned(),
                NetNode {
                    disk: MemDisk::default(),
                    replica: None,
                    starts: 0,
                },
            );
        }
        for id in ids {
            net.start(id);
        }
        net
    }

    /// The replica of `id` (which must be up).
    pub fn replica(&mut self, id: &str) -> &mut MemReplica {
        self.nodes
            .get_mut(id)
            .and_then(|node| node.replica.as_mut())
            .unwrap_or_else(|| panic!("{id} is down"))
    }

    /// The disk of `id`.
    pub fn disk(&self, id: &str) -> MemDisk {
        self.nodes[id].disk.clone()
    }

    /// Starts `id` over its disk.
    pub fn start(&mut self, id: &str) {
        let voters = self.initial_voters.clone();
        let all: Vec<NodeId> = self.nodes.keys().cloned().collect();
        let now = self.now;
        let timeout = self.election_timeout_ms;
        let node = self.nodes.get_mut(id).unwrap();
        node.disk.restart();
        node.starts += 1;
        let mut config = ReplicaConfig::new(id);
        config.election_timeout_ms = timeout;
        config.fetch_timeout_ms = 100;
        config.fetch_max_wait_ms = 0;
        config.fetch_max_bytes = 4096;
        config.seed = id.bytes().fold(node.starts * 7919, |seed, byte| {
            seed.wrapping_mul(31).wrapping_add(u64::from(byte))
        });
        let mut replica = Replica::new(config, node.disk.log(), node.disk.store(), voters, now)
            .unwrap_or_else(|err| panic!("{id} failed to start: {err}"));
        replica.set_known_peers(all);
        node.replica = Some(replica);
    }

    /// Stops `id` as a crash does: what it did not sync is lost.
    pub fn crash(&mut self, id: &str) {
        let node = self.nodes.get_mut(id).unwrap();
        node.replica = None;
        node.disk.power_cut();
    }

    /// The disk of `id` is replaced by an empty one (a lost volume); the node stays down.
    pub fn wipe(&mut self, id: &str) {
        self.crash(id);
        self.nodes.get_mut(id).unwrap().disk = MemDisk::default();
    }

    /// Cuts the links between `id` and every other node.
    pub fn isolate(&mut self, id: &str) {
        let others: Vec<NodeId> = self.nodes.keys().filter(|o| *o != id).cloned().collect();
        for other in others {
            self.cut.insert((id.to_owned(), other.clone()));
            self.cut.insert((other, id.to_owned()));
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Queues what `id` left in its outbox.
    pub fn collect(&mut self, id: &str) {
        let Some(replica) = self.nodes.get_mut(id).and_then(|n| n.replica.as_mut()) else {
            return;
        };
        for envelope in replica.take_outbox() {
            self.queue
                .push_back((id.to_owned(), envelope.to, envelope.message, id.to_owned()));
        }
    }

    /// Delivers one message; returns the error of the step, if any.
    ///
    /// Requests are calls: the answer goes back as coming from the node that was called, as
    /// the gRPC transport hands it to the caller, even when a stale address (`misroute`) made
    /// another node answer.
    pub fn deliver_one(&mut self) -> Option<Result<(), ReplicationError>> {
        let (from, called, message, sent_by) = self.queue.pop_front()?;
        let to = self
            .misroute
            .get(&called)
            .cloned()
            .unwrap_or(called.clone());
        if self.cut.contains(&(sent_by, to.clone())) {
            return Some(Ok(()));
        }
        let now = self.now;
        let Some(replica) = self.nodes.get_mut(&to).and_then(|n| n.replica.as_mut()) else {
            return Some(Ok(()));
        };
        let result = replica.step(now, &from, message);
        for envelope in replica.take_outbox() {
            let answer = matches!(
                envelope.message,
                Message::VoteResponse(_) | Message::FetchResponse(_)
            ) && envelope.to == from;
            let sender = if answer { called.clone() } else { to.clone() };
            self.queue
                .push_back((sender, envelope.to, envelope.message, to.clone()));
        }
        Some(result)
    }

    /// Delivers what is in flight now (what those steps send waits for the next round, one
    /// tick later); a failed step panics.
    pub fn deliver_round(&mut self) {
        for _ in 0..self.queue.len() {
            if let Some(Err(err)) = self.deliver_one() {
                panic!("a step failed at {} ms: {err}", self.now);
            }
        }
    }

    /// Advances the clock by `ms` in 5 ms ticks, delivering a round of messages after each.
    pub fn run(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.now < until {
            self.now += 5;
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for id in ids {
                let now = self.now;
                if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
                    replica
                        .tick(now)
                        .unwrap_or_else(|err| panic!("{id} failed a tick: {err}"));
                }
                self.collect(&id);
            }
            self.deliver_round();
        }
    }

    /// Runs until `done` holds, for at most `ms`; whether it did.
    pub fn run_until(&mut self, ms: u64, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let until = self.now + ms;
        while self.now < until {
            if done(self) {
                return true;
            }
            self.run(5);
        }
        done(self)
    }

    /// The node that leads, if exactly one up node believes it does.
    pub fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<&NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| {
                node.replica
                    .as_ref()
                    .is_some_and(|r| r.leader_epoch().is_some())
            })
            .map(|(id, _)| id)
            .collect();
        (leaders.len() == 1).then(|| leaders[0].clone())
    }

    /// Runs until one node leads; its id.
    pub fn elect(&mut self) -> NodeId {
        assert!(
            self.run_until(10_000, |net| net.leader().is_some()),
            "no leader within 10 s"
        );
        self.leader().unwrap()
    }

    /// Produces `value` on the leader `id` and runs until it is committed there; its offset.
    pub fn produce(&mut self, id: &str, value: &str) -> u64 {
        let now = self.now;
        let offset = self
            .replica(id)
            .propose(now, &[Record::new(value.as_bytes(), 1)])
            .unwrap_or_else(|err| panic!("produce on {id}: {err}"))
            .base_offset;
        self.collect(id);
        let committed = self.run_until(5_000, |net| {
            net.nodes[id]
                .replica
                .as_ref()
                .is_some_and(|r| r.high_watermark() > offset)
        });
        assert!(committed, "{value} at {offset} was not committed");
        offset
    }
}
