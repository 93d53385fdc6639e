//! The `log.v1.Admin` service: the cluster as this node sees it, and leadership transfer.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use std::collections::BTreeSet;

use super::status::to_replication_status;
use super::store::LogStore;
use crate::replication::{ReplicationError, VoterChange};
use crate::security::PeerIdentity;
use crate::security::TlsFiles;
use proglog_proto::log::v1 as pb;
use proglog_proto::log::v1::admin_server::Admin;

/// An added voter may lag the high watermark by this many records at most: it then catches up
/// within a fetch or two, so the quorum is not left waiting on it.
const MAX_ADD_LAG: u64 = 1000;

fn node_id(id: String) -> Result<String, Status> {
    if id.is_empty() || id.len() > 128 {
        return Err(Status::invalid_argument(
            "`node_id` must be a node's id (1 to 128 characters)",
        ));
    }
    Ok(id)
}

/// Who may call the admin service, which changes the voter set and moves leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAccess {
    /// The ACL decides (its `admin` action), before a call reaches the service.
    Acl,
    /// Callers presenting a certificate with one of these common names (`--admin-subjects`).
    Subjects(BTreeSet<String>),
    /// With neither an ACL nor admin subjects: calls over loopback only.
    Loopback,
}

impl AdminAccess {
    /// What a node configured with an ACL (or not) and `subjects` allows.
    pub fn new(acl: bool, subjects: &[String]) -> Self {
        if acl {
            AdminAccess::Acl
        } else if subjects.is_empty() {
            AdminAccess::Loopback
        } else {
            AdminAccess::Subjects(subjects.iter().cloned().collect())
        }
    }

    /// Whether the caller `peer` may call the admin service.
    pub fn check(&self, peer: Option<&PeerIdentity>) -> Result<(), Status> {
        match self {
            AdminAccess::Acl => Ok(()),
            AdminAccess::Subjects(subjects) => {
                let name = peer
                    .filter(|peer| peer.certificates().is_some())
                    .and_then(PeerIdentity::common_name);
                match name {
                    Some(name) if subjects.contains(name) => Ok(()),
                    Some(name) => Err(Status::permission_denied(format!(
                        "`{name}` may not call the admin service: it is not in --admin-subjects"
                    ))),
                    None => Err(Status::unauthenticated(
                        "the admin service takes a client certificate named in --admin-subjects",
                    )),
                }
            }
            AdminAccess::Loopback => match peer.map(PeerIdentity::remote_addr) {
                Some(addr) if addr.ip().is_loopback() => Ok(()),
                _ => Err(Status::permission_denied(
                    "the admin service answers only over loopback on this node: give \
                     --admin-subjects (with mutual TLS), or an ACL that grants `admin`",
                )),
            },
        }
    }
}

/// The admin service over a node's log and consensus.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Arc<LogStore>,
    access: AdminAccess,
    peer_tls: Option<watch::Receiver<Arc<TlsFiles>>>,
}

impl AdminService {
    /// A service over `store`, answering whom `access` allows.
    pub fn new(store: Arc<LogStore>, access: AdminAccess) -> Self {
        AdminService {
            store,
            access,
            peer_tls: None,
        }
    }

    /// Reports the fingerprints of the peer listener's TLS files as they are in force (a
    /// reload changes them) in `ClusterStatus`.
    pub fn with_peer_tls(mut self, files: watch::Receiver<Arc<TlsFiles>>) -> Self {
        self.peer_tls = Some(files);
        self
    }

    async fn change(
        &self,
        change: VoterChange,
    ) -> Result<Response<pb::VoterChangeResponse>, Status> {
        let consensus = self.store.consensus();
        let view = consensus.view();
        if view.leader_epoch.is_none() {
            return Err(self.store.not_leader(view.leader_id));
        }
        tracing::info!(?change, "changing the voter set");
        match consensus.change_voters(change, MAX_ADD_LAG).await {
            Ok((offset, voters)) => Ok(Response::new(pb::VoterChangeResponse { voters, offset })),
            Err(ReplicationError::NotLeader { leader }) => Err(self.store.not_leader(leader)),
            Err(err) => Err(to_replication_status(err, None)),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.access.check(PeerIdentity::of(&request))?;
        let consensus = self.store.consensus();
        let status = consensus
            .status()
            .await
            .map_err(|err| to_replication_status(err, None))?;
        let now = consensus.clock_ms();
        let leader_end = status.end_offset;
        let replicas = status
            .replicas
            .iter()
            .map(|replica| pb::ReplicaStatus {
                id: replica.id.clone(),
                voter: replica.voter,
                end_offset: replica.end_offset.unwrap_or(0),
                lag: replica.lag(leader_end),
                last_fetch_ago_ms: replica.fetched_ago_ms(now),
                fetched: replica.last_fetch_ms.is_some(),
            })
            .collect();
        let members = self
            .store
            .directory()
            .members()
            .into_iter()
            .map(|(id, rpc_addr)| pb::Member {
                role: if status.leader_id.as_deref() == Some(id.as_str()) {
                    "leader".into()
                } else if status.voters.contains(&id) {
                    "voter".into()
                } else {
                    "observer".into()
                },
                id,
                rpc_addr,
                status: "alive".into(),
            })
            .collect();
        let tls = self
            .peer_tls
            .as_ref()
            .map(|files| Arc::clone(&files.borrow()));
        Ok(Response::new(pb::ClusterStatusResponse {
            node_id: status.id,
            role: status.role.as_str().into(),
            epoch: status.epoch,
            leader_id: status.leader_id.unwrap_or_default(),
            high_watermark: status.high_watermark,
            start_offset: status.start_offset,
            end_offset: status.end_offset,
            voters: status.voters,
            replicas,
            members,
            trust_bundle_sha256: tls
                .as_ref()
                .and_then(|files| files.trust_bundle_sha256())
                .unwrap_or_default(),
            certificate_sha256: tls
                .as_ref()
                .map(|files| files.certificate_sha256())
                .unwrap_or_default(),
        }))
    }

    async fn add_voter(
        &self,
        request: Request<pb::AddVoterRequest>,
    ) -> Result<Response<pb::VoterChangeResponse>, Status> {
        self.access.check(PeerIdentity::of(&request))?;
        let id = node_id(request.into_inner().node_id)?;
        self.change(VoterChange::Add(id)).await
    }

    async fn remove_voter(
        &self,
        request: Request<pb::RemoveVoterRequest>,
    ) -> Result<Response<pb::VoterChangeResponse>, Status> {
        self.access.check(PeerIdentity::of(&request))?;
        let id = node_id(request.into_inner().node_id)?;
        self.change(VoterChange::Remove(id)).await
    }

    async fn transfer_leadership(
        &self,
        request: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        self.access.check(PeerIdentity::of(&request))?;
        let view = self.store.consensus().view();
        if view.leader_epoch.is_none() {
            return Err(self.store.not_leader(view.leader_id));
        }
        match self.store.consensus().resign(false).await {
            Some(epoch) => Ok(Response::new(pb::TransferLeadershipResponse { epoch })),
            None => Err(self.store.not_leader(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use tonic::Code;

    use super::*;
    use crate::security::test_pki::TestCa;

    fn caller(addr: &str, certificate: Option<&str>) -> PeerIdentity {
        let addr: SocketAddr = addr.parse().unwrap();
        let ca = TestCa::new();
        let chain: Option<Vec<CertificateDer<'static>>> = certificate.map(|name| {
            let issued = ca.issue(name, 1);
            vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()]
        });
        PeerIdentity::new(addr, chain.as_deref())
    }

    #[test]
    fn with_neither_an_acl_nor_subjects_admin_answers_over_loopback_only() {
        let access = AdminAccess::new(false, &[]);
        assert_eq!(access, AdminAccess::Loopback);
        for local in ["127.0.0.1:4000", "[::1]:4000"] {
            access.check(Some(&caller(local, None))).unwrap();
        }
        let refused = access
            .check(Some(&caller("10.1.2.3:4000", Some("operator"))))
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused.message().contains("--admin-subjects"),
            "{}",
            refused.message()
        );
        assert!(access.check(None).is_err());
    }

    #[test]
    fn admin_subjects_name_the_certificates_that_may_administer() {
        let access = AdminAccess::new(false, &["operator".to_owned()]);
        access
            .check(Some(&caller("10.1.2.3:4000", Some("operator"))))
            .unwrap();
        let refused = access
            .check(Some(&caller("127.0.0.1:4000", Some("app"))))
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        let refused = access
            .check(Some(&caller("127.0.0.1:4000", None)))
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
        // With an ACL, the ACL decides before the call gets here.
        assert_eq!(AdminAccess::new(true, &[]), AdminAccess::Acl);
    }
}
