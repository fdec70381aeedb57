//! What idle devices cost a node, measured from outside as phones connect: each device on its own
//! TCP connection with one `Connect` stream, doing nothing but ping. Reports the node's resident
//! memory per connection and its CPU per 1,000 connections over a quiet window.
//!
//! The count defaults to what the file-descriptor limit allows: this process holds one socket per
//! device and so does the node (it inherits the limit), so both raise their soft limit to the hard
//! one and the bench keeps a margin for RocksDB's files. Every device must still be connected at the
//! end (an idle stream the server closed would flatter the figures).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_client::{ChatClient, DeviceStream};
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use futures::StreamExt;

use crate::delivery::connect_retrying;
use crate::jsonl;
use crate::latency::start_processes;
use crate::procstat::{cpu_ticks, pct, rss_kib};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "target/release/chatd")]
    chatd: std::path::PathBuf,
    /// Idle devices (one connection each); default: as many as the descriptor limit allows.
    #[arg(long)]
    connections: Option<usize>,
    /// Seconds between a device's pings (phones: tens of seconds).
    #[arg(long, default_value_t = 20)]
    ping_secs: u64,
    /// Length of the quiet window over which the node's CPU is measured.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// JSON lines are appended here.
    #[arg(long, default_value = "target/bench/idle.jsonl")]
    json: std::path::PathBuf,
}

/// Descriptors kept free for the node's own files (RocksDB, logs, listeners) and this process's.
const FD_MARGIN: u64 = 400;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.chatd.exists(),
        "no chatd at {} (cargo build --release -p chatd)",
        args.chatd.display()
    );
    // Raise the soft limit as far as allowed; what it ends up at is read back either way.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, hard) =
        rlimit::getrlimit(rlimit::Resource::NOFILE).context("read the descriptor limit")?;
    let allowed = soft.saturating_sub(FD_MARGIN) as usize;
    let n = args.connections.unwrap_or(allowed);
    anyhow::ensure!(
        n <= allowed,
        "{n} connections need more descriptors than the limit ({soft}, hard {hard}) leaves"
    );
    println!("descriptor limit {soft}: {n} idle devices, one connection each");

    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let (addrs, procs) = start_processes(&args.chatd, dir.path(), 1, args.partitions, "")?;
    let addr = addrs[0].clone();
    let pid = procs.pid(1);
    let registrar = connect_retrying(&addr).await?;

    let started = Instant::now();
    let tokens = register(&registrar, n, args.concurrency).await?;
    println!(
        "registered {n} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Let the registrations' writes settle (memtables, projector) before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_kib(pid)?;

    let started = Instant::now();
    let lost = Arc::new(AtomicUsize::new(0));
    let devices = connect_all(&addr, tokens, &args, lost.clone()).await?;
    println!(
        "connected {n} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(pid)?;

    let cpu_before = cpu_ticks(pid)?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let secs = window.elapsed().as_secs_f64();
    let cpu = pct(cpu_ticks(pid)? - cpu_before, secs);
    let rss_end = rss_kib(pid)?;

    let lost = lost.load(Ordering::Relaxed);
    anyhow::ensure!(
        lost == 0,
        "{lost} of {n} idle streams were closed during the run"
    );
    let per_conn_kib = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    let cpu_per_1k = cpu / n as f64 * 1000.0;
    println!();
    println!("| idle connections | ping every | node RSS before → connected → after {}s | KiB per connection | node CPU % (of a core) | CPU % per 1,000 connections |", args.seconds);
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {} s | {} → {} → {} MiB | {per_conn_kib:.1} | {cpu:.1} | {cpu_per_1k:.2} |",
        args.ping_secs,
        rss_before / 1024,
        rss_after / 1024,
        rss_end / 1024
    );
    jsonl::append(
        &args.json,
        [serde_json::json!({
            "bench": "idle",
            "connections": n,
            "ping_secs": args.ping_secs,
            "window_s": secs,
            "rss_before_kib": rss_before,
            "rss_connected_kib": rss_after,
            "rss_end_kib": rss_end,
            "kib_per_connection": per_conn_kib,
            "server_cpu_pct": cpu,
            "server_cpu_pct_per_1k": cpu_per_1k,
        })],
    )?;
    drop(devices);
    Ok(())
}

/// Register `n` users, one device each; their tokens in order.
async fn register(
    registrar: &ChatClient,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    futures::stream::iter(0..n)
        .map(|i| {
            let mut client = registrar.clone();
            async move {
                let reply = client
                    .register(&format!("idle-{i}"), 1)
                    .await
                    .with_context(|| format!("register idle-{i}"))?;
                Ok(reply.token)
            }
        })
        .buffered(concurrency)
        .collect::<Vec<anyhow::Result<String>>>()
        .await
        .into_iter()
        .collect()
}

/// Connect every device on its own connection, wait for its backlog to end, and leave a task
/// that pings it and counts it in `lost` if the server closes it.
async fn connect_all(
    addr: &str,
    tokens: Vec<String>,
    args: &Args,
    lost: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let n = tokens.len();
    let ping = Duration::from_secs(args.ping_secs.max(1));
    let done = AtomicUsize::new(0);
    futures::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, token)| {
            let (lost, done) = (lost.clone(), &done);
            async move {
                let mut client = ChatClient::connect(addr)
                    .await
                    .with_context(|| format!("connection {i}"))?;
                let mut stream = client.open_stream(&token, &Default::default()).await?;
                wait_synced(&mut stream).await?;
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % 2000 == 0 {
                    println!("  {finished} / {n} connected");
                }
                // Spread the pings evenly over the interval, as a population of phones would.
                let phase = ping.mul_f64(i as f64 / n as f64);
                anyhow::Ok(tokio::spawn(stay_idle(stream, phase, ping, lost)))
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn wait_synced(stream: &mut DeviceStream) -> anyhow::Result<()> {
    loop {
        match stream.next().await {
            Some(Ok(server_frame::Kind::SyncComplete(_))) => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(status)) => return Err(status.into()),
            None => anyhow::bail!("the server closed the stream before SyncComplete"),
        }
    }
}

/// Ping every `every` (first after `phase`) and read what comes back, until the stream ends.
async fn stay_idle(
    mut stream: DeviceStream,
    phase: Duration,
    every: Duration,
    lost: Arc<AtomicUsize>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
    let mut nonce = 0;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(_)) => {}
                _ => {
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = ticks.tick() => {
                nonce += 1;
                let ping = client_frame::Kind::Ping(pb::Ping { nonce });
                if stream.send_frame(ping).await.is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}
