//! Gossip on real sockets on 127.0.0.1, ports picked by the OS. Nothing sleeps to wait for a
//! condition: `wait_until` polls with a deadline. Elapsed times are printed (run with
//! `--nocapture` to see them) but never asserted, except the documented bound of `leave`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::TAGS_MAX_BYTES;
use super::join::OwnAddrs;
use super::*;

/// Generous: the machine is shared with builds, and a deadline only bounds a failing test.
const DEADLINE: Duration = Duration::from_secs(20);

/// Logs go to the test's captured output, shown when it fails; `RUST_LOG` picks the level.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn config(id: &str, seeds: &[SocketAddr]) -> DiscoveryConfig {
    let mut config = DiscoveryConfig::new(id, format!("{id}.proglog.test:8400"));
    config.bind_addr = loopback_any_port();
    config.seeds = seeds.iter().map(ToString::to_string).collect();
    config.profile = GossipProfile::Local;
    config
}

struct Node {
    discovery: Discovery,
    events: mpsc::Receiver<MembershipEvent>,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(config: DiscoveryConfig) -> Node {
        init_logs();
        let shutdown = CancellationToken::new();
        let (discovery, events) = Discovery::start(config, shutdown.clone()).await.unwrap();
        Node {
            discovery,
            events,
            shutdown,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.discovery.local_gossip_addr()
    }

    fn status_of(&self, id: &str) -> Option<MemberStatus> {
        self.discovery
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.status)
    }

    fn alive_ids(&self) -> Vec<String> {
        self.discovery
            .members()
            .into_iter()
            .filter(|m| m.status == MemberStatus::Alive)
            .map(|m| m.id)
            .collect()
    }

    /// Waits for the first event that `want` accepts, skipping others.
    async fn event(&mut self, what: &str, want: impl Fn(&MembershipEvent) -> bool) -> Member {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if want(&event) => return event.member().clone(),
                Ok(Some(_)) => {}
                Ok(None) => panic!("event channel closed waiting for {what}"),
                Err(_) => panic!("no {what} within {DEADLINE:?}"),
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.discovery.leave(Duration::from_secs(5)).await;
    }
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` at the deadline.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a seed and `n - 1` nodes seeded with it; waits until all see all alive.
async fn cluster(ids: &[&str]) -> Vec<Node> {
    let seed = Node::start(config(ids[0], &[])).await;
    let seed_addr = seed.addr();
    let mut nodes = vec![seed];
    for id in &ids[1..] {
        nodes.push(Node::start(config(id, &[seed_addr])).await);
    }
    let mut want: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    want.sort();
    wait_until("every node sees every node alive", || {
        nodes.iter().all(|n| n.alive_ids() == want)
    })
    .await;
    nodes
}

#[tokio::test]
async fn three_nodes_see_each_other_with_their_rpc_addresses() {
    let started = Instant::now();
    let nodes = cluster(&["a", "b", "c"]).await;
    eprintln!("three nodes converged in {:?}", started.elapsed());

    for node in &nodes {
        let members = node.discovery.members();
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"], "sorted by id, self included");
        for member in &members {
            assert_eq!(member.rpc_addr, format!("{}.proglog.test:8400", member.id));
            assert_eq!(member.role, "voter");
            assert_eq!(member.status, MemberStatus::Alive);
            assert_eq!(
                node.discovery.rpc_addr_of(&member.id),
                Some(member.rpc_addr.clone())
            );
        }
        assert_eq!(node.discovery.rpc_addr_of("nobody"), None);
    }
    let a = &nodes[0];
    let b_seen_by_a = a.discovery.members().into_iter().find(|m| m.id == "b");
    assert_eq!(
        b_seen_by_a.map(|m| m.gossip_addr),
        Some(nodes[1].addr()),
        "the gossip address is the one b is bound to"
    );

    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_node_that_leaves_is_seen_as_left_and_announced() {
    let mut nodes = cluster(&["a", "b", "c"]).await;
    let c = nodes.pop().unwrap();

    let started = Instant::now();
    c.stop().await;
    eprintln!("leave() returned in {:?}", started.elapsed());

    let left = nodes[0]
        .event(
            "Left(c)",
            |e| matches!(e, MembershipEvent::Left(m) if m.id == "c"),
        )
        .await;
    assert_eq!(left.status, MemberStatus::Left);
    eprintln!("a got Left(c) {:?} after leave started", started.elapsed());
    wait_until("b sees c as left", || {
        nodes[1].status_of("c") == Some(MemberStatus::Left)
    })
    .await;
    assert_eq!(nodes[0].status_of("c"), Some(MemberStatus::Left));
    assert_eq!(
        nodes[0].discovery.rpc_addr_of("c"),
        None,
        "not alive: no rpc"
    );

    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_killed_node_is_seen_as_failed() {
    let mut nodes = cluster(&["a", "b", "c"]).await;
    let c = nodes.pop().unwrap();

    let started = Instant::now();
    c.discovery.kill().await;
    let failed = nodes[0]
        .event(
            "Failed(c)",
            |e| matches!(e, MembershipEvent::Failed(m) if m.id == "c"),
        )
        .await;
    assert_eq!(failed.status, MemberStatus::Failed);
    eprintln!("a got Failed(c) {:?} after c stopped", started.elapsed());
    wait_until("b sees c as failed", || {
        nodes[1].status_of("c") == Some(MemberStatus::Failed)
    })
    .await;
    assert_eq!(nodes[1].discovery.rpc_addr_of("c"), None);

    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_role_change_reaches_the_peers() {
    let mut nodes = cluster(&["a", "b"]).await;

    let started = Instant::now();
    nodes[1].discovery.set_role("observer").await.unwrap();
    let updated = nodes[0]
        .event(
            "Updated(b)",
            |e| matches!(e, MembershipEvent::Updated(m) if m.id == "b"),
        )
        .await;
    eprintln!("a got Updated(b) {:?} after set_role", started.elapsed());
    assert_eq!(updated.role, "observer");
    assert_eq!(updated.status, MemberStatus::Alive);
    let role_of = |node: &Node, id: &str| {
        node.discovery
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.role)
    };
    assert_eq!(role_of(&nodes[0], "b").as_deref(), Some("observer"));
    assert_eq!(
        role_of(&nodes[1], "b").as_deref(),
        Some("observer"),
        "its own entry too"
    );

    for node in nodes {
        node.stop().await;
    }
}

/// A port free for both TCP and UDP right now (the OS may hand it out again, but not soon).
fn free_port() -> SocketAddr {
    let tcp = TcpListener::bind(loopback_any_port()).unwrap();
    let addr = tcp.local_addr().unwrap();
    let _udp = UdpSocket::bind(addr).unwrap();
    addr
}

#[tokio::test]
async fn a_node_joins_a_seed_that_comes_up_later() {
    let a_addr = free_port();
    let b = Node::start(config("b", &[a_addr])).await;

    // The scenario, not a wait for a condition: a comes up after b has tried and failed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.alive_ids(), ["b"], "nothing to join yet");

    let mut a_config = config("a", &[]);
    a_config.bind_addr = a_addr;
    let started = Instant::now();
    let a = Node::start(a_config).await;
    wait_until("b joins a once a is up", || {
        b.alive_ids() == ["a", "b"] && a.alive_ids() == ["a", "b"]
    })
    .await;
    eprintln!("b joined {:?} after a came up", started.elapsed());

    b.stop().await;
    a.stop().await;
}

/// A member that crashed and came back without seeds of its own is found again by the nodes
/// whose seeds name it, long before serf's own reconnect (every 30 s) would try it: a joined
/// node keeps checking its seeds, so a view that lost a member heals.
#[tokio::test]
async fn a_seed_that_crashed_and_came_back_is_joined_again() {
    let b_addr = free_port();
    let mut b_config = config("b", &[]);
    b_config.bind_addr = b_addr;
    let b = Node::start(b_config.clone()).await;
    let a = Node::start(config("a", &[b_addr])).await;
    wait_until("a and b see each other", || {
        a.alive_ids() == ["a", "b"] && b.alive_ids() == ["a", "b"]
    })
    .await;

    // b crashes: no leave, so a declares it failed.
    b.shutdown.cancel();
    gossip::shutdown(&b.discovery.inner.node).await.unwrap();
    drop(b);
    wait_until("a sees b failed", || {
        a.status_of("b") == Some(MemberStatus::Failed)
    })
    .await;

    // b comes back on its address with no seeds: only a can bring the two together again.
    let started = Instant::now();
    let b = Node::start(b_config).await;
    wait_until("a joins b again", || {
        a.alive_ids() == ["a", "b"] && b.alive_ids() == ["a", "b"]
    })
    .await;
    eprintln!("a found b again {:?} after it came back", started.elapsed());

    a.stop().await;
    b.stop().await;
}

/// The member table follows serf's own view even when an event is lost: an entry put wrong
/// (as a missed or reordered event would leave it) is put right within a reconcile round.
#[tokio::test]
async fn a_member_table_that_missed_an_event_catches_up_with_serf() {
    let nodes = cluster(&["a", "b"]).await;
    let a = &nodes[0];
    a.discovery
        .inner
        .table
        .update("b", |b| b.status = MemberStatus::Failed);
    assert_eq!(a.alive_ids(), ["a"]);
    a.discovery.inner.table.remove("b");
    assert_eq!(a.alive_ids(), ["a"]);
    wait_until("a's table lists b alive again", || {
        a.alive_ids() == ["a", "b"]
    })
    .await;
    assert!(a.discovery.rpc_addr_of("b").is_some());
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn only_nodes_with_the_same_key_get_in() {
    let key = parse_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let other_key = [7u8; 32];
    let keyed = |id: &str, seeds: &[SocketAddr], key: Option<[u8; 32]>| {
        let mut c = config(id, seeds);
        c.encryption_key = key;
        c
    };

    let a = Node::start(keyed("a", &[], Some(key))).await;
    let b = Node::start(keyed("b", &[a.addr()], Some(key))).await;
    wait_until("a and b, same key, form a cluster", || {
        a.alive_ids() == ["a", "b"] && b.alive_ids() == ["a", "b"]
    })
    .await;

    let wrong_key = Node::start(keyed("wrong-key", &[a.addr()], Some(other_key))).await;
    let no_key = Node::start(keyed("no-key", &[a.addr()], None)).await;

    // A bounded negative check: for 2 s (many join attempts and gossip rounds on loopback),
    // neither outsider gets in and nobody sees them.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(wrong_key.alive_ids(), ["wrong-key"]);
        assert_eq!(no_key.alive_ids(), ["no-key"]);
        assert_eq!(a.alive_ids(), ["a", "b"]);
        assert_eq!(b.alive_ids(), ["a", "b"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for node in [wrong_key, no_key, b, a] {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_whole_cluster_leaves_within_the_limit_and_frees_its_ports() {
    // The LAN profile: a cluster leaving at once makes serf's leave wait up to 5 s for
    // acknowledgements from peers that are leaving too; the limit must cut that short.
    let lan = |id: &str, seeds: &[SocketAddr]| {
        let mut c = config(id, seeds);
        c.profile = GossipProfile::Lan;
        c
    };
    init_logs();
    let shutdown = CancellationToken::new();
    let (a, _a_events) = Discovery::start(lan("a", &[]), shutdown.clone())
        .await
        .unwrap();
    let mut others = Vec::new();
    for id in ["b", "c"] {
        let (node, events) = Discovery::start(lan(id, &[a.local_gossip_addr()]), shutdown.clone())
            .await
            .unwrap();
        others.push((node, events));
    }
    wait_until("all three see three", || {
        a.members().len() == 3 && others.iter().all(|(n, _)| n.members().len() == 3)
    })
    .await;

    shutdown.cancel();
    let limit = Duration::from_secs(2);
    let started = Instant::now();
    let all: Vec<Discovery> = std::iter::once(a.clone())
        .chain(others.iter().map(|(n, _)| n.clone()))
        .collect();
    let elapsed = futures_util::future::join_all(all.iter().map(|n| async move {
        let started = Instant::now();
        n.leave(limit).await;
        started.elapsed()
    }))
    .await;
    eprintln!("whole-cluster leave: {elapsed:?} (limit {limit:?})");
    for took in &elapsed {
        // The documented bound, plus scheduling slack on a loaded machine.
        assert!(
            *took <= limit + Duration::from_millis(500),
            "leave took {took:?}"
        );
    }
    assert!(started.elapsed() <= limit + Duration::from_millis(500));

    for (_, events) in &mut others {
        // The shutdown token closed the event channels: what is left drains, then ends.
        let closed =
            tokio::time::timeout(DEADLINE, async { while events.recv().await.is_some() {} });
        assert!(
            closed.await.is_ok(),
            "event channel still open after shutdown"
        );
    }

    for node in &all {
        let addr = node.local_gossip_addr();
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("UDP {addr} still bound: {e}"));
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("TCP {addr} still bound: {e}"));
        assert_eq!(
            node.members()
                .into_iter()
                .find(|m| m.id == node.node_id())
                .map(|m| m.status),
            Some(MemberStatus::Left)
        );
    }
    // Nothing keeps running: serf's tasks, the event tasks and the join tasks all ended.
    let runtime = tokio::runtime::Handle::current();
    wait_until("every task ends after leave", || {
        runtime.metrics().num_alive_tasks() == 0
    })
    .await;

    // And a new node can gossip on a freed port.
    let mut again = config("a", &[]);
    again.bind_addr = a.local_gossip_addr();
    let restarted = Node::start(again).await;
    assert_eq!(restarted.addr(), a.local_gossip_addr());
    restarted.stop().await;
    a.leave(limit).await; // a second call returns at once
}

#[tokio::test]
async fn dropping_the_last_handle_without_leave_still_frees_the_ports() {
    let node = Node::start(config("a", &[])).await;
    let addr = node.addr();
    let clone = node.discovery.clone();
    drop(node);
    assert!(UdpSocket::bind(addr).is_err(), "a clone still holds it");
    drop(clone);
    wait_until("the ports are released", || {
        UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_seed_list_naming_only_this_node_makes_a_cluster_of_one() {
    let addr = free_port();
    let mut c = config("solo", &[addr]);
    c.bind_addr = addr;
    let solo = Node::start(c).await;
    assert_eq!(solo.alive_ids(), ["solo"]);
    solo.stop().await;
}

#[tokio::test]
async fn a_taken_port_is_reported_with_the_address() {
    let a = Node::start(config("a", &[])).await;
    let mut c = config("b", &[]);
    c.bind_addr = a.addr();
    let err = Discovery::start(c, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DiscoveryError::Start { bind_addr, .. } if bind_addr == a.addr()),
        "{err}"
    );
    assert!(err.to_string().contains(&a.addr().to_string()), "{err}");
    a.stop().await;
}

#[tokio::test]
async fn oversized_tags_are_refused_before_and_after_start() {
    let mut c = config("a", &[]);
    c.role = "r".repeat(TAGS_MAX_BYTES);
    let err = Discovery::start(c, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DiscoveryError::TagsTooLarge { max: TAGS_MAX_BYTES, size } if size > TAGS_MAX_BYTES),
        "{err}"
    );

    let a = Node::start(config("a", &[])).await;
    let err = a
        .discovery
        .set_role(&"r".repeat(TAGS_MAX_BYTES))
        .await
        .unwrap_err();
    assert!(matches!(err, DiscoveryError::TagsTooLarge { .. }), "{err}");
    assert_eq!(a.discovery.members()[0].role, "voter", "unchanged");
    a.stop().await;
}

#[test]
fn tags_just_under_the_limit_pass_and_one_more_byte_fails() {
    // Find the longest role that fits, as serf measures it, and check the boundary.
    let fits = |role: &str| config::check_tags_size("node-1", "node-1:8400", role).is_ok();
    let longest = (0..TAGS_MAX_BYTES)
        .take_while(|n| fits(&"r".repeat(*n)))
        .last()
        .unwrap();
    assert!(longest > 400, "most of the budget is usable: {longest}");
    assert!(!fits(&"r".repeat(longest + 1)));
}

#[test]
fn config_validation_names_what_to_fix() {
    let mut c = config("", &[]);
    assert!(matches!(
        c.validate(),
        Err(DiscoveryError::Empty { field: "node_id" })
    ));
    c.node_id = "a".into();
    c.rpc_addr.clear();
    assert!(matches!(
        c.validate(),
        Err(DiscoveryError::Empty { field: "rpc_addr" })
    ));
    c.rpc_addr = "a:8400".into();
    c.advertise_addr = Some(SocketAddr::from(([10, 0, 0, 1], 8401)));
    let err = c.validate().unwrap_err();
    assert!(
        matches!(err, DiscoveryError::AdvertiseWithEphemeralPort { .. }),
        "{err}"
    );
    c.bind_addr = SocketAddr::from(([0, 0, 0, 0], DEFAULT_GOSSIP_PORT));
    c.validate().unwrap();

    let defaults = DiscoveryConfig::new("a", "a:8400");
    assert_eq!(defaults.bind_addr.port(), DEFAULT_GOSSIP_PORT);
    assert!(defaults.bind_addr.ip().is_unspecified());
    assert_eq!(defaults.profile, GossipProfile::Lan);
}

#[test]
fn the_key_never_reaches_debug_output() {
    let mut c = config("a", &[]);
    c.encryption_key = Some([0xAB; 32]);
    let shown = format!("{c:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(!shown.contains("171"), "{shown}");
}

#[test]
fn keys_are_base64_of_32_bytes() {
    let key = parse_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    assert_eq!(key[0], 0);
    assert_eq!(key[31], 31);
    assert_eq!(
        parse_key(" AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap(),
        key,
        "a trailing newline from a mounted Secret is fine"
    );

    let short = parse_key("AAECAwQFBgcICQoLDA0ODw==").unwrap_err();
    assert!(short.to_string().contains("16 bytes"), "{short}");
    let not_base64 = parse_key("not a key!").unwrap_err();
    assert!(
        not_base64.to_string().contains("not base64"),
        "{not_base64}"
    );
    assert!(matches!(
        parse_key(""),
        Err(DiscoveryError::InvalidKey { .. })
    ));
}

#[test]
fn seeds_naming_this_node_are_recognised() {
    let own = OwnAddrs {
        bound: SocketAddr::from(([0, 0, 0, 0], 8401)),
        advertised: SocketAddr::from(([10, 1, 2, 3], 8401)),
    };
    assert!(own.contains(SocketAddr::from(([10, 1, 2, 3], 8401))));
    assert!(own.contains(SocketAddr::from(([127, 0, 0, 1], 8401))));
    assert!(!own.contains(SocketAddr::from(([10, 1, 2, 4], 8401))));
    assert!(!own.contains(SocketAddr::from(([10, 1, 2, 3], 8402))));
}
