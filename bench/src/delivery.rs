//! End-to-end delivery through the device API, against real `chatd` processes: the time from a
//! device sending a message to the frame arriving on another device's stream (both streams in
//! this process, so one clock), at fixed offered loads. (What idle devices cost: `idle.rs`.)
//!
//! Senders connect to node 1, receivers to node 2 (or 1 on a single node), so in a cluster a
//! message crosses the forward to its partition leader, Raft, and the receiver node's tail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::{ChatClient, DeviceStream, FrameSender};
use chat_proto::chat_v1::server_frame;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use crate::latency::start_processes;
use crate::peer::CHATD_CONFIG;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "target/release/chatd")]
    chatd: PathBuf,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Offered messages per second (all pairs together).
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    rate: Vec<u64>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Sender/receiver pairs (one direct chat each).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.chatd.exists(),
        "no chatd at {} (cargo build --release -p chatd)",
        args.chatd.display()
    );
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let (addrs, _procs) = start_processes(
        &args.chatd,
        dir.path(),
        args.nodes,
        args.partitions,
        CHATD_CONFIG,
    )?;
    let send_addr = addrs[0].clone();
    let recv_addr = addrs[addrs.len().min(2) - 1].clone();
    let mut registrar = connect_retrying(&send_addr).await?;

    // Pairs: sender i and receiver i share a direct chat.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let epoch = Instant::now();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    for i in 0..args.pairs {
        let s = registrar.register(&format!("bench-s{i}"), 1).await?;
        let r = registrar.register(&format!("bench-r{i}"), 1).await?;
        let mut sc = ChatClient::connect(&send_addr)
            .await?
            .with_token(&s.token)?;
        let chat = sc.create_direct(&format!("bench-r{i}")).await?.chat_id;
        let sender = sc.open_stream(&s.token, &Default::default()).await?;
        let receiver = ChatClient::connect(&recv_addr)
            .await?
            .open_stream(&r.token, &Default::default())
            .await?;
        senders.push((chat, sender));
        receivers.push(receiver);
    }
    for r in receivers {
        tokio::spawn(receive(r, epoch, hist.clone()));
    }
    // Senders' own streams are drained too (they receive their messages and acks): a stream
    // nobody reads stops taking frames from its device.
    let senders: Vec<(u64, FrameSender)> = senders
        .into_iter()
        .map(|(chat, mut s)| {
            let tx = s.sender();
            tokio::spawn(async move { while let Some(Ok(_)) = s.next().await {} });
            (chat, tx)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!(
        "| nodes | offered msg/s | delivered msg/s | delivery p50 (us) | p99 (us) | p99.9 (us) |"
    );
    println!("|---|---|---|---|---|---|");
    for &rate in &args.rate {
        hist.lock().await.reset();
        let total = rate * args.seconds;
        let interval = Duration::from_nanos(1_000_000_000 / rate);
        let start = Instant::now();
        for i in 0..total {
            tokio::time::sleep_until((start + interval * i as u32).into()).await;
            let (chat, s) = &senders[i as usize % senders.len()];
            let sent_us = epoch.elapsed().as_micros() as u64;
            s.send(
                *chat,
                &format!("b{rate}-{i}"),
                sent_us.to_be_bytes().to_vec(),
            )
            .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while hist.lock().await.len() < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let h = hist.lock().await.clone();
        println!(
            "| {} | {rate} | {:.0} | {} | {} | {} |",
            args.nodes,
            h.len() as f64 / start.elapsed().as_secs_f64(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        );
        anyhow::ensure!(h.len() == total, "{} of {total} delivered", h.len());
    }
    Ok(())
}

pub async fn connect_retrying(addr: &str) -> anyhow::Result<ChatClient> {
    connect_retrying_via(&chat_tls::Dialer::plain(), addr).await
}

/// [`connect_retrying`] through `dialer` (plaintext or TLS).
pub async fn connect_retrying_via(
    dialer: &chat_tls::Dialer,
    addr: &str,
) -> anyhow::Result<ChatClient> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ChatClient::connect_via(dialer, addr).await {
            Ok(c) => {
                // Wait until registration works (leaders elected).
                let mut probe = c.clone();
                match probe.register("bench-probe", 1).await {
                    // Taken: an earlier probe (through another node) got there first.
                    Ok(_) => return Ok(c),
                    Err(e) if e.code() == tonic::Code::AlreadyExists => return Ok(c),
                    Err(e) if Instant::now() > deadline => return Err(e.into()),
                    Err(_) => {}
                }
            }
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Record the delivery latency of every message frame (payload: the send time in µs).
async fn receive(mut stream: DeviceStream, epoch: Instant, hist: Arc<Mutex<Histogram<u64>>>) {
    while let Some(Ok(frame)) = stream.next().await {
        if let server_frame::Kind::Message(m) = frame {
            let Ok(bytes) = <[u8; 8]>::try_from(m.payload.as_slice()) else {
                continue;
            };
            let now = epoch.elapsed().as_micros() as u64;
            let _ = hist
                .lock()
                .await
                .record(now.saturating_sub(u64::from_be_bytes(bytes)));
        }
    }
}
