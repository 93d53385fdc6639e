//! [`DiscoveryConfig`], [`GossipProfile`] and [`parse_key`]: what a node gossips and how.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine as _;

use super::error::DiscoveryError;

/// The default gossip port (TCP and UDP), next to the gRPC port 8400.
pub const DEFAULT_GOSSIP_PORT: u16 = 8401;

/// How a node takes part in gossip membership. Built by `main` from flags; validated by
/// [`DiscoveryConfig::validate`] (which [`Discovery::start`](super::Discovery::start) calls)
/// before any socket is bound.
#[derive(Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// This node's id. It is also serf's node name, so it must be unique in the cluster and
    /// stable across restarts (a restarted node with the same id replaces its old entry).
    pub node_id: String,
    /// Where gossip listens, TCP and UDP on the same port. Default `0.0.0.0:8401`. Port 0 picks
    /// a free port (tests); [`Discovery::local_gossip_addr`](super::Discovery::local_gossip_addr)
    /// tells which.
    pub bind_addr: SocketAddr,
    /// The address peers should use to reach this node's gossip port, when it differs from the
    /// bind address (NAT, or a wildcard bind where the first private address is the wrong one).
    /// `None`: the bind address, or for a wildcard bind the first private address of the host.
    pub advertise_addr: Option<SocketAddr>,
    /// The client/peer gRPC address (`host:port`) other nodes should dial; gossiped as tag `rpc`.
    pub rpc_addr: String,
    /// This node's role in replication (e.g. `voter`, `observer`); gossiped as tag `role`.
    pub role: String,
    /// Seeds to join, as `host:port`. They are resolved by DNS on every attempt, not once,
    /// because in Kubernetes a pod's DNS name appears only once the pod is scheduled. Entries
    /// that resolve to this node are skipped. Empty: this node starts a cluster of its own.
    pub seeds: Vec<String>,
    /// AES-256 key for gossip. When set, gossip is encrypted and unencrypted or wrongly keyed
    /// packets are refused both ways; all nodes must share the key. See [`parse_key`].
    pub encryption_key: Option<[u8; 32]>,
    /// Protocol timings. [`GossipProfile::Lan`] in production.
    pub profile: GossipProfile,
}

impl std::fmt::Debug for DiscoveryConfig {
    // By hand so the encryption key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryConfig")
            .field("node_id", &self.node_id)
            .field("bind_addr", &self.bind_addr)
            .field("advertise_addr", &self.advertise_addr)
            .field("rpc_addr", &self.rpc_addr)
            .field("role", &self.role)
            .field("seeds", &self.seeds)
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<redacted>"),
            )
            .field("profile", &self.profile)
            .finish()
    }
}

impl DiscoveryConfig {
    /// A config with the documented defaults: bind `0.0.0.0:8401`, no advertise address, role
    /// `voter`, no seeds (a cluster of one), no encryption, the LAN profile.
    pub fn new(node_id: impl Into<String>, rpc_addr: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            bind_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_GOSSIP_PORT),
            advertise_addr: None,
            rpc_addr: rpc_addr.into(),
            role: "voter".to_owned(),
            seeds: Vec::new(),
            encryption_key: None,
            profile: GossipProfile::Lan,
        }
    }

    /// Checks everything that can be checked without the network, so a bad flag fails the
    /// start with a message naming it rather than as a serf error later.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        if self.node_id.is_empty() {
            return Err(DiscoveryError::Empty { field: "node_id" });
        }
        if self.rpc_addr.is_empty() {
            return Err(DiscoveryError::Empty { field: "rpc_addr" });
        }
        if let Some(advertise_addr) = self.advertise_addr
            && self.bind_addr.port() == 0
        {
            return Err(DiscoveryError::AdvertiseWithEphemeralPort {
                bind_addr: self.bind_addr,
                advertise_addr,
            });
        }
        check_tags_size(&self.node_id, &self.rpc_addr, &self.role)
    }
}

/// Protocol timings. Serf's defaults are tuned for a LAN; loopback tests want faster failure
/// detection and a shorter leave, so they need not wait seconds for each step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GossipProfile {
    /// Serf's LAN defaults: probe every 500 ms, a failed node is declared after about 2.5-3.5 s,
    /// a leave waits 1 s for the news to spread (up to 5 s more when peers do not answer).
    #[default]
    Lan,
    /// For one host (tests, local clusters): probe every 250 ms, a failed node is declared
    /// after about 1 s, a leave waits 250 ms. Too eager for a real network, where a slow peer
    /// would be declared failed.
    Local,
}

/// Parses a gossip encryption key: standard base64 (with padding) of exactly 32 bytes, the
/// form `openssl rand -base64 32` prints and a Kubernetes Secret holds.
pub fn parse_key(s: &str) -> Result<[u8; 32], DiscoveryError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| DiscoveryError::InvalidKey {
            reason: format!("not base64: {e}"),
        })?;
    let len = bytes.len();
    <[u8; 32]>::try_from(bytes).map_err(|_| DiscoveryError::InvalidKey {
        reason: format!("decodes to {len} bytes"),
    })
}

/// Serf's limit on a node's encoded metadata (memberlist's `Meta::MAX_SIZE`).
pub(super) const TAGS_MAX_BYTES: usize = 512;

/// Tag names. Short, because they count against [`TAGS_MAX_BYTES`] on every node.
pub(super) const TAG_ID: &str = "id";
/// See [`TAG_ID`].
pub(super) const TAG_RPC: &str = "rpc";
/// See [`TAG_ID`].
pub(super) const TAG_ROLE: &str = "role";

/// Checks the tags for this id, rpc address and role fit serf's limit, measured as serf
/// measures it at start (the stricter of its two checks), so neither start nor `set_role`
/// can fail on size inside serf.
pub(super) fn check_tags_size(id: &str, rpc: &str, role: &str) -> Result<(), DiscoveryError> {
    let size = super::gossip::encoded_tags_len(id, rpc, role);
    if size > TAGS_MAX_BYTES {
        return Err(DiscoveryError::TagsTooLarge {
            size,
            max: TAGS_MAX_BYTES,
        });
    }
    Ok(())
}
