//! End to end: what `proglog-operator render` produces for a 3-replica `LogCluster` with TLS
//! (the operator's own CA) and the ACL runs as a cluster, and survives a certificate roll; a
//! plaintext one keeps its peer port to the cluster's certificates.
//!
//! # What it does
//!
//! 1. Renders a `LogCluster` (`streams/logs`, 3 replicas, TLS issued by the operator, ACL with a
//!    user policy ConfigMap granting the test's application certificate `produce` and
//!    `consume`) with the operator binary, and reads the output generically (JSON values; no
//!    operator code is linked).
//! 2. Runs each StatefulSet pod as a real `proglog-node` process (`proglog_tests::pods`):
//!    in a network namespace of its own with its own address ([`NetLab`]); with the pod's
//!    hostname (a UTS namespace); resolving every pod's four DNS names under the headless
//!    Service and the client Service's names through the namespace's hosts file; with every
//!    volume the pod spec names at its `mountPath` in a private mount namespace (Secrets and
//!    ConfigMaps projected as the kubelet does, with `defaultMode`, `fsGroup` ownership and the
//!    `..data` symlink layout; `emptyDir` and the claim template as empty directories); with
//!    the container's environment (`envFrom` the ConfigMap, downward-API field references,
//!    `$(VAR)` expansion) and args as rendered; as the security context's user and groups,
//!    without capabilities or new privileges, on a read-only root file system. Nothing is
//!    configured by the test: every setting the node gets comes from the rendered objects.
//! 3. Polls the rendered readiness probe of each pod (and checks its liveness probe, the
//!    process's user, groups and hostname), then checks that the cluster formed
//!    (`GetServers` on every pod lists all three at their headless-Service addresses; gossip
//!    on every pod knows all three), elected one leader that every pod names (`ClusterStatus`
//!    with the operator's own client certificate, which the ACL grants `admin`), and that each
//!    node serves the certificate its volume holds, valid for every form of the pod's name.
//! 4. Produces through the client Service's DNS name with the `proglog` command line client,
//!    run in a fourth namespace (an in-cluster client pod) with an application certificate the
//!    test issues from the rendered CA key, with every form of the name and every pod as the
//!    backend, and reads every acknowledged record back from every pod over mutual TLS.
//! 5. Rolls the certificates: renders again, with the first render's Secrets in the input, at a
//!    time within `renewBefore` of the node certificates' end, so the renderer renews them
//!    (keeping the CA); checks that nothing a pod reads at start (template, environment)
//!    changed, so no restart is due; writes the changed volumes in place as the kubelet does
//!    (a new timestamped directory and an atomic rename of `..data`); and polls until every
//!    node serves its new certificate, with the same process ids as before, and logs that its
//!    peer calls switched to it.
//! 6. Waits until the nodes refuse the first render's (now expired) operator certificate, so
//!    every TLS handshake from then on, the test's and the nodes' own peer connections alike,
//!    needs a renewed certificate; then produces through the client Service again and reads
//!    everything back from every pod. Each node also reports (`ClusterStatus`) the SHA-256 of
//!    the certificate and trust bundle it has loaded: the renewed files'.
//!
//! A second test renders a plaintext `LogCluster` (no TLS for clients, no ACL), runs it the
//! same way (its readiness probe is gRPC health), and checks that the cluster forms over the
//! peer port's mutual TLS all the same, that a plaintext client produces and reads back, and
//! that a caller without the cluster's certificate (plaintext, TLS without a certificate, or a
//! certificate with a node's name from another CA) gets no `Vote`, `Fetch` or `RemoveVoter`
//! answered on any pod's peer port, while the client port serves neither service; the leader,
//! epoch and voters stay as they were. The rendered NetworkPolicy is not enforced here (no
//! network plugin): the peer port's mutual TLS alone keeps them out.
//!
//! The first render is made with `--now` nine minutes in the past, with ten-minute
//! certificates renewed nine minutes before their end: its certificates are valid while the
//! cluster starts and expire a minute into the test (most of the test's run time is this
//! wait; the first phase takes a few seconds). The second render is made at the
//! current time, inside the renewal window. Both renders' certificates are valid at the real
//! time the nodes check them (the renderer backdates certificates by five minutes for clock
//! skew, so a render "in the future" would give certificates not yet valid).
//!
//! # What it proves
//!
//! The rendered StatefulSet, ConfigMaps, Secrets and Services, taken as they are, configure
//! nodes that find each other by the headless Service's names, form one cluster by gossip,
//! elect a leader and replicate over mutual TLS with the operator's certificates, under the
//! rendered ACL (the nodes' own names for replication and forwarding, the operator's for
//! admin, a user ConfigMap's line for an application). The certificate names match the DNS
//! names clients and peers use (the client Service's and each pod's). The rendered file modes,
//! `fsGroup` and user let the non-root node read its Secrets and write its data directory on a
//! read-only root file system. A renewal by the renderer reaches running nodes through the
//! kubelet's atomic volume update and is picked up without a restart, and replication keeps
//! working after the old certificates expired.
//!
//! # What it does not prove
//!
//! There is no Kubernetes here: no API server (nothing is applied or validated by one; the
//! operator's reconciler does not run, only `render`), no kubelet (its behaviour is imitated
//! by `proglog_tests::pods` as documented there: volume projection, environment resolution,
//! security context), no container runtime or image (the node binary from `target/` runs
//! directly; the image's contents, entrypoint and `USER` are untested; no cgroups, resource
//! limits, seccomp profile or `sizeLimit`), no scheduler (affinity, tolerations, priority are
//! ignored), no StatefulSet controller (ordering, `updateStrategy`, PVC provisioning: the
//! claim is an empty host directory), no PodDisruptionBudget. Probes are polled once by the
//! test, not run periodically by a kubelet, and nothing restarts a failed container. There is
//! no cluster DNS and no kube-proxy: names resolve through hosts files (every namespace maps
//! the client Service's names to pod 0, as if its ClusterIP always chose that pod; the client
//! pod's calls map them to each pod in turn, imitating load balancing one connection at a
//! time; the short names resolve through explicit entries, not search domains). The kubelet's
//! delay before updating a mounted Secret (up to its sync period plus the cache TTL) is not
//! imitated: the update happens at once. Connections a node opened before its certificate was
//! renewed and kept open are not checked again after the old certificate expired, so this
//! does not show that no such connection lingers (`tests/cluster_tls.rs` covers peer calls
//! switching to a reloaded certificate).
//!
//! Needs root (network, mount and UTS namespaces), `ip` (iproute2) and util-linux (`unshare`,
//! `mount`, `setpriv`, `nsenter`); skips, printing why, without them. Needs the node, client and operator
//! binaries built: `cargo build -p proglog-node -p proglog-operator` (`cargo test --workspace`
//! builds them).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proglog_client::{Client, TlsOptions};
use proglog_proto::log::v1::ClusterStatusRequest;
use proglog_proto::log::v1::admin_client::AdminClient;
use proglog_tests::kube_objects::{self, Objects, object_name};
use proglog_tests::netns::NetLab;
use proglog_tests::node_process::node_binary;
use proglog_tests::pod_spec::{PodPlan, PodSite, Probe, service_dns_names};
use proglog_tests::pods::{self, MountPoints, PodLaunch, PodProcess, PodSandbox, install_binary};
use proglog_tests::tls_probe::{self, ClientPem};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const NAMESPACE: &str = "streams";
const CLUSTER: &str = "logs";
const REPLICAS: usize = 3;
/// The operator's default cluster domain (`render --cluster-domain`).
const CLUSTER_DOMAIN: &str = "cluster.local";
/// The application certificate's common name: the ACL subject of the user policy.
const APP_SUBJECT: &str = "e2e-app";
/// `spec.tls.certValidity` and `renewBefore`, in seconds (see the module documentation).
const CERT_VALIDITY_SECS: u64 = 600;
const RENEW_BEFORE_SECS: u64 = 540;
/// How long the first render's certificates have left when the test starts: the cluster must
/// start and serve the first records within it.
const FIRST_CERTS_LEFT_SECS: u64 = 60;
/// `spec.log.segmentBytes`: segments are preallocated, and the node's default (1 GiB) times
/// three would fill a small test disk.
const SEGMENT_BYTES: u64 = 4 << 20;
/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a single call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The command line client's binary, next to the node's.
const CLIENT_BINARY: &str = "proglog";
/// Where host directories of the pods live: world-searchable (the pods' non-root user runs the
/// binary from there) and not under `/tmp`, which the pods mount over.
const SANDBOX_PARENT: &str = "/var/tmp";
/// What a node logs when its peer calls switch to a reloaded certificate.
const PEER_TLS_SWITCHED: &str = "calls to peers now use the reloaded certificate";
/// Hostname of the client pod's namespace.
const CLIENT_POD: &str = "e2e-client";

/// One lab at a time: the tests of this file take the same addresses and names.
static LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The TLS and ACL `LogCluster` of the first test, with its user policy ConfigMap.
fn log_cluster_input() -> String {
    format!(
        "{}  tls:
    enabled: true
    issuer: {{kind: Operator}}
    certValidity: {CERT_VALIDITY_SECS}s
    renewBefore: {RENEW_BEFORE_SECS}s
  acl:
    enabled: true
    configMapName: {CLUSTER}-acl-users
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {CLUSTER}-acl-users
  namespace: {NAMESPACE}
data:
  policy.csv: |
    p, {APP_SUBJECT}, *, produce
    p, {APP_SUBJECT}, *, consume
",
        plaintext_input()
    )
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 3339 (UTC, whole seconds) for `render --now`.
fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let of_day = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// TLS material the test's clients use, as files (the command line client reads files).
struct ClientFiles {
    ca: PathBuf,
    app_cert: PathBuf,
    app_key: PathBuf,
}

/// How the test reaches the cluster: the client Service's names and port, its TLS files, and
/// the client pod (a host of the lab).
struct Access {
    port: u16,
    /// The pods' peer and admin port (mutual TLS with the cluster's CA).
    peer_port: u16,
    files: ClientFiles,
    ca_pem: Vec<u8>,
    app: Credentials,
    service_names: Vec<String>,
    client_host: usize,
    work_dir: PathBuf,
}

/// A certificate and key in PEM.
#[derive(Clone)]
struct Credentials {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Everything the test started; dropping it stops the pods (their mount namespaces go with
/// them), then deletes the lab, the mount points and the host directories, in that order.
struct Cluster {
    pods: Vec<PodProcess>,
    lab: NetLab,
    mount_points: MountPoints,
    sandbox: TempDir,
}

/// One pod as the test knows it.
struct Pod {
    plan: PodPlan,
    sandbox: PodSandbox,
    ip: Ipv4Addr,
}

impl Pod {
    fn fqdn(&self) -> String {
        self.plan.dns_names(CLUSTER_DOMAIN).pop().unwrap()
    }
}

/// The Service whose `clusterIP` is `None`, and the other one, which selects the same pods.
fn services(objects: &Objects, stateful_set: &Value) -> (Value, Value) {
    let headless_name = kube_objects::str_at(stateful_set, "/spec/serviceName").unwrap();
    let headless = objects.get("Service", headless_name).unwrap().clone();
    assert_eq!(
        headless.pointer("/spec/clusterIP").and_then(Value::as_str),
        Some("None"),
        "the StatefulSet's serviceName must name a headless Service"
    );
    let labels = stateful_set
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .unwrap();
    let selects_pods = |service: &Value| {
        service
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_some_and(|selector| {
                selector
                    .iter()
                    .all(|(key, value)| labels.get(key) == Some(value))
            })
    };
    assert!(
        selects_pods(&headless),
        "the headless Service selects the pods"
    );
    let clients: Vec<&Value> = objects
        .of_kind("Service")
        .filter(|service| object_name(service) != Some(headless_name) && selects_pods(service))
        .collect();
    let [client] = clients.as_slice() else {
        panic!("expected one client Service selecting the pods, found {clients:?}");
    };
    (headless, (*client).clone())
}

/// The Service port named `name`, checked to reach the same port on the pods (hosts entries
/// cannot translate ports as kube-proxy does).
fn service_port(service: &Value, name: &str, stateful_set: &Value) -> u16 {
    let port = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .find(|port| port.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no {name} port on {service}"));
    let number = u16::try_from(port.get("port").and_then(Value::as_u64).unwrap()).unwrap();
    let container_port = match port.get("targetPort") {
        Some(Value::String(name)) => stateful_set
            .pointer("/spec/template/spec/containers/0/ports")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .find(|port| port.get("name").and_then(Value::as_str) == Some(name.as_str()))
            .and_then(|port| port.get("containerPort"))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("targetPort {name} is no container port")),
        Some(Value::Number(target)) => target.as_u64().unwrap(),
        _ => u64::from(number),
    };
    assert_eq!(
        u64::from(number),
        container_port,
        "the Service port differs from the pods' port: hosts entries cannot imitate that"
    );
    number
}

/// The Secret holding `key` (the CA's, the operator's client certificate's).
fn secret_with_key<'a>(objects: &'a Objects, key: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .of_kind("Secret")
        .filter(|secret| kube_objects::secret_data(secret).unwrap().contains_key(key))
        .collect();
    let [secret] = found.as_slice() else {
        panic!("expected one Secret with key {key}, found {}", found.len());
    };
    secret
}

/// The operator's client certificate: the `kubernetes.io/tls` Secret.
fn operator_credentials(objects: &Objects) -> Credentials {
    let secret = objects
        .of_kind("Secret")
        .find(|secret| secret.get("type").and_then(Value::as_str) == Some("kubernetes.io/tls"))
        .expect("a kubernetes.io/tls Secret with the operator's client certificate");
    let data = kube_objects::secret_data(secret).unwrap();
    Credentials {
        cert: data["tls.crt"].clone(),
        key: data["tls.key"].clone(),
    }
}

/// A client certificate for [`APP_SUBJECT`], signed with the rendered CA's key.
fn issue_app_certificate(objects: &Objects) -> Credentials {
    let ca = kube_objects::secret_data(secret_with_key(objects, "ca.key")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(std::str::from_utf8(&ca["ca.key"]).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(std::str::from_utf8(&ca["ca.crt"]).unwrap(), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, APP_SUBJECT);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Credentials {
        cert: cert.pem().into_bytes(),
        key: key.serialize_pem().into_bytes(),
    }
}

/// The first certificate of a PEM blob, as DER.
fn first_der(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem).unwrap()
}

/// The certificate the pod's node presents to a new connection (as the application), checked
/// against the CA and `server_name`.
async fn served_certificate(
    pod: &Pod,
    access: &Access,
    server_name: &str,
) -> anyhow::Result<CertificateDer<'static>> {
    let pem = ClientPem {
        ca: &access.ca_pem,
        cert: &access.app.cert,
        key: &access.app.key,
    };
    let addr = SocketAddr::from((pod.ip, access.port));
    tls_probe::served_certificate(addr, server_name, pem, CALL_TIMEOUT).await
}

/// The HTTP status of `GET path` on `ip:port`, as a kubelet's `httpGet` probe sees it.
async fn http_status(ip: Ipv4Addr, port: u16, path: &str) -> Option<u16> {
    let request = async {
        let mut stream = TcpStream::connect(SocketAddr::from((ip, port)))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(CALL_TIMEOUT, request)
        .await
        .ok()
        .flatten()
}

/// Fails the test, with the pod's stderr, if any pod exited.
fn assert_running(cluster: &mut Cluster) {
    for pod in &mut cluster.pods {
        if let Some(status) = pod.exit_status() {
            panic!(
                "pod {} exited with {status}; its stderr ends with:\n{}",
                pod.name(),
                pod.stderr_tail()
            );
        }
    }
}

/// The pod's rendered readiness probe answers 200 on every pod (and the liveness probe too).
async fn wait_ready(cluster: &mut Cluster, pods: &[Pod]) {
    let deadline = Instant::now() + DEADLINE;
    for pod in pods {
        let readiness = pod.plan.readiness.as_ref().expect("a readiness probe");
        loop {
            assert_running(cluster);
            if probe_passes(pod.ip, readiness).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pod {} not ready within {DEADLINE:?}",
                pod.plan.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        if let Some(liveness) = &pod.plan.liveness {
            assert!(
                probe_passes(pod.ip, liveness).await,
                "liveness of {}",
                pod.plan.name
            );
        }
    }
}

/// Runs `probe` against the pod at `ip` as the kubelet would (plaintext, as the kubelet's
/// probes are).
async fn probe_passes(ip: Ipv4Addr, probe: &Probe) -> bool {
    match probe {
        Probe::Http { path, port } => http_status(ip, *port, path).await == Some(200),
        Probe::Grpc { port, service } => {
            use tonic_health::pb::HealthCheckRequest;
            use tonic_health::pb::health_check_response::ServingStatus;
            use tonic_health::pb::health_client::HealthClient;
            let check = async {
                let channel = Endpoint::from_shared(format!("http://{ip}:{port}"))?
                    .connect()
                    .await?;
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: service.clone(),
                    })
                    .await?
                    .into_inner();
                anyhow::Ok(answer.status == ServingStatus::Serving as i32)
            };
            matches!(
                tokio::time::timeout(CALL_TIMEOUT, check).await,
                Ok(Ok(true))
            )
        }
    }
}

/// A `log.v1.Log` client of one pod, by its address, checking its certificate against the
/// pod's DNS name.
async fn pod_client(pod: &Pod, port: u16, files: &ClientFiles) -> anyhow::Result<Client> {
    let tls = TlsOptions {
        ca_cert: Some(files.ca.clone()),
        client_cert: Some(files.app_cert.clone()),
        client_key: Some(files.app_key.clone()),
        server_name: Some(pod.fqdn()),
    };
    let addr = format!("{}:{port}", pod.ip);
    let connect = Client::connect_with(&addr, &tls);
    Ok(tokio::time::timeout(CALL_TIMEOUT, connect).await??)
}

/// `ClusterStatus` of one pod, with the given client certificate (the ACL grants `admin` to
/// the operator's).
async fn cluster_status(
    pod: &Pod,
    access: &Access,
    client: &Credentials,
) -> anyhow::Result<proglog_proto::log::v1::ClusterStatusResponse> {
    let (port, ca_pem) = (access.peer_port, &access.ca_pem);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&client.cert, &client.key))
        .domain_name(pod.fqdn());
    let call = async {
        let channel = Endpoint::from_shared(format!("https://{}:{port}", pod.ip))?
            .tls_config(tls)?
            .connect_timeout(CALL_TIMEOUT)
            .connect()
            .await?;
        let status = AdminClient::new(channel)
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner();
        anyhow::Ok(status)
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await?
}

/// Polls until every pod lists all pods in `GetServers` at their headless-Service addresses
/// with one leader, gossip on every pod knows every pod, and every pod's `ClusterStatus` names
/// the same leader in the same epoch. Returns the leader's name.
async fn wait_for_cluster(
    cluster: &mut Cluster,
    pods: &[Pod],
    access: &Access,
    operator: &Credentials,
) -> String {
    let (port, files) = (access.port, &access.files);
    let expected: BTreeMap<String, String> = pods
        .iter()
        .map(|pod| (pod.plan.name.clone(), format!("{}:{port}", pod.fqdn())))
        .collect();
    let names: BTreeSet<String> = expected.keys().cloned().collect();
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        assert_running(cluster);
        let mut leaders = BTreeSet::new();
        let mut formed = true;
        for pod in pods {
            let servers = async {
                let mut client = pod_client(pod, port, files).await?;
                anyhow::Ok(tokio::time::timeout(CALL_TIMEOUT, client.servers()).await??)
            }
            .await;
            let status = cluster_status(pod, access, operator).await;
            match (servers, status) {
                (Ok(servers), Ok(status)) => {
                    let listed: BTreeMap<String, String> = servers
                        .iter()
                        .map(|server| (server.id.clone(), server.rpc_addr.clone()))
                        .collect();
                    let gossip: BTreeSet<String> = status
                        .members
                        .iter()
                        .filter(|member| member.status == "alive")
                        .map(|member| member.id.clone())
                        .collect();
                    let leader_listed: Vec<&str> = servers
                        .iter()
                        .filter(|server| server.is_leader)
                        .map(|server| server.id.as_str())
                        .collect();
                    last = format!(
                        "{}: servers {listed:?}, leader {leader_listed:?}, gossip {gossip:?}, role {} leader {:?} epoch {}",
                        pod.plan.name, status.role, status.leader_id, status.epoch
                    );
                    if listed != expected
                        || gossip != names
                        || leader_listed.len() != 1
                        || status.leader_id.is_empty()
                        || leader_listed[0] != status.leader_id
                    {
                        formed = false;
                        break;
                    }
                    leaders.insert((status.leader_id, status.epoch));
                }
                (servers, status) => {
                    last = format!(
                        "{}: servers {:?}, status {:?}",
                        pod.plan.name,
                        servers.err(),
                        status.err()
                    );
                    formed = false;
                    break;
                }
            }
        }
        if formed && leaders.len() == 1 {
            return leaders.into_iter().next().unwrap().0;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not form with one leader within {DEADLINE:?}; last seen: {last}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A hosts file where every pod's headless names resolve to its address and the client
/// Service's names to `backend`'s: what the client pod sees for one connection.
fn client_hosts_file(pods: &[Pod], service_names: &[String], backend: &Pod) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n");
    for pod in pods {
        text.push_str(&format!(
            "{}\t{}\n",
            pod.ip,
            pod.plan.dns_names(CLUSTER_DOMAIN).join(" ")
        ));
    }
    text.push_str(&format!("{}\t{}\n", backend.ip, service_names.join(" ")));
    text
}

/// Produces `values` with the command line client in the client pod's namespace, reaching the
/// cluster through `address` (a form of the client Service's name) which resolves to
/// `backend`; returns the acknowledged offsets.
async fn produce_through_service(
    cluster: &Cluster,
    access: &Access,
    hosts_file: &Path,
    address: &str,
    values: &[String],
) -> Vec<u64> {
    let (client_host, files) = (access.client_host, &access.files);
    let client = node_binary().unwrap().with_file_name(CLIENT_BINARY);
    let mut command = tokio::process::Command::from(cluster.lab.command(client_host, "sh"));
    command
        .arg("-c")
        .arg("mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"")
        .arg("sh")
        .arg(hosts_file)
        .arg(&client)
        .arg("--addr")
        .arg(address)
        .arg("--tls-ca")
        .arg(&files.ca)
        .arg("--tls-cert")
        .arg(&files.app_cert)
        .arg("--tls-key")
        .arg(&files.app_key)
        .arg("--output")
        .arg("json")
        .arg("produce")
        .args(values)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("proglog produce through {address} took over {DEADLINE:?}"))
        .unwrap();
    assert!(
        output.status.success(),
        "proglog produce through {address} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let offsets: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            line["offset"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(offsets.len(), values.len(), "one offset per value");
    offsets
}

/// Produces through the client Service with every form of its name and every pod as the
/// backend (one client process per pair in turn, as many as the larger of the two); returns
/// the acknowledged records.
async fn produce_round(
    cluster: &Cluster,
    pods: &[Pod],
    access: &Access,
    label: &str,
) -> BTreeMap<u64, String> {
    let service_names = &access.service_names;
    let mut acknowledged = BTreeMap::new();
    for index in 0..pods.len().max(service_names.len()) {
        let backend = &pods[index % pods.len()];
        let name = &service_names[index % service_names.len()];
        let hosts_file = access.work_dir.join(format!("hosts-{label}-{index}"));
        std::fs::write(&hosts_file, client_hosts_file(pods, service_names, backend)).unwrap();
        let values: Vec<String> = (0..3)
            .map(|n| format!("{label}-{name}-to-{}-{n}", backend.plan.name))
            .collect();
        let offsets = produce_through_service(
            cluster,
            access,
            &hosts_file,
            &format!("{name}:{}", access.port),
            &values,
        )
        .await;
        for (offset, value) in offsets.into_iter().zip(values) {
            assert!(
                acknowledged.insert(offset, value).is_none(),
                "offset {offset} acknowledged twice"
            );
        }
    }
    acknowledged
}

/// Polls until every pod serves every record of `expected` at its offset.
async fn assert_replicated_everywhere(
    pods: &[Pod],
    access: &Access,
    expected: &BTreeMap<u64, String>,
) {
    let (port, files) = (access.port, &access.files);
    let deadline = Instant::now() + DEADLINE;
    for pod in pods {
        'records: for (offset, value) in expected {
            loop {
                let read = async {
                    let mut client = pod_client(pod, port, files).await?;
                    anyhow::Ok(tokio::time::timeout(CALL_TIMEOUT, client.consume(*offset)).await??)
                }
                .await;
                match read {
                    Ok(record) => {
                        assert_eq!(
                            String::from_utf8_lossy(&record.value),
                            *value,
                            "{} offset {offset}",
                            pod.plan.name
                        );
                        continue 'records;
                    }
                    Err(err) => assert!(
                        Instant::now() < deadline,
                        "{} does not serve offset {offset} within {DEADLINE:?}: {err:#}",
                        pod.plan.name
                    ),
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
}

/// The certificate the pod's node is configured to serve (`PROGLOG_TLS_CERT`), as projected
/// into its volume from `objects`.
fn configured_certificate(pod: &Pod, objects: &Objects) -> CertificateDer<'static> {
    let path = pod
        .plan
        .env_value("PROGLOG_TLS_CERT")
        .expect("the pod's environment names its certificate");
    let pem = pod
        .plan
        .file_in_pod(objects, Path::new(path))
        .unwrap()
        .unwrap_or_else(|| panic!("{path} is in no Secret volume of {}", pod.plan.name));
    first_der(&pem)
}

/// SHA-256 of the file the pod's `variable` names, as rendered in `objects`.
fn configured_file_sha256(pod: &Pod, objects: &Objects, variable: &str) -> String {
    let path = pod
        .plan
        .env_value(variable)
        .unwrap_or_else(|| panic!("the pod's environment has no {variable}"));
    let bytes = pod
        .plan
        .file_in_pod(objects, Path::new(path))
        .unwrap()
        .unwrap_or_else(|| panic!("{path} is in no Secret volume of {}", pod.plan.name));
    proglog_node::security::sha256_hex(&bytes)
}

/// A rendered cluster's pods, started in a lab of network namespaces with a client host.
struct Launched {
    cluster: Cluster,
    pods: Vec<Pod>,
    stateful_set: Value,
    host_ip: Ipv4Addr,
    /// The client Service's port.
    port: u16,
    /// The pods' peer and admin port (on the headless Service only).
    peer_port: u16,
    service_names: Vec<String>,
    client_host: usize,
}

/// Starts the pods of the StatefulSet in `objects` as the kubelet would: see the module
/// documentation.
fn launch(objects: &Objects) -> Launched {
    // The pods' names and DNS names come from the StatefulSet and its Services.
    let stateful_set = objects.single("StatefulSet").unwrap().clone();
    let set_name = object_name(&stateful_set).unwrap().to_owned();
    let namespace = kube_objects::str_at(&stateful_set, "/metadata/namespace")
        .unwrap()
        .to_owned();
    let replicas = stateful_set
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap();
    assert_eq!(replicas, REPLICAS as u64);
    let (headless, client_service) = services(objects, &stateful_set);
    let subdomain = object_name(&headless).unwrap();
    let port = service_port(&client_service, "rpc", &stateful_set);
    // The peer and admin services: on the headless Service (pod to pod), not the client one.
    let peer_port = service_port(&headless, "peer", &stateful_set);
    let service_names = service_dns_names(
        object_name(&client_service).unwrap(),
        &namespace,
        CLUSTER_DOMAIN,
    );
    let mut hostnames: Vec<Vec<String>> = (0..REPLICAS)
        .map(|ordinal| {
            service_dns_names(
                &format!("{set_name}-{ordinal}.{subdomain}"),
                &namespace,
                CLUSTER_DOMAIN,
            )
        })
        .collect();
    // Every namespace resolves the client Service to pod 0 (see the module documentation).
    hostnames[0].extend(service_names.iter().cloned());
    hostnames.push(vec![CLIENT_POD.to_owned()]);
    let client_host = REPLICAS;
    let lab = NetLab::create_with_host_access(&hostnames).unwrap();
    let host_ip = lab.host_address().unwrap();

    let sandbox = tempfile::Builder::new()
        .prefix("proglog-k8s-e2e-")
        .tempdir_in(SANDBOX_PARENT)
        .unwrap();
    std::fs::set_permissions(
        sandbox.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let entrypoint =
        install_binary(&node_binary().unwrap(), &sandbox.path().join("image")).unwrap();
    let mut pods = Vec::new();
    for ordinal in 0..REPLICAS {
        let site = PodSite {
            ordinal,
            pod_ip: lab.ip(ordinal),
            host_ip,
        };
        let plan = PodPlan::from_stateful_set(objects, &stateful_set, site).unwrap();
        assert_eq!(plan.name, format!("{set_name}-{ordinal}"));
        let pod_sandbox = PodSandbox {
            dir: sandbox.path().join("pods").join(&plan.name),
        };
        pod_sandbox.sync_volumes(&plan, objects).unwrap();
        pods.push(Pod {
            plan,
            sandbox: pod_sandbox,
            ip: lab.ip(ordinal),
        });
    }
    let mut cluster = Cluster {
        pods: Vec::new(),
        lab,
        mount_points: MountPoints::default(),
        sandbox,
    };
    for (host, pod) in pods.iter().enumerate() {
        let launch = PodLaunch {
            plan: &pod.plan,
            sandbox: &pod.sandbox,
            lab: &cluster.lab,
            host,
            entrypoint: &entrypoint,
        };
        let process = PodProcess::start(&launch, &mut cluster.mount_points).unwrap();
        cluster.pods.push(process);
    }
    Launched {
        cluster,
        pods,
        stateful_set,
        host_ip,
        port,
        peer_port,
        service_names,
        client_host,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_cluster_runs_replicates_and_rolls_its_certificates() {
    if let Err(reason) = NetLab::available().and_then(|()| pods::available()) {
        println!("skipped: {reason}");
        return;
    }
    let _lab = LAB.lock().await;
    let clock = Instant::now();
    let started = unix_now();
    let first_certs_end = started + FIRST_CERTS_LEFT_SECS;
    let input = log_cluster_input();
    let first =
        kube_objects::render(&input, Some(&rfc3339(first_certs_end - CERT_VALIDITY_SECS))).unwrap();

    let Launched {
        mut cluster,
        pods,
        stateful_set,
        host_ip,
        port,
        peer_port,
        service_names,
        client_host,
    } = launch(&first);
    let pids: Vec<u32> = cluster.pods.iter().map(PodProcess::pid).collect();

    // The test's own TLS files: the rendered CA and an application certificate from it.
    let work_dir = cluster.sandbox.path().join("client");
    std::fs::create_dir_all(&work_dir).unwrap();
    let ca_pem =
        kube_objects::secret_data(secret_with_key(&first, "ca.key")).unwrap()["ca.crt"].clone();
    let app = issue_app_certificate(&first);
    let files = ClientFiles {
        ca: work_dir.join("ca.crt"),
        app_cert: work_dir.join("app.crt"),
        app_key: work_dir.join("app.key"),
    };
    std::fs::write(&files.ca, &ca_pem).unwrap();
    std::fs::write(&files.app_cert, &app.cert).unwrap();
    std::fs::write(&files.app_key, &app.key).unwrap();
    let access = Access {
        port,
        peer_port,
        files,
        ca_pem,
        app,
        service_names,
        client_host,
        work_dir,
    };
    let first_operator = operator_credentials(&first);

    wait_ready(&mut cluster, &pods).await;
    println!("{:?}: every pod is ready", clock.elapsed());
    for (pod, process) in pods.iter().zip(&cluster.pods) {
        let security = &pod.plan.security;
        let expected = (
            security.run_as_user.unwrap_or(0),
            security.run_as_group.unwrap_or(0),
            security
                .fs_group
                .iter()
                .chain(&security.supplemental_groups)
                .copied()
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            process.credentials(),
            Some(expected),
            "{} runs as the security context says",
            pod.plan.name
        );
        assert_eq!(
            process.hostname().as_deref(),
            Some(pod.plan.name.as_str()),
            "the hostname of {}",
            pod.plan.name
        );
    }
    let leader = wait_for_cluster(&mut cluster, &pods, &access, &first_operator).await;
    println!("{:?}: cluster formed; leader {leader}", clock.elapsed());
    // Each node serves the certificate its volume holds, valid for every form of its name.
    for pod in &pods {
        for name in pod.plan.dns_names(CLUSTER_DOMAIN) {
            let served = served_certificate(pod, &access, &name).await;
            assert_eq!(
                served.unwrap_or_else(|err| panic!("{} as {name}: {err:#}", pod.plan.name)),
                configured_certificate(pod, &first),
                "{} as {name} serves the certificate its volume holds",
                pod.plan.name
            );
        }
    }
    let mut acknowledged = produce_round(&cluster, &pods, &access, "before-roll").await;
    assert_replicated_everywhere(&pods, &access, &acknowledged).await;
    println!(
        "{:?}: {} records produced through the client Service, read back from every pod",
        clock.elapsed(),
        acknowledged.len()
    );

    // The roll: render again now, inside the renewal window, from the first render's Secrets.
    let now = unix_now();
    assert!(
        now + 10 < first_certs_end,
        "the first phase ended {} s before the first certificates expire; raise FIRST_CERTS_LEFT_SECS",
        first_certs_end.saturating_sub(now)
    );
    let second_input = format!(
        "{input}{}",
        Objects::to_yaml_stream(first.of_kind("Secret"))
    );
    let second = kube_objects::render(&second_input, Some(&rfc3339(now))).unwrap();
    assert_eq!(
        kube_objects::secret_data(secret_with_key(&second, "ca.key")).unwrap(),
        kube_objects::secret_data(secret_with_key(&first, "ca.key")).unwrap(),
        "the CA is kept"
    );
    assert_eq!(
        second
            .single("StatefulSet")
            .unwrap()
            .pointer("/spec/template"),
        stateful_set.pointer("/spec/template"),
        "the renewal changes the pod template, so pods would be replaced"
    );
    let second_operator = operator_credentials(&second);
    assert_ne!(
        second_operator.cert, first_operator.cert,
        "the operator's certificate is renewed too"
    );
    for (ordinal, pod) in pods.iter().enumerate() {
        let site = PodSite {
            ordinal,
            pod_ip: pod.ip,
            host_ip,
        };
        let plan = PodPlan::from_stateful_set(&second, &stateful_set, site).unwrap();
        assert_eq!(
            plan.env, pod.plan.env,
            "the environment of {} changed: it would need a restart",
            pod.plan.name
        );
        assert_ne!(
            configured_certificate(pod, &second),
            configured_certificate(pod, &first),
            "{}'s certificate was not renewed",
            pod.plan.name
        );
        let changed = pod.sandbox.sync_volumes(&pod.plan, &second).unwrap();
        assert!(
            !changed.is_empty(),
            "no volume of {} changed",
            pod.plan.name
        );
    }
    let rolled_at = Instant::now();
    for pod in &pods {
        let old = configured_certificate(pod, &first);
        let new = configured_certificate(pod, &second);
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert_running(&mut cluster);
            let served = served_certificate(pod, &access, &pod.fqdn()).await.unwrap();
            if served == new {
                break;
            }
            assert_eq!(
                served, old,
                "{} serves a certificate it was never given",
                pod.plan.name
            );
            assert!(
                Instant::now() < deadline,
                "{} still serves its old certificate {DEADLINE:?} after the update",
                pod.plan.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    println!(
        "{:?}: every pod serves its renewed certificate, {:?} after the volume update",
        clock.elapsed(),
        rolled_at.elapsed()
    );
    // Each node reports the fingerprints of the peer certificate and trust bundle it has
    // loaded, which an operator replacing the CA waits on: they become the renewed files'
    // (the peer listener reloads on its own poller, so they are polled for).
    for pod in &pods {
        let wanted = (
            configured_file_sha256(pod, &second, "PROGLOG_PEER_TLS_CERT"),
            configured_file_sha256(pod, &second, "PROGLOG_PEER_TLS_CA"),
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = cluster_status(pod, &access, &second_operator).await;
            let reported = status
                .as_ref()
                .map(|status| {
                    (
                        status.certificate_sha256.clone(),
                        status.trust_bundle_sha256.clone(),
                    )
                })
                .ok();
            if reported.as_ref() == Some(&wanted) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} reports {reported:?}, not the renewed files {wanted:?}",
                pod.plan.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    // The node's own word that its peer calls switched to the renewed certificate.
    for (pod, process) in pods.iter().zip(&cluster.pods) {
        let deadline = Instant::now() + DEADLINE;
        while !process
            .stderr_lines()
            .iter()
            .any(|line| line.contains(PEER_TLS_SWITCHED))
        {
            assert!(
                Instant::now() < deadline,
                "{} did not log {PEER_TLS_SWITCHED:?}",
                pod.plan.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    let same_pids: Vec<u32> = cluster.pods.iter().map(PodProcess::pid).collect();
    assert_eq!(same_pids, pids, "the nodes were not restarted");
    assert_running(&mut cluster);

    // Once the first certificates have expired, the nodes refuse them: from then on every new
    // TLS connection, a node's to its peers included, needs a renewed certificate.
    let expiry_deadline =
        Instant::now() + Duration::from_secs(first_certs_end.saturating_sub(unix_now())) + DEADLINE;
    for pod in &pods {
        loop {
            // A failure before the end may be anything; after it, the expiry is the reason.
            let refused = cluster_status(pod, &access, &first_operator).await.is_err();
            if refused && unix_now() >= first_certs_end {
                break;
            }
            assert!(
                Instant::now() < expiry_deadline,
                "{} still accepts the first render's operator certificate after it expired",
                pod.plan.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    println!(
        "{:?}: the nodes refuse the expired first certificates",
        clock.elapsed()
    );
    let leader = wait_for_cluster(&mut cluster, &pods, &access, &second_operator).await;
    println!("after the roll: leader {leader}");
    let after = produce_round(&cluster, &pods, &access, "after-roll").await;
    for (offset, value) in after {
        assert!(
            acknowledged.insert(offset, value).is_none(),
            "offset {offset} acknowledged twice"
        );
    }
    assert_replicated_everywhere(&pods, &access, &acknowledged).await;
    println!(
        "{:?}: {} records in all, read back from every pod",
        clock.elapsed(),
        acknowledged.len()
    );
    let same_pids: Vec<u32> = cluster.pods.iter().map(PodProcess::pid).collect();
    assert_eq!(same_pids, pids, "the nodes were not restarted");
    assert_running(&mut cluster);
    drop(cluster);
}

/// The LogCluster both tests start from: plaintext for clients and no ACL, as the second test
/// runs it; the first adds TLS and an ACL.
fn plaintext_input() -> String {
    format!(
        "apiVersion: proglog.dev/v1alpha1
kind: LogCluster
metadata:
  name: {CLUSTER}
  namespace: {NAMESPACE}
spec:
  replicas: {REPLICAS}
  log:
    segmentBytes: {SEGMENT_BYTES}
"
    )
}

/// A CA of nobody's and a certificate from it for `common_name`, client and server.
fn foreign_credentials(common_name: &str) -> Credentials {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone else's CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let mut chain = cert.pem().into_bytes();
    chain.extend_from_slice(ca_cert.pem().as_bytes());
    Credentials {
        cert: chain,
        key: key.serialize_pem().into_bytes(),
    }
}

/// What a caller without the cluster's certificate gets from `Vote`, `Fetch` and
/// `RemoveVoter` on `endpoint`: each call's error, or a panic if one succeeds.
async fn peer_calls_refused(endpoint: Endpoint, what: &str) -> Vec<String> {
    use proglog_proto::log::v1::peer_client::PeerClient;
    use proglog_proto::log::v1::{FetchRequest, RemoveVoterRequest, VoteRequest};
    let mut refusals = Vec::new();
    let channel = match tokio::time::timeout(CALL_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(err)) => return vec![format!("{what}: connect: {err}")],
        Err(_) => return vec![format!("{what}: connect timed out")],
    };
    let mut peer = PeerClient::new(channel.clone());
    let vote = peer.vote(VoteRequest {
        candidate_epoch: u64::MAX / 2,
        candidate_id: format!("{CLUSTER}-1"),
        last_offset_epoch: u64::MAX / 2,
        end_offset: u64::MAX / 2,
        voter_id: format!("{CLUSTER}-0"),
        ..VoteRequest::default()
    });
    match tokio::time::timeout(CALL_TIMEOUT, vote).await {
        Ok(Ok(answer)) => panic!("{what}: a vote was answered: {answer:?}"),
        Ok(Err(status)) => refusals.push(format!("{what}: Vote: {status}")),
        Err(_) => refusals.push(format!("{what}: Vote timed out")),
    }
    let fetch = peer.fetch(FetchRequest {
        replica_id: format!("{CLUSTER}-2"),
        max_bytes: 1 << 20,
        fetch_id: 1,
        ..FetchRequest::default()
    });
    match tokio::time::timeout(CALL_TIMEOUT, fetch).await {
        Ok(Ok(answer)) => panic!("{what}: a fetch was answered: {answer:?}"),
        Ok(Err(status)) => refusals.push(format!("{what}: Fetch: {status}")),
        Err(_) => refusals.push(format!("{what}: Fetch timed out")),
    }
    let mut admin = AdminClient::new(channel);
    let remove = admin.remove_voter(RemoveVoterRequest {
        node_id: format!("{CLUSTER}-2"),
    });
    match tokio::time::timeout(CALL_TIMEOUT, remove).await {
        Ok(Ok(answer)) => panic!("{what}: a voter removal was answered: {answer:?}"),
        Ok(Err(status)) => refusals.push(format!("{what}: RemoveVoter: {status}")),
        Err(_) => refusals.push(format!("{what}: RemoveVoter timed out")),
    }
    refusals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendered_plaintext_cluster_keeps_its_peer_port_to_the_clusters_certificates() {
    if let Err(reason) = NetLab::available().and_then(|()| pods::available()) {
        println!("skipped: {reason}");
        return;
    }
    let _lab = LAB.lock().await;
    let objects = kube_objects::render(&plaintext_input(), Some(&rfc3339(unix_now()))).unwrap();
    let Launched {
        mut cluster,
        pods,
        port,
        peer_port,
        ..
    } = launch(&objects);
    wait_ready(&mut cluster, &pods).await;
    let operator = operator_credentials(&objects);
    let ca_pem =
        kube_objects::secret_data(secret_with_key(&objects, "ca.key")).unwrap()["ca.crt"].clone();
    let status = |pod: &Pod| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .identity(Identity::from_pem(&operator.cert, &operator.key))
            .domain_name(pod.fqdn());
        let address = format!("https://{}:{peer_port}", pod.ip);
        async move {
            let channel = Endpoint::from_shared(address)?
                .tls_config(tls)?
                .connect_timeout(CALL_TIMEOUT)
                .connect()
                .await?;
            let mut admin = AdminClient::new(channel);
            let call = admin.cluster_status(ClusterStatusRequest {});
            anyhow::Ok(
                tokio::time::timeout(CALL_TIMEOUT, call)
                    .await??
                    .into_inner(),
            )
        }
    };
    // The cluster forms over mutual TLS on the peer port, though clients speak plaintext.
    let deadline = Instant::now() + DEADLINE;
    let (leader, epoch) = loop {
        assert_running(&mut cluster);
        let mut seen = BTreeSet::new();
        for pod in &pods {
            match status(pod).await {
                Ok(answer) if !answer.leader_id.is_empty() && answer.voters.len() == REPLICAS => {
                    seen.insert((answer.leader_id, answer.epoch));
                }
                _ => {
                    seen.insert((String::new(), 0));
                }
            }
        }
        if seen.len() == 1 && seen.first().is_some_and(|(leader, _)| !leader.is_empty()) {
            break seen.pop_first().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no leader on every pod within {DEADLINE:?}: {seen:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    // A plaintext client produces and reads back through any pod.
    let mut client = Client::connect(&format!("{}:{port}", pods[2].ip))
        .await
        .unwrap();
    let offset = client
        .produce(proglog_client::Produce {
            value: "plain".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut reader = Client::connect(&format!("{}:{port}", pods[0].ip))
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match reader.consume(offset).await {
            Ok(record) => {
                assert_eq!(record.value, "plain".as_bytes());
                break;
            }
            Err(err) => assert!(Instant::now() < deadline, "offset {offset}: {err:#}"),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // Without the cluster's certificate, nobody votes, fetches or removes a voter.
    let impostor = foreign_credentials(&format!("{CLUSTER}-1"));
    for pod in &pods {
        let peer = format!("https://{}:{peer_port}", pod.ip);
        let mut refusals = Vec::new();
        let plain = Endpoint::from_shared(format!("http://{}:{peer_port}", pod.ip)).unwrap();
        refusals.extend(peer_calls_refused(plain, "plaintext on the peer port").await);
        let anonymous = Endpoint::from_shared(peer.clone())
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca_pem))
                    .domain_name(pod.fqdn()),
            )
            .unwrap();
        refusals.extend(peer_calls_refused(anonymous, "TLS without a certificate").await);
        let foreign = Endpoint::from_shared(peer)
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca_pem))
                    .identity(Identity::from_pem(&impostor.cert, &impostor.key))
                    .domain_name(pod.fqdn()),
            )
            .unwrap();
        refusals.extend(peer_calls_refused(foreign, "a node's name from another CA").await);
        // The client port serves neither service.
        let client_port = Endpoint::from_shared(format!("http://{}:{port}", pod.ip)).unwrap();
        let on_client_port = peer_calls_refused(client_port, "the client port").await;
        assert!(
            on_client_port
                .iter()
                .all(|refusal| refusal.contains("Unimplemented")
                    || refusal.contains("not implemented")),
            "{on_client_port:?}"
        );
        assert_eq!(refusals.len(), 9, "{refusals:?}");
        println!(
            "{}: all {} calls without the cluster's certificate refused",
            pod.plan.name,
            refusals.len()
        );
    }
    // Nothing they sent took: every voter is still there, and no epoch near the one the
    // forged votes asked for (an ordinary election on a loaded machine may still happen).
    for pod in &pods {
        let answer = status(pod).await.unwrap();
        assert_eq!(answer.voters.len(), REPLICAS, "{answer:?}");
        assert!(answer.epoch < u64::MAX / 4, "{answer:?}");
        println!(
            "{}: leader {} in epoch {} (was {leader} in {epoch})",
            pod.plan.name, answer.leader_id, answer.epoch
        );
    }
}
