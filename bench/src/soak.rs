//! `chat-bench soak`: real chatd processes under a steady load for a long time, to see what drifts.
//!
//! `--chats` direct chats, each between a sending device and a receiving device (on another node
//! when there are 3), both holding `Connect` streams and acknowledging what they receive once a
//! second as an app does. An open loop offers `--rate` sends per second over the chats whatever
//! the acks do; every latency is counted from the send's intended time, so a stall shows as the
//! latency of every send it delayed (no coordinated omission). Ack latency ends at the `SendAck`
//! frame, delivery latency when the receiver's stream yields the message (its payload carries the
//! intended send time).
//!
//! Each minute prints (and appends to `--json`) the client's figures and, per node, its RSS and
//! CPU, its data dir's bytes on disk (all, SST files, WAL files), and what its Prometheus page
//! says: SST and memtable bytes by column family, WAL, caches, snapshot events. Metrics a chatd
//! does not export show as "-". The summary sets the last minute against the first (p99, RSS,
//! WAL), gives the disk per message held (`--preload` included) and, with `--restart`, how long
//! each node took after a `kill -9` to be SERVING and to acknowledge a send again.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use chat_client::{ChatClient, DeviceStream, FrameSender};
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::delivery::connect_retrying;
use crate::latency::{node_dir, start_processes_with, Procs};
use crate::peer::CHATD_CONFIG;
use crate::procstat::{cpu_ticks, pct, rss_kib};
use crate::{fsync, jsonl};

#[derive(clap::Args)]
pub struct Args {
    /// The chatd binary (build it with `cargo build --release -p chatd`).
    #[arg(long, default_value = "target/release/chatd")]
    chatd: PathBuf,
    /// chatd processes: 1 or 3.
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Sends offered per second, all chats together.
    #[arg(long, default_value_t = 1500)]
    rate: u64,
    /// Length of the timed run, in minutes.
    #[arg(long, default_value_t = 60)]
    minutes: u32,
    /// Seconds in a reported "minute". For smoke runs only (e.g. 20): the targets are per minute.
    #[arg(long, default_value_t = 60)]
    minute_secs: u64,
    /// Payload bytes per message (at least 8: the intended send time rides in the first 8).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Direct chats, each between one sending and one receiving device.
    #[arg(long, default_value_t = 64)]
    chats: usize,
    /// Before the timed run, send this many messages as fast as 512 in flight allow (e.g.
    /// 10000000 for the restart time of a node holding 10 M messages).
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// After the run, `kill -9` every node, start them again on their data and time them.
    #[arg(long)]
    restart: bool,
    /// The run's data dirs go in a temp dir under this one (removed at the end). It is the disk
    /// measured, so not a tmpfs.
    #[arg(long, default_value = "target")]
    dir: PathBuf,
    /// Append one JSON line per minute and one for the summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A word naming this run in the JSON lines.
    #[arg(long, default_value = "")]
    label: String,
}

/// Preload sends in flight at once.
const PRELOAD_INFLIGHT: usize = 512;
/// The send-time stamp of messages whose latency is not measured (warm-up, preload, probes).
const UNTIMED: u64 = u64::MAX;
/// How long the end of the run waits for the last acks and deliveries.
const DRAIN: Duration = Duration::from_secs(30);
/// How long a node may take to come back after `kill -9` (10 M messages take a while).
const RESTART_WAIT: Duration = Duration::from_secs(1800);
/// The space a node holds back for emergencies (`EMERGENCY_BALLAST` in log/src/disk.rs): not
/// data, so not counted in its data dir's bytes.
const BALLAST_FILE: &str = "EMERGENCY_BALLAST";
/// How often the fsync floor is sampled during the timed run (on the disk the nodes use).
const FSYNC_PROBE_EVERY: Duration = Duration::from_millis(100);
/// The service whose gRPC health is checked after a restart.
const HEALTH_SERVICE: &str = "chat.v1.Chat";
const SNAPSHOT_COUNTERS: [&str; 3] = [
    "chatd_snapshots_built_total",
    "chatd_snapshots_sent_total",
    "chatd_snapshots_installed_total",
];

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.chatd.exists(),
        "no chatd at {} (cargo build --release -p chatd)",
        args.chatd.display()
    );
    ensure!(args.nodes == 1 || args.nodes == 3, "--nodes 1 or --nodes 3");
    ensure!(args.payload >= 8, "--payload must be at least 8 bytes");
    ensure!(
        args.rate > 0 && args.chats > 0 && args.minutes > 0 && args.minute_secs > 0,
        "--rate, --chats, --minutes and --minute-secs must be positive"
    );
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::Builder::new()
        .prefix("soak-")
        .tempdir_in(&args.dir)?;
    let metrics: Vec<SocketAddr> = (0..args.nodes)
        .map(|_| Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?))
        .collect::<anyhow::Result<_>>()?;
    let (addrs, mut procs) = start_processes_with(
        &args.chatd,
        dir.path(),
        args.nodes,
        args.partitions,
        CHATD_CONFIG,
        |i| {
            vec![
                "--metrics-listen".into(),
                metrics[i as usize - 1].to_string(),
            ]
        },
    )?;
    println!(
        "soak: {} node(s), {} partitions, {} chats, {} msg/s of {} B for {} x {} s, data in {}",
        args.nodes,
        args.partitions,
        args.chats,
        args.rate,
        args.payload,
        args.minutes,
        args.minute_secs,
        dir.path().display()
    );
    let rec = Arc::new(Recorder::new()?);
    let senders = Arc::new(open_chats(&addrs, args.chats, &rec).await?);
    warm_up(&senders, &rec).await?;
    if args.preload > 0 {
        preload(&senders, &rec, args.preload, args.payload).await?;
    }
    let nodes: Vec<Node> = (1..=args.nodes)
        .map(|i| Node {
            pid: procs.pid(i),
            dir: node_dir(dir.path(), i),
            metrics: metrics[i as usize - 1],
        })
        .collect();

    let mut before = sample_all(&nodes).await;
    let fsync_probe = fsync::Probe::start(dir.path(), FSYNC_PROBE_EVERY)?;
    rec.take_window();
    let minute = Duration::from_secs(args.minute_secs);
    let start = Instant::now();
    let mut ticker = Some(tokio::spawn(open_loop(
        senders.clone(),
        rec.clone(),
        args.rate,
        start..start + minute * args.minutes,
        args.payload,
    )));
    let mut reports = Vec::new();
    let mut offered = 0;
    let mut window_start = start;
    for m in 1..=args.minutes {
        tokio::time::sleep_until((start + minute * m).into()).await;
        if let Some(ticker) = ticker.take_if(|_| m == args.minutes) {
            offered = ticker.await?;
            drain(&senders, &rec).await;
        }
        let secs = window_start.elapsed().as_secs_f64();
        window_start = Instant::now();
        let window = rec.take_window();
        let after = sample_all(&nodes).await;
        let report = Minute::new(
            m,
            secs,
            window,
            fsync_probe.take(),
            in_flight(&senders),
            &before,
            after,
        );
        report.print();
        if let Some(path) = &args.json {
            jsonl::append_quietly(path, [report.json(&args)])?;
        }
        before = report.nodes.iter().map(|n| n.sample.clone()).collect();
        reports.push(report);
    }

    let held = rec.untimed.load(Ordering::Relaxed) + rec.acked.load(Ordering::Relaxed);
    let restarts = if args.restart {
        restart_all(&mut procs, &addrs, &senders, &rec).await?
    } else {
        Vec::new()
    };
    let summary = Summary {
        offered,
        held,
        reports: &reports,
        restarts: &restarts,
        errors: rec.errors.lock().unwrap().clone(),
        acked: rec.acked.load(Ordering::Relaxed),
        delivered: rec.delivered.load(Ordering::Relaxed),
    };
    summary.print();
    if let Some(path) = &args.json {
        jsonl::append(path, [summary.json(&args)])?;
    }
    drop(procs);
    ensure!(
        summary.errors.is_empty(),
        "{} sends failed or went unanswered",
        summary.errors.values().map(|(n, _)| n).sum::<u64>()
    );
    Ok(())
}

// ---- the client side: devices, sends, answers ---------------------------------------------------

/// What one report window saw from the client side (latencies in µs).
struct Window {
    ack: Histogram<u64>,
    delivery: Histogram<u64>,
    errors: u64,
}

impl Window {
    fn new() -> anyhow::Result<Window> {
        Ok(Window {
            ack: Histogram::new(3)?,
            delivery: Histogram::new(3)?,
            errors: 0,
        })
    }
}

/// Everything the device streams report to, shared by their tasks.
struct Recorder {
    /// The clock of the payloads' send-time stamps.
    epoch: Instant,
    window: Mutex<Window>,
    /// Timed sends acknowledged, and delivered to their receiver.
    acked: AtomicU64,
    delivered: AtomicU64,
    /// Untimed sends acknowledged (warm-up, preload, probes): messages held all the same.
    untimed: AtomicU64,
    /// Failures by kind: how many, and the first one's text.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
    /// Set before the nodes are killed on purpose: streams ending is then no failure.
    closing: AtomicBool,
}

/// Why a send waits for its answer.
enum Waiting {
    /// A timed send, intended at this instant.
    Timed(Instant),
    /// A preload send, holding one of the in-flight slots until answered.
    Preload { _slot: OwnedSemaphorePermit },
    /// A probe whose caller waits for the answer.
    Probe(oneshot::Sender<Result<(), String>>),
}

/// A device's sends waiting for their answer, by client_msg_id.
type Pending = Arc<Mutex<HashMap<String, Waiting>>>;

impl Recorder {
    fn new() -> anyhow::Result<Recorder> {
        Ok(Recorder {
            epoch: Instant::now(),
            window: Mutex::new(Window::new()?),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            untimed: AtomicU64::new(0),
            errors: Mutex::default(),
            closing: AtomicBool::new(false),
        })
    }

    fn take_window(&self) -> Window {
        let fresh = Window::new().expect("3 significant figures is valid");
        std::mem::replace(&mut self.window.lock().unwrap(), fresh)
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_micros() as u64
    }

    fn error(&self, kind: String, detail: String) {
        self.window.lock().unwrap().errors += 1;
        let mut errors = self.errors.lock().unwrap();
        errors.entry(kind).or_insert((0, detail)).0 += 1;
    }

    /// The answer to send `id` of a device.
    fn answer(&self, pending: &Pending, id: &str, result: Result<(), String>) {
        let Some(waiting) = pending.lock().unwrap().remove(id) else {
            return;
        };
        match (waiting, result) {
            (Waiting::Probe(tx), result) => {
                if result.is_ok() {
                    self.untimed.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx.send(result);
            }
            (Waiting::Timed(at), Ok(())) => {
                let us = at.elapsed().as_micros() as u64;
                // Auto-resizing (saturating_record would clamp at the current top): cannot fail.
                let _ = self.window.lock().unwrap().ack.record(us);
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            (Waiting::Preload { .. }, Ok(())) => {
                self.untimed.fetch_add(1, Ordering::Relaxed);
            }
            (Waiting::Timed(_) | Waiting::Preload { .. }, Err(e)) => {
                let kind = e.split(':').next().unwrap_or_default().to_string();
                self.error(kind, e);
            }
        }
    }

    /// A message arrived on a receiver's stream.
    fn delivered(&self, payload: &[u8]) {
        let Some(stamp) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            return;
        };
        let stamp = u64::from_be_bytes(stamp);
        if stamp == UNTIMED {
            return;
        }
        let us = self.stamp(Instant::now()).saturating_sub(stamp);
        let _ = self.window.lock().unwrap().delivery.record(us);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// A payload of `len` bytes carrying `stamp` (µs on the recorder's clock, or [`UNTIMED`]).
fn payload(stamp: u64, len: usize) -> Vec<u8> {
    let mut p = stamp.to_be_bytes().to_vec();
    p.resize(len, 0x5a);
    p
}

/// One chat's sending device.
struct Sender {
    chat: u64,
    token: String,
    tx: FrameSender,
    pending: Pending,
}

impl Sender {
    /// Open `token`'s stream at `addr` to send into `chat`; a task reads it.
    async fn open(
        addr: &str,
        token: &str,
        chat: u64,
        rec: &Arc<Recorder>,
    ) -> anyhow::Result<Sender> {
        let stream = ChatClient::connect(addr)
            .await?
            .open_stream(token, &Default::default())
            .await?;
        let sender = Sender {
            chat,
            token: token.to_string(),
            tx: stream.sender(),
            pending: Pending::default(),
        };
        tokio::spawn(serve_stream(
            stream,
            sender.pending.clone(),
            false,
            rec.clone(),
        ));
        Ok(sender)
    }

    async fn send(&self, id: String, waiting: Waiting, payload: Vec<u8>, rec: &Recorder) {
        self.pending.lock().unwrap().insert(id.clone(), waiting);
        if self.tx.send(self.chat, &id, payload).await.is_err() {
            rec.answer(
                &self.pending,
                &id,
                Err("stream closed: the send could not go out".into()),
            );
        }
    }

    /// One untimed send, answered within `wait`.
    async fn probe(&self, id: String, wait: Duration, rec: &Recorder) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(id.clone(), Waiting::Probe(tx), payload(UNTIMED, 8), rec)
            .await;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the stream ended before the answer".into()),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(format!("no answer in {wait:?}"))
            }
        }
    }
}

/// Read a device's stream until it ends: answer `pending` from the acks and send errors, record
/// the delivery of timed messages if `receiver`, and, as an app does, acknowledge what arrived
/// once a second (a ping when nothing did, so the idle timeout never closes the stream).
async fn serve_stream(
    mut stream: DeviceStream,
    pending: Pending,
    receiver: bool,
    rec: Arc<Recorder>,
) {
    let tx = stream.sender();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut received: HashMap<u64, u64> = HashMap::new();
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut nonce = 0;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(server_frame::Kind::SendAck(a))) => {
                    rec.answer(&pending, &a.client_msg_id, Ok(()));
                }
                Some(Ok(server_frame::Kind::SendError(e))) => {
                    let code = tonic::Code::from_i32(e.code);
                    let text = format!("send refused, {code:?}: {}", e.message);
                    rec.answer(&pending, &e.client_msg_id, Err(text));
                }
                Some(Ok(server_frame::Kind::Message(m))) => {
                    if receiver {
                        rec.delivered(&m.payload);
                    }
                    let seq = received.entry(m.chat_id).or_default();
                    *seq = (*seq).max(m.seq);
                }
                Some(Ok(server_frame::Kind::Error(e))) => {
                    rec.error("error frame".into(), format!("error frame: {}", e.message));
                }
                Some(Ok(_)) => {}
                end => {
                    if !rec.closing.load(Ordering::Relaxed) {
                        let detail = match end {
                            Some(Err(status)) => format!("stream closed: {status}"),
                            _ => "stream closed by the server".into(),
                        };
                        rec.error("stream closed".into(), detail);
                    }
                    break;
                }
            },
            _ = every.tick() => {
                let due: Vec<(u64, u64)> = received
                    .iter()
                    .filter(|(chat, seq)| acked.get(chat) != Some(seq))
                    .map(|(&chat, &seq)| (chat, seq))
                    .collect();
                if due.is_empty() {
                    nonce += 1;
                    let _ = tx.send_frame(client_frame::Kind::Ping(pb::Ping { nonce })).await;
                }
                for (chat, seq) in due {
                    let _ = tx.ack(chat, seq).await;
                    acked.insert(chat, seq);
                }
            }
        }
    }
    // Nothing more will be answered here: timed sends count as failed, preload slots come free,
    // probes learn it from their dropped senders.
    let left: Vec<(String, Waiting)> = pending.lock().unwrap().drain().collect();
    for (_, waiting) in left {
        if matches!(waiting, Waiting::Timed(_)) && !rec.closing.load(Ordering::Relaxed) {
            rec.error(
                "unanswered".into(),
                "unanswered: the stream closed first".into(),
            );
        }
    }
}

/// Register the users of `chats` direct chats, open their streams and leave tasks reading them.
/// Chat `i` is sent into through node `i mod n` and received on the next node.
async fn open_chats(
    addrs: &[String],
    chats: usize,
    rec: &Arc<Recorder>,
) -> anyhow::Result<Vec<Sender>> {
    let mut registrar = connect_retrying(&addrs[0]).await?;
    for a in &addrs[1..] {
        connect_retrying(a).await?;
    }
    let run = std::process::id();
    let mut senders = Vec::with_capacity(chats);
    for i in 0..chats {
        let send_addr = &addrs[i % addrs.len()];
        let recv_addr = &addrs[(i + 1) % addrs.len()];
        let (s, r) = (format!("soak{run}-s{i}"), format!("soak{run}-r{i}"));
        let s = registrar.register(&s, 1).await?;
        let receiver = registrar.register(&r, 1).await?;
        let mut client = ChatClient::connect(send_addr).await?.with_token(&s.token)?;
        let chat = client.create_direct(&r).await?.chat_id;
        senders.push(Sender::open(send_addr, &s.token, chat, rec).await?);
        let stream = ChatClient::connect(recv_addr)
            .await?
            .open_stream(&receiver.token, &Default::default())
            .await?;
        tokio::spawn(serve_stream(stream, Pending::default(), true, rec.clone()));
    }
    Ok(senders)
}

/// One acknowledged send per chat, retried until every partition involved has its leader.
async fn warm_up(senders: &[Sender], rec: &Recorder) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sends = senders.iter().enumerate().map(|(i, s)| async move {
        for attempt in 0.. {
            match s
                .probe(format!("w{i}-{attempt}"), Duration::from_secs(5), rec)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("warm-up send in chat {i}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok(())
    });
    futures::future::try_join_all(sends).await?;
    Ok(())
}

/// `total` untimed sends, as fast as [`PRELOAD_INFLIGHT`] in flight allow, with a progress line
/// every 5 s.
async fn preload(senders: &[Sender], rec: &Recorder, total: u64, len: usize) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(PRELOAD_INFLIGHT));
    let stall = Duration::from_secs(120);
    let (started, base) = (Instant::now(), rec.untimed.load(Ordering::Relaxed));
    let progress = |done: u64| {
        let secs = started.elapsed().as_secs_f64();
        let per_s = done as f64 / secs.max(1e-3);
        let eta = total.saturating_sub(done) as f64 / per_s.max(1.0);
        println!(
            "preload: {done} / {total} acked ({:.0}%), {per_s:.0} msg/s, {secs:.0} s, ETA {eta:.0} s",
            done as f64 * 100.0 / total as f64
        );
    };
    let mut reported = Instant::now();
    for i in 0..total {
        let Ok(slot) = tokio::time::timeout(stall, slots.clone().acquire_owned()).await else {
            bail!("preload stalled: no ack in {stall:?}");
        };
        let s = &senders[i as usize % senders.len()];
        let waiting = Waiting::Preload { _slot: slot? };
        s.send(format!("p{i}"), waiting, payload(UNTIMED, len), rec)
            .await;
        if reported.elapsed() >= Duration::from_secs(5) {
            progress(rec.untimed.load(Ordering::Relaxed) - base);
            reported = Instant::now();
        }
    }
    let all = slots.acquire_many(PRELOAD_INFLIGHT as u32);
    let Ok(all) = tokio::time::timeout(stall, all).await else {
        bail!("preload stalled: no ack in {stall:?}");
    };
    drop(all?);
    progress(rec.untimed.load(Ordering::Relaxed) - base);
    let errors: u64 = rec.errors.lock().unwrap().values().map(|(n, _)| n).sum();
    ensure!(
        errors == 0,
        "{errors} preload sends failed: {:?}",
        rec.errors.lock().unwrap()
    );
    Ok(())
}

/// Timed sends at `rate` per second over `during`, round robin over the chats, each stamped with
/// the instant it was due (a late one is still measured from then). Returns how many went out.
async fn open_loop(
    senders: Arc<Vec<Sender>>,
    rec: Arc<Recorder>,
    rate: u64,
    during: std::ops::Range<Instant>,
    len: usize,
) -> u64 {
    for i in 0.. {
        let at = during.start + Duration::from_nanos(i * 1_000_000_000 / rate);
        if at >= during.end {
            return i;
        }
        tokio::time::sleep_until(at.into()).await;
        let s = &senders[i as usize % senders.len()];
        s.send(
            format!("t{i}"),
            Waiting::Timed(at),
            payload(rec.stamp(at), len),
            &rec,
        )
        .await;
    }
    unreachable!("the loop returns at the end of the run")
}

fn in_flight(senders: &[Sender]) -> usize {
    senders
        .iter()
        .map(|s| s.pending.lock().unwrap().len())
        .sum()
}

/// Wait (up to [`DRAIN`]) for the last answers and deliveries; what is still missing then fails.
async fn drain(senders: &[Sender], rec: &Recorder) {
    let deadline = Instant::now() + DRAIN;
    let undelivered = || {
        rec.acked
            .load(Ordering::Relaxed)
            .saturating_sub(rec.delivered.load(Ordering::Relaxed))
    };
    while (in_flight(senders) > 0 || undelivered() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unanswered = in_flight(senders);
    for _ in 0..unanswered {
        rec.error(
            "unanswered".into(),
            format!("unanswered {DRAIN:?} after the run"),
        );
    }
    for _ in 0..undelivered() {
        rec.error(
            "undelivered".into(),
            format!("acknowledged but not delivered {DRAIN:?} after the run"),
        );
    }
}

// ---- the server side: processes, data dirs, metrics -----------------------------------------

/// A chatd process of the run.
struct Node {
    pid: u32,
    dir: PathBuf,
    metrics: SocketAddr,
}

/// A node as seen at one instant.
#[derive(Clone)]
struct Sample {
    rss_kib: Option<u64>,
    cpu_ticks: Option<u64>,
    files: DirSizes,
    /// None: the metrics page did not answer.
    metrics: Option<Metrics>,
}

/// Bytes of a data dir's files (apparent sizes, the emergency ballast left out): all, its SST
/// files, and its WAL (the `*.log` files of the RocksDB dir, `<data dir>/db`).
#[derive(Clone, Copy, Default)]
struct DirSizes {
    total: u64,
    sst: u64,
    wal: u64,
}

fn dir_sizes(dir: &Path) -> DirSizes {
    fn walk(dir: &Path, in_db: bool, sizes: &mut DirSizes) {
        // Files come and go under compaction: whatever vanishes meanwhile is skipped.
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let (path, name) = (entry.path(), entry.file_name());
            let name = name.to_string_lossy();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, in_db || name == "db", sizes);
            } else if name != BALLAST_FILE {
                sizes.total += meta.len();
                if name.ends_with(".sst") {
                    sizes.sst += meta.len();
                } else if in_db && name.ends_with(".log") {
                    sizes.wal += meta.len();
                }
            }
        }
    }
    let mut sizes = DirSizes::default();
    walk(dir, false, &mut sizes);
    sizes
}

/// What a node's `/metrics` page says about its storage; metrics it lacks stay absent.
#[derive(Clone, Default)]
struct Metrics {
    sst_by_cf: BTreeMap<String, u64>,
    memtable_by_cf: BTreeMap<String, u64>,
    wal: Option<u64>,
    block_cache: Option<u64>,
    /// SST readers' memory outside the block cache.
    table_readers: Option<u64>,
    state_cache: Option<u64>,
    /// jemalloc's live bytes and resident bytes (what RSS holds of the heap).
    heap_allocated: Option<u64>,
    heap_resident: Option<u64>,
    /// glibc's bytes in use and free but kept (RocksDB's C++ allocations).
    malloc_in_use: Option<u64>,
    malloc_free: Option<u64>,
    /// Time spent giving glibc's free pages back, so far (µs).
    malloc_trim_micros: Option<u64>,
    /// The sum of every group's Raft term on the node: it rises by one per election.
    terms: Option<u64>,
    /// [`SNAPSHOT_COUNTERS`], so far.
    snapshots: [Option<u64>; 3],
}

impl Metrics {
    /// Read the Prometheus text format (`name{label="v",...} value` lines).
    fn parse(page: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = match line.rfind('}') {
                Some(end) => line.split_at(end + 1),
                None => line.split_once(' ').unwrap_or((line, "")),
            };
            let Some(value) = value.split_whitespace().next().and_then(|v| v.parse().ok()) else {
                continue;
            };
            let value = f64::max(value, 0.0) as u64;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let cf = labels
                .split_once("cf=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(cf, _)| cf.to_string());
            match (name, cf) {
                ("chatd_rocksdb_sst_bytes", Some(cf)) => {
                    m.sst_by_cf.insert(cf, value);
                }
                ("chatd_rocksdb_memtable_bytes", Some(cf)) => {
                    m.memtable_by_cf.insert(cf, value);
                }
                ("chatd_rocksdb_wal_bytes", _) => m.wal = Some(value),
                ("chatd_rocksdb_block_cache_bytes", _) => m.block_cache = Some(value),
                ("chatd_rocksdb_table_readers_bytes", _) => m.table_readers = Some(value),
                ("chatd_state_cache_bytes", _) => m.state_cache = Some(value),
                ("chatd_heap_allocated_bytes", _) => m.heap_allocated = Some(value),
                ("chatd_heap_resident_bytes", _) => m.heap_resident = Some(value),
                ("chatd_malloc_in_use_bytes", _) => m.malloc_in_use = Some(value),
                ("chatd_malloc_free_bytes", _) => m.malloc_free = Some(value),
                ("chatd_malloc_trim_micros_total", _) => m.malloc_trim_micros = Some(value),
                ("chatd_raft_term", _) => *m.terms.get_or_insert(0) += value,
                (name, _) => {
                    if let Some(i) = SNAPSHOT_COUNTERS.iter().position(|c| *c == name) {
                        m.snapshots[i] = Some(value);
                    }
                }
            }
        }
        m
    }

    fn sst_total(&self) -> Option<u64> {
        (!self.sst_by_cf.is_empty()).then(|| self.sst_by_cf.values().sum())
    }

    fn memtable_total(&self) -> Option<u64> {
        (!self.memtable_by_cf.is_empty()).then(|| self.memtable_by_cf.values().sum())
    }
}

/// The node's metrics page, fetched as a scraper would (plain HTTP/1.0 GET); None if it does
/// not answer 200 within 5 s.
pub(crate) async fn scrape(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: chatd\r\n\r\n")
            .await?;
        let mut page = String::new();
        conn.read_to_string(&mut page).await?;
        std::io::Result::Ok(page)
    };
    let page = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()?
        .ok()?;
    let (head, body) = page.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

async fn sample(node: &Node) -> Sample {
    let dir = node.dir.clone();
    let files = tokio::task::spawn_blocking(move || dir_sizes(&dir))
        .await
        .unwrap_or_default();
    Sample {
        rss_kib: rss_kib(node.pid).ok(),
        cpu_ticks: cpu_ticks(node.pid).ok(),
        files,
        metrics: scrape(node.metrics).await.map(|p| Metrics::parse(&p)),
    }
}

async fn sample_all(nodes: &[Node]) -> Vec<Sample> {
    futures::future::join_all(nodes.iter().map(sample)).await
}

// ---- restart --------------------------------------------------------------------------------

/// How long a node took, from its spawn after `kill -9`, to be up again.
struct Restart {
    node: u64,
    serving: Duration,
    first_ack: Duration,
    rss_kib: Option<u64>,
}

/// `kill -9` every node, start them all again on their data dirs, and time each one until its
/// gRPC health says SERVING and until a send through it is acknowledged.
async fn restart_all(
    procs: &mut Procs,
    addrs: &[String],
    senders: &[Sender],
    rec: &Arc<Recorder>,
) -> anyhow::Result<Vec<Restart>> {
    rec.closing.store(true, Ordering::Relaxed);
    let n = addrs.len() as u64;
    for i in 1..=n {
        procs.kill(i)?;
    }
    println!("restart: killed {n} node(s) with SIGKILL, starting them again");
    let mut spawned = Vec::new();
    for i in 1..=n {
        procs.start_again(i)?;
        spawned.push(Instant::now());
    }
    let deadline = Instant::now() + RESTART_WAIT;
    let waits = addrs
        .iter()
        .zip(spawned)
        .enumerate()
        .map(|(i, (addr, at))| {
            let sender = &senders[i % senders.len()];
            async move {
                let serving = wait_serving(addr, deadline).await?.duration_since(at);
                let first_ack = wait_first_ack(addr, sender, deadline, rec)
                    .await?
                    .duration_since(at);
                anyhow::Ok((serving, first_ack))
            }
        });
    let times = futures::future::try_join_all(waits).await?;
    Ok(times
        .into_iter()
        .enumerate()
        .map(|(i, (serving, first_ack))| Restart {
            node: i as u64 + 1,
            serving,
            first_ack,
            rss_kib: rss_kib(procs.pid(i as u64 + 1)).ok(),
        })
        .collect())
}

/// When the node at `addr` first answers its gRPC health check with SERVING.
async fn wait_serving(addr: &str, deadline: Instant) -> anyhow::Result<Instant> {
    use tonic_health::pb::health_check_response::ServingStatus;
    loop {
        let check = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            let request = tonic_health::pb::HealthCheckRequest {
                service: HEALTH_SERVICE.into(),
            };
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            anyhow::Ok(client.check(request).await?.into_inner().status)
        };
        let status = tokio::time::timeout(Duration::from_secs(2), check).await;
        if let Ok(Ok(s)) = status {
            if s == ServingStatus::Serving as i32 {
                return Ok(Instant::now());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{addr} not SERVING {RESTART_WAIT:?} after its restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When a send through the node at `addr` (on a new stream of `sender`'s device) is first
/// acknowledged.
async fn wait_first_ack(
    addr: &str,
    sender: &Sender,
    deadline: Instant,
    rec: &Arc<Recorder>,
) -> anyhow::Result<Instant> {
    let mut last_error = String::new();
    for attempt in 0.. {
        ensure!(
            Instant::now() < deadline,
            "no send acknowledged through {addr} {RESTART_WAIT:?} after its restart: {last_error}"
        );
        match Sender::open(addr, &sender.token, sender.chat, rec).await {
            Ok(probe) => {
                let id = format!("restart-{attempt}");
                match probe.probe(id, Duration::from_secs(10), rec).await {
                    Ok(()) => return Ok(Instant::now()),
                    Err(e) => last_error = e,
                }
            }
            Err(e) => last_error = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the loop returns or fails")
}

// ---- reporting ------------------------------------------------------------------------------

/// One reported minute.
struct Minute {
    minute: u32,
    secs: f64,
    acked: u64,
    delivered: u64,
    errors: u64,
    in_flight: usize,
    /// p50, p99, max (ms); None when nothing was acknowledged.
    ack_ms: Option<[f64; 3]>,
    delivery_ms: Option<[f64; 3]>,
    /// The fsync floor over the minute (p50, p99, max in ms), from [`fsync::Probe`].
    fsync_ms: Option<[f64; 3]>,
    nodes: Vec<NodeMinute>,
}

/// One node over a minute.
struct NodeMinute {
    node: u64,
    sample: Sample,
    cpu_pct: Option<f64>,
    /// [`SNAPSHOT_COUNTERS`] counted during the minute.
    snapshots: [Option<u64>; 3],
    /// Elections during the minute, in the groups this node holds (terms risen).
    elections: Option<u64>,
}

fn quantiles_ms(h: &Histogram<u64>) -> Option<[f64; 3]> {
    (!h.is_empty()).then(|| [0.5, 0.99, 1.0].map(|q| h.value_at_quantile(q) as f64 / 1000.0))
}

impl Minute {
    fn new(
        minute: u32,
        secs: f64,
        window: Window,
        fsync: Histogram<u64>,
        in_flight: usize,
        before: &[Sample],
        after: Vec<Sample>,
    ) -> Minute {
        let nodes = after
            .into_iter()
            .zip(before)
            .enumerate()
            .map(|(i, (sample, before))| {
                let cpu_pct = sample
                    .cpu_ticks
                    .zip(before.cpu_ticks)
                    .map(|(now, then)| pct(now.saturating_sub(then), secs));
                let mut snapshots = [None; 3];
                let mut elections = None;
                if let Some(now) = &sample.metrics {
                    let terms_then = before.metrics.as_ref().and_then(|m| m.terms);
                    elections = now.terms.map(|t| t.saturating_sub(terms_then.unwrap_or(t)));
                    let then = before.metrics.as_ref().map(|m| m.snapshots);
                    for (k, slot) in snapshots.iter_mut().enumerate() {
                        // A counter not there before had not counted anything yet.
                        let was = then.and_then(|t| t[k]).unwrap_or(0);
                        *slot = now.snapshots[k].map(|v| v.saturating_sub(was));
                    }
                }
                NodeMinute {
                    node: i as u64 + 1,
                    sample,
                    cpu_pct,
                    snapshots,
                    elections,
                }
            })
            .collect();
        Minute {
            minute,
            secs,
            acked: window.ack.len(),
            delivered: window.delivery.len(),
            errors: window.errors,
            in_flight,
            ack_ms: quantiles_ms(&window.ack),
            delivery_ms: quantiles_ms(&window.delivery),
            fsync_ms: quantiles_ms(&fsync),
            nodes,
        }
    }

    fn print(&self) {
        let ms = |q: Option<[f64; 3]>, i: usize| opt(q.map(|q| format!("{:.2}", q[i])));
        println!(
            "minute {:>3}: {} acked, {} delivered, {} errors, {} in flight | ack ms p50 {} p99 {} max {} | delivery ms p50 {} p99 {} max {} | fsync floor ms p50 {} p99 {}",
            self.minute,
            self.acked,
            self.delivered,
            self.errors,
            self.in_flight,
            ms(self.ack_ms, 0),
            ms(self.ack_ms, 1),
            ms(self.ack_ms, 2),
            ms(self.delivery_ms, 0),
            ms(self.delivery_ms, 1),
            ms(self.delivery_ms, 2),
            ms(self.fsync_ms, 0),
            ms(self.fsync_ms, 1),
        );
        for n in &self.nodes {
            let s = &n.sample;
            let m = s.metrics.as_ref();
            let by_cf = |map: Option<&BTreeMap<String, u64>>| match map {
                Some(map) if !map.is_empty() => map
                    .iter()
                    .map(|(cf, b)| format!("{cf}={}", mib(*b)))
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => "-".into(),
            };
            let snapshots = n.snapshots.map(opt).join("/");
            println!(
                "  n{}: RSS {} MiB (heap {} live, {} resident; malloc {} in use, {} free, trimmed in {} ms so far), CPU {}% | files {} MiB (SST {}, WAL {}) | metrics WAL {}, SST by cf [{}], memtables {}, block cache {}, table readers {}, state cache {} MiB | snapshots built/sent/installed {} | elections {}",
                n.node,
                opt(s.rss_kib.map(|k| k / 1024)),
                opt(m.and_then(|m| m.heap_allocated).map(mib)),
                opt(m.and_then(|m| m.heap_resident).map(mib)),
                opt(m.and_then(|m| m.malloc_in_use).map(mib)),
                opt(m.and_then(|m| m.malloc_free).map(mib)),
                opt(m.and_then(|m| m.malloc_trim_micros).map(|us| us / 1000)),
                opt(n.cpu_pct.map(|c| format!("{c:.0}"))),
                mib(s.files.total),
                mib(s.files.sst),
                mib(s.files.wal),
                opt(m.and_then(|m| m.wal).map(mib)),
                by_cf(m.map(|m| &m.sst_by_cf)),
                opt(m.and_then(Metrics::memtable_total).map(mib)),
                opt(m.and_then(|m| m.block_cache).map(mib)),
                opt(m.and_then(|m| m.table_readers).map(mib)),
                opt(m.and_then(|m| m.state_cache).map(mib)),
                snapshots,
                opt(n.elections),
            );
        }
    }

    fn json(&self, args: &Args) -> serde_json::Value {
        let ms = |q: Option<[f64; 3]>, i: usize| q.map(|q| q[i]);
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                let s = &n.sample;
                let m = s.metrics.as_ref();
                json!({
                    "node": n.node,
                    "rss_kib": s.rss_kib,
                    "cpu_pct": n.cpu_pct,
                    "data_dir_bytes": s.files.total,
                    "sst_file_bytes": s.files.sst,
                    "wal_file_bytes": s.files.wal,
                    "sst_bytes_by_cf": m.map(|m| &m.sst_by_cf),
                    "memtable_bytes_by_cf": m.map(|m| &m.memtable_by_cf),
                    "wal_bytes": m.and_then(|m| m.wal),
                    "block_cache_bytes": m.and_then(|m| m.block_cache),
                    "table_readers_bytes": m.and_then(|m| m.table_readers),
                    "state_cache_bytes": m.and_then(|m| m.state_cache),
                    "heap_allocated_bytes": m.and_then(|m| m.heap_allocated),
                    "heap_resident_bytes": m.and_then(|m| m.heap_resident),
                    "malloc_in_use_bytes": m.and_then(|m| m.malloc_in_use),
                    "malloc_free_bytes": m.and_then(|m| m.malloc_free),
                    "malloc_trim_micros_total": m.and_then(|m| m.malloc_trim_micros),
                    "elections": n.elections,
                    "snapshots_built": n.snapshots[0],
                    "snapshots_sent": n.snapshots[1],
                    "snapshots_installed": n.snapshots[2],
                })
            })
            .collect();
        json!({
            "bench": "soak/minute",
            "label": args.label,
            "nodes": args.nodes,
            "rate": args.rate,
            "minute": self.minute,
            "window_s": self.secs,
            "acked": self.acked,
            "delivered": self.delivered,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "ack_p50_ms": ms(self.ack_ms, 0),
            "ack_p99_ms": ms(self.ack_ms, 1),
            "ack_max_ms": ms(self.ack_ms, 2),
            "delivery_p50_ms": ms(self.delivery_ms, 0),
            "delivery_p99_ms": ms(self.delivery_ms, 1),
            "delivery_max_ms": ms(self.delivery_ms, 2),
            "fsync_p50_ms": ms(self.fsync_ms, 0),
            "fsync_p99_ms": ms(self.fsync_ms, 1),
            "per_node": nodes,
        })
    }
}

/// The run against its targets.
struct Summary<'a> {
    offered: u64,
    acked: u64,
    delivered: u64,
    /// Messages the nodes hold: timed and untimed (warm-up, preload) acknowledged sends.
    held: u64,
    reports: &'a [Minute],
    restarts: &'a [Restart],
    errors: BTreeMap<String, (u64, String)>,
}

/// The target: the last minute's p99 within this factor of the first's.
const P99_DRIFT_TARGET: f64 = 1.5;
/// The target: data dir bytes per message held, per node.
const BYTES_PER_MESSAGE_TARGET: f64 = 400.0;

impl Summary<'_> {
    fn first_last(&self) -> (&Minute, &Minute) {
        (&self.reports[0], &self.reports[self.reports.len() - 1])
    }

    /// The p99 of the first and the last minute's quantiles, and their ratio.
    fn drift(first: Option<[f64; 3]>, last: Option<[f64; 3]>) -> [Option<f64>; 3] {
        let (a, b) = (first.map(|v| v[1]), last.map(|v| v[1]));
        let ratio = a.zip(b).filter(|(a, _)| *a > 0.0).map(|(a, b)| b / a);
        [a, b, ratio]
    }

    /// The median of the first and of the last (up to) ten minutes' ack p99, and their ratio:
    /// the target's comparison, less at the mercy of one noisy minute.
    fn drift_over_ten(&self) -> [Option<f64>; 3] {
        let window = (self.reports.len() / 2).clamp(1, 10);
        let median = |minutes: &[Minute]| {
            let mut p99: Vec<f64> = minutes
                .iter()
                .filter_map(|m| m.ack_ms.map(|q| q[1]))
                .collect();
            p99.sort_by(f64::total_cmp);
            (!p99.is_empty()).then(|| p99[p99.len() / 2])
        };
        let first = median(&self.reports[..window]);
        let last = median(&self.reports[self.reports.len() - window..]);
        let ratio = first
            .zip(last)
            .filter(|(a, _)| *a > 0.0)
            .map(|(a, b)| b / a);
        [first, last, ratio]
    }

    fn per_message(&self, bytes: u64) -> Option<f64> {
        (self.held > 0).then(|| bytes as f64 / self.held as f64)
    }

    fn print(&self) {
        let (first, last) = self.first_last();
        println!(
            "summary: {} offered, {} acked, {} delivered in the timed run; {} messages held",
            self.offered, self.acked, self.delivered, self.held
        );
        for (what, f, l, is_target) in [
            ("ack", first.ack_ms, last.ack_ms, true),
            ("delivery", first.delivery_ms, last.delivery_ms, true),
            // Not a target: what the disk did in the same minutes, to read the others against.
            ("fsync floor", first.fsync_ms, last.fsync_ms, false),
        ] {
            let [a, b, ratio] = Self::drift(f, l);
            let target = if is_target {
                format!(
                    " (target <= {P99_DRIFT_TARGET}){}",
                    verdict(ratio.map(|r| r <= P99_DRIFT_TARGET))
                )
            } else {
                String::new()
            };
            println!(
                "  {what} p99: first minute {} ms, last minute {} ms, last/first {}{target}",
                opt(a.map(|v| format!("{v:.2}"))),
                opt(b.map(|v| format!("{v:.2}"))),
                opt(ratio.map(|r| format!("{r:.2}"))),
            );
        }
        let [a, b, ratio] = self.drift_over_ten();
        println!(
            "  ack p99, median of the first ten minutes {} ms, of the last ten {} ms, last/first {}",
            opt(a.map(|v| format!("{v:.2}"))),
            opt(b.map(|v| format!("{v:.2}"))),
            opt(ratio.map(|r| format!("{r:.2}"))),
        );
        for (f, l) in first.nodes.iter().zip(&last.nodes) {
            let metric_wal = |n: &NodeMinute| n.sample.metrics.as_ref().and_then(|m| m.wal);
            let files = l.sample.files;
            let per_msg = self.per_message(files.total);
            println!(
                "  n{}: RSS {} -> {} MiB, WAL files {} -> {} MiB (metric {} -> {}), data dir {} MiB = {} B/message (target <= {BYTES_PER_MESSAGE_TARGET}){}, SST files {} B/message",
                l.node,
                opt(f.sample.rss_kib.map(|k| k / 1024)),
                opt(l.sample.rss_kib.map(|k| k / 1024)),
                mib(f.sample.files.wal),
                mib(files.wal),
                opt(metric_wal(f).map(mib)),
                opt(metric_wal(l).map(mib)),
                mib(files.total),
                opt(per_msg.map(|b| format!("{b:.0}"))),
                verdict(per_msg.map(|b| b <= BYTES_PER_MESSAGE_TARGET)),
                opt(self.per_message(files.sst).map(|b| format!("{b:.0}"))),
            );
        }
        for r in self.restarts {
            println!(
                "  restart n{} after kill -9 ({} messages held): SERVING in {:.2} s, first send acknowledged in {:.2} s, RSS then {} MiB",
                r.node,
                self.held,
                r.serving.as_secs_f64(),
                r.first_ack.as_secs_f64(),
                opt(r.rss_kib.map(|k| k / 1024)),
            );
        }
        if self.errors.is_empty() {
            println!("  errors: none");
        }
        for (kind, (n, first)) in &self.errors {
            println!("  errors: {n} x {kind} (first: {first})");
        }
    }

    fn json(&self, args: &Args) -> serde_json::Value {
        let (first, last) = self.first_last();
        let [ack_first, ack_last, ack_ratio] = Self::drift(first.ack_ms, last.ack_ms);
        let [del_first, del_last, del_ratio] = Self::drift(first.delivery_ms, last.delivery_ms);
        let nodes: Vec<_> = first
            .nodes
            .iter()
            .zip(&last.nodes)
            .map(|(f, l)| {
                let restart = self.restarts.iter().find(|r| r.node == l.node);
                let metric_wal = |n: &NodeMinute| n.sample.metrics.as_ref().and_then(|m| m.wal);
                let sst_metric = l.sample.metrics.as_ref().and_then(Metrics::sst_total);
                json!({
                    "node": l.node,
                    "rss_first_kib": f.sample.rss_kib,
                    "rss_last_kib": l.sample.rss_kib,
                    "wal_file_bytes_first": f.sample.files.wal,
                    "wal_file_bytes_last": l.sample.files.wal,
                    "wal_bytes_first": metric_wal(f),
                    "wal_bytes_last": metric_wal(l),
                    "data_dir_bytes": l.sample.files.total,
                    "sst_file_bytes": l.sample.files.sst,
                    "sst_bytes": sst_metric,
                    "bytes_per_message": self.per_message(l.sample.files.total),
                    "sst_bytes_per_message": self.per_message(l.sample.files.sst),
                    "restart_serving_s": restart.map(|r| r.serving.as_secs_f64()),
                    "restart_first_ack_s": restart.map(|r| r.first_ack.as_secs_f64()),
                    "restart_rss_kib": restart.and_then(|r| r.rss_kib),
                })
            })
            .collect();
        let errors: BTreeMap<&String, u64> =
            self.errors.iter().map(|(k, (n, _))| (k, *n)).collect();
        let [ten_first, ten_last, ten_ratio] = self.drift_over_ten();
        json!({
            "bench": "soak/summary",
            "label": args.label,
            "nodes": args.nodes,
            "partitions": args.partitions,
            "rate": args.rate,
            "minutes": args.minutes,
            "minute_s": args.minute_secs,
            "payload_bytes": args.payload,
            "chats": args.chats,
            "preload": args.preload,
            "offered": self.offered,
            "acked": self.acked,
            "delivered": self.delivered,
            "messages_held": self.held,
            "errors": errors,
            "ack_p99_first_ms": ack_first,
            "ack_p99_last_ms": ack_last,
            "ack_p99_ratio": ack_ratio,
            "delivery_p99_first_ms": del_first,
            "delivery_p99_last_ms": del_last,
            "delivery_p99_ratio": del_ratio,
            "ack_p99_median_first_ten_ms": ten_first,
            "ack_p99_median_last_ten_ms": ten_last,
            "ack_p99_median_ten_ratio": ten_ratio,
            "fsync_p99_first_ms": first.fsync_ms.map(|q| q[1]),
            "fsync_p99_last_ms": last.fsync_ms.map(|q| q[1]),
            "per_node": nodes,
        })
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// A figure, or "-" when there is none.
fn opt(v: Option<impl Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => " ok",
        Some(false) => " MISSED",
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_name_and_column_family() {
        let page = "# TYPE chatd_rocksdb_sst_bytes gauge\n\
                    chatd_rocksdb_sst_bytes{cf=\"raft_log\"} 1024\n\
                    chatd_rocksdb_sst_bytes{cf=\"state\"} 2048\n\
                    chatd_rocksdb_memtable_bytes{cf=\"state\"} 10\n\
                    chatd_rocksdb_wal_bytes 4096\n\
                    chatd_snapshots_built_total 3\n\
                    chatd_raft_term{partition=\"0\"} 4\n\
                    chatd_raft_term{partition=\"1\"} 2\n\
                    chatd_heap_allocated_bytes 77\n\
                    chatd_disk_free_bytes 123\n";
        let m = Metrics::parse(page);
        assert_eq!(m.sst_total(), Some(3072));
        assert_eq!(m.sst_by_cf["state"], 2048);
        assert_eq!(m.memtable_total(), Some(10));
        assert_eq!(m.wal, Some(4096));
        assert_eq!(m.block_cache, None);
        assert_eq!(m.snapshots, [Some(3), None, None]);
        assert_eq!(m.terms, Some(6));
        assert_eq!(m.heap_allocated, Some(77));
        assert_eq!(m.heap_resident, None);
    }

    #[test]
    fn a_payload_carries_its_stamp() {
        let rec = Recorder::new().unwrap();
        let at = rec.epoch + Duration::from_millis(5);
        let p = payload(rec.stamp(at), 100);
        assert_eq!(p.len(), 100);
        rec.delivered(&p);
        rec.delivered(&payload(UNTIMED, 8));
        assert_eq!(rec.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(rec.take_window().delivery.len(), 1);
    }

    #[test]
    fn a_late_ack_counts_from_its_intended_time() {
        let rec = Recorder::new().unwrap();
        let pending = Pending::default();
        let intended = Instant::now() - Duration::from_secs(10);
        let late = Waiting::Timed(intended);
        pending.lock().unwrap().insert("t0".into(), late);
        rec.answer(&pending, "t0", Ok(()));
        let window = rec.take_window();
        let ms = quantiles_ms(&window.ack).unwrap();
        assert!(ms[1] >= 10_000.0, "{ms:?}");
        assert!(pending.lock().unwrap().is_empty());
    }
}
