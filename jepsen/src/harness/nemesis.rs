//! Faults: SIGKILL and restart on the same data dir, SIGSTOP/SIGCONT pauses, and network
//! partitions as nftables drop rules between node addresses (inside the run's private network
//! namespace, so nothing touches the host).

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::Rng;

use super::nodes::{ip, Nodes};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Kill,
    Pause,
    Partition,
}

fn nft(script: &str) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .arg(script)
        .output()
        .context("run nft (apt-get install nftables)")?;
    anyhow::ensure!(
        out.status.success(),
        "nft {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Drop every packet between `isolated` and the other nodes, both ways.
pub fn isolate(isolated: u64, n: u64) -> anyhow::Result<()> {
    nft("add table inet jepsen")?;
    nft("add chain inet jepsen out { type filter hook output priority 0; }")?;
    for other in (1..=n).filter(|&o| o != isolated) {
        nft(&format!(
            "add rule inet jepsen out ip saddr {} ip daddr {} drop",
            ip(isolated),
            ip(other)
        ))?;
        nft(&format!(
            "add rule inet jepsen out ip saddr {} ip daddr {} drop",
            ip(other),
            ip(isolated)
        ))?;
    }
    Ok(())
}

pub fn heal_network() -> anyhow::Result<()> {
    // Deleting a table that does not exist is an error; flushing the whole ruleset of our private
    // namespace is not.
    nft("flush ruleset")
}

/// One fault, applied and then undone; returns a description for the report.
pub async fn strike(
    fault: Fault,
    nodes: &std::sync::Mutex<Nodes>,
    n: u64,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let target = rng.gen_range(1..=n);
    match fault {
        Fault::Kill => {
            nodes.lock().unwrap().kill(target)?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..4000))).await;
            nodes.lock().unwrap().start(target)?;
            Ok(format!("kill -9 node {target}, restart"))
        }
        Fault::Pause => {
            nodes.lock().unwrap().pause(target)?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..4000))).await;
            nodes.lock().unwrap().resume(target)?;
            Ok(format!("pause node {target}"))
        }
        Fault::Partition => {
            isolate(target, n)?;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..5000))).await;
            heal_network()?;
            Ok(format!("isolate node {target}"))
        }
    }
}
