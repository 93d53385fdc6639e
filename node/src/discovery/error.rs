//! [`DiscoveryError`]: why gossip membership could not start or change.

use std::net::SocketAddr;

/// A boxed serf error. Serf's own error type is generic over its transport; boxing it keeps
/// serf's types inside `discovery/` while still carrying the cause as a `source`.
pub type GossipCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why discovery could not start, or could not change what it gossips. Each variant names the
/// [`DiscoveryConfig`](super::DiscoveryConfig) field or the value to fix.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A required field is empty: serf would gossip a member nobody can address.
    #[error("discovery config `{field}` is empty")]
    Empty {
        /// The `DiscoveryConfig` field.
        field: &'static str,
    },

    /// The encoded tags (`id`, `rpc`, `role`) exceed what fits in one gossip packet's metadata.
    #[error(
        "gossip tags take {size} bytes encoded, over serf's limit of {max}: \
         shorten the node id, the rpc address or the role"
    )]
    TagsTooLarge {
        /// Encoded size of the tags, as serf measures it.
        size: usize,
        /// Serf's limit (512 bytes of node metadata).
        max: usize,
    },

    /// The gossip encryption key is not base64 of exactly 32 bytes.
    #[error("gossip encryption key: {reason} (expected standard base64 of 32 bytes, for AES-256)")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },

    /// An advertise address was given while the bind port is 0: the port the OS picks would
    /// not be the one advertised, so peers could never reach this node.
    #[error(
        "discovery config binds {bind_addr} (port 0: picked at start) but advertises \
         {advertise_addr}: set a fixed bind port, or no advertise address"
    )]
    AdvertiseWithEphemeralPort {
        /// The configured bind address.
        bind_addr: SocketAddr,
        /// The configured advertise address.
        advertise_addr: SocketAddr,
    },

    /// Serf could not start: usually the gossip port is taken, or no private address could be
    /// found to advertise for a wildcard bind.
    #[error("cannot start gossip on {bind_addr}: {source}")]
    Start {
        /// The configured bind address.
        bind_addr: SocketAddr,
        /// What serf said.
        #[source]
        source: GossipCause,
    },

    /// The new tags could not be gossiped. Serf stores the tags before it broadcasts them, so
    /// the role is set locally and will still spread with later gossip unless the node has left.
    #[error("cannot gossip role {role:?}: {source}")]
    SetTags {
        /// The role that was being set.
        role: String,
        /// What serf said.
        #[source]
        source: GossipCause,
    },
}
