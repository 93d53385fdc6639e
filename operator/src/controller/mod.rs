//! The reconciler: one pass over a `LogCluster` makes its children match the spec and reports
//! what it saw in the status.
//!
//! A pass runs independent parts, each of which records its own failure and lets the others
//! go on (a StatefulSet the API server refuses must not stop certificate renewal):
//!
//! - bootstrap: the `proglog.dev/initial-voters` annotation, written before the StatefulSet
//!   first exists, so the founding quorum stays the same however the cluster scales later;
//! - certificates (`certificates.rs`, condition `CertificatesReady`);
//! - config and services: the ConfigMaps, both Services, the PodDisruptionBudget and the
//!   NetworkPolicy;
//! - workload: the StatefulSet, at the size scaling decides;
//! - scaling and rolling (`quorum.rs`, condition `Progressing`): voter changes and pod
//!   replacement through the nodes' admin API, one step per pass;
//! - storage (`storage.rs`): PVC growth;
//! - status (`status.rs`, conditions `Ready`, `Degraded`, `ReconciliationPaused`).
//!
//! When a part failed, the status still says so and the pass returns an error, which
//! [`error_policy`] counts and requeues with backoff. Nothing is kept in memory between passes
//! but that backoff: every decision is made from what the API server and the nodes report.
//!
//! Paused (`spec.paused` or the `proglog.dev/paused` annotation), a pass reads and writes the
//! status only.
//!
//! Deletion needs no finalizer: every child carries a controller owner reference, so the
//! garbage collector removes them with the `LogCluster`, and the PVCs follow the StatefulSet's
//! retention policy (`storage.deleteClaimsOnDelete`). Nothing outside the cluster's namespace
//! (no external system, no cluster-scoped object) has to be cleaned up first.

mod apply;
pub mod certificates;
mod quorum;
pub mod status;
mod storage;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::admin::NodeAdmin;
use crate::crd::{INITIAL_VOTERS_ANNOTATION, IssuerKind, LogCluster};
use crate::metrics::{ErrorLabels, Metrics, OutcomeLabels};
use crate::plan::{self, PodState, RollStep, ScaleStep};
use crate::resources::{
    self, AclSource, ClusterView, MANAGER, OperatorSettings, SpecError, acl_config_map,
    client_service, config_hash, config_map, headless_service, network_policy,
    pod_disruption_budget, stateful_set,
};
use crate::tls::Rotation;
use crate::tls::TlsError;
use apply::{Applied, apply_child, apply_over};
use certificates::CertificateReport;

/// How soon a pass runs again while something is in progress (a roll, a scale step).
pub const PROGRESS_REQUEUE: Duration = Duration::from_secs(5);
/// How soon a pass runs again on a steady cluster: certificate expiry and drift are checked
/// at least this often even when nothing triggers a pass.
pub const STEADY_REQUEUE: Duration = Duration::from_secs(300);
/// The first retry after a failed pass; each further failure doubles it, up to
/// [`MAX_ERROR_BACKOFF`].
pub const FIRST_ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait between retries of a failing pass.
pub const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(300);
/// The pod label holding the StatefulSet revision a pod was made from.
const REVISION_LABEL: &str = "controller-revision-hash";

/// The clock a pass decides certificate renewal by (a fixed one in tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// What every pass shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events about the `LogCluster`s.
    pub recorder: Recorder,
    /// The nodes' admin API.
    pub admin: Arc<dyn NodeAdmin>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings that shape the children.
    pub settings: OperatorSettings,
    /// The clock.
    pub clock: Clock,
    /// Consecutive failed passes per `namespace/name`, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context; `instance` names this operator replica in Events (its pod name).
    pub fn new(
        client: Client,
        admin: Arc<dyn NodeAdmin>,
        metrics: Arc<Metrics>,
        settings: OperatorSettings,
        instance: Option<String>,
        clock: Clock,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            admin,
            metrics,
            settings,
            clock,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn clear_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// The parts of a pass, each reporting its own failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The certificate Secrets.
    Certificates,
    /// ConfigMaps, Services, PodDisruptionBudget.
    ConfigAndServices,
    /// The initial-voters annotation and the StatefulSet.
    Workload,
    /// Reading the quorum from the nodes.
    ClusterStatus,
    /// Voter changes and the StatefulSet size.
    Scaling,
    /// Replacing out-of-date pods.
    Rolling,
    /// PVC growth.
    Storage,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Certificates => "certificates",
            Part::ConfigAndServices => "config and services",
            Part::Workload => "workload",
            Part::ClusterStatus => "cluster status",
            Part::Scaling => "scaling",
            Part::Rolling => "rolling",
            Part::Storage => "storage",
        })
    }
}

/// Why a part failed.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What the operator was doing (`apply StatefulSet prod/events`).
        action: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The spec cannot be built from.
    #[error(transparent)]
    Spec(SpecError),
    /// A certificate cannot be made, or the user's CA is unusable.
    #[error(transparent)]
    Tls(TlsError),
    /// The user's CA Secret does not exist.
    #[error("CA Secret {secret} (spec.tls.issuer.secretName) does not exist")]
    MissingCaSecret {
        /// Its name.
        secret: String,
    },
    /// A call to a node failed.
    #[error(transparent)]
    Admin(crate::admin::AdminError),
    /// The part cannot proceed until something else is in place.
    #[error("{0}")]
    Blocked(String),
    /// An object could not be encoded to compare it.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// The object.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

fn api_error_kind(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) if status.code == 409 => "conflict",
        kube::Error::Api(status) if status.code >= 500 => "server",
        _ => "api",
    }
}

impl PartError {
    /// The metric label of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            PartError::Api { source, .. } => api_error_kind(source),
            PartError::Spec(_) => "spec",
            PartError::Tls(_) | PartError::MissingCaSecret { .. } => "tls",
            PartError::Admin(_) => "admin",
            PartError::Blocked(_) => "blocked",
            PartError::Encode { .. } => "encode",
        }
    }
}

/// One part's failure in a pass.
#[derive(Debug)]
pub struct PartFailure {
    /// The part.
    pub part: Part,
    /// Why.
    pub error: PartError,
}

/// A failed pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be built from; the status says why.
    #[error("LogCluster {cluster}: {source}")]
    Spec {
        /// `namespace/name`.
        cluster: String,
        /// Why.
        #[source]
        source: SpecError,
    },
    /// Parts failed; the others ran.
    #[error("LogCluster {cluster}: {}", describe_failures(.failures))]
    Parts {
        /// `namespace/name`.
        cluster: String,
        /// What failed.
        failures: Vec<PartFailure>,
    },
    /// Every part ran but the status could not be written.
    #[error("LogCluster {cluster}: cannot write the status: {source}")]
    Status {
        /// `namespace/name`.
        cluster: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

fn describe_failures(failures: &[PartFailure]) -> String {
    failures
        .iter()
        .map(|failure| format!("{} failed: {}", failure.part, failure.error))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The metric label of this error: the first failed part's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Spec { .. } => "spec",
            Error::Parts { failures, .. } => failures
                .first()
                .map_or("unknown", |failure| failure.error.kind()),
            Error::Status { source, .. } => api_error_kind(source),
        }
    }
}

/// What is in progress, for the `Progressing` condition and the requeue.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// `(reason, message)` of the `Progressing` condition; `None` when nothing changes.
    pub reason: Option<(&'static str, String)>,
}

impl Progress {
    fn set(&mut self, reason: &'static str, message: String) {
        if self.reason.is_none() {
            self.reason = Some((reason, message));
        }
    }
}

fn describe_scale(step: &ScaleStep) -> String {
    match step {
        ScaleStep::Grow { from, to } => format!("StatefulSet raised from {from} to {to} pods"),
        ScaleStep::AwaitCatchUp { nodes } => {
            format!(
                "waiting for {} to catch up before promotion",
                nodes.join(", ")
            )
        }
        ScaleStep::AddVoter { node } => format!("promoting {node} to voter"),
        ScaleStep::TransferLeadership { from } => {
            format!("{from} hands leadership over before leaving")
        }
        ScaleStep::RemoveVoter { node } => format!("removing {node} from the voters"),
        ScaleStep::Shrink { from, to } => format!("StatefulSet shrunk from {from} to {to} pods"),
        ScaleStep::NeedsQuorum => "waiting for the cluster's status".to_owned(),
        ScaleStep::Steady => "steady".to_owned(),
    }
}

/// Publishes an Event about `cluster`; a failure is logged, never fatal.
async fn publish(
    ctx: &Context,
    cluster: &LogCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(error = %err, reason, "cannot publish an Event");
    }
}

fn pod_state(name: &str, pod: &Pod) -> Option<PodState> {
    let pod_name = pod.metadata.name.clone()?;
    let ordinal = plan::ordinal_of(name, &pod_name)?;
    let ready = pod
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        });
    Some(PodState {
        name: pod_name,
        ordinal,
        ready,
        revision: pod.labels().get(REVISION_LABEL).cloned(),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

/// One pass over `cluster`. See the module documentation.
pub async fn reconcile(cluster: Arc<LogCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_cluster(&cluster, &ctx).await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    let labels = OutcomeLabels { outcome };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Counts a failed pass and requeues it with exponential backoff.
pub fn error_policy(cluster: Arc<LogCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = error.kind();
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels { kind })
        .inc();
    let key = format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    );
    let attempts = ctx.record_failure(&key);
    let delay = backoff(attempts);
    tracing::warn!(cluster = %key, error = %error, kind, attempts, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The wait before retry number `attempts` (1-based): 5 s, 10 s, 20 s, ... up to 5 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    FIRST_ERROR_BACKOFF
        .checked_mul(factor)
        .map_or(MAX_ERROR_BACKOFF, |delay| delay.min(MAX_ERROR_BACKOFF))
}

async fn reconcile_cluster(original: &LogCluster, ctx: &Context) -> Result<Action, Error> {
    let now = (ctx.clock)();
    let namespace = original
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = original.name_any();
    let key = format!("{namespace}/{name}");
    let clusters: Api<LogCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut cluster = original.clone();
    let paused = plan::is_paused(&cluster);
    let mut failures: Vec<PartFailure> = Vec::new();

    let selector = match ClusterView::new(&cluster, &namespace, &ctx.settings) {
        Ok(view) => view.selector_string(),
        Err(source) => {
            write_invalid_status(ctx, &clusters, &cluster, &source, now).await;
            return Err(Error::Spec {
                cluster: key,
                source,
            });
        }
    };

    // What exists: the StatefulSet (unknown when it cannot be read) and its pods.
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let (statefulset_known, statefulset) = match statefulsets.get_opt(&name).await {
        Ok(found) => (true, found),
        Err(source) => {
            failures.push(PartFailure {
                part: Part::Workload,
                error: PartError::Api {
                    action: format!("read StatefulSet {key}"),
                    source,
                },
            });
            (false, None)
        }
    };
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let (pods_known, pods) = match pod_api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => {
            let mut pods: Vec<PodState> = list
                .items
                .iter()
                .filter_map(|pod| pod_state(&name, pod))
                .collect();
            pods.sort_by_key(|pod| pod.ordinal);
            (true, pods)
        }
        Err(source) => {
            failures.push(PartFailure {
                part: Part::Rolling,
                error: PartError::Api {
                    action: format!("list Pods of {key}"),
                    source,
                },
            });
            (false, Vec::new())
        }
    };

    // Bootstrap: fix the founding quorum before the StatefulSet first exists. Should the
    // annotation go missing later (removed by hand), it is written back from what the nodes
    // were given, not from today's replicas: changing it would restart every pod for nothing,
    // and a pod added later must not believe it founded the cluster.
    let mut bootstrap_done = true;
    let founding = if paused
        || !statefulset_known
        || cluster
            .annotations()
            .contains_key(INITIAL_VOTERS_ANNOTATION)
    {
        None
    } else if let Some(existing) = statefulset.as_ref() {
        Some(founding_voters_in_use(ctx, &namespace, &name, existing).await)
    } else {
        Some(cluster.spec.replicas.to_string())
    };
    if let Some(voters) = founding {
        let patch = json!({"metadata": {"annotations": {INITIAL_VOTERS_ANNOTATION: voters}}});
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match clusters.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                cluster
                    .annotations_mut()
                    .insert(INITIAL_VOTERS_ANNOTATION.to_owned(), voters);
            }
            Err(source) => {
                bootstrap_done = false;
                failures.push(PartFailure {
                    part: Part::Workload,
                    error: PartError::Api {
                        action: format!("write the {INITIAL_VOTERS_ANNOTATION} annotation"),
                        source,
                    },
                });
            }
        }
    }
    let view =
        ClusterView::new(&cluster, &namespace, &ctx.settings).map_err(|source| Error::Spec {
            cluster: key.clone(),
            source,
        })?;
    let current_replicas = statefulset
        .as_ref()
        .and_then(|statefulset| statefulset.spec.as_ref()?.replicas)
        .map(|replicas| u32::try_from(replicas).unwrap_or(0));
    let node_count = view.replicas().max(current_replicas.unwrap_or(0));
    let mut progress = Progress::default();

    // Certificates: always, since the nodes' peer listener is always mutual TLS.
    let ready_pods: Vec<String> = pods
        .iter()
        .filter(|pod| pod.ready)
        .map(|pod| pod.name.clone())
        .collect();
    let (certificates, certificates_error) =
        match certificates::reconcile(ctx, &view, node_count, &ready_pods, paused, now).await {
            Ok(report) => (Some(report), None),
            Err(error) => {
                let message = error.to_string();
                failures.push(PartFailure {
                    part: Part::Certificates,
                    error,
                });
                (Some(CertificateReport::default()), Some(message))
            }
        };
    // Reported as progress only when nothing else is (scaling and rolls say more).
    let mut rotating = None;
    if let Some(report) = certificates
        .as_ref()
        .filter(|report| !report.issued.is_empty())
    {
        let renewed = report.renewed();
        let note = report
            .issued
            .iter()
            .map(|issued| format!("{} ({})", issued.subject, issued.reason))
            .collect::<Vec<_>>()
            .join(", ");
        ctx.metrics.action(if renewed {
            "certificates_renewed"
        } else {
            "certificates_issued"
        });
        let reason = if renewed {
            rotating = Some(format!("renewed: {note}"));
            "CertificatesRenewed"
        } else {
            "CertificatesIssued"
        };
        publish(ctx, &cluster, EventType::Normal, reason, note).await;
    }
    let credentials = certificates
        .as_ref()
        .and_then(|report| report.credentials.clone());
    if let Some(Rotation::Forced { nodes }) = certificates.as_ref().map(|report| &report.rotation) {
        publish(
            ctx,
            &cluster,
            EventType::Warning,
            "CaReplacementForced",
            format!(
                "the outgoing CA ends within half of renewBefore: certificates from the new CA \
                 went out before {} reported the bundle that trusts it",
                nodes.join(", ")
            ),
        )
        .await;
    }
    let replacing_ca = certificates
        .as_ref()
        .and_then(|report| match &report.rotation {
            Rotation::Steady => None,
            Rotation::AwaitingTrust { nodes } => Some(format!(
                "replacing the CA: waiting for {} to load the bundle that trusts both CAs",
                nodes.join(", ")
            )),
            Rotation::Forced { nodes } => Some(format!(
                "replacing the CA: the old CA ends soon, so certificates from the new one went \
                 out before {} loaded the bundle that trusts it",
                nodes.join(", ")
            )),
            Rotation::NeedsReports => {
                Some("replacing the CA: waiting for the nodes' reports".to_owned())
            }
        });

    // Config and services.
    if !paused {
        match config_and_services(ctx, &view, node_count).await {
            Ok(created) if !created.is_empty() => {
                publish(
                    ctx,
                    &cluster,
                    EventType::Normal,
                    "Created",
                    format!("created {}", created.join(", ")),
                )
                .await;
            }
            Ok(_) => {}
            Err(error) => failures.push(PartFailure {
                part: Part::ConfigAndServices,
                error,
            }),
        }
    }

    // The quorum, from the nodes, once any pod is ready.
    let quorum = if statefulset.is_some() && pods.iter().any(|pod| pod.ready) {
        if credentials.is_none() {
            failures.push(PartFailure {
                part: Part::ClusterStatus,
                error: PartError::Blocked(
                    "the operator's client certificate is not available".to_owned(),
                ),
            });
            None
        } else {
            let ready: Vec<String> = pods
                .iter()
                .filter(|pod| pod.ready)
                .map(|pod| pod.name.clone())
                .collect();
            match quorum::observe(ctx, &view, &ready, credentials.as_ref()).await {
                Ok(quorum) => Some(quorum),
                Err(error) => {
                    failures.push(PartFailure {
                        part: Part::ClusterStatus,
                        error,
                    });
                    None
                }
            }
        }
    } else {
        None
    };

    // Scaling: one step, decided from what was read.
    let decision = plan::decide_scaling(
        &name,
        view.replicas(),
        current_replicas,
        &pods,
        quorum.as_ref(),
    );
    if !paused && statefulset_known && statefulset.is_some() {
        if let Some(up) = decision.step.direction() {
            progress.set(
                if up { "ScalingUp" } else { "ScalingDown" },
                format!(
                    "{}; {} pods, {} wanted",
                    describe_scale(&decision.step),
                    current_replicas.unwrap_or(0),
                    view.replicas()
                ),
            );
        }
        match quorum::scale(
            ctx,
            &view,
            quorum.as_ref(),
            &decision.step,
            credentials.as_ref(),
        )
        .await
        {
            Ok(Some((reason, note))) => {
                publish(ctx, &cluster, EventType::Normal, reason, note).await;
            }
            Ok(None) => {}
            Err(error) => failures.push(PartFailure {
                part: Part::Scaling,
                error,
            }),
        }
    }

    // Workload: the StatefulSet at the size scaling decided.
    let mut workload_failed = false;
    if !paused && statefulset_known && bootstrap_done {
        let mut kept = Vec::new();
        let applied = workload(
            ctx,
            &view,
            statefulset.as_ref(),
            decision.statefulset_replicas,
        )
        .await
        .map(|(applied, fields)| {
            kept = fields;
            applied
        });
        // Said when what is wanted changes (an apply ran), not on every pass.
        if !kept.is_empty() && matches!(applied, Ok(Applied::Updated)) {
            publish(
                ctx,
                &cluster,
                EventType::Warning,
                "StatefulSetFieldsKept",
                format!(
                    "StatefulSet {name} keeps its {}: the API server allows no change to them once it exists, so the change is not applied (volumes keep the storage class they were made with)",
                    kept.join(", ")
                ),
            )
            .await;
        }
        match applied {
            Ok(Applied::Created) => {
                ctx.metrics.action("statefulset_created");
                publish(
                    ctx,
                    &cluster,
                    EventType::Normal,
                    "StatefulSetCreated",
                    format!(
                        "StatefulSet {name} created with {} pods; founding voters: {}",
                        decision.statefulset_replicas,
                        view.initial_voter_ids().join(", ")
                    ),
                )
                .await;
            }
            Ok(Applied::Updated) => {
                if current_replicas != Some(decision.statefulset_replicas) {
                    ctx.metrics.action("statefulset_scaled");
                    publish(
                        ctx,
                        &cluster,
                        EventType::Normal,
                        "Scaled",
                        format!(
                            "StatefulSet {name} scaled from {} to {} pods",
                            current_replicas.unwrap_or(0),
                            decision.statefulset_replicas
                        ),
                    )
                    .await;
                }
            }
            Ok(Applied::Unchanged) => {}
            Err(error) => {
                workload_failed = true;
                failures.push(PartFailure {
                    part: Part::Workload,
                    error,
                });
            }
        }
    }

    // Rolling: only on a cluster not scaling, one pod per pass.
    if let Some(existing) = statefulset
        .as_ref()
        .filter(|_| !paused && pods_known && !workload_failed && decision.step == ScaleStep::Steady)
    {
        let observed = existing
            .status
            .as_ref()
            .and_then(|status| status.observed_generation);
        let step = if observed < existing.metadata.generation {
            // Which pods are out of date is known only once the StatefulSet controller has
            // made the new revision.
            RollStep::Wait {
                reason: "the StatefulSet controller has not seen the change yet".to_owned(),
                remaining: pods.len(),
            }
        } else {
            plan::decide_roll(
                existing
                    .status
                    .as_ref()
                    .and_then(|status| status.update_revision.as_deref()),
                current_replicas.unwrap_or(0),
                &pods,
                quorum.as_ref(),
            )
        };
        match &step {
            RollStep::UpToDate => {}
            RollStep::Wait { reason, remaining } if *remaining > 0 => progress.set(
                "Rolling",
                format!("{remaining} pod(s) on an old revision; waiting: {reason}"),
            ),
            RollStep::Wait { .. } => {}
            RollStep::DeletePod { pod, remaining } => progress.set(
                "Rolling",
                format!("{remaining} pod(s) on an old revision; restarting {pod}"),
            ),
            RollStep::TransferLeadership { from, remaining } => progress.set(
                "Rolling",
                format!("{remaining} pod(s) on an old revision; {from} hands leadership over"),
            ),
        }
        match quorum::roll(ctx, &view, &step, credentials.as_ref()).await {
            Ok(Some((reason, note))) => {
                publish(ctx, &cluster, EventType::Normal, reason, note).await;
            }
            Ok(None) => {}
            Err(error) => failures.push(PartFailure {
                part: Part::Rolling,
                error,
            }),
        }
    }

    if let Some(message) = replacing_ca {
        progress.set("ReplacingCa", message);
    }
    if let Some(message) = rotating {
        progress.set("RotatingCertificates", message);
    }

    // Storage growth.
    if !paused && statefulset.is_some() {
        match storage::reconcile(ctx, &view).await {
            Ok(grown) if !grown.is_empty() => {
                publish(
                    ctx,
                    &cluster,
                    EventType::Normal,
                    "VolumesExpanded",
                    format!(
                        "requested {} for {}",
                        view.spec().storage.size,
                        grown.join(", ")
                    ),
                )
                .await;
            }
            Ok(_) => {}
            Err(error) => failures.push(PartFailure {
                part: Part::Storage,
                error,
            }),
        }
    }

    // Each member's lag goes to the metrics, not the status (it changes with every write).
    let lags: Vec<(String, u64)> = quorum
        .as_ref()
        .filter(|quorum| quorum.leader.as_deref() == Some(quorum.node_id.as_str()))
        .map(|quorum| {
            std::iter::once((quorum.node_id.clone(), 0))
                .chain(
                    quorum
                        .replicas
                        .iter()
                        .map(|replica| (replica.id.clone(), replica.lag)),
                )
                .collect()
        })
        .unwrap_or_default();
    ctx.metrics.report_lags(
        cluster.metadata.namespace.as_deref().unwrap_or_default(),
        cluster.metadata.name.as_deref().unwrap_or_default(),
        &lags,
    );

    // Status, whatever failed above.
    let new_status = status::build(
        &view,
        &status::Observed {
            statefulset: statefulset.as_ref(),
            pods: &pods,
            quorum: quorum.as_ref(),
            certificates: certificates.as_ref(),
            certificates_error,
            progress: &progress,
            failures: &failures,
            paused,
        },
        now,
    );
    let status_result = status::write(&clusters, &cluster, &new_status).await;

    if !failures.is_empty() {
        publish(
            ctx,
            &cluster,
            EventType::Warning,
            "ReconcileFailed",
            describe_failures(&failures),
        )
        .await;
        return Err(Error::Parts {
            cluster: key,
            failures,
        });
    }
    if let Err(source) = status_result {
        return Err(Error::Status {
            cluster: key,
            source,
        });
    }
    ctx.clear_failures(&key);
    // Status writes start no pass, so a cluster that is not Ready (no leader yet, a member
    // out of sync) is looked at again soon, not at the steady interval.
    let settled = new_status.leader.is_some()
        && new_status
            .members
            .iter()
            .all(|member| member.in_sync != Some(false));
    Ok(Action::requeue(if progress.reason.is_some() || !settled {
        PROGRESS_REQUEUE
    } else {
        STEADY_REQUEUE
    }))
}

/// How many founding voters a running cluster's nodes were given: the ids in its ConfigMap's
/// `PROGLOG_INITIAL_VOTERS`, or else the StatefulSet's size.
async fn founding_voters_in_use(
    ctx: &Context,
    namespace: &str,
    name: &str,
    statefulset: &StatefulSet,
) -> String {
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let from_config = config_maps
        .get_opt(&format!("{name}-config"))
        .await
        .ok()
        .flatten()
        .and_then(|config| config.data?.get("PROGLOG_INITIAL_VOTERS").cloned())
        .map(|ids| ids.split(',').filter(|id| !id.trim().is_empty()).count())
        .filter(|count| *count > 0);
    match from_config {
        Some(count) => count.to_string(),
        None => statefulset
            .spec
            .as_ref()
            .and_then(|spec| spec.replicas)
            .unwrap_or(1)
            .max(1)
            .to_string(),
    }
}

/// Says in the status why the spec cannot be used; a failure to write it is only logged (the
/// pass fails anyway).
async fn write_invalid_status(
    ctx: &Context,
    clusters: &Api<LogCluster>,
    cluster: &LogCluster,
    error: &SpecError,
    now: Timestamp,
) {
    let previous = cluster.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = cluster.metadata.generation;
    status::set_condition(
        &mut status.conditions,
        &previous.conditions,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: crate::crd::condition::DEGRADED.to_owned(),
            status: "True".to_owned(),
            reason: "InvalidSpec".to_owned(),
            message: error.to_string(),
            observed_generation: cluster.metadata.generation,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
        },
    );
    if let Err(err) = status::write(clusters, cluster, &status).await {
        tracing::warn!(error = %err, "cannot write the status of an invalid LogCluster");
    }
    publish(
        ctx,
        cluster,
        EventType::Warning,
        "InvalidSpec",
        error.to_string(),
    )
    .await;
}

/// The ConfigMaps, Services, PodDisruptionBudget and NetworkPolicy. Returns the kinds and
/// names created.
async fn config_and_services(
    ctx: &Context,
    view: &ClusterView<'_>,
    node_count: u32,
) -> Result<Vec<String>, PartError> {
    let namespace = view.namespace();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let mut created = Vec::new();
    let mut note = |applied: Applied, what: String| {
        if applied == Applied::Created {
            created.push(what);
        }
    };

    let config = config_map(view).map_err(PartError::Spec)?;
    note(
        apply_child(&config_maps, &config).await?,
        format!("ConfigMap {}", view.config_map_name()),
    );
    if view.spec().acl.enabled {
        let user = match &view.spec().acl.config_map_name {
            Some(user_name) => config_maps
                .get_opt(user_name)
                .await
                .map_err(|source| PartError::Api {
                    action: format!("read ConfigMap {namespace}/{user_name}"),
                    source,
                })?
                .and_then(|found| found.data)
                .map(|data| (user_name.clone(), data)),
            None => None,
        };
        let source = user.as_ref().map(|(name, data)| AclSource { name, data });
        if let Some(acl) = acl_config_map(view, source, node_count).map_err(PartError::Spec)? {
            note(
                apply_child(&config_maps, &acl).await?,
                format!("ConfigMap {}", view.acl_config_map_name()),
            );
        }
    }
    note(
        apply_child(&services, &headless_service(view).map_err(PartError::Spec)?).await?,
        format!("Service {}", view.headless_service_name()),
    );
    note(
        apply_child(&services, &client_service(view).map_err(PartError::Spec)?).await?,
        format!("Service {}", view.client_service_name()),
    );
    note(
        apply_child(
            &budgets,
            &pod_disruption_budget(view).map_err(PartError::Spec)?,
        )
        .await?,
        format!("PodDisruptionBudget {}", view.name()),
    );
    note(
        apply_child(&policies, &network_policy(view).map_err(PartError::Spec)?).await?,
        format!("NetworkPolicy {}-peers", view.name()),
    );
    Ok(created)
}

/// The StatefulSet with `replicas` pods. Once it exists, the API server refuses any change to
/// its fields other than `replicas`, `ordinals`, `template`, `updateStrategy`,
/// `persistentVolumeClaimRetentionPolicy` and `minReadySeconds`, so those others (the volume
/// claim templates, the selector, the service name, the pod management policy) are taken from
/// the live object whatever this operator's version would render (storage growth is done on
/// the PVCs, see `storage.rs`). Returns what the spec asks of them that the live object keeps
/// (a change that would need a new StatefulSet), for the caller to report.
async fn workload(
    ctx: &Context,
    view: &ClusterView<'_>,
    existing: Option<&StatefulSet>,
    replicas: u32,
) -> Result<(Applied, Vec<&'static str>), PartError> {
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), view.namespace());
    let config = config_map(view).map_err(PartError::Spec)?;
    let mut desired = stateful_set(view, &config_hash(&config)).map_err(PartError::Spec)?;
    let mut kept = Vec::new();
    if let Some(spec) = desired.spec.as_mut() {
        spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
        if let Some(live) = existing.and_then(|statefulset| statefulset.spec.as_ref()) {
            let class =
                |templates: &Option<Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>>| {
                    templates
                        .iter()
                        .flatten()
                        .find_map(|claim| claim.spec.as_ref()?.storage_class_name.clone())
                };
            // A live template without a class had the cluster's default chosen for its
            // volumes, which may be the class now named: only a named class that differs is
            // a change.
            let (wanted_class, live_class) = (
                class(&spec.volume_claim_templates),
                class(&live.volume_claim_templates),
            );
            if wanted_class.is_some() && live_class.is_some() && wanted_class != live_class {
                kept.push("spec.storage.storageClassName");
            }
            if spec.service_name != live.service_name {
                kept.push("the headless Service's name");
            }
            if spec.pod_management_policy != live.pod_management_policy {
                kept.push("the pod management policy");
            }
            spec.volume_claim_templates = live.volume_claim_templates.clone();
            spec.selector = live.selector.clone();
            spec.service_name = live.service_name.clone();
            spec.pod_management_policy = live.pod_management_policy.clone();
        }
    }
    Ok((apply_over(&api, &desired, existing).await?, kept))
}

/// What of a LogCluster triggers a pass when it changes: its generation (the spec) and its
/// annotations (pause, initial voters). Status writes, the operator's own included, change
/// neither, so they never start a pass; a status that kept changing would otherwise keep the
/// operator and the API server busy for as long as the cluster runs.
pub fn cluster_trigger(cluster: &LogCluster) -> Option<u64> {
    predicates::generation
        .combine(predicates::annotations)
        .hash_property(cluster)
}

/// What a LogCluster names outside the objects the operator owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referenced {
    /// `spec.acl.configMapName`.
    AclConfigMap,
    /// `spec.tls.issuer.secretName` (with `kind: Secret`).
    CaSecret,
}

/// The clusters among `clusters` that name `object` (in their namespace) as `kind`.
pub fn clusters_naming<K: Resource>(
    clusters: &[Arc<LogCluster>],
    kind: Referenced,
    object: &K,
) -> Vec<ObjectRef<LogCluster>> {
    let meta = object.meta();
    let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return Vec::new();
    };
    clusters
        .iter()
        .filter(|cluster| cluster.metadata.namespace.as_deref() == Some(namespace))
        .filter(|cluster| match kind {
            Referenced::AclConfigMap => cluster.spec.acl.config_map_name.as_deref() == Some(name),
            Referenced::CaSecret => {
                cluster.spec.tls.issuer.kind == IssuerKind::Secret
                    && cluster.spec.tls.issuer.secret_name.as_deref() == Some(name)
            }
        })
        .map(|cluster| ObjectRef::from_obj(cluster.as_ref()))
        .collect()
}

/// Runs the controller until `stop` is cancelled: LogClusters in `namespace` (all when
/// `None`), their children, and their pods (whose readiness moves rolls and scale-ups on).
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>, stop: CancellationToken) {
    let client = ctx.client.clone();
    let metrics = Arc::clone(&ctx.metrics);
    let stop_metrics = Arc::clone(&ctx.metrics);
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        }
    }
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let nodes = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/name={},app.kubernetes.io/component=node",
        resources::APP_NAME
    ));
    // LogClusters trigger a pass when their spec (generation) or annotations change, never
    // for the operator's own status writes; children and pods trigger as they change.
    let (reader, writer) = reflector::store();
    let clusters = watcher(
        api::<LogCluster>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects()
    .predicate_filter(cluster_trigger, PredicateConfig::default());
    let acl_clusters = reader.clone();
    let ca_clusters = reader.clone();
    Controller::for_stream(clusters, reader)
        // The user's ACL ConfigMap and CA Secret, by metadata only: a change starts a pass
        // over each cluster that names it, rather than waiting for the periodic one.
        .watches_stream(
            watcher(
                api::<PartialObjectMeta<ConfigMap>>(&client, namespace),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            move |config_map| {
                clusters_naming(&acl_clusters.state(), Referenced::AclConfigMap, &config_map)
            },
        )
        .watches_stream(
            watcher(
                api::<PartialObjectMeta<Secret>>(&client, namespace),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            move |secret| clusters_naming(&ca_clusters.state(), Referenced::CaSecret, &secret),
        )
        .owns(api::<StatefulSet>(&client, namespace), managed.clone())
        .owns(api::<Service>(&client, namespace), managed.clone())
        .owns(api::<ConfigMap>(&client, namespace), managed.clone())
        .owns(api::<Secret>(&client, namespace), managed.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, namespace),
            managed.clone(),
        )
        .owns(api::<NetworkPolicy>(&client, namespace), managed)
        .watches(api::<Pod>(&client, namespace), nodes, |pod| {
            let instance = pod.labels().get("app.kubernetes.io/instance")?.clone();
            let namespace = pod.namespace()?;
            Some(ObjectRef::<LogCluster>::new(&instance).within(&namespace))
        })
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let metrics = Arc::clone(&metrics);
            async move {
                match result {
                    Ok((object, _)) => tracing::debug!(cluster = %object, "reconciled"),
                    // A deleted cluster's requeue finds nothing: its series go with it.
                    Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                        metrics.report_lags(
                            object.namespace.as_deref().unwrap_or_default(),
                            &object.name,
                            &[],
                        );
                    }
                    Err(err) => tracing::debug!(error = %err, "reconcile did not complete"),
                }
            }
        })
        .await;
    // Another replica takes over: this one exports no cluster's lag any more.
    stop_metrics.member_lag.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(7), MAX_ERROR_BACKOFF);
        assert_eq!(backoff(64), MAX_ERROR_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_ERROR_BACKOFF);
    }

    #[test]
    fn api_errors_are_classified_for_the_metric() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            }))
        };
        assert_eq!(api_error_kind(&api(409)), "conflict");
        assert_eq!(api_error_kind(&api(503)), "server");
        assert_eq!(api_error_kind(&api(403)), "api");
    }
}
