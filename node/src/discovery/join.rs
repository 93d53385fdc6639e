//! The join task: keeps trying the seeds until one join succeeds, then keeps watching them.
//!
//! A node always joins its seeds when it starts, even one that was in the cluster before a
//! restart: serf's own reconnect would find it again only after about 20 s. Seeds are
//! resolved by DNS on every attempt, because in Kubernetes a pod's DNS name appears only
//! once it is scheduled, and a headless service name resolves to whichever pods are up.
//!
//! Once joined, the task checks the seeds every [`SEED_CHECK_INTERVAL`], as NATS servers keep
//! dialling their configured routes: a seed address that is no alive member's gossip address
//! is joined again. That heals a view that lost a member (a peer that crashed and came back
//! without seeds naming this node, or news of a join that never arrived), which serf's own
//! reconnect would retry only every 30 s and only for members it still remembers. A join to a
//! live node is one push-pull exchange of state. An address that stays no alive member (a
//! seed that is down, or one that never matches the address its member advertises) is tried
//! again after a wait that doubles each time, up to [`SEED_RECHECK_MAX`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::gossip::{self, GossipNode};
use super::member::{MemberStatus, MemberTable};

/// First wait between attempts: a seed that is starting at the same time is usually up by then.
pub const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts, so a node whose seeds come up late joins within seconds.
pub const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one join through one seed address may take. A push-pull with a live peer takes
/// milliseconds; one that hangs (seen once in CI, in the network-namespace pod test; the cause
/// inside serf is not known) must not stop the retries, so it is dropped and the next attempt
/// made.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node that has joined checks that every seed address is an alive member.
pub const SEED_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait between two joins of one seed address that stays no alive member: as
/// often as serf's own reconnect tries a failed member, so a seed back after a long outage
/// is found as soon as serf would find it.
pub const SEED_RECHECK_MAX: Duration = Duration::from_secs(30);

/// Which addresses are this node, so a seed list that names it (every pod of a StatefulSet
/// gets the same list) does not make it try to join itself: that would waste every attempt,
/// or worse, be taken for a join and end the retries before a real peer was reached.
#[derive(Clone, Copy, Debug)]
pub(super) struct OwnAddrs {
    /// The address gossip is bound to (with the real port when the config said 0).
    pub(super) bound: SocketAddr,
    /// The address peers are told to use.
    pub(super) advertised: SocketAddr,
}

impl OwnAddrs {
    pub(super) fn contains(&self, addr: SocketAddr) -> bool {
        addr == self.bound
            || addr == self.advertised
            // A wildcard bind answers on every local address at that port.
            || (self.bound.ip().is_unspecified()
                && addr.port() == self.bound.port()
                && (addr.ip().is_loopback() || addr.ip() == self.advertised.ip()))
    }
}

/// How one attempt went.
enum Attempt {
    /// Joined through this many addresses.
    Joined(usize),
    /// Every seed resolved, and only to this node: it is the first member, nothing to join.
    OnlySelf,
    /// Nothing joined; try again later.
    Failed,
}

/// Runs until serf stops or `stop` is cancelled: first until a join succeeds or the seeds turn
/// out to name only this node, then checking the seeds every [`SEED_CHECK_INTERVAL`].
pub(super) async fn run(
    node: GossipNode,
    seeds: Vec<String>,
    own: OwnAddrs,
    table: MemberTable,
    stop: CancellationToken,
) {
    if !join_first(&node, &seeds, own, &stop).await {
        return;
    }
    // Per seed address that is not an alive member: when to try it next, and the wait after
    // that. Each try doubles the wait (up to SEED_RECHECK_MAX, 30 s), so a seed that is down, or
    // an address that never matches the one its member advertises (a VIP, NAT, another
    // interface), costs a join now and then, not one every check; an address seen alive
    // starts again from the shortest wait.
    let mut backoff: HashMap<SocketAddr, (Instant, Duration)> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SEED_CHECK_INTERVAL) => {}
        }
        if !gossip::is_alive(&node) {
            return;
        }
        let alive: Vec<SocketAddr> = table
            .snapshot()
            .into_iter()
            .filter(|member| member.status == MemberStatus::Alive)
            .map(|member| member.gossip_addr)
            .collect();
        let (resolved, _) = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            resolved = resolve(&seeds) => resolved,
        };
        backoff.retain(|addr, _| !alive.contains(addr) && resolved.contains(addr));
        let now = Instant::now();
        for addr in resolved
            .into_iter()
            .filter(|addr| !own.contains(*addr) && !alive.contains(addr))
        {
            let first = !backoff.contains_key(&addr);
            let (next, wait) = backoff.entry(addr).or_insert((now, SEED_CHECK_INTERVAL));
            if *next > now {
                continue;
            }
            *next = now + *wait;
            *wait = (*wait * 2).min(SEED_RECHECK_MAX);
            let joined = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                joined = tokio::time::timeout(JOIN_TIMEOUT, gossip::join(&node, addr)) => joined,
            };
            match joined {
                Ok(Ok(())) if first => {
                    tracing::info!(%addr, "gossip: joined a seed that was no alive member");
                }
                Ok(Ok(())) => tracing::debug!(%addr, "gossip: joined a seed again"),
                Ok(Err(error)) => tracing::debug!(%addr, %error, "gossip: seed join failed"),
                Err(_) => tracing::debug!(%addr, "gossip: seed join timed out"),
            }
        }
    }
}

/// The first join: true once a join succeeded or the seeds name only this node, false if
/// serf stopped or `stop` was cancelled first.
async fn join_first(
    node: &GossipNode,
    seeds: &[String],
    own: OwnAddrs,
    stop: &CancellationToken,
) -> bool {
    let mut delay = JOIN_BACKOFF_MIN;
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            outcome = attempt(node, seeds, own) => outcome,
        };
        match outcome {
            Attempt::Joined(joined) => {
                tracing::info!(
                    joined,
                    attempts,
                    "gossip: joined the cluster through the seeds"
                );
                return true;
            }
            Attempt::OnlySelf => {
                tracing::info!(
                    seeds = ?seeds,
                    "gossip: the seeds name only this node; starting a new cluster",
                );
                return true;
            }
            Attempt::Failed => {}
        }
        if !gossip::is_alive(node) {
            return false;
        }
        // Quiet (debug) while backing off; once at the cap, say so at info every few seconds,
        // so a node stuck waiting for its seeds shows it in default logs without flooding them.
        if delay >= JOIN_BACKOFF_MAX {
            tracing::info!(
                seeds = ?seeds,
                attempts,
                retry_in = ?delay,
                "gossip: no seed reachable yet",
            );
        } else {
            tracing::debug!(attempts, retry_in = ?delay, "gossip: no seed reachable yet");
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(JOIN_BACKOFF_MAX);
    }
}

/// Resolves every seed: the addresses, and how many seeds did not resolve.
async fn resolve(seeds: &[String]) -> (Vec<SocketAddr>, usize) {
    let mut resolved = Vec::new();
    let mut unresolved = 0;
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => resolved.extend(addrs),
            Err(error) => {
                unresolved += 1;
                tracing::debug!(seed = %seed, %error, "gossip: seed does not resolve");
            }
        }
    }
    (resolved, unresolved)
}

/// Resolves every seed and tries each address that is not this node, all of them (joining
/// more than one costs little and helps if the first is on its way out).
async fn attempt(node: &GossipNode, seeds: &[String], own: OwnAddrs) -> Attempt {
    let (resolved, unresolved) = resolve(seeds).await;
    let mut joined = 0;
    let mut others = 0;
    for addr in resolved.into_iter().filter(|a| !own.contains(*a)) {
        others += 1;
        match tokio::time::timeout(JOIN_TIMEOUT, gossip::join(node, addr)).await {
            Ok(Ok(())) => {
                joined += 1;
                tracing::debug!(%addr, "gossip: joined through seed");
            }
            Ok(Err(error)) => {
                tracing::debug!(%addr, %error, "gossip: join failed");
            }
            Err(_) => {
                tracing::info!(%addr, timeout = ?JOIN_TIMEOUT, "gossip: join timed out; trying again");
            }
        }
    }
    if joined > 0 {
        Attempt::Joined(joined)
    } else if others == 0 && unresolved == 0 {
        Attempt::OnlySelf
    } else {
        Attempt::Failed
    }
}
