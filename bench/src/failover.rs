//! `chat-bench failover`: how long a partition takes sends again after its leader's node is
//! killed (`kill -9`) or cut off from the other nodes (nftables), over repeated trials against 3
//! real chatd processes.
//!
//! The nodes listen on 127.0.0.2, .3 and .4 and open their own connections from those addresses
//! (`--bind-ip`), so a node can be cut off by address. One direct chat per partition; in each
//! trial a device per chat sends every `--send-every-ms` through a node that is not the victim,
//! each send asking the server to keep trying for `--send-timeout-ms` (`SendFrame.timeout_ms`).
//! The victim is the node leading the most partitions. A partition's unavailability is the time
//! from the fault until the first acknowledgement of a send *issued after* the fault (so a send
//! committed just before the fault does not count as recovered), to within one send interval.
//! Between trials the victim comes back (restart, or the rules removed) and every replica is let
//! catch up, so each trial starts from a healthy cluster.
//!
//! Cutting nodes off needs root and `nft`; `--partition-trials 0` skips those trials.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chat_client::admin::Admin;
use chat_client::{ChatClient, FrameSender};
use chat_model::ids::partition_of;
use chat_proto::admin::StatusReply;
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::delivery::connect_retrying;
use crate::jsonl;
use crate::latency::{start_processes_on, Procs, SECRET};
use crate::peer::CHATD_CONFIG;

#[derive(clap::Args)]
pub struct Args {
    /// The chatd binary (build it with `cargo build --release -p chatd`).
    #[arg(long, default_value = "target/release/chatd")]
    chatd: PathBuf,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Trials that `kill -9` the node leading the most partitions.
    #[arg(long, default_value_t = 20)]
    kill_trials: u32,
    /// Trials that cut that node off the others with nftables (root only; 0 to skip).
    #[arg(long, default_value_t = 10)]
    partition_trials: u32,
    /// One send per chat this often (the resolution of the measurement).
    #[arg(long, default_value_t = 20)]
    send_every_ms: u64,
    /// How long the server may keep trying each send (`SendFrame.timeout_ms`).
    #[arg(long, default_value_t = 5000)]
    send_timeout_ms: u32,
    /// How long sends go on after the fault.
    #[arg(long, default_value_t = 3)]
    outage_secs: u64,
    /// More chatd configuration (TOML) for every node, e.g. "[raft]\nheartbeat_ms = 50".
    #[arg(long, default_value = "")]
    config: String,
    /// Temp dirs go under this directory.
    #[arg(long, default_value = "target")]
    dir: PathBuf,
    /// Append one JSON line per trial and one for the summary here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The nftables table the partition trials add their rules to (removed after each trial).
const NFT_TABLE: &str = "chat_bench_failover";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    CutOff,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::CutOff => "cut off",
        }
    }
}

/// One send of a trial: when it was issued and when (and how) it was answered.
#[derive(Clone, Copy)]
struct SendRecord {
    chat: usize,
    issued: Instant,
    answer: Option<(Instant, bool)>,
}

type Sends = Arc<Mutex<HashMap<String, SendRecord>>>;

/// What one trial measured.
struct Trial {
    fault: Fault,
    victim: u64,
    /// Per partition the victim led: ms from the fault until a send issued after it was acked
    /// (None: none was, within the run).
    led: BTreeMap<u32, Option<f64>>,
    /// The longest ack latency of any send on the other partitions (ms).
    others_max_ms: f64,
    /// Elections during the trial (term increases, from a surviving node's view), on the
    /// partitions the victim led and on the others: 1 per led partition is a clean failover.
    elections_led: u64,
    elections_others: u64,
    errors: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.chatd.exists(),
        "no chatd at {} (cargo build --release -p chatd)",
        args.chatd.display()
    );
    ensure!(
        args.send_every_ms > 0 && args.send_timeout_ms > 0 && args.outage_secs > 0,
        "--send-every-ms, --send-timeout-ms and --outage-secs must be positive"
    );
    if args.partition_trials > 0 {
        check_nft()?;
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::Builder::new()
        .prefix("failover-")
        .tempdir_in(&args.dir)?;
    // Not 127.0.0.1: that is where this process's own connections come from, and cutting a
    // node off must not cut the client off the others.
    let hosts: Vec<Ipv4Addr> = (2..=4).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let config = format!("{CHATD_CONFIG}{}\n", args.config.replace("\\n", "\n"));
    let (addrs, mut procs) = start_processes_on(
        &args.chatd,
        dir.path(),
        &hosts,
        args.partitions,
        &config,
        |i| vec!["--bind-ip".into(), hosts[i as usize - 1].to_string()],
    )?;
    println!(
        "failover: 3 nodes on {:?}, {} partitions; {} kill trials, {} cut-off trials; a send per chat every {} ms",
        hosts, args.partitions, args.kill_trials, args.partition_trials, args.send_every_ms
    );
    let chats = chat_per_partition(&addrs[0], args.partitions).await?;

    let mut trials = Vec::new();
    let plan = std::iter::repeat_n(Fault::Kill, args.kill_trials as usize).chain(
        std::iter::repeat_n(Fault::CutOff, args.partition_trials as usize),
    );
    for (n, fault) in plan.enumerate() {
        let status = wait_healthy(&addrs, args.partitions).await?;
        let trial = run_trial(&args, n, fault, &status, &addrs, &hosts, &chats, &mut procs).await;
        if fault == Fault::CutOff {
            // Whatever happened, the network comes back before anything else.
            heal()?;
        }
        let trial = trial?;
        print_trial(n, &trial);
        if let Some(path) = &args.json {
            jsonl::append_quietly(path, [trial_json(n, &trial)])?;
        }
        trials.push(trial);
    }
    let summary = summarize(&trials);
    if let Some(path) = &args.json {
        jsonl::append(path, [summary])?;
    }
    let unanswered: usize = trials
        .iter()
        .map(|t| t.led.values().filter(|v| v.is_none()).count())
        .sum();
    ensure!(
        unanswered == 0,
        "{unanswered} partitions took no send within a trial"
    );
    Ok(())
}

/// One direct chat per partition (sender handle, its token, chat id), found by creating chats
/// until every partition has one.
async fn chat_per_partition(addr: &str, partitions: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let mut registrar = connect_retrying(addr).await?;
    let mut found: BTreeMap<u32, (String, u64)> = BTreeMap::new();
    for j in 0.. {
        if found.len() == partitions as usize {
            break;
        }
        ensure!(j < 64 * partitions, "no chat found for some partitions");
        let sender = registrar.register(&format!("f-s{j}"), 1).await?;
        registrar.register(&format!("f-r{j}"), 1).await?;
        let chat = registrar
            .clone()
            .with_token(&sender.token)?
            .create_direct(&format!("f-r{j}"))
            .await?
            .chat_id;
        found
            .entry(partition_of(chat, partitions).0)
            .or_insert((sender.token, chat));
    }
    Ok(found.into_values().collect())
}

/// Until every node answers, every partition has a leader they agree on, and every replica has
/// applied what its leader holds; the status of the first node then.
async fn wait_healthy(addrs: &[String], partitions: u32) -> anyhow::Result<StatusReply> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut statuses = Vec::new();
        for addr in addrs {
            if let Ok(mut admin) = Admin::connect(addr, SECRET).await {
                if let Ok(s) = admin.status().await {
                    statuses.push(s);
                }
            }
        }
        if statuses.len() == addrs.len() && healthy(&statuses, partitions) {
            return Ok(statuses.swap_remove(0));
        }
        ensure!(
            Instant::now() < deadline,
            "the cluster did not become healthy within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn healthy(statuses: &[StatusReply], partitions: u32) -> bool {
    let leaders = statuses[0].leaders();
    if leaders.len() != partitions as usize || statuses.iter().any(|s| s.leaders() != leaders) {
        return false;
    }
    (0..partitions).all(|p| {
        let parts: Vec<_> = statuses
            .iter()
            .filter_map(|s| s.partitions.iter().find(|x| x.partition == p))
            .collect();
        let last = parts.iter().map(|x| x.last_log_index).max().unwrap_or(0);
        parts.len() == statuses.len() && parts.iter().all(|x| x.applied_index >= last)
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_trial(
    args: &Args,
    n: usize,
    fault: Fault,
    status: &StatusReply,
    addrs: &[String],
    hosts: &[Ipv4Addr],
    chats: &[(String, u64)],
    procs: &mut Procs,
) -> anyhow::Result<Trial> {
    let leaders = status.leaders();
    let mut led_by: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (&p, &leader) in &leaders {
        led_by.entry(leader).or_default().push(p);
    }
    let (&victim, victim_parts) = led_by
        .iter()
        .max_by_key(|(id, parts)| (parts.len(), std::cmp::Reverse(**id)))
        .context("no leaders")?;
    let entry = (1..=3u64).find(|&i| i != victim).expect("3 nodes");
    let sends: Sends = Arc::default();
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for (token, chat) in chats {
        let mut client = ChatClient::connect(&addrs[entry as usize - 1]).await?;
        let mut stream = client.open_stream(token, &Default::default()).await?;
        senders.push((*chat, stream.sender()));
        let sends = sends.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let (id, ok) = match frame {
                    server_frame::Kind::SendAck(a) => (a.client_msg_id, true),
                    server_frame::Kind::SendError(e) => (e.client_msg_id, false),
                    _ => continue,
                };
                if let Some(r) = sends.lock().unwrap().get_mut(&id) {
                    r.answer = Some((Instant::now(), ok));
                }
            }
        }));
    }
    let every = Duration::from_millis(args.send_every_ms);
    let warm = Duration::from_secs(1);
    let fault_at = Instant::now() + warm;
    let stop_at = fault_at + Duration::from_secs(args.outage_secs);
    let mut struck: Option<Instant> = None;
    let mut k = 0u64;
    let mut ticks = tokio::time::interval(every);
    while Instant::now() < stop_at {
        ticks.tick().await;
        if struck.is_none() && Instant::now() >= fault_at {
            struck = Some(Instant::now());
            strike(fault, victim, hosts, procs)?;
        }
        for (c, (chat, tx)) in senders.iter().enumerate() {
            let id = format!("t{n}-c{c}-{k}");
            sends.lock().unwrap().insert(
                id.clone(),
                SendRecord {
                    chat: c,
                    issued: Instant::now(),
                    answer: None,
                },
            );
            send(tx, *chat, id, args.send_timeout_ms).await?;
        }
        k += 1;
    }
    let fault_at = struck.context("the fault was never struck")?;
    // Every send is answered within its timeout (plus a margin for the answer to travel).
    let wait_until = Instant::now() + Duration::from_millis(u64::from(args.send_timeout_ms) + 2000);
    while Instant::now() < wait_until && sends.lock().unwrap().values().any(|r| r.answer.is_none())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(senders);
    for r in readers {
        r.abort();
    }
    let terms_after = match Admin::connect(&addrs[entry as usize - 1], SECRET).await {
        Ok(mut admin) => admin.status().await.ok(),
        Err(_) => None,
    };
    let (mut elections_led, mut elections_others) = (0, 0);
    for after in terms_after.iter().flat_map(|s| &s.partitions) {
        let before = status
            .partitions
            .iter()
            .find(|p| p.partition == after.partition)
            .map_or(after.term, |p| p.term);
        let n = after.term.saturating_sub(before);
        if victim_parts.contains(&after.partition) {
            elections_led += n;
        } else {
            elections_others += n;
        }
    }
    if fault == Fault::Kill {
        procs.start_again(victim)?;
    }
    let sends = sends.lock().unwrap();
    let chat_partition: Vec<u32> = chats
        .iter()
        .map(|(_, chat)| partition_of(*chat, leaders.len() as u32).0)
        .collect();
    let mut led: BTreeMap<u32, Option<f64>> = victim_parts.iter().map(|&p| (p, None)).collect();
    let mut others_max_ms = 0f64;
    let mut errors = 0;
    for r in sends.values() {
        let p = chat_partition[r.chat];
        match r.answer {
            Some((_, false)) | None => errors += 1,
            Some((at, true)) => {
                if let Some(slot) = led.get_mut(&p) {
                    if r.issued >= fault_at {
                        let ms = at.duration_since(fault_at).as_secs_f64() * 1000.0;
                        *slot = Some(slot.map_or(ms, |s: f64| s.min(ms)));
                    }
                } else {
                    let ms = at.duration_since(r.issued).as_secs_f64() * 1000.0;
                    others_max_ms = others_max_ms.max(ms);
                }
            }
        }
    }
    Ok(Trial {
        fault,
        victim,
        led,
        others_max_ms,
        elections_led,
        elections_others,
        errors,
    })
}

async fn send(tx: &FrameSender, chat: u64, id: String, timeout_ms: u32) -> anyhow::Result<()> {
    tx.send_frame(client_frame::Kind::Send(pb::SendFrame {
        client_msg_id: id,
        chat_id: chat,
        payload: b"failover probe".to_vec(),
        media: Vec::new(),
        timeout_ms,
    }))
    .await?;
    Ok(())
}

fn strike(fault: Fault, victim: u64, hosts: &[Ipv4Addr], procs: &mut Procs) -> anyhow::Result<()> {
    match fault {
        Fault::Kill => procs.kill(victim),
        Fault::CutOff => {
            let me = hosts[victim as usize - 1];
            nft(&format!("add table inet {NFT_TABLE}"))?;
            nft(&format!(
                "add chain inet {NFT_TABLE} out {{ type filter hook output priority 0; }}"
            ))?;
            for (i, other) in hosts.iter().enumerate() {
                if i as u64 + 1 == victim {
                    continue;
                }
                for (from, to) in [(me, *other), (*other, me)] {
                    nft(&format!(
                        "add rule inet {NFT_TABLE} out ip saddr {from} ip daddr {to} drop"
                    ))?;
                }
            }
            Ok(())
        }
    }
}

fn nft(script: &str) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .arg(script)
        .output()
        .context("run nft (apt-get install nftables)")?;
    ensure!(
        out.status.success(),
        "nft {script:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Remove the trial's rules (nothing to do if there are none).
fn heal() -> anyhow::Result<()> {
    let listed = Command::new("nft")
        .args(["list", "table", "inet", NFT_TABLE])
        .output();
    if matches!(listed, Ok(out) if out.status.success()) {
        nft(&format!("delete table inet {NFT_TABLE}"))?;
    }
    Ok(())
}

fn check_nft() -> anyhow::Result<()> {
    match Command::new("nft").args(["list", "tables"]).output() {
        Ok(out) if out.status.success() => heal(),
        Ok(out) => bail!(
            "cut-off trials need nftables rules, and `nft list tables` failed ({}): run as root, or pass --partition-trials 0",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(_) => bail!(
            "cut-off trials need nft (apt-get install nftables) and root, or pass --partition-trials 0"
        ),
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "none".into(), |ms| format!("{ms:.0}"))
}

fn print_trial(n: usize, t: &Trial) {
    let led: Vec<String> = t
        .led
        .iter()
        .map(|(p, ms)| format!("p{p} {}", fmt_ms(*ms)))
        .collect();
    println!(
        "trial {n:>2} ({}): node {} led {} partitions; back after (ms): {}; elections {} (others {}); other partitions' slowest ack {:.0} ms; {} sends failed",
        t.fault.name(),
        t.victim,
        t.led.len(),
        led.join(", "),
        t.elections_led,
        t.elections_others,
        t.others_max_ms,
        t.errors,
    );
}

fn trial_json(n: usize, t: &Trial) -> serde_json::Value {
    json!({
        "bench": "failover/trial",
        "trial": n,
        "fault": t.fault.name(),
        "victim": t.victim,
        "unavailable_ms": t.led.iter().map(|(p, ms)| (p.to_string(), *ms)).collect::<BTreeMap<_, _>>(),
        "others_max_ack_ms": t.others_max_ms,
        "elections_led": t.elections_led,
        "elections_others": t.elections_others,
        "errors": t.errors,
    })
}

/// Per fault: p50/p99/max of every led partition's unavailability, and of each trial's worst.
fn summarize(trials: &[Trial]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    println!("\n| fault | trials | partitions measured | unavailable p50 / p99 / max (ms) | worst per trial p50 / p99 (ms) | failed sends |");
    println!("|---|---|---|---|---|---|");
    for fault in [Fault::Kill, Fault::CutOff] {
        let of: Vec<&Trial> = trials.iter().filter(|t| t.fault == fault).collect();
        if of.is_empty() {
            continue;
        }
        // Bounded: `saturating_record` clamps to the current range instead of growing it.
        let h = || Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("valid bounds");
        let (mut all, mut worst) = (h(), h());
        for t in &of {
            let values: Vec<f64> = t.led.values().flatten().copied().collect();
            for v in &values {
                all.saturating_record(*v as u64);
            }
            if let Some(w) = values.iter().copied().reduce(f64::max) {
                worst.saturating_record(w as u64);
            }
        }
        let errors: u64 = of.iter().map(|t| t.errors).sum();
        println!(
            "| {} | {} | {} | {} / {} / {} | {} / {} | {} |",
            fault.name(),
            of.len(),
            all.len(),
            all.value_at_quantile(0.5),
            all.value_at_quantile(0.99),
            all.max(),
            worst.value_at_quantile(0.5),
            worst.value_at_quantile(0.99),
            errors,
        );
        out.insert(
            fault.name().into(),
            json!({
                "trials": of.len(),
                "partitions_measured": all.len(),
                "unavailable_p50_ms": all.value_at_quantile(0.5),
                "unavailable_p99_ms": all.value_at_quantile(0.99),
                "unavailable_max_ms": all.max(),
                "worst_per_trial_p50_ms": worst.value_at_quantile(0.5),
                "worst_per_trial_p99_ms": worst.value_at_quantile(0.99),
                "failed_sends": errors,
            }),
        );
    }
    json!({ "bench": "failover/summary", "by_fault": out })
}
