//! The log benchmark: closed-loop writers at batch sizes × writer counts on 1 and 3 nodes, and an
//! open-loop fixed-rate probe of commit latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_log::{PartitionId, ProposeError};
use hdrhistogram::Histogram;

use crate::cluster::Cluster;
use crate::fsync;

#[derive(clap::Args)]
pub struct Args {
    /// Node counts to run (each a fresh cluster).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    nodes: Vec<u64>,
    /// Records per proposal.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    batch: Vec<usize>,
    /// Concurrent closed-loop writers.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    writers: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Offered load of the open-loop probe (appends/s, batch 1); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Bytes per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Partitions of each cluster.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Where the nodes' data dirs go (a temp dir under it); defaults to the system temp dir.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Let leadership settle after start-up and warm up every partition before measuring.
async fn warm_up(cluster: &Cluster, partitions: u32) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in 0..partitions {
        for _ in 0..50 {
            propose(
                cluster,
                PartitionId(p),
                vec![vec![chat_log::RAW_COMMAND_TAG; 16]],
            )
            .await?;
        }
    }
    Ok(())
}

/// Propose one batch to `p`, following leadership changes.
async fn propose(cluster: &Cluster, p: PartitionId, batch: Vec<Vec<u8>>) -> anyhow::Result<()> {
    loop {
        match cluster.leader_of(p).propose(p, batch.clone()).await {
            Ok(_) => return Ok(()),
            Err(ProposeError::NotLeader(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => return Err(e.into()),
        }
    }
}

struct Figures {
    appends_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    syncs_per_sec: f64,
    appends_per_sync: f64,
}

/// Closed loop: `writers` tasks, each proposing `batch` records to its partition back to back.
async fn closed_loop(
    cluster: &Arc<Cluster>,
    partitions: u32,
    writers: usize,
    batch: usize,
    record: &[u8],
    seconds: u64,
) -> anyhow::Result<Figures> {
    let stop = Arc::new(AtomicBool::new(false));
    let (syncs0, _) = cluster.wal_syncs();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (cluster, stop) = (cluster.clone(), stop.clone());
        let records = vec![record.to_vec(); batch];
        let p = PartitionId(w as u32 % partitions);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut appends = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                propose(&cluster, p, records.clone()).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
                appends += records.len() as u64;
            }
            anyhow::Ok((hist, appends))
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3)?;
    let mut appends = 0;
    for t in tasks {
        let (h, a) = t.await??;
        hist.add(h)?;
        appends += a;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (syncs1, _) = cluster.wal_syncs();
    let syncs = (syncs1 - syncs0) as f64;
    Ok(Figures {
        appends_per_sec: appends as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        syncs_per_sec: syncs / elapsed,
        appends_per_sync: if syncs > 0.0 {
            appends as f64 / syncs
        } else {
            0.0
        },
    })
}

/// Open loop: one single-record proposal every 1/rate s, spread over the partitions. Each send is
/// its own task, so a slow commit never delays later sends (no coordinated omission); latency is
/// measured from the moment each send starts.
async fn open_loop(
    cluster: &Arc<Cluster>,
    partitions: u32,
    rate: u64,
    record: &[u8],
    seconds: u64,
) -> anyhow::Result<Figures> {
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let total = rate * seconds;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let cluster = cluster.clone();
        let record = vec![record.to_vec()];
        let p = PartitionId((i % u64::from(partitions)) as u32);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            propose(&cluster, p, record).await?;
            anyhow::Ok(sent.elapsed().as_micros() as u64)
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.record(t.await??)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Figures {
        appends_per_sec: total as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        syncs_per_sec: 0.0,
        appends_per_sync: 0.0,
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // chatd's handler routes by a leading tag byte; these are raw records.
    let record =
        chat_log::Dispatch::tagged(chat_log::RAW_COMMAND_TAG, &vec![0x5au8; args.record_bytes]);
    let fsync_dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let floor = fsync::measure(&fsync_dir, 2000)?;
    println!("{floor}");
    println!(
        "\n| nodes | writers | batch | appends/s | commit p50 (us) | commit p99 (us) | WAL syncs/s (all nodes) | appends per sync |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &args.nodes {
        let cluster = Arc::new(
            Cluster::start(n, args.partitions, args.dir.as_deref(), Default::default()).await?,
        );
        warm_up(&cluster, args.partitions).await?;
        for &writers in &args.writers {
            for &batch in &args.batch {
                let f = closed_loop(
                    &cluster,
                    args.partitions,
                    writers,
                    batch,
                    &record,
                    args.seconds,
                )
                .await?;
                println!(
                    "| {n} | {writers} | {batch} | {:.0} | {} | {} | {:.0} | {:.1} |",
                    f.appends_per_sec, f.p50_us, f.p99_us, f.syncs_per_sec, f.appends_per_sync
                );
            }
        }
        if args.rate > 0 {
            let f = open_loop(&cluster, args.partitions, args.rate, &record, args.seconds).await?;
            println!(
                "| {n} | open loop @ {}/s | 1 | {:.0} | {} | {} | | |",
                args.rate, f.appends_per_sec, f.p50_us, f.p99_us
            );
        }
        Arc::into_inner(cluster)
            .context("cluster still shared")?
            .stop()
            .await?;
    }
    println!(
        "\nfsync floor p99 {} us; 3x = {} us",
        floor.p99_us,
        3 * floor.p99_us
    );
    Ok(())
}
