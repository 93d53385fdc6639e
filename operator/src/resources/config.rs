//! The two ConfigMaps: `NAME-config`, the settings every node shares as `PROGLOG_*`
//! environment variables (each node flag reads one), and `NAME-acl`, the ACL's model and
//! policy as files.
//!
//! They are separate because they change differently. A changed setting needs the nodes
//! restarted (the pod template carries [`config_hash`], so the change shows in the
//! StatefulSet), while the nodes reload the ACL files by themselves when the kubelet updates
//! the mounted ConfigMap, without a restart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{ACL_MOUNT, ClusterView, DATA_DIR, SpecError, TLS_MOUNT};
use crate::tls::{CA_CERT, OPERATOR_COMMON_NAME};

/// File name of the Casbin model under the ACL mount.
pub const ACL_MODEL_FILE: &str = "model.conf";
/// File name of the Casbin policy under the ACL mount.
pub const ACL_POLICY_FILE: &str = "policy.csv";

/// proglog's Casbin model, used when the user's ConfigMap has none.
pub const PROGLOG_MODEL: &str = "[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
";

/// The seeds only matter when a node starts, and they change with every scale: they are left
/// out of the hash so scaling does not restart the nodes that are already running.
const UNHASHED_KEYS: &[&str] = &["PROGLOG_JOIN"];

/// The user's ACL ConfigMap (`spec.acl.configMapName`), as read from the cluster or a file.
#[derive(Debug, Clone, Copy)]
pub struct AclSource<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its data.
    pub data: &'a BTreeMap<String, String>,
}

/// `NAME-config`: the settings every node shares, as `PROGLOG_*` variables (the node's flags
/// of the same names). Per-pod values (id, advertised addresses, certificate files) are set
/// in the StatefulSet from the pod's own name and IP. The listeners bind the IPv6 wildcard,
/// which takes IPv4 connections too (the node falls back to `0.0.0.0` where the kernel has no
/// IPv6), so the same objects serve IPv4, IPv6 and dual-stack clusters.
pub fn config_map(view: &ClusterView<'_>) -> Result<ConfigMap, SpecError> {
    let spec = view.spec();
    let ports = &spec.ports;
    let mut data = BTreeMap::from([
        ("PROGLOG_DATA_DIR", DATA_DIR.to_owned()),
        ("PROGLOG_RPC_ADDR", format!("[::]:{}", ports.rpc)),
        ("PROGLOG_HTTP_ADDR", format!("[::]:{}", ports.metrics)),
        ("PROGLOG_GOSSIP_ADDR", format!("[::]:{}", ports.gossip)),
        ("PROGLOG_JOIN", view.seed_peers().join(",")),
        ("PROGLOG_INITIAL_VOTERS", view.initial_voter_ids().join(",")),
        (
            "PROGLOG_DURABILITY",
            spec.log.durability.as_str().to_owned(),
        ),
        ("PROGLOG_LOG_FORMAT", "json".to_owned()),
    ]);
    let log = &spec.log;
    for (key, value) in [
        ("PROGLOG_SEGMENT_BYTES", log.segment_bytes),
        ("PROGLOG_RETENTION_BYTES", log.retention_bytes),
        ("PROGLOG_RETENTION_HOURS", log.retention_hours),
        ("PROGLOG_MAX_RECORD_BYTES", log.max_record_bytes),
    ] {
        if let Some(value) = value {
            data.insert(key, value.to_string());
        }
    }
    // The peer and admin services on their own port, always mutual TLS with the cluster's CA;
    // the operator's certificate may administer (an ACL, when on, decides instead).
    data.insert("PROGLOG_PEER_ADDR", format!("[::]:{}", spec.ports.peer));
    data.insert("PROGLOG_PEER_TLS_CA", format!("{TLS_MOUNT}/{CA_CERT}"));
    data.insert("PROGLOG_ADMIN_SUBJECTS", OPERATOR_COMMON_NAME.to_owned());
    if spec.tls.enabled {
        data.insert("PROGLOG_TLS_CLIENT_CA", format!("{TLS_MOUNT}/{CA_CERT}"));
    }
    if spec.acl.enabled {
        data.insert("PROGLOG_ACL_MODEL", format!("{ACL_MOUNT}/{ACL_MODEL_FILE}"));
        data.insert(
            "PROGLOG_ACL_POLICY",
            format!("{ACL_MOUNT}/{ACL_POLICY_FILE}"),
        );
    }
    Ok(ConfigMap {
        metadata: view.metadata(view.config_map_name(), "config")?,
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        ),
        ..ConfigMap::default()
    })
}

/// `NAME-acl`, when the ACL is on: the model (the user's, or proglog's) and a policy that
/// starts with what the cluster itself needs (each node of `0..node_count` may `replicate` and
/// `produce`, the operator may `admin`), followed by the user's policy.
pub fn acl_config_map(
    view: &ClusterView<'_>,
    source: Option<AclSource<'_>>,
    node_count: u32,
) -> Result<Option<ConfigMap>, SpecError> {
    let acl = &view.spec().acl;
    if !acl.enabled {
        return Ok(None);
    }
    let user = match (&acl.config_map_name, source) {
        (None, _) => None,
        (Some(wanted), Some(source)) if wanted == source.name => Some(source.data),
        (Some(wanted), _) => {
            return Err(SpecError::Invalid {
                name: view.name().to_owned(),
                field: "spec.acl.configMapName",
                reason: format!("ConfigMap {wanted} was not found"),
            });
        }
    };
    let user_policy = match user {
        None => None,
        Some(data) => Some(
            data.get(&acl.policy_key)
                .ok_or_else(|| SpecError::Invalid {
                    name: view.name().to_owned(),
                    field: "spec.acl.policyKey",
                    reason: format!(
                        "ConfigMap {} has no key `{}`",
                        acl.config_map_name.as_deref().unwrap_or_default(),
                        acl.policy_key
                    ),
                })?,
        ),
    };
    let model = user
        .and_then(|data| data.get(&acl.model_key))
        .map_or(PROGLOG_MODEL.to_owned(), Clone::clone);

    let mut policy = String::from(
        "# Written by the proglog operator. The nodes replicate, and forward produces to the\n\
         # leader, with their own certificates; the operator administers the cluster.\n",
    );
    for ordinal in 0..node_count {
        let node = view.pod_name(ordinal);
        policy.push_str(&format!("p, {node}, *, replicate\np, {node}, *, produce\n"));
    }
    policy.push_str(&format!("p, {OPERATOR_COMMON_NAME}, *, admin\n"));
    if let (Some(text), Some(name)) = (user_policy, &acl.config_map_name) {
        policy.push_str(&format!(
            "# From ConfigMap {name}, key {}:\n",
            acl.policy_key
        ));
        policy.push_str(text);
        if !text.ends_with('\n') {
            policy.push('\n');
        }
    }
    Ok(Some(ConfigMap {
        metadata: view.metadata(view.acl_config_map_name(), "acl")?,
        data: Some(BTreeMap::from([
            (ACL_MODEL_FILE.to_owned(), model),
            (ACL_POLICY_FILE.to_owned(), policy),
        ])),
        ..ConfigMap::default()
    }))
}

/// A fingerprint of the settings that need a restart to take effect (FNV-1a, 64 bits, hex):
/// stable across runs and builds, unlike `std`'s hasher.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut text = Vec::new();
    for (key, value) in config_map.data.iter().flatten() {
        if UNHASHED_KEYS.contains(&key.as_str()) {
            continue;
        }
        text.extend_from_slice(key.as_bytes());
        text.push(b'=');
        text.extend_from_slice(value.as_bytes());
        text.push(b'\n');
    }
    fingerprint(&text)
}

/// FNV-1a (64 bits) of `bytes`, as 16 hex digits: stable across runs and builds, unlike
/// `std`'s hasher. Not for secrecy.
pub fn fingerprint(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::{cluster, view};

    fn data(config_map: &ConfigMap) -> &BTreeMap<String, String> {
        config_map.data.as_ref().unwrap()
    }

    #[test]
    fn settings_map_onto_the_node_flags() {
        let mut cluster = cluster(3);
        cluster.spec.log.segment_bytes = Some(64 << 20);
        cluster.spec.log.retention_hours = Some(48);
        cluster.spec.log.durability = crate::crd::Durability::Interval;
        let config = config_map(&view(&cluster)).unwrap();
        let data = data(&config);
        assert_eq!(config.metadata.name.as_deref(), Some("events-config"));
        assert_eq!(data["PROGLOG_DATA_DIR"], "/var/lib/proglog/data");
        assert_eq!(data["PROGLOG_RPC_ADDR"], "[::]:8400");
        assert_eq!(data["PROGLOG_HTTP_ADDR"], "[::]:9400");
        assert_eq!(data["PROGLOG_GOSSIP_ADDR"], "[::]:8401");
        assert_eq!(data["PROGLOG_INITIAL_VOTERS"], "events-0,events-1,events-2");
        assert_eq!(
            data["PROGLOG_JOIN"].split(',').count(),
            3,
            "{}",
            data["PROGLOG_JOIN"]
        );
        assert_eq!(data["PROGLOG_SEGMENT_BYTES"], "67108864");
        assert_eq!(data["PROGLOG_RETENTION_HOURS"], "48");
        assert_eq!(data["PROGLOG_DURABILITY"], "interval");
        assert_eq!(data["PROGLOG_LOG_FORMAT"], "json");
        assert!(!data.contains_key("PROGLOG_RETENTION_BYTES"));
        assert!(!data.contains_key("PROGLOG_TLS_CLIENT_CA"));
        assert!(!data.contains_key("PROGLOG_ACL_MODEL"));
        // Clients in plaintext, peers over mutual TLS on their own port, the operator admin.
        assert_eq!(data["PROGLOG_PEER_ADDR"], "[::]:8402");
        assert_eq!(data["PROGLOG_PEER_TLS_CA"], "/etc/proglog/tls/ca.crt");
        assert_eq!(data["PROGLOG_ADMIN_SUBJECTS"], "proglog-operator");
    }

    #[test]
    fn tls_and_acl_point_at_the_mounted_files() {
        let mut cluster = cluster(3);
        cluster.spec.tls.enabled = true;
        cluster.spec.acl.enabled = true;
        let config = config_map(&view(&cluster)).unwrap();
        let data = data(&config);
        assert_eq!(data["PROGLOG_TLS_CLIENT_CA"], "/etc/proglog/tls/ca.crt");
        assert_eq!(data["PROGLOG_ACL_MODEL"], "/etc/proglog/acl/model.conf");
        assert_eq!(data["PROGLOG_ACL_POLICY"], "/etc/proglog/acl/policy.csv");
    }

    #[test]
    fn scaling_changes_the_seeds_but_not_the_hash() {
        let three = cluster(3);
        let mut five = cluster(5);
        five.metadata.annotations = Some(BTreeMap::from([(
            crate::crd::INITIAL_VOTERS_ANNOTATION.to_owned(),
            "3".to_owned(),
        )]));
        let (a, b) = (
            config_map(&view(&three)).unwrap(),
            config_map(&view(&five)).unwrap(),
        );
        assert_ne!(data(&a)["PROGLOG_JOIN"], data(&b)["PROGLOG_JOIN"]);
        assert_eq!(config_hash(&a), config_hash(&b));
        let mut durable = cluster(3);
        durable.spec.log.durability = crate::crd::Durability::Never;
        assert_ne!(
            config_hash(&a),
            config_hash(&config_map(&view(&durable)).unwrap())
        );
    }

    #[test]
    fn acl_policy_grants_the_cluster_its_own_rights_before_the_users() {
        let mut cluster = cluster(3);
        cluster.spec.tls.enabled = true;
        cluster.spec.acl.enabled = true;
        cluster.spec.acl.config_map_name = Some("events-users".into());
        let user = BTreeMap::from([("policy.csv".to_owned(), "p, alice, *, produce".to_owned())]);
        let source = AclSource {
            name: "events-users",
            data: &user,
        };
        let acl = acl_config_map(&view(&cluster), Some(source), 4)
            .unwrap()
            .unwrap();
        let data = data(&acl);
        let policy = &data["policy.csv"];
        for line in [
            "p, events-0, *, replicate",
            "p, events-3, *, produce",
            "p, proglog-operator, *, admin",
            "p, alice, *, produce",
        ] {
            assert!(policy.lines().any(|l| l == line), "{line} in\n{policy}");
        }
        assert!(policy.ends_with('\n'));
        assert_eq!(data["model.conf"], PROGLOG_MODEL);

        let missing = acl_config_map(&view(&cluster), None, 3).unwrap_err();
        assert!(missing.to_string().contains("events-users"), "{missing}");
        let no_key = BTreeMap::from([("other".to_owned(), String::new())]);
        let err = acl_config_map(
            &view(&cluster),
            Some(AclSource {
                name: "events-users",
                data: &no_key,
            }),
            3,
        )
        .unwrap_err();
        assert!(err.to_string().contains("policy.csv"), "{err}");
    }

    #[test]
    fn no_acl_config_map_without_acl() {
        assert!(
            acl_config_map(&view(&cluster(3)), None, 3)
                .unwrap()
                .is_none()
        );
    }
}
