//! What placement buys and costs, against real chatd processes:
//!
//! - **Work per message as the cluster grows.** N processes (3, 6, 9) with R replicas per
//!   partition; the same records appended through each partition's leader; per node, the events
//!   it applied, the bytes it wrote to disk (`/proc/<pid>/io`) and the WAL syncs it made
//!   (`chatd_wal_syncs_total`), each per message appended. With every partition on R of N
//!   nodes, a node's share should be R/N.
//! - **Moving a partition.** One partition filled to a stated size, a new node joined, and that
//!   partition's replica moved onto it (learner, snapshot, catch-up, joint change): the time
//!   until the map says the move is done.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_proto::admin::*;
use chat_proto::log::PartitionMap;
use chat_proto::{connect_admin, AdminClient};

use chat_client::admin::Admin;

use crate::latency::{node_dir, start_processes_with, SECRET};

/// How long one append may keep following redirects and retrying through an election.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// The chatd binary (build it with `cargo build --release -p chatd`).
    #[arg(long, default_value = "target/release/chatd")]
    chatd: PathBuf,
    /// Cluster sizes to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "3,6,9")]
    nodes: Vec<u64>,
    #[arg(long, default_value_t = 3)]
    replication: u32,
    #[arg(long, default_value_t = 36)]
    partitions: u32,
    /// Records appended per run, spread evenly over the partitions.
    #[arg(long, default_value_t = 36_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// MiB of records in the partition that is moved (0: no move).
    #[arg(long, default_value_t = 64)]
    move_mib: u64,
    /// Parent of the runs' data dirs (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Append the results as JSON lines here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.chatd.exists(),
        "no chatd at {} (cargo build --release -p chatd)",
        args.chatd.display()
    );
    println!("| nodes | R | events applied per message, per node | disk bytes written per message, per node | WAL syncs per message, per node | R/N |");
    println!("|---|---|---|---|---|---|");
    for &n in &args.nodes {
        let row = work_per_message(&args, n).await?;
        println!(
            "| {n} | {} | {:.3} | {:.0} | {:.4} | {:.3} |",
            args.replication,
            row.events,
            row.bytes,
            row.syncs,
            f64::from(args.replication.min(n as u32)) / n as f64
        );
        if let Some(path) = &args.json {
            crate::jsonl::append(
                path,
                [serde_json::json!({
                    "bench": "placement-work",
                    "nodes": n,
                    "replication": args.replication,
                    "partitions": args.partitions,
                    "records": args.records,
                    "record_bytes": args.record_bytes,
                    "events_per_message_per_node": row.events,
                    "bytes_per_message_per_node": row.bytes,
                    "syncs_per_message_per_node": row.syncs,
                })],
            )?;
        }
    }
    if args.move_mib > 0 {
        let (mib, took) = move_partition(&args).await?;
        println!(
            "\nmove of one replica of a {mib:.0} MiB partition onto a new node: {:.1} s ({:.1} MiB/s)",
            took.as_secs_f64(),
            mib / took.as_secs_f64()
        );
        if let Some(path) = &args.json {
            crate::jsonl::append(
                path,
                [serde_json::json!({
                    "bench": "placement-move",
                    "partition_mib": mib,
                    "seconds": took.as_secs_f64(),
                })],
            )?;
        }
    }
    Ok(())
}

/// Per node, averaged over the nodes: what one appended message cost it.
struct Row {
    events: f64,
    bytes: f64,
    syncs: f64,
}

/// One node of a run: its admin client, process id and metrics address.
struct Node {
    admin: AdminClient,
    pid: u32,
    metrics: SocketAddr,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn connect(addr: &str) -> anyhow::Result<AdminClient> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect_admin(addr, SECRET).await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => anyhow::bail!("chatd at {addr} did not come up: {e}"),
        }
    }
}

/// Wait until node `admin`'s map satisfies `done`.
async fn wait_map(
    admin: &mut AdminClient,
    what: &str,
    timeout: Duration,
    done: impl Fn(&PartitionMap) -> bool,
) -> anyhow::Result<PartitionMap> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(reply) = admin.get_map(GetMapRequest {}).await {
            let map = reply.into_inner();
            if done(&map) {
                return Ok(map);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn settled_with_leaders(map: &PartitionMap, partitions: u32) -> bool {
    map.replicas.len() == partitions as usize
        && map
            .replicas
            .values()
            .all(|r| r.learners.is_empty() && r.leaving.is_empty() && r.leader_hint != 0)
}

/// Bytes this process has caused to be written to storage (`write_bytes` of /proc/<pid>/io).
fn written_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("read /proc/{pid}/io (run as root or as the same user)"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no write_bytes for {pid}"))
}

/// `chatd_wal_syncs_total` from a node's `/metrics`.
async fn wal_syncs(metrics: SocketAddr) -> anyhow::Result<u64> {
    let page = crate::soak::scrape(metrics)
        .await
        .with_context(|| format!("scrape {metrics}"))?;
    page.lines()
        .find_map(|l| l.strip_prefix("chatd_wal_syncs_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow::anyhow!("no chatd_wal_syncs_total at {metrics}"))
}

/// Events a node's replicas hold (the sum of their last offsets).
async fn events_held(admin: &mut AdminClient) -> anyhow::Result<u64> {
    let status = admin.status(StatusRequest {}).await?.into_inner();
    Ok(status.partitions.iter().map(|p| p.last_offset).sum())
}

async fn work_per_message(args: &Args, n: u64) -> anyhow::Result<Row> {
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let metrics: Vec<u16> = (0..n).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let extra = format!("replication = {}\n", args.replication);
    let (addrs, procs) =
        start_processes_with(&args.chatd, dir.path(), n, args.partitions, &extra, |i| {
            vec![
                "--metrics-listen".into(),
                format!("127.0.0.1:{}", metrics[i as usize - 1]),
            ]
        })?;
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        nodes.push(Node {
            admin: connect(addr).await?,
            pid: procs.pid(i as u64 + 1),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics[i])),
        });
    }
    let map = wait_map(
        &mut nodes[0].admin,
        "every partition placed, with a leader",
        Duration::from_secs(60),
        |m| settled_with_leaders(m, args.partitions),
    )
    .await?;
    // Let the start-up writes (formation, leader hints, first snapshots) settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut before = Vec::new();
    for node in &mut nodes {
        before.push((
            events_held(&mut node.admin).await?,
            written_bytes(node.pid)?,
            wal_syncs(node.metrics).await?,
        ));
    }
    append_evenly(args, &addrs, &map).await?;
    // Followers apply what the leaders committed a moment later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut events, mut bytes, mut syncs) = (0.0, 0.0, 0.0);
    for (node, (e0, b0, s0)) in nodes.iter_mut().zip(before) {
        events += (events_held(&mut node.admin).await? - e0) as f64;
        bytes += (written_bytes(node.pid)? - b0) as f64;
        syncs += (wal_syncs(node.metrics).await? - s0) as f64;
    }
    let per = (args.records * n) as f64;
    drop(procs);
    Ok(Row {
        events: events / per,
        bytes: bytes / per,
        syncs: syncs / per,
    })
}

/// Append `args.records` records, the same number to each partition, each partition's in
/// batches of 100 through its leader (following redirects), the partitions side by side.
async fn append_evenly(args: &Args, addrs: &[String], map: &PartitionMap) -> anyhow::Result<()> {
    let per_partition = args.records / u64::from(args.partitions);
    let mut tasks = Vec::new();
    for (p, replicas) in &map.replicas {
        let leader = addrs[replicas.leader_hint as usize - 1].clone();
        let (p, bytes) = (*p, args.record_bytes);
        tasks.push(tokio::spawn(async move {
            let mut admin = Admin::connect(&leader, SECRET).await?;
            let mut sent = 0;
            while sent < per_partition {
                let batch = (per_partition - sent).min(100);
                let records = (0..batch).map(|_| vec![0x5a; bytes]).collect();
                admin.append(p, records, APPEND_TIMEOUT).await?;
                sent += batch;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Start a chatd that joins the cluster of `secret` as node `id` at `addr`.
fn spawn_joining(
    chatd: &Path,
    dir: &Path,
    id: u64,
    addr: &str,
    partitions: u32,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("n{id}.log")))?;
    Command::new(chatd)
        .args(["--node-id", &id.to_string(), "--join"])
        .args(["--peers", &format!("{id}={addr}")])
        .args(["--partitions", &partitions.to_string()])
        .arg("--data-dir")
        .arg(node_dir(dir, id))
        .env("CHATD_CLUSTER_SECRET", SECRET)
        .env("RUST_LOG", "warn,openraft=error")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("start the joining chatd")
}

/// Fill partition 0 of a 3-node cluster to `args.move_mib`, join a fourth node with balancing
/// off, and move one replica of partition 0 onto it; the MiB moved and the time the move took.
async fn move_partition(args: &Args) -> anyhow::Result<(f64, Duration)> {
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let extra = format!("replication = {}\n", args.replication.min(3));
    let (addrs, _procs) =
        start_processes_with(&args.chatd, dir.path(), 3, args.partitions, &extra, |_| {
            Vec::new()
        })?;
    let mut admin = connect(&addrs[0]).await?;
    let map = wait_map(&mut admin, "placed", Duration::from_secs(60), |m| {
        settled_with_leaders(m, args.partitions)
    })
    .await?;
    admin
        .set_balancing(SetBalancingRequest { enabled: false })
        .await?;
    let p0 = &map.replicas[&0];
    let leader = addrs[p0.leader_hint as usize - 1].clone();
    let record = 1024;
    let records = args.move_mib * 1024 * 1024 / record as u64;
    let started = Instant::now();
    let mut filler = Admin::connect(&leader, SECRET).await?;
    let mut sent = 0;
    while sent < records {
        let batch = (records - sent).min(256);
        let batch_records = (0..batch).map(|_| vec![0x5a; record]).collect();
        filler.append(0, batch_records, APPEND_TIMEOUT).await?;
        sent += batch;
        if sent % (16 * 1024) < 256 {
            eprintln!(
                "filling partition 0: {} / {} MiB",
                (sent * record as u64) >> 20,
                args.move_mib
            );
        }
    }
    eprintln!("filled in {:.1} s", started.elapsed().as_secs_f64());

    let new_addr = format!("127.0.0.1:{}", free_port()?);
    let _joined = ChildGuard(spawn_joining(
        &args.chatd,
        dir.path(),
        4,
        &new_addr,
        args.partitions,
    )?);
    admin
        .add_node(AddNodeRequest {
            node_id: 4,
            addr: new_addr,
        })
        .await?;
    let from = *p0
        .voters
        .iter()
        .find(|v| **v != p0.leader_hint)
        .unwrap_or(&p0.voters[0]);
    let started = Instant::now();
    admin
        .move_replica(MoveReplicaRequest {
            partition: 0,
            from_node: from,
            to_node: 4,
        })
        .await?;
    wait_map(&mut admin, "the move", Duration::from_secs(30 * 60), |m| {
        let r = &m.replicas[&0];
        r.learners.is_empty() && r.leaving.is_empty() && r.voters.contains(&4)
    })
    .await?;
    let took = started.elapsed();
    Ok(((records * record as u64) as f64 / (1024.0 * 1024.0), took))
}

/// Kills the child when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
