//! The `log.v1.Admin` service: the cluster as this node sees it, and leadership transfer.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::to_replication_status;
use super::store::LogStore;
use crate::replication::{ReplicationError, VoterChange};
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

/// The admin service over a node's log and consensus.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Arc<LogStore>,
}

impl AdminService {
    /// A service over `store`.
    pub fn new(store: Arc<LogStore>) -> Self {
        AdminService { store }
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
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
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
                lag: leader_end.saturating_sub(replica.end_offset.unwrap_or(0)),
                last_fetch_ago_ms: replica.last_fetch_ms.map_or(0, |at| now.saturating_sub(at)),
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
        }))
    }

    async fn add_voter(
        &self,
        request: Request<pb::AddVoterRequest>,
    ) -> Result<Response<pb::VoterChangeResponse>, Status> {
        let id = node_id(request.into_inner().node_id)?;
        self.change(VoterChange::Add(id)).await
    }

    async fn remove_voter(
        &self,
        request: Request<pb::RemoveVoterRequest>,
    ) -> Result<Response<pb::VoterChangeResponse>, Status> {
        let id = node_id(request.into_inner().node_id)?;
        self.change(VoterChange::Remove(id)).await
    }

    async fn transfer_leadership(
        &self,
        _request: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
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
