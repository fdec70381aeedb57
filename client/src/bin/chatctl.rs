//! `chatctl`: the admin CLI for SREs. Talks to one chatd node's admin API.

use std::path::PathBuf;
use std::time::Duration;

use chat_client::admin::{format_status, resolve_secret, Admin};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chatctl", version, about = "Admin CLI for chatd")]
struct Cli {
    /// The node to talk to (host:port).
    #[arg(long, global = true, default_value = "127.0.0.1:7400")]
    addr: String,
    /// Cluster secret; when absent it is read from `<data-dir>/cluster_secret`.
    #[arg(
        long,
        global = true,
        env = "CHATD_CLUSTER_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// The node's data dir, to find a generated secret.
    #[arg(long, global = true, default_value = "data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Role, term, leader and progress of every partition on the node.
    Status,
    /// Append records (each argument one record) to a partition, via its leader.
    Append {
        #[arg(long, short)]
        partition: u32,
        #[arg(required = true)]
        records: Vec<String>,
    },
    /// Print a partition's events from an offset.
    Read {
        #[arg(long, short)]
        partition: u32,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// sha256 of this node's replica of each partition's event log (compare across nodes).
    Digest {
        /// One partition; all when absent.
        #[arg(long, short)]
        partition: Option<u32>,
    },
    /// Build a snapshot of a partition now and purge the Raft log behind it.
    Compact {
        #[arg(long, short)]
        partition: u32,
    },
    /// Re-read every stored record on the node and check its crc32. Exit status 1 on any error.
    Verify,
    /// Where each projection of each partition stands on the node, with digests.
    Projections,
    /// Rebuild a projection of a partition (all partitions when absent) by replay, while serving.
    Rebuild {
        /// The projection (e.g. `chats`).
        name: String,
        #[arg(long, short)]
        partition: Option<u32>,
        /// Wait until the rebuilt copies are live, printing progress.
        #[arg(long)]
        wait: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chatctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let secret = resolve_secret(cli.secret, &cli.data_dir)?;
    let mut admin = Admin::connect(&cli.addr, &secret).await?;
    match cli.command {
        Cmd::Status => print!("{}", format_status(&admin.status().await?)),
        Cmd::Append { partition, records } => {
            let records = records.into_iter().map(String::into_bytes).collect();
            let (reply, via) = admin
                .append(partition, records, Duration::from_secs(10))
                .await?;
            println!(
                "partition {partition}: offsets {:?} (raft index {}, via {via})",
                reply.offsets, reply.raft_index
            );
        }
        Cmd::Read {
            partition,
            from,
            limit,
        } => {
            let reply = admin.read(partition, from, limit).await?;
            for e in &reply.events {
                println!(
                    "{}\t{}\t{}\t{}",
                    e.offset,
                    e.raft_index,
                    e.timestamp_ms,
                    String::from_utf8_lossy(&e.payload)
                );
            }
            eprintln!(
                "{} events; last offset on this replica: {}",
                reply.events.len(),
                reply.last_offset
            );
        }
        Cmd::Digest { partition } => {
            let partitions = match partition {
                Some(p) => vec![p],
                None => (0..admin.status().await?.partition_count).collect(),
            };
            for p in partitions {
                let d = admin.digest(p).await?;
                println!(
                    "partition {p}\tlast_offset {}\tapplied_index {}\tsha256 {}",
                    d.last_offset,
                    d.applied_index,
                    hex::encode(&d.sha256)
                );
            }
        }
        Cmd::Compact { partition } => {
            let reply = admin.compact(partition).await?;
            println!(
                "partition {partition}: snapshot at raft index {}",
                reply.snapshot_index
            );
        }
        Cmd::Projections => {
            for p in admin.projections().await?.projections {
                let rebuild = if p.rebuilding {
                    format!("\trebuilding at {}", p.rebuild_checkpoint)
                } else {
                    String::new()
                };
                println!(
                    "partition {}	{}	checkpoint {}	generation {}	sha256 {}{rebuild}",
                    p.partition, p.name, p.checkpoint, p.generation, p.digest
                );
            }
        }
        Cmd::Rebuild {
            name,
            partition,
            wait,
        } => {
            let partitions = match partition {
                Some(p) => vec![p],
                None => (0..admin.status().await?.partition_count).collect(),
            };
            for &p in &partitions {
                admin.rebuild_projection(p, &name).await?;
            }
            println!("rebuilding {name} of partitions {partitions:?}");
            if wait {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let all = admin.projections().await?.projections;
                    let pending: Vec<_> = all
                        .iter()
                        .filter(|s| {
                            s.name == name && s.rebuilding && partitions.contains(&s.partition)
                        })
                        .collect();
                    if pending.is_empty() {
                        println!("done: the rebuilt copies are live");
                        break;
                    }
                    for s in pending {
                        eprintln!(
                            "partition {}: replayed {} of {}",
                            s.partition, s.rebuild_checkpoint, s.checkpoint
                        );
                    }
                }
            }
        }
        Cmd::Verify => {
            let reply = admin.verify().await?;
            println!(
                "{} records checked, {} corrupt",
                reply.records_checked,
                reply.errors.len()
            );
            for e in &reply.errors {
                println!("  {e}");
            }
            if !reply.errors.is_empty() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
