//! `chat-bench group`: one big group with every member online, to see what a message and a
//! receipt cost when a chat has a thousand members.
//!
//! `--members` users (1,024) in one group, each with a device stream open (the streams share
//! `--connections` HTTP/2 connections, spread over the nodes). `--senders` of them (100) send
//! into the group in an open loop at each `--rate` for `--seconds`; every member acknowledges and
//! reads what it received once per `--read-every-ms`, as an app on screen does. Measured per
//! rate: the time until the *last* member has a message (p50/p99 over messages), every
//! delivery's latency, the senders' ack latency (acks must not wait behind deliveries), the
//! receipt and tick frames the members got (each member's read should reach its own devices
//! and, as ticks, the senders — not every member), and the server's CPU per delivery.
//! Latencies count from each send's intended time (no coordinated omission).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chat_client::{ChatClient, DeviceStream, FrameSender};
use chat_proto::chat_v1::server_frame;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;

use crate::delivery::connect_retrying;
use crate::jsonl;
use crate::latency::start_processes;
use crate::peer::CHATD_CONFIG;
use crate::procstat::{cpu_ticks, pct};

#[derive(clap::Args)]
pub struct Args {
    /// The chatd binary (build it with `cargo build --release -p chatd`).
    #[arg(long, default_value = "target/release/chatd")]
    chatd: PathBuf,
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Members of the group, the creator included (chatd allows 1,024 by default).
    #[arg(long, default_value_t = 1024)]
    members: usize,
    /// Members that send (the first ones), round-robin.
    #[arg(long, default_value_t = 100)]
    senders: usize,
    /// Messages per second into the group, one phase each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    rate: Vec<u64>,
    /// Length of each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// HTTP/2 connections the member streams share (spread over the nodes).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// How often each member acknowledges and reads up to the last message it received.
    #[arg(long, default_value_t = 1000)]
    read_every_ms: u64,
    /// How long a phase may take to reach every member after its last send.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
    /// Temp dirs go under this directory.
    #[arg(long, default_value = "target")]
    dir: PathBuf,
    /// Append one JSON line per phase here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Payload: the intended send time (µs since the epoch) and the message's index in the run.
const PAYLOAD: usize = 16;

/// What the member streams count, shared.
struct Shared {
    epoch: Instant,
    members: u32,
    /// Per message of the run: how many members have it.
    received: Vec<AtomicU32>,
    /// Per message: its intended send time (µs since the epoch).
    sent_at: Vec<AtomicU64>,
    /// Per message: its phase.
    phase_of: Vec<AtomicU32>,
    receipts: AtomicU64,
    ticks: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// One member's histograms for one phase (µs).
struct Hists {
    delivery: Histogram<u64>,
    last_member: Histogram<u64>,
    ack: Histogram<u64>,
}

impl Hists {
    fn new() -> Hists {
        // Bounded (1 µs to an hour): `saturating_record` clamps to a histogram's current range
        // rather than growing it, so an auto-resizing one would pin every value at its start.
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Hists {
            delivery: h(),
            last_member: h(),
            ack: h(),
        }
    }

    fn add(&mut self, other: &Hists) {
        // Same bounds on both sides: cannot fail.
        let _ = self.delivery.add(&other.delivery);
        let _ = self.last_member.add(&other.last_member);
        let _ = self.ack.add(&other.ack);
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.chatd.exists(),
        "no chatd at {} (cargo build --release -p chatd)",
        args.chatd.display()
    );
    ensure!(args.members >= 2, "--members must be at least 2");
    ensure!(
        (1..=args.members).contains(&args.senders),
        "--senders must be between 1 and --members"
    );
    ensure!(
        args.rate.iter().all(|&r| r > 0) && args.seconds > 0 && args.connections > 0,
        "--rate, --seconds and --connections must be positive"
    );
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::Builder::new()
        .prefix("group-")
        .tempdir_in(&args.dir)?;
    let (addrs, procs) = start_processes(
        &args.chatd,
        dir.path(),
        args.nodes,
        args.partitions,
        CHATD_CONFIG,
    )?;
    let pids: Vec<u32> = (1..=args.nodes).map(|i| procs.pid(i)).collect();
    println!(
        "group: {} node(s), {} members ({} sending), phases at {:?} msg/s for {} s each",
        args.nodes, args.members, args.senders, args.rate, args.seconds
    );

    let registrar = connect_retrying(&addrs[0]).await?;
    let tokens = register_members(&registrar, args.members).await?;
    let handles: Vec<String> = (1..args.members).map(handle).collect();
    let chat = registrar
        .clone()
        .with_token(&tokens[0])?
        .create_group("bench-big-group", "big group", &handles)
        .await
        .context("create the group")?
        .chat_id;
    println!("group {chat} created with {} members", args.members);

    let total: usize = args.rate.iter().map(|&r| (r * args.seconds) as usize).sum();
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        members: args.members as u32,
        received: (0..total).map(|_| AtomicU32::new(0)).collect(),
        sent_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        phase_of: (0..total).map(|_| AtomicU32::new(0)).collect(),
        receipts: AtomicU64::new(0),
        ticks: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let (stop, stopped) = watch::channel(false);
    let mut connections = Vec::new();
    for i in 0..args.connections {
        connections.push(ChatClient::connect(&addrs[i % addrs.len()]).await?);
    }
    let mut readers = Vec::new();
    let mut senders: Vec<FrameSender> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut client = connections[i % connections.len()].clone();
        let stream = client
            .open_stream(token, &Default::default())
            .await
            .with_context(|| format!("open member {i}'s stream"))?;
        if i < args.senders {
            senders.push(stream.sender());
        }
        let member = Member {
            chat,
            shared: shared.clone(),
            phases: args.rate.len(),
            read_every: Duration::from_millis(args.read_every_ms),
        };
        readers.push(tokio::spawn(member.run(stream, stopped.clone())));
    }
    // Let every stream finish its (empty) backlog.
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!(
        "\n| offered msg/s | sent | deliveries | deliveries/s | last member p50 / p99 (ms) | delivery p50 / p99 (ms) | ack p50 / p99 (ms) | receipt frames | tick frames | server CPU | client CPU | server CPU µs / delivery |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut base = 0usize;
    let mut phase_figures = Vec::new();
    for (phase, &rate) in args.rate.iter().enumerate() {
        let count = (rate * args.seconds) as usize;
        let cpu_before: u64 = pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).sum();
        let client_before = cpu_ticks(std::process::id()).unwrap_or(0);
        let (receipts_before, ticks_before) = (
            shared.receipts.load(Ordering::Relaxed),
            shared.ticks.load(Ordering::Relaxed),
        );
        let start = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        for i in 0..count {
            let at = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(at.into()).await;
            let idx = base + i;
            let stamp = at.duration_since(shared.epoch).as_micros() as u64;
            shared.sent_at[idx].store(stamp, Ordering::Relaxed);
            shared.phase_of[idx].store(phase as u32, Ordering::Relaxed);
            let mut payload = stamp.to_be_bytes().to_vec();
            payload.extend_from_slice(&(idx as u64).to_be_bytes());
            senders[idx % senders.len()]
                .send(chat, &format!("g{idx}"), payload)
                .await?;
        }
        let sending = start.elapsed();
        let drained = drain(&shared, base..base + count, args.drain_secs).await;
        let secs = start.elapsed().as_secs_f64();
        // Reads of the phase's last messages arrive within a read interval or two.
        tokio::time::sleep(Duration::from_millis(2 * args.read_every_ms + 500)).await;
        let cpu_ticks_used: u64 = pids
            .iter()
            .map(|&p| cpu_ticks(p).unwrap_or(0))
            .sum::<u64>()
            .saturating_sub(cpu_before);
        let client_ticks = cpu_ticks(std::process::id())
            .unwrap_or(0)
            .saturating_sub(client_before);
        let deliveries: u64 = (base..base + count)
            .map(|i| u64::from(shared.received[i].load(Ordering::Relaxed)))
            .sum();
        phase_figures.push(PhaseFigures {
            rate,
            sent: count,
            sending_secs: sending.as_secs_f64(),
            drained,
            secs,
            deliveries,
            receipts: shared.receipts.load(Ordering::Relaxed) - receipts_before,
            ticks: shared.ticks.load(Ordering::Relaxed) - ticks_before,
            cpu_pct: pct(cpu_ticks_used, secs),
            client_cpu_pct: pct(client_ticks, secs),
            cpu_us_per_delivery: (deliveries > 0)
                .then(|| cpu_ticks_used as f64 * 10_000.0 / deliveries as f64),
        });
        base += count;
    }
    stop.send(true)?;
    let mut hists: Vec<Hists> = (0..args.rate.len()).map(|_| Hists::new()).collect();
    for reader in readers {
        for (phase, h) in reader.await?.iter().enumerate() {
            hists[phase].add(h);
        }
    }
    drop(procs);
    let mut lines = Vec::new();
    for (f, h) in phase_figures.iter().zip(&hists) {
        f.print(h);
        lines.push(f.json(&args, h));
    }
    let errors = shared.errors.load(Ordering::Relaxed);
    println!("\nerrors: {errors}");
    if let Some(path) = &args.json {
        jsonl::append(path, lines)?;
    }
    ensure!(errors == 0, "{errors} sends or streams failed");
    ensure!(
        phase_figures.iter().all(|f| f.drained),
        "a phase did not reach every member within --drain-secs"
    );
    Ok(())
}

fn handle(i: usize) -> String {
    format!("g-member-{i}")
}

/// Register `n` members, 64 at a time; their tokens.
async fn register_members(registrar: &ChatClient, n: usize) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let calls = chunk.iter().map(|&i| {
            let mut c = registrar.clone();
            async move { c.register(&handle(i), 1).await.map(|r| r.token) }
        });
        for token in futures::future::join_all(calls).await {
            tokens.push(token.context("register a member")?);
        }
    }
    Ok(tokens)
}

/// Wait until every message of `range` has reached every member; false at the deadline.
async fn drain(shared: &Shared, range: std::ops::Range<usize>, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let done = range
            .clone()
            .all(|i| shared.received[i].load(Ordering::Relaxed) >= shared.members);
        if done {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One member's device: counts what arrives, reads what it received every `read_every`.
struct Member {
    chat: u64,
    shared: Arc<Shared>,
    phases: usize,
    read_every: Duration,
}

impl Member {
    /// Until `stop`: the member's histograms per phase.
    async fn run(self, mut stream: DeviceStream, mut stop: watch::Receiver<bool>) -> Vec<Hists> {
        let mut hists: Vec<Hists> = (0..self.phases).map(|_| Hists::new()).collect();
        let tx = stream.sender();
        let (mut last_seq, mut read_seq) = (0u64, 0u64);
        let mut reads = tokio::time::interval(self.read_every);
        loop {
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(kind)) => self.on_frame(kind, &mut hists, &mut last_seq),
                    _ => {
                        if !*stop.borrow() {
                            self.shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        return hists;
                    }
                },
                _ = reads.tick() => {
                    if last_seq > read_seq {
                        read_seq = last_seq;
                        // Reading implies delivery: one frame moves both marks.
                        let _ = tx.read(self.chat, read_seq).await;
                    }
                }
                _ = stop.changed() => return hists,
            }
        }
    }

    fn on_frame(&self, kind: server_frame::Kind, hists: &mut [Hists], last_seq: &mut u64) {
        let shared = &self.shared;
        match kind {
            server_frame::Kind::Message(m) if m.payload.len() == PAYLOAD => {
                *last_seq = (*last_seq).max(m.seq);
                let stamp = u64::from_be_bytes(m.payload[..8].try_into().expect("8 bytes"));
                let idx = u64::from_be_bytes(m.payload[8..].try_into().expect("8 bytes")) as usize;
                let Some(count) = shared.received.get(idx) else {
                    return;
                };
                let phase = shared.phase_of[idx].load(Ordering::Relaxed) as usize;
                let latency = shared.now_us().saturating_sub(stamp);
                let h = &mut hists[phase];
                h.delivery.saturating_record(latency);
                if count.fetch_add(1, Ordering::Relaxed) + 1 == shared.members {
                    h.last_member.saturating_record(latency);
                }
            }
            server_frame::Kind::SendAck(a) => {
                let Some(idx) = a
                    .client_msg_id
                    .strip_prefix('g')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < shared.sent_at.len())
                else {
                    return;
                };
                let phase = shared.phase_of[idx].load(Ordering::Relaxed) as usize;
                let sent = shared.sent_at[idx].load(Ordering::Relaxed);
                hists[phase]
                    .ack
                    .saturating_record(shared.now_us().saturating_sub(sent));
            }
            server_frame::Kind::SendError(_) | server_frame::Kind::Error(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            server_frame::Kind::Receipt(_) => {
                shared.receipts.fetch_add(1, Ordering::Relaxed);
            }
            server_frame::Kind::Ticks(_) => {
                shared.ticks.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// What one phase measured (besides the histograms).
struct PhaseFigures {
    rate: u64,
    sent: usize,
    sending_secs: f64,
    drained: bool,
    /// From the first send until every member had every message (or the drain gave up).
    secs: f64,
    deliveries: u64,
    receipts: u64,
    ticks: u64,
    cpu_pct: f64,
    /// This process (the 1,024 devices) over the same time: on a small machine it competes
    /// with the server for the cores.
    client_cpu_pct: f64,
    cpu_us_per_delivery: Option<f64>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

impl PhaseFigures {
    fn print(&self, h: &Hists) {
        println!(
            "| {} | {} | {}{} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} | {:.0} % | {:.0} % | {} |",
            self.rate,
            self.sent,
            self.deliveries,
            if self.drained { "" } else { " (not all)" },
            self.deliveries as f64 / self.secs,
            ms(&h.last_member, 0.5),
            ms(&h.last_member, 0.99),
            ms(&h.delivery, 0.5),
            ms(&h.delivery, 0.99),
            ms(&h.ack, 0.5),
            ms(&h.ack, 0.99),
            self.receipts,
            self.ticks,
            self.cpu_pct,
            self.client_cpu_pct,
            self.cpu_us_per_delivery
                .map_or_else(|| "-".into(), |us| format!("{us:.2}")),
        );
    }

    fn json(&self, args: &Args, h: &Hists) -> serde_json::Value {
        json!({
            "bench": "group",
            "nodes": args.nodes,
            "members": args.members,
            "senders": args.senders,
            "rate": self.rate,
            "sent": self.sent,
            "sending_s": self.sending_secs,
            "drained": self.drained,
            "phase_s": self.secs,
            "deliveries": self.deliveries,
            "last_member_p50_ms": ms(&h.last_member, 0.5),
            "last_member_p99_ms": ms(&h.last_member, 0.99),
            "delivery_p50_ms": ms(&h.delivery, 0.5),
            "delivery_p99_ms": ms(&h.delivery, 0.99),
            "ack_p50_ms": ms(&h.ack, 0.5),
            "ack_p99_ms": ms(&h.ack, 0.99),
            "receipt_frames": self.receipts,
            "tick_frames": self.ticks,
            "server_cpu_pct": self.cpu_pct,
            "client_cpu_pct": self.client_cpu_pct,
            "server_cpu_us_per_delivery": self.cpu_us_per_delivery,
        })
    }
}
