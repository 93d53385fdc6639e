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
//!
//! The reconciler (`controller.rs`, `status.rs`) is next; see `shared/design/operator.md`.

pub mod crd;
pub mod render;
pub mod resources;
pub mod tls;

/// The `LogCluster` CustomResourceDefinition as YAML: what `crdgen` prints and
/// `crds/logcluster.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&crd::LogCluster::crd())
}
