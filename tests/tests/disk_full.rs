//! A node whose disk fills up under produce load: it refuses writes with `RESOURCE_EXHAUSTED`
//! saying the disk is full, keeps serving reads, says so in `/readyz` and `proglog_disk_full`,
//! and takes writes again by itself once space is freed. Nothing acknowledged is lost, before
//! or after a crash.
//!
//! The disk is a real file system of its own: a 6 MiB tmpfs mounted for the test (which needs
//! root and `mount`; the test says why it skipped otherwise).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proglog_proto::log::v1::{ConsumeRequest, ProduceRequest, Record};
use proglog_tests::loopback::{http_get, metric};
use proglog_tests::node_process::{NodeOptions, NodeProcess};
use tonic::Code;

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct SmallDisk {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`, or says why it cannot.
    fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::Builder::new()
            .prefix("proglog-small-disk-")
            .tempdir()
            .map_err(|err| format!("cannot create a mount point: {err}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|err| format!("cannot run mount: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (root is needed): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            mount_point: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

async fn produce(node: &NodeProcess, value: &Bytes) -> Result<u64, tonic::Status> {
    let mut client = node
        .log_client()
        .await
        .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let response = client
        .produce(ProduceRequest {
            record: Some(Record {
                value: value.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    Ok(response.into_inner().offset)
}

/// Reads every acknowledged record back and compares it with what was acknowledged.
async fn assert_intact(node: &NodeProcess, acknowledged: &BTreeMap<u64, Bytes>) {
    let mut client = node.log_client().await.unwrap();
    for (offset, value) in acknowledged {
        let record = client
            .consume(ConsumeRequest {
                offset: *offset,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("acknowledged offset {offset} unreadable: {status}"))
            .into_inner()
            .record
            .unwrap();
        assert_eq!(&record.value, value, "offset {offset} changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_node_read_only_until_space_returns() {
    let disk = match SmallDisk::mount(6 << 20) {
        Ok(disk) => disk,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let data_dir = disk.path().join("data");
    let options = NodeOptions::default()
        .data_dir(&data_dir)
        .flag("--durability", "always")
        .flag("--segment-bytes", "1048576")
        .flag("--max-record-bytes", "65536");
    let mut node = NodeProcess::start(options).await.unwrap();
    // A file to free later: it leaves about 3 MiB for the log.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 3 << 20]).unwrap();

    // Produce 16 KiB records until the disk is full.
    let mut acknowledged = BTreeMap::new();
    let mut i = 0u32;
    let refusal = loop {
        let value = Bytes::from(format!("{i:08}").repeat(2048));
        i += 1;
        match produce(&node, &value).await {
            Ok(offset) => {
                assert!(acknowledged.insert(offset, value).is_none());
                assert!(acknowledged.len() < 1000, "6 MiB never filled up");
            }
            Err(status) => break status,
        }
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("disk is full"), "{refusal:?}");
    assert!(
        acknowledged.len() > 10,
        "only {} records fit",
        acknowledged.len()
    );

    // Read-only, not dead: writes keep being refused the same way, reads are served, and the
    // condition shows.
    let value = Bytes::from_static(b"refused");
    for _ in 0..3 {
        let again = produce(&node, &value).await.unwrap_err();
        assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    }
    assert_intact(&node, &acknowledged).await;
    let readyz = http_get(&node, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(readyz.contains("read-only: the disk is full"), "{readyz}");
    assert_eq!(metric(&node, "proglog_disk_full").await, Some(1.0));

    // Space comes back: writes resume by themselves.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = Bytes::from_static(b"after the disk had room again");
    let offset = loop {
        match produce(&node, &value).await {
            Ok(offset) => break offset,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "writes did not resume: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(acknowledged.insert(offset, value).is_none());
    assert_eq!(metric(&node, "proglog_disk_full").await, Some(0.0));
    let readyz = http_get(&node, "/readyz").await;
    assert!(
        readyz.ends_with("ready\n") && !readyz.contains("read-only"),
        "{readyz}"
    );
    assert_intact(&node, &acknowledged).await;

    // And after a crash, recovery finds exactly what was acknowledged, nothing half-written.
    node.kill().await.unwrap();
    node.restart().await.unwrap();
    assert_intact(&node, &acknowledged).await;
    let mut client = node.log_client().await.unwrap();
    let end = client
        .get_offsets(proglog_proto::log::v1::GetOffsetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .end_offset;
    assert_eq!(end, acknowledged.keys().last().unwrap() + 1);
    node.terminate().await.unwrap();
}

/// In a three-node cluster, the disk of a follower fills up while producers keep going: the
/// leader and the other follower keep committing, the full follower stays up and serves what
/// it has, says its disk is full, and catches up by itself once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_serves_what_it_has_and_catches_up() {
    use proglog_proto::log::v1::admin_client::AdminClient;
    use proglog_proto::log::v1::log_client::LogClient;
    use proglog_proto::log::v1::{GetOffsetsRequest, TransferLeadershipRequest};
    use proglog_tests::loopback::{
        node_options, offsets, plan_ports, status, wait_for_leader, wait_until,
    };
    const FULL: usize = 2;
    let disk = match SmallDisk::mount(6 << 20) {
        Ok(disk) => disk,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let (ports, peers) = plan_ports(3);
    let mut nodes = Vec::new();
    for (index, port) in ports.into_iter().enumerate() {
        let mut options = node_options(index, port, &peers)
            .flag("--durability", "always")
            .flag("--segment-bytes", "1048576")
            .flag("--max-record-bytes", "65536");
        if index == FULL {
            options = options.data_dir(disk.path().join("data"));
        }
        nodes.push(NodeProcess::start(options).await.unwrap());
    }
    let all = [0, 1, 2];
    let mut leader = wait_for_leader(&nodes, &all).await;
    while leader == FULL {
        let mut admin = AdminClient::new(nodes[leader].channel().await.unwrap());
        let _ = admin
            .transfer_leadership(TransferLeadershipRequest {})
            .await;
        leader = wait_for_leader(&nodes, &all).await;
    }
    // About 2 MiB stay free for the follower's log, which takes 3 MiB (and a little more).
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 4 << 20]).unwrap();

    // 3 MiB of 16 KiB records: every one commits on the leader and the other follower.
    let mut acknowledged = BTreeMap::new();
    for i in 0..192u32 {
        let value = Bytes::from(format!("{i:08}").repeat(2048));
        let offset = produce(&nodes[leader], &value)
            .await
            .unwrap_or_else(|status| panic!("produce {i} failed: {status}"));
        acknowledged.insert(offset, value);
    }
    wait_until("the follower reports its full disk", || async {
        metric(&nodes[FULL], "proglog_disk_full").await == Some(1.0)
    })
    .await;
    let (_, leader_end) = offsets(&nodes[leader]).await;
    let stalled_end = status(&nodes[FULL]).await.unwrap().high_watermark;
    assert!(
        stalled_end < leader_end,
        "the full follower holds {stalled_end} of {leader_end}"
    );
    // Asked where the log ends, it cannot answer with every acknowledged record in its answer,
    // so it says it is behind rather than give a stale end.
    let mut client = LogClient::new(nodes[FULL].channel().await.unwrap());
    let refused = client
        .get_offsets(GetOffsetsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("behind the leader"),
        "{refused:?}"
    );
    // It serves what it has.
    let held: BTreeMap<u64, Bytes> = acknowledged
        .range(..stalled_end)
        .map(|(offset, value)| (*offset, value.clone()))
        .collect();
    assert!(
        !held.is_empty(),
        "the follower held nothing before its disk filled"
    );
    assert_intact(&nodes[FULL], &held).await;

    // Space comes back: it catches up by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_until("the follower catches up", || async {
        status(&nodes[FULL])
            .await
            .is_some_and(|status| status.high_watermark >= leader_end)
    })
    .await;
    assert_eq!(metric(&nodes[FULL], "proglog_disk_full").await, Some(0.0));
    assert_intact(&nodes[FULL], &acknowledged).await;
    for node in &mut nodes {
        node.terminate().await.unwrap();
    }
}
