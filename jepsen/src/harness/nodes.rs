//! The chatd processes of a run: node i listens on 127.0.0.i:7400 and binds its outgoing Raft
//! connections to 127.0.0.i, so network faults can tell every link apart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

pub const PORT: u16 = 7400;
pub const SECRET: &str = "jepsen";

pub fn ip(node: u64) -> String {
    format!("127.0.0.{node}")
}

pub fn addr(node: u64) -> String {
    format!("{}:{PORT}", ip(node))
}

pub struct Node {
    pub id: u64,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
}

pub struct Nodes {
    chatd: PathBuf,
    pub nodes: Vec<Node>,
}

impl Nodes {
    /// Write every node's config into `dir`.
    pub fn new(chatd: PathBuf, dir: &Path, n: u64, partitions: u32) -> anyhow::Result<Nodes> {
        let peers: String = (1..=n)
            .map(|i| format!("{i} = \"{}\"\n", addr(i)))
            .collect();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let config = dir.join(format!("n{id}.toml"));
            let data = dir.join(format!("n{id}"));
            std::fs::write(
                &config,
                format!(
                    "node_id = {id}\nlisten = \"{}\"\nbind_ip = \"{}\"\ndata_dir = \"{}\"\npartitions = {partitions}\ncluster_secret = \"{SECRET}\"\n\
                     [raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nsnapshot_after_logs = 200\nlogs_kept_after_snapshot = 50\n\
                     [chat]\nsends_per_second = 100000\nsend_burst = 100000\n[peers]\n{peers}",
                    addr(id),
                    ip(id),
                    data.display()
                ),
            )?;
            nodes.push(Node {
                id,
                config,
                log: dir.join(format!("n{id}.log")),
                child: None,
                paused: false,
            });
        }
        Ok(Nodes { chatd, nodes })
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let chatd = self.chatd.clone();
        let node = self.node(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(&chatd)
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
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

    /// Every node running and not paused.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for id in 1..=self.nodes.len() as u64 {
            if !self.is_running(id) {
                self.start(id)?;
            } else if self.nodes[id as usize - 1].paused {
                self.resume(id)?;
            }
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
    }
}
