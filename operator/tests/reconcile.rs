//! Reconcile scenarios against a fake API server (`tower-test`) and scripted nodes: each
//! asserts the requests a pass made (method, path, field manager and `force` for server-side
//! apply, the parts of the body that matter) and what the status says afterwards.

#![allow(clippy::unwrap_used)] // test code: a failure is the test failing

mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use fixtures::{
    CLUSTER_PATH, Env, STS_PATH, event_reasons, find, log_cluster, nodes, synced_quorum, writes,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use proglog_operator::controller::{self, Error};
use proglog_operator::crd::LogCluster;
use proglog_operator::plan::ReplicaProgress;
use serde_json::json;

const SECRETS: &str = "/api/v1/namespaces/prod/secrets";
const CONFIGMAPS: &str = "/api/v1/namespaces/prod/configmaps";
const SERVICES: &str = "/api/v1/namespaces/prod/services";
const PDB: &str = "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/events";
const PODS: &str = "/api/v1/namespaces/prod/pods";
const NETWORK_POLICY: &str =
    "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/events-peers";

fn tls_on() -> serde_json::Value {
    json!({"tls": {"enabled": true}})
}

#[tokio::test]
async fn first_creation_applies_every_child_once_with_the_field_manager() {
    let env = Env::new(log_cluster(tls_on()));
    let (result, requests) = env.pass().await;
    result.unwrap();
    let all: Vec<String> = requests
        .iter()
        .filter(|request| !request.is_event())
        .map(|request| request.line())
        .collect();
    assert_eq!(
        all,
        [
            format!("GET {STS_PATH}"),
            format!("GET {PODS}"),
            format!("PATCH {CLUSTER_PATH}"),
            format!("GET {SECRETS}/events-tls"),
            format!("GET {SECRETS}/events-operator-tls"),
            format!("GET {SECRETS}/events-ca"),
            format!("PATCH {SECRETS}/events-ca"),
            format!("PATCH {SECRETS}/events-tls"),
            format!("PATCH {SECRETS}/events-operator-tls"),
            format!("GET {CONFIGMAPS}/events-config"),
            format!("PATCH {CONFIGMAPS}/events-config"),
            format!("GET {SERVICES}/events-headless"),
            format!("PATCH {SERVICES}/events-headless"),
            format!("GET {SERVICES}/events"),
            format!("PATCH {SERVICES}/events"),
            format!("GET {PDB}"),
            format!("PATCH {PDB}"),
            format!("GET {NETWORK_POLICY}"),
            format!("PATCH {NETWORK_POLICY}"),
            format!("PATCH {STS_PATH}"),
            format!("PATCH {CLUSTER_PATH}/status"),
        ]
    );
    // The founding quorum is fixed first, by merge patch with the operator's field manager.
    let bootstrap = find(&requests, "PATCH", CLUSTER_PATH);
    assert_eq!(bootstrap.content_type, "application/merge-patch+json");
    assert!(bootstrap.query.contains("fieldManager=proglog-operator"));
    assert_eq!(
        bootstrap.body["metadata"]["annotations"]["proglog.dev/initial-voters"],
        "3"
    );
    // Every child: server-side apply, one field manager, force, owned by the LogCluster.
    for request in requests
        .iter()
        .filter(|request| request.method == "PATCH" && !request.is_event())
    {
        if request.path == CLUSTER_PATH {
            continue;
        }
        assert!(request.is_operator_apply(), "{request:?}");
        if !request.path.ends_with("/status") {
            let owner = &request.body["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "LogCluster", "{}", request.path);
            assert_eq!(owner["uid"], "cluster-uid");
            assert_eq!(owner["controller"], true);
        }
    }
    let sts = find(&requests, "PATCH", STS_PATH);
    assert_eq!(sts.body["spec"]["replicas"], 3);
    assert_eq!(sts.body["spec"]["updateStrategy"]["type"], "OnDelete");
    let config = find(&requests, "PATCH", &format!("{CONFIGMAPS}/events-config"));
    assert!(
        config.body["data"]["PROGLOG_INITIAL_VOTERS"]
            .as_str()
            .unwrap()
            .contains("events-2")
    );
    let tls = find(&requests, "PATCH", &format!("{SECRETS}/events-tls"));
    for key in ["ca.crt", "events-0.crt", "events-0.key", "events-2.key"] {
        assert!(tls.body["data"][key].is_string(), "{key}");
    }
    assert_eq!(
        event_reasons(&requests),
        ["CertificatesIssued", "Created", "StatefulSetCreated"]
    );
    // Status: not ready yet, certificates valid, dates reported.
    let status = env.status();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/component=node,app.kubernetes.io/instance=events,app.kubernetes.io/name=proglog"
    );
    assert!(status["caNotAfter"].is_string() && status["certsNotAfter"].is_string());
    assert_eq!(env.condition("Ready").0, "False");
    assert_eq!(env.condition("CertificatesReady").0, "True");
    assert_eq!(env.condition("ReconciliationPaused").0, "False");
}

fn pod(ordinal: u32) -> String {
    format!("{PODS}/events-{ordinal}")
}

fn fqdn(pod: &str) -> String {
    format!("{pod}.events-headless.prod.svc.cluster.local")
}

/// The timeline without status writes (every pass that changes something also writes status).
fn actions(env: &Env) -> Vec<String> {
    env.take_timeline()
        .into_iter()
        .filter(|line| !line.ends_with("/status"))
        .collect()
}

/// The writes of a pass other than the status.
fn changes(requests: &[fixtures::Recorded]) -> Vec<String> {
    writes(requests)
        .into_iter()
        .filter(|line| !line.ends_with("/status"))
        .collect()
}

fn stored_cluster(env: &Env) -> Arc<LogCluster> {
    Arc::new(
        serde_json::from_value(env.store.lock().unwrap().get(CLUSTER_PATH).unwrap().clone())
            .unwrap(),
    )
}

fn advance(env: &Env, days: i64) {
    let mut now = env.now.lock().unwrap();
    *now = now
        .checked_add(SignedDuration::from_hours(24 * days))
        .unwrap();
}

fn time_of(value: &serde_json::Value) -> Timestamp {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_second_pass_over_a_steady_cluster_writes_nothing() {
    let env = Env::steady(3, tls_on()).await;
    assert_eq!(env.condition("Ready").0, "True", "{}", env.status());
    assert_eq!(env.condition("Degraded").0, "False");
    assert_eq!(env.status()["leader"], "events-0");
    assert_eq!(env.status()["members"][1]["role"], "follower");
    let (result, requests) = env.pass().await;
    assert_eq!(result.unwrap(), Action::requeue(controller::STEADY_REQUEUE));
    assert!(
        requests.iter().all(|request| request.method == "GET"),
        "{:#?}",
        writes(&requests)
    );
    assert!(event_reasons(&requests).is_empty());
    // A ready pod was asked on its peer port (the client Service does not expose it), and the
    // leader answered.
    let calls = env.admin.status_calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().unwrap(),
        "events-0.events-headless.prod.svc.cluster.local:8402"
    );
}

/// Producers at work: every node's log end moves between passes.
fn produce(env: &Env, records: u64) {
    env.edit_quorum(|quorum| {
        quorum.end_offset += records;
        quorum.high_watermark += records;
        for replica in &mut quorum.replicas {
            replica.end_offset += records;
        }
    });
}

#[tokio::test]
async fn produce_load_writes_no_status_and_starts_no_pass() {
    let env = Env::steady(3, json!({})).await;
    let (passes, status_writes) = env.run_triggered(20, |env| produce(env, 500)).await;
    assert_eq!((passes, status_writes), (1, 0), "{}", env.status());
    assert_eq!(env.status()["members"][1]["inSync"], true);
    assert_eq!(env.status()["epoch"], 1);
    // The lag is a metric: each member's series, the leader's at 0.
    let text = env.ctx.metrics.encode().unwrap();
    for member in ["events-0", "events-1", "events-2"] {
        assert!(
            text.contains(&format!(
                "proglog_operator_member_lag_records{{namespace=\"prod\",cluster=\"events\",member=\"{member}\"}} 0"
            )),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_follower_that_falls_behind_is_reported_once_and_settles() {
    let env = Env::steady(3, json!({})).await;
    // events-2 stops fetching while the others go on.
    let behind = |env: &Env| {
        env.edit_quorum(|quorum| {
            quorum.end_offset += 6_000;
            quorum.high_watermark += 6_000;
            for replica in &mut quorum.replicas {
                if replica.id == "events-2" {
                    replica.lag += 6_000;
                    replica.last_fetch_ago_ms += 6_000;
                } else {
                    replica.end_offset += 6_000;
                }
            }
        });
    };
    let (passes, status_writes) = env.run_triggered(20, behind).await;
    assert_eq!((passes, status_writes), (1, 0), "still within the bounds");
    let (passes, status_writes) = env.run_triggered(20, behind).await;
    assert_eq!((passes, status_writes), (1, 1), "out of sync: one write");
    assert_eq!(env.status()["members"][2]["inSync"], false);
    assert_eq!(env.status()["members"][1]["inSync"], true);
    let (passes, status_writes) = env.run_triggered(20, behind).await;
    assert_eq!((passes, status_writes), (1, 0), "nothing new to say");
    // Status writes start no pass, so a member out of sync is looked at again soon.
    let (result, _) = env.pass().await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(controller::PROGRESS_REQUEUE)
    );
    let text = env.ctx.metrics.encode().unwrap();
    assert!(text.contains("member=\"events-2\"} 18000"), "{text}");

    // Scaled to two, events-2's series goes.
    env.change_spec(json!({"replicas": 2}));
    env.edit_quorum(|quorum| quorum.replicas.retain(|replica| replica.id != "events-2"));
    env.pass().await.0.unwrap();
    let text = env.ctx.metrics.encode().unwrap();
    assert!(!text.contains("member=\"events-2\""), "{text}");
}

#[test]
fn a_change_to_the_users_acl_config_map_or_ca_secret_starts_a_pass_over_its_clusters() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::ObjectRef;
    let cluster = |name: &str, namespace: &str, spec: serde_json::Value| -> Arc<LogCluster> {
        let mut object = log_cluster(spec);
        object["metadata"]["name"] = json!(name);
        object["metadata"]["namespace"] = json!(namespace);
        Arc::new(serde_json::from_value(object).unwrap())
    };
    let clusters = [
        cluster(
            "a",
            "prod",
            json!({"tls": {"enabled": true, "issuer": {"kind": "Secret", "secretName": "team-ca"}},
                                     "acl": {"enabled": true, "configMapName": "policy"}}),
        ),
        cluster(
            "b",
            "prod",
            json!({"acl": {"enabled": true, "configMapName": "policy"}}),
        ),
        cluster(
            "c",
            "dev",
            json!({"acl": {"enabled": true, "configMapName": "policy"}}),
        ),
    ];
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some("prod".into()),
        ..ObjectMeta::default()
    };
    let names = |refs: Vec<ObjectRef<LogCluster>>| -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    };
    let policy = ConfigMap {
        metadata: meta("policy"),
        ..ConfigMap::default()
    };
    assert_eq!(
        names(controller::clusters_naming(
            &clusters,
            controller::Referenced::AclConfigMap,
            &policy
        )),
        ["a", "b"]
    );
    let ca = Secret {
        metadata: meta("team-ca"),
        ..Secret::default()
    };
    assert_eq!(
        names(controller::clusters_naming(
            &clusters,
            controller::Referenced::CaSecret,
            &ca
        )),
        ["a"]
    );
    let other = Secret {
        metadata: meta("policy"),
        ..Secret::default()
    };
    assert!(
        controller::clusters_naming(&clusters, controller::Referenced::CaSecret, &other).is_empty()
    );
}

#[test]
fn only_spec_and_annotation_changes_of_a_cluster_start_a_pass() {
    let cluster = |changes: serde_json::Value| -> LogCluster {
        let mut object = fixtures::log_cluster(json!({}));
        object["metadata"]["resourceVersion"] = json!("7");
        object["metadata"]["generation"] = json!(3);
        for (key, value) in changes.as_object().unwrap() {
            match key.as_str() {
                "status" => object["status"] = value.clone(),
                key => object["metadata"][key] = value.clone(),
            }
        }
        serde_json::from_value(object).unwrap()
    };
    let base = controller::cluster_trigger(&cluster(json!({})));
    assert!(base.is_some());
    // The operator's own status write: a new resource version, nothing else.
    let status = cluster(json!({"resourceVersion": "8", "status": {"replicas": 3}}));
    assert_eq!(controller::cluster_trigger(&status), base);
    // A label a user adds does not either.
    let labelled = cluster(json!({"labels": {"team": "payments"}}));
    assert_eq!(controller::cluster_trigger(&labelled), base);
    let spec = cluster(json!({"generation": 4}));
    assert_ne!(controller::cluster_trigger(&spec), base);
    let paused = cluster(json!({"annotations": {"proglog.dev/paused": "true"}}));
    assert_ne!(controller::cluster_trigger(&paused), base);
}

#[tokio::test]
async fn quantities_the_api_server_rewrites_are_applied_once() {
    let env = Env::steady(
        3,
        json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"},
                             "limits": {"memory": "1.5Gi"}}}),
    )
    .await;
    let stored = env.store.lock().unwrap().get(STS_PATH).unwrap().clone();
    let resources = &stored["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"]["cpu"], "500m", "{resources}");
    assert_eq!(resources["requests"]["memory"], "1Gi");
    assert_eq!(resources["limits"]["memory"], "1536Mi");
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert!(writes(&requests).is_empty(), "{:#?}", writes(&requests));
}

#[tokio::test]
async fn an_image_change_rolls_one_pod_at_a_time_followers_first_leader_last() {
    let env = Env::steady(3, json!({})).await;
    env.change_spec(json!({"image": "example.com/proglog:2"}));

    // The template changes; nothing is deleted before the StatefulSet controller has a revision.
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert_eq!(
        writes(&requests),
        [
            format!("PATCH {STS_PATH}"),
            format!("PATCH {CLUSTER_PATH}/status")
        ]
    );
    let sts = find(&requests, "PATCH", STS_PATH);
    assert!(sts.is_operator_apply());
    assert_eq!(
        sts.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.com/proglog:2"
    );
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert_eq!(writes(&requests), [format!("PATCH {CLUSTER_PATH}/status")]);
    assert_eq!(env.condition("Progressing").1, "Rolling");

    // The StatefulSet controller makes revision rev2: the highest follower goes first.
    env.run_statefulset("rev2");
    let (result, requests) = env.pass().await;
    assert_eq!(
        result.unwrap(),
        Action::requeue(controller::PROGRESS_REQUEUE)
    );
    assert_eq!(changes(&requests), [format!("POST {}/eviction", pod(2))]);
    assert_eq!(event_reasons(&requests), ["PodRolled"]);
    assert_eq!(env.condition("Progressing").1, "Rolling");
    assert_eq!(env.condition("Ready").0, "False");

    // Until it is back, Ready and caught up, nothing else is deleted.
    let (_, requests) = env.pass().await;
    assert!(
        !writes(&requests)
            .iter()
            .any(|write| write.ends_with("/eviction"))
    );
    env.run_statefulset("rev2");
    env.edit_quorum(|quorum| {
        let replica = quorum
            .replicas
            .iter_mut()
            .find(|r| r.id == "events-2")
            .unwrap();
        replica.end_offset = 40;
        replica.lag = 60;
    });
    let (_, requests) = env.pass().await;
    assert!(
        !writes(&requests)
            .iter()
            .any(|write| write.ends_with("/eviction"))
    );
    assert!(
        env.condition("Progressing")
            .2
            .contains("events-2 is catching up")
    );

    // Caught up: the other follower.
    let all = nodes(3);
    env.set_quorum(Some(synced_quorum(&all, "events-0", &all)));
    let (_, requests) = env.pass().await;
    assert_eq!(changes(&requests), [format!("POST {}/eviction", pod(1))]);
    env.run_statefulset("rev2");

    // Only the leader is left: it hands leadership over, then it is restarted.
    env.take_timeline();
    env.pass().await.0.unwrap();
    assert_eq!(
        actions(&env),
        [format!("admin TransferLeadership via {}", fqdn("events-0"))]
    );
    let (_, requests) = env.pass().await;
    assert_eq!(changes(&requests), [format!("POST {}/eviction", pod(0))]);
    env.run_statefulset("rev2");
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert_eq!(writes(&requests), [format!("PATCH {CLUSTER_PATH}/status")]);
    assert_eq!(env.condition("Progressing").0, "False");
    assert_eq!(env.condition("Ready").0, "True");
    assert_eq!(env.status()["leader"], "events-1");
}

/// A spec change that would need a new StatefulSet (another storage class) is not applied to
/// the fixed fields, where the API server would refuse it with a 422 on every pass: the
/// StatefulSet keeps its class, the rest still updates, and a Warning says why, once.
#[tokio::test]
async fn a_storage_class_change_is_kept_out_and_reported_once() {
    let env = Env::steady(3, json!({"storage": {"storageClassName": "standard"}})).await;
    env.change_spec(
        json!({"storage": {"storageClassName": "fast"}, "image": "example.com/proglog:3"}),
    );
    let (result, requests) = env.pass().await;
    result.unwrap();
    let sts = find(&requests, "PATCH", STS_PATH);
    assert_eq!(
        sts.body["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "standard"
    );
    assert_eq!(
        sts.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.com/proglog:3"
    );
    assert!(
        event_reasons(&requests).contains(&"StatefulSetFieldsKept".to_owned()),
        "{:?}",
        event_reasons(&requests)
    );
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert!(!event_reasons(&requests).contains(&"StatefulSetFieldsKept".to_owned()));
}

/// Rolls evict through the eviction API: while the PodDisruptionBudget allows no disruption
/// (a node drain took a pod, say), the API server answers 429 and the roll waits, taking no
/// pod; once it allows one, the roll goes on.
#[tokio::test]
async fn a_roll_waits_while_the_disruption_budget_refuses_an_eviction() {
    let env = Env::steady(3, json!({})).await;
    env.change_spec(json!({"image": "example.com/proglog:2"}));
    env.pass().await.0.unwrap();
    env.run_statefulset("rev2");
    env.fault("POST", "/pods/events-2/eviction", 429, 2);
    for _ in 0..2 {
        let (result, requests) = env.pass().await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains("waits to roll"), "{err}");
        assert_eq!(changes(&requests), [format!("POST {}/eviction", pod(2))]);
        assert!(
            env.store.lock().unwrap().get(&pod(2)).is_some(),
            "the pod was taken"
        );
    }
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert_eq!(changes(&requests), [format!("POST {}/eviction", pod(2))]);
    assert!(env.store.lock().unwrap().get(&pod(2)).is_none());
    assert_eq!(event_reasons(&requests), ["PodRolled"]);
}

/// Server-side apply removes the fields its manager stops applying (the mock enforces that
/// too): a setting taken out of the LogCluster disappears from the children.
#[tokio::test]
async fn a_setting_removed_from_the_spec_disappears_from_the_children() {
    let env = Env::steady(
        3,
        json!({
            "log": {"retentionBytes": 1_000_000},
            "podTemplate": {"nodeSelector": {"disk": "ssd"}, "labels": {"team": "data"}}
        }),
    )
    .await;
    let config = || {
        env.store
            .lock()
            .unwrap()
            .get(&format!("{CONFIGMAPS}/events-config"))
            .cloned()
            .unwrap()
    };
    let template =
        || env.store.lock().unwrap().get(STS_PATH).cloned().unwrap()["spec"]["template"].clone();
    assert!(config()["data"].get("PROGLOG_RETENTION_BYTES").is_some());
    assert_eq!(template()["spec"]["nodeSelector"]["disk"], "ssd");
    assert_eq!(template()["metadata"]["labels"]["team"], "data");

    env.store.lock().unwrap().edit(CLUSTER_PATH, |cluster| {
        let spec = &mut cluster["spec"];
        spec["log"]
            .as_object_mut()
            .unwrap()
            .remove("retentionBytes");
        spec["podTemplate"] = json!({});
    });
    env.change_spec(json!({}));
    env.pass().await.0.unwrap();
    assert!(
        config()["data"].get("PROGLOG_RETENTION_BYTES").is_none(),
        "{}",
        config()["data"]
    );
    assert!(
        template()["spec"].get("nodeSelector").is_none(),
        "{}",
        template()
    );
    assert!(
        template()["metadata"]["labels"].get("team").is_none(),
        "{}",
        template()
    );
    // And a pass after that writes nothing again.
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert!(
        writes(&requests)
            .iter()
            .all(|write| write.ends_with("/status")),
        "{:?}",
        writes(&requests)
    );
}

/// The API server refuses a StatefulSet update that changes anything but its mutable fields,
/// as a real one does (the mock enforces it): a version change, as a chart upgrade makes, and
/// an operator upgrade that renders the templates differently, must still update it.
#[tokio::test]
async fn a_version_change_still_updates_the_statefulset() {
    let env = Env::steady(3, json!({})).await;
    env.change_spec(json!({"version": "0.4.0"}));
    let (result, requests) = env.pass().await;
    result.unwrap();
    let sts = find(&requests, "PATCH", STS_PATH);
    assert!(sts.is_operator_apply());
    assert!(
        sts.body["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .is_some_and(|image| image.ends_with(":0.4.0")),
        "{}",
        sts.body["spec"]["template"]["spec"]["containers"][0]["image"]
    );
    // A StatefulSet made by an earlier operator, whose claim template differs from what this
    // one renders (another label, a defaulted field): updates still go through.
    env.store.lock().unwrap().edit(STS_PATH, |sts| {
        let claim = &mut sts["spec"]["volumeClaimTemplates"][0];
        claim["metadata"]["labels"]["app.kubernetes.io/version"] = json!("0.1.0");
        claim["spec"]["volumeMode"] = json!("Filesystem");
    });
    env.change_spec(json!({"image": "example.com/proglog:5"}));
    let (result, requests) = env.pass().await;
    result.unwrap();
    let sts = find(&requests, "PATCH", STS_PATH);
    assert_eq!(
        sts.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.com/proglog:5"
    );
}

#[tokio::test]
async fn scale_down_removes_each_voter_before_shrinking_the_statefulset() {
    let env = Env::steady(5, json!({})).await;
    let all = nodes(5);
    env.set_quorum(Some(synced_quorum(&all, "events-4", &all)));
    env.change_spec(json!({"replicas": 3}));
    let config = format!("PATCH {CONFIGMAPS}/events-config");

    // events-4 leads: it hands over first; the seed list shrinks at once (no restart needed).
    let (result, _) = env.pass().await;
    result.unwrap();
    assert_eq!(
        actions(&env),
        [
            config.clone(),
            format!("admin TransferLeadership via {}", fqdn("events-4"))
        ]
    );
    assert_eq!(env.condition("Progressing").1, "ScalingDown");
    // Then it leaves the voters, through the new leader, before its pod stops.
    env.pass().await.0.unwrap();
    assert_eq!(
        actions(&env),
        [format!(
            "admin RemoveVoter events-4 via {}",
            fqdn("events-0")
        )]
    );
    // Committed: the StatefulSet shrinks by one.
    let (_, requests) = env.pass().await;
    assert_eq!(actions(&env), [format!("PATCH {STS_PATH}")]);
    assert_eq!(
        find(&requests, "PATCH", STS_PATH).body["spec"]["replicas"],
        4
    );
    assert_eq!(event_reasons(&requests), ["Scaled"]);
    env.run_statefulset("rev1");
    // Next ordinal, same order; the node certificates lose the removed pod's.
    env.pass().await.0.unwrap();
    assert_eq!(
        actions(&env),
        [
            format!("PATCH {SECRETS}/events-tls"),
            format!("admin RemoveVoter events-3 via {}", fqdn("events-0"))
        ]
    );
    assert!(
        env.store
            .lock()
            .unwrap()
            .get(&format!("{SECRETS}/events-tls"))
            .unwrap()["data"]
            .get("events-4.key")
            .is_none(),
        "the removed pod's key is gone"
    );
    let (_, requests) = env.pass().await;
    assert_eq!(actions(&env), [format!("PATCH {STS_PATH}")]);
    assert_eq!(
        find(&requests, "PATCH", STS_PATH).body["spec"]["replicas"],
        3
    );
    env.run_statefulset("rev1");
    env.pass().await.0.unwrap();
    assert_eq!(actions(&env), [format!("PATCH {SECRETS}/events-tls")]);
    env.pass().await.0.unwrap();
    assert!(actions(&env).is_empty());
    assert_eq!(env.condition("Progressing").0, "False");
    assert_eq!(env.condition("Ready").0, "True");
    assert_eq!(env.status()["replicas"], 3);
    // Scaling down never deletes a volume.
    let claims = env
        .store
        .lock()
        .unwrap()
        .paths("/api/v1/namespaces/prod/persistentvolumeclaims/");
    assert_eq!(claims.len(), 5);
}

#[tokio::test]
async fn scale_up_promotes_each_new_pod_only_once_it_has_caught_up() {
    let env = Env::steady(3, json!({})).await;
    env.change_spec(json!({"replicas": 5}));
    let (result, requests) = env.pass().await;
    result.unwrap();
    // The new pods' certificates (the peers always speak mutual TLS), then the pods.
    assert_eq!(
        actions(&env),
        [
            format!("PATCH {SECRETS}/events-tls"),
            format!("PATCH {CONFIGMAPS}/events-config"),
            format!("PATCH {STS_PATH}")
        ]
    );
    assert_eq!(
        find(&requests, "PATCH", STS_PATH).body["spec"]["replicas"],
        5
    );
    // The founding quorum does not grow: new pods start as observers.
    let config = find(&requests, "PATCH", &format!("{CONFIGMAPS}/events-config"));
    assert_eq!(
        config.body["data"]["PROGLOG_INITIAL_VOTERS"],
        "events-0,events-1,events-2"
    );
    env.run_statefulset("rev1");
    env.edit_quorum(|quorum| {
        for id in ["events-3", "events-4"] {
            quorum.replicas.push(ReplicaProgress {
                id: id.into(),
                voter: false,
                end_offset: 0,
                lag: 5000,
                fetched: true,
                last_fetch_ago_ms: 10,
            });
        }
    });
    env.pass().await.0.unwrap();
    assert!(actions(&env).is_empty());
    let (_, reason, message) = env.condition("Progressing");
    assert_eq!(reason, "ScalingUp");
    assert!(message.contains("events-3, events-4"), "{message}");

    env.edit_quorum(|quorum| {
        let replica = quorum
            .replicas
            .iter_mut()
            .find(|r| r.id == "events-3")
            .unwrap();
        replica.lag = 0;
        replica.end_offset = 100;
    });
    let (_, requests) = env.pass().await;
    assert_eq!(
        actions(&env),
        [format!("admin AddVoter events-3 via {}", fqdn("events-0"))]
    );
    assert_eq!(event_reasons(&requests), ["VoterAdded"]);
    env.edit_quorum(|quorum| {
        let replica = quorum
            .replicas
            .iter_mut()
            .find(|r| r.id == "events-4")
            .unwrap();
        replica.lag = 0;
        replica.end_offset = 100;
    });
    env.pass().await.0.unwrap();
    assert_eq!(
        actions(&env),
        [format!("admin AddVoter events-4 via {}", fqdn("events-0"))]
    );
    env.pass().await.0.unwrap();
    assert!(actions(&env).is_empty());
    assert_eq!(env.condition("Progressing").0, "False");
    assert_eq!(env.condition("Ready").0, "True");
}

#[tokio::test]
async fn certificates_near_expiry_are_renewed_and_the_dates_move() {
    let env = Env::steady(3, tls_on()).await;
    let before = env.status();
    let old_tls = env
        .store
        .lock()
        .unwrap()
        .get(&format!("{SECRETS}/events-tls"))
        .unwrap()["data"]["events-0.crt"]
        .clone();
    // 90-day certificates, renewed 30 days before the end: at day 61 they are due.
    advance(&env, 61);
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert_eq!(
        writes(&requests),
        [
            format!("PATCH {SECRETS}/events-tls"),
            format!("PATCH {SECRETS}/events-operator-tls"),
            format!("PATCH {CLUSTER_PATH}/status"),
        ],
        "the CA is kept"
    );
    let renewed = find(&requests, "PATCH", &format!("{SECRETS}/events-tls"));
    assert!(renewed.is_operator_apply());
    assert_ne!(renewed.body["data"]["events-0.crt"], old_tls);
    assert_eq!(event_reasons(&requests), ["CertificatesRenewed"]);
    let after = env.status();
    assert!(time_of(&after["certsNotAfter"]) > time_of(&before["certsNotAfter"]));
    assert_eq!(after["caNotAfter"], before["caNotAfter"]);
    assert_eq!(env.condition("Progressing").1, "RotatingCertificates");
    assert_eq!(env.condition("CertificatesReady").0, "True");
    // No pod restarts for it: the nodes reload the files.
    assert!(
        !writes(&requests)
            .iter()
            .any(|write| write.contains("/pods/"))
    );
    // Then steady again.
    let (_, requests) = env.pass().await;
    assert_eq!(writes(&requests), [format!("PATCH {CLUSTER_PATH}/status")]);
    let (_, requests) = env.pass().await;
    assert!(writes(&requests).is_empty());
}

/// The certificates in the trust bundle `NAME-tls` holds now.
fn published_bundle(env: &Env) -> String {
    let store = env.store.lock().unwrap();
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(store.get(&format!("{SECRETS}/events-tls")).unwrap().clone())
            .unwrap();
    String::from_utf8(secret.data.unwrap()["ca.crt"].0.clone()).unwrap()
}

/// The first certificate of a PEM bundle (the CA's own, in a published bundle).
fn first_certificate(bundle: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let end = bundle.find(END).unwrap() + END.len();
    format!("{}\n", &bundle[..end])
}

/// Runs passes while the kubelet updates one pod's copy of the Secret after each (in turn,
/// so each pod lags the Secret by up to two passes), checking after every step that nobody
/// distrusts anybody; returns the passes until the replacement is over: no `ReplacingCa`
/// progress, a bundle that is not `old_bundle`, every node's and the operator's certificate
/// from the new CA, and every node holding the Secret's current files.
async fn replace_ca_step_by_step(env: &Env, old_bundle: &str) -> usize {
    let pods = nodes(3);
    for pass in 1..=30 {
        env.pass().await.0.unwrap();
        env.assert_mutual_trust(&format!("after pass {pass}"));
        let pod = &pods[(pass - 1) % 3];
        env.kubelet_sync(pod);
        env.assert_mutual_trust(&format!("after pass {pass} and {pod}'s volume update"));
        let bundle = published_bundle(env);
        let new_ca = first_certificate(&bundle);
        let loaded = env.admin.tls.lock().unwrap().clone();
        let current_everywhere = loaded.iter().all(|(pod, files)| {
            files.bundle == bundle.as_bytes()
                && fixtures::trusts(new_ca.as_bytes(), &files.cert)
                && {
                    let store = env.store.lock().unwrap();
                    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
                        store.get(&format!("{SECRETS}/events-tls")).unwrap().clone(),
                    )
                    .unwrap();
                    secret.data.unwrap()[&format!("{pod}.crt")].0 == files.cert
                }
        });
        let operator_from_new_ca = fixtures::trusts(new_ca.as_bytes(), &env.operator_files().1);
        if env.condition("Progressing").1 != "ReplacingCa"
            && bundle != old_bundle
            && current_everywhere
            && operator_from_new_ca
        {
            return pass;
        }
    }
    panic!(
        "the CA replacement did not finish in 30 passes: {:?}; refused calls: {:?}",
        env.condition("Progressing"),
        env.admin.refused.lock().unwrap()
    );
}

#[tokio::test]
async fn the_operator_replaces_its_ca_without_a_moment_of_distrust() {
    // A CA of 100 days, certificates of 30, each renewed 10 days before its end.
    let env = Env::steady(
        3,
        json!({"tls": {"enabled": true, "caValidity": "2400h", "certValidity": "720h",
                       "renewBefore": "240h"}}),
    )
    .await;
    for pod in nodes(3) {
        env.kubelet_sync(&pod);
    }
    env.assert_mutual_trust("steady");
    let old_bundle = published_bundle(&env);
    // Certificate renewals from the same CA, every node updated after each pass.
    for day in (5..90).step_by(5) {
        advance(&env, 5);
        env.pass().await.0.unwrap();
        for pod in nodes(3) {
            env.kubelet_sync(&pod);
        }
        env.assert_mutual_trust(&format!("day {day}"));
    }
    assert_eq!(published_bundle(&env), old_bundle, "the CA is not due yet");
    // Day 90: the CA is within renewBefore of its end.
    advance(&env, 5);
    let passes = replace_ca_step_by_step(&env, &old_bundle).await;
    assert!(
        env.admin.refused.lock().unwrap().is_empty(),
        "{:?}",
        env.admin.refused.lock().unwrap()
    );
    println!("the CA was replaced in {passes} passes");
    // The old CA stays trusted until it ends (day 100), then leaves the bundle.
    advance(&env, 11);
    env.pass().await.0.unwrap();
    for pod in nodes(3) {
        env.kubelet_sync(&pod);
    }
    env.assert_mutual_trust("after the old CA ended");
    assert_eq!(
        published_bundle(&env).matches("BEGIN CERTIFICATE").count(),
        1
    );
}

#[tokio::test]
async fn a_user_ca_replaced_in_its_secret_goes_out_without_a_moment_of_distrust() {
    let user_ca = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        let cert = params.self_signed(&key).unwrap();
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "team-ca", "namespace": "prod"},
               "data": {"tls.crt": base64(cert.pem().as_bytes()),
                        "tls.key": base64(key.serialize_pem().as_bytes())}})
    };
    let env = Env::new(log_cluster(json!({"replicas": 3, "tls": {"enabled": true,
        "issuer": {"kind": "Secret", "secretName": "team-ca"}}})));
    env.store
        .lock()
        .unwrap()
        .put(&format!("{SECRETS}/team-ca"), user_ca("team CA 1"));
    env.pass().await.0.unwrap();
    env.run_statefulset("rev1");
    let all = nodes(3);
    env.set_quorum(Some(synced_quorum(&all, &all[0], &all)));
    env.pass().await.0.unwrap();
    for pod in &all {
        env.kubelet_sync(pod);
    }
    env.assert_mutual_trust("steady");
    let old_bundle = published_bundle(&env);
    // cert-manager replaces the CA in the Secret.
    env.store
        .lock()
        .unwrap()
        .put(&format!("{SECRETS}/team-ca"), user_ca("team CA 2"));
    replace_ca_step_by_step(&env, &old_bundle).await;
    assert!(env.admin.refused.lock().unwrap().is_empty());
}

/// Base64 of `bytes`, as Secret data holds it.
fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_paused_cluster_gets_status_and_nothing_else() {
    let env = Env::steady(3, json!({})).await;
    env.change_spec(json!({"paused": true, "image": "example.com/proglog:2", "replicas": 5}));
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert_eq!(writes(&requests), [format!("PATCH {CLUSTER_PATH}/status")]);
    assert_eq!(env.condition("ReconciliationPaused").0, "True");
    assert_eq!(env.status()["observedGeneration"], 2);

    // The annotation pauses a new cluster too: not even the bootstrap annotation is written.
    let fresh = Env::new(log_cluster(json!({})));
    fresh.annotate("proglog.dev/paused", "true");
    let (result, requests) = fresh.pass().await;
    result.unwrap();
    assert_eq!(writes(&requests), [format!("PATCH {CLUSTER_PATH}/status")]);
    assert_eq!(fresh.condition("ReconciliationPaused").1, "Paused");
}

#[tokio::test]
async fn a_conflict_surfaces_is_counted_and_requeued_then_heals() {
    let env = Env::steady(3, json!({})).await;
    env.change_spec(json!({"image": "example.com/proglog:2"}));
    env.fault("PATCH", "/statefulsets/events", 409, 1);
    let (result, requests) = env.pass().await;
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Parts { .. }), "{err}");
    assert_eq!(err.kind(), "conflict");
    assert!(
        err.to_string().contains("apply StatefulSet prod/events"),
        "{err}"
    );
    assert_eq!(
        writes(&requests),
        [
            format!("PATCH {STS_PATH}"),
            format!("PATCH {CLUSTER_PATH}/status")
        ]
    );
    assert!(event_reasons(&requests).contains(&"ReconcileFailed".to_owned()));
    let (_, _, message) = env.condition("Degraded");
    assert!(message.contains("workload"), "{message}");
    let action = controller::error_policy(stored_cluster(&env), &err, Arc::clone(&env.ctx));
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert_eq!(env.ctx.metrics.errors_of("conflict"), 1);

    // The retry applies it.
    let (result, requests) = env.pass().await;
    result.unwrap();
    assert!(writes(&requests).contains(&format!("PATCH {STS_PATH}")));
    assert_eq!(env.condition("Degraded").0, "False");
}

#[tokio::test]
async fn a_server_error_is_retried_with_growing_backoff() {
    let env = Env::new(log_cluster(json!({})));
    env.fault("PATCH", "/configmaps/events-config", 500, 2);
    let (result, requests) = env.pass().await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), "server");
    // The other parts ran: the StatefulSet exists, the status says what failed.
    assert!(writes(&requests).contains(&format!("PATCH {STS_PATH}")));
    assert_eq!(env.condition("Degraded").1, "ReconcileFailed");
    let cluster = stored_cluster(&env);
    assert_eq!(
        controller::error_policy(Arc::clone(&cluster), &err, Arc::clone(&env.ctx)),
        Action::requeue(Duration::from_secs(5))
    );
    let err = env.pass().await.0.unwrap_err();
    assert_eq!(
        controller::error_policy(Arc::clone(&cluster), &err, Arc::clone(&env.ctx)),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(env.ctx.metrics.errors_of("server"), 2);
    env.pass().await.0.unwrap();
    assert_eq!(env.condition("Degraded").0, "False");
    let metrics = env.ctx.metrics.encode().unwrap();
    assert!(
        metrics.contains("proglog_operator_reconciles_total{outcome=\"error\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_statefulset_does_not_block_certificate_renewal_or_status() {
    let env = Env::steady(3, tls_on()).await;
    let before = env.status();
    advance(&env, 61);
    env.change_spec(json!({"image": "example.com/proglog:2"}));
    env.fault("PATCH", "/statefulsets/events", 500, 1);
    let (result, requests) = env.pass().await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), "server");
    assert_eq!(
        writes(&requests),
        [
            format!("PATCH {SECRETS}/events-tls"),
            format!("PATCH {SECRETS}/events-operator-tls"),
            format!("PATCH {STS_PATH}"),
            format!("PATCH {CLUSTER_PATH}/status"),
        ]
    );
    let after = env.status();
    assert!(time_of(&after["certsNotAfter"]) > time_of(&before["certsNotAfter"]));
    assert_eq!(env.condition("CertificatesReady").0, "True");
    let (degraded, _, message) = env.condition("Degraded");
    assert_eq!(degraded, "True");
    assert!(message.contains("workload"), "{message}");
    assert!(!message.contains("certificates"), "{message}");
}

#[tokio::test]
async fn storage_growth_patches_each_claim_and_keeps_the_template() {
    let env = Env::steady(3, json!({})).await;
    // One claim was already grown by hand beyond the new size: it is left alone.
    env.store.lock().unwrap().edit(
        "/api/v1/namespaces/prod/persistentvolumeclaims/data-events-1",
        |claim| claim["spec"]["resources"]["requests"]["storage"] = json!("30Gi"),
    );
    env.change_spec(json!({"storage": {"size": "20Gi"}}));
    let (result, requests) = env.pass().await;
    result.unwrap();
    let claims = "/api/v1/namespaces/prod/persistentvolumeclaims";
    assert_eq!(
        writes(&requests),
        [
            format!("PATCH {claims}/data-events-0"),
            format!("PATCH {claims}/data-events-2"),
            format!("PATCH {CLUSTER_PATH}/status"),
        ]
    );
    let grown = find(&requests, "PATCH", &format!("{claims}/data-events-0"));
    assert!(grown.is_operator_apply());
    assert_eq!(
        grown.body["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    assert_eq!(event_reasons(&requests), ["VolumesExpanded"]);
    // The StatefulSet's (immutable) claim template was not touched.
    let sts = env.store.lock().unwrap().get(STS_PATH).unwrap().clone();
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
}

#[tokio::test]
async fn an_unreachable_cluster_blocks_scale_down_but_nothing_else() {
    let env = Env::steady(5, json!({})).await;
    env.set_quorum(None);
    env.change_spec(json!({"replicas": 3}));
    let (result, _) = env.pass().await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), "admin");
    // Nothing shrinks without knowing the voters; the seed list still follows the spec.
    assert_eq!(actions(&env), [format!("PATCH {CONFIGMAPS}/events-config")]);
    assert_eq!(env.condition("Degraded").0, "True");
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_built() {
    // The CRD's rules refuse this too; the operator checks again (a resource can come from a
    // cluster whose CRD is older).
    let env = Env::new(log_cluster(json!({"acl": {"enabled": true}})));
    let (result, requests) = env.pass().await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), "spec");
    assert!(err.to_string().contains("spec.acl.enabled"), "{err}");
    assert_eq!(writes(&requests), [format!("PATCH {CLUSTER_PATH}/status")]);
    assert_eq!(event_reasons(&requests), ["InvalidSpec"]);
    let (degraded, reason, _) = env.condition("Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
}

#[tokio::test]
async fn a_lost_initial_voters_annotation_is_restored_from_what_the_nodes_were_given() {
    let env = Env::steady(3, json!({})).await;
    env.store.lock().unwrap().edit(CLUSTER_PATH, |cluster| {
        cluster["metadata"]["annotations"] = json!({});
    });
    env.change_spec(json!({"replicas": 5}));
    let (result, requests) = env.pass().await;
    result.unwrap();
    let bootstrap = find(&requests, "PATCH", CLUSTER_PATH);
    assert_eq!(
        bootstrap.body["metadata"]["annotations"]["proglog.dev/initial-voters"],
        "3"
    );
    // So the scale-up does not change the founding quorum (nor restart the pods).
    let config = find(&requests, "PATCH", &format!("{CONFIGMAPS}/events-config"));
    assert_eq!(
        config.body["data"]["PROGLOG_INITIAL_VOTERS"],
        "events-0,events-1,events-2"
    );
}
