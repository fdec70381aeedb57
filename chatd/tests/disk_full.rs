//! A full data disk, on a real small filesystem: an ext4 image loop-mounted under the test's temp
//! dir (root only, like the fault-injection runs; CI runs as root). Devices send through the
//! public API until the node refuses; then the tests check what the node promises:
//!
//! - writes are refused with RESOURCE_EXHAUSTED "disk full", never a crash;
//! - reads, device streams of stored messages, health and admin keep working;
//! - every acknowledged message survives, also a `kill -9` while the disk is full, and the node
//!   starts (and serves reads) on the full disk;
//! - when space is freed, the node writes again by itself, without a restart;
//! - in a cluster, the full node hands its leaderships away and the others keep taking sends;
//! - media uploads stop while the disk is low (the blobs live on the same disk).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::{ChatClient, Device, DeviceOptions};
use chat_proto::admin::DiskStatus;
use common::{health, register, scrape, wait_for_health, Cluster, SERVING};
use tempfile::TempDir;
use tonic::Code;

const MIB: u64 = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(60);
/// Sizes chosen against RocksDB's defaults: it flushes, and resumes after ENOSPC, only with a
/// write buffer's worth (64 MiB) free, so the ballast and the reserve are larger than that.
const STORAGE: &str = "[storage]\nreserve_mib = 128\nballast_mib = 80\n";
const LIMITS: &str = "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n";

/// One test at a time: each runs several chatd processes on its own loop mount, and on 2 cores
/// two at once starve each other's Raft timers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An ext4 filesystem of a given size, loop-mounted for the test and unmounted after it.
struct SmallDisk {
    _dir: TempDir,
    mnt: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
        assert_eq!(
            uid.trim(),
            "0",
            "the full-disk tests loop-mount a small filesystem and need root (as CI runs)"
        );
        let dir = TempDir::new().unwrap();
        let image = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        // -m 0: no blocks reserved for root, which chatd runs as here.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        SmallDisk { _dir: dir, mnt }
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Take space with a file of real blocks until only `leave` bytes are free (nothing to take
    /// when the nodes already used it: a node may flush into space its ballast just released).
    /// The file is created either way, so the caller removes it the same way.
    fn fill_leaving(&self, name: &str, leave: u64) {
        let file = std::fs::File::create(self.mnt.join(name)).unwrap();
        let take = self.free_bytes().saturating_sub(leave);
        if take == 0 {
            return;
        }
        run(Command::new("fallocate")
            .args(["-l", &take.to_string()])
            .arg(self.mnt.join(name)));
        drop(file);
    }

    /// Write into `name` until the filesystem refuses: the disk is full to the last block.
    fn fill_up(&self, name: &str) {
        let mut file = std::fs::File::create(self.mnt.join(name)).unwrap();
        for chunk in [MIB as usize, 4096, 512] {
            let buf = vec![0u8; chunk];
            while file.write_all(&buf).is_ok() {}
            let _ = file.sync_all();
        }
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.mnt.join(name)).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// What the senders learnt: acked client_msg_id → seq.
type Acked = Arc<Mutex<BTreeMap<String, u64>>>;

/// `senders` devices' worth of concurrent sends of 16 KiB to `chat`, until every one of them is
/// refused for a full disk (or `stop_after` sends are acked in all, when given). Any other
/// refusal fails the test. Returns how many sends were refused.
async fn send_until_full(
    device: &Arc<Device>,
    chat: u64,
    acked: &Acked,
    senders: usize,
    prefix: &str,
) -> u64 {
    let mut tasks = Vec::new();
    for t in 0..senders {
        let (device, acked, prefix) = (device.clone(), acked.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(240);
            for i in 0.. {
                assert!(Instant::now() < deadline, "the disk never filled");
                let id = format!("{prefix}-{t}-{i}");
                // Incompressible, as end-to-end encrypted payloads are (RocksDB compresses).
                let payload = random_payload(16 * 1024);
                match device.send_with_id(chat, &id, payload).await {
                    Ok(ack) => {
                        acked.lock().unwrap().insert(id, ack.seq);
                    }
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        assert!(s.message().contains("disk full"), "{s:?}");
                        return 1u64;
                    }
                    Err(s) => panic!("send {id}: {s:?}"),
                }
            }
            unreachable!()
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    refused
}

fn random_payload(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut payload = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut payload);
    payload
}

/// Every message of `chat` as `client` reads it, checked dense (1, 2, 3, …).
async fn history(client: &mut ChatClient, chat: u64) -> BTreeMap<String, u64> {
    let mut by_id = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = client.history(chat, after, 0, 500).await.unwrap();
        if page.messages.is_empty() {
            return by_id;
        }
        for m in page.messages {
            assert_eq!(m.seq, after + 1, "history is dense");
            after = m.seq;
            by_id.insert(m.client_msg_id, m.seq);
        }
    }
}

/// Every acked message is in `got` with the seq it was acked with; `got` holds nothing but what
/// the test sent (a send refused after an ambiguous first try may be there without an ack).
fn assert_all_acked_kept(acked: &Acked, got: &BTreeMap<String, u64>, prefixes: &[&str]) {
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    for (id, seq) in acked.iter() {
        assert_eq!(got.get(id), Some(seq), "acked message {id} (seq {seq})");
    }
    for id in got.keys() {
        assert!(
            prefixes.iter().any(|p| id.starts_with(p)),
            "unexpected message {id}"
        );
    }
}

async fn disk(cluster: &Cluster, id: u64) -> DiskStatus {
    cluster.status(id).await.disk.expect("status carries disk")
}

/// Node `id`'s disk status once `ready` holds (it reads free space once a second); panics with
/// `what` and the last status after `WAIT`.
async fn disk_when(
    cluster: &Cluster,
    id: u64,
    what: &str,
    ready: impl Fn(&DiskStatus) -> bool,
) -> DiskStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = disk(cluster, id).await;
        if ready(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{what}: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One send, retried while the disk is full, until it is taken or `WAIT` runs out.
async fn send_when_space(device: &Device, chat: u64, id: &str, acked: &Acked) {
    let deadline = Instant::now() + WAIT;
    loop {
        match device.send_with_id(chat, id, b"after".to_vec()).await {
            Ok(ack) => {
                acked.lock().unwrap().insert(id.to_string(), ack.seq);
                return;
            }
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(s) => panic!("send after freeing space: {s:?}"),
        }
    }
}

/// The whole life of one node on a disk that fills: the reserve refuses writes, reads and
/// streams go on, a `kill -9` on the full disk and a restart lose nothing, and freeing space
/// brings writes back without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_node_refuses_writes_on_a_full_disk_keeps_serving_and_recovers_by_itself() {
    let _serial = SERIAL.lock().await;
    let small = SmallDisk::mount(448);
    let data_dir = small.mnt.join("n1");
    let dirs = BTreeMap::from([(1, data_dir.clone())]);
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let config = format!("metrics_listen = \"{metrics}\"\n{LIMITS}{STORAGE}");
    let mut cluster = Cluster::start_on(1, 2, &config, &dirs);
    cluster.wait_for_leaders(1, WAIT).await;
    // Serving (its partition map made) before its disk fills.
    wait_for_health(&cluster.node(1).addr, SERVING, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let d = disk(&cluster, 1).await;
    assert_eq!((d.state.as_str(), d.ballast_held), ("ok", true), "{d:?}");

    // Leave the node ~40 MiB above its reserve, and fill that with messages.
    small.fill_leaving("filler", 128 * MIB + 40 * MIB);
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let (mut bob, bob_token) = register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let device = Arc::new(Device::start(DeviceOptions::new(
        vec![addr.clone()],
        &alice_token,
    )));
    let acked: Acked = Arc::default();
    let refused = send_until_full(&device, chat, &acked, 8, "a").await;
    assert_eq!(refused, 8);
    let d = disk(&cluster, 1).await;
    assert_eq!(d.state, "low", "{d:?}");
    // Still short of what taking writes again needs: the reserve and, once the ballast went,
    // room to make it again (RocksDB's flushes and compactions may since have freed a little,
    // so free space alone can be back just above the reserve).
    assert!(
        d.refused_writes >= 8 && d.free_bytes < d.reserve_bytes + d.ballast_bytes,
        "{d:?}"
    );
    let deadline = Instant::now() + WAIT;
    while !scrape(&metrics).contains("chatd_disk_state 1") {
        assert!(Instant::now() < deadline, "{}", scrape(&metrics));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(scrape(&metrics).contains("chatd_disk_refused_writes_total"));
    // Uploads stop too: blobs share the data disk with the log and must not eat its reserve.
    let http = chat_client::media::http_client(None).unwrap();
    let refused = chat_client::media::upload(&mut alice, &http, vec![7; 4096], "image/png")
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("507"),
        "an upload on a low disk: {refused:#}"
    );

    // Reads, a new device stream of the stored messages, and health go on.
    let got = history(&mut bob, chat).await;
    assert_all_acked_kept(&acked, &got, &["a-"]);
    assert_eq!(
        health(&addr).await,
        Some(1),
        "SERVING: {}",
        cluster.log_of(1)
    );
    let mut bob_dev = Device::start(DeviceOptions::new(vec![addr.clone()], &bob_token));
    let backlog = common::until_synced(&mut bob_dev, WAIT).await;
    assert_eq!(backlog.len(), got.len(), "bob's backlog is the whole chat");
    drop(bob_dev);

    // kill -9 the node, fill the disk to the last block, and start it again there: it releases
    // its ballast first, so RocksDB has room to open and recover.
    cluster.kill9(1);
    small.fill_up("filler2");
    cluster.spawn(1);
    cluster.wait_for_leaders(1, WAIT).await;
    // Serving (its partition map made) before its disk fills.
    wait_for_health(&cluster.node(1).addr, SERVING, WAIT).await;
    assert!(cluster
        .log_of(1)
        .contains("reason=\"starting with less than the reserve free\""));
    let mut bob = ChatClient::connect(&addr)
        .await
        .unwrap()
        .with_token(&bob_token)
        .unwrap();
    let got = history(&mut bob, chat).await;
    assert_all_acked_kept(&acked, &got, &["a-"]);
    // (Recovery frees what RocksDB had preallocated for its old WAL; fill that too.)
    small.fill_up("filler3");
    disk_when(&cluster, 1, "the node never noticed the full disk", |d| {
        d.state != "ok"
    })
    .await;
    let err = device
        .send_with_id(chat, "refused-while-full", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("disk full"), "{err:?}");

    // Free the space: the node takes writes again by itself.
    for filler in ["filler3", "filler2", "filler"] {
        small.remove(filler);
    }
    send_when_space(&device, chat, "after-free", &acked).await;
    let d = disk(&cluster, 1).await;
    assert_eq!((d.state.as_str(), d.ballast_held), ("ok", true), "{d:?}");
    let got = history(&mut bob, chat).await;
    assert_all_acked_kept(&acked, &got, &["a-", "after-free", "refused-while-full"]);
    assert!(!got.contains_key("refused-while-full"));
    assert!(
        !cluster.log_of(1).contains("panicked"),
        "{}",
        cluster.log_of(1)
    );
}

/// Another process fills the disk to the last block while the node takes sends: RocksDB meets
/// ENOSPC (or stops flushing) mid-write. The node releases its ballast so the database can go
/// on, stays up and answers, refuses new writes, and once space is freed writes again by itself,
/// without a restart; twice. (A restart on a full disk is in the other two tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_filled_from_outside_is_waited_out_not_fatal() {
    let _serial = SERIAL.lock().await;
    let small = SmallDisk::mount(448);
    let dirs = BTreeMap::from([(1, small.mnt.join("n1"))]);
    let cluster = Cluster::start_on(1, 2, &format!("{LIMITS}{STORAGE}"), &dirs);
    cluster.wait_for_leaders(1, WAIT).await;
    // Serving (its partition map made) before its disk fills.
    wait_for_health(&cluster.node(1).addr, SERVING, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let chat = alice.create_group("g", "", &[]).await.unwrap().chat_id;
    let device = Arc::new(Device::start(DeviceOptions::new(
        vec![addr.clone()],
        &alice_token,
    )));
    let acked: Acked = Arc::default();
    let small = Arc::new(small);

    for (round, prefix) in ["e", "f"].into_iter().enumerate() {
        let d = disk(&cluster, 1).await;
        assert_eq!((d.state.as_str(), d.ballast_held), ("ok", true), "{d:?}");
        // Well above the reserve, then the filler races the senders to the last block.
        small.fill_leaving("filler", 128 * MIB + 80 * MIB);
        let filler = {
            let small = small.clone();
            tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(300));
                small.fill_up("filler2");
            })
        };
        send_until_full(&device, chat, &acked, 8, prefix).await;
        filler.await.unwrap();
        // RocksDB may have freed files since (a flush retires WALs); take that too. Below its
        // flush headroom the node releases its ballast within a second.
        small.fill_up("filler3");
        disk_when(&cluster, 1, "ballast never released", |d| {
            d.state != "ok" && !d.ballast_held
        })
        .await;
        assert!(cluster.log_of(1).contains("released the emergency ballast"));
        assert_eq!(
            health(&addr).await,
            Some(1),
            "SERVING: {}",
            cluster.log_of(1)
        );
        let prefixes = ["e-", "f-", "resumed"];
        assert_all_acked_kept(&acked, &history(&mut alice, chat).await, &prefixes);

        // Space back, no restart: the database goes on, the ballast is made again, sends are
        // taken.
        for filler in ["filler3", "filler2", "filler"] {
            small.remove(filler);
        }
        send_when_space(&device, chat, &format!("resumed-{round}"), &acked).await;
        let d = disk(&cluster, 1).await;
        assert_eq!((d.state.as_str(), d.ballast_held), ("ok", true), "{d:?}");
    }
    let prefixes = ["e-", "f-", "resumed"];
    assert_all_acked_kept(&acked, &history(&mut alice, chat).await, &prefixes);
    assert!(!cluster.log_of(1).contains("panicked"));
}

/// The leaders of `cluster` as node `via` sees them.
async fn leaders(cluster: &Cluster, via: u64) -> BTreeMap<u32, u64> {
    cluster.status(via).await.leaders()
}

/// Three nodes, one of them on a small disk: when it runs short it hands its leaderships away
/// and the cluster keeps taking sends through the others; filled to the last block it falls
/// behind without failing, survives `kill -9`, and catches up once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_node_of_three_hands_off_its_leaderships_and_catches_up_later() {
    let _serial = SERIAL.lock().await;
    let small = SmallDisk::mount(1024);
    let dirs = BTreeMap::from([(3, small.mnt.join("n3"))]);
    let partitions = 3;
    let mut cluster = Cluster::start_on(3, partitions, &format!("{LIMITS}{STORAGE}"), &dirs);
    cluster.wait_for_leaders(1, WAIT).await;
    // Serving (its partition map made) before its disk fills.
    wait_for_health(&cluster.node(1).addr, SERVING, WAIT).await;
    let addrs: Vec<String> = (1..=3).map(|i| cluster.node(i).addr.clone()).collect();
    assert!(
        leaders(&cluster, 1).await.values().any(|&l| l == 3),
        "node 3 leads a partition at first"
    );

    // Each user in its own partition is more likely; chats spread over partitions.
    let (mut alice, alice_token) = register(&addrs[0], "alice").await;
    let mut chats = Vec::new();
    for i in 0..6 {
        let name = format!("g{i}");
        chats.push(alice.create_group(&name, "", &[]).await.unwrap().chat_id);
    }
    let device = Arc::new(Device::start(DeviceOptions::new(
        addrs[..2].to_vec(),
        &alice_token,
    )));
    small.fill_leaving("filler", 128 * MIB + 24 * MIB);

    // Send through nodes 1 and 2 until node 3 is below its reserve and leads nothing; sends may
    // be refused only while node 3 still leads their partition.
    let acked: Acked = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut i = 0u64;
    loop {
        let chat = chats[(i % chats.len() as u64) as usize];
        let id = format!("c-{i}");
        match device
            .send_with_id(chat, &id, random_payload(16 * 1024))
            .await
        {
            Ok(ack) => {
                acked.lock().unwrap().insert(id, ack.seq);
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("node 3: disk full"), "{s:?}")
            }
            Err(s) => panic!("send {id}: {s:?}"),
        }
        i += 1;
        if i.is_multiple_of(50) {
            let low = disk(&cluster, 3).await.state != "ok";
            let led_by_3 = leaders(&cluster, 1).await.values().any(|&l| l == 3);
            if low && !led_by_3 {
                break;
            }
            assert!(Instant::now() < deadline, "node 3 never handed off");
        }
    }

    // From now on every send is taken.
    for j in 0..300 {
        let chat = chats[j % chats.len()];
        let id = format!("d-{j}");
        let ack = tokio::time::timeout(WAIT, device.send_with_id(chat, &id, vec![1u8; 1024]))
            .await
            .unwrap_or_else(|_| panic!("send {id}: no answer within {WAIT:?}"))
            .unwrap_or_else(|s| panic!("send {id} with node 3 short of disk: {s:?}"));
        acked.lock().unwrap().insert(id, ack.seq);
    }

    // Node 3 down to its last megabytes with its ballast already spent: it holds its Raft writes
    // (keeping that space for RocksDB) instead of replicating into the last block, and killed
    // and restarted there, it comes up and serves reads.
    small.fill_leaving("filler2", 8 * MIB);
    disk_when(&cluster, 3, "node 3 kept its ballast", |d| !d.ballast_held).await;
    small.fill_leaving("filler3", 8 * MIB);
    for j in 0..100 {
        let id = format!("f-{j}");
        let sent = device.send_with_id(chats[j % chats.len()], &id, random_payload(16 * 1024));
        let ack = tokio::time::timeout(WAIT, sent)
            .await
            .unwrap_or_else(|_| panic!("send {id}: no answer within {WAIT:?}"))
            .unwrap_or_else(|s| panic!("send {id} with node 3 full: {s:?}"));
        acked.lock().unwrap().insert(id, ack.seq);
    }
    disk_when(&cluster, 3, "node 3 never held its writes", |d| {
        d.state == "full"
    })
    .await;
    cluster.kill9(3);
    cluster.spawn(3);
    cluster.wait_for_leaders(3, WAIT).await;
    let d = disk(&cluster, 3).await;
    assert!(d.state != "ok", "{d:?}");

    // Space back: node 3 catches up and its replicas equal the others'.
    for filler in ["filler3", "filler2", "filler"] {
        small.remove(filler);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut same = true;
        for p in 0..partitions {
            let d1 = cluster.digest(1, p).await;
            let d3 = cluster.digest(3, p).await;
            same &= d1.last_offset == d3.last_offset && d1.sha256 == d3.sha256;
        }
        if same {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 did not catch up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The node reads free space once a second; within a few it has its ballast back.
    disk_when(&cluster, 3, "node 3 stays short of space", |d| {
        (d.state.as_str(), d.ballast_held) == ("ok", true)
    })
    .await;

    let mut got = BTreeMap::new();
    let mut reader = ChatClient::connect(&addrs[2])
        .await
        .unwrap()
        .with_token(&alice_token)
        .unwrap();
    for &chat in &chats {
        for (id, seq) in history(&mut reader, chat).await {
            got.insert(id, seq);
        }
    }
    // Seqs are per chat, so compare per id: each acked id has its acked seq.
    assert_all_acked_kept(&acked, &got, &["c-", "d-", "f-"]);
    for id in 1..=3 {
        assert!(!cluster.log_of(id).contains("panicked"), "node {id}");
    }
}
