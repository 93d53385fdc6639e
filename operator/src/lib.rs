//! # proglog-operator
//!
//! The controller that turns a `LogCluster` resource (group `proglog.dev`, `v1alpha1`) into a
//! running proglog cluster.
//!
//! ## Layout
//!
//! - `crd`: the `LogCluster` resource, its spec, status and the CEL rules the API server
//!   enforces.
//! - `resources`: pure functions from a `LogCluster` (and its certificates) to the objects the
//!   operator applies: ConfigMaps, Services, StatefulSet, PodDisruptionBudget, Secrets.
//! - `tls`: the CA and the node certificates (rcgen): issue, and decide what to renew.
//! - `render`: everything the operator would create for a resource, as YAML, without a cluster
//!   (`proglog-operator render`).
//! - `plan`: the reconciler's decisions (scale steps, roll order, pause, drift, volume growth)
//!   as pure functions.
//! - `admin`: the nodes' admin API behind the `NodeAdmin` trait, and its gRPC implementation.
//! - `controller`: the reconcile pass, its independent parts, the status, and the kube-runtime
//!   `Controller` that drives it.
//! - `metrics`, `http`: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server.
//! - `leader`: leader election through a Lease, so one replica reconciles at a time.
//! - `config`: `proglog-operator run`'s settings, checked before anything starts.
//!
//! What the operator promises, and the tests that prove it, are in `docs/kubernetes.md`.

pub mod admin;
pub mod config;
pub mod controller;
pub mod crd;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod render;
pub mod resources;
pub mod run;
pub mod tls;

/// The `LogCluster` CustomResourceDefinition as YAML: what `crdgen` prints and
/// `crds/logcluster.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&crd::LogCluster::crd())
}
