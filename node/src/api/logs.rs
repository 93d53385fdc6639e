//! The `log.v1.Logs` service: which logs a cluster holds, and how each one is doing.
//!
//! Implemented by [`LogService`], whose store, ACL and channels to the leader it shares. A
//! describe asked of a follower is answered by the leader (only the leader knows every
//! replica's progress); when the leader cannot be reached, the follower answers from its own
//! view, without replicas, so a describe still says who this node thinks leads.

use tonic::{Request, Response, Status};

use super::log_service::{FORWARDED_METADATA, LogService, forwarded_request, open_log};
use super::status::to_replication_status;
use crate::security::{Action, PeerIdentity, WILDCARD_OBJECT};
use proglog_client::names::DEFAULT_LOG;
use proglog_proto::log::v1::logs_client::LogsClient;
use proglog_proto::log::v1::logs_server::Logs as LogsApi;
use proglog_proto::log::v1::{
    DescribeLogRequest, ListLogsRequest, ListLogsResponse, LogDescription, LogReplica, LogSummary,
};

/// How long a follower waits for the leader's describe before answering from its own view.
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[tonic::async_trait]
impl LogsApi for LogService {
    async fn list_logs(
        &self,
        request: Request<ListLogsRequest>,
    ) -> Result<Response<ListLogsResponse>, Status> {
        let peer = PeerIdentity::of(&request);
        // Only the logs the caller may read, as Kafka's metadata lists only authorized topics.
        let view = self.store().consensus().view();
        let logs = [DEFAULT_LOG]
            .into_iter()
            .filter(|log| open_log(self.acl(), peer, log, Action::Consume).is_ok())
            .map(|log| LogSummary {
                name: log.to_owned(),
                leader_id: view.leader_id.clone().unwrap_or_default(),
                epoch: view.epoch,
            })
            .collect();
        Ok(Response::new(ListLogsResponse { logs }))
    }

    async fn describe_log(
        &self,
        request: Request<DescribeLogRequest>,
    ) -> Result<Response<LogDescription>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        let peer = PeerIdentity::of(&request);
        if forwarded && let Some(acl) = self.acl() {
            // A follower passes on a describe it has decided on its client's identity; the
            // leader sees the follower's, which holds `replicate`, not `consume`.
            acl.authorize_log(peer, WILDCARD_OBJECT, Action::Replicate)?;
            open_log(None, peer, &request.get_ref().log, Action::Consume)?;
        } else {
            open_log(self.acl(), peer, &request.get_ref().log, Action::Consume)?;
        }
        let consensus = self.store().consensus();
        let view = consensus.view();
        if view.leader_epoch.is_none()
            && !forwarded
            && let Some(leader) = view.leader_id.as_deref()
            && let Ok(channel) = self.peers().channel_to(leader)
        {
            let mut client = LogsClient::new(channel);
            let call = client.describe_log(forwarded_request(request));
            match tokio::time::timeout(FORWARD_WAIT, call).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) => {
                    tracing::warn!(leader, %status, "describe: the leader refused; answering from this node's view");
                }
                Err(_) => {
                    tracing::debug!(
                        leader,
                        "describe: the leader did not answer in time; answering from this node's view"
                    );
                }
            }
        }
        let status = consensus
            .status()
            .await
            .map_err(|err| to_replication_status(err, None))?;
        let now = consensus.clock_ms();
        let replicas = status
            .replicas
            .iter()
            .map(|replica| {
                let end_offset = replica.end_offset.unwrap_or(0);
                LogReplica {
                    id: replica.id.clone(),
                    voter: replica.voter,
                    end_offset,
                    lag: status.end_offset.saturating_sub(end_offset),
                    last_fetch_ago_ms: replica.last_fetch_ms.map_or(0, |at| now.saturating_sub(at)),
                    fetched: replica.last_fetch_ms.is_some(),
                }
            })
            .collect();
        Ok(Response::new(LogDescription {
            name: DEFAULT_LOG.to_owned(),
            leader_id: status.leader_id.unwrap_or_default(),
            epoch: status.epoch,
            start_offset: status.start_offset,
            end_offset: status.end_offset,
            high_watermark: status.high_watermark,
            replicas,
            described_by: status.id,
        }))
    }
}
