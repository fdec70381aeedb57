//! Projection rebuild speed: fill a single node with chat traffic (messages and receipts in
//! groups), let the live projections catch up, then rebuild the `chats` projection of every
//! partition by replay from offset 0 and report events replayed per second. The node keeps
//! serving meanwhile; here it is idle so the figure is the replay itself.

use std::time::{Duration, Instant};

use chat_log::PartitionId;
use chat_model::ids::{ChatId, ChatSeq, DeviceId, UserId};
use chat_proto::chat_v1 as pb;
use chatd::config::ChatConfig;

use crate::cluster::Cluster;

#[derive(clap::Args)]
pub struct Args {
    /// Messages to write before rebuilding (each followed by a delivered receipt of one member).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Group chats (10 members each) the messages are spread over.
    #[arg(long, default_value_t = 100)]
    chats: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let chat = ChatConfig {
        sends_per_second: 1_000_000,
        send_burst: 1_000_000,
        ..ChatConfig::default()
    };
    let cluster = Cluster::start(1, args.partitions, args.dir.as_deref(), chat).await?;
    let node = &cluster.nodes[0];
    let seq = node.sequencer.clone();
    let mut groups = Vec::new();
    for c in 0..args.chats {
        let mut members = Vec::new();
        for m in 0..10 {
            members.push(UserId(
                seq.register_user(&format!("rb-{c}-{m}")).await?.user_id,
            ));
        }
        let reply = seq
            .create_group(members[0], &format!("rb-{c}"), "rebuild", &members[1..])
            .await?;
        groups.push((ChatId(reply.chat_id), members));
    }

    let fill = Instant::now();
    let writers = 64u64;
    let per_writer = args.messages / writers;
    let tasks = (0..writers).map(|w| {
        let (seq, groups) = (seq.clone(), groups.clone());
        tokio::spawn(async move {
            for k in 0..per_writer {
                let (chat, members) = &groups[((w * per_writer + k) as usize) % groups.len()];
                let sender = members[(k % 10) as usize];
                let ack = seq
                    .send(pb::SendMessage {
                        chat_id: chat.0,
                        sender_user: sender.0,
                        sender_device: 1,
                        client_msg_id: format!("{w}-{k}"),
                        payload: vec![0x61; 100],
                        media: vec![],
                    })
                    .await?;
                let reader = members[((k + 1) % 10) as usize];
                seq.advance_receipt(
                    *chat,
                    reader,
                    DeviceId(1),
                    pb::ReceiptKind::Delivered,
                    ChatSeq(ack.seq),
                )
                .await?;
            }
            anyhow::Ok(())
        })
    });
    for t in futures::future::join_all(tasks).await {
        t??;
    }
    println!(
        "filled {} messages (+ receipts) in {:.1} s",
        writers * per_writer,
        fill.elapsed().as_secs_f64()
    );

    // Let the live projections catch up, then rebuild everything.
    let projector = node.projector.clone();
    let last = |p: u32| node.node.last_offset(PartitionId(p)).map(|o| o.0);
    loop {
        let status = projector.status()?;
        if status
            .iter()
            .all(|s| last(s.partition.0).is_ok_and(|l| s.checkpoint >= l))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before: Vec<_> = (0..args.partitions)
        .map(|p| projector.digest(PartitionId(p), "chats"))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let events: u64 = before.iter().map(|(checkpoint, _)| checkpoint).sum();

    let start = Instant::now();
    for p in 0..args.partitions {
        projector
            .rebuild(PartitionId(p), "chats")
            .map_err(anyhow::Error::msg)?;
    }
    while projector.status()?.iter().any(|s| s.rebuilding.is_some()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    let after: Vec<_> = (0..args.partitions)
        .map(|p| projector.digest(PartitionId(p), "chats"))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        before == after,
        "the rebuilt projection differs from the live one"
    );
    println!("| partitions | events replayed | rebuild time (s) | events/s | identical to live |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {events} | {:.2} | {:.0} | yes |",
        args.partitions,
        took.as_secs_f64(),
        events as f64 / took.as_secs_f64()
    );
    cluster.stop().await
}
