//! How the operator talks to the nodes: the `log.v1.Admin` service (cluster status, leadership
//! transfer, voter changes), behind the [`NodeAdmin`] trait so reconcile tests can script what
//! the cluster answers. [`GrpcAdmin`] is the real one, over tonic, with mutual TLS when the
//! cluster has it (the operator presents the client certificate of `NAME-operator-tls`, whose
//! common name the ACL grants `admin`).
//!
//! A failure means the call did not take effect as far as the operator knows; every step it
//! drives is decided again from a fresh `ClusterStatus` on the next pass, so a call that did
//! take effect after all (a voter change committed just as the connection broke) is simply
//! seen as done.

use std::sync::Arc;
use std::time::Duration;

use proglog_proto::log::v1 as pb;
use proglog_proto::log::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::plan::{Quorum, ReplicaProgress};

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take; a voter change returns once committed, well within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The operator's client certificate and the trust bundle, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The CA bundle the nodes' certificates are checked against.
    pub ca_pem: Vec<u8>,
    /// The operator's certificate.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCredentials { .. }")
    }
}

/// A node (or the client Service) to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTarget {
    /// DNS name: also the name its certificate is checked for.
    pub host: String,
    /// The gRPC port.
    pub port: i32,
    /// Mutual TLS credentials; `None` for a plaintext cluster.
    pub tls: Option<Arc<ClientCredentials>>,
}

impl std::fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A call to a node that failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address or TLS settings cannot make a channel.
    #[error("cannot set up a connection to {target}: {source}")]
    Setup {
        /// The target.
        target: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The node did not answer, or answered with an error.
    #[error("{call} on {target} failed: {code:?}: {message}")]
    Call {
        /// The RPC.
        call: &'static str,
        /// The target.
        target: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

/// The admin calls the reconciler makes. Implementations must be cheap to call often: the
/// reconciler asks for the cluster status on every pass.
#[async_trait::async_trait]
pub trait NodeAdmin: Send + Sync {
    /// `ClusterStatus` of `target`.
    async fn cluster_status(&self, target: &AdminTarget) -> Result<Quorum, AdminError>;
    /// `TransferLeadership` on `target` (the leader): it resigns, another voter takes over.
    async fn transfer_leadership(&self, target: &AdminTarget) -> Result<(), AdminError>;
    /// `AddVoter` on `target` (the leader); returns the voters once committed.
    async fn add_voter(&self, target: &AdminTarget, node: &str) -> Result<Vec<String>, AdminError>;
    /// `RemoveVoter` on `target` (the leader); returns the voters once committed.
    async fn remove_voter(
        &self,
        target: &AdminTarget,
        node: &str,
    ) -> Result<Vec<String>, AdminError>;
}

/// [`NodeAdmin`] over gRPC. It connects for each call: calls are few (a handful per pass) and
/// a fresh connection always uses the credentials just read from the Secret.
#[derive(Debug, Default, Clone)]
pub struct GrpcAdmin;

impl GrpcAdmin {
    fn client(
        &self,
        target: &AdminTarget,
    ) -> Result<AdminClient<tonic::transport::Channel>, AdminError> {
        let setup = |source| AdminError::Setup {
            target: target.to_string(),
            source,
        };
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{target}"))
            .map_err(setup)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        if let Some(tls) = &target.tls {
            let config = ClientTlsConfig::new()
                .domain_name(target.host.clone())
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            endpoint = endpoint.tls_config(config).map_err(setup)?;
        }
        Ok(AdminClient::new(endpoint.connect_lazy()))
    }
}

fn call_error(call: &'static str, target: &AdminTarget) -> impl Fn(tonic::Status) -> AdminError {
    let target = target.to_string();
    move |status| AdminError::Call {
        call,
        target: target.clone(),
        code: status.code(),
        message: status.message().to_owned(),
    }
}

/// The status message as the reconciler uses it.
pub fn quorum_from(response: pb::ClusterStatusResponse) -> Quorum {
    Quorum {
        node_id: response.node_id,
        role: response.role,
        leader: Some(response.leader_id).filter(|leader| !leader.is_empty()),
        epoch: response.epoch,
        high_watermark: response.high_watermark,
        end_offset: response.end_offset,
        voters: response.voters,
        replicas: response
            .replicas
            .into_iter()
            .map(|replica| ReplicaProgress {
                id: replica.id,
                voter: replica.voter,
                end_offset: replica.end_offset,
                lag: replica.lag,
                fetched: replica.fetched,
                last_fetch_ago_ms: replica.last_fetch_ago_ms,
            })
            .collect(),
        trust_bundle_sha256: response.trust_bundle_sha256,
        certificate_sha256: response.certificate_sha256,
    }
}

#[async_trait::async_trait]
impl NodeAdmin for GrpcAdmin {
    async fn cluster_status(&self, target: &AdminTarget) -> Result<Quorum, AdminError> {
        let response = self
            .client(target)?
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .map_err(call_error("ClusterStatus", target))?;
        Ok(quorum_from(response.into_inner()))
    }

    async fn transfer_leadership(&self, target: &AdminTarget) -> Result<(), AdminError> {
        self.client(target)?
            .transfer_leadership(pb::TransferLeadershipRequest {})
            .await
            .map_err(call_error("TransferLeadership", target))?;
        Ok(())
    }

    async fn add_voter(&self, target: &AdminTarget, node: &str) -> Result<Vec<String>, AdminError> {
        let response = self
            .client(target)?
            .add_voter(pb::AddVoterRequest {
                node_id: node.to_owned(),
            })
            .await
            .map_err(call_error("AddVoter", target))?;
        Ok(response.into_inner().voters)
    }

    async fn remove_voter(
        &self,
        target: &AdminTarget,
        node: &str,
    ) -> Result<Vec<String>, AdminError> {
        let response = self
            .client(target)?
            .remove_voter(pb::RemoveVoterRequest {
                node_id: node.to_owned(),
            })
            .await
            .map_err(call_error("RemoveVoter", target))?;
        Ok(response.into_inner().voters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_message_maps_onto_the_quorum() {
        let quorum = quorum_from(pb::ClusterStatusResponse {
            node_id: "events-0".into(),
            role: "leader".into(),
            leader_id: "events-0".into(),
            epoch: 4,
            high_watermark: 7,
            end_offset: 8,
            voters: vec!["events-0".into(), "events-1".into()],
            replicas: vec![pb::ReplicaStatus {
                id: "events-1".into(),
                voter: true,
                end_offset: 7,
                lag: 1,
                last_fetch_ago_ms: 3,
                fetched: true,
            }],
            ..Default::default()
        });
        assert_eq!(quorum.leader.as_deref(), Some("events-0"));
        assert_eq!(quorum.epoch, 4);
        assert_eq!(quorum.replicas[0].last_fetch_ago_ms, 3);
        assert!(quorum.caught_up("events-1"));
        let no_leader = quorum_from(pb::ClusterStatusResponse::default());
        assert_eq!(no_leader.leader, None);
    }

    #[tokio::test]
    async fn an_unreachable_node_is_an_error_not_a_hang() {
        // Port 1 on localhost refuses at once.
        let target = AdminTarget {
            host: "127.0.0.1".into(),
            port: 1,
            tls: None,
        };
        let err = GrpcAdmin.cluster_status(&target).await.unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }
}
