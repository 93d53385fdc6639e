//! The objects the operator applies for a `LogCluster`, built by pure functions: same input,
//! same objects, so applying them again is a no-op and tests can check them without a cluster.
//!
//! [`ClusterView`] reads a `LogCluster` once, checks what the builders rely on, and answers the
//! questions they share: names, labels, DNS names, ports, the owner reference. Each other file
//! builds one kind of object from it:
//!
//! - `config`: the node settings ConfigMap (`NAME-config`, read as `PROGLOG_*` environment
//!   variables) and the ACL ConfigMap (`NAME-acl`, mounted as files).
//! - `services`: the headless Service (`NAME-headless`: stable pod DNS names for peers and
//!   seeds) and the client Service (`NAME`).
//! - `statefulset`: the nodes, one PVC each.
//! - `pdb`: the PodDisruptionBudget (`NAME`).
//! - `network`: the NetworkPolicy (`NAME-peers`): the peer and gossip ports for the cluster's
//!   own pods (and the operator), the client and metrics ports for anyone.
//! - `secrets`: the certificate Secrets from a [`crate::tls::Pki`].
//!
//! Every object carries the standard `app.kubernetes.io/*` labels and a controller owner
//! reference to the `LogCluster`, so Kubernetes deletes them with it and the operator's
//! watches see changes to them.

mod config;
mod network;
mod pdb;
mod secrets;
mod services;
mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::crd::{INITIAL_VOTERS_ANNOTATION, LogCluster, LogClusterSpec};
use crate::tls::Identity;

pub use config::{
    ACL_MODEL_FILE, ACL_POLICY_FILE, AclSource, PROGLOG_MODEL, acl_config_map, config_hash,
    config_map, fingerprint,
};
pub use network::network_policy;
pub use pdb::pod_disruption_budget;
pub use secrets::{
    CA_NOT_AFTER_ANNOTATION, CERTS_NOT_AFTER_ANNOTATION, ca_secret, nodes_secret, operator_secret,
};
pub use services::{client_service, headless_service};
pub use statefulset::{DATA_VOLUME, stateful_set};

/// Field manager name for server-side apply, and the `app.kubernetes.io/managed-by` label.
pub const MANAGER: &str = "proglog-operator";
/// `app.kubernetes.io/name` of everything the operator makes.
pub const APP_NAME: &str = "proglog";
/// Image of the node when `spec.image` is unset (the tag is the version).
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/proglog/proglog-node";
/// Where the PVC is mounted in each pod.
pub const DATA_MOUNT: &str = "/var/lib/proglog";
/// The node's `--data-dir`: a directory inside the volume, so the file system's own entries
/// (`lost+found`) are not in the log's directory.
pub const DATA_DIR: &str = "/var/lib/proglog/data";
/// Where the certificate Secret is mounted.
pub const TLS_MOUNT: &str = "/etc/proglog/tls";
/// Where the ACL ConfigMap is mounted.
pub const ACL_MOUNT: &str = "/etc/proglog/acl";
/// Pod-template annotation carrying [`config_hash`]: a changed configuration changes the
/// template, so the StatefulSet sees that pods need replacing.
pub const CONFIG_HASH_ANNOTATION: &str = "proglog.dev/config-hash";

/// A `LogCluster` the builders cannot work from.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No `metadata.name`.
    #[error("the LogCluster has no metadata.name")]
    MissingName,
    /// No `metadata.uid`: owner references need it (a resource read from a file has none).
    #[error("LogCluster {name} has no metadata.uid, which owner references need")]
    MissingUid {
        /// The resource's name.
        name: String,
    },
    /// A field has a value the builders cannot use (the CRD's rules refuse it too).
    #[error("LogCluster {name}: {field} {reason}")]
    Invalid {
        /// The resource's name.
        name: String,
        /// The field, as in the spec (`spec.replicas`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Settings of the operator itself that shape the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    /// The cluster's DNS domain (`cluster.local`), for pod and Service names.
    pub cluster_domain: String,
    /// The namespace the operator runs in (`POD_NAMESPACE`), which the NetworkPolicy lets
    /// reach the nodes' peer port; `None` (rendering offline) lets an operator pod of any
    /// namespace reach it.
    pub operator_namespace: Option<String>,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        OperatorSettings {
            cluster_domain: "cluster.local".to_owned(),
            operator_namespace: None,
        }
    }
}

/// A checked view of one `LogCluster`, with everything the builders share.
#[derive(Debug, Clone)]
pub struct ClusterView<'a> {
    cluster: &'a LogCluster,
    name: String,
    namespace: String,
    replicas: u32,
    initial_voters: u32,
    cluster_domain: String,
    operator_namespace: Option<String>,
}

impl<'a> ClusterView<'a> {
    /// Checks `cluster`; `namespace` is used when its metadata has none.
    pub fn new(
        cluster: &'a LogCluster,
        namespace: &str,
        settings: &OperatorSettings,
    ) -> Result<Self, SpecError> {
        let name = cluster
            .metadata
            .name
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or(SpecError::MissingName)?;
        let invalid = |field, reason: String| SpecError::Invalid {
            name: name.clone(),
            field,
            reason,
        };
        if name.len() > 52 || !is_dns_label(&name) {
            return Err(invalid(
                "metadata.name",
                format!("`{name}` must be a DNS label of at most 52 characters"),
            ));
        }
        let spec = &cluster.spec;
        let replicas = u32::try_from(spec.replicas)
            .ok()
            .filter(|count| *count >= 1)
            .ok_or_else(|| invalid("spec.replicas", format!("is {}; at least 1", spec.replicas)))?;
        let initial_voters = match cluster
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(INITIAL_VOTERS_ANNOTATION))
        {
            None => replicas,
            Some(value) => value
                .parse::<u32>()
                .ok()
                .filter(|count| *count >= 1)
                .ok_or_else(|| SpecError::Invalid {
                    name: name.clone(),
                    field: "metadata.annotations[proglog.dev/initial-voters]",
                    reason: format!("`{value}` is not a count of at least 1"),
                })?,
        };
        let ports = [
            ("spec.ports.rpc", spec.ports.rpc),
            ("spec.ports.gossip", spec.ports.gossip),
            ("spec.ports.metrics", spec.ports.metrics),
        ];
        for (field, port) in ports {
            if !(1..=65535).contains(&port) {
                return Err(invalid(field, format!("is {port}; a port is 1 to 65535")));
            }
        }
        if spec.ports.rpc == spec.ports.gossip
            || spec.ports.rpc == spec.ports.metrics
            || spec.ports.gossip == spec.ports.metrics
        {
            return Err(invalid(
                "spec.ports",
                "rpc, gossip and metrics must differ".into(),
            ));
        }
        if spec.acl.enabled && !spec.tls.enabled {
            return Err(invalid(
                "spec.acl.enabled",
                "needs spec.tls.enabled (the ACL subject is the client certificate's name)".into(),
            ));
        }
        if spec.pdb.max_unavailable < 0 {
            return Err(invalid(
                "spec.pdb.maxUnavailable",
                "cannot be negative".into(),
            ));
        }
        let namespace = cluster
            .metadata
            .namespace
            .clone()
            .filter(|namespace| !namespace.is_empty())
            .unwrap_or_else(|| namespace.to_owned());
        Ok(ClusterView {
            cluster,
            name,
            namespace,
            replicas,
            initial_voters,
            cluster_domain: settings.cluster_domain.clone(),
            operator_namespace: settings.operator_namespace.clone(),
        })
    }

    /// The namespace the operator runs in, when known.
    pub fn operator_namespace(&self) -> Option<&str> {
        self.operator_namespace.as_deref()
    }

    /// The resource.
    pub fn cluster(&self) -> &LogCluster {
        self.cluster
    }

    /// Its spec.
    pub fn spec(&self) -> &LogClusterSpec {
        &self.cluster.spec
    }

    /// Its name: also the StatefulSet's, the client Service's and the pods' prefix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace, where every child lives.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The cluster's DNS domain (`cluster.local`).
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// `spec.replicas`.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// How many pods formed the first quorum: ordinals `0..n` are the `--initial-voters` of
    /// every node, now and later. A new node ignores the list once it has quorum state, and a
    /// node not on it starts as an observer, so the list must never grow with scaling (pod 3
    /// of a cluster scaled from 3 to 5 must not believe it is a founding voter). It comes
    /// from the `proglog.dev/initial-voters` annotation, which the reconciler writes before
    /// it first creates the StatefulSet; without it, from `spec.replicas`.
    pub fn initial_voters(&self) -> u32 {
        self.initial_voters
    }

    /// proglog version: `spec.version`, or the operator's.
    pub fn version(&self) -> &str {
        self.spec()
            .version
            .as_deref()
            .unwrap_or(env!("CARGO_PKG_VERSION"))
    }

    /// The node image.
    pub fn image(&self) -> String {
        match &self.spec().image {
            Some(image) => image.clone(),
            None => format!("{DEFAULT_IMAGE_REPOSITORY}:{}", self.version()),
        }
    }

    /// Name of pod `ordinal` (and of that node, its `--id`).
    pub fn pod_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// The headless Service.
    pub fn headless_service_name(&self) -> String {
        format!("{}-headless", self.name)
    }

    /// The client Service.
    pub fn client_service_name(&self) -> String {
        self.name.clone()
    }

    /// The node settings ConfigMap.
    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name)
    }

    /// The ACL ConfigMap.
    pub fn acl_config_map_name(&self) -> String {
        format!("{}-acl", self.name)
    }

    /// The operator's CA Secret.
    pub fn ca_secret_name(&self) -> String {
        format!("{}-ca", self.name)
    }

    /// The node certificates Secret.
    pub fn tls_secret_name(&self) -> String {
        format!("{}-tls", self.name)
    }

    /// The operator's client certificate Secret.
    pub fn operator_tls_secret_name(&self) -> String {
        format!("{}-operator-tls", self.name)
    }

    /// `NAME-headless.NS.svc.DOMAIN`.
    pub fn headless_fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.headless_service_name(),
            self.namespace,
            self.cluster_domain
        )
    }

    /// `NAME-i.NAME-headless.NS.svc.DOMAIN`: the pod's stable DNS name.
    pub fn pod_fqdn(&self, ordinal: u32) -> String {
        format!("{}.{}", self.pod_name(ordinal), self.headless_fqdn())
    }

    /// The gossip seeds: every pod's DNS name under the headless Service, gossip port.
    pub fn seed_peers(&self) -> Vec<String> {
        (0..self.replicas)
            .map(|ordinal| format!("{}:{}", self.pod_fqdn(ordinal), self.spec().ports.gossip))
            .collect()
    }

    /// Node ids of the first quorum.
    pub fn initial_voter_ids(&self) -> Vec<String> {
        (0..self.initial_voters)
            .map(|ordinal| self.pod_name(ordinal))
            .collect()
    }

    /// The client Service's address, `NAME.NS.svc.DOMAIN:RPC`.
    pub fn client_endpoint(&self) -> String {
        format!(
            "{}.{}.svc.{}:{}",
            self.client_service_name(),
            self.namespace,
            self.cluster_domain,
            self.spec().ports.rpc
        )
    }

    /// The four DNS forms of a Service (`S`, `S.NS`, `S.NS.svc`, `S.NS.svc.DOMAIN`), with
    /// `prefix.` in front of each when given (a pod under the headless Service).
    fn dns_forms(&self, prefix: Option<&str>, service: &str) -> Vec<String> {
        let prefix = prefix.map_or(String::new(), |prefix| format!("{prefix}."));
        vec![
            format!("{prefix}{service}"),
            format!("{prefix}{service}.{}", self.namespace),
            format!("{prefix}{service}.{}.svc", self.namespace),
            format!(
                "{prefix}{service}.{}.svc.{}",
                self.namespace, self.cluster_domain
            ),
        ]
    }

    /// The certificate identity of pod `ordinal`: its name as the common name; its DNS names
    /// under the headless Service and the client Service's names (clients reach any node
    /// through it), `localhost` and `127.0.0.1` (probes and tools in the pod).
    pub fn node_identity(&self, ordinal: u32) -> Identity {
        let pod = self.pod_name(ordinal);
        let mut dns_names = self.dns_forms(Some(&pod), &self.headless_service_name());
        dns_names.extend(self.dns_forms(None, &self.client_service_name()));
        dns_names.push("localhost".to_owned());
        Identity {
            common_name: pod,
            dns_names,
            ip_addresses: vec![std::net::IpAddr::from([127, 0, 0, 1])],
        }
    }

    /// Identities of pods `0..count` (the reconciler passes more than `spec.replicas` while
    /// a scale-down is still removing pods, so those keep valid certificates).
    pub fn node_identities(&self, count: u32) -> Vec<Identity> {
        (0..count)
            .map(|ordinal| self.node_identity(ordinal))
            .collect()
    }

    /// Labels that select the pods: stable for the life of the cluster (a StatefulSet's
    /// selector cannot change).
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            ("app.kubernetes.io/component".to_owned(), "node".to_owned()),
        ])
    }

    /// The selector as a label-selector string, for the status (`kubectl scale`).
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The standard labels, with `component` naming what the object is for.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                MANAGER.to_owned(),
            ),
            ("app.kubernetes.io/part-of".to_owned(), APP_NAME.to_owned()),
            (
                "app.kubernetes.io/version".to_owned(),
                label_value(self.version()),
            ),
        ])
    }

    /// The controller owner reference to the `LogCluster`.
    pub fn owner_reference(&self) -> Result<OwnerReference, SpecError> {
        self.cluster
            .controller_owner_ref(&())
            .ok_or_else(|| SpecError::MissingUid {
                name: self.name.clone(),
            })
    }

    /// Metadata of a child: name, namespace, standard labels, owner reference.
    pub fn metadata(&self, name: String, component: &str) -> Result<ObjectMeta, SpecError> {
        Ok(ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner_reference()?]),
            ..ObjectMeta::default()
        })
    }
}

/// Whether `name` is an RFC 1123 DNS label (what Service and pod names must be).
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A label value from free text: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends (a version such as `1.2.3+build` becomes `1.2.3_build`).
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::LogClusterSpec;

    /// A LogCluster named `events` in `prod` with `replicas` replicas and a uid.
    pub(crate) fn cluster(replicas: i32) -> LogCluster {
        let mut cluster = LogCluster::new(
            "events",
            LogClusterSpec {
                replicas,
                image: None,
                image_pull_policy: Default::default(),
                version: Some("0.3.0".into()),
                storage: Default::default(),
                resources: None,
                pod_template: Default::default(),
                log: Default::default(),
                tls: Default::default(),
                acl: Default::default(),
                paused: false,
                ports: Default::default(),
                service: Default::default(),
                pdb: Default::default(),
            },
        );
        cluster.metadata.namespace = Some("prod".into());
        cluster.metadata.uid = Some("5f1c7c1e-0000-4000-8000-000000000001".into());
        cluster
    }

    pub(crate) fn view(cluster: &LogCluster) -> ClusterView<'_> {
        ClusterView::new(cluster, "default", &OperatorSettings::default()).unwrap()
    }

    #[test]
    fn names_and_dns_follow_the_statefulset_conventions() {
        let cluster = cluster(3);
        let view = view(&cluster);
        assert_eq!(view.pod_name(2), "events-2");
        assert_eq!(
            view.pod_fqdn(0),
            "events-0.events-headless.prod.svc.cluster.local"
        );
        assert_eq!(
            view.seed_peers(),
            [
                "events-0.events-headless.prod.svc.cluster.local:8401",
                "events-1.events-headless.prod.svc.cluster.local:8401",
                "events-2.events-headless.prod.svc.cluster.local:8401",
            ]
        );
        assert_eq!(view.image(), "ghcr.io/proglog/proglog-node:0.3.0");
        assert_eq!(view.client_endpoint(), "events.prod.svc.cluster.local:8400");
    }

    #[test]
    fn node_identity_covers_pod_and_client_service_names() {
        let cluster = cluster(3);
        let identity = view(&cluster).node_identity(1);
        assert_eq!(identity.common_name, "events-1");
        for name in [
            "events-1.events-headless",
            "events-1.events-headless.prod",
            "events-1.events-headless.prod.svc",
            "events-1.events-headless.prod.svc.cluster.local",
            "events",
            "events.prod",
            "events.prod.svc",
            "events.prod.svc.cluster.local",
            "localhost",
        ] {
            assert!(identity.dns_names.iter().any(|n| n == name), "{name}");
        }
        assert_eq!(
            identity.ip_addresses,
            [std::net::IpAddr::from([127, 0, 0, 1])]
        );
    }

    #[test]
    fn initial_voters_come_from_the_annotation_once_written() {
        let mut cluster = cluster(5);
        assert_eq!(view(&cluster).initial_voter_ids().len(), 5);
        cluster.metadata.annotations = Some(BTreeMap::from([(
            INITIAL_VOTERS_ANNOTATION.to_owned(),
            "3".to_owned(),
        )]));
        assert_eq!(
            view(&cluster).initial_voter_ids(),
            ["events-0", "events-1", "events-2"]
        );
        cluster.metadata.annotations = Some(BTreeMap::from([(
            INITIAL_VOTERS_ANNOTATION.to_owned(),
            "three".to_owned(),
        )]));
        let err = ClusterView::new(&cluster, "default", &OperatorSettings::default()).unwrap_err();
        assert!(err.to_string().contains("initial-voters"), "{err}");
    }

    #[test]
    fn invalid_specs_are_refused_naming_the_field() {
        let refused = |cluster: &LogCluster, field: &str| {
            let err =
                ClusterView::new(cluster, "default", &OperatorSettings::default()).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        };
        refused(&cluster(0), "spec.replicas");
        let mut bad = cluster(3);
        bad.spec.ports.gossip = bad.spec.ports.rpc;
        refused(&bad, "spec.ports");
        let mut bad = cluster(3);
        bad.spec.acl.enabled = true;
        refused(&bad, "spec.acl.enabled");
        let mut bad = cluster(3);
        bad.metadata.name = Some("x".repeat(53));
        refused(&bad, "metadata.name");
        let mut bad = cluster(3);
        bad.metadata.name = None;
        refused(&bad, "metadata.name");
    }

    #[test]
    fn namespace_comes_from_metadata_then_the_default() {
        let mut cluster = cluster(1);
        assert_eq!(view(&cluster).namespace(), "prod");
        cluster.metadata.namespace = None;
        assert_eq!(view(&cluster).namespace(), "default");
    }

    #[test]
    fn children_are_owned_by_the_cluster_as_controller() {
        let cluster = cluster(1);
        let meta = view(&cluster).metadata("x".into(), "node").unwrap();
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "LogCluster");
        assert_eq!(owner.api_version, "proglog.dev/v1alpha1");
        assert_eq!(owner.name, "events");
        assert_eq!(owner.uid, "5f1c7c1e-0000-4000-8000-000000000001");
        assert_eq!(owner.controller, Some(true));
        let mut no_uid = cluster.clone();
        no_uid.metadata.uid = None;
        assert!(matches!(
            view(&no_uid).owner_reference(),
            Err(SpecError::MissingUid { .. })
        ));
    }

    #[test]
    fn label_values_are_made_valid() {
        assert_eq!(label_value("1.2.3+build"), "1.2.3_build");
        assert_eq!(label_value("-x-"), "x");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
    }
}
