//! The chatd processes of a run: the node in slot i is known to its peers as 127.0.0.i:7400 (the
//! harness's link proxy, see `proxy.rs`), really listens on 127.0.0.i:7401, and binds its
//! outgoing Raft connections to 127.0.0.i, so network faults can tell every link apart. Clients
//! talk to 127.0.0.i:7401 directly.
//!
//! With the power and disk nemeses each slot's data dir is a `chat-faultfs` mount (`disks.rs`)
//! over `n<slot>.disk/`, which keeps what chatd wrote but did not fsync in its own memory.
//!
//! Faults address slots. A slot's node id is its number until the membership nemesis replaces
//! the node with a wiped one, which joins under a new id (an id is never reused); ids that come
//! from the cluster (leaders, replicas) are turned into slots with [`Nodes::slot_of`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

pub const PORT: u16 = 7400;
pub const SECRET: &str = "jepsen-cluster-secret";

pub fn ip(node: u64) -> String {
    format!("127.0.0.{node}")
}

pub fn addr(node: u64) -> String {
    format!("{}:{PORT}", ip(node))
}

/// Clients connect from this address, so node-to-node faults never cut clients off.
pub const CLIENT_IP: [u8; 4] = [127, 0, 0, 100];

/// A channel to node `node` from the clients' address (straight to the node, not through the
/// link proxy).
pub fn channel(node: u64) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!(
        "http://{}:{}",
        ip(node),
        super::proxy::NODE_PORT
    ))?
    .connect_timeout(std::time::Duration::from_millis(500))
    .local_address(Some(CLIENT_IP.into()))
    .connect_lazy())
}

/// An admin client of node `node` (from the clients' address).
pub fn admin(node: u64) -> anyhow::Result<chat_proto::AdminClient> {
    Ok(
        chat_proto::admin::admin_client::AdminClient::with_interceptor(
            channel(node)?,
            chat_proto::AttachSecret::new(SECRET)?,
        ),
    )
}

/// libfaketime, which shifts a process's realtime clock (CLOCK_REALTIME only: monotonic time,
/// which Raft timers use, stays true).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub struct Node {
    /// The chatd node id in this slot now.
    pub id: u64,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// The node's clock offset for libfaketime ("+0", "+25s", "-3s"), re-read every second.
    pub clock: PathBuf,
    child: Option<Child>,
    pub paused: bool,
}

impl Node {
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

pub struct Nodes {
    chatd: PathBuf,
    partitions: u32,
    /// By slot (slot i at index i - 1).
    pub nodes: Vec<Node>,
    /// Start processes under libfaketime (for the clock nemesis).
    pub fake_clocks: bool,
    /// The faultfs mounts under the data dirs, by slot, when the run has them.
    pub disks: Option<super::disks::Disks>,
    /// Slots whose disk had a bit flipped: repaired at heal by replacing the node.
    pub flipped: std::collections::BTreeSet<u64>,
}

impl Nodes {
    /// Write every node's config into `dir` (slot i runs node id i).
    pub fn new(chatd: PathBuf, dir: &Path, n: u64, partitions: u32) -> anyhow::Result<Nodes> {
        let peers: String = (1..=n)
            .map(|i| format!("{i} = \"{}\"\n", addr(i)))
            .collect();
        let mut nodes = Nodes {
            chatd,
            partitions,
            nodes: Vec::new(),
            fake_clocks: false,
            disks: None,
            flipped: Default::default(),
        };
        for slot in 1..=n {
            let clock = dir.join(format!("n{slot}.clock"));
            std::fs::write(&clock, "+0\n")?;
            nodes.nodes.push(Node {
                id: slot,
                config: dir.join(format!("n{slot}.toml")),
                data: dir.join(format!("n{slot}")),
                log: dir.join(format!("n{slot}.log")),
                clock,
                child: None,
                paused: false,
            });
            nodes.write_config(slot, false, &peers)?;
        }
        Ok(nodes)
    }

    /// The config of slot `slot`'s node as it is now (its id; joining or forming).
    fn write_config(&self, slot: u64, join: bool, peers: &str) -> anyhow::Result<()> {
        let node = &self.nodes[slot as usize - 1];
        std::fs::write(
            &node.config,
            format!(
                "node_id = {}\njoin = {join}\nlisten = \"{}:{}\"\nbind_ip = \"{}\"\ndata_dir = \"{}\"\npartitions = {}\ncluster_secret = \"{SECRET}\"\n\
                 [raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nsnapshot_after_logs = 200\nlogs_kept_after_snapshot = 50\n\
                 [chat]\nsends_per_second = 100000\nsend_burst = 100000\n[peers]\n{peers}",
                node.id,
                ip(slot),
                super::proxy::NODE_PORT,
                ip(slot),
                node.data.display(),
                self.partitions,
            ),
        )
        .with_context(|| format!("write {}", node.config.display()))
    }

    /// The slot whose node has id `id` now (None for a node replaced since).
    pub fn slot_of(&self, id: u64) -> Option<u64> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .map(|i| i as u64 + 1)
    }

    /// Replace slot `slot`'s node by a new one with an empty data dir and the id `new_id`, as
    /// when a disk dies: SIGKILL, the data dir removed, and the new node started joining the
    /// cluster (it holds nothing until the map gives it replicas).
    pub fn replace_wiped(&mut self, slot: u64, new_id: u64) -> anyhow::Result<()> {
        self.kill(slot)?;
        // What is in the dir, not the dir: it may be a mount point.
        let data = self.nodes[slot as usize - 1].data.clone();
        if data.exists() {
            for entry in std::fs::read_dir(&data)? {
                let path = entry?.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.with_context(|| format!("wipe {}", path.display()))?;
            }
        }
        self.node(slot).id = new_id;
        // A joining node lists itself alone; the cluster tells it the rest.
        self.write_config(slot, true, &format!("{new_id} = \"{}\"\n", addr(slot)))?;
        self.start(slot)
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let chatd = self.chatd.clone();
        let fake_clocks = self.fake_clocks;
        let node = self.node(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = Command::new(&chatd);
        command
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn");
        if fake_clocks {
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", &node.clock)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("start {}", chatd.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].child.is_some()
    }

    /// The faultfs mounts, for the faults that need them.
    pub fn disks(&self) -> anyhow::Result<&super::disks::Disks> {
        self.disks
            .as_ref()
            .context("this run's data dirs are not on faultfs mounts")
    }

    /// Whether slot `id`'s process ended by itself (a node that stopped on a failed disk, say);
    /// its exit is then reaped, so [`Nodes::heal`] starts it again.
    pub fn exited(&mut self, id: u64) -> bool {
        let node = self.node(id);
        let ended = node
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if ended {
            node.child = None;
        }
        ended
    }

    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        if let Some(mut child) = node.child.take() {
            child.kill()?; // SIGKILL
            child.wait()?;
        }
        node.paused = false;
        Ok(())
    }

    fn signal(&mut self, id: u64, signal: &str) -> anyhow::Result<()> {
        let node = self.node(id);
        if let Some(child) = &node.child {
            let status = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()?;
            anyhow::ensure!(status.success(), "kill {signal} node {id} failed");
        }
        Ok(())
    }

    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "-STOP")?;
        self.node(id).paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "-CONT")?;
        self.node(id).paused = false;
        Ok(())
    }

    /// Shift node `id`'s realtime clock by `offset` ("+0", "+25s", "-3s"); takes effect within
    /// a second.
    pub fn set_clock(&self, id: u64, offset: &str) -> anyhow::Result<()> {
        std::fs::write(&self.nodes[id as usize - 1].clock, format!("{offset}\n"))?;
        Ok(())
    }

    /// Every node running and not paused.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(disks) = &self.disks {
            disks.heal()?;
        }
        for id in 1..=self.nodes.len() as u64 {
            if !self.is_running(id) || self.exited(id) {
                self.start(id)?;
            } else if self.nodes[id as usize - 1].paused {
                self.resume(id)?;
            }
            self.set_clock(id, "+0")?;
        }
        Ok(())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(child.id().to_string())
                    .status();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The mounts go once nothing uses them.
        self.disks.take();
    }
}
