//! Starting and stopping a node: open the log, serve gRPC until shutdown, drain, close the log.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{
    AdminAccess, AdminService, GrpcPeerTransport, LogService, LogStore, MessageLimitLayer,
    PeerService, StreamBudget, StreamLimits,
};
use crate::api::{ServiceSettings, health_service};
use crate::config::NodeConfig;
use crate::discovery::{ClusterDirectory, Discovery, DiscoveryConfig, MembershipEvent};
use crate::replication::driver::{Consensus, PeerDirectory};
use crate::replication::{FileQuorumStore, Replica, ReplicaConfig};
use crate::security::TlsFiles;
use crate::security::{
    ConnectionGate, DescriptorBudget, PEER_MAX_CONNECTIONS, ServerSecurity, load_tls,
    plain_incoming, tls_incoming,
};
use crate::storage::{Log, Shortage};
use crate::telemetry::{Health, HttpServer, Listener, Metrics, RpcMetricsLayer};
use proglog_proto::log::v1::admin_server::AdminServer;
use proglog_proto::log::v1::log_server::LogServer;
use proglog_proto::log::v1::logs_server::LogsServer;
use proglog_proto::log::v1::peer_server::PeerServer;

/// HTTP/2 streams (calls) one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Extra bytes allowed in a request beyond the largest batch, for protobuf framing.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Runs a node until `shutdown` is cancelled (or the log hits a fatal error), then drains calls
/// in flight, syncs and checkpoints the log. Returns an error if the node stopped on a fatal
/// error rather than a requested shutdown.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    // TLS files and the ACL load before anything starts: a bad file stops the start, naming
    // its flag.
    let security = ServerSecurity::load(config.tls.as_ref(), config.acl.as_ref()).await?;
    // Metrics and health first: `/healthz` answers while a large log recovers, `/readyz` says
    // 503 until gRPC serves. The HTTP server outlives the drain and stops on every way out.
    let metrics = Metrics::new();
    let readiness = Arc::new(Health::new());
    let http = HttpServer::bind(
        config.http_addr,
        Arc::clone(&metrics),
        Arc::clone(&readiness),
    )
    .await?;
    let http_addr = http.local_addr();
    let http_stop = CancellationToken::new();
    let _stop_http_on_return = http_stop.clone().drop_guard();
    let http_server = http
        .serve_on_own_thread(http_stop.clone())
        .context("cannot start the HTTP server's thread")?;
    let data_dir = config.data_dir.clone();
    let options = config.log.clone();
    let log = tokio::task::spawn_blocking(move || Log::open(&data_dir, options))
        .await
        .context("log open task failed")?
        .with_context(|| format!("open the log in {}", config.data_dir.display()))?;
    let log = Arc::new(log);
    let fatal = CancellationToken::new();

    let listener = TcpListener::bind(config.rpc_addr)
        .await
        .with_context(|| format!("listen on {} (--rpc-addr)", config.rpc_addr))?;
    let local_addr = listener.local_addr().context("read the bound address")?;
    let advertise = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    let stop = CancellationToken::new();

    // Replication: peers by static address (gossip adds the rest), the consensus state
    // machine over the log, and its driver.
    let mut peers = config.replication.peers.clone();
    peers.insert(config.id.clone(), advertise.clone());
    let gossip_stop = CancellationToken::new();
    let _stop_gossip_on_return = gossip_stop.clone().drop_guard();
    let (gossip, membership_events) = match &config.replication.gossip {
        Some(settings) => {
            let mut gossip_config = DiscoveryConfig::new(config.id.clone(), advertise.clone());
            gossip_config.bind_addr = settings.bind_addr;
            gossip_config.advertise_addr = settings.advertise_addr;
            gossip_config.seeds = settings.seeds.clone();
            gossip_config.encryption_key = settings.key;
            let (gossip, events) = Discovery::start(gossip_config, gossip_stop.clone())
                .await
                .with_context(|| {
                    format!("start gossip on {} (--gossip-addr)", settings.bind_addr)
                })?;
            (Some(gossip), Some(events))
        }
        None => (None, None),
    };
    let gossip_addr = gossip.as_ref().map(|gossip| gossip.local_gossip_addr());
    // The peer and admin services: on a listener of their own (--peer-addr), with its own
    // TLS when given, or on the RPC port.
    let peer_listener = match config.peer_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr} (--peer-addr)"))?,
        ),
        None => None,
    };
    let peer_tls = match &config.peer_tls {
        Some(tls) => Some(load_tls(tls, config.acl.is_some())?),
        None => security.tls.clone(),
    };
    let peer_addr = peer_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("read the bound peer address")?;
    let mut cluster_directory = ClusterDirectory::new(peers, gossip.clone());
    if let Some(addr) = peer_addr {
        cluster_directory = cluster_directory
            .with_peer_listeners(addr.port(), config.replication.peer_addrs.clone());
    }
    let directory: Arc<dyn PeerDirectory> = Arc::new(cluster_directory);
    // Peers are called with the node's own certificate, the one its peer listener presents
    // (its client service's, for forwarded produces); when a reload swaps in new files, calls
    // switch to them too.
    let rpc_tls_files = security.tls.as_ref().map(|tls| tls.subscribe_files());
    let peer_tls_files = peer_tls.as_ref().map(|tls| tls.subscribe_files());
    let transport: Arc<GrpcPeerTransport> = Arc::new(GrpcPeerTransport::new(
        Arc::clone(&directory),
        rpc_tls_files
            .as_ref()
            .map(|files| files.borrow().peer_client_config()),
        peer_tls_files
            .as_ref()
            .map(|files| files.borrow().peer_client_config()),
        config.log.max_batch_bytes,
    ));
    let mut replica_config = ReplicaConfig::new(config.id.clone());
    replica_config.election_timeout_ms = config.replication.election_timeout.as_millis() as u64;
    replica_config.fetch_max_wait_ms = (replica_config.election_timeout_ms / 2) as u32;
    replica_config.fetch_timeout_ms = replica_config.election_timeout_ms + 500;
    replica_config.seed = random_seed();
    let initial_voters = config.replication.initial_voters.clone();
    let replica_log = Arc::clone(&log);
    let quorum_store = FileQuorumStore::new(&config.data_dir);
    let replica = tokio::task::spawn_blocking(move || {
        Replica::new(replica_config, replica_log, quorum_store, initial_voters, 0)
    })
    .await
    .context("replica start task failed")?
    .context("start replication")?;
    if let Some(files) = rpc_tls_files {
        tokio::spawn(follow_tls(
            files,
            Arc::clone(&transport),
            TlsUse::Rpc,
            stop.clone(),
        ));
    }
    if let Some(files) = peer_tls_files {
        tokio::spawn(follow_tls(
            files,
            Arc::clone(&transport),
            TlsUse::Peer,
            stop.clone(),
        ));
    }
    let consensus = Consensus::new(replica, Arc::clone(&transport) as _, fatal.clone());
    // The members known from the start (--peers, --initial-voters); gossip adds the rest.
    consensus
        .set_known_peers(directory.members().into_iter().map(|(id, _)| id).collect())
        .await;
    let consensus_stop = CancellationToken::new();
    let consensus_task = tokio::spawn(Arc::clone(&consensus).run(consensus_stop.clone()));
    let membership_task = match (gossip.clone(), membership_events) {
        (Some(gossip), Some(events)) => Some(tokio::spawn(follow_membership(
            gossip,
            events,
            Arc::clone(&consensus),
            Arc::clone(&directory),
            gossip_stop.clone(),
        ))),
        _ => None,
    };
    let _stop_consensus_on_return = consensus_stop.clone().drop_guard();
    let store = LogStore::new(
        log,
        Arc::clone(&consensus),
        directory,
        fatal.clone(),
        config.timestamps,
    );
    metrics.watch_log(Arc::clone(&store) as _);
    readiness.watch_disk({
        let store = Arc::clone(&store);
        move || store.log().shortage() == Some(Shortage::Disk)
    });
    let service = LogService::new(
        Arc::clone(&store),
        ServiceSettings {
            id: config.id.clone(),
            rpc_addr: advertise.clone(),
            consume_read_bytes: config.consume_read_bytes,
            stream_buffer: config.stream_buffer,
            produce_pipeline: config.produce_pipeline,
            max_record_bytes: config.log.max_record_bytes as usize,
            max_batch_bytes: config.log.max_batch_bytes as usize,
            max_pending_streams: config.max_streams,
            first_request_timeout: config.first_request_timeout,
        },
        stop.clone(),
        Arc::clone(&transport),
        StreamBudget::new(
            StreamLimits {
                max_streams: config.max_streams,
                budget_bytes: config.stream_budget_bytes(),
                // Two reads in flight per stream, so a client that keeps up never waits for one.
                per_stream_bytes: 2 * config.consume_read_bytes,
                max_batch_bytes: config.log.max_batch_bytes as usize,
                slow_consumer_after: config.slow_consumer_timeout,
            },
            Arc::clone(metrics.load()),
        ),
        security.authorizer.clone(),
    );
    let max_message = config.log.max_batch_bytes as usize + MESSAGE_OVERHEAD;
    let health = tonic_health::server::HealthReporter::new();
    health.set_serving::<LogServer<LogService>>().await;
    let health_server = health_service(health.clone(), stop.clone());
    // Reflection in both versions, as grpc-go registers it: `v1`, and `v1alpha` for the tools
    // that still speak only that (Python's grpcio-reflection, Postman, older grpcurl).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proglog_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("build the reflection service")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("build the v1alpha reflection service")?;

    let retention = tokio::spawn(retention_loop(
        Arc::clone(&store),
        config.retention_check_interval,
        stop.clone(),
    ));

    let peer_service = PeerServer::new(PeerService::new(
        Arc::clone(&consensus),
        config.log.max_batch_bytes,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message * 4);
    let mut admin = AdminService::new(
        Arc::clone(&store),
        AdminAccess::new(security.authorizer.is_some(), &config.admin_subjects),
    );
    if let Some(tls) = &peer_tls {
        admin = admin.with_peer_tls(tls.subscribe_files());
    }
    let admin_service = AdminServer::new(admin);
    // Bounds per connection: streams open at once, and calls in flight (more wait). The
    // metrics layer is the outermost, so it counts what later layers reject too; the size
    // limit inside it, so an oversize request is counted as InvalidArgument; every call is
    // authenticated by the ACL layer (a pass-through without an ACL), which also decides the
    // peer and admin calls; the log services decide theirs on the log each call names.
    macro_rules! builder {
        () => {
            tonic::transport::Server::builder()
                .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
                .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .layer(
                    RpcMetricsLayer::new(metrics.rpc().clone())
                        .with_trace_spans(config.traces.enabled()),
                )
                .layer(MessageLimitLayer::new(config.log.max_record_bytes as usize))
                .layer(security.acl_layer())
        };
    }
    // Connections: each listener has its cap, and all share the descriptors the log leaves.
    let descriptors = DescriptorBudget::of_process();
    descriptors.watch_log({
        let store = Arc::clone(&store);
        move || store.log().segment_count()
    });
    // The peer listener's few connections come out of the reserve, so clients filling their
    // share can never lock the other nodes out.
    let gate = |listener| {
        let (max, budget) = match listener {
            Listener::Peer => (
                config.max_connections.min(PEER_MAX_CONNECTIONS),
                DescriptorBudget::new(usize::MAX),
            ),
            _ => (config.max_connections, Arc::clone(&descriptors)),
        };
        ConnectionGate::new(
            listener,
            max,
            config.first_request_timeout,
            budget,
            Arc::clone(metrics.load()),
        )
    };
    // Serves `router` on `listener` until `stop`: TLS with the files' current certificate for
    // each new connection (open ones keep theirs), or plaintext connections, bounded in number,
    // TCP_NODELAY set (measured: streaming produce 8x slower without it).
    macro_rules! serve {
        ($router:expr, $listener:expr, $tls:expr, $gate:expr) => {{
            let server: futures_util::future::BoxFuture<
                'static,
                Result<(), tonic::transport::Error>,
            > = match $tls {
                Some(tls) => {
                    tokio::spawn(Arc::clone(tls).watch(stop.clone()));
                    Box::pin($router.serve_with_incoming_shutdown(
                        tls_incoming($listener, Arc::clone(tls), $gate, stop.clone()),
                        stop.clone().cancelled_owned(),
                    ))
                }
                None => Box::pin($router.serve_with_incoming_shutdown(
                    plain_incoming($listener, $gate, stop.clone()),
                    stop.clone().cancelled_owned(),
                )),
            };
            server
        }};
    }
    let client_router = builder!()
        .add_service(health_server)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(LogsServer::new(service.clone()))
        .add_service(
            LogServer::new(service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );
    let (server, peer_server) = match peer_listener {
        Some(peer_listener) => {
            let peer_router = builder!()
                .add_service(peer_service)
                .add_service(admin_service);
            (
                serve!(client_router, listener, &security.tls, gate(Listener::Rpc)),
                Some(serve!(
                    peer_router,
                    peer_listener,
                    &peer_tls,
                    gate(Listener::Peer)
                )),
            )
        }
        None => {
            let router = client_router
                .add_service(peer_service)
                .add_service(admin_service);
            (
                serve!(router, listener, &security.tls, gate(Listener::Rpc)),
                None,
            )
        }
    };
    if let Some(authorizer) = &security.authorizer {
        // The policy (and model) reload when they change, like the certificates.
        let every = config
            .tls
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |tls| tls.reload_interval);
        tokio::spawn(Arc::clone(authorizer).watch(every, stop.clone()));
    }
    tracing::info!(id = %config.id, rpc_addr = %local_addr, http_addr = %http_addr, peer_addr = peer_addr.map(|addr| addr.to_string()), advertise_addr = %advertise, gossip_addr = gossip_addr.map(|addr| addr.to_string()), tls = security.tls.is_some(), acl = security.authorizer.is_some(), "serving");

    let server: futures_util::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
        match peer_server {
            Some(peer_server) => Box::pin(async move {
                futures_util::future::try_join(server, peer_server)
                    .await
                    .map(|_| ())
            }),
            None => server,
        };
    let mut server = tokio::spawn(server);
    readiness.set_ready();
    // From here on every path closes the log: errors are collected, not returned early.
    let mut failure: Option<anyhow::Error> = None;
    let fatal_error = tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = fatal.cancelled() => true,
        finished = &mut server => {
            failure = server_outcome(finished).err();
            false
        }
    };
    tracing::info!(
        fatal = fatal_error,
        "shutting down: refusing new calls, draining calls in flight"
    );
    readiness.set_not_ready();
    health.set_not_serving::<LogServer<LogService>>().await;
    if !fatal_error && let Some(epoch) = consensus.resign(true).await {
        tracing::info!(epoch, "handed leadership over");
    }
    stop.cancel();
    if !server.is_finished() {
        match tokio::time::timeout(config.shutdown_grace, &mut server).await {
            Ok(finished) => failure = failure.or(server_outcome(finished).err()),
            Err(_) => {
                tracing::warn!(grace = ?config.shutdown_grace, "calls still running after the grace period; no longer accepting, closing the log");
                server.abort();
            }
        }
    }
    consensus_stop.cancel();
    if let Some(gossip) = &gossip {
        // Peers see a departure, not a failure; bounded (a whole cluster leaving at once can
        // wait on each other).
        gossip.leave(GOSSIP_LEAVE_TIMEOUT).await;
    }
    gossip_stop.cancel();
    if let Some(task) = membership_task
        && let Err(err) = task.await
    {
        failure = failure.or(Some(
            anyhow::Error::new(err).context("membership task failed"),
        ));
    }
    if let Err(err) = consensus_task.await {
        failure = failure.or(Some(
            anyhow::Error::new(err).context("consensus task failed"),
        ));
    }
    if let Err(err) = retention.await {
        failure = failure.or(Some(
            anyhow::Error::new(err).context("retention task failed"),
        ));
    }
    match store.close().await {
        Ok(()) => tracing::info!("log closed cleanly"),
        // After a fatal error the log refuses to close; that error is the one to report.
        Err(err) if fatal_error => {
            tracing::error!(error = %err, "log not closed after a fatal error")
        }
        Err(err) => failure = failure.or(Some(anyhow::Error::new(err).context("close the log"))),
    }
    http_stop.cancel();
    if http_server.await.is_err() {
        failure = failure.or(Some(anyhow::anyhow!("the HTTP server's thread failed")));
    }
    if fatal_error {
        anyhow::bail!("stopped after a fatal storage error");
    }
    failure.map_or(Ok(()), Err)
}

/// How long leaving the gossip cluster may take on shutdown.
const GOSSIP_LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Follows gossip: logs membership changes, tells the replica who is around (observers find
/// the leader through them) and gossips this node's role when it changes.
async fn follow_membership(
    gossip: Discovery,
    mut events: tokio::sync::mpsc::Receiver<MembershipEvent>,
    consensus: Arc<Consensus>,
    directory: Arc<dyn PeerDirectory>,
    stop: CancellationToken,
) {
    let mut view = consensus.subscribe();
    let mut role = String::new();
    loop {
        let current = view.borrow_and_update().role.as_str().to_owned();
        if current != role {
            role = current;
            if let Err(err) = gossip.set_role(&role).await {
                tracing::warn!(error = %err, role, "could not gossip this node's role");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
            event = events.recv() => {
                let Some(event) = event else { return };
                let change = match &event {
                    MembershipEvent::Joined(_) => "joined",
                    MembershipEvent::Updated(_) => "updated",
                    MembershipEvent::Left(_) => "left",
                    MembershipEvent::Failed(_) => "failed",
                };
                let member = event.member();
                tracing::info!(change, member = %member.id, rpc_addr = %member.rpc_addr, role = %member.role, "membership changed");
                consensus
                    .set_known_peers(directory.members().into_iter().map(|(id, _)| id).collect())
                    .await;
            }
        }
    }
}

/// Which of this node's calls a set of TLS files is for.
#[derive(Debug, Clone, Copy)]
enum TlsUse {
    /// Calls to peers' client service (forwarded produces).
    Rpc,
    /// Calls to peers' peer service.
    Peer,
}

/// Switches this node's calls (`used_for`) to its certificate whenever the server's files are
/// reloaded, until `stop`.
async fn follow_tls(
    mut files: tokio::sync::watch::Receiver<Arc<TlsFiles>>,
    transport: Arc<GrpcPeerTransport>,
    used_for: TlsUse,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = files.changed() => if changed.is_err() { return },
        }
        let config = files.borrow_and_update().peer_client_config();
        match used_for {
            TlsUse::Rpc => transport.set_rpc_tls(config),
            TlsUse::Peer => transport.set_peer_tls(config),
        }
        tracing::info!(?used_for, "calls to peers now use the reloaded certificate");
    }
}

/// A seed for election-timeout randomness that differs between nodes and starts.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish()
}

/// What the gRPC server task ended with.
fn server_outcome(
    finished: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    finished
        .context("server task failed")?
        .context("gRPC server failed")
}

/// Applies retention periodically until `stop`.
async fn retention_loop(store: Arc<LogStore>, every: std::time::Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(status) = store.apply_retention().await {
                    tracing::error!(error = %status.message(), "retention failed");
                }
            }
        }
    }
}
