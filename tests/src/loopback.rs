//! A cluster of real `proglog-node` processes on loopback for the black-box tests: nodes
//! `n0`..`n4` on fixed ports that know each other by `--peers`, `n0`-`n2` the initial voters,
//! and the calls the tests make to them (status, produce, consume, voter changes, metrics),
//! each polling with a deadline where the cluster needs time.
//!
//! Test support: a call that cannot be made (a node that does not answer a request that must
//! work) panics, which fails the test with the reason.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use proglog_proto::log::v1::admin_client::AdminClient;
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::{
    AddVoterRequest, ClusterStatusRequest, ConsumeRequest, GetOffsetsRequest, ProduceRequest,
    Record, RemoveVoterRequest,
};
use tokio::time::Instant;

use crate::node_process::{NodeOptions, NodeProcess};
use crate::ports::free_port;

/// Node ids, in order.
pub const IDS: [&str; 5] = ["n0", "n1", "n2", "n3", "n4"];

/// The log's own records (leader changes, voter sets), not data.
pub const CONTROL_TYPES: [u32; 2] = [
    proglog_node::replication::replica::LEADER_CHANGE_RECORD_TYPE,
    proglog_node::replication::replica::VOTERS_RECORD_TYPE,
];

/// Fixed ports for nodes `n0..` up to `size`, and the `--peers` list naming them.
pub fn plan_ports(size: usize) -> (Vec<u16>, String) {
    let ports: Vec<u16> = IDS[..size].iter().map(|_| free_port()).collect();
    let peers = IDS[..size]
        .iter()
        .zip(&ports)
        .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    (ports, peers)
}

/// Options of node `IDS[index]` on `port`, with n0-n2 as the initial voters.
pub fn node_options(index: usize, port: u16, peers: &str) -> NodeOptions {
    let mut options = NodeOptions::default()
        .id(IDS[index])
        .flag("--initial-voters", IDS[..3].join(","))
        .flag("--peers", peers)
        .flag("--election-timeout-ms", "300");
    options.rpc_addr = format!("127.0.0.1:{port}");
    options
}

/// Starts `size` nodes; the first three are the initial voters, the others observers.
pub async fn start_cluster_of(size: usize) -> Vec<NodeProcess> {
    let (ports, peers) = plan_ports(size);
    let mut nodes = Vec::new();
    for (index, port) in ports.into_iter().enumerate() {
        let options = node_options(index, port, &peers).flag("--durability", "always");
        nodes.push(NodeProcess::start(options).await.unwrap());
    }
    nodes
}

/// Starts the three initial voters.
pub async fn start_cluster() -> Vec<NodeProcess> {
    start_cluster_of(3).await
}

/// A node's `ClusterStatus`, as far as these tests look at it.
#[derive(Debug)]
pub struct Status {
    /// Its role.
    pub role: String,
    /// The leader it knows (empty: none).
    pub leader: String,
    /// Its high watermark.
    pub high_watermark: u64,
    /// Its epoch.
    pub epoch: u64,
    /// The voters it knows.
    pub voters: Vec<String>,
    /// Its log's end offset.
    pub end_offset: u64,
}

/// The `ClusterStatus` of `node`, `None` while it does not answer.
pub async fn status(node: &NodeProcess) -> Option<Status> {
    status_over(node.channel().await.ok()?).await
}

/// The `ClusterStatus` a node answers over `channel`, `None` if it does not.
pub async fn status_over(channel: tonic::transport::Channel) -> Option<Status> {
    let mut admin = AdminClient::new(channel);
    let status = admin
        .cluster_status(ClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    Some(Status {
        role: status.role,
        leader: status.leader_id,
        high_watermark: status.high_watermark,
        epoch: status.epoch,
        voters: status.voters,
        end_offset: status.end_offset,
    })
}

/// Polls until exactly one of `live` leads and the others follow it; returns its index.
pub async fn wait_for_leader(nodes: &[NodeProcess], live: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        let mut followers_agree = true;
        let mut named = HashSet::new();
        for &index in live {
            match status(&nodes[index]).await {
                Some(status) if status.role == "leader" => leaders.push(index),
                Some(status) => {
                    named.insert(status.leader);
                }
                None => followers_agree = false,
            }
        }
        if leaders.len() == 1 && followers_agree {
            let leader = IDS[leaders[0]].to_owned();
            if named.iter().all(|name| *name == leader) {
                return leaders[0];
            }
        }
        assert!(
            Instant::now() < deadline,
            "no single leader among {live:?} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces one record through `node` (with a 5 s deadline); its offset.
pub async fn produce(node: &NodeProcess, value: &str) -> Result<u64, tonic::Status> {
    let channel = node
        .channel()
        .await
        .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let mut client = LogClient::new(channel);
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.produce(ProduceRequest {
            record: Some(Record {
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("produce took over 5 s"))??;
    Ok(response.into_inner().offset)
}

/// The record at `offset` (which must be there).
pub async fn consume_at(client: &mut LogClient<tonic::transport::Channel>, offset: u64) -> Record {
    client
        .consume(ConsumeRequest {
            offset,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap()
}

/// Every record a producer wrote below the node's high watermark, by offset.
pub async fn committed_records(node: &NodeProcess) -> BTreeMap<u64, Record> {
    let high_watermark = status(node).await.unwrap().high_watermark;
    let mut client = LogClient::new(node.channel().await.unwrap());
    data_records_below(&mut client, high_watermark, node.id()).await
}

/// Every record a producer wrote below `high_watermark` on the node `client` talks to (`id`),
/// by offset, read as a client reads: each `Consume` at the offset after the record before
/// (reads move past control records, which it checks none is), each within 5 s, until the end.
pub async fn data_records_below(
    client: &mut LogClient<tonic::transport::Channel>,
    high_watermark: u64,
    id: &str,
) -> BTreeMap<u64, Record> {
    let mut records = BTreeMap::new();
    let mut offset = 0;
    while offset < high_watermark {
        let request = ConsumeRequest {
            offset,
            ..Default::default()
        };
        let record = match tokio::time::timeout(Duration::from_secs(5), client.consume(request))
            .await
            .unwrap_or_else(|_| panic!("consume of {offset} from {id} timed out"))
        {
            Ok(response) => response.into_inner().record.unwrap(),
            // Only control records from here to the end.
            Err(status) if status.code() == tonic::Code::OutOfRange => break,
            Err(status) => panic!("consume of {offset} from {id}: {status}"),
        };
        assert!(
            record.offset >= offset && !CONTROL_TYPES.contains(&record.r#type),
            "{record:?} answers a read of {offset} on {id}"
        );
        offset = record.offset + 1;
        records.insert(record.offset, record);
    }
    records
}

/// Polls until every node's high watermark reaches `target`.
pub async fn wait_for_high_watermark(nodes: &[NodeProcess], target: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for node in nodes {
            if status(node).await.is_none_or(|s| s.high_watermark < target) {
                all = false;
            }
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "high watermarks did not reach {target} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes the voter set through the leader's admin service, retrying while the cluster is not
/// ready for it (the node is still catching up, or the leader moved).
pub async fn change_voters(
    nodes: &[NodeProcess],
    live: &[usize],
    add: bool,
    id: &str,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = wait_for_leader(nodes, live).await;
        let mut admin = AdminClient::new(nodes[leader].channel().await.unwrap());
        let result = if add {
            admin
                .add_voter(AddVoterRequest {
                    node_id: id.to_owned(),
                })
                .await
        } else {
            admin
                .remove_voter(RemoveVoterRequest {
                    node_id: id.to_owned(),
                })
                .await
        };
        match result {
            Ok(response) => return response.into_inner().voters,
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::Unavailable
                    ),
                    "{status:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "voter change of {id} not done: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The `/metrics` text of a node.
pub async fn metrics(node: &NodeProcess) -> String {
    http_get(node, "/metrics").await
}

/// The value of the sample `series` (name and labels, exactly) in the node's `/metrics`.
pub async fn metric(node: &NodeProcess, series: &str) -> Option<f64> {
    metrics(node)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The whole HTTP/1.1 response (status line, headers, body) to a GET of `path` on the node's
/// HTTP listener.
pub async fn http_get(node: &NodeProcess, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.http_addr().unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The log's `(start, end)` on `node`.
pub async fn offsets(node: &NodeProcess) -> (u64, u64) {
    let mut client = LogClient::new(node.channel().await.unwrap());
    let offsets = client
        .get_offsets(GetOffsetsRequest::default())
        .await
        .unwrap()
        .into_inner();
    (offsets.start_offset, offsets.end_offset)
}

/// Whether the leader counts `id` as a voter (it is in the voter set and fetches with the data
/// directory the voter set binds it to).
pub async fn leader_counts_as_voter(leader: &NodeProcess, id: &str) -> Option<bool> {
    let mut admin = AdminClient::new(leader.channel().await.ok()?);
    let status = admin
        .cluster_status(ClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    status
        .replicas
        .iter()
        .find(|replica| replica.id == id && replica.fetched)
        .map(|replica| replica.voter)
}

/// Polls until `check` holds, failing with `what` after 30 s.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's volume is lost: it is killed, its data directory emptied, and it comes back
/// under the same id with an empty directory.
pub async fn wipe_and_restart(node: &mut NodeProcess) {
    node.kill().await.unwrap();
    let dir = node.data_dir().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    node.restart().await.unwrap();
}
