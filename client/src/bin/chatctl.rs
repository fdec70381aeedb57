//! `chatctl`: the admin CLI for SREs. Talks to one chatd node's admin API.

use std::path::PathBuf;
use std::time::Duration;

use chat_client::admin::{format_map, format_status, resolve_secret, Admin};
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
    /// Role, term, leader and progress of every partition on the node, and the partition map.
    Status,
    /// The partition map: nodes, each partition's replicas and leader, moves under way.
    Map,
    /// Add, drain, remove or replace a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Move one replica of a partition to another node (learner, catch-up, joint change).
    Move {
        #[arg(long, short)]
        partition: u32,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// Wait until the move is done, printing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Hand a partition's leadership to one of its voters.
    TransferLeader {
        #[arg(long, short)]
        partition: u32,
        #[arg(long)]
        to: u64,
    },
    /// Turn automatic balancing of replicas and leaders on or off.
    Balancing {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
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
        /// One partition; every partition the node holds when absent.
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
    /// Rebuild a projection of a partition (every partition the node holds when absent) by
    /// replay, while serving.
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

#[derive(Subcommand)]
enum NodeCmd {
    /// Add a new node (an id never used before); start it with --join. Replicas move onto it.
    Add { id: u64, addr: String },
    /// Move a node's leaderships away (before maintenance); its replicas stay.
    Drain { id: u64 },
    /// Make a drained node take leaderships and replicas again.
    Activate { id: u64 },
    /// Move a node's replicas away, then remove it from the cluster.
    Remove {
        id: u64,
        /// Wait until it is removed, printing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Replace a node (dead, or its data lost) by a new one: the new node is added and the
    /// old one's replicas are rebuilt elsewhere.
    Replace {
        old: u64,
        #[arg(long)]
        by: u64,
        /// The new node's address.
        addr: String,
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
        Cmd::Status => {
            print!("{}", format_status(&admin.status().await?));
            match admin.map().await {
                Ok(map) => print!("{}", format_map(&map)),
                Err(e) => println!("partition map: {e:#}"),
            }
        }
        Cmd::Map => print!("{}", format_map(&admin.map().await?)),
        Cmd::Node(cmd) => return node(&mut admin, cmd).await,
        Cmd::Move {
            partition,
            from,
            to,
            wait,
        } => {
            let epoch = admin.move_replica(partition, from, to).await?;
            println!("partition {partition}: moving its replica from node {from} to node {to} (map epoch {epoch})");
            if wait {
                wait_until(&mut admin, |m| {
                    let r = m.replicas.get(&partition)?;
                    let done =
                        r.learners.is_empty() && r.leaving.is_empty() && r.voters.contains(&to);
                    done.then(|| format!("done: partition {partition} is on nodes {:?}", r.voters))
                })
                .await?;
            }
        }
        Cmd::TransferLeader { partition, to } => {
            let leader = admin.transfer_leader(partition, to).await?;
            println!("partition {partition}: node {leader} leads it");
        }
        Cmd::Balancing { state } => {
            let epoch = admin.set_balancing(state == "on").await?;
            println!("balancing {state} (map epoch {epoch})");
        }
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
            let partitions = one_or_held(&mut admin, partition).await?;
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
            let partitions = one_or_held(&mut admin, partition).await?;
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

async fn node(admin: &mut Admin, cmd: NodeCmd) -> anyhow::Result<std::process::ExitCode> {
    let removed = |id: u64| {
        move |m: &chat_proto::log::PartitionMap| {
            let state = m.nodes.get(&id).map(|n| n.state);
            (state == Some(chat_proto::log::NodeState::NodeRemoved as i32))
                .then(|| format!("done: node {id} holds nothing and is removed"))
        }
    };
    match cmd {
        NodeCmd::Add { id, addr } => {
            let epoch = admin.add_node(id, &addr).await?;
            println!("node {id} at {addr} added (map epoch {epoch}); start it with --join");
        }
        NodeCmd::Drain { id } => {
            let epoch = admin.set_node_state(id, "draining").await?;
            println!("node {id} draining: its leaderships move away (map epoch {epoch})");
        }
        NodeCmd::Activate { id } => {
            let epoch = admin.set_node_state(id, "active").await?;
            println!("node {id} active (map epoch {epoch})");
        }
        NodeCmd::Remove { id, wait } => {
            let epoch = admin.set_node_state(id, "leaving").await?;
            println!(
                "node {id} leaving: its replicas move away, then it is removed (map epoch {epoch})"
            );
            if wait {
                wait_until(admin, removed(id)).await?;
            }
        }
        NodeCmd::Replace {
            old,
            by,
            addr,
            wait,
        } => {
            let epoch = admin.replace_node(old, by, &addr).await?;
            println!(
                "node {by} at {addr} replaces node {old} (map epoch {epoch}); start it with --join"
            );
            if wait {
                wait_until(admin, removed(old)).await?;
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Poll the map every second until `done` says so, printing the moves under way meanwhile.
async fn wait_until(
    admin: &mut Admin,
    done: impl Fn(&chat_proto::log::PartitionMap) -> Option<String>,
) -> anyhow::Result<()> {
    loop {
        let map = admin.map().await?;
        if let Some(message) = done(&map) {
            println!("{message}");
            return Ok(());
        }
        let moving: Vec<String> = map
            .replicas
            .iter()
            .filter(|(_, r)| !r.learners.is_empty() || !r.leaving.is_empty())
            .map(|(p, r)| format!("partition {p}: {:?} -> {:?}", r.leaving, r.learners))
            .collect();
        eprintln!(
            "map epoch {}: {}",
            map.epoch,
            if moving.is_empty() {
                "waiting for the next move".to_string()
            } else {
                moving.join("; ")
            }
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `partition` if given, else every partition the node holds.
async fn one_or_held(admin: &mut Admin, partition: Option<u32>) -> anyhow::Result<Vec<u32>> {
    Ok(match partition {
        Some(p) => vec![p],
        None => admin
            .status()
            .await?
            .partitions
            .iter()
            .map(|s| s.partition)
            .collect(),
    })
}
