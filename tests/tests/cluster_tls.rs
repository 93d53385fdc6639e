//! A 3-node cluster of real `proglog-node` processes on loopback with mutual TLS and the ACL on
//! every node: clients and nodes alike present certificates of one throwaway CA, and nodes call
//! each other (votes, fetches, forwarded produces) with their own certificates.
//!
//! Proves: the nodes elect a leader and replicate over mutual TLS with nothing but `replicate`
//! and `produce` granted to their names; a record produced through the leader by an application
//! is read back from every follower; an application certificate of the cluster's own CA cannot
//! call the peer service (no raw `Fetch` of the log, no `Vote`); a produce sent to a follower is
//! forwarded to the leader and succeeds, while a client the follower would refuse is not
//! forwarded at all; and the follower calls the leader as itself, so with `produce` taken from
//! the nodes' names the leader refuses the forwarded produce, naming the follower. And a CA
//! rotation done on the files alone (trust both CAs, reissue every node from the new one, trust
//! only the new one) leaves a cluster that still replicates over new connections: a node calls
//! its peers with the reloaded certificate, not the one it started with. The operator's admin
//! client (`proglog_operator::admin::GrpcAdmin`) manages such a cluster over mutual TLS: status,
//! leadership transfer, and removing and adding a voter.
//!
//! Certificates are made with `rcgen`: node certificates carry the addresses `--peers` gives
//! (`127.0.0.1`, as an IP SAN) and are usable as server and client certificates; clients connect
//! to `https://127.0.0.1:<port>` and so check the same SAN. Every wait polls with a deadline.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use proglog_proto::log::v1::DescribeLogRequest;
use proglog_proto::log::v1::admin_client::AdminClient;
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::logs_client::LogsClient;
use proglog_proto::log::v1::peer_client::PeerClient;
use proglog_proto::log::v1::{
    BeginQuorumEpochRequest, ClusterStatusRequest, ClusterStatusResponse, ConsumeRequest,
    FetchRequest, ProduceRequest, Record, RemoveVoterRequest, TransferLeadershipRequest,
    VoteRequest,
};
use proglog_tests::node_process::{NodeOptions, NodeProcess};
use proglog_tests::ports::free_port;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const IDS: [&str; 3] = ["n0", "n1", "n2"];

/// The longest any one call may take.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// How long an election, or a record's replication, may take.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);

/// Between two looks at a condition being polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// proglog's Casbin model, unchanged.
const MODEL: &str = "[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
";

/// The nodes get only what they use: `replicate` for the peer service and `produce` for the
/// produces they forward. The application produces and consumes, `reader` only consumes, and
/// `operator` administers.
const POLICY: &str = "p, n0, *, replicate
p, n0, *, produce
p, n1, *, replicate
p, n1, *, produce
p, n2, *, replicate
p, n2, *, produce
p, app, *, produce
p, app, *, consume
p, reader, *, consume
p, operator, *, admin
";

/// A CA, and the certificates, keys, model and policy files of one cluster.
struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// One issued certificate: its files (for a node's flags) and its PEM (for a client identity).
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    identity: Identity,
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("proglog-cluster-tls-")
            .tempdir()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "proglog cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key)?.pem();
        let pki = Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
        };
        pki.write("ca.pem", &pki.ca_pem)?;
        Ok(pki)
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A node's certificate: it serves with it (SANs `localhost` and `127.0.0.1`, what
    /// `--peers` names) and presents it when calling its peers, so it is for both.
    fn issue_node(&self, id: &str) -> anyhow::Result<Issued> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, id)
    }

    /// A client's certificate, good for client authentication only.
    fn issue_client(&self, common_name: &str) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, common_name)
    }

    /// Signs `params` with subject CN `common_name` (the ACL subject) and writes
    /// `<common_name>.pem` and `<common_name>.key`.
    fn issue(&self, mut params: CertificateParams, common_name: &str) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok(Issued {
            cert: self.write(&format!("{common_name}.pem"), &cert_pem)?,
            key: self.write(&format!("{common_name}.key"), &key_pem)?,
            identity: Identity::from_pem(cert_pem, key_pem),
        })
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }
}

/// A running cluster and the client certificates the tests call it with.
struct SecureCluster {
    nodes: Vec<NodeProcess>,
    pki: Pki,
    app: Issued,
    reader: Issued,
    operator: Issued,
}

impl SecureCluster {
    /// Starts n0, n1 and n2 with [`POLICY`].
    async fn start() -> anyhow::Result<Self> {
        Self::start_with_policy(POLICY).await
    }

    /// Starts n0, n1 and n2, each serving mutual TLS with its own certificate and enforcing
    /// the ACL `policy`, with the others' addresses from `--peers`.
    async fn start_with_policy(policy: &str) -> anyhow::Result<Self> {
        Self::start_with(Some(policy)).await
    }

    /// Starts n0, n1 and n2 as [`SecureCluster::start_with_policy`] does, or with mutual TLS,
    /// no ACL, and `operator` as the one admin subject.
    async fn start_with(policy: Option<&str>) -> anyhow::Result<Self> {
        let pki = Pki::new()?;
        let acl = match policy {
            Some(policy) => Some((
                pki.write("model.conf", MODEL)?,
                pki.write("policy.csv", policy)?,
            )),
            None => None,
        };
        let ports: Vec<u16> = IDS.iter().map(|_| free_port()).collect();
        let peers = IDS
            .iter()
            .zip(&ports)
            .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (id, port) in IDS.iter().zip(&ports) {
            let certificate = pki.issue_node(id)?;
            let mut options = NodeOptions::default()
                .id(*id)
                .flag("--initial-voters", IDS.join(","))
                .flag("--peers", &peers)
                .flag("--election-timeout-ms", "300")
                .flag("--tls-cert", &certificate.cert)
                .flag("--tls-key", &certificate.key)
                .flag("--tls-client-ca", pki.ca_path())
                .flag("--tls-reload-interval-ms", "100");
            if let Some((model, policy)) = &acl {
                options = options
                    .flag("--acl-model", model)
                    .flag("--acl-policy", policy);
            } else {
                // Without an ACL, the operator's certificate may administer the cluster.
                options = options.flag("--admin-subjects", "operator");
            }
            options.rpc_addr = format!("127.0.0.1:{port}");
            nodes.push(NodeProcess::start(options).await?);
        }
        Ok(SecureCluster {
            nodes,
            app: pki.issue_client("app")?,
            reader: pki.issue_client("reader")?,
            operator: pki.issue_client("operator")?,
            pki,
        })
    }

    /// A mutual-TLS channel to node `index` presenting `who`, checking the node's certificate
    /// against the cluster's CA and its IP address. It connects at the first call (and again
    /// after a failure), so polls can keep one channel.
    fn channel(&self, index: usize, who: &Issued) -> anyhow::Result<Channel> {
        tls_channel(&self.nodes[index], &self.pki.ca_pem, who)
    }

    fn log_client(&self, index: usize, who: &Issued) -> anyhow::Result<LogClient<Channel>> {
        Ok(LogClient::new(self.channel(index, who)?))
    }

    /// Polls `ClusterStatus` (as `operator`) until exactly one node leads and the other two
    /// follow it; returns the leader's index.
    async fn wait_for_leader(&self) -> anyhow::Result<usize> {
        let mut admins = (0..IDS.len())
            .map(|index| Ok(AdminClient::new(self.channel(index, &self.operator)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let deadline = Instant::now() + CONVERGE_DEADLINE;
        loop {
            let mut statuses: Vec<Result<ClusterStatusResponse, tonic::Status>> = Vec::new();
            for admin in &mut admins {
                let status = admin.cluster_status(ClusterStatusRequest {}).await;
                statuses.push(status.map(tonic::Response::into_inner));
            }
            // A refused certificate or call never heals: fail at once rather than at the
            // deadline.
            for status in statuses.iter().filter_map(|status| status.as_ref().err()) {
                ensure!(
                    !matches!(
                        status.code(),
                        Code::PermissionDenied | Code::Unauthenticated
                    ),
                    "ClusterStatus as operator refused: {status:?}"
                );
            }
            if let Some(leader) = single_leader(&statuses) {
                return Ok(leader);
            }
            ensure!(
                Instant::now() < deadline,
                "no single leader within {CONVERGE_DEADLINE:?}; last statuses: {statuses:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls `Consume(offset)` on node `index` as `app` until the record is there (a follower
    /// serves it once it is committed there).
    async fn wait_for_record(&self, index: usize, offset: u64) -> anyhow::Result<Record> {
        let channel = self.channel(index, &self.app)?;
        wait_for_record_on(channel, &self.nodes[index], offset).await
    }

    /// SIGTERM to every node, and waits for each to exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            let status = node.terminate().await?;
            ensure!(status.success(), "{} exited with {status}", node.id());
        }
        Ok(())
    }
}

/// A mutual-TLS channel to `node` presenting `who`, trusting `ca_pem`; connects lazily.
fn tls_channel(node: &NodeProcess, ca_pem: &str, who: &Issued) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(who.identity.clone());
    Ok(
        Endpoint::from_shared(format!("https://{}", node.rpc_addr()))?
            .connect_timeout(CALL_DEADLINE)
            .timeout(CALL_DEADLINE)
            .tls_config(tls)?
            .connect_lazy(),
    )
}

/// Polls `Consume(offset)` on `node` over `channel` until the record is there.
async fn wait_for_record_on(
    channel: Channel,
    node: &NodeProcess,
    offset: u64,
) -> anyhow::Result<Record> {
    let mut client = LogClient::new(channel);
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        let answer = client
            .consume(ConsumeRequest {
                offset,
                ..Default::default()
            })
            .await;
        match answer {
            Ok(response) => {
                return response
                    .into_inner()
                    .record
                    .with_context(|| format!("{} answered without a record", node.id()));
            }
            // Not replicated (or committed) there yet, or not reachable yet.
            Err(status) if matches!(status.code(), Code::OutOfRange | Code::Unavailable) => {
                ensure!(
                    Instant::now() < deadline,
                    "offset {offset} not readable on {} within {CONVERGE_DEADLINE:?}: {status:?}; \
                     its last log lines: {:?}",
                    node.id(),
                    node.stderr_lines().iter().rev().take(5).collect::<Vec<_>>()
                );
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(status) => bail!("consume of offset {offset} on {}: {status:?}", node.id()),
        }
    }
}

/// Writes `bytes` to `path` the way a rotation should: aside, then renamed over.
fn replace_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let aside = path.with_extension("new");
    std::fs::write(&aside, bytes).with_context(|| format!("write {}", aside.display()))?;
    std::fs::rename(&aside, path).with_context(|| format!("rename onto {}", path.display()))
}

/// Polls until every node has logged `times` TLS reloads in all.
async fn wait_for_reloads(nodes: &[NodeProcess], times: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|node| {
                node.stderr_lines()
                    .iter()
                    .filter(|line| line.contains("TLS certificate reloaded"))
                    .count()
            })
            .collect();
        if counts.iter().all(|&count| count >= times) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "not every node reloaded its TLS files {times} times within {CONVERGE_DEADLINE:?}: {counts:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The leader's index if exactly one node says it leads and every other one names it.
fn single_leader(statuses: &[Result<ClusterStatusResponse, tonic::Status>]) -> Option<usize> {
    let mut leaders = Vec::new();
    let mut named = HashSet::new();
    for (index, status) in statuses.iter().enumerate() {
        let status = status.as_ref().ok()?;
        if status.role == "leader" {
            leaders.push(index);
        } else {
            named.insert(status.leader_id.as_str());
        }
    }
    match leaders[..] {
        [leader] if named.iter().all(|name| *name == IDS[leader]) => Some(leader),
        _ => None,
    }
}

fn produce_request(value: &str) -> ProduceRequest {
    ProduceRequest {
        record: Some(Record {
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_elects_a_leader_and_replicates() -> anyhow::Result<()> {
    let cluster = SecureCluster::start().await?;
    let leader = cluster.wait_for_leader().await?;

    let mut client = cluster.log_client(leader, &cluster.app)?;
    let offset = client
        .produce(produce_request("over mutual TLS"))
        .await
        .context("produce on the leader as app")?
        .into_inner()
        .offset;
    for index in (0..IDS.len()).filter(|&index| index != leader) {
        let record = cluster.wait_for_record(index, offset).await?;
        assert_eq!(
            record.value,
            "over mutual TLS".as_bytes(),
            "offset {offset} on {}",
            IDS[index]
        );
    }
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_certificate_cannot_call_the_peer_service() -> anyhow::Result<()> {
    let cluster = SecureCluster::start().await?;
    let leader = cluster.wait_for_leader().await?;
    let mut peer = PeerClient::new(cluster.channel(leader, &cluster.app)?);

    // A fetch would read the whole raw log, past any consume permission.
    let denied = peer
        .fetch(FetchRequest {
            epoch: 0,
            replica_id: "app".into(),
            fetch_offset: 0,
            last_fetched_epoch: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            directory_id: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("a fetch as app must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    ensure!(
        denied.message().contains("app") && denied.message().contains("replicate"),
        "the denial names the subject and the action: {}",
        denied.message()
    );

    // A vote would move leadership.
    let denied = peer
        .vote(VoteRequest {
            pre_vote: false,
            candidate_epoch: u64::MAX / 2,
            candidate_id: "app".into(),
            last_offset_epoch: u64::MAX / 2,
            end_offset: u64::MAX / 2,
            ..Default::default()
        })
        .await
        .expect_err("a vote request as app must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // And it moved nothing: the same node still leads.
    assert_eq!(cluster.wait_for_leader().await?, leader);

    // A node's certificate speaks for that node only: n1 cannot fetch (and so count towards
    // the high watermark) as n2.
    let n1 = cluster.pki.issue_node("n1")?;
    let mut as_n1 = PeerClient::new(cluster.channel(leader, &n1)?);
    let denied = as_n1
        .fetch(FetchRequest {
            epoch: 0,
            replica_id: "n2".into(),
            fetch_offset: 0,
            last_fetched_epoch: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            directory_id: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("n1 fetching as n2 must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    ensure!(
        denied.message().contains("cannot speak for node `n2`"),
        "{}",
        denied.message()
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_sent_to_a_follower_is_forwarded_with_the_nodes_identity() -> anyhow::Result<()> {
    let cluster = SecureCluster::start().await?;
    let leader = cluster.wait_for_leader().await?;
    let follower = (leader + 1) % IDS.len();

    // The follower checks the client, then calls the leader as itself (a node name with
    // `produce`); the leader commits it.
    let mut client = cluster.log_client(follower, &cluster.app)?;
    let offset = client
        .produce(produce_request("through a follower"))
        .await
        .context("produce on a follower as app")?
        .into_inner()
        .offset;
    let mut on_leader = cluster.log_client(leader, &cluster.app)?;
    let record = on_leader
        .consume(ConsumeRequest {
            offset,
            ..Default::default()
        })
        .await
        .context("consume on the leader as app")?
        .into_inner()
        .record
        .context("no record")?;
    assert_eq!(record.value, "through a follower".as_bytes());
    let record = cluster.wait_for_record(follower, offset).await?;
    assert_eq!(record.value, "through a follower".as_bytes());

    // Forwarding lends no permission: a client the follower refuses is refused there, naming
    // that client, not the node.
    let mut reader = cluster.log_client(follower, &cluster.reader)?;
    let denied = reader
        .produce(produce_request("not allowed"))
        .await
        .expect_err("a produce as reader must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    ensure!(
        denied.message().contains("reader") && denied.message().contains("produce"),
        "{}",
        denied.message()
    );

    // A describe through the follower is answered by the leader, which accepts it from the
    // follower's identity (`replicate`); the client was decided on the follower.
    let mut logs = LogsClient::new(cluster.channel(follower, &cluster.reader)?);
    let described = logs
        .describe_log(DescribeLogRequest::default())
        .await
        .context("describe on a follower as reader")?
        .into_inner();
    assert_eq!(described.described_by, IDS[leader], "{described:?}");
    assert_eq!(described.replicas.len(), 2, "{described:?}");
    // Claiming to be forwarded lends nothing: the leader wants `replicate` for that.
    let mut claimed = tonic::Request::new(DescribeLogRequest::default());
    claimed
        .metadata_mut()
        .insert("proglog-forwarded-by", "1".parse()?);
    let denied = LogsClient::new(cluster.channel(leader, &cluster.reader)?)
        .describe_log(claimed)
        .await
        .expect_err("a client claiming to be a node must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_produce_needs_produce_granted_to_the_forwarding_node() -> anyhow::Result<()> {
    // The nodes may replicate but not produce: the leader refuses what a follower forwards,
    // because the follower calls it with its own certificate, not the client's.
    let policy: String = POLICY
        .lines()
        .filter(|line| !(line.starts_with("p, n") && line.ends_with(", produce")))
        .map(|line| format!("{line}\n"))
        .collect();
    let cluster = SecureCluster::start_with_policy(&policy).await?;
    let leader = cluster.wait_for_leader().await?;
    let follower = (leader + 1) % IDS.len();

    let mut direct = cluster.log_client(leader, &cluster.app)?;
    direct
        .produce(produce_request("straight to the leader"))
        .await
        .context("produce on the leader as app")?;
    let mut forwarded = cluster.log_client(follower, &cluster.app)?;
    let denied = forwarded
        .produce(produce_request("forwarded"))
        .await
        .expect_err("the leader must refuse a node without produce");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    ensure!(
        denied.message().contains(IDS[follower]) && denied.message().contains("produce"),
        "the leader names the forwarding node: {}",
        denied.message()
    );
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_ca_rotation_nodes_call_their_peers_with_the_new_certificates() -> anyhow::Result<()>
{
    let mut cluster = SecureCluster::start().await?;
    // The node that keeps running through the test: a follower now (it may lead later; the
    // test hands leadership away from it then).
    let old = (cluster.wait_for_leader().await? + 1) % IDS.len();
    let ca_path = cluster.pki.ca_path();
    let new_ca = Pki::new()?;

    // 1. Trust both CAs. 2. Reissue every node from the new one. 3. Trust only the new one.
    replace_file(
        &ca_path,
        format!("{}{}", cluster.pki.ca_pem, new_ca.ca_pem).as_bytes(),
    )?;
    wait_for_reloads(&cluster.nodes, 1).await?;
    for node in &cluster.nodes {
        let issued = new_ca.issue_node(node.id())?;
        let dir = cluster.pki.dir.path();
        // Key first: a new key with the old certificate is refused and retried, not served.
        replace_file(
            &dir.join(format!("{}.key", node.id())),
            &std::fs::read(&issued.key)?,
        )?;
        replace_file(
            &dir.join(format!("{}.pem", node.id())),
            &std::fs::read(&issued.cert)?,
        )?;
    }
    wait_for_reloads(&cluster.nodes, 2).await?;
    replace_file(&ca_path, new_ca.ca_pem.as_bytes())?;
    wait_for_reloads(&cluster.nodes, 3).await?;

    // Open connections keep the certificates they were made with, so make the nodes connect
    // anew: restart two of them, and keep the third (`old`, still the process that started
    // with the old certificate) a follower. It must then fetch from a restarted leader over a
    // new connection, which the leader accepts only with a certificate of the new CA.
    let operator = new_ca.issue_client("operator")?;
    let app = new_ca.issue_client("app")?;
    for index in (0..IDS.len()).filter(|&index| index != old) {
        let status = cluster.nodes[index].terminate().await?;
        ensure!(status.success(), "{} exited with {status}", IDS[index]);
        cluster.nodes[index].restart().await?;
    }
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    let leader = loop {
        let mut leaders = Vec::new();
        for (index, node) in cluster.nodes.iter().enumerate() {
            let mut admin = AdminClient::new(tls_channel(node, &new_ca.ca_pem, &operator)?);
            if let Ok(status) = admin.cluster_status(ClusterStatusRequest {}).await
                && status.get_ref().role == "leader"
            {
                leaders.push(index);
            }
        }
        match leaders[..] {
            [leader] if leader != old => break leader,
            [leader] => {
                // The old process leads: hand over to a restarted one.
                let mut admin = AdminClient::new(tls_channel(
                    &cluster.nodes[leader],
                    &new_ca.ca_pem,
                    &operator,
                )?);
                let _ = admin
                    .transfer_leadership(TransferLeadershipRequest {})
                    .await;
            }
            _ => {}
        }
        ensure!(
            Instant::now() < deadline,
            "no single leader other than {} within {CONVERGE_DEADLINE:?}",
            IDS[old]
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };

    let mut client = LogClient::new(tls_channel(&cluster.nodes[leader], &new_ca.ca_pem, &app)?);
    let offset = client
        .produce(produce_request("after the rotation"))
        .await
        .context("produce on the restarted leader with a new-CA certificate")?
        .into_inner()
        .offset;
    let channel = tls_channel(&cluster.nodes[old], &new_ca.ca_pem, &app)?;
    let record = wait_for_record_on(channel, &cluster.nodes[old], offset)
        .await
        .with_context(|| format!("replication from the restarted leader {}", IDS[leader]))?;
    assert_eq!(record.value, "after the rotation".as_bytes());
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_admin_client_manages_a_mutual_tls_cluster() -> anyhow::Result<()> {
    use proglog_operator::admin::{AdminTarget, ClientCredentials, GrpcAdmin, NodeAdmin};

    let cluster = SecureCluster::start().await?;
    let leader = cluster.wait_for_leader().await?;
    let credentials = std::sync::Arc::new(ClientCredentials {
        ca_pem: cluster.pki.ca_pem.clone().into_bytes(),
        cert_pem: std::fs::read(&cluster.operator.cert)?,
        key_pem: std::fs::read(&cluster.operator.key)?,
    });
    // The node certificates name 127.0.0.1, which the client checks as the operator checks a
    // pod's DNS name.
    let target = |index: usize| AdminTarget {
        host: "127.0.0.1".into(),
        port: i32::from(cluster.nodes[index].rpc_addr().port()),
        tls: Some(std::sync::Arc::clone(&credentials)),
    };
    let admin = GrpcAdmin;

    let quorum = admin.cluster_status(&target(leader)).await?;
    assert_eq!(quorum.leader.as_deref(), Some(IDS[leader]));
    assert_eq!(quorum.voters, IDS);
    ensure!(
        quorum.replicas.iter().all(|replica| replica.voter),
        "{quorum:?}"
    );

    // Leadership moves away, as before a leader's pod is deleted. The resigning leader may win
    // the election that follows, as in the operator's roll: ask again until it has moved.
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    let mut current = leader;
    let new_leader = loop {
        if current == leader {
            // It may stop leading between the status and this call; the loop checks the
            // outcome, leadership having moved, not each call.
            let _ = admin.transfer_leadership(&target(current)).await;
        }
        current = cluster.wait_for_leader().await?;
        if current != leader {
            break current;
        }
        ensure!(
            Instant::now() < deadline,
            "leadership never moved from {}",
            IDS[leader]
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };

    // A scale-down's step and its undoing: remove the old leader, then add it back.
    let voters = admin.remove_voter(&target(new_leader), IDS[leader]).await?;
    assert!(
        !voters.iter().any(|voter| voter == IDS[leader]),
        "{voters:?}"
    );
    let voters = admin.add_voter(&target(new_leader), IDS[leader]).await?;
    assert!(
        voters.iter().any(|voter| voter == IDS[leader]),
        "{voters:?}"
    );

    // A follower answers too, and says who leads.
    let follower = (0..IDS.len())
        .find(|&index| index != new_leader)
        .unwrap_or(0);
    let seen = admin.cluster_status(&target(follower)).await?;
    assert_eq!(seen.leader.as_deref(), Some(IDS[new_leader]));
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_acl_a_client_certificate_still_cannot_call_the_peer_service()
-> anyhow::Result<()> {
    let cluster = SecureCluster::start_with(None).await?;
    let leader = cluster.wait_for_leader().await?;
    // `app` holds a certificate of the cluster's CA, but is not a member of the cluster.
    let mut peer = PeerClient::new(cluster.channel(leader, &cluster.app)?);
    let denied = peer
        .begin_quorum_epoch(BeginQuorumEpochRequest {
            epoch: 1 << 10,
            leader_id: "app".into(),
        })
        .await
        .expect_err("an announcement from a client certificate must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    ensure!(
        denied.message().contains("not a member"),
        "{}",
        denied.message()
    );
    let denied = peer
        .fetch(FetchRequest {
            replica_id: "app".into(),
            max_bytes: 1 << 20,
            ..Default::default()
        })
        .await
        .expect_err("a fetch from a client certificate must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Nor may it administer the cluster, though it calls over loopback: only `operator` may.
    let denied = AdminClient::new(cluster.channel(leader, &cluster.app)?)
        .remove_voter(RemoveVoterRequest {
            node_id: IDS[(leader + 1) % 3].into(),
        })
        .await
        .expect_err("an admin call from a certificate not in --admin-subjects must be refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(cluster.wait_for_leader().await?, leader);
    cluster.stop().await
}
