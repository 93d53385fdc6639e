//! Security of the node's gRPC port: TLS with hot reload, mutual TLS, and ACL authorization
//! compatible with proglog's Casbin model and policy.
//!
//! ## Layout
//!
//! - `tls`: [`TlsConfig`], loading PEM files into a rustls server config, and
//!   [`ReloadableTlsConfig`], which swaps in a new config when the files change.
//! - `acceptor`: the TLS accept loop that feeds tonic ([`tls_incoming`]): bounded, timed
//!   handshakes; each connection carries its [`PeerIdentity`].
//! - `identity`: [`PeerIdentity`], the peer's certificate chain and common name.
//! - `acl`: [`AclConfig`], [`Authorizer`] (Casbin) and the method -> action mapping.
//! - `layer`: [`AclLayer`], where every call is authenticated and calls to the peer and admin
//!   services are authorized (log calls are decided on their log by the service).
//!
//! [`ServerSecurity::load`] loads all of it at start, before anything serves.

mod acceptor;
pub mod acl;
mod identity;
mod layer;
#[cfg(test)]
pub(crate) mod test_pki;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;

pub use acceptor::{
    Connection, ConnectionGate, DEFAULT_FIRST_REQUEST_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DescriptorBudget, PEER_MAX_CONNECTIONS, RESERVED_DESCRIPTORS, TlsConnection, plain_incoming,
    raise_descriptor_limit, tls_incoming,
};
pub use acl::{AclConfig, Action, Authorizer, MethodAccess, WILDCARD_OBJECT, method_access};
pub use identity::{PeerIdentity, serial_number, subject_common_name};
pub use layer::{AclLayer, AclService};
pub use tls::{
    MAX_RELOAD_INTERVAL, MIN_RELOAD_INTERVAL, ReloadableTlsConfig, TlsConfig, TlsFiles,
    load_server_config, sha256_hex,
};

/// Why TLS or the ACL cannot be set up. Each variant names the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read.
    #[error("cannot read --{flag} {}: {source}", path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("--{flag} {}: {reason}", path.display())]
    Pem {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key does not load, or is not the certificate's.
    #[error("--tls-key {} does not go with --tls-cert {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The Casbin model or policy does not load.
    #[error("--{flag} {}: {reason}", path.display())]
    Acl {
        /// `acl-model` or `acl-policy`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What Casbin said.
        reason: String,
    },
    /// A setting out of its range, or a combination that cannot work.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag to fix.
        flag: &'static str,
        /// What is allowed.
        reason: String,
    },
}

impl SecurityError {
    /// The flag (without dashes) to fix.
    pub fn flag(&self) -> &'static str {
        match self {
            SecurityError::Read { flag, .. }
            | SecurityError::Pem { flag, .. }
            | SecurityError::Acl { flag, .. }
            | SecurityError::Invalid { flag, .. } => flag,
            SecurityError::KeyMismatch { .. } => "tls-key",
        }
    }
}

/// TLS and ACL state of a running server, loaded from the config.
#[derive(Debug, Default)]
pub struct ServerSecurity {
    /// The TLS config new connections use (`None`: plaintext).
    pub tls: Option<Arc<ReloadableTlsConfig>>,
    /// The ACL (`None`: every authenticated-or-not caller may do anything).
    pub authorizer: Option<Arc<Authorizer>>,
}

/// Loads a listener's TLS files. With an ACL (`acl`), a client certificate is optional at the
/// handshake: the ACL answers `UNAUTHENTICATED` per call instead, and health and reflection
/// stay open to clients without one (probes).
pub fn load_tls(tls: &TlsConfig, acl: bool) -> Result<Arc<ReloadableTlsConfig>, SecurityError> {
    let mut tls = tls.clone();
    tls.client_cert_optional |= acl;
    ReloadableTlsConfig::load(tls)
}

impl ServerSecurity {
    /// Loads the TLS files (see [`load_tls`]) and the ACL.
    pub async fn load(
        tls: Option<&TlsConfig>,
        acl: Option<&AclConfig>,
    ) -> Result<Self, SecurityError> {
        let tls = tls.map(|tls| load_tls(tls, acl.is_some())).transpose()?;
        let authorizer = match acl {
            Some(acl) => Some(Arc::new(Authorizer::load(acl).await?)),
            None => None,
        };
        Ok(ServerSecurity { tls, authorizer })
    }

    /// The layer enforcing the ACL (a pass-through without one).
    pub fn acl_layer(&self) -> AclLayer {
        AclLayer::new(self.authorizer.clone())
    }
}
