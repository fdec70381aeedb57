//! Commit latency against real `chatd` processes, as deployed: `n` processes on loopback, an
//! open-loop load of single-record appends through the admin API to each partition's leader
//! (so a client's gRPC hop is included), next to the fsync floor measured in the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_proto::admin::{AppendRequest, StatusRequest};
use chat_proto::{connect_admin, AdminClient};
use hdrhistogram::Histogram;

use crate::fsync;

/// The cluster secret of the chatd processes the benchmarks start.
pub const SECRET: &str = "bench-cluster-secret";

#[derive(clap::Args)]
pub struct Args {
    /// The chatd binary (build it with `cargo build --release -p chatd`).
    #[arg(long, default_value = "target/release/chatd")]
    chatd: PathBuf,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Offered appends per second.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    rate: Vec<u64>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The chatd processes of a run, killed when dropped. Each keeps the command it was started with,
/// so it can be killed and started again on its data dir.
pub struct Procs {
    children: Vec<Child>,
    commands: Vec<Command>,
}

impl Procs {
    /// The process id of node `i` (1-based).
    pub fn pid(&self, i: u64) -> u32 {
        self.children[i as usize - 1].id()
    }

    /// `kill -9` node `i` (1-based) and reap it.
    pub fn kill(&mut self, i: u64) -> anyhow::Result<()> {
        let child = &mut self.children[i as usize - 1];
        child.kill().with_context(|| format!("kill node {i}"))?;
        child.wait()?;
        Ok(())
    }

    /// Start node `i` (1-based) again, on its data dir and with its first arguments; its output
    /// goes on into the same log file.
    pub fn start_again(&mut self, i: u64) -> anyhow::Result<()> {
        let child = self.commands[i as usize - 1]
            .spawn()
            .with_context(|| format!("start node {i} again"))?;
        let mut old = std::mem::replace(&mut self.children[i as usize - 1], child);
        // Normally already killed and reaped; if not, it is now.
        let _ = old.kill();
        let _ = old.wait();
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
    let floor = fsync::measure(dir.path(), 2000)?;
    println!("{floor}");

    let (addrs, _procs) =
        start_processes(&args.chatd, dir.path(), args.nodes, args.partitions, "")?;

    // One admin client per node; each partition's writes go to its leader.
    let mut clients = Vec::new();
    for a in &addrs {
        let deadline = Instant::now() + Duration::from_secs(20);
        clients.push(loop {
            match connect_admin(a, SECRET).await {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => anyhow::bail!("chatd at {a} did not come up: {e}"),
            }
        });
    }
    let leaders = wait_for_leaders(&mut clients[0], args.partitions).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("\n| nodes | offered/s | achieved/s | commit p50 (us) | commit p99 (us) | p99 / fsync-floor p99 |");
    println!("|---|---|---|---|---|---|");
    for &rate in &args.rate {
        let (achieved, hist) =
            open_loop(&clients, &leaders, args.partitions, rate, args.seconds).await?;
        let p99 = hist.value_at_quantile(0.99);
        println!(
            "| {} | {rate} | {achieved:.0} | {} | {p99} | {:.1}x |",
            args.nodes,
            hist.value_at_quantile(0.5),
            p99 as f64 / floor.p99_us.max(1) as f64
        );
    }
    Ok(())
}

async fn wait_for_leaders(
    client: &mut AdminClient,
    partitions: u32,
) -> anyhow::Result<BTreeMap<u32, u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.status(StatusRequest {}).await?.into_inner();
        let leaders = status.leaders();
        if leaders.len() == partitions as usize {
            return Ok(leaders);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "partitions without a leader: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open_loop(
    clients: &[AdminClient],
    leaders: &BTreeMap<u32, u64>,
    partitions: u32,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let total = rate * seconds;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let p = (i % u64::from(partitions)) as u32;
        let mut client = clients[leaders[&p] as usize - 1].clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let request = AppendRequest {
                partition: p,
                records: vec![vec![0x5a; 100]],
            };
            client.append(request).await?;
            anyhow::Ok(sent.elapsed().as_micros() as u64)
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.record(t.await??)?;
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), hist))
}

/// Start `nodes` chatd processes on free loopback ports with data under `dir`, each with the
/// TOML `extra` as its config file. Killed when the returned guard drops.
pub fn start_processes(
    chatd: &std::path::Path,
    dir: &std::path::Path,
    nodes: u64,
    partitions: u32,
    extra: &str,
) -> anyhow::Result<(Vec<String>, Procs)> {
    start_processes_with(chatd, dir, nodes, partitions, extra, |_| Vec::new())
}

/// Node `i`'s data dir under a run's `dir`.
pub fn node_dir(dir: &std::path::Path, i: u64) -> std::path::PathBuf {
    dir.join(format!("n{i}"))
}

/// [`start_processes`], with `node_args(i)` added to node `i`'s command line.
pub fn start_processes_with(
    chatd: &std::path::Path,
    dir: &std::path::Path,
    nodes: u64,
    partitions: u32,
    extra: &str,
    node_args: impl Fn(u64) -> Vec<String>,
) -> anyhow::Result<(Vec<String>, Procs)> {
    let hosts = vec![std::net::Ipv4Addr::LOCALHOST; nodes as usize];
    start_processes_on(chatd, dir, &hosts, partitions, extra, node_args)
}

/// [`start_processes_with`], node `i` listening on `hosts[i - 1]` (a free port on it).
pub fn start_processes_on(
    chatd: &std::path::Path,
    dir: &std::path::Path,
    hosts: &[std::net::Ipv4Addr],
    partitions: u32,
    extra: &str,
    node_args: impl Fn(u64) -> Vec<String>,
) -> anyhow::Result<(Vec<String>, Procs)> {
    let nodes = hosts.len() as u64;
    let config = dir.join("extra.toml");
    std::fs::write(&config, extra)?;
    let addrs: Vec<String> = hosts
        .iter()
        .map(|host| {
            let port = std::net::TcpListener::bind((*host, 0))?
                .local_addr()?
                .port();
            Ok(format!("{host}:{port}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let peers: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let mut procs = Procs {
        children: Vec::new(),
        commands: Vec::new(),
    };
    for i in 1..=nodes {
        let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
        let mut command = Command::new(chatd);
        command
            .args([
                "--node-id",
                &i.to_string(),
                "--peers",
                &peers.join(","),
                "--partitions",
                &partitions.to_string(),
            ])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(node_dir(dir, i))
            .args(node_args(i))
            .env("CHATD_CLUSTER_SECRET", SECRET)
            .env("RUST_LOG", "warn,openraft=error")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        procs.children.push(command.spawn().context("start chatd")?);
        procs.commands.push(command);
    }
    Ok((addrs, procs))
}
