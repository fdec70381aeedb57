//! An in-process cluster for benchmarks: `n` chatd nodes, each with its own RocksDB in a temp
//! dir, serving Raft (and the rest of chatd) over loopback tonic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_log::{LogNode, PartitionId, RaftTuning};
use chatd::config::{ChatConfig, ServerConfig};
use chatd::server::{self, Running};

pub struct Cluster {
    pub nodes: Vec<Running>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Start `n` nodes with `partitions` partitions in a temp dir under `parent` (the system
    /// temp dir when None).
    pub async fn start(
        n: u64,
        partitions: u32,
        parent: Option<&std::path::Path>,
        chat: ChatConfig,
    ) -> anyhow::Result<Cluster> {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p)?,
            None => tempfile::tempdir()?,
        };
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let members: BTreeMap<u64, String> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Ok((i as u64 + 1, l.local_addr()?.to_string())))
            .collect::<anyhow::Result<_>>()?;
        drop(listeners);
        let mut nodes = Vec::new();
        for (&id, addr) in &members {
            let config = ServerConfig {
                listen: addr.parse()?,
                public_listen: None,
                tls: Default::default(),
                insecure: false,
                metrics_listen: None,
                http_listen: None,
                log: chat_log::LogNodeConfig {
                    node_id: id,
                    data_dir: dir.path().join(format!("n{id}")),
                    partitions,
                    partitions_chosen: true,
                    replication: 3,
                    join: false,
                    members: members.clone(),
                    cluster_secret: "bench-cluster-secret".into(),
                    bind_ip: None,
                    dialer: Default::default(),
                    raft: RaftTuning::default(),
                    disk: Default::default(),
                    engine: Default::default(),
                },
                chat: chat.clone(),
                gateway: Default::default(),
                // Benchmarks measure the write path, not notification logging.
                notifications: chatd::config::NotificationsSection {
                    sink: "none".into(),
                    ..Default::default()
                },
                retention: Default::default(),
                media: Default::default(),
            };
            nodes.push(
                server::start(config)
                    .await
                    .with_context(|| format!("start node {id}"))?,
            );
        }
        let cluster = Cluster { nodes, _dir: dir };
        for p in 0..partitions {
            cluster.nodes[0]
                .node
                .wait_for_leader(PartitionId(p), Duration::from_secs(30))
                .await?;
        }
        Ok(cluster)
    }

    /// The node that leads `p` (as node 1 sees it).
    pub fn leader_of(&self, p: PartitionId) -> Arc<LogNode> {
        let status = self.nodes[0].node.status();
        let leader = status.partitions[p.0 as usize].leader_id.unwrap_or(1);
        self.nodes[leader as usize - 1].node.clone()
    }

    /// WAL syncs and sync waiters so far, summed over the nodes.
    pub fn wal_syncs(&self) -> (u64, u64) {
        self.nodes.iter().fold((0, 0), |(s, w), r| {
            let stats = r.node.sync_stats();
            (s + stats.syncs, w + stats.waiters)
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        for n in self.nodes {
            n.stop().await?;
        }
        Ok(())
    }
}
