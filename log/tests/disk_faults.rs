//! The log on a failing disk, through `faultfs` (a FUSE filesystem that keeps unsynced writes in
//! its own memory, mounted in this process): a write whose fsync or write failed is never
//! acknowledged, and the node stops itself (fail-stop) instead of going on; once the disk is
//! healthy, after a power loss too, it opens again with everything it acknowledged. (Power
//! losses of whole chatd processes are in `chatd/tests/disk_faults.rs`.) Root only (FUSE), like
//! the fault-injection runs; CI runs as root.

mod common;

use std::path::{Path, PathBuf};

use std::time::Duration;

use chat_log::{LogNode, LogOffset, PartitionId};

const P: PartitionId = PartitionId(0);

struct Disk {
    dir: tempfile::TempDir,
    control: PathBuf,
    mount: Option<faultfs::Mounted>,
}

impl Disk {
    fn mount() -> Disk {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the disk-fault tests mount a FUSE filesystem and need root (as CI runs)"
        );
        let dir = tempfile::tempdir().unwrap();
        for sub in ["backing", "data"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let control = dir.path().join("control.sock");
        let mount = faultfs::spawn(&faultfs::MountOptions {
            backing: dir.path().join("backing"),
            mountpoint: dir.path().join("data"),
            control: control.clone(),
            threads: 4,
        })
        .expect("mount faultfs");
        Disk {
            dir,
            control,
            mount: Some(mount),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ask(&self, command: &str) -> String {
        let reply = faultfs::request(&self.control, command).unwrap();
        assert!(reply.starts_with("ok"), "{command}: {reply}");
        reply
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.mount.take();
    }
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("record-{i}").into_bytes()).collect()
}

/// Every record of `P` from offset 1, as bytes.
fn records(node: &LogNode) -> Vec<Vec<u8>> {
    node.read_events(P, LogOffset(1), 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.payload.to_vec())
        .collect()
}

/// [`records`] once the node has applied at least `n` (or what it has after 20 s).
async fn applied(node: &LogNode, n: usize) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = records(node);
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open(data: &Path) -> std::sync::Arc<LogNode> {
    common::single_node(data, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_and_stops_the_node() {
    for failure in ["fsync eio", "write eio", "fsync enospc"] {
        let disk = Disk::mount();
        let node = open(&disk.data()).await;
        node.propose(P, payloads(0..20)).await.unwrap();
        let acked = records(&node);

        disk.ask(&format!("fail {failure}"));
        let refused =
            tokio::time::timeout(Duration::from_secs(20), node.propose(P, payloads(20..25)))
                .await
                .unwrap_or_else(|_| {
                    panic!("{failure}: a write on a failing disk must be refused, not hang")
                });
        assert!(
            refused.is_err(),
            "{failure}: acknowledged a write the disk failed"
        );
        // Fail-stop: the node stops itself instead of serving on.
        tokio::time::timeout(Duration::from_secs(20), node.until_stopped())
            .await
            .unwrap_or_else(|_| panic!("{failure}: the node did not stop after the disk failed"));
        assert!(node.is_stopped());
        common::close(node).await;

        // The disk heals; the machine also lost power meanwhile.
        disk.ask("fail clear");
        disk.ask("power-loss");
        let node = open(&disk.data()).await;
        // Applied events are written without a sync of their own (the Raft log is what is
        // durable): after the power loss they come back as the group applies its log again.
        let after = applied(&node, acked.len()).await;
        assert!(
            after.len() >= acked.len(),
            "{failure}: acknowledged records were lost"
        );
        assert_eq!(
            after[..acked.len()],
            acked[..],
            "{failure}: an acknowledged record was lost"
        );
        // It serves again.
        node.propose(P, payloads(30..31)).await.unwrap();
        assert!(records(&node).contains(&b"record-30".to_vec()));
        common::close(node).await;
    }
}
