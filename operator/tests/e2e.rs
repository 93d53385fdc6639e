//! End to end against a real Kubernetes cluster (kind or k3d), with the operator running in it.
//! Skipped, with a printed reason, unless `PROGLOG_E2E_KUBECONFIG` names a kubeconfig.
//!
//! # How to run it
//!
//! `tests/e2e/kind.sh` does all of it (it needs Docker, kind, kubectl, Helm and cargo). By hand:
//!
//! ```sh
//! kind create cluster --name proglog
//! docker build -f docker/node.Dockerfile -t proglog-node:e2e .
//! docker build -f docker/operator.Dockerfile -t proglog-operator:e2e .
//! kind load docker-image --name proglog proglog-node:e2e proglog-operator:e2e
//! helm install proglog-operator charts/proglog-operator -n proglog-system --create-namespace \
//!   --set image.repository=proglog-operator --set image.tag=e2e --set image.pullPolicy=Never
//! kind get kubeconfig --name proglog > /tmp/proglog-e2e.kubeconfig
//! PROGLOG_E2E_KUBECONFIG=/tmp/proglog-e2e.kubeconfig PROGLOG_E2E_IMAGE=proglog-node:e2e \
//!   cargo test -p proglog-operator --test e2e -- --nocapture
//! ```
//!
//! The operator must run inside the cluster: it calls each node's admin API at the pod's DNS
//! name under the headless Service, which does not resolve from outside. The test itself only
//! talks to the API server, and to the client Service through `kubectl port-forward` (so
//! `kubectl` must be on `PATH`, using the same kubeconfig).
//!
//! # What it does
//!
//! 1. Applies the CRD (server-side, as `crdgen` prints it) and waits until it is established.
//! 2. Creates a namespace (`PROGLOG_E2E_NAMESPACE`, default `proglog-e2e`) and a 3-replica
//!    `LogCluster` with `PROGLOG_E2E_IMAGE` (default: the operator's default node image) and
//!    small volumes; waits until its `Ready` condition is `True` and it names a leader.
//! 3. Produces records through the client Service and consumes them back.
//! 4. With `PROGLOG_E2E_PREVIOUS_IMAGE` set, the cluster starts on that image; after step 3 it
//!    is upgraded to `PROGLOG_E2E_IMAGE` (every pod rolled, Ready again) and every record is
//!    read again.
//! 5. Scales to 5 while a producer writes a record every 100 ms, waits for Ready with five
//!    voters (`status.members` roles), then back to 3, waits for Ready with three members,
//!    stops the producer, and consumes every acknowledged record.
//! 6. Deletes the `LogCluster` and waits until its StatefulSet is gone (owner references), then
//!    deletes the namespace.
//!
//! Each wait polls with a deadline and fails with the last status seen.

#![allow(clippy::unwrap_used)] // test code: a failure is the test failing

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};
use proglog_operator::crd::{LogCluster, condition};
use proglog_proto::log::v1::log_client::LogClient;
use proglog_proto::log::v1::{ConsumeRequest, ProduceRequest, Record};
use serde_json::json;

const NAME: &str = "e2e";
const FIELD_MANAGER: &str = "proglog-e2e";
const READY_DEADLINE: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_secs(3);
const LOCAL_PORT: u16 = 18400;

async fn client(path: &str) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading {path}"))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn apply_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = LogCluster::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = crds.get(&name).await?.status.and_then(|status| {
            status.conditions.map(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
        });
        if established == Some(true) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "CRD {name} not established");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the cluster is Ready with `members` members, `voters` of them voters.
async fn wait_ready(api: &Api<LogCluster>, members: usize, voters: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let cluster = api.get(NAME).await?;
        let status = cluster.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True");
        let voting = status
            .members
            .iter()
            .filter(|m| matches!(m.role.as_deref(), Some("leader" | "follower")))
            .count();
        if ready
            && status.leader.is_some()
            && status.members.len() == members
            && voting == voters
            && status.observed_generation == cluster.metadata.generation
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "LogCluster {NAME} not ready with {members} members, {voters} voters; status: {status:#?}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `kubectl port-forward` to the client Service, killed when dropped.
struct PortForward {
    /// Held only to be killed on drop (`kill_on_drop`).
    _child: tokio::process::Child,
}

impl PortForward {
    async fn start(kubeconfig: &str, namespace: &str) -> anyhow::Result<Self> {
        let child = tokio::process::Command::new("kubectl")
            .args([
                "--kubeconfig",
                kubeconfig,
                "-n",
                namespace,
                "port-forward",
                &format!("svc/{NAME}"),
                &format!("{LOCAL_PORT}:8400"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("running kubectl port-forward (is kubectl on PATH?)")?;
        Ok(PortForward { _child: child })
    }
}

async fn log_client() -> anyhow::Result<LogClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match LogClient::connect(format!("http://127.0.0.1:{LOCAL_PORT}")).await {
            Ok(client) => return Ok(client),
            Err(err) if Instant::now() < deadline => {
                eprintln!("waiting for the port-forward: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

async fn consume_all(offsets: &[(u64, Vec<u8>)]) -> anyhow::Result<()> {
    let mut client = log_client().await?;
    for (offset, value) in offsets {
        let record = client
            .consume(ConsumeRequest {
                offset: *offset,
                ..Default::default()
            })
            .await?
            .into_inner()
            .record
            .context("no record in the answer")?;
        ensure!(
            record.value.as_ref() == value.as_slice(),
            "offset {offset} holds another value"
        );
    }
    Ok(())
}

/// Produces one record every 100 ms through the port-forward until `stop` is set; returns the
/// acknowledged records and how many produces failed (a leader change or a pod going away
/// refuses some, which producers retry).
async fn produce_until(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<(Vec<(u64, Vec<u8>)>, usize)> {
    let mut log = log_client().await?;
    let mut written = Vec::new();
    let mut failed = 0;
    let mut index = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        index += 1;
        let value = format!("under load {index}").into_bytes();
        let produce = log.produce(ProduceRequest {
            record: Some(Record {
                value: value.clone().into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        match tokio::time::timeout(Duration::from_secs(10), produce).await {
            Ok(Ok(answer)) => written.push((answer.into_inner().offset, value)),
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((written, failed))
}

/// Waits until every pod of the cluster runs `image`.
async fn wait_image(client: &Client, namespace: &str, image: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app.kubernetes.io/instance={NAME},app.kubernetes.io/component=node");
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        let images: Vec<String> = list
            .items
            .iter()
            .filter_map(|pod| pod.spec.as_ref()?.containers.first()?.image.clone())
            .collect();
        if !images.is_empty() && images.iter().all(|running| running == image) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "pods still run {images:?}, not {image}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn set_replicas(api: &Api<LogCluster>, replicas: i32) -> anyhow::Result<()> {
    api.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_log_cluster_forms_serves_scales_and_goes_away() -> anyhow::Result<()> {
    let Ok(kubeconfig) = std::env::var("PROGLOG_E2E_KUBECONFIG") else {
        eprintln!(
            "skipped: set PROGLOG_E2E_KUBECONFIG to a kubeconfig of a kind or k3d cluster running \
             the operator (see the top of operator/tests/e2e.rs)"
        );
        return Ok(());
    };
    let namespace =
        std::env::var("PROGLOG_E2E_NAMESPACE").unwrap_or_else(|_| "proglog-e2e".to_owned());
    let image = std::env::var("PROGLOG_E2E_IMAGE").ok();
    // Set: the cluster starts on this image and is upgraded to PROGLOG_E2E_IMAGE.
    let previous = std::env::var("PROGLOG_E2E_PREVIOUS_IMAGE")
        .ok()
        .filter(|previous| !previous.is_empty());
    let client = client(&kubeconfig).await?;

    apply_crd(&client).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": namespace}})),
        )
        .await?;

    let clusters: Api<LogCluster> = Api::namespaced(client.clone(), &namespace);
    let mut spec = json!({"replicas": 3, "storage": {"size": "1Gi"},
                          "imagePullPolicy": "IfNotPresent"});
    if let Some(image) = previous.as_ref().or(image.as_ref()) {
        spec["image"] = json!(image);
    }
    clusters
        .patch(
            NAME,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(
                json!({"apiVersion": "proglog.dev/v1alpha1", "kind": "LogCluster",
                                 "metadata": {"name": NAME, "namespace": namespace},
                                 "spec": spec}),
            ),
        )
        .await?;
    wait_ready(&clusters, 3, 3).await?;

    // Produce and consume through the client Service.
    let forward = PortForward::start(&kubeconfig, &namespace).await?;
    let mut log = log_client().await?;
    let mut written = Vec::new();
    for index in 0..10u32 {
        let value = format!("record {index}").into_bytes();
        let offset = log
            .produce(ProduceRequest {
                record: Some(Record {
                    value: value.clone().into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .offset;
        written.push((offset, value));
    }
    consume_all(&written).await?;
    drop(forward);

    // An upgrade from the previous image: a roll, one pod at a time, keeps every record.
    if let (Some(previous), Some(image)) = (&previous, &image) {
        eprintln!("upgrading from {previous} to {image}");
        clusters
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"image": image}})),
            )
            .await?;
        wait_image(&client, &namespace, image).await?;
        wait_ready(&clusters, 3, 3).await?;
        let forward = PortForward::start(&kubeconfig, &namespace).await?;
        consume_all(&written).await?;
        drop(forward);
    }

    // Scale up under produce load: the new pods are promoted once caught up; then back down.
    // Every acknowledged record is still there afterwards.
    let forward = PortForward::start(&kubeconfig, &namespace).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(produce_until(std::sync::Arc::clone(&stop)));
    set_replicas(&clusters, 5).await?;
    wait_ready(&clusters, 5, 5).await?;
    set_replicas(&clusters, 3).await?;
    wait_ready(&clusters, 3, 3).await?;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (under_load, failed) = load.await??;
    eprintln!(
        "{} records acknowledged while scaling, {failed} produces refused",
        under_load.len()
    );
    ensure!(!under_load.is_empty(), "no produce succeeded while scaling");
    drop(forward);
    let forward = PortForward::start(&kubeconfig, &namespace).await?;
    consume_all(&written).await?;
    consume_all(&under_load).await?;
    drop(forward);

    // Delete: the garbage collector removes the children through their owner references.
    clusters.delete(NAME, &DeleteParams::default()).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let deadline = Instant::now() + Duration::from_secs(180);
    while statefulsets.get_opt(NAME).await?.is_some() {
        ensure!(Instant::now() < deadline, "StatefulSet {NAME} still exists");
        tokio::time::sleep(POLL).await;
    }
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await?;
    Ok(())
}
