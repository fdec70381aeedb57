//! The write-path benchmark: acknowledged chat sends/s and ack latency (send → committed on a
//! quorum, applied, seq assigned → ack) with 1, 64 and 1024 concurrent senders.
//!
//! Sender *i* is its own user, member of group chat *i* mod C (C = senders / 4, at least 1), and
//! submits through node *i* mod n — so on 3 nodes two thirds of sends are forwarded to the
//! partition leader, as they would be from gateways on every node. CPU per 1,000 sends is this
//! whole process's (nodes and generator) over the window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_model::ids::UserId;
use chat_proto::chat_v1 as pb;
use chatd::config::ChatConfig;
use hdrhistogram::Histogram;

use crate::cluster::Cluster;
use crate::procstat::cpu_ticks;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    nodes: Vec<u64>,
    /// Concurrent closed-loop senders.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    senders: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The benchmark measures the write path, not the per-user rate limit.
    let chat = ChatConfig {
        sends_per_second: 1_000_000,
        send_burst: 1_000_000,
        ..ChatConfig::default()
    };
    println!("| nodes | senders | chats | acked sends/s | ack p50 (us) | ack p99 (us) | CPU ms / 1k sends |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.nodes {
        for &senders in &args.senders {
            // A fresh cluster per cell, so earlier cells' data does not weigh on later ones.
            let cluster = Arc::new(
                Cluster::start(n, args.partitions, args.dir.as_deref(), chat.clone()).await?,
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            let chats = (senders / 4).max(1);
            let setup = setup(&cluster, senders, chats).await?;
            // The nodes and the generator share this process: its CPU over the window is
            // what the sends cost, generator included (an upper bound for the nodes alone).
            let cpu_before = cpu_ticks(std::process::id())?;
            let (rate, hist) = measure(&cluster, &setup, args.payload_bytes, args.seconds).await?;
            let cpu_ms = (cpu_ticks(std::process::id())? - cpu_before) as f64 * 10.0;
            let per_1k = cpu_ms / (rate * args.seconds as f64) * 1000.0;
            println!(
                "| {n} | {senders} | {chats} | {rate:.0} | {} | {} | {per_1k:.0} |",
                hist.value_at_quantile(0.5),
                hist.value_at_quantile(0.99)
            );
            Arc::into_inner(cluster)
                .expect("cluster no longer shared")
                .stop()
                .await?;
        }
    }
    Ok(())
}

/// (user, chat) per sender.
async fn setup(
    cluster: &Cluster,
    senders: usize,
    chats: usize,
) -> anyhow::Result<Vec<(UserId, u64)>> {
    let seq = &cluster.nodes[0].sequencer;
    let mut users = Vec::with_capacity(senders);
    let handles: Vec<String> = (0..senders).map(|i| format!("bench-user-{i}")).collect();
    for batch in handles.chunks(256) {
        let replies =
            futures::future::try_join_all(batch.iter().map(|h| seq.register_user(h))).await?;
        users.extend(replies.into_iter().map(|r| UserId(r.user_id)));
    }
    let mut chat_ids = Vec::with_capacity(chats);
    for c in 0..chats {
        let members: Vec<UserId> = users.iter().copied().skip(c).step_by(chats).collect();
        let reply = seq
            .create_group(members[0], &format!("bench-{c}"), "bench", &members[1..])
            .await?;
        chat_ids.push(reply.chat_id);
    }
    Ok(users
        .into_iter()
        .enumerate()
        .map(|(i, u)| (u, chat_ids[i % chats]))
        .collect())
}

async fn measure(
    cluster: &Arc<Cluster>,
    senders: &[(UserId, u64)],
    payload_bytes: usize,
    seconds: u64,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(senders.len());
    for (i, &(user, chat)) in senders.iter().enumerate() {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        let payload = vec![0x42u8; payload_bytes];
        tasks.push(tokio::spawn(async move {
            let seq = cluster.nodes[i % cluster.nodes.len()].sequencer.clone();
            let mut hist = Histogram::<u64>::new(3)?;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let message = pb::SendMessage {
                    chat_id: chat,
                    sender_user: user.0,
                    sender_device: 1,
                    client_msg_id: format!("{i}-{sent}"),
                    payload: payload.clone(),
                    media: vec![],
                };
                let t = Instant::now();
                seq.send(message).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                sent += 1;
            }
            anyhow::Ok((hist, sent))
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3)?;
    let mut sent = 0;
    for t in tasks {
        let (h, s) = t.await??;
        hist.add(h)?;
        sent += s;
    }
    Ok((sent as f64 / start.elapsed().as_secs_f64(), hist))
}
