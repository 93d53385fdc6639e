//! The `log.v1.Logs` service: which logs a cluster holds, and how each one is doing.
//!
//! Implemented by [`LogService`], whose store, ACL and channels to the leader it shares. A
//! describe asked of a follower is answered by the leader (only the leader knows every
//! replica's progress); when the leader cannot be reached, the follower answers from its own
//! view, without replicas, so a describe still says who this node thinks leads.

use tonic::{Request, Response, Status};

use super::log_service::{FORWARDED_METADATA, HELD_LOGS, LogService, forwarded_request, open_log};
use super::status::to_replication_status;
use crate::security::{Action, PeerIdentity, WILDCARD_OBJECT};
use proglog_proto::log::v1::logs_client::LogsClient;
use proglog_proto::log::v1::logs_server::Logs as LogsApi;
use proglog_proto::log::v1::{
    DescribeLogRequest, ListLogsRequest, ListLogsResponse, LogDescription, LogReplica, LogSummary,
};

/// How long a follower waits for the leader's describe before answering from its own view.
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The deadline a caller gave (the `grpc-timeout` header: digits and a unit), if any.
fn caller_deadline<T>(request: &Request<T>) -> Option<std::time::Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let unit = value.chars().last()?;
    let amount: u64 = value.get(..value.len() - 1)?.parse().ok()?;
    use std::time::Duration;
    match unit {
        'H' => Some(Duration::from_secs(amount.saturating_mul(3600))),
        'M' => Some(Duration::from_secs(amount.saturating_mul(60))),
        'S' => Some(Duration::from_secs(amount)),
        'm' => Some(Duration::from_millis(amount)),
        'u' => Some(Duration::from_micros(amount)),
        'n' => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

#[tonic::async_trait]
impl LogsApi for LogService {
    async fn list_logs(
        &self,
        request: Request<ListLogsRequest>,
    ) -> Result<Response<ListLogsResponse>, Status> {
        let peer = PeerIdentity::of(&request);
        // Only the logs the caller may read, as Kafka's metadata lists only authorized topics.
        let view = self.store().consensus().view();
        let logs = HELD_LOGS
            .iter()
            .copied()
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
        let name = if forwarded && let Some(acl) = self.acl() {
            // A follower passes on a describe it has decided on its client's identity; the
            // leader sees the follower's, which holds `replicate`, not `consume`.
            acl.authorize_log(peer, WILDCARD_OBJECT, Action::Replicate)?;
            open_log(None, peer, &request.get_ref().log, Action::Consume)?
        } else {
            open_log(self.acl(), peer, &request.get_ref().log, Action::Consume)?
        };
        let consensus = self.store().consensus();
        let view = consensus.view();
        if view.leader_epoch.is_none()
            && !forwarded
            && let Some(leader) = view.leader_id.as_deref()
            && let Ok(channel) = self.peers().channel_to(leader)
        {
            // Within the caller's own deadline too, with half of it left for the answer here.
            let wait = caller_deadline(&request)
                .map_or(FORWARD_WAIT, |deadline| FORWARD_WAIT.min(deadline / 2));
            let mut client = LogsClient::new(channel);
            let call = client.describe_log(forwarded_request(request));
            match tokio::time::timeout(wait, call).await {
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
        let status = {
            let _one_at_a_time = self.describe_gate().lock().await;
            consensus
                .status()
                .await
                .map_err(|err| to_replication_status(err, None))?
        };
        let now = consensus.clock_ms();
        let replicas = status
            .replicas
            .iter()
            .map(|replica| LogReplica {
                id: replica.id.clone(),
                voter: replica.voter,
                end_offset: replica.end_offset.unwrap_or(0),
                lag: replica.lag(status.end_offset),
                last_fetch_ago_ms: replica.fetched_ago_ms(now),
                fetched: replica.last_fetch_ms.is_some(),
            })
            .collect();
        Ok(Response::new(LogDescription {
            name: name.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_callers_deadline_is_read_in_every_unit_and_nonsense_is_none() {
        let with = |value: &str| {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("grpc-timeout", value.parse().unwrap());
            caller_deadline(&request)
        };
        assert_eq!(with("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(with("3M"), Some(Duration::from_secs(180)));
        assert_eq!(with("4S"), Some(Duration::from_secs(4)));
        assert_eq!(with("500m"), Some(Duration::from_millis(500)));
        assert_eq!(with("7u"), Some(Duration::from_micros(7)));
        assert_eq!(with("9n"), Some(Duration::from_nanos(9)));
        for nonsense in ["", "m", "12", "1x", "-1S", "99999999999999999999S"] {
            assert_eq!(with(nonsense), None, "{nonsense:?}");
        }
        assert_eq!(caller_deadline(&Request::new(())), None);
    }
}
