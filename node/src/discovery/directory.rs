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
    /// Where peers' peer listeners are: their RPC host and this port (`None`: peers serve on
    /// their RPC address), or the address given for them.
    peer_port: Option<u16>,
    peer_addrs: BTreeMap<NodeId, String>,
}

impl ClusterDirectory {
    /// A directory over `static_peers` (this node included) and, if on, gossip.
    pub fn new(static_peers: BTreeMap<NodeId, String>, gossip: Option<Discovery>) -> Self {
        ClusterDirectory {
            static_peers,
            gossip,
            peer_port: None,
            peer_addrs: BTreeMap::new(),
        }
    }

    /// Peers serve the peer service at their RPC host and `port`, or at the address
    /// `peer_addrs` gives for them.
    pub fn with_peer_listeners(mut self, port: u16, peer_addrs: BTreeMap<NodeId, String>) -> Self {
        self.peer_port = Some(port);
        self.peer_addrs = peer_addrs;
        self
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

    fn peer_addr(&self, id: &str) -> Option<String> {
        if let Some(addr) = self.peer_addrs.get(id) {
            return Some(addr.clone());
        }
        let rpc = self.rpc_addr(id)?;
        let Some(port) = self.peer_port else {
            return Some(rpc);
        };
        // host:port, [v6]:port: the host is everything before the last colon.
        let host = rpc.rsplit_once(':').map_or(rpc.as_str(), |(host, _)| host);
        Some(format!("{host}:{port}"))
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
