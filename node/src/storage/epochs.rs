//! The leader-epoch cache: for each leader epoch in the log, the offset where it starts.
//!
//! Replication asks "where does epoch E end in your log?" to find where a follower diverged
//! from the leader (KIP-595's `epoch_end_offset`). The cache is persisted as a checkpoint file
//! whenever a new epoch starts (rare: once per election), clamped to the log on open, and
//! rebuilt from batch headers if the file is missing or damaged.

/// Epoch start offsets, ascending in both epoch and offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(u64, u64)>,
}

impl EpochCache {
    /// The latest epoch, if any batch has been written.
    pub fn latest(&self) -> Option<u64> {
        self.entries.last().map(|&(epoch, _)| epoch)
    }

    /// The epoch of the record at `offset`, if the cache covers it.
    pub fn epoch_at(&self, offset: u64) -> Option<u64> {
        let i = self
            .entries
            .partition_point(|&(_, start)| start <= offset)
            .checked_sub(1)?;
        Some(self.entries[i].0)
    }

    /// Records that `epoch` starts at `start_offset`. Returns true when that is news (a new,
    /// higher epoch), which the caller persists.
    pub fn assign(&mut self, epoch: u64, start_offset: u64) -> bool {
        match self.entries.last() {
            Some(&(latest, _)) if epoch <= latest => false,
            _ => {
                self.entries.push((epoch, start_offset));
                true
            }
        }
    }

    /// Takes back the latest [`Epochs::assign`] (its persistence failed).
    pub fn unassign_latest(&mut self) {
        self.entries.pop();
    }

    /// The largest epoch `<= epoch` in the log and the offset where it ends (the start of the
    /// next epoch, or `log_end`). `None` when the log holds no such epoch.
    pub fn end_offset_for(&self, epoch: u64, log_end: u64) -> Option<(u64, u64)> {
        let i = self
            .entries
            .partition_point(|&(e, _)| e <= epoch)
            .checked_sub(1)?;
        let end = self.entries.get(i + 1).map_or(log_end, |&(_, start)| start);
        Some((self.entries[i].0, end))
    }

    /// Forgets epochs that start at or after `offset` (the log's tail was truncated there).
    pub fn truncate_from_end(&mut self, offset: u64) {
        self.entries.retain(|&(_, start)| start < offset);
    }

    /// Moves the start of the log to `offset`: epochs that ended before it are forgotten and the
    /// one spanning it now starts there.
    pub fn truncate_from_start(&mut self, offset: u64) {
        let keep_from = self
            .entries
            .partition_point(|&(_, start)| start <= offset)
            .saturating_sub(1);
        self.entries.drain(..keep_from);
        if let Some(first) = self.entries.first_mut() {
            first.1 = first.1.max(offset);
        }
    }

    /// Serializes for the checkpoint file: `count u32 | (epoch u64, start u64)*`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.entries.len() * 16);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (epoch, start) in &self.entries {
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&start.to_le_bytes());
        }
        out
    }

    /// Parses what `encode` wrote; `None` if it is malformed or out of order.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let body = bytes.get(4..)?;
        if body.len() != count.checked_mul(16)? {
            return None;
        }
        let mut cache = EpochCache::default();
        for chunk in body.chunks_exact(16) {
            let epoch = u64::from_le_bytes(chunk[..8].try_into().ok()?);
            let start = u64::from_le_bytes(chunk[8..].try_into().ok()?);
            if cache
                .entries
                .last()
                .is_some_and(|&(e, s)| e >= epoch || s > start)
            {
                return None;
            }
            cache.entries.push((epoch, start));
        }
        Some(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_follow_kip_595() {
        let mut cache = EpochCache::default();
        assert!(cache.assign(1, 0));
        assert!(!cache.assign(1, 5));
        assert!(cache.assign(3, 10));
        assert!(cache.assign(4, 20));
        assert_eq!(cache.end_offset_for(0, 30), None);
        assert_eq!(cache.end_offset_for(1, 30), Some((1, 10)));
        assert_eq!(cache.end_offset_for(2, 30), Some((1, 10)));
        assert_eq!(cache.end_offset_for(3, 30), Some((3, 20)));
        assert_eq!(cache.end_offset_for(9, 30), Some((4, 30)));
    }

    #[test]
    fn truncation_from_both_ends() {
        let mut cache = EpochCache::default();
        cache.assign(1, 0);
        cache.assign(2, 10);
        cache.assign(3, 20);
        let mut tail = cache.clone();
        tail.truncate_from_end(20);
        assert_eq!(tail.latest(), Some(2));
        tail.truncate_from_end(10);
        assert_eq!(tail.latest(), Some(1));
        let mut head = cache.clone();
        head.truncate_from_start(15);
        assert_eq!(head.end_offset_for(2, 30), Some((2, 20)));
        assert_eq!(head.end_offset_for(1, 30), None);
        assert_eq!(EpochCache::decode(&head.encode()), Some(head));
    }
}
