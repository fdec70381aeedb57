//! `chat-bench peer`: chatd beside NATS JetStream R3, in one run, driven by one load generator.
//!
//! The run measures this disk's fsync floor, then starts a 3-node NATS JetStream cluster (one
//! stream with 3 replicas, `sync_interval: always`, so every PubAck is fsync-backed on a quorum)
//! and loads it, stops it, then starts 3 chatd processes and loads them the way phones do:
//! devices on `Connect` streams (spread over the three nodes), each sending into its own chat
//! (chats spread over every partition), an ack being the `SendAck` frame (quorum fsync + apply +
//! seq assigned). Both systems see the same loads: closed loops at each `--inflight`, then open
//! loops at each `--rate`, 256-byte payloads, and the CPU each server process used meanwhile.
//!
//! One system runs at a time, so neither steals the other's cores; the fsync floor is of this
//! run, so the table can be read against the disk of the day. Every cell is also written as one
//! JSON line to `--json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chat_client::FrameSender;
use chat_proto::chat_v1::server_frame;
use hdrhistogram::Histogram;
use tokio::sync::oneshot;

use crate::latency::{start_processes, Procs};
use crate::procstat::{cpu_ticks, pct};
use crate::{fsync, jsonl};

#[derive(clap::Args)]
pub struct Args {
    /// The chatd binary (build it with `cargo build --release -p chatd`).
    #[arg(long, default_value = "target/release/chatd")]
    chatd: PathBuf,
    /// The official nats-server binary, 2.10 or later (`scripts/bench-peer` fetches 2.15.1).
    #[arg(long, default_value = "target/bench-tools/nats-server")]
    nats_server: PathBuf,
    /// Closed-loop cells: this many sends in flight at all times.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    inflight: Vec<usize>,
    /// Open-loop cells: this many sends offered per second, each waiting for its own ack.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rate: Vec<u64>,
    /// Seconds per cell.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// chatd partitions.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Which systems to run: `nats`, `chatd`, and `chatd-tls` (chatd with TLS on every link:
    /// mutual TLS between nodes, devices on the public address over TLS).
    #[arg(long, value_delimiter = ',', default_value = "nats,chatd")]
    systems: Vec<String>,
    /// A word naming this run in the JSON lines (a commit, "before", "after").
    #[arg(long, default_value = "")]
    label: String,
    /// Where the JSON lines go (appended).
    #[arg(long, default_value = "target/bench/peer.jsonl")]
    json: PathBuf,
    /// Where data dirs go (their filesystem is what is measured); a temp dir when absent.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// How a cell offers its load.
#[derive(Clone, Copy)]
enum Load {
    Closed { inflight: usize },
    Open { rate: u64 },
}

impl Load {
    fn describe(self) -> String {
        match self {
            Load::Closed { inflight } => format!("{inflight} in flight"),
            Load::Open { rate } => format!("open loop {rate}/s"),
        }
    }
}

/// One measured cell.
struct Cell {
    system: &'static str,
    load: Load,
    acked: u64,
    secs: f64,
    hist: Histogram<u64>,
    server_cpu: Vec<f64>,
    client_cpu: f64,
}

impl Cell {
    fn msgs_per_s(&self) -> f64 {
        self.acked as f64 / self.secs
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    fn server_cpu_total(&self) -> f64 {
        self.server_cpu.iter().sum()
    }
    /// Server CPU milliseconds (all processes) per 1,000 acked messages.
    fn cpu_ms_per_1k(&self) -> f64 {
        self.server_cpu_total() / 100.0 * self.secs * 1000.0 / (self.acked as f64 / 1000.0)
    }
}

/// A system under load: something that sends one message in slot `slot` and waits for its ack.
trait Target: Send + Sync + 'static {
    fn send(
        &self,
        slot: usize,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + '_;
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let floor = fsync::measure(dir.path(), 2000)?;
    println!("{floor}");
    let slots = args.inflight.iter().copied().max().unwrap_or(1).max(64);
    let mut cells = Vec::new();
    for system in &args.systems {
        match system.as_str() {
            "nats" => cells.extend(run_nats(&args, dir.path(), slots).await?),
            "chatd" => cells.extend(run_chatd(&args, dir.path(), slots, false).await?),
            "chatd-tls" => cells.extend(run_chatd(&args, dir.path(), slots, true).await?),
            other => bail!("unknown system {other:?} (nats, chatd, chatd-tls)"),
        }
    }
    print_table(&cells, &floor);
    write_json(&args, &cells, &floor)?;
    Ok(())
}

async fn run_cells<T: Target>(
    system: &'static str,
    target: Arc<T>,
    args: &Args,
    slots: usize,
    pids: &[u32],
) -> anyhow::Result<Vec<Cell>> {
    let loads = args
        .inflight
        .iter()
        .map(|&inflight| Load::Closed { inflight })
        .chain(args.rate.iter().map(|&rate| Load::Open { rate }));
    // Warm up: connections, leaders, caches.
    closed_loop(&target, 16.min(slots), Duration::from_secs(2)).await?;
    let mut cells = Vec::new();
    for load in loads {
        let cpu_before: Vec<u64> = pids
            .iter()
            .map(|&p| cpu_ticks(p))
            .collect::<Result<_, _>>()?;
        let client_before = cpu_ticks(std::process::id())?;
        let start = Instant::now();
        let duration = Duration::from_secs(args.seconds);
        let (acked, hist) = match load {
            Load::Closed { inflight } => closed_loop(&target, inflight, duration).await?,
            Load::Open { rate } => open_loop(&target, slots, rate, duration).await?,
        };
        let secs = start.elapsed().as_secs_f64();
        let server_cpu = pids
            .iter()
            .zip(cpu_before)
            .map(|(&p, before)| Ok(pct(cpu_ticks(p)? - before, secs)))
            .collect::<anyhow::Result<_>>()?;
        let client_cpu = pct(cpu_ticks(std::process::id())? - client_before, secs);
        let cell = Cell {
            system,
            load,
            acked,
            secs,
            hist,
            server_cpu,
            client_cpu,
        };
        println!(
            "  {system:5} {:>20}: {:>8.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0}%",
            load.describe(),
            cell.msgs_per_s(),
            cell.ms(0.5),
            cell.ms(0.99),
            cell.server_cpu_total()
        );
        cells.push(cell);
    }
    Ok(cells)
}

/// `inflight` tasks, each sending and waiting for its ack in a loop, for `duration`.
async fn closed_loop<T: Target>(
    target: &Arc<T>,
    inflight: usize,
    duration: Duration,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..inflight)
        .map(|slot| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3)?;
                while Instant::now() < end {
                    let sent = Instant::now();
                    target.send(slot).await?;
                    hist.record(sent.elapsed().as_micros() as u64)?;
                }
                anyhow::Ok(hist)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok((hist.len(), hist))
}

/// Sends offered at `rate` per second whatever the acks do (no coordinated omission), each on
/// its own task, slots taken round robin.
async fn open_loop<T: Target>(
    target: &Arc<T>,
    slots: usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = rate * duration.as_secs();
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..total {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let target = target.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = target.send(i as usize % slots).await;
            let _ = tx.send(result.map(|()| sent.elapsed().as_micros() as u64));
        });
    }
    drop(tx);
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(r) = rx.recv().await {
        hist.record(r?)?;
    }
    Ok((hist.len(), hist))
}

// ---- NATS JetStream -------------------------------------------------------------------------

struct Nats {
    js: Vec<async_nats::jetstream::Context>,
    payload: bytes::Bytes,
    subjects: Vec<String>,
}

impl Target for Nats {
    async fn send(&self, slot: usize) -> anyhow::Result<()> {
        let js = &self.js[slot % self.js.len()];
        let subject = self.subjects[slot % self.subjects.len()].clone();
        js.publish(subject, self.payload.clone())
            .await
            .context("publish")?
            .await
            .context("publish ack")?;
        Ok(())
    }
}

async fn run_nats(args: &Args, dir: &Path, slots: usize) -> anyhow::Result<Vec<Cell>> {
    ensure!(
        args.nats_server.exists(),
        "no nats-server at {} (scripts/bench-peer fetches the official 2.15.1 binary)",
        args.nats_server.display()
    );
    check_nats_version(&args.nats_server)?;
    let (ports, procs) = start_nats(&args.nats_server, &dir.join("nats"))?;
    println!("NATS JetStream, 3 nodes, R3, sync_interval: always");
    let mut js = Vec::new();
    for port in &ports {
        let client = connect_nats(*port).await?;
        js.push(async_nats::jetstream::new(client));
    }
    create_stream(&js[0]).await?;
    let target = Arc::new(Nats {
        js,
        payload: bytes::Bytes::from(vec![0x5a; args.payload]),
        subjects: (0..slots).map(|i| format!("bench.{i}")).collect(),
    });
    let pids: Vec<u32> = procs.iter().map(Child::id).collect();
    let cells = run_cells("nats", target, args, slots, &pids).await;
    drop(KillOnDrop(procs));
    cells
}

/// Refuse a server without `sync_interval` (before 2.10): its acks would not be fsync-backed.
fn check_nats_version(bin: &Path) -> anyhow::Result<()> {
    let out = Command::new(bin).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .with_context(|| format!("cannot read the version of {}: {text}", bin.display()))?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    ensure!(
        (major, minor) >= (2, 10),
        "{} is nats-server {version}: it has no `sync_interval: always`, so its acks are not \
         fsync-backed; use 2.10 or later (scripts/bench-peer fetches 2.15.1)",
        bin.display()
    );
    println!("nats-server {version}");
    Ok(())
}

struct KillOnDrop(Vec<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Three nats-server processes in one JetStream cluster; returns their client ports.
fn start_nats(bin: &Path, dir: &Path) -> anyhow::Result<(Vec<u16>, Vec<Child>)> {
    std::fs::create_dir_all(dir)?;
    let client: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let routes: Vec<String> = cluster
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    let mut procs = Vec::new();
    for i in 0..3 {
        let config = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\n\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
             cluster {{\n  name: bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            client[i],
            dir.join(format!("n{i}")).display(),
            cluster[i],
            routes.join(", ")
        );
        let path = dir.join(format!("n{i}.conf"));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
        procs.push(
            Command::new(bin)
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .context("start nats-server")?,
        );
    }
    Ok((client, procs))
}

async fn connect_nats(port: u16) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match async_nats::connect(format!("127.0.0.1:{port}")).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => bail!("nats at port {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The stream every publish goes to: file storage, 3 replicas. Retries while the JetStream
/// meta group elects its leader.
async fn create_stream(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let config = async_nats::jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            num_replicas: 3,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        match js.get_or_create_stream(config).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("create the R3 stream: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

// ---- chatd, through the device API ------------------------------------------------------------

/// chatd's config for benchmarks: the per-device send rate limit lifted, so the load is what is
/// measured.
pub(crate) const CHATD_CONFIG: &str = "[chat]\nsends_per_second = 1000000\nsend_burst = 1000000\n";

/// Sends waiting for their ack, by client_msg_id.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Result<(), String>>>>>;

/// One device's stream: sends go out on `tx`; a reader task answers `pending` from the acks.
struct DevicePipe {
    tx: FrameSender,
    chat: u64,
    next_id: AtomicU64,
    pending: Waiters,
}

struct Chatd {
    devices: Vec<DevicePipe>,
    payload: Vec<u8>,
}

impl Target for Chatd {
    async fn send(&self, slot: usize) -> anyhow::Result<()> {
        let device = &self.devices[slot % self.devices.len()];
        let id = format!("{slot}-{}", device.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        device.pending.lock().unwrap().insert(id.clone(), tx);
        device
            .tx
            .send(device.chat, &id, self.payload.clone())
            .await?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("send refused: {e}"),
            Err(_) => bail!("the device stream ended before the ack"),
        }
    }
}

async fn run_chatd(args: &Args, dir: &Path, slots: usize, tls: bool) -> anyhow::Result<Vec<Cell>> {
    ensure!(
        args.chatd.exists(),
        "no chatd at {} (cargo build --release -p chatd)",
        args.chatd.display()
    );
    let system = if tls { "chatd-tls" } else { "chatd" };
    let dir = dir.join(system);
    std::fs::create_dir_all(&dir)?;
    let (addrs, procs, dialer) = if tls {
        start_chatd_tls(args, &dir)?
    } else {
        let (addrs, procs) = start_processes(&args.chatd, &dir, 3, args.partitions, CHATD_CONFIG)?;
        (addrs, procs, chat_tls::Dialer::plain())
    };
    println!("{system}, 3 processes, {} partitions", args.partitions);
    let devices = open_devices(&dialer, &addrs, slots).await?;
    let target = Arc::new(Chatd {
        devices,
        payload: vec![0x5a; args.payload],
    });
    let pids: Vec<u32> = (1..=3).map(|i| procs.pid(i)).collect();
    run_cells(system, target, args, slots, &pids).await
}

/// Three chatd processes with TLS on every link: a CA and node certificates made here (as
/// `chatctl certs` makes them), nodes talking mutual TLS on their internal addresses, devices on
/// separate public addresses over TLS. Answers the public addresses and a dialer trusting the CA.
fn start_chatd_tls(
    args: &Args,
    dir: &Path,
) -> anyhow::Result<(Vec<String>, Procs, chat_tls::Dialer)> {
    use chat_tls::ca::{self, Kind};
    let certs = dir.join("certs");
    let authority = ca::new_ca("bench", 30)?;
    let (ca_pem, _) = ca::write(&certs, "ca", &authority)?;
    let mut public = Vec::new();
    for i in 1..=3 {
        let issued = ca::issue(
            &authority,
            Kind::Node,
            &format!("node{i}"),
            &["127.0.0.1".into()],
            30,
        )?;
        ca::write(&certs, &format!("node{i}"), &issued)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        public.push(format!("127.0.0.1:{port}"));
    }
    let node_args = |i: u64| {
        let file = |ext: &str| certs.join(format!("node{i}.{ext}")).display().to_string();
        vec![
            "--tls-ca".to_string(),
            ca_pem.display().to_string(),
            "--tls-cert".to_string(),
            file("pem"),
            "--tls-key".to_string(),
            file("key"),
            "--public-listen".to_string(),
            public[i as usize - 1].clone(),
        ]
    };
    let (_, procs) = crate::latency::start_processes_with(
        &args.chatd,
        dir,
        3,
        args.partitions,
        CHATD_CONFIG,
        node_args,
    )?;
    let dialer = chat_tls::Dialer::fixed(chat_tls::client_config(Some(&ca_pem), None)?);
    Ok((public, procs, dialer))
}

/// `n` users, each with one device streaming from node `i mod 3` and its own direct chat (with a
/// partner who stays offline), so chats spread over every partition.
async fn open_devices(
    dialer: &chat_tls::Dialer,
    addrs: &[String],
    n: usize,
) -> anyhow::Result<Vec<DevicePipe>> {
    let mut clients = Vec::new();
    for a in addrs {
        clients.push(crate::delivery::connect_retrying_via(dialer, a).await?);
    }
    let run = std::process::id();
    let mut devices = Vec::with_capacity(n);
    for i in 0..n {
        let client = &mut clients[i % addrs.len()];
        let me = client.register(&format!("peer{run}-{i}"), 1).await?;
        client
            .register(&format!("peer{run}-{i}-partner"), 1)
            .await?;
        let mut rpc = client.clone().with_token(&me.token)?;
        let chat = rpc
            .create_direct(&format!("peer{run}-{i}-partner"))
            .await?
            .chat_id;
        let mut stream = rpc.open_stream(&me.token, &Default::default()).await?;
        let pending = Waiters::default();
        let tx = stream.sender();
        let answers = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let (id, result) = match frame {
                    server_frame::Kind::SendAck(a) => (a.client_msg_id, Ok(())),
                    server_frame::Kind::SendError(e) => {
                        (e.client_msg_id, Err(format!("{}: {}", e.code, e.message)))
                    }
                    _ => continue,
                };
                if let Some(waiter) = answers.lock().unwrap().remove(&id) {
                    let _ = waiter.send(result);
                }
            }
            // The stream ended: every waiter learns it from its dropped sender.
            answers.lock().unwrap().clear();
        });
        devices.push(DevicePipe {
            tx,
            chat,
            next_id: AtomicU64::new(0),
            pending,
        });
    }
    Ok(devices)
}

// ---- measuring and reporting ------------------------------------------------------------------

fn print_table(cells: &[Cell], floor: &fsync::FsyncFloor) {
    println!("\n{floor}\n");
    println!("| system | load | acked msg/s | p50 ms | p99 ms | server CPU % (per process) | server CPU ms / 1k msgs | client CPU % |");
    println!("|---|---|---|---|---|---|---|---|");
    for c in cells {
        let per: Vec<String> = c.server_cpu.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} ({}) | {:.1} | {:.0} |",
            c.system,
            c.load.describe(),
            c.msgs_per_s(),
            c.ms(0.5),
            c.ms(0.99),
            c.server_cpu_total(),
            per.join(" / "),
            c.cpu_ms_per_1k(),
            c.client_cpu
        );
    }
    // The issue's yardsticks: chatd against NATS at the same closed-loop load (and TLS's cost:
    // chatd with TLS against chatd without).
    for (inflight, c, n) in same_load(cells, "chatd-tls", "chatd") {
        println!(
            "chatd with TLS / without at {inflight} in flight: throughput {:.2}x, p99 {:.2}x, CPU per message {:.2}x",
            c.msgs_per_s() / n.msgs_per_s(),
            c.ms(0.99) / n.ms(0.99),
            c.cpu_ms_per_1k() / n.cpu_ms_per_1k()
        );
    }
    for (inflight, c, n) in same_load(cells, "chatd", "nats") {
        println!(
            "chatd / NATS at {inflight} in flight: throughput {:.2}x, p99 {:.2}x",
            c.msgs_per_s() / n.msgs_per_s(),
            c.ms(0.99) / n.ms(0.99)
        );
    }
}

/// The closed-loop cells of `system` with the cell of `baseline` at the same load.
fn same_load<'a>(
    cells: &'a [Cell],
    system: &'a str,
    baseline: &'a str,
) -> impl Iterator<Item = (usize, &'a Cell, &'a Cell)> + 'a {
    cells
        .iter()
        .filter(move |c| c.system == system)
        .filter_map(move |c| {
            let Load::Closed { inflight } = c.load else {
                return None;
            };
            let same = |n: &&Cell| {
                n.system == baseline
                    && matches!(n.load, Load::Closed { inflight: i } if i == inflight)
            };
            cells.iter().find(same).map(|n| (inflight, c, n))
        })
}

fn write_json(args: &Args, cells: &[Cell], floor: &fsync::FsyncFloor) -> anyhow::Result<()> {
    let lines = cells.iter().map(|c| {
        let (inflight, rate) = match c.load {
            Load::Closed { inflight } => (serde_json::json!(inflight), serde_json::Value::Null),
            Load::Open { rate } => (serde_json::Value::Null, serde_json::json!(rate)),
        };
        serde_json::json!({
            "bench": format!("peer/{}", c.system),
            "label": args.label,
            "inflight": inflight,
            "offered_per_s": rate,
            "msgs_per_s": c.msgs_per_s(),
            "p50_ms": c.ms(0.5),
            "p99_ms": c.ms(0.99),
            "client_cpu_pct": c.client_cpu,
            "server_cpu_pct": c.server_cpu_total(),
            "server_cpu_pct_per_process": c.server_cpu,
            "server_cpu_ms_per_1k": c.cpu_ms_per_1k(),
            "payload_bytes": args.payload,
            "fsync_floor_p50_ms": floor.p50_us as f64 / 1000.0,
            "fsync_floor_p99_ms": floor.p99_us as f64 / 1000.0,
        })
    });
    jsonl::append(&args.json, lines)
}
