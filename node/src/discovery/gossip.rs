//! The serf glue: the concrete serf types (aliased once, here), options built from a
//! [`DiscoveryConfig`], and conversions between serf's members and ours. Nothing outside
//! `discovery/` sees a serf type; inside it, only this file names serf's generics.

use std::net::SocketAddr;
use std::time::Duration;

use serf::event::{Event, EventProducer, EventSubscriber, MemberEventType};
use serf::net::NetTransportOptions;
use serf::tokio::{TokioNetTransport, TokioSocketAddrResolver, TokioTcp};
use serf::types::{
    Data as _, EncryptionAlgorithm, MaybeResolvedAddress, MemberStatus as SerfMemberStatus,
    SecretKey, SmolStr, Tags,
};
use serf::{DefaultDelegate, MemberlistOptions, Options, Serf, SerfState};

use super::config::{DiscoveryConfig, GossipProfile, TAG_ID, TAG_ROLE, TAG_RPC};
use super::error::{DiscoveryError, GossipCause};
use super::member::{Member, MemberStatus};

/// Gossip over UDP plus TCP (push/pull, joins) with tokio; node ids are strings and addresses
/// are already-resolved socket addresses (seeds are resolved by [`super::join`], on each try).
type Transport = TokioNetTransport<SmolStr, TokioSocketAddrResolver, TokioTcp>;
type Delegate = DefaultDelegate<Transport>;
type TransportOptions = NetTransportOptions<SmolStr, TokioSocketAddrResolver, TokioTcp>;

/// One running serf node. Cheap to clone (an `Arc` inside).
pub(super) type GossipNode = Serf<Transport, Delegate>;
/// Serf's event stream for [`GossipNode`].
pub(super) type GossipEvents = EventSubscriber<Transport, Delegate>;
/// A member as serf reports it.
type SerfMember = serf::types::Member<SmolStr, SocketAddr>;

/// Starts serf as `config` says and returns it with its event stream. The stream must be
/// drained: serf's channel is unbounded (a bounded one would stall gossip behind a slow reader).
pub(super) async fn start(
    config: &DiscoveryConfig,
) -> Result<(GossipNode, GossipEvents), DiscoveryError> {
    let mut transport = TransportOptions::new(SmolStr::new(&config.node_id))
        .maybe_advertise_address(config.advertise_addr);
    transport.add_bind_address(config.bind_addr);

    let options = serf_options(config);
    let (producer, events) = EventProducer::unbounded();
    let node = Serf::with_event_producer(transport, options, producer)
        .await
        .map_err(|e| DiscoveryError::Start {
            bind_addr: config.bind_addr,
            source: cause(e),
        })?;
    Ok((node, events))
}

/// Serf and memberlist options for a config: the profile's timings, the tags, the key.
fn serf_options(config: &DiscoveryConfig) -> Options {
    let (memberlist, options) = match config.profile {
        GossipProfile::Lan => (MemberlistOptions::lan(), Options::new()),
        GossipProfile::Local => (
            MemberlistOptions::lan()
                .with_probe_interval(Duration::from_millis(250))
                .with_probe_timeout(Duration::from_millis(150))
                .with_suspicion_mult(3)
                .with_gossip_interval(Duration::from_millis(50))
                .with_timeout(Duration::from_secs(2)),
            Options::new()
                .with_broadcast_timeout(Duration::from_secs(2))
                .with_leave_propagate_delay(Duration::from_millis(250)),
        ),
    };
    let memberlist = match config.encryption_key {
        // All three are needed: without the algorithm and verify-outgoing, a key alone leaves
        // gossip in plain text; verify-incoming refuses peers that send plain text.
        Some(key) => memberlist
            .with_primary_key(SecretKey::Aes256(key))
            .with_encryption_algo(EncryptionAlgorithm::NoPadding)
            .with_gossip_verify_outgoing(true)
            .with_gossip_verify_incoming(true),
        None => memberlist,
    };
    // Serf's node name is the node id; the `id` tag repeats it so a peer reading only tags
    // (or a future id scheme) still has it.
    options
        .with_memberlist_options(memberlist)
        .with_tags(tag_pairs(&config.node_id, &config.rpc_addr, &config.role).into_iter())
}

/// The tags a node gossips, as name/value pairs.
fn tag_pairs<'a>(id: &'a str, rpc: &'a str, role: &'a str) -> [(&'static str, &'a str); 3] {
    [(TAG_ID, id), (TAG_RPC, rpc), (TAG_ROLE, role)]
}

/// The tags a node gossips.
fn tags(id: &str, rpc: &str, role: &str) -> Tags {
    tag_pairs(id, rpc, role).into_iter().collect()
}

/// The encoded size of a node's tags as serf checks it when it starts: the tags, plus the
/// field tag and length prefix of the metadata that carries them.
pub(super) fn encoded_tags_len(id: &str, rpc: &str, role: &str) -> usize {
    let len = tags(id, rpc, role).encoded_len_with_length_delimited();
    1 + varint_len(len) + len
}

/// Bytes in the protobuf varint encoding of `n`.
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

/// Replaces this node's tags and waits for serf to broadcast them. Serf stores the tags before
/// it broadcasts, so they are in effect locally even when this fails.
pub(super) async fn set_tags(
    node: &GossipNode,
    id: &str,
    rpc: &str,
    role: &str,
) -> Result<(), GossipCause> {
    node.set_tags(tags(id, rpc, role)).await.map_err(cause)
}

/// Serf's own view of every member (this node included), with the statuses we model.
pub(super) async fn members(node: &GossipNode) -> Vec<Member> {
    node.members()
        .await
        .iter()
        .filter_map(|member| status_of(member).map(|status| to_member(member, status)))
        .collect()
}

/// Tries to join the cluster through one resolved address.
pub(super) async fn join(node: &GossipNode, addr: SocketAddr) -> Result<(), GossipCause> {
    node.join(MaybeResolvedAddress::Resolved(addr), false)
        .await
        .map(drop)
        .map_err(cause)
}

/// Leaves gracefully: tells the others, then waits for the news to spread.
pub(super) async fn leave(node: &GossipNode) -> Result<(), GossipCause> {
    node.leave().await.map_err(cause)
}

/// Stops serf's tasks and closes its sockets.
pub(super) async fn shutdown(node: &GossipNode) -> Result<(), GossipCause> {
    node.shutdown().await.map_err(cause)
}

/// Whether serf still runs (joins make no sense once it is leaving or shut down).
pub(super) fn is_alive(node: &GossipNode) -> bool {
    node.state() == SerfState::Alive
}

/// Whether serf has been shut down (its ports released).
pub(super) fn is_shut_down(node: &GossipNode) -> bool {
    node.state() == SerfState::Shutdown
}

/// The address this node advertises to peers.
pub(super) fn advertise_addr(node: &GossipNode) -> SocketAddr {
    *node.advertise_node().address()
}

/// What a serf event means for the member table.
pub(super) enum Change {
    /// These members joined, changed tags, left or failed; each carries its new status.
    Upsert(MemberEventKind, Vec<Member>),
    /// Serf forgot these members (reaped after the tombstone or reconnect timeout).
    Remove(Vec<String>),
    /// An event discovery does not use: user events and queries (proglog sends none).
    Other,
}

/// The kinds of member events forwarded to the rest of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MemberEventKind {
    /// A member joined.
    Joined,
    /// A member's tags changed.
    Updated,
    /// A member left gracefully.
    Left,
    /// A member stopped answering.
    Failed,
}

/// Receives serf's next event, translated. `None` when serf has shut down and the stream ends.
pub(super) async fn next_change(events: &GossipEvents) -> Option<Change> {
    // `recv`, not the `Stream` impl: in serf 0.5.2 the stream returns `Pending` without waking
    // when it skips an internal query, which can stall the reader.
    let event = events.recv().await.ok()?;
    let Event::Member(event) = event else {
        return Some(Change::Other);
    };
    let members = event.members();
    let (kind, status) = match event.ty() {
        MemberEventType::Join => (MemberEventKind::Joined, MemberStatus::Alive),
        MemberEventType::Update => (MemberEventKind::Updated, MemberStatus::Alive),
        MemberEventType::Leave => (MemberEventKind::Left, MemberStatus::Left),
        MemberEventType::Failed => (MemberEventKind::Failed, MemberStatus::Failed),
        MemberEventType::Reap => {
            let ids = members.iter().map(|m| m.node().id().to_string()).collect();
            return Some(Change::Remove(ids));
        }
    };
    let members = members
        .iter()
        .map(|m| to_member(m, status_of(m).unwrap_or(status)))
        .collect();
    Some(Change::Upsert(kind, members))
}

/// The serf member's own status (the latest word), when it is one we model; otherwise the
/// event type decides.
fn status_of(member: &SerfMember) -> Option<MemberStatus> {
    match member.status() {
        SerfMemberStatus::Alive => Some(MemberStatus::Alive),
        SerfMemberStatus::Leaving => Some(MemberStatus::Leaving),
        SerfMemberStatus::Left => Some(MemberStatus::Left),
        SerfMemberStatus::Failed => Some(MemberStatus::Failed),
        _ => None,
    }
}

/// Our view of a serf member. Missing tags become empty strings rather than errors: a peer
/// built differently should show up (and be ignored by replication), not break discovery.
fn to_member(member: &SerfMember, status: MemberStatus) -> Member {
    let tags = member.tags();
    let tag = |name: &str| tags.get(name).map(|v| v.to_string()).unwrap_or_default();
    Member {
        id: member.node().id().to_string(),
        rpc_addr: tag(TAG_RPC),
        role: tag(TAG_ROLE),
        gossip_addr: *member.node().address(),
        status,
    }
}

/// Boxes a serf error so it can travel as a `#[source]`.
fn cause<E: std::error::Error + Send + Sync + 'static>(e: E) -> GossipCause {
    Box::new(e)
}
