//! ACL authorization with proglog's Casbin model: subject = the client certificate's common
//! name, object = the log's name (or `*`), action `produce` or `consume` (proglog's), plus
//! `replicate` for the peer service (grant it to node certificates) and `admin` for the admin
//! service, both on object `*`.
//!
//! proglog's `model.conf` and `policy.csv` work unchanged:
//!
//! ```text
//! [request_definition]
//! r = sub, obj, act
//! [policy_definition]
//! p = sub, obj, act
//! [policy_effect]
//! e = some(where (p.eft == allow))
//! [matchers]
//! m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
//! ```
//!
//! with policy lines such as `p, root, *, produce`: `*` grants the action on every log, and a
//! line naming a log (`p, billing, payments, produce`) grants it on that log only. A call to
//! a log is allowed when the policy allows the subject the action on the log's name or on `*`,
//! so proglog's exact-match model needs no wildcard matcher.
//!
//! The [`AclLayer`](super::AclLayer) authenticates every call and decides every call whose
//! method alone says what it needs (peer and admin services, unknown methods); a `log.v1.Log`
//! call, whose log is in its message, is decided by the service once it has read the message
//! ([`Authorizer::authorize_log`]), before it does anything.

use std::path::PathBuf;

use casbin::{CoreApi, DefaultModel, Enforcer, FileAdapter};
use tonic::Status;

use super::{PeerIdentity, SecurityError};

/// The Casbin object that stands for every log (and the object of peer and admin calls).
pub const WILDCARD_OBJECT: &str = "*";

/// The gRPC service whose methods need authorization; every other service (health,
/// reflection) stays open.
pub const LOG_SERVICE: &str = "log.v1.Log";
/// The service that lists and describes logs: needs `consume` on each log.
pub const LOGS_SERVICE: &str = "log.v1.Logs";
/// The peer service replicas replicate through: needs `replicate` (node certificates).
pub const PEER_SERVICE: &str = "log.v1.Peer";
/// The admin service: needs `admin`.
pub const ADMIN_SERVICE: &str = "log.v1.Admin";

/// Where the ACL's model and policy live (`--acl-model`, `--acl-policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclConfig {
    /// The Casbin model (proglog's `model.conf`).
    pub model: PathBuf,
    /// The Casbin policy (proglog's `policy.csv`).
    pub policy: PathBuf,
}

/// What a method does, as the policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Appends records: `Produce`, `ProduceStream`, `ProduceBatch`.
    Produce,
    /// Reads records or cluster state: `Consume`, `ConsumeStream`, `GetOffsets`, `GetServers`.
    Consume,
    /// Node to node: every `log.v1.Peer` method (votes, fetches). Grant it to the nodes'
    /// certificate names only: a fetch reads the whole log and a vote can move leadership.
    Replicate,
    /// Cluster administration: every `log.v1.Admin` method.
    Admin,
}

impl Action {
    /// The action's name in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Replicate => "replicate",
            Action::Admin => "admin",
        }
    }
}

/// How a gRPC method path is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodAccess<'a> {
    /// Not a `log.v1.Log` method (health, reflection): no authorization.
    Open,
    /// A `log.v1.Log` method that needs this action.
    Requires(Action),
    /// A `log.v1.Log` method this node does not know: refused, so a method added later is
    /// never served without someone deciding its action (fail closed).
    Unknown(&'a str),
}

/// The service part of a gRPC path (`log.v1.Log` of `/log.v1.Log/Produce`).
fn path_service(path: &str) -> Option<&str> {
    path.trim_start_matches('/')
        .split_once('/')
        .map(|(service, _)| service)
}

/// Maps a gRPC path (`/log.v1.Log/Produce`) to what it needs. proglog authorizes
/// `GetServers` as a consume, and so does this.
pub fn method_access(path: &str) -> MethodAccess<'_> {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return MethodAccess::Open;
    };
    match service {
        PEER_SERVICE => return MethodAccess::Requires(Action::Replicate),
        ADMIN_SERVICE => return MethodAccess::Requires(Action::Admin),
        LOGS_SERVICE => {
            return match method {
                "ListLogs" | "DescribeLog" => MethodAccess::Requires(Action::Consume),
                other => MethodAccess::Unknown(other),
            };
        }
        LOG_SERVICE => {}
        _ => return MethodAccess::Open,
    }
    match method {
        "Produce" | "ProduceStream" | "ProduceBatch" => MethodAccess::Requires(Action::Produce),
        "Consume" | "ConsumeStream" | "GetOffsets" | "GetServers" => {
            MethodAccess::Requires(Action::Consume)
        }
        other => MethodAccess::Unknown(other),
    }
}

/// Decides who may do what, from a Casbin model and policy loaded at start and reloaded when
/// the files change ([`Authorizer::watch`]).
pub struct Authorizer {
    enforcer: parking_lot::RwLock<Enforcer>,
    config: AclConfig,
    /// The files' contents the enforcer was built from.
    loaded: parking_lot::Mutex<(Vec<u8>, Vec<u8>)>,
    /// Counts the rules put in force, so a decision remembered under older rules is made again.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Loads and checks the model and the policy, naming the flag of the file that is wrong.
    pub async fn load(config: &AclConfig) -> Result<Self, SecurityError> {
        let (enforcer, loaded) = Self::build(config).await?;
        Ok(Authorizer {
            enforcer: parking_lot::RwLock::new(enforcer),
            config: config.clone(),
            loaded: parking_lot::Mutex::new(loaded),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Rebuilds the enforcer if the model or policy file changed. A file that fails to load
    /// leaves the current rules in force (and is reported): a half-written policy never opens
    /// or closes access by accident. Returns whether new rules took effect.
    pub async fn reload_if_changed(&self) -> Result<bool, SecurityError> {
        let current = (
            tokio::fs::read(&self.config.model)
                .await
                .unwrap_or_default(),
            tokio::fs::read(&self.config.policy)
                .await
                .unwrap_or_default(),
        );
        if *self.loaded.lock() == current {
            return Ok(false);
        }
        let (enforcer, loaded) = Self::build(&self.config).await?;
        *self.enforcer.write() = enforcer;
        *self.loaded.lock() = loaded;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(true)
    }

    /// Checks the files every `every` until `stop`, reloading them when they change.
    pub async fn watch(
        self: std::sync::Arc<Self>,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => match self.reload_if_changed().await {
                    Ok(true) => tracing::info!(policy = %self.config.policy.display(), "ACL reloaded"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(error = %err, "ACL files changed but do not load; the previous rules stay in force"),
                },
            }
        }
    }

    async fn build(config: &AclConfig) -> Result<(Enforcer, (Vec<u8>, Vec<u8>)), SecurityError> {
        let model_text = tokio::fs::read_to_string(&config.model)
            .await
            .map_err(|source| SecurityError::Read {
                flag: "acl-model",
                path: config.model.clone(),
                source,
            })?;
        let model = DefaultModel::from_str(&model_text)
            .await
            .map_err(|source| SecurityError::Acl {
                flag: "acl-model",
                path: config.model.clone(),
                reason: source.to_string(),
            })?;
        // The policy is read first so a missing file is reported as such (the file adapter
        // would report it as an unclear parse error).
        tokio::fs::metadata(&config.policy)
            .await
            .map_err(|source| SecurityError::Read {
                flag: "acl-policy",
                path: config.policy.clone(),
                source,
            })?;
        let adapter = FileAdapter::new(config.policy.clone());
        let enforcer =
            Enforcer::new(model, adapter)
                .await
                .map_err(|source| SecurityError::Acl {
                    flag: "acl-policy",
                    path: config.policy.clone(),
                    reason: source.to_string(),
                })?;
        let policy_bytes = tokio::fs::read(&config.policy).await.unwrap_or_default();
        Ok((enforcer, (model_text.into_bytes(), policy_bytes)))
    }

    /// Which rules are in force: it changes whenever a reload puts new ones in force, so a
    /// caller that remembers a decision knows when to make it again.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether `subject` may perform `action` on `object` (a log's name, or `*`).
    pub fn allows(&self, subject: &str, object: &str, action: Action) -> Result<bool, Status> {
        self.enforcer
            .read()
            .enforce((subject, object, action.as_str()))
            .map_err(|err| Status::internal(format!("ACL evaluation failed: {err}")))
    }

    /// Authorizes a call to `path` from `peer`: `UNAUTHENTICATED` without a client certificate,
    /// `PERMISSION_DENIED` naming the subject and the action when the policy does not allow it.
    /// A `log.v1.Log` call is only authenticated here: its log is in its message, and the
    /// service decides it with [`Authorizer::authorize_log`].
    pub fn authorize(&self, path: &str, peer: Option<&PeerIdentity>) -> Result<(), Status> {
        let action = match method_access(path) {
            MethodAccess::Open => return Ok(()),
            MethodAccess::Requires(action) => action,
            MethodAccess::Unknown(method) => {
                return Err(Status::permission_denied(format!(
                    "method {path} has no ACL action on this node ({method} is unknown)"
                )));
            }
        };
        let (subject, peer) = authenticated(peer)?;
        // Only these two services decide on the log a message names; any other service's call
        // is decided here, on `*`.
        if path_service(path).is_some_and(|service| [LOG_SERVICE, LOGS_SERVICE].contains(&service))
        {
            return Ok(());
        }
        self.decide(subject, peer, WILDCARD_OBJECT, action)
    }

    /// Authorizes `action` on the log named `log` for `peer`: allowed when the policy allows
    /// the subject the action on `log` or on `*`.
    pub fn authorize_log(
        &self,
        peer: Option<&PeerIdentity>,
        log: &str,
        action: Action,
    ) -> Result<(), Status> {
        let (subject, peer) = authenticated(peer)?;
        self.decide(subject, peer, log, action)
    }

    fn decide(
        &self,
        subject: &str,
        peer: &PeerIdentity,
        object: &str,
        action: Action,
    ) -> Result<(), Status> {
        if self.allows(subject, object, action)?
            || (object != WILDCARD_OBJECT && self.allows(subject, WILDCARD_OBJECT, action)?)
        {
            return Ok(());
        }
        tracing::info!(subject, object, action = action.as_str(), remote_addr = %peer.remote_addr(), "ACL denied a call");
        let on = if object == WILDCARD_OBJECT {
            String::new()
        } else {
            format!(" on log `{object}`")
        };
        Err(Status::permission_denied(format!(
            "`{subject}` is not permitted to {}{on} (ACL policy)",
            action.as_str()
        )))
    }
}

/// The subject of a call: the common name of the client certificate it came with.
fn authenticated(peer: Option<&PeerIdentity>) -> Result<(&str, &PeerIdentity), Status> {
    let Some(peer) = peer.filter(|peer| peer.certificates().is_some()) else {
        return Err(Status::unauthenticated(
            "a client certificate is required (mutual TLS)",
        ));
    };
    let Some(subject) = peer.common_name() else {
        return Err(Status::unauthenticated(
            "the client certificate has no subject common name (CN), which the ACL authorizes",
        ));
    };
    Ok((subject, peer))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use tonic::Code;

    use super::*;
    use crate::security::test_pki::TestCa;

    const MODEL: &str = "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act\n\n[policy_effect]\ne = some(where (p.eft == allow))\n\n[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n";
    const POLICY: &str = "p, root, *, produce\np, root, *, consume\np, reader, *, consume\n";

    async fn authorizer(dir: &tempfile::TempDir) -> Authorizer {
        let model = dir.path().join("model.conf");
        let policy = dir.path().join("policy.csv");
        std::fs::write(&model, MODEL).unwrap();
        std::fs::write(&policy, POLICY).unwrap();
        Authorizer::load(&AclConfig { model, policy })
            .await
            .unwrap()
    }

    fn peer_with_cn(ca: &TestCa, common_name: &str) -> PeerIdentity {
        let issued = ca.issue(common_name, 7);
        let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        PeerIdentity::new(SocketAddr::from(([127, 0, 0, 1], 1)), Some(&[cert]))
    }

    #[test]
    fn methods_map_to_proglog_actions() {
        for method in ["Produce", "ProduceStream", "ProduceBatch"] {
            let path = format!("/log.v1.Log/{method}");
            assert_eq!(
                method_access(&path),
                MethodAccess::Requires(Action::Produce),
                "{path}"
            );
        }
        for method in ["Consume", "ConsumeStream", "GetOffsets", "GetServers"] {
            let path = format!("/log.v1.Log/{method}");
            assert_eq!(
                method_access(&path),
                MethodAccess::Requires(Action::Consume),
                "{path}"
            );
        }
        assert_eq!(
            method_access("/grpc.health.v1.Health/Check"),
            MethodAccess::Open
        );
        assert_eq!(
            method_access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            MethodAccess::Open
        );
        assert_eq!(
            method_access("/log.v1.Log/Truncate"),
            MethodAccess::Unknown("Truncate")
        );
        for method in [
            "Fetch",
            "Vote",
            "BeginQuorumEpoch",
            "EndQuorumEpoch",
            "ReadIndex",
        ] {
            assert_eq!(
                method_access(&format!("/log.v1.Peer/{method}")),
                MethodAccess::Requires(Action::Replicate),
                "a client with any certificate of the cluster's CA must not read the whole \
                 log by fetching, or move leadership by voting"
            );
        }
        assert_eq!(
            method_access("/log.v1.Admin/RemoveVoter"),
            MethodAccess::Requires(Action::Admin)
        );
        for method in ["ListLogs", "DescribeLog"] {
            assert_eq!(
                method_access(&format!("/log.v1.Logs/{method}")),
                MethodAccess::Requires(Action::Consume)
            );
        }
        assert_eq!(
            method_access("/log.v1.Logs/DeleteLog"),
            MethodAccess::Unknown("DeleteLog")
        );
    }

    #[tokio::test]
    async fn proglog_policy_decides_by_common_name_and_action() {
        let dir = tempfile::tempdir().unwrap();
        let acl = authorizer(&dir).await;
        assert!(acl.allows("root", "*", Action::Produce).unwrap());
        assert!(acl.allows("root", "*", Action::Consume).unwrap());
        assert!(acl.allows("reader", "*", Action::Consume).unwrap());
        assert!(!acl.allows("reader", "*", Action::Produce).unwrap());
        assert!(!acl.allows("nobody", "*", Action::Consume).unwrap());

        let ca = TestCa::new();
        let root = peer_with_cn(&ca, "root");
        let reader = peer_with_cn(&ca, "reader");
        acl.authorize_log(Some(&root), "default", Action::Produce)
            .unwrap();
        acl.authorize_log(Some(&reader), "default", Action::Consume)
            .unwrap();
        let denied = acl
            .authorize_log(Some(&reader), "default", Action::Produce)
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(
            denied.message().contains("reader") && denied.message().contains("produce"),
            "{}",
            denied.message()
        );
    }

    #[tokio::test]
    async fn a_changed_policy_takes_effect_and_a_broken_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let acl = authorizer(&dir).await;
        assert!(
            !acl.reload_if_changed().await.unwrap(),
            "nothing changed yet"
        );
        assert!(!acl.allows("reader", "*", Action::Produce).unwrap());

        let policy = dir.path().join("policy.csv");
        std::fs::write(&policy, format!("{POLICY}p, reader, *, produce\n")).unwrap();
        assert!(acl.reload_if_changed().await.unwrap());
        assert!(acl.allows("reader", "*", Action::Produce).unwrap());

        // A model that does not parse is refused; the rules in force stay.
        std::fs::write(
            dir.path().join("model.conf"),
            "[request_definition]\nbroken",
        )
        .unwrap();
        assert!(acl.reload_if_changed().await.is_err());
        assert!(acl.allows("reader", "*", Action::Produce).unwrap());
        assert!(!acl.allows("nobody", "*", Action::Consume).unwrap());
    }

    #[tokio::test]
    async fn a_policy_line_naming_a_log_grants_that_log_only() {
        let dir = tempfile::tempdir().unwrap();
        let acl = authorizer(&dir).await;
        std::fs::write(
            dir.path().join("policy.csv"),
            format!("{POLICY}p, billing, payments, produce\np, auditor, audit, consume\n"),
        )
        .unwrap();
        assert!(acl.reload_if_changed().await.unwrap());
        let ca = TestCa::new();
        let billing = peer_with_cn(&ca, "billing");
        let auditor = peer_with_cn(&ca, "auditor");
        let root = peer_with_cn(&ca, "root");

        acl.authorize_log(Some(&billing), "payments", Action::Produce)
            .unwrap();
        acl.authorize_log(Some(&auditor), "audit", Action::Consume)
            .unwrap();
        // `*` in a policy line still means every log.
        for log in ["payments", "audit", "default"] {
            acl.authorize_log(Some(&root), log, Action::Produce)
                .unwrap();
        }
        for (peer, log, action) in [
            (&billing, "default", Action::Produce),
            (&billing, "payments", Action::Consume),
            (&auditor, "payments", Action::Consume),
            (&auditor, "audit", Action::Produce),
        ] {
            let denied = acl.authorize_log(Some(peer), log, action).unwrap_err();
            assert_eq!(denied.code(), Code::PermissionDenied);
            assert!(
                denied.message().contains(&format!("on log `{log}`")),
                "{}",
                denied.message()
            );
        }
        // A grant on one log is no grant on `*`: peer and admin calls are decided on `*`.
        let denied = acl
            .authorize("/log.v1.Admin/RemoveVoter", Some(&billing))
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn no_certificate_is_unauthenticated_but_health_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let acl = authorizer(&dir).await;
        let anonymous = PeerIdentity::new(SocketAddr::from(([127, 0, 0, 1], 1)), None);
        for peer in [None, Some(&anonymous)] {
            let status = acl.authorize("/log.v1.Log/Consume", peer).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(
                status.message(),
                "a client certificate is required (mutual TLS)"
            );
            acl.authorize("/grpc.health.v1.Health/Check", peer).unwrap();
        }
        let unknown = acl
            .authorize("/log.v1.Log/Truncate", Some(&anonymous))
            .unwrap_err();
        assert_eq!(unknown.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn load_errors_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AclConfig {
            model: dir.path().join("missing.conf"),
            policy: dir.path().join("policy.csv"),
        };
        let err = Authorizer::load(&missing).await.unwrap_err();
        assert_eq!(err.flag(), "acl-model");
        assert!(err.to_string().contains("cannot read --acl-model"), "{err}");

        let model = dir.path().join("model.conf");
        std::fs::write(&model, MODEL).unwrap();
        let err = Authorizer::load(&AclConfig {
            model: model.clone(),
            policy: dir.path().join("missing.csv"),
        })
        .await
        .unwrap_err();
        assert_eq!(err.flag(), "acl-policy");

        let broken = dir.path().join("broken.conf");
        std::fs::write(&broken, "[matchers]\nm = r.sub ==\n").unwrap();
        std::fs::write(dir.path().join("policy.csv"), POLICY).unwrap();
        let err = Authorizer::load(&AclConfig {
            model: broken,
            policy: dir.path().join("policy.csv"),
        })
        .await
        .unwrap_err();
        assert!(matches!(err.flag(), "acl-model" | "acl-policy"), "{err}");
    }
}
