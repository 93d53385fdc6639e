//! [`Member`], [`MemberStatus`], [`MembershipEvent`], and the [`MemberTable`] that keeps the
//! current view so reading it never waits on gossip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::RwLock;

/// A member as gossip knows it: enough for replication to dial it and to know whether it votes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node id (serf's node name): unique and stable across restarts.
    pub id: String,
    /// The gRPC address (`host:port`) its client and peer services listen on (tag `rpc`). Empty
    /// if the peer gossips no such tag, which a proglog node always does.
    pub rpc_addr: String,
    /// Its replication role, e.g. `voter` or `observer` (tag `role`).
    pub role: String,
    /// The address it gossips from: useful in logs, not for RPC.
    pub gossip_addr: SocketAddr,
    /// Whether it is alive as far as gossip can tell.
    pub status: MemberStatus,
}

/// Gossip's opinion of a member. Only `Alive` members should be sent RPCs; the others are kept
/// so a caller can tell "left on purpose" (do not wait for it) from "failed" (it may come back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberStatus {
    /// Answering probes.
    Alive,
    /// Announced it is leaving; still reachable for a moment.
    Leaving,
    /// Left gracefully. It will not come back unless it restarts and joins again.
    Left,
    /// Stopped answering probes (crashed, partitioned, or overloaded). Serf keeps trying to
    /// reconnect; it comes back as `Joined` if it answers again.
    Failed,
}

/// A change in membership, as sent on the channel [`Discovery::start`](super::Discovery::start)
/// returns. Events about this node itself are not sent. Each event carries the member as it is
/// after the change, so a consumer need not look anything up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member joined, or came back after failing or leaving.
    Joined(Member),
    /// A member changed its tags (its role or RPC address).
    Updated(Member),
    /// A member left gracefully.
    Left(Member),
    /// A member stopped answering and was declared failed.
    Failed(Member),
}

impl MembershipEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            Self::Joined(m) | Self::Updated(m) | Self::Left(m) | Self::Failed(m) => m,
        }
    }
}

/// The current view of the cluster, this node included, kept by the event task. Behind a
/// synchronous lock held only to copy in or out, so readers (`members()`, `rpc_addr_of`) are
/// cheap and never wait for gossip. A `BTreeMap` so the view comes out sorted by id.
#[derive(Clone, Debug, Default)]
pub(super) struct MemberTable {
    members: Arc<RwLock<BTreeMap<String, Member>>>,
}

impl MemberTable {
    /// Inserts or replaces a member.
    pub(super) fn upsert(&self, member: Member) {
        self.members.write().insert(member.id.clone(), member);
    }

    /// Forgets a member.
    pub(super) fn remove(&self, id: &str) {
        self.members.write().remove(id);
    }

    /// Changes one member in place, if it is known.
    pub(super) fn update(&self, id: &str, change: impl FnOnce(&mut Member)) {
        if let Some(member) = self.members.write().get_mut(id) {
            change(member);
        }
    }

    /// All members, sorted by id.
    pub(super) fn snapshot(&self) -> Vec<Member> {
        self.members.read().values().cloned().collect()
    }

    /// The RPC address of a member that is alive.
    pub(super) fn rpc_addr_of(&self, id: &str) -> Option<String> {
        self.members
            .read()
            .get(id)
            .filter(|m| m.status == MemberStatus::Alive)
            .map(|m| m.rpc_addr.clone())
    }
}
