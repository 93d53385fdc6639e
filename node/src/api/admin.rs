//! The `log.v1.Admin` service: the cluster as this node sees it, and leadership transfer.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::store::LogStore;
use proglog_proto::log::v1 as pb;
use proglog_proto::log::v1::admin_server::Admin;

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
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let consensus = self.store.consensus();
        let status = consensus.status();
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
