//! Where peers are, for replication: addresses given up front, then whatever gossip knows.

use std::collections::BTreeMap;

use super::Discovery;
use crate::replication::NodeId;
use crate::replication::driver::PeerDirectory;

/// Static addresses (`--peers`) first, gossip for the rest.
#[derive(Debug, Clone)]
pub struct ClusterDirectory {
    static_peers: BTreeMap<NodeId, String>,
    gossip: Option<Discovery>,
}

impl ClusterDirectory {
    /// A directory over `static_peers` (this node included) and, if on, gossip.
    pub fn new(static_peers: BTreeMap<NodeId, String>, gossip: Option<Discovery>) -> Self {
        ClusterDirectory {
            static_peers,
            gossip,
        }
    }
}

impl PeerDirectory for ClusterDirectory {
    fn rpc_addr(&self, id: &str) -> Option<String> {
        self.static_peers.get(id).cloned().or_else(|| {
            self.gossip
                .as_ref()
                .and_then(|gossip| gossip.rpc_addr_of(id))
        })
    }

    /// The live members as gossip sees them; the static list when gossip is off or knows
    /// only this node (a cluster configured by `--peers` alone).
    fn members(&self) -> Vec<(NodeId, String)> {
        let alive: Vec<super::Member> = self
            .gossip
            .as_ref()
            .map(|gossip| {
                gossip
                    .members()
                    .into_iter()
                    .filter(|member| member.status == super::MemberStatus::Alive)
                    .collect()
            })
            .unwrap_or_default();
        if alive.len() <= 1 {
            return self
                .static_peers
                .iter()
                .map(|(id, addr)| (id.clone(), addr.clone()))
                .collect();
        }
        alive
            .into_iter()
            .map(|member| {
                let addr = self
                    .static_peers
                    .get(&member.id)
                    .cloned()
                    .unwrap_or(member.rpc_addr);
                (member.id, addr)
            })
            .collect()
    }
}
