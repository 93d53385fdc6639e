//! Gossip membership: which nodes are in the cluster, whether they are alive, and the gRPC
//! address and role each one announces. Built on serf (SWIM gossip with Lifeguard), and the
//! only module that knows serf: everything it exposes is proglog's own types.
//!
//! Each node gossips three tags: `id`, `rpc` (its gRPC address) and `role`. Replication reads
//! [`Discovery::members`] for the current view and consumes [`MembershipEvent`]s to react to
//! changes; it never asks gossip anything over the network.
//!
//! ## Layout
//!
//! - `config`: [`DiscoveryConfig`] (validated before anything binds), [`GossipProfile`],
//!   [`parse_key`].
//! - `member`: [`Member`], [`MemberStatus`], [`MembershipEvent`], and the member table behind
//!   [`Discovery::members`].
//! - `gossip`: the serf glue: serf's generic types aliased once, options, conversions.
//! - `events`: the task that turns serf's event stream into the table and the events.
//! - `join`: the task that joins the seeds, resolving them on every attempt, with backoff.
//! - `error`: [`DiscoveryError`].
//!
//! ## Life cycle
//!
//! [`Discovery::start`] binds the gossip port, starts both tasks and returns at once; joining
//! happens in the background, so a node whose seeds are not up yet still starts. On shutdown,
//! cancel the token (no more joins, no more events), drain the rest of the node, then call
//! [`Discovery::leave`]: it tells the peers and releases the ports, within a time limit.
//! Dropping every handle without `leave` also releases the ports, but peers then see a
//! failure rather than a departure.

mod config;
mod directory;
mod error;
mod events;
mod gossip;
mod join;
mod member;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{DEFAULT_GOSSIP_PORT, DiscoveryConfig, GossipProfile, parse_key};
pub use directory::ClusterDirectory;
pub use error::{DiscoveryError, GossipCause};
pub use events::EVENT_CHANNEL_CAPACITY;
pub use join::{JOIN_BACKOFF_MAX, JOIN_BACKOFF_MIN, SEED_CHECK_INTERVAL};
pub use member::{Member, MemberStatus, MembershipEvent};

use gossip::GossipNode;
use member::MemberTable;

/// Of [`Discovery::leave`]'s time limit, what is kept for closing the sockets after the leave
/// itself (which can wait seconds for peers that are leaving too). Closing takes milliseconds;
/// the margin is for a loaded machine.
const SHUTDOWN_RESERVE: Duration = Duration::from_millis(500);

/// A running gossip member. Cheap to clone: clones share one serf node.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    node: GossipNode,
    node_id: String,
    rpc_addr: String,
    local_gossip_addr: SocketAddr,
    table: MemberTable,
    /// Serialises [`Discovery::set_role`], so two concurrent changes cannot leave serf's tags
    /// and the member table disagreeing.
    tags_update: tokio::sync::Mutex<()>,
    /// Stops the join task (a child of the shutdown token, cancelled by `leave` as well).
    join_stop: CancellationToken,
    /// The join task, which `leave` waits for before it leaves.
    join_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("node_id", &self.inner.node_id)
            .field("local_gossip_addr", &self.inner.local_gossip_addr)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Validates `config`, binds the gossip port and starts gossiping, then returns without
    /// waiting for a join: the seeds are joined in the background, retried with backoff
    /// ([`JOIN_BACKOFF_MIN`] to [`JOIN_BACKOFF_MAX`]) until one answers or `shutdown` is
    /// cancelled, because in a cluster that is starting up the seeds may come up after us.
    /// After that, every [`SEED_CHECK_INTERVAL`], a seed address that is no alive member's is
    /// joined again, so a view that lost a member heals.
    ///
    /// The receiver gets a [`MembershipEvent`] for every change to another member. It holds
    /// [`EVENT_CHANNEL_CAPACITY`] events; when it is full, events are dropped (with a warning)
    /// rather than stalling gossip, and [`Discovery::members`] remains the truth. After
    /// `shutdown` is cancelled no more events are sent and the channel closes.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn start(
        config: DiscoveryConfig,
        shutdown: CancellationToken,
    ) -> Result<(Discovery, mpsc::Receiver<MembershipEvent>), DiscoveryError> {
        config.validate()?;
        let (node, events) = gossip::start(&config).await?;

        let advertised = gossip::advertise_addr(&node);
        // Serf reports the configured bind address, so with port 0 the real port comes from the
        // advertised address (validate() refused an explicit advertise address in that case).
        let local_gossip_addr = if config.bind_addr.port() == 0 {
            SocketAddr::new(config.bind_addr.ip(), advertised.port())
        } else {
            config.bind_addr
        };

        let table = MemberTable::default();
        table.upsert(Member {
            id: config.node_id.clone(),
            rpc_addr: config.rpc_addr.clone(),
            role: config.role.clone(),
            gossip_addr: advertised,
            status: MemberStatus::Alive,
        });

        let (forward, receiver) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        tokio::spawn(events::run(
            events,
            node.clone(),
            table.clone(),
            config.node_id.clone(),
            forward,
            shutdown.clone(),
        ));
        // Its own token, so `leave` stops the joins first: a join that went out after the
        // leave would announce this node alive again.
        let join_stop = shutdown.child_token();
        let join_task = parking_lot::Mutex::new(None);
        if !config.seeds.is_empty() {
            let own = join::OwnAddrs {
                bound: local_gossip_addr,
                advertised,
            };
            *join_task.lock() = Some(tokio::spawn(join::run(
                node.clone(),
                config.seeds.clone(),
                own,
                table.clone(),
                join_stop.clone(),
            )));
        }

        tracing::info!(
            node_id = %config.node_id,
            gossip_addr = %local_gossip_addr,
            advertise_addr = %advertised,
            rpc_addr = %config.rpc_addr,
            role = %config.role,
            seeds = ?config.seeds,
            encrypted = config.encryption_key.is_some(),
            profile = ?config.profile,
            "gossip: started",
        );

        let discovery = Discovery {
            inner: Arc::new(Inner {
                node,
                node_id: config.node_id,
                rpc_addr: config.rpc_addr,
                local_gossip_addr,
                table,
                tags_update: tokio::sync::Mutex::new(()),
                join_stop,
                join_task,
            }),
        };
        Ok((discovery, receiver))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The address gossip is bound to, with the port the OS chose when the config said 0, so
    /// tests (and logs) can hand it to other nodes as a seed.
    pub fn local_gossip_addr(&self) -> SocketAddr {
        self.inner.local_gossip_addr
    }

    /// The current view of the cluster, this node included, sorted by id. Members that left or
    /// failed stay listed, with their status, until serf forgets them (hours), so a caller can
    /// tell them from members it never heard of. Reads memory only: cheap, never waits.
    pub fn members(&self) -> Vec<Member> {
        self.inner.table.snapshot()
    }

    /// The gRPC address of member `id`, if it is alive. `None` for an unknown member and for
    /// one that left or failed, so a caller does not dial a node gossip already gave up on.
    pub fn rpc_addr_of(&self, id: &str) -> Option<String> {
        self.inner.table.rpc_addr_of(id)
    }

    /// Changes the role this node gossips, and waits until serf has broadcast it (bounded by
    /// serf's broadcast timeout: 5 s in the LAN profile). Peers see an
    /// [`MembershipEvent::Updated`].
    ///
    /// On error (other than [`DiscoveryError::TagsTooLarge`], checked first) the role is still
    /// set locally and spreads with later gossip: serf stores tags before broadcasting them.
    pub async fn set_role(&self, role: &str) -> Result<(), DiscoveryError> {
        let inner = &self.inner;
        config::check_tags_size(&inner.node_id, &inner.rpc_addr, role)?;
        let _serialised = inner.tags_update.lock().await;
        let result = gossip::set_tags(&inner.node, &inner.node_id, &inner.rpc_addr, role).await;
        inner
            .table
            .update(&inner.node_id, |me| me.role = role.to_owned());
        result.map_err(|source| DiscoveryError::SetTags {
            role: role.to_owned(),
            source,
        })
    }

    /// Leaves the cluster gracefully, then shuts gossip down and releases its ports, all within
    /// `timeout`. Never fails: by the time a node leaves there is nothing left to do about an
    /// error but log it.
    ///
    /// A graceful leave waits for the news to spread (1 s in the LAN profile), and up to 5 s
    /// more for acknowledgements when the peers are leaving too (a whole cluster stopping);
    /// `timeout` cuts that short. If it does, peers may see this node fail instead of leave,
    /// which costs them only a few seconds of failure detection. The last 500 ms (at most half
    /// of `timeout`) are kept for the shutdown itself.
    ///
    /// Safe to call more than once, and from clones: later calls return at once.
    pub async fn leave(&self, timeout: Duration) {
        let inner = &self.inner;
        inner.join_stop.cancel();
        if gossip::is_shut_down(&inner.node) {
            return;
        }
        let started = Instant::now();
        // A join that finished after the leave began would announce this node alive again:
        // wait for the task (it stops at its next await; a join in flight is bounded by
        // JOIN_TIMEOUT).
        let join_task = inner.join_task.lock().take();
        if let Some(task) = join_task {
            let _ = tokio::time::timeout(timeout / 2, task).await;
        }
        let deadline = started + timeout;
        let leave_deadline = deadline - SHUTDOWN_RESERVE.min(timeout / 2);

        inner
            .table
            .update(&inner.node_id, |me| me.status = MemberStatus::Leaving);
        match tokio::time::timeout_at(leave_deadline, gossip::leave(&inner.node)).await {
            Ok(Ok(())) => {
                tracing::info!(elapsed = ?started.elapsed(), "gossip: left the cluster");
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "gossip: leave failed; shutting down anyway");
            }
            Err(_) => tracing::warn!(
                ?timeout,
                "gossip: leave cut short by its time limit; peers may see this node fail",
            ),
        }

        // In a task of its own: if the time runs out, the shutdown still finishes (and the
        // ports are released) after we return, instead of being dropped half done.
        let node = inner.node.clone();
        let shutdown = tokio::spawn(async move { gossip::shutdown(&node).await });
        match tokio::time::timeout_at(deadline, shutdown).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "gossip: shutdown failed"),
            Ok(Err(error)) => tracing::warn!(%error, "gossip: shutdown task failed"),
            Err(_) => tracing::warn!(
                ?timeout,
                "gossip: shutdown still running at the time limit; it goes on in the background",
            ),
        }
        inner
            .table
            .update(&inner.node_id, |me| me.status = MemberStatus::Left);
    }

    /// Stops gossip without leaving, as a crash would: peers must detect the failure.
    #[cfg(test)]
    async fn kill(&self) {
        if let Err(error) = gossip::shutdown(&self.inner.node).await {
            tracing::warn!(%error, "gossip: shutdown failed");
        }
    }
}

impl Drop for Inner {
    /// Serf does not stop when its handle is dropped: its ports stay bound and peers keep
    /// seeing it alive. So the last handle shuts it down, if `leave` did not.
    fn drop(&mut self) {
        self.join_stop.cancel();
        if gossip::is_shut_down(&self.node) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::warn!(
                    node_id = %self.node_id,
                    "gossip: dropped without leave(); shutting down, peers will see a failure",
                );
                let node = self.node.clone();
                runtime.spawn(async move {
                    if let Err(error) = gossip::shutdown(&node).await {
                        tracing::warn!(%error, "gossip: shutdown failed");
                    }
                });
            }
            Err(_) => tracing::warn!(
                node_id = %self.node_id,
                "gossip: dropped without leave() outside a runtime; its ports stay bound",
            ),
        }
    }
}
