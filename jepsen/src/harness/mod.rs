//! `chat-jepsen run`: real chatd processes, real faults, a recorded history, the checkers.
//!
//! The run happens inside a private network namespace the harness makes itself (`unshare -n`
//! as root, `unshare -rn` otherwise), so partitions never touch the host. Every run ends with
//! heal → quiesce → a final drain of every chat from every node → check → report.

pub mod devices;
pub mod disks;
pub mod nemesis;
pub mod nodes;
pub mod proxy;
pub mod readers;
pub mod timeline;
pub mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checkers::check_all;
use nemesis::Fault;
use nodes::Nodes;
use workload::Workload;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition")]
    pub nemesis: Vec<Fault>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Concurrent client slots.
    #[arg(long, default_value_t = 8)]
    pub clients: u64,
    #[arg(long, default_value_t = 4)]
    pub chats: usize,
    /// Reader accounts following every chat on device streams (reconnecting and resuming at
    /// random).
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Devices of each reader account, each on its own streams (they must all end up seeing
    /// the same messages).
    #[arg(long, default_value_t = 2)]
    pub reader_devices: u64,
    /// Which API the writers send through: `device` (chat.v1.Chat/Connect, several sends in
    /// flight per device, as apps send) or `sequencer` (the internal Submit, one at a time,
    /// with history polls).
    #[arg(long, value_enum, default_value = "device")]
    pub api: Api,
    /// The chatd binary [default: next to this executable].
    #[arg(long)]
    pub chatd: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "target/jepsen")]
    pub out: PathBuf,
    /// Put the nodes' data dirs on faultfs mounts (chat-faultfs, beside chatd) even when no
    /// fault needs them (`power`, `disk` and `bitflip` always do).
    #[arg(long)]
    pub faultfs: bool,
    /// Keep the nodes' data directories after a valid run (a failed run always keeps them).
    #[arg(long)]
    pub keep_data: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    Device,
    Sequencer,
}

/// Writer accounts; the client slots are their devices.
const WRITER_USERS: usize = 4;

const NETNS_ENV: &str = "CHAT_JEPSEN_NETNS";

/// Re-run this command inside a fresh network namespace unless already in one. Returns the exit
/// code of the inner run, or None when this process is the inner run.
pub fn enter_netns() -> anyhow::Result<Option<i32>> {
    if std::env::var_os(NETNS_ENV).is_some() {
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        anyhow::ensure!(
            status.success(),
            "cannot bring up loopback in the run's network namespace"
        );
        return Ok(None);
    }
    let uid = std::process::Command::new("id").arg("-u").output()?;
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let mut unshare = std::process::Command::new("unshare");
    unshare.arg(if root { "-n" } else { "-rn" });
    unshare
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(NETNS_ENV, "1");
    let status = unshare
        .status()
        .context("run unshare (util-linux) for a private network namespace")?;
    Ok(Some(status.code().unwrap_or(2)))
}

/// One run; true when no anomaly was found.
pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let chatd = match &args.chatd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("chatd"),
    };
    anyhow::ensure!(
        chatd.exists(),
        "no chatd at {} (build it: cargo build -p chatd, or pass --chatd)",
        chatd.display()
    );
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = args.out.join(format!("{stamp}-seed{seed}"));
    std::fs::create_dir_all(&dir)?;
    println!(
        "run {} (seed {seed}): {} nodes, {} s, nemesis {:?}, through the {:?} API",
        dir.display(),
        args.nodes,
        args.time,
        args.nemesis,
        args.api
    );

    let n = args.nodes;
    let faultfs = chatd.with_file_name("chat-faultfs");
    let mut nodes = Nodes::new(chatd, &dir, n, 4)?;
    nodes.fake_clocks = args.nemesis.contains(&Fault::Clock);
    anyhow::ensure!(
        !nodes.fake_clocks || std::path::Path::new(nodes::LIBFAKETIME).exists(),
        "the clock nemesis needs libfaketime at {} (apt-get install faketime)",
        nodes::LIBFAKETIME
    );
    if args.faultfs || args.nemesis.iter().any(|f| f.needs_disks()) {
        nodes.disks = Some(disks::Disks::mount(&faultfs, &dir, n)?);
    }
    let nodes = Arc::new(Mutex::new(nodes));
    // Every node-to-node link goes through the harness's proxy (delay/loss faults).
    let links = Arc::new(proxy::Links::default());
    for id in 1..=n {
        proxy::start(id, links.clone()).await?;
    }
    for id in 1..=n {
        nodes.lock().unwrap().start(id)?;
    }
    let mut w = Workload::new(n)?;
    let mut readers = Vec::new();
    for r in 0..args.readers {
        let handle = format!("jepsen-reader-{r}");
        readers.extend(devices::register(&handle, args.reader_devices, n).await?);
    }
    let reader_users: Vec<u64> = readers.iter().map(|d| d.user).collect();
    let writers = match args.api {
        Api::Sequencer => {
            w.setup(n, WRITER_USERS, args.chats, &reader_users).await?;
            Vec::new()
        }
        Api::Device => {
            let per_user = args.clients.div_ceil(WRITER_USERS as u64);
            let writers =
                devices::setup(&mut w, n, WRITER_USERS, per_user, args.chats, args.readers).await?;
            w.drainer = readers.first().map(|d| d.token.clone());
            writers
        }
    };
    let w = Arc::new(w);

    let deadline = Instant::now() + Duration::from_secs(args.time);
    let clients: Vec<_> = match args.api {
        Api::Sequencer => (0..args.clients)
            .map(|slot| {
                tokio::spawn(workload::run_client(
                    w.clone(),
                    slot,
                    args.clients,
                    n,
                    seed,
                    deadline,
                ))
            })
            .collect(),
        Api::Device => (0..args.clients)
            .map(|slot| {
                let device = writers[slot as usize % writers.len()].clone();
                let writer = devices::Writer::new(w.clone(), slot, device, n, seed);
                tokio::spawn(writer.run(deadline))
            })
            .collect(),
    };

    let reader_tasks: Vec<_> = readers
        .iter()
        .enumerate()
        .map(|(r, device)| {
            tokio::spawn(readers::run(
                w.clone(),
                r,
                device.clone(),
                n,
                seed,
                deadline,
            ))
        })
        .collect();

    // The nemesis: a fault, a pause, until the deadline.
    let mut timeline = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed);
    while !args.nemesis.is_empty() && Instant::now() + Duration::from_secs(6) < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
        let fault = args.nemesis[rng.gen_range(0..args.nemesis.len())];
        let from = w.start.elapsed().as_secs_f64();
        let what = nemesis::strike(fault, &nodes, &links, n, &mut rng).await?;
        let to = w.start.elapsed().as_secs_f64();
        timeline.push(timeline::Interval { from, to, what });
    }
    for c in clients {
        c.await?;
    }
    let mut reader_ends = Vec::new();
    for r in reader_tasks {
        reader_ends.push(r.await?);
    }

    // Heal, quiesce, drain, check.
    nemesis::heal_network()?;
    links.clear();
    nodes.lock().unwrap().heal()?;
    let repairs = nemesis::repair_flipped(&nodes, n, Duration::from_secs(180)).await;
    for r in &repairs {
        println!("repair: {r}");
    }
    workload::drain(&w, n, Duration::from_secs(60)).await?;
    // Every reader device then gets what it is owed, so each must end with every message.
    let last = drained_last_seqs(&w.history.lock().unwrap());
    for (r, end) in reader_ends.into_iter().enumerate() {
        readers::catch_up(&w, r, &readers[r], end, &last, n, Duration::from_secs(30)).await;
    }
    // With membership faults, every change begun must also finish once the faults stop.
    let settled = if args.nemesis.contains(&Fault::Membership) {
        Some(nemesis::settle(&nodes, n, Duration::from_secs(180)).await)
    } else {
        None
    };
    drop(nodes);

    let history = w.history.lock().unwrap().clone();
    history.write_jsonl(std::fs::File::create(dir.join("history.jsonl"))?)?;
    let faults: Vec<String> = timeline
        .iter()
        .map(|i| format!("{:>8.3}s {:>8.3}s {}", i.from, i.to, i.what))
        .chain(repairs.iter().map(|r| format!("   after faults:   {r}")))
        .collect();
    std::fs::write(dir.join("nemesis.txt"), faults.join("\n") + "\n")?;
    timeline::write_svg(&dir.join("timeline.svg"), &history, &timeline)?;
    let report = check_all(&history);
    let summary = summarize(&history);
    let membership = match &settled {
        None => String::new(),
        Some(Ok(took)) => format!(
            "membership   ok     every change finished ({:.1} s after the faults)\n",
            took.as_secs_f64()
        ),
        Some(Err(moving)) => format!("membership   FAILED a change never finished: {moving}\n"),
    };
    let text = format!(
        "{summary}\nnemesis:\n{}\n\n{report}\n{membership}",
        faults.join("\n")
    );
    std::fs::File::create(dir.join("report.txt"))?.write_all(text.as_bytes())?;
    println!("{text}");
    let valid = report.valid() && !matches!(settled, Some(Err(_)));
    if valid && !args.keep_data {
        // Each node's RocksDB is hundreds of MB; a clean run's logs, history and report say
        // all there is to say, and CI machines have little disk.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let data = entry.path();
            if data.is_dir() && is_node_slot(&entry.file_name().to_string_lossy()) {
                if let Err(e) = std::fs::remove_dir_all(&data) {
                    eprintln!("cannot remove {}: {e}", data.display());
                }
            }
        }
    }
    Ok(valid)
}

/// Each chat's last seq in the final drains.
fn drained_last_seqs(h: &crate::history::History) -> std::collections::BTreeMap<u64, u64> {
    let mut last = std::collections::BTreeMap::new();
    for op in h
        .ops
        .iter()
        .filter(|o| o.kind == crate::history::OpType::Ok && o.f == crate::history::F::Drain)
    {
        let top = op.value.messages.iter().map(|m| m.seq).max().unwrap_or(0);
        let l = last.entry(op.value.chat).or_insert(0);
        *l = top.max(*l);
    }
    last
}

/// A node's data directory is named `n<slot>` (see nodes.rs), and the disk behind its faultfs
/// mount `n<slot>.disk`.
fn is_node_slot(name: &str) -> bool {
    let name = name.strip_suffix(".disk").unwrap_or(name);
    name.strip_prefix('n')
        .is_some_and(|slot| !slot.is_empty() && slot.bytes().all(|b| b.is_ascii_digit()))
}

fn summarize(h: &crate::history::History) -> String {
    use crate::history::{OpType, F};
    let count = |f: F, k: OpType| h.ops.iter().filter(|o| o.f == f && o.kind == k).count();
    let mut s = format!("{} operations\n", h.ops.len());
    for (name, f) in [
        ("send", F::Send),
        ("poll", F::Poll),
        ("drain", F::Drain),
        ("receipt", F::Receipt),
    ] {
        s += &format!(
            "{name:<8} ok {:>6}  fail {:>5}  info {:>5}\n",
            count(f.clone(), OpType::Ok),
            count(f.clone(), OpType::Fail),
            count(f, OpType::Info)
        );
    }
    s
}
