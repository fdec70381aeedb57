//! `chat-bench`: the load generator behind `docs/benchmarks.md`.
//!
//! `chat-bench log` measures durable appends to the partitioned log: it starts 1 or 3 real nodes
//! (in this process, each with its own RocksDB in a temp dir, talking Raft over loopback tonic),
//! drives the partition leaders with closed-loop writers at several batch sizes and writer counts,
//! runs an open-loop fixed-rate probe, and measures this machine's fsync floor (small write +
//! fdatasync) in the same run so the figures can be read against it. `latency` and `delivery`
//! run real chatd processes: commit latency through the admin API, and device-to-device
//! delivery latency through the gateway; `idle` what idle devices, one connection each, cost a
//! node in memory and CPU; `peer` runs chatd beside NATS JetStream in one run; `soak` runs chatd
//! processes at a steady rate for an hour and reports per minute what drifts; `group` one group of a
//! thousand members, all online; `failover` how long partitions are unavailable after a leading
//! node is killed or cut off.

mod cluster;
mod delivery;
mod failover;
mod fsync;
mod group;
mod idle;
mod jsonl;
mod latency;
mod log_bench;
mod peer;
mod placement;
mod procstat;
mod rebuild;
mod send_bench;
mod soak;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chat-bench", about = "Benchmarks of the chat backend")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable appends/s and commit latency of the bare log, next to the fsync floor.
    Log(log_bench::Args),
    /// Open-loop commit latency against real chatd processes (as deployed).
    Latency(latency::Args),
    /// End-to-end delivery latency device -> device.
    Delivery(delivery::Args),
    /// Memory and CPU per idle device, each on its own connection, pinging.
    Idle(idle::Args),
    /// chatd beside NATS JetStream R3 in one run: same load generator, same disk, same cores.
    Peer(peer::Args),
    /// Projection rebuild speed (events replayed per second).
    Rebuild(rebuild::Args),
    /// Acknowledged chat sends/s and ack latency through the sequencer.
    Send(send_bench::Args),
    /// Real chatd processes at a fixed rate for many minutes: latency, memory, disk and WAL per
    /// minute, disk per message, restart time.
    Soak(soak::Args),
    /// One group of 1,024 members, all online: time until the last member has a message,
    /// ack latency under the deliveries, receipt and tick frames, server CPU per delivery.
    Group(group::Args),
    /// Unavailability per partition after `kill -9` of a leading node (and after cutting one
    /// off the network), over repeated trials against real chatd processes.
    Failover(failover::Args),
    /// Work per message on N = 3, 6, 9 nodes with R replicas (it should fall as R/N), and the
    /// time to move a partition of a stated size onto a new node.
    Placement(placement::Args),
    /// Only the fsync floor: a loop of small write + fdatasync.
    Fsync {
        /// Directory to test (its filesystem is what is measured).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=off".into()),
        )
        .init();
    match Cli::parse().command {
        Cmd::Log(args) => log_bench::run(args).await,
        Cmd::Send(args) => send_bench::run(args).await,
        Cmd::Latency(args) => latency::run(args).await,
        Cmd::Delivery(args) => delivery::run(args).await,
        Cmd::Idle(args) => idle::run(args).await,
        Cmd::Rebuild(args) => rebuild::run(args).await,
        Cmd::Peer(args) => peer::run(args).await,
        Cmd::Soak(args) => soak::run(args).await,
        Cmd::Group(args) => group::run(args).await,
        Cmd::Failover(args) => failover::run(args).await,
        Cmd::Placement(args) => placement::run(args).await,
        Cmd::Fsync { dir, iterations } => {
            let floor = fsync::measure(&dir, iterations)?;
            println!("{floor}");
            Ok(())
        }
    }
}
