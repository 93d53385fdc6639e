//! The StatefulSet: one pod per node, each with its own PVC and a stable name that is also its
//! node id.
//!
//! Choices that matter:
//! - `podManagementPolicy: Parallel`: all pods of a new cluster start together, since no node
//!   is ready before a quorum of them has elected a leader.
//! - `updateStrategy: OnDelete`: the reconciler replaces pods itself, one at a time, waiting
//!   for each to catch up and taking the leader last; the StatefulSet controller would roll
//!   in ordinal order without knowing who leads.
//! - Probes: liveness is HTTP `/healthz`, which answers while a large log is recovering (a
//!   gRPC liveness probe would kill a node mid-recovery). Readiness is the `grpc.health.v1`
//!   check of `log.v1.Log` on the gRPC port, which turns NOT_SERVING as soon as shutdown
//!   begins; with TLS on, the kubelet cannot make that call (it does no TLS), so readiness is
//!   HTTP `/readyz` on the metrics port, which means the same.
//! - Shutdown: on SIGTERM the node itself hands leadership over, drains calls, leaves gossip
//!   and closes its log; no preStop hook is needed, only a grace period long enough for that
//!   (the node's drain takes up to 10 s, gossip leave up to 3 s, plus the final sync).
//! - Security: non-root, read-only root file system, no capabilities, no service account
//!   token (nodes never call the Kubernetes API). The node writes only under its data volume;
//!   `/tmp` is an emptyDir for anything else.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, GRPCAction, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ACL_MOUNT, CONFIG_HASH_ANNOTATION, ClusterView, DATA_MOUNT, SpecError, TLS_MOUNT};

/// User and group the node runs as by default (the distroless `nonroot` user).
pub const NODE_USER: i64 = 65532;
/// Seconds Kubernetes waits after SIGTERM before SIGKILL.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;
/// The container's name.
pub const CONTAINER: &str = "proglog";
/// The data volume claim template's name (PVCs are `data-NAME-i`).
pub const DATA_VOLUME: &str = "data";
/// The gRPC health service name the readiness probe checks.
const LOG_SERVICE: &str = "log.v1.Log";

/// The StatefulSet `NAME`. `config_hash` is [`super::config_hash`] of the settings ConfigMap.
pub fn stateful_set(view: &ClusterView<'_>, config_hash: &str) -> Result<StatefulSet, SpecError> {
    let spec = view.spec();
    let replicas = i32::try_from(view.replicas()).unwrap_or(i32::MAX);
    let selector = view.selector_labels();

    let mut pod_labels = spec.pod_template.labels.clone();
    pod_labels.extend(view.labels("node"));
    let mut pod_annotations = spec.pod_template.annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), config_hash.to_owned());

    let mut volumes = vec![Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![
        mount(DATA_VOLUME, DATA_MOUNT, false),
        mount("tmp", "/tmp", false),
    ];
    // The node certificates: always, since the peer listener is always mutual TLS.
    {
        volumes.push(Volume {
            name: "tls".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(view.tls_secret_name()),
                // Readable by the node's group (fsGroup) only.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("tls", TLS_MOUNT, true));
    }
    if spec.acl.enabled {
        volumes.push(Volume {
            name: "acl".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: view.acl_config_map_name(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("acl", ACL_MOUNT, true));
    }

    let pod = PodSpec {
        containers: vec![node_container(view, mounts)],
        volumes: Some(volumes),
        affinity: Some(
            spec.pod_template
                .affinity
                .clone()
                .unwrap_or_else(|| spread_over_hosts(&selector)),
        ),
        tolerations: non_empty(spec.pod_template.tolerations.clone()),
        node_selector: (!spec.pod_template.node_selector.is_empty())
            .then(|| spec.pod_template.node_selector.clone()),
        topology_spread_constraints: non_empty(
            spec.pod_template.topology_spread_constraints.clone(),
        ),
        priority_class_name: spec.pod_template.priority_class_name.clone(),
        security_context: Some(pod_security(spec.pod_template.security_context.clone())),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        automount_service_account_token: Some(false),
        // Service links would put variables such as PROGLOG_PORT in the environment, where
        // the node reads its flags.
        enable_service_links: Some(false),
        ..PodSpec::default()
    };

    // Only labels that never change: the template cannot change once the StatefulSet exists.
    let mut claim_labels = view.labels("node");
    claim_labels.remove("app.kubernetes.io/version");
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_owned()),
            labels: Some(claim_labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    Ok(StatefulSet {
        metadata: view.metadata(view.name().to_owned(), "node")?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(view.headless_service_name()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(
                        if spec.storage.delete_claims_on_delete {
                            "Delete"
                        } else {
                            "Retain"
                        }
                        .to_owned(),
                    ),
                    // A pod scaled away keeps its data: if it comes back, it comes back with
                    // its quorum state rather than as an empty node.
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

/// The node container: shared settings from the ConfigMap, per-pod ones from the pod's name
/// and IP (Kubernetes expands `$(VAR)` from variables defined before).
fn node_container(view: &ClusterView<'_>, mounts: Vec<VolumeMount>) -> Container {
    let spec = view.spec();
    let ports = &spec.ports;
    let mut env = vec![
        field_env("PROGLOG_ID", "metadata.name"),
        field_env("POD_IP", "status.podIP"),
        value_env(
            "PROGLOG_ADVERTISE_ADDR",
            format!("$(PROGLOG_ID).{}:{}", view.headless_fqdn(), ports.rpc),
        ),
        value_env(
            "PROGLOG_GOSSIP_ADVERTISE_ADDR",
            format!("$(POD_IP):{}", ports.gossip),
        ),
    ];
    let cert = format!("{TLS_MOUNT}/$(PROGLOG_ID).crt");
    let key = format!("{TLS_MOUNT}/$(PROGLOG_ID).key");
    env.push(value_env("PROGLOG_PEER_TLS_CERT", cert.clone()));
    env.push(value_env("PROGLOG_PEER_TLS_KEY", key.clone()));
    if spec.tls.enabled {
        env.push(value_env("PROGLOG_TLS_CERT", cert));
        env.push(value_env("PROGLOG_TLS_KEY", key));
    }
    let readiness = if spec.tls.enabled {
        http_probe("/readyz", ports.metrics, 5, 3)
    } else {
        Probe {
            grpc: Some(GRPCAction {
                port: ports.rpc,
                service: Some(LOG_SERVICE.to_owned()),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Probe::default()
        }
    };
    Container {
        name: CONTAINER.to_owned(),
        image: Some(view.image()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().to_owned()),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: view.config_map_name(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env),
        ports: Some(vec![
            container_port("rpc", ports.rpc, "TCP"),
            container_port("peer", ports.peer, "TCP"),
            container_port("gossip-tcp", ports.gossip, "TCP"),
            container_port("gossip-udp", ports.gossip, "UDP"),
            container_port("metrics", ports.metrics, "TCP"),
        ]),
        readiness_probe: Some(readiness),
        liveness_probe: Some(http_probe("/healthz", ports.metrics, 10, 6)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The user's pod security context, or the default; either way with a group that owns the
/// mounted volumes (the node reads its key and certificate files as that group, and writes its
/// data directory), unless the user set one.
fn pod_security(user: Option<PodSecurityContext>) -> PodSecurityContext {
    let Some(mut user) = user else {
        return default_pod_security();
    };
    let default = default_pod_security();
    if user.fs_group.is_none() {
        user.fs_group = default.fs_group;
        user.fs_group_change_policy = user
            .fs_group_change_policy
            .or(default.fs_group_change_policy);
    }
    user
}

fn default_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NODE_USER),
        run_as_group: Some(NODE_USER),
        fs_group: Some(NODE_USER),
        // Chown a large volume only when its root is not already the node's.
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Prefer one node per host: losing a host then costs one replica. Preferred, not required,
/// so a small cluster (kind, one host) still schedules.
fn spread_over_hosts(selector: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector.clone()),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn container_port(name: &str, port: i32, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::{cluster, view};

    fn pod_spec(set: &StatefulSet) -> &PodSpec {
        set.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn env(container: &Container) -> BTreeMap<String, EnvVar> {
        container
            .env
            .iter()
            .flatten()
            .map(|var| (var.name.clone(), var.clone()))
            .collect()
    }

    #[test]
    fn a_user_security_context_keeps_the_group_that_can_read_the_volumes() {
        let mut cluster = cluster(3);
        cluster.spec.pod_template.security_context = Some(PodSecurityContext {
            run_as_user: Some(2000),
            ..PodSecurityContext::default()
        });
        let set = stateful_set(&view(&cluster), "abc").unwrap();
        let security = pod_spec(&set).security_context.clone().unwrap();
        assert_eq!(security.run_as_user, Some(2000));
        assert_eq!(security.fs_group, Some(NODE_USER));
        // One the user sets stays.
        cluster.spec.pod_template.security_context = Some(PodSecurityContext {
            fs_group: Some(3000),
            ..PodSecurityContext::default()
        });
        let set = stateful_set(&view(&cluster), "abc").unwrap();
        assert_eq!(
            pod_spec(&set).security_context.clone().unwrap().fs_group,
            Some(3000)
        );
    }

    #[test]
    fn pods_are_selected_by_stable_labels_and_carry_the_standard_ones() {
        let mut cluster = cluster(3);
        cluster
            .spec
            .pod_template
            .labels
            .insert("app.kubernetes.io/name".into(), "hijack".into());
        cluster
            .spec
            .pod_template
            .labels
            .insert("team".into(), "data".into());
        let view = view(&cluster);
        let set = stateful_set(&view, "abc").unwrap();
        let spec = set.spec.as_ref().unwrap();
        let selector = spec.selector.match_labels.clone().unwrap();
        assert_eq!(selector, view.selector_labels());
        assert!(!selector.contains_key("app.kubernetes.io/version"));
        let template = spec.template.metadata.as_ref().unwrap();
        let labels = template.labels.as_ref().unwrap();
        for (key, value) in &selector {
            assert_eq!(labels.get(key), Some(value), "{key}");
        }
        assert_eq!(labels["team"], "data");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "proglog-operator");
        assert_eq!(labels["app.kubernetes.io/version"], "0.3.0");
        assert_eq!(
            template.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION],
            "abc"
        );
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("events-headless"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert_eq!(
            set.metadata.owner_references.unwrap()[0].controller,
            Some(true)
        );
    }

    #[test]
    fn every_pod_gets_a_claim_of_the_asked_size_and_class() {
        let mut cluster = cluster(3);
        cluster.spec.storage.size = "50Gi".into();
        cluster.spec.storage.storage_class_name = Some("fast-ssd".into());
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let spec = set.spec.unwrap();
        let claims = spec.volume_claim_templates.unwrap();
        assert_eq!(claims.len(), 1);
        let claim = claims[0].spec.as_ref().unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some(DATA_VOLUME));
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast-ssd"));
        assert_eq!(
            claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            Quantity("50Gi".into())
        );
        let retention = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        assert!(
            container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == DATA_VOLUME
                    && m.mount_path == DATA_MOUNT
                    && m.read_only.is_none())
        );
    }

    #[test]
    fn claims_are_deleted_with_the_cluster_only_when_asked() {
        let mut cluster = cluster(1);
        cluster.spec.storage.delete_claims_on_delete = true;
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let retention = set
            .spec
            .unwrap()
            .persistent_volume_claim_retention_policy
            .unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    }

    #[test]
    fn environment_gives_each_node_its_own_id_and_addresses() {
        let cluster = cluster(3);
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let container = &pod_spec(&set).containers[0];
        let env = env(container);
        let id = env["PROGLOG_ID"].value_from.as_ref().unwrap();
        assert_eq!(id.field_ref.as_ref().unwrap().field_path, "metadata.name");
        assert_eq!(
            env["PROGLOG_ADVERTISE_ADDR"].value.as_deref(),
            Some("$(PROGLOG_ID).events-headless.prod.svc.cluster.local:8400")
        );
        assert_eq!(
            env["PROGLOG_GOSSIP_ADVERTISE_ADDR"].value.as_deref(),
            Some("$(POD_IP):8401")
        );
        // $(VAR) only expands variables defined earlier in the list.
        let order: Vec<_> = container
            .env
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        let position = |name| order.iter().position(|n| *n == name).unwrap();
        assert!(position("PROGLOG_ID") < position("PROGLOG_ADVERTISE_ADDR"));
        assert!(position("POD_IP") < position("PROGLOG_GOSSIP_ADVERTISE_ADDR"));
        assert!(!env.contains_key("PROGLOG_TLS_CERT"));
        let from = &container.env_from.as_ref().unwrap()[0];
        assert_eq!(from.config_map_ref.as_ref().unwrap().name, "events-config");
    }

    #[test]
    fn plaintext_readiness_is_the_grpc_health_check_and_liveness_is_http() {
        let cluster = cluster(3);
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let container = &pod_spec(&set).containers[0];
        let readiness = container.readiness_probe.as_ref().unwrap();
        let grpc = readiness.grpc.as_ref().unwrap();
        assert_eq!(grpc.port, 8400);
        assert_eq!(grpc.service.as_deref(), Some("log.v1.Log"));
        let liveness = container
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
        assert_eq!(liveness.port, IntOrString::Int(9400));
    }

    #[test]
    fn tls_mounts_the_certificates_and_probes_over_http() {
        let mut cluster = cluster(3);
        cluster.spec.tls.enabled = true;
        cluster.spec.acl.enabled = true;
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let pod = pod_spec(&set);
        let container = &pod.containers[0];
        let env = env(container);
        assert_eq!(
            env["PROGLOG_TLS_CERT"].value.as_deref(),
            Some("/etc/proglog/tls/$(PROGLOG_ID).crt")
        );
        assert_eq!(
            env["PROGLOG_TLS_KEY"].value.as_deref(),
            Some("/etc/proglog/tls/$(PROGLOG_ID).key")
        );
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert!(readiness.grpc.is_none());
        let http = readiness.http_get.as_ref().unwrap();
        assert_eq!(http.path.as_deref(), Some("/readyz"));
        assert_eq!(http.port, IntOrString::Int(9400));
        let volumes = pod.volumes.as_ref().unwrap();
        let tls = volumes.iter().find(|v| v.name == "tls").unwrap();
        let secret = tls.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("events-tls"));
        assert_eq!(secret.default_mode, Some(0o440));
        let acl = volumes.iter().find(|v| v.name == "acl").unwrap();
        assert_eq!(acl.config_map.as_ref().unwrap().name, "events-acl");
        let mounts = container.volume_mounts.as_ref().unwrap();
        for (name, path) in [("tls", TLS_MOUNT), ("acl", ACL_MOUNT)] {
            assert!(
                mounts
                    .iter()
                    .any(|m| m.name == name && m.mount_path == path && m.read_only == Some(true)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_node_runs_locked_down() {
        let cluster = cluster(3);
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let pod = pod_spec(&set);
        let security = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_user, Some(NODE_USER));
        assert_eq!(pod_security.fs_group, Some(NODE_USER));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        // The read-only root leaves /tmp writable through an emptyDir.
        assert!(
            pod.volumes
                .iter()
                .flatten()
                .any(|v| v.name == "tmp" && v.empty_dir.is_some())
        );
        assert!(
            pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/tmp")
        );
    }

    #[test]
    fn pods_spread_over_hosts_unless_the_user_sets_affinity() {
        let mut cluster = cluster(3);
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let anti = pod_spec(&set)
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap();
        let term = &anti
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            term.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert_eq!(
            term.pod_affinity_term
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap(),
            &view(&cluster).selector_labels()
        );
        assert!(
            anti.required_during_scheduling_ignored_during_execution
                .is_none()
        );

        cluster.spec.pod_template.affinity = Some(Affinity::default());
        cluster.spec.pod_template.priority_class_name = Some("critical".into());
        let set = stateful_set(&view(&cluster), "h").unwrap();
        let pod = pod_spec(&set);
        assert_eq!(pod.affinity, Some(Affinity::default()));
        assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));
    }

    #[test]
    fn image_follows_the_version_unless_set() {
        let mut cluster = cluster(1);
        let set = stateful_set(&view(&cluster), "h").unwrap();
        assert_eq!(
            pod_spec(&set).containers[0].image.as_deref(),
            Some("ghcr.io/proglog/proglog-node:0.3.0")
        );
        cluster.spec.image = Some("registry.example/proglog:dev".into());
        let set = stateful_set(&view(&cluster), "h").unwrap();
        assert_eq!(
            pod_spec(&set).containers[0].image.as_deref(),
            Some("registry.example/proglog:dev")
        );
    }
}
