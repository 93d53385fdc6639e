//! The `LogCluster` custom resource (group `proglog.dev`, version `v1alpha1`): what a user asks
//! for (the spec) and what the operator reports back (the status).
//!
//! Every field but `replicas` has a default that works, written into the schema so the API
//! server fills it in and `kubectl get -o yaml` shows what is in force. What is never valid is
//! refused by the API server itself through CEL rules in the schema (`x-kubernetes-validations`):
//! fewer than one replica, shrinking storage, changing a field that cannot change once the
//! cluster exists. The operator checks the same things again before it builds anything
//! ([`crate::resources::ClusterView`]), since a resource can come from elsewhere (`render -f`).
//!
//! `crds/logcluster.yaml` is generated from these types by the `crdgen` binary; a test fails
//! when the committed copy differs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodSecurityContext, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every proglog resource.
pub const GROUP: &str = "proglog.dev";

/// Annotation on a `LogCluster` holding how many pods formed its first quorum (ordinals
/// `0..n`). The operator writes it when it first creates the cluster; without it the first
/// quorum is `spec.replicas`. See [`crate::resources::ClusterView::initial_voters`].
pub const INITIAL_VOTERS_ANNOTATION: &str = "proglog.dev/initial-voters";

/// Condition types the status reports, each owned by one part of the reconciler.
pub mod condition {
    /// Every pod is ready, a leader is elected, and the spec in force is the one observed.
    pub const READY: &str = "Ready";
    /// The operator is changing something: reasons `ScalingUp`, `ScalingDown`, `Rolling`,
    /// `RotatingCertificates`.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong that the operator cannot fix by itself.
    pub const DEGRADED: &str = "Degraded";
    /// The CA and every node certificate exist and are valid for longer than `renewBefore`.
    pub const CERTIFICATES_READY: &str = "CertificatesReady";
    /// `spec.paused` is set: the operator changes nothing.
    pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
}

/// A proglog cluster: `replicas` nodes that keep identical copies of one log, with a
/// StatefulSet, a PVC per node, peer and client Services, certificates and a disruption budget.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "proglog.dev",
    version = "v1alpha1",
    kind = "LogCluster",
    namespaced,
    shortname = "lc",
    category = "proglog",
    status = "LogClusterStatus",
    derive = "PartialEq",
    doc = "A proglog cluster: a replicated commit log run by the proglog operator.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every node is ready and a leader is elected"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Pods of the cluster"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "The node that leads the current epoch"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    validation = Rule::new("size(self.metadata.name) <= 52").message("the name must be at most 52 characters: pods are named NAME-ORDINAL and labelled with NAME-HASH, both limited to 63"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.acl.enabled || self.tls.enabled").message("acl.enabled needs tls.enabled: the ACL's subject is the client certificate's common name"),
    validation = Rule::new("self.tls.enabled == oldSelf.tls.enabled").message("tls.enabled cannot change on a running cluster: plaintext and TLS nodes cannot talk to each other during a roll; create a new cluster"),
)]
pub struct LogClusterSpec {
    /// Number of nodes. Voters are a majority quorum, so use an odd number: 3 survives one
    /// failure, 5 survives two. Scaling down removes the highest ordinals from the quorum
    /// before their pods stop.
    #[x_kube(validation = Rule::new("self >= 1").message("replicas must be at least 1"))]
    pub replicas: i32,

    /// Container image of the node. Default: `ghcr.io/proglog/proglog-node:<version>`. Its
    /// entrypoint must be `proglog-node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,

    /// proglog version: the image tag when `image` is not set, and the
    /// `app.kubernetes.io/version` label. Default: the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// The PVC each node keeps its log on.
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory of each node's container. Default: none set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Scheduling and metadata of the pods.
    #[serde(default)]
    pub pod_template: PodTemplate,

    /// Segment, retention, durability and record-size settings of every node's log.
    #[serde(default)]
    pub log: LogSpec,

    /// Mutual TLS between nodes and clients, with certificates the operator issues and renews.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Casbin ACL (proglog's model and policy); needs TLS.
    #[serde(default)]
    pub acl: AclSpec,

    /// While true the operator changes nothing in the cluster (it still reports status).
    #[serde(default)]
    pub paused: bool,

    /// Ports the nodes listen on.
    #[serde(default)]
    pub ports: PortsSpec,

    /// The client Service.
    #[serde(default)]
    pub service: ServiceSpec,

    /// The PodDisruptionBudget.
    #[serde(default)]
    pub pdb: PdbSpec,
}

/// When the kubelet pulls the node image (the Kubernetes values).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Every time a pod starts.
    Always,
    /// Only when the node lacks the image.
    #[default]
    IfNotPresent,
    /// Never: the image must already be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// The PVC of each node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storage.storageClassName cannot change: existing volumes cannot move to another class"),
)]
pub struct StorageSpec {
    /// Size of each node's volume, a Kubernetes quantity (`10Gi`). It may grow (the operator
    /// expands the PVCs, which needs a StorageClass with `allowVolumeExpansion`), never shrink.
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 64))]
    #[x_kube(
        validation = Rule::new("isQuantity(self)").message("storage.size must be a quantity such as 10Gi"),
        validation = Rule::new("quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage.size can grow but never shrink"),
    )]
    pub size: String,

    /// StorageClass of the volumes. Default: the cluster's default class. Cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,

    /// Delete the PVCs when the LogCluster is deleted. Default false: the data outlives the
    /// resource. Scaling down never deletes PVCs.
    #[serde(default)]
    pub delete_claims_on_delete: bool,
}

fn default_storage_size() -> String {
    "10Gi".to_owned()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            delete_claims_on_delete: false,
        }
    }
}

/// Scheduling and metadata of the node pods, merged into what the operator sets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Extra pod labels (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Pod affinity. Default: prefer spreading the nodes over hosts (pod anti-affinity by
    /// hostname). Setting it replaces the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Topology spread constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Pod security context. Default: non-root user and group 65532, fsGroup 65532, the
    /// runtime's default seccomp profile. Setting it replaces the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

/// Settings of every node's log (the node's flags of the same names). Unset values keep the
/// node's defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogSpec {
    /// Size at which a segment is closed and a new one starts, in bytes: 4 KiB to 2 GiB. Node
    /// default 1 GiB. A record larger than a segment gets a segment of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4096, max = 2147483648_i64))]
    pub segment_bytes: Option<i64>,
    /// Delete the oldest segments while the log is larger than this. Default: keep all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retention_bytes: Option<i64>,
    /// Delete segments whose newest record is older than this many hours (at most 1000000).
    /// Default: keep all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub retention_hours: Option<i64>,
    /// When appends reach the disk: `always` (fsync before acknowledging), `interval` or
    /// `never`.
    #[serde(default)]
    pub durability: Durability,
    /// Largest record accepted, in bytes: 1 to 1 GiB less 4 KiB (a batch's overhead). Node
    /// default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1073737728))]
    pub max_record_bytes: Option<i64>,
}

/// When a node syncs appends to disk.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync before acknowledging (group commit).
    #[default]
    Always,
    /// fsync on a timer.
    Interval,
    /// Leave it to the kernel.
    Never,
}

impl Durability {
    /// The node flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::Interval => "interval",
            Durability::Never => "never",
        }
    }
}

/// Mutual TLS for every gRPC connection, client to node and node to node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.renewBefore) < duration(self.certValidity)").message("tls.renewBefore must be shorter than tls.certValidity"),
    validation = Rule::new("duration(self.certValidity) > duration('0s') && duration(self.caValidity) > duration(self.certValidity)").message("tls.caValidity must be longer than tls.certValidity, and both positive"),
)]
pub struct TlsSpec {
    /// Serve TLS and require client certificates signed by the cluster's CA. Cannot change on
    /// a running cluster. Clients then need a certificate from that CA (its Secret is
    /// `NAME-ca`, or the user's CA with `issuer.kind: Secret`).
    #[serde(default)]
    pub enabled: bool,
    /// Who signs the node certificates.
    #[serde(default)]
    pub issuer: IssuerSpec,
    /// Lifetime of a CA the operator generates (Go duration). Default ten years.
    #[serde(default = "default_ca_validity")]
    pub ca_validity: Duration,
    /// Lifetime of each node certificate. Default 90 days.
    #[serde(default = "default_cert_validity")]
    pub cert_validity: Duration,
    /// Renew a certificate this long before it expires. Default 30 days. Nodes load renewed
    /// files without restarting.
    #[serde(default = "default_renew_before")]
    pub renew_before: Duration,
}

fn hours(count: u64) -> Duration {
    Duration::from(std::time::Duration::from_secs(count * 3600))
}

fn default_ca_validity() -> Duration {
    hours(24 * 3650)
}

fn default_cert_validity() -> Duration {
    hours(24 * 90)
}

fn default_renew_before() -> Duration {
    hours(24 * 30)
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            enabled: false,
            issuer: IssuerSpec::default(),
            ca_validity: default_ca_validity(),
            cert_validity: default_cert_validity(),
            renew_before: default_renew_before(),
        }
    }
}

/// Who signs the node certificates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.kind != 'Secret' || has(self.secretName)").message("tls.issuer.kind Secret needs tls.issuer.secretName"),
    validation = Rule::new("self.kind == oldSelf.kind").message("tls.issuer.kind cannot change: the nodes would stop trusting each other"),
)]
pub struct IssuerSpec {
    /// `Operator`: the operator generates a CA (Secret `NAME-ca`). `Secret`: a CA you provide.
    #[serde(default)]
    pub kind: IssuerKind,
    /// With `kind: Secret`: a Secret in the same namespace with the CA's `tls.crt` and
    /// `tls.key` (PEM), as cert-manager and `kubectl create secret tls` write them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// Where the CA comes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IssuerKind {
    /// The operator generates and keeps a CA.
    #[default]
    Operator,
    /// The user's CA, from a Secret.
    Secret,
}

/// Casbin authorization (proglog's model and policy files).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AclSpec {
    /// Authorize every call by the client certificate's common name. Needs `tls.enabled`.
    /// The operator writes the policy the cluster itself needs ahead of yours: `replicate`
    /// and `produce` for each node (its common name is its pod name; nodes replicate and
    /// forward produces with their own certificates) and `admin` for the operator
    /// (`proglog-operator`). Without a ConfigMap only those rules exist.
    #[serde(default)]
    pub enabled: bool,
    /// A ConfigMap in the same namespace holding your policy (and optionally the model).
    /// Changes to it reach the nodes without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// Key of the Casbin policy in the ConfigMap (lines such as `p, alice, *, produce`).
    #[serde(default = "default_policy_key")]
    pub policy_key: String,
    /// Key of the Casbin model in the ConfigMap; when the key is absent, proglog's model is
    /// used. A model of your own must keep `p = sub, obj, act`.
    #[serde(default = "default_model_key")]
    pub model_key: String,
}

fn default_policy_key() -> String {
    "policy.csv".to_owned()
}

fn default_model_key() -> String {
    "model.conf".to_owned()
}

impl Default for AclSpec {
    fn default() -> Self {
        AclSpec {
            enabled: false,
            config_map_name: None,
            policy_key: default_policy_key(),
            model_key: default_model_key(),
        }
    }
}

/// Ports of each node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.rpc != self.gossip && self.rpc != self.metrics && self.gossip != self.metrics && self.peer != self.rpc && self.peer != self.gossip && self.peer != self.metrics").message("ports.rpc, ports.gossip, ports.peer and ports.metrics must differ"),
    validation = Rule::new("self.gossip == oldSelf.gossip").message("ports.gossip cannot change: restarted nodes could not find the others"),
)]
pub struct PortsSpec {
    /// gRPC: the client services.
    #[serde(default = "default_rpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub rpc: i32,
    /// gRPC: the peer and admin services (node to node, and the operator), always over mutual
    /// TLS with the cluster's CA, whatever `tls.enabled` says of the clients' port.
    #[serde(default = "default_peer_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub peer: i32,
    /// Gossip (member discovery), TCP and UDP.
    #[serde(default = "default_gossip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub gossip: i32,
    /// HTTP: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub metrics: i32,
}

fn default_rpc_port() -> i32 {
    8400
}

fn default_gossip_port() -> i32 {
    8401
}

fn default_peer_port() -> i32 {
    8402
}

fn default_metrics_port() -> i32 {
    9400
}

impl Default for PortsSpec {
    fn default() -> Self {
        PortsSpec {
            rpc: default_rpc_port(),
            peer: default_peer_port(),
            gossip: default_gossip_port(),
            metrics: default_metrics_port(),
        }
    }
}

/// The client Service (`NAME`), which spreads clients over the ready nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the Service (load balancer settings, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service types.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable inside the cluster.
    #[default]
    ClusterIP,
    /// And on a port of every node.
    NodePort,
    /// And through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The value Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The PodDisruptionBudget (`NAME`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Pods that voluntary disruptions (drains) may take down at once. Keep it below a
    /// majority: 1 for 3 or 4 replicas, 2 for 5.
    #[serde(default = "default_max_unavailable")]
    #[x_kube(validation = Rule::new("self >= 0").message("pdb.maxUnavailable cannot be negative"))]
    pub max_unavailable: i32,
}

fn default_max_unavailable() -> i32 {
    1
}

impl Default for PdbSpec {
    fn default() -> Self {
        PdbSpec {
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// What the operator observed and did, written only by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `CertificatesReady`, `ReconciliationPaused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods of the StatefulSet.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for `kubectl scale` and autoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The current leader's id (pod name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The leader epoch: it grows by one with every election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Every node: readiness, role and whether it keeps up with the leader. Offsets change
    /// with every write, so they are not here: each node's `/metrics` has its log's offsets,
    /// and the operator's has each member's lag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Where clients and peers connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// The gossip seeds given to the nodes: the pods' DNS names under the headless Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed_peers: Vec<String>,
    /// When the CA expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<Time>,
    /// When the first node certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_not_after: Option<Time>,
}

/// One node as the operator last saw it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Node id (pod name).
    pub name: String,
    /// Whether its pod is ready.
    #[serde(default)]
    pub ready: bool,
    /// `leader`, `follower`, `candidate` or `observer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Whether it keeps up with the leader: the leader itself, or a replica that fetched in
    /// the last 10 seconds and was at most 10,000 records behind the leader's end then.
    /// Absent when the leader did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_sync: Option<bool>,
}

/// Addresses of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The client Service, `host:port`.
    pub rpc: String,
    /// The headless Service's DNS name (each pod is `NAME-i.` under it).
    pub headless: String,
}
