//! The quorum state a node persists before any transition takes effect: its epoch, whom it
//! voted for in that epoch, the leader it knows, and the voter set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::error::ReplicationError;
use super::messages::NodeId;
use crate::storage::{QUORUM_STATE_FILE, checkpoint};

/// The state file's format. Files without one were written before a node could be in a data
/// directory without knowing the voter set: one that took part in an election (epoch above 0)
/// knew its initial voters as the voter set, and reads so.
const FORMAT: u64 = 2;

/// What a node must remember across restarts to never vote twice in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    /// The latest epoch this node has seen.
    pub epoch: u64,
    /// The candidate this node voted for in `epoch`.
    pub voted_for: Option<NodeId>,
    /// The leader of `epoch`, once known.
    pub leader_id: Option<NodeId>,
    /// The first quorum's voters, sorted (`--initial-voters`). Later voter sets are in the log
    /// and in `voter_history`.
    pub voters: Vec<NodeId>,
    /// Voter sets from the log's leader-change and voter-change records, by offset, oldest
    /// first: the latest one in the log is in force (even before it commits), and a truncation
    /// drops the ones it removes.
    pub voter_history: Vec<VoterSet>,
    /// The log end when `voter_history` was last saved: on start, only records from here on
    /// need scanning for voter changes.
    pub history_end: u64,
    /// This node's data directory's identity: random, made when the directory was (a wiped
    /// volume gets a new one). The voter set binds each voter to the directory it first
    /// fetched with, so a node that lost its data is no longer that voter (KIP-853).
    pub directory_id: String,
}

/// A voter set and the offset of the record that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterSet {
    /// Offset of the control record.
    pub offset: u64,
    /// The voters, sorted.
    pub voters: Vec<NodeId>,
    /// The data directory each voter is bound to, for those bound so far.
    pub directories: BTreeMap<NodeId, String>,
}

impl QuorumState {
    /// A fresh state for a new cluster of `voters`, in a new data directory `directory_id`.
    pub fn bootstrap(mut voters: Vec<NodeId>, directory_id: String) -> QuorumState {
        voters.sort();
        voters.dedup();
        QuorumState {
            epoch: 0,
            voted_for: None,
            leader_id: None,
            voters,
            voter_history: Vec::new(),
            history_end: 0,
            directory_id,
        }
    }

    /// The JSON form kept on disk (readable by an operator with `tail -c +11`).
    pub fn encode(&self) -> Vec<u8> {
        json!({
            "format": FORMAT,
            "epoch": self.epoch,
            "voted_for": self.voted_for,
            "leader_id": self.leader_id,
            "voters": self.voters,
            "voter_history": self
                .voter_history
                .iter()
                .map(|set| json!({
                    "offset": set.offset,
                    "voters": set.voters,
                    "directories": set.directories,
                }))
                .collect::<Vec<_>>(),
            "history_end": self.history_end,
            "directory_id": self.directory_id,
        })
        .to_string()
        .into_bytes()
    }

    /// Parses what [`QuorumState::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<QuorumState, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        let epoch = value["epoch"]
            .as_u64()
            .ok_or("`epoch` is missing or not a number")?;
        let optional = |key: &str| -> Result<Option<NodeId>, String> {
            match &value[key] {
                Value::Null => Ok(None),
                Value::String(id) => Ok(Some(id.clone())),
                other => Err(format!("`{key}` is not a string: {other}")),
            }
        };
        let voters = id_list(&value["voters"]).map_err(|err| format!("`voters`: {err}"))?;
        let mut voter_history = Vec::new();
        if let Some(sets) = value["voter_history"].as_array() {
            for set in sets {
                let offset = set["offset"]
                    .as_u64()
                    .ok_or("a voter set's `offset` is missing")?;
                let voters =
                    id_list(&set["voters"]).map_err(|err| format!("`voter_history`: {err}"))?;
                let directories = directory_map(&set["directories"])
                    .map_err(|err| format!("`voter_history`: {err}"))?;
                voter_history.push(VoterSet {
                    offset,
                    voters,
                    directories,
                });
            }
        }
        if value["format"].is_null() && voter_history.is_empty() && epoch > 0 {
            voter_history.push(VoterSet {
                offset: 0,
                voters: voters.clone(),
                directories: BTreeMap::new(),
            });
        }
        Ok(QuorumState {
            epoch,
            voted_for: optional("voted_for")?,
            leader_id: optional("leader_id")?,
            voters,
            voter_history,
            history_end: value["history_end"].as_u64().unwrap_or(0),
            // Saved before directories were tracked: empty, and the replica makes one.
            directory_id: value["directory_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// A JSON object of node id to directory id (absent: none bound).
pub fn directory_map(value: &Value) -> Result<BTreeMap<NodeId, String>, String> {
    match value {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .iter()
            .map(|(id, directory)| match directory.as_str() {
                Some(directory) if !id.is_empty() && !directory.is_empty() => {
                    Ok((id.clone(), directory.to_owned()))
                }
                _ => Err(format!(
                    "directory of {id:?} is not a directory id: {directory}"
                )),
            })
            .collect(),
        other => Err(format!("directories are not an object: {other}")),
    }
}

/// A JSON list of node ids.
pub fn id_list(value: &Value) -> Result<Vec<NodeId>, String> {
    value
        .as_array()
        .ok_or("missing or not a list")?
        .iter()
        .map(|id| {
            id.as_str()
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("{id} is not a node id"))
        })
        .collect()
}

/// Where quorum state lives. `save` must be durable when it returns.
pub trait QuorumStore {
    /// The saved state, or `None` for a node that never saved one.
    fn load(&self) -> Result<Option<QuorumState>, ReplicationError>;
    /// Saves `state` atomically and durably.
    fn save(&mut self, state: &QuorumState) -> Result<(), ReplicationError>;
}

/// Quorum state in a checkpoint file (temp + fsync + rename) in the node's data directory.
#[derive(Debug, Clone)]
pub struct FileQuorumStore {
    dir: PathBuf,
}

impl FileQuorumStore {
    /// Keeps the state in `dir`.
    pub fn new(dir: impl AsRef<Path>) -> FileQuorumStore {
        FileQuorumStore {
            dir: dir.as_ref().to_path_buf(),
        }
    }
}

impl QuorumStore for FileQuorumStore {
    fn load(&self) -> Result<Option<QuorumState>, ReplicationError> {
        let Some(bytes) = checkpoint::read(&self.dir, QUORUM_STATE_FILE)? else {
            return Ok(None);
        };
        QuorumState::decode(&bytes)
            .map(Some)
            .map_err(|reason| ReplicationError::BadQuorumState {
                path: self.dir.join(QUORUM_STATE_FILE),
                reason,
            })
    }

    fn save(&mut self, state: &QuorumState) -> Result<(), ReplicationError> {
        checkpoint::write(&self.dir, QUORUM_STATE_FILE, &state.encode())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileQuorumStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let state = QuorumState {
            epoch: 7,
            voted_for: Some("b".into()),
            leader_id: None,
            voters: vec!["a".into(), "b".into(), "c".into()],
            voter_history: vec![VoterSet {
                offset: 12,
                voters: vec!["a".into(), "b".into()],
                directories: BTreeMap::from([("a".into(), "d0a".into())]),
            }],
            history_end: 40,
            directory_id: "d0b".into(),
        };
        store.save(&state).unwrap();
        assert_eq!(
            FileQuorumStore::new(dir.path()).load().unwrap(),
            Some(state)
        );
    }

    #[test]
    fn a_state_of_a_cluster_formed_before_formats_knows_its_initial_voters() {
        let legacy = br#"{"epoch": 3, "voted_for": "a", "leader_id": "a", "voters": ["a", "b", "c"], "voter_history": [], "history_end": 10, "directory_id": "d0a"}"#;
        let state = QuorumState::decode(legacy).unwrap();
        assert_eq!(state.voter_history.len(), 1);
        assert_eq!(state.voter_history[0].voters, ["a", "b", "c"]);
        // A node of this format that never learned the voter set stays so.
        let mut fresh = QuorumState::bootstrap(vec!["a".into(), "b".into()], "d0b".into());
        fresh.epoch = 2;
        let read = QuorumState::decode(&fresh.encode()).unwrap();
        assert!(read.voter_history.is_empty());
    }

    #[test]
    fn a_damaged_state_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        checkpoint::write(dir.path(), QUORUM_STATE_FILE, b"{\"epoch\": \"x\"}").unwrap();
        let err = FileQuorumStore::new(dir.path()).load().unwrap_err();
        assert!(err.to_string().contains("epoch"), "{err}");
    }
}
