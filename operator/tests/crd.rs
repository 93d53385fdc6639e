//! The generated CRD: the committed `crds/logcluster.yaml` is what `crdgen` prints, and its CEL
//! rules accept and refuse what they should (evaluated client-side with kube's CEL library,
//! which implements the Kubernetes extensions the rules use: `quantity`, `isQuantity`).

#![allow(clippy::unwrap_used)] // test helpers: a failure is the test failing

use kube::CustomResourceExt;
use proglog_operator::crd::LogCluster;
use serde_json::{Value, json};

#[test]
fn committed_crd_is_what_crdgen_prints() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/logcluster.yaml");
    let generated = proglog_operator::crd_yaml().unwrap();
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "crds/logcluster.yaml is out of date; regenerate it with\n  \
         cargo run -p proglog-operator --bin crdgen > crds/logcluster.yaml"
    );
}

fn schema() -> Value {
    let crd = LogCluster::crd();
    let schema = crd.spec.versions[0].schema.clone().unwrap();
    serde_json::to_value(schema.open_api_v3_schema.unwrap()).unwrap()
}

/// A LogCluster as the API server would hold it, defaults filled in.
fn cluster(spec_changes: Value) -> Value {
    let mut object = json!({
        "apiVersion": "proglog.dev/v1alpha1",
        "kind": "LogCluster",
        "metadata": {"name": "events", "namespace": "prod"},
        "spec": {
            "replicas": 3,
            "imagePullPolicy": "IfNotPresent",
            "storage": {"size": "10Gi", "deleteClaimsOnDelete": false},
            "podTemplate": {},
            "log": {"durability": "always"},
            "tls": {"enabled": false, "issuer": {"kind": "Operator"},
                    "caValidity": "87600h", "certValidity": "2160h", "renewBefore": "720h"},
            "acl": {"enabled": false, "policyKey": "policy.csv", "modelKey": "model.conf"},
            "paused": false,
            "ports": {"rpc": 8400, "gossip": 8401, "metrics": 9400},
            "service": {"type": "ClusterIP"},
            "pdb": {"maxUnavailable": 1}
        }
    });
    merge(&mut object["spec"], spec_changes);
    object
}

fn merge(target: &mut Value, changes: Value) {
    match (target, changes) {
        (Value::Object(target), Value::Object(changes)) => {
            for (key, value) in changes {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, changes) => *target = changes,
    }
}

fn errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn refused(object: &Value, old: Option<&Value>, message: &str) {
    let errors = errors(object, old);
    assert!(
        errors.iter().any(|e| e.contains(message)),
        "expected `{message}` among {errors:?}"
    );
}

#[test]
fn a_defaulted_cluster_is_valid_on_create_and_update() {
    let object = cluster(json!({}));
    assert_eq!(errors(&object, None), Vec::<String>::new());
    assert_eq!(errors(&object, Some(&object)), Vec::<String>::new());
}

#[test]
fn replicas_below_one_are_refused() {
    refused(&cluster(json!({"replicas": 0})), None, "at least 1");
}

#[test]
fn storage_may_grow_but_never_shrink() {
    let old = cluster(json!({"storage": {"size": "10Gi"}}));
    let grown = cluster(json!({"storage": {"size": "20Gi"}}));
    assert_eq!(errors(&grown, Some(&old)), Vec::<String>::new());
    // Same amount, other unit: not a shrink.
    let same = cluster(json!({"storage": {"size": "10240Mi"}}));
    assert_eq!(errors(&same, Some(&old)), Vec::<String>::new());
    refused(
        &cluster(json!({"storage": {"size": "9Gi"}})),
        Some(&old),
        "never shrink",
    );
    refused(
        &cluster(json!({"storage": {"size": "lots"}})),
        None,
        "quantity",
    );
}

#[test]
fn immutable_fields_cannot_change() {
    let old = cluster(json!({"storage": {"storageClassName": "fast"}}));
    refused(
        &cluster(json!({"storage": {"storageClassName": "slow"}})),
        Some(&old),
        "storageClassName cannot change",
    );
    refused(
        &cluster(json!({})),
        Some(&old),
        "storageClassName cannot change",
    );
    let operator_ca = cluster(json!({"tls": {"enabled": true}}));
    refused(
        &cluster(
            json!({"tls": {"enabled": true, "issuer": {"kind": "Secret", "secretName": "ca"}}}),
        ),
        Some(&operator_ca),
        "issuer.kind cannot change",
    );
    refused(
        &operator_ca,
        Some(&cluster(json!({}))),
        "tls.enabled cannot change",
    );
    refused(
        &cluster(json!({"ports": {"gossip": 7000}})),
        Some(&cluster(json!({}))),
        "ports.gossip cannot change",
    );
}

#[test]
fn combinations_that_cannot_work_are_refused() {
    refused(
        &cluster(json!({"acl": {"enabled": true}})),
        None,
        "needs tls.enabled",
    );
    refused(
        &cluster(json!({"tls": {"enabled": true, "issuer": {"kind": "Secret"}}})),
        None,
        "needs tls.issuer.secretName",
    );
    refused(
        &cluster(json!({"tls": {"renewBefore": "2160h"}})),
        None,
        "renewBefore must be shorter",
    );
    refused(
        &cluster(json!({"ports": {"metrics": 8400}})),
        None,
        "must differ",
    );
    refused(
        &cluster(json!({"pdb": {"maxUnavailable": -1}})),
        None,
        "cannot be negative",
    );
    let mut long_name = cluster(json!({}));
    long_name["metadata"]["name"] = json!("x".repeat(53));
    refused(&long_name, None, "at most 52");
}
