//! TLS, mutual TLS, the ACL and certificate hot reload of a real `proglog-node` process.
//!
//! Each test makes a throwaway CA with `rcgen`, writes the node's and the clients' certificates
//! into a temporary directory, and starts its own node through
//! [`proglog_tests::node_process`] (which documents how the binary is found; `cargo test
//! --workspace` builds it). Every wait has a deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures_util::StreamExt;
use proglog_client::{Client, ClientError, ClusterClient, Produce, TlsOptions};
use proglog_tests::node_process::{NodeOptions, NodeProcess, node_binary};
use proglog_tests::tls_probe::{self, ClientPem};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::pki_types::CertificateDer;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The longest any one call (or one stream message) may take.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

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

/// proglog's policy (root may do anything) plus a consume-only subject, and grants on single
/// logs: `billing` may produce to `default`, `payments-writer` to `payments` only.
const POLICY: &str = "p, root, *, produce
p, root, *, consume
p, reader, *, consume
p, writer, *, produce
p, billing, default, produce
p, payments-writer, payments, produce
";

/// Awaits `future`, failing if it takes longer than [`CALL_DEADLINE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(CALL_DEADLINE, future)
        .await
        .with_context(|| format!("{what} took longer than {CALL_DEADLINE:?}"))
}

/// A CA and the files it issued, in a temporary directory.
struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

/// One issued certificate: its files and its DER (to recognize it on the wire).
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(ca_name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("proglog-tls-").tempdir()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = params.self_signed(&key)?.pem();
        let pki = Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
        };
        write_atomically(&pki.ca_path(), pki.ca_pem.as_bytes())?;
        Ok(pki)
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for `localhost` and `127.0.0.1` with subject CN `common_name`, and
    /// writes it (atomically) as `<file>.pem` and `<file>.key`.
    fn issue(&self, file: &str, common_name: &str, serial: u64) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().clone(),
        };
        // The key first: until the certificate follows, the node sees a mismatched pair, which
        // it must refuse while it keeps serving the old one.
        write_atomically(&issued.key, key.serialize_pem().as_bytes())?;
        write_atomically(&issued.cert, cert.pem().as_bytes())?;
        Ok(issued)
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        write_atomically(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Client options trusting this CA, with `client` as the client certificate.
    fn client_options(&self, client: Option<&Issued>) -> TlsOptions {
        TlsOptions {
            ca_cert: Some(self.ca_path()),
            client_cert: client.map(|issued| issued.cert.clone()),
            client_key: client.map(|issued| issued.key.clone()),
            server_name: Some("localhost".into()),
        }
    }
}

/// Replaces `path` the way a rotation should: write aside, then rename over.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .context("no file name")?
        .to_string_lossy()
        .into_owned();
    let aside = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&aside, bytes)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

/// Node options serving TLS with `server` and requiring client certificates of `pki`'s CA.
fn mtls_node(pki: &Pki, server: &Issued) -> NodeOptions {
    NodeOptions::default()
        .flag("--tls-cert", &server.cert)
        .flag("--tls-key", &server.key)
        .flag("--tls-client-ca", pki.ca_path())
        .flag("--tls-reload-interval-ms", "100")
}

fn with_acl(options: NodeOptions, pki: &Pki) -> anyhow::Result<NodeOptions> {
    Ok(options
        .flag("--acl-model", pki.write("model.conf", MODEL)?)
        .flag("--acl-policy", pki.write("policy.csv", POLICY)?))
}

async fn connect(node: &NodeProcess, tls: &TlsOptions) -> anyhow::Result<Client> {
    let addr = node.rpc_addr().to_string();
    Ok(within("connect", Client::connect_with(&addr, tls)).await??)
}

fn produce(value: &str) -> Produce {
    Produce {
        value: Bytes::from(value.to_string()),
        ..Produce::default()
    }
}

/// The first error of a stream call: its refusal, or the error its stream starts with.
async fn first_of<T>(
    stream: Result<impl futures_util::Stream<Item = Result<T, ClientError>>, ClientError>,
) -> Result<(), ClientError> {
    let mut stream = Box::pin(stream?);
    match stream.next().await {
        Some(Err(error)) => Err(error),
        _ => Ok(()),
    }
}

fn status_of(result: Result<u64, ClientError>) -> anyhow::Result<tonic::Status> {
    match result {
        Err(ClientError::Status(status)) => Ok(status),
        other => bail!("expected an error status, got {other:?}"),
    }
}

/// The certificate the node presents to a new connection (as `client`, for `localhost`).
async fn served_certificate(
    node: &NodeProcess,
    pki: &Pki,
    client: &Issued,
) -> anyhow::Result<CertificateDer<'static>> {
    let (cert, key) = (std::fs::read(&client.cert)?, std::fs::read(&client.key)?);
    let pem = ClientPem {
        ca: pki.ca_pem.as_bytes(),
        cert: &cert,
        key: &key,
    };
    tls_probe::served_certificate(node.rpc_addr(), "localhost", pem, CALL_DEADLINE).await
}

#[tokio::test]
async fn mutual_tls_produce_and_consume() -> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let server = pki.issue("server", "node-0", 1)?;
    let root = pki.issue("root", "root", 2)?;
    let node = NodeProcess::start(mtls_node(&pki, &server)).await?;

    let mut client = connect(&node, &pki.client_options(Some(&root))).await?;
    let offset = within("produce", client.produce(produce("hello"))).await??;
    assert_eq!(offset, 0);
    let (base, last) = within(
        "produce batch",
        client.produce_batch(vec![produce("a"), produce("b")]),
    )
    .await??;
    assert_eq!((base, last), (1, 2));
    let record = within("consume", client.consume(0)).await??;
    assert_eq!(record.value, Bytes::from("hello"));
    let mut stream = within("consume stream", client.consume_stream(0, None)).await??;
    for expected in ["hello", "a", "b"] {
        let record = within("stream record", stream.next())
            .await?
            .context("stream ended")??;
        assert_eq!(record.value, Bytes::from(expected));
    }

    // A client that does not trust the node's CA refuses it.
    let other = Pki::new("another CA")?;
    let untrusting = TlsOptions {
        ca_cert: Some(other.ca_path()),
        ..pki.client_options(Some(&root))
    };
    let refused = match Client::connect_with(&node.rpc_addr().to_string(), &untrusting).await {
        Err(err) => Some(err),
        Ok(mut client) => client.offsets().await.err(),
    };
    ensure!(
        refused.is_some(),
        "a client must not accept a certificate of an unknown CA"
    );
    Ok(())
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() -> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let server = pki.issue("server", "node-0", 1)?;
    let node = NodeProcess::start(mtls_node(&pki, &server)).await?;

    // No certificate: the handshake fails (with TLS 1.3 the client learns at its first call).
    let anonymous =
        match Client::connect_with(&node.rpc_addr().to_string(), &pki.client_options(None)).await {
            Err(err) => Some(err),
            Ok(mut client) => within("offsets", client.offsets()).await?.err(),
        };
    ensure!(
        anonymous.is_some(),
        "a client without a certificate must be refused"
    );

    // A certificate of another CA: refused too.
    let other = Pki::new("another CA")?;
    let stranger = other.issue("stranger", "root", 9)?;
    let options = TlsOptions {
        client_cert: Some(stranger.cert.clone()),
        client_key: Some(stranger.key.clone()),
        ..pki.client_options(None)
    };
    let foreign = match Client::connect_with(&node.rpc_addr().to_string(), &options).await {
        Err(err) => Some(err),
        Ok(mut client) => within("offsets", client.offsets()).await?.err(),
    };
    ensure!(
        foreign.is_some(),
        "a certificate of an unknown CA must be refused"
    );

    // Neither a client that never starts its handshake nor one that speaks plaintext holds up
    // the others; refused handshakes do not stop the accept loop.
    let _idle = within("TCP connect", TcpStream::connect(node.rpc_addr())).await??;
    let mut plaintext = within("TCP connect", TcpStream::connect(node.rpc_addr())).await??;
    tokio::io::AsyncWriteExt::write_all(&mut plaintext, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await?;
    let root = pki.issue("root", "root", 2)?;
    let mut client = connect(&node, &pki.client_options(Some(&root))).await?;
    within("offsets", client.offsets()).await??;
    Ok(())
}

#[tokio::test]
async fn acl_authorizes_by_certificate_common_name() -> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let server = pki.issue("server", "node-0", 1)?;
    let root = pki.issue("root", "root", 2)?;
    let reader = pki.issue("reader", "reader", 3)?;
    let intruder = pki.issue("intruder", "intruder", 4)?;
    let writer = pki.issue("writer", "writer", 5)?;
    let node = NodeProcess::start(with_acl(mtls_node(&pki, &server), &pki)?).await?;

    let mut root_client = connect(&node, &pki.client_options(Some(&root))).await?;
    assert_eq!(
        within("produce", root_client.produce(produce("by root"))).await??,
        0
    );
    within("servers", root_client.servers()).await??;

    let mut reader_client = connect(&node, &pki.client_options(Some(&reader))).await?;
    let record = within("consume", reader_client.consume(0)).await??;
    assert_eq!(record.value, Bytes::from("by root"));
    let denied = status_of(within("produce", reader_client.produce(produce("no"))).await?)?;
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    ensure!(
        denied.message().contains("reader") && denied.message().contains("produce"),
        "the denial names the subject and the action: {}",
        denied.message()
    );

    // A produce-only identity through the cluster client (what the CLI uses): it may not list
    // the members (GetServers is `consume`), so it sends to the address it was given.
    let mut cluster = within(
        "cluster connect",
        ClusterClient::connect(
            &[node.rpc_addr().to_string()],
            &pki.client_options(Some(&writer)),
        ),
    )
    .await??;
    assert!(cluster.members().is_empty());
    let mut leader = within("leader", cluster.leader()).await??;
    assert_eq!(
        within("produce", leader.produce(produce("by writer"))).await??,
        1
    );

    let mut intruder_client = connect(&node, &pki.client_options(Some(&intruder))).await?;
    let denied = match within("consume", intruder_client.consume(0)).await? {
        Err(ClientError::Status(status)) => status,
        other => bail!("expected PERMISSION_DENIED, got {other:?}"),
    };
    assert_eq!(denied.code(), Code::PermissionDenied);
    ensure!(
        denied.message().contains("intruder") && denied.message().contains("consume"),
        "{}",
        denied.message()
    );

    // Without a certificate: the handshake succeeds (the ACL decides per call), the log API
    // answers UNAUTHENTICATED, and health stays open to probes.
    let mut anonymous = connect(&node, &pki.client_options(None)).await?;
    let status = status_of(within("produce", anonymous.produce(produce("no"))).await?)?;
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "a client certificate is required (mutual TLS)"
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", node.rpc_addr()))?
        .tls_config(tls)?
        .connect()
        .await?;
    let health = within(
        "health check",
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await??;
    assert_eq!(health.into_inner().status, 1, "SERVING");
    Ok(())
}

/// A policy line naming a log grants that log only; `*` still grants every log. A grant is
/// decided before whether the log exists, so an identity learns nothing of logs it may not use.
#[tokio::test]
async fn acl_grants_apply_to_the_log_they_name() -> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let server = pki.issue("server", "node-0", 1)?;
    let billing = pki.issue("billing", "billing", 2)?;
    let payments = pki.issue("payments-writer", "payments-writer", 3)?;
    let reader = pki.issue("reader", "reader", 4)?;
    let nobody = pki.issue("nobody", "nobody", 5)?;
    // Two streams at most, so a stream held for a caller the ACL refuses would show.
    let node =
        NodeProcess::start(with_acl(mtls_node(&pki, &server), &pki)?.flag("--max-streams", "2"))
            .await?;
    // Streams opened by an identity with no grant, which send nothing yet: they wait (as many
    // as --max-streams may) but hold no slot.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = connect(&node, &pki.client_options(Some(&nobody))).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel::<Produce>(1);
        let stream = within(
            "ProduceStream",
            client.produce_stream(proglog_tests::channel_stream(receiver)),
        )
        .await??;
        held.push((client, sender, Box::pin(stream)));
    }

    let mut billing_client = connect(&node, &pki.client_options(Some(&billing))).await?;
    assert_eq!(
        within("produce", billing_client.produce(produce("billed"))).await??,
        0
    );
    let denied = match within("consume", billing_client.consume(0)).await? {
        Err(ClientError::Status(status)) => status,
        other => bail!("expected PERMISSION_DENIED, got {other:?}"),
    };
    assert_eq!(denied.code(), Code::PermissionDenied);
    ensure!(
        denied
            .message()
            .contains("`billing` is not permitted to consume on log `default`"),
        "{}",
        denied.message()
    );

    let payments_client = connect(&node, &pki.client_options(Some(&payments))).await?;
    let status =
        status_of(within("produce", payments_client.clone().produce(produce("no"))).await?)?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    ensure!(
        status.message().contains("on log `default`"),
        "{}",
        status.message()
    );
    // Allowed on `payments`, which this cluster does not hold: NOT_FOUND.
    let mut to_payments = payments_client.with_log("payments")?;
    let status = status_of(within("produce", to_payments.produce(produce("no"))).await?)?;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // Not allowed on `payments`: PERMISSION_DENIED, whether or not it exists.
    let mut billing_payments = billing_client.with_log("payments")?;
    let status = status_of(within("produce", billing_payments.produce(produce("no"))).await?)?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let mut reader_client = connect(&node, &pki.client_options(Some(&reader))).await?;
    let record = within("consume", reader_client.consume(0)).await??;
    assert_eq!(record.value, Bytes::from("billed"));
    let mut stream =
        Box::pin(within("ConsumeStream", reader_client.consume_stream(0, None)).await??);
    let streamed = within("the first streamed record", stream.next()).await?;
    ensure!(
        matches!(&streamed, Some(Ok(record)) if record.value == "billed"),
        "the streams of a refused identity took the slots: {streamed:?}"
    );
    drop(stream);
    // Their first request is refused, and nothing is written.
    for (_, sender, stream) in &mut held {
        sender.send(produce("no")).await?;
        let refused = within("the refusal", stream.next()).await?;
        ensure!(
            matches!(&refused, Some(Err(ClientError::Status(status))) if status.code() == Code::PermissionDenied),
            "{refused:?}"
        );
    }

    // A list shows only the logs the caller may read; a describe needs `consume` on the log.
    let listed = within("list", reader_client.list_logs()).await??;
    let names: Vec<&str> = listed.iter().map(|log| log.name.as_str()).collect();
    assert_eq!(names, ["default"]);
    let described = within("describe", reader_client.describe_log()).await??;
    assert_eq!(described.end_offset, 1, "{described:?}");
    let mut billing_client = connect(&node, &pki.client_options(Some(&billing))).await?;
    assert!(
        within("list", billing_client.list_logs())
            .await??
            .is_empty()
    );
    let denied = match within("describe", billing_client.describe_log()).await? {
        Err(ClientError::Status(status)) => status,
        other => bail!("expected PERMISSION_DENIED, got {other:?}"),
    };
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Every method is decided on the log: `billing` may only produce to `default`, and
    // `payments-writer` only to `payments`.
    let denied = |what: &str, result: Result<(), ClientError>| match result {
        Err(ClientError::Status(status)) if status.code() == Code::PermissionDenied => Ok(()),
        other => Err(anyhow::anyhow!(
            "{what}: expected PERMISSION_DENIED, got {other:?}"
        )),
    };
    denied("Consume", billing_client.consume(0).await.map(drop))?;
    denied(
        "ConsumeStream",
        first_of(billing_client.consume_stream(0, None).await).await,
    )?;
    denied("GetOffsets", billing_client.offsets().await.map(drop))?;
    denied("GetServers", billing_client.servers().await.map(drop))?;
    let mut payments_client = connect(&node, &pki.client_options(Some(&payments))).await?;
    denied(
        "Produce",
        payments_client.produce(produce("no")).await.map(drop),
    )?;
    denied(
        "ProduceBatch",
        payments_client
            .produce_batch(vec![produce("no")])
            .await
            .map(drop),
    )?;
    let records = futures_util::stream::iter([produce("no")]);
    denied(
        "ProduceStream",
        first_of(payments_client.produce_stream(records).await).await,
    )?;
    let end = within("offsets", reader_client.offsets()).await??;
    assert_eq!(end, (0, 1), "nothing refused was written");
    Ok(())
}

#[tokio::test]
async fn rotated_certificate_serves_new_connections_without_dropping_open_streams()
-> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let first = pki.issue("server", "node-0", 100)?;
    let root = pki.issue("root", "root", 2)?;
    let node = NodeProcess::start(with_acl(mtls_node(&pki, &first), &pki)?).await?;
    assert_eq!(served_certificate(&node, &pki, &root).await?, first.der);

    let mut client = connect(&node, &pki.client_options(Some(&root))).await?;
    within("produce", client.produce(produce("before"))).await??;
    // A clone shares the connection: the stream and later calls ride the same one.
    let mut streaming = client.clone();
    let mut stream = within("consume stream", streaming.consume_stream(0, None)).await??;
    let record = within("first record", stream.next())
        .await?
        .context("stream ended")??;
    assert_eq!(record.value, Bytes::from("before"));

    // Rotate: a new certificate (another serial and CN) over the same files.
    let second = pki.issue("server", "node-0-rotated", 101)?;
    ensure!(second.der != first.der);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let served = served_certificate(&node, &pki, &root).await?;
        if served == second.der {
            break;
        }
        ensure!(
            served == first.der,
            "the node served a certificate it was never given"
        );
        ensure!(
            Instant::now() < deadline,
            "new connections still get the old certificate 15 s after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new connection (which verifies the new certificate) produces; the stream opened before
    // the rotation, on the old connection, still receives it.
    let mut fresh = connect(&node, &pki.client_options(Some(&root))).await?;
    let offset = within("produce after rotation", fresh.produce(produce("after"))).await??;
    assert_eq!(offset, 1);
    let record = within("record after rotation", stream.next())
        .await?
        .context("the open stream ended at the rotation")??;
    assert_eq!(record.value, Bytes::from("after"));
    // And the old connection still takes new calls.
    assert_eq!(
        within(
            "produce on the old connection",
            client.produce(produce("old"))
        )
        .await??,
        2
    );
    ensure!(
        node.stderr_lines()
            .iter()
            .any(|line| line.contains("TLS certificate reloaded")),
        "the node logs the reload"
    );
    // A clean shutdown with a stream open and the reload task running.
    drop(stream);
    let mut node = node;
    let status = node.terminate().await?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}

#[tokio::test]
async fn bad_security_flags_fail_fast_naming_the_flag() -> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let server = pki.issue("server", "node-0", 1)?;

    let missing = pki.dir.path().join("missing.pem");
    let exited = NodeOptions::default()
        .flag("--tls-cert", &missing)
        .flag("--tls-key", &server.key)
        .run_to_exit()
        .await?;
    ensure!(!exited.status.success());
    let stderr = exited.stderr.join("\n");
    ensure!(
        stderr.contains("cannot read --tls-cert"),
        "stderr names the flag: {stderr}"
    );

    let other = pki.issue("other", "node-1", 2)?;
    let exited = NodeOptions::default()
        .flag("--tls-cert", &server.cert)
        .flag("--tls-key", &other.key)
        .run_to_exit()
        .await?;
    ensure!(!exited.status.success());
    let stderr = exited.stderr.join("\n");
    ensure!(stderr.contains("--tls-key"), "{stderr}");

    let broken_policy = pki.write("broken-model.conf", "[matchers]\nm = r.sub ==\n")?;
    let exited = mtls_node(&pki, &server)
        .flag("--acl-model", &broken_policy)
        .flag("--acl-policy", pki.write("policy.csv", POLICY)?)
        .run_to_exit()
        .await?;
    ensure!(!exited.status.success());
    let stderr = exited.stderr.join("\n");
    ensure!(stderr.contains("--acl-"), "{stderr}");

    // The ACL needs mutual TLS (clap refuses the flags).
    let exited = NodeOptions::default()
        .flag("--acl-model", pki.write("model.conf", MODEL)?)
        .flag("--acl-policy", pki.write("policy.csv", POLICY)?)
        .run_to_exit()
        .await?;
    ensure!(!exited.status.success());
    let stderr = exited.stderr.join("\n");
    ensure!(stderr.contains("--tls-client-ca"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn cli_speaks_mutual_tls_and_names_unreadable_files() -> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let server = pki.issue("server", "node-0", 1)?;
    let root = pki.issue("root", "root", 2)?;
    let node = NodeProcess::start(with_acl(mtls_node(&pki, &server), &pki)?).await?;
    let cli = node_binary()?.with_file_name("proglog");
    ensure!(cli.is_file(), "no CLI binary at {}", cli.display());

    let run = |args: Vec<std::ffi::OsString>| {
        let cli = cli.clone();
        async move {
            let output = tokio::task::spawn_blocking(move || {
                std::process::Command::new(&cli)
                    .args(&args)
                    .env_remove("PROGLOG_TLS_CA")
                    .env_remove("PROGLOG_TLS_CERT")
                    .env_remove("PROGLOG_TLS_KEY")
                    .env_remove("PROGLOG_TLS_SERVER_NAME")
                    .stdin(std::process::Stdio::null())
                    .output()
            });
            within("the CLI", output).await??.context("run the CLI")
        }
    };
    let addr = node.rpc_addr().to_string();
    let tls_args = |cert: &Issued| -> Vec<std::ffi::OsString> {
        vec![
            "--addr".into(),
            addr.clone().into(),
            "--tls-ca".into(),
            pki.ca_path().into(),
            "--tls-cert".into(),
            cert.cert.clone().into(),
            "--tls-key".into(),
            cert.key.clone().into(),
            "--tls-server-name".into(),
            "localhost".into(),
        ]
    };
    let mut args = tls_args(&root);
    args.extend(["produce".into(), "over-tls".into()]);
    let output = run(args).await?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0");

    let mut args = tls_args(&root);
    args.extend(["consume".into(), "--from".into(), "0".into()]);
    let output = run(args).await?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "0\tover-tls"
    );

    // A produce-only identity may not list the members: `servers` says so, not nothing.
    let writer = pki.issue("writer", "writer", 3)?;
    let mut args = tls_args(&writer);
    args.push("servers".into());
    let output = run(args).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("permission denied"),
        "servers as a produce-only identity: {output:?}"
    );

    let missing = pki.dir.path().join("nope.pem");
    let output = run(vec![
        "--addr".into(),
        addr.clone().into(),
        "--tls-ca".into(),
        missing.clone().into(),
        "servers".into(),
    ])
    .await?;
    ensure!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains(&format!("cannot read --tls-ca {}", missing.display())),
        "{stderr}"
    );
    Ok(())
}

/// A produce stream is decided again after the policy changes: a grant revoked while the
/// stream is open stops the next record.
#[tokio::test]
async fn a_revoked_grant_stops_an_open_produce_stream() -> anyhow::Result<()> {
    let pki = Pki::new("proglog test CA")?;
    let server = pki.issue("server", "node-0", 1)?;
    let writer = pki.issue("writer", "writer", 2)?;
    let node = NodeProcess::start(with_acl(mtls_node(&pki, &server), &pki)?).await?;
    let mut client = connect(&node, &pki.client_options(Some(&writer))).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Produce>(1);
    let mut answers = Box::pin(
        within(
            "ProduceStream",
            client.produce_stream(proglog_tests::channel_stream(receiver)),
        )
        .await??,
    );
    sender.send(produce("allowed")).await?;
    let first = within("the first answer", answers.next()).await?;
    ensure!(matches!(first, Some(Ok(0))), "{first:?}");

    // The writer's grant goes; once the node has reloaded the policy, the stream's next
    // record is refused.
    pki.write("policy.csv", &POLICY.replace("p, writer, *, produce\n", ""))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = connect(&node, &pki.client_options(Some(&writer))).await?;
        if let Err(ClientError::Status(status)) = probe.produce(produce("probe")).await {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "the policy was not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sender.send(produce("revoked")).await?;
    let refused = within("the refusal", answers.next()).await?;
    ensure!(
        matches!(&refused, Some(Err(ClientError::Status(status))) if status.code() == Code::PermissionDenied),
        "{refused:?}"
    );
    Ok(())
}
