//! Real chatd processes on disks that lose power or fail, through `faultfs` (a FUSE filesystem
//! mounted by this test over each node's data dir, keeping what was written but not fsynced in
//! its own memory, like Jepsen's lazyfs): every node killed at once and its unsynced writes
//! dropped loses no acknowledged record; a node whose disk fails its fsyncs stops itself
//! (fail-stop: it exits, naming the failure) while the others go on, and once the disk is
//! healthy it starts again and catches up. Root only (FUSE), like the fault-injection runs; CI
//! runs as root.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::Cluster;

const WAIT: Duration = Duration::from_secs(30);

/// One faultfs mount per node, under one temp dir.
struct Disks {
    _dir: tempfile::TempDir,
    controls: BTreeMap<u64, PathBuf>,
    data: BTreeMap<u64, PathBuf>,
    mounts: Vec<faultfs::Mounted>,
}

impl Disks {
    fn mount(n: u64) -> Disks {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the disk-fault tests mount a FUSE filesystem and need root (as CI runs)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut disks = Disks {
            controls: BTreeMap::new(),
            data: BTreeMap::new(),
            mounts: Vec::new(),
            _dir: dir,
        };
        for id in 1..=n {
            let root = disks._dir.path();
            let (backing, data) = (root.join(format!("b{id}")), root.join(format!("n{id}")));
            std::fs::create_dir(&backing).unwrap();
            std::fs::create_dir(&data).unwrap();
            let control = root.join(format!("n{id}.sock"));
            let mount = faultfs::spawn(&faultfs::MountOptions {
                backing,
                mountpoint: data.clone(),
                control: control.clone(),
                threads: 4,
            })
            .expect("mount faultfs");
            disks.mounts.push(mount);
            disks.controls.insert(id, control);
            disks.data.insert(id, data);
        }
        disks
    }

    fn ask(&self, id: u64, command: &str) -> String {
        let reply = faultfs::request(&self.controls[&id], command).unwrap();
        assert!(reply.starts_with("ok"), "node {id}: {command}: {reply}");
        reply
    }
}

fn records(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("rec-{i}").into_bytes()).collect()
}

/// The payloads of partition `p` as node `id` holds them.
async fn payloads(cluster: &Cluster, id: u64, p: u32) -> Vec<Vec<u8>> {
    cluster
        .read_all(id, p)
        .await
        .into_iter()
        .map(|e| e.payload.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_lost_on_every_node_at_once_loses_no_acknowledged_record() {
    let disks = Disks::mount(3);
    let mut cluster = Cluster::start_on(3, 2, "", &disks.data);
    cluster.wait_for_leaders(1, WAIT).await;
    for chunk in 0..20 {
        cluster
            .append(&[1, 2, 3], 1, records(chunk * 5..chunk * 5 + 5), WAIT)
            .await;
    }
    let acked = payloads(&cluster, 1, 1).await;
    assert_eq!(acked.len(), 100);

    // The power goes: every process dies, every disk forgets what was not fsynced.
    let mut dropped = 0u64;
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        let reply = disks.ask(id, "power-loss");
        dropped += reply
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("dropped_bytes="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
    }
    assert!(
        dropped > 0,
        "nothing was unsynced: the test would prove nothing"
    );

    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.wait_for_leaders(1, WAIT).await;
    for id in 1..=3 {
        let got = payloads(&cluster, id, 1).await;
        assert_eq!(got[..], acked[..], "node {id} after the power loss");
    }
    // And the cluster goes on.
    cluster.append(&[1, 2, 3], 1, records(100..101), WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fails_stops_itself_and_comes_back_when_it_heals() {
    let disks = Disks::mount(3);
    let mut cluster = Cluster::start_on(3, 2, "", &disks.data);
    cluster.wait_for_leaders(1, WAIT).await;
    cluster.append(&[1, 2, 3], 0, records(0..10), WAIT).await;

    disks.ask(3, "fail fsync eio");
    // Writes keep coming; node 3 cannot make its copy durable.
    let mut next = 10;
    let exit = loop {
        cluster
            .append(&[1, 2], 0, records(next..next + 5), WAIT)
            .await;
        next += 5;
        if let Some(status) = cluster.exited(3) {
            break status;
        }
        assert!(next < 2_000, "node 3 never stopped on its failed disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !exit.success(),
        "a node stopped by a failed disk must exit non-zero: {exit}"
    );
    let log = cluster.log_of(3);
    assert!(
        log.contains("fail-stop"),
        "node 3's log does not say why it stopped:\n{log}"
    );

    // The others went on; once the disk is healthy (and lost what it had not synced) node 3
    // starts again and holds what the others hold.
    cluster
        .append(&[1, 2], 0, records(5_000..5_005), WAIT)
        .await;
    disks.ask(3, "fail clear");
    disks.ask(3, "power-loss");
    cluster.spawn(3);
    cluster.assert_identical_replicas(0, &[1, 2, 3], WAIT).await;
    let held = payloads(&cluster, 3, 0).await;
    for r in records(0..10).iter().chain(records(5_000..5_005).iter()) {
        assert!(
            held.contains(r),
            "node 3 lacks {:?}",
            String::from_utf8_lossy(r)
        );
    }
}
