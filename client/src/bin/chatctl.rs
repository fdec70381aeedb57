//! `chatctl`: the admin CLI for SREs. Talks to one chatd node's admin API, or with
//! `--endpoints` to several (`status` and `digest` put their answers side by side).
//!
//! Every command prints a table for people or, with `-o json`, one JSON document for scripts;
//! progress of long waits goes to stderr, so stdout stays parseable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_client::admin::{format_map, format_status, map_json, resolve_secret, status_json, Admin};
use chat_client::backup::Progress;
use chat_client::cluster_view::{
    cluster_status_json, format_cluster_status, verdict, NodeAnswer, ReplicaDigest, Verdict,
};
use chat_tls::Dialer;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

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
    /// Tables for people, or one JSON document per command for scripts.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Give up on each call after this long (`500ms`, `10s`, `2m`) [default: no limit].
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// For `health`, `status`, `digest` and `retention run`: ask each of these nodes (host:port, comma separated) instead
    /// of --addr, and put their answers side by side.
    #[arg(long, global = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The cluster CA's certificate: dial the node through TLS and check its certificate
    /// against it (a node with TLS on takes admin calls only this way).
    #[arg(long, global = true, env = "CHATCTL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The admin client certificate to show (`chatctl certs client`), with --tls-key.
    #[arg(long, global = true, env = "CHATCTL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The admin client certificate's key.
    #[arg(long, global = true, env = "CHATCTL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

impl Cli {
    /// Plaintext, or TLS when a CA is given.
    fn dialer(&self) -> anyhow::Result<Dialer> {
        let Some(ca) = &self.tls_ca else {
            if self.tls_cert.is_some() {
                anyhow::bail!(
                    "--tls-cert needs --tls-ca (the CA that signed the node's certificate)"
                );
            }
            return Ok(Dialer::plain());
        };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        Ok(Dialer::fixed(chat_tls::client_config(Some(ca), identity)?))
    }
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

/// Print `value` as JSON when asked for, else the table `table()` makes.
fn emit(output: Output, value: serde_json::Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{value:#}"),
        Output::Table => print!("{}", table()),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Whether the node can serve (its gRPC health: SERVING once it knows the partition map and
    /// a live leader of every group it holds). Exit status 1 unless every node asked is
    /// SERVING. Needs no secret.
    Health,
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
    /// A partition's events from an offset, decoded (chat events by type and field; message
    /// contents left out), up to the partition's end as it was when the replay started.
    Replay {
        #[arg(long, short)]
        partition: u32,
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Stop after this many events [default: to the end].
        #[arg(long)]
        limit: Option<u64>,
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
    /// Rebuild this node's replica of a partition from its healthy replicas (after `status`
    /// shows it damaged, or `verify` finds a record of it corrupt). Ask the node whose replica
    /// it is (--addr); the others keep serving meanwhile.
    Repair {
        #[arg(long, short)]
        partition: u32,
    },
    /// Retention: `run` sweeps now (the partitions the node leads; every partition on a single
    /// node, --endpoints for each node of a cluster).
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Take a consistent online backup of the node into a new directory: a RocksDB checkpoint
    /// streamed file by file, and MANIFEST.json with every file's SHA-256.
    Backup {
        /// Where to write it (must not exist, or be empty).
        out: PathBuf,
    },
    /// Build a data dir from a backup (offline; no node is asked). Every file is checked
    /// against the manifest first. The restored node runs only as a single-node cluster: a
    /// member of a larger one is replaced by a new node instead.
    Restore {
        /// The backup directory.
        backup: PathBuf,
        /// The data dir to build (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Make the cluster's CA and certificates (offline; no node is asked).
    #[command(subcommand)]
    Certs(CertsCmd),
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
enum CertsCmd {
    /// A new CA for a cluster: `<dir>/ca.pem` (give it to every node and admin) and
    /// `<dir>/ca.key` (keep it off the nodes: it admits anyone to the internal network).
    Ca {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The cluster's name, in the CA's subject.
        #[arg(long, default_value = "chat")]
        cluster: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// A node's certificate and key, `<dir>/<name>.pem` and `<dir>/<name>.key`, signed by the
    /// CA in `<dir>`: its server certificate on both addresses and its client certificate
    /// towards other nodes.
    Node {
        name: String,
        /// A name or IP address the node is dialled by (repeat for each: its internal and public
        /// addresses' hosts).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// A client certificate for an operator or tool calling the internal address (admin).
    Client {
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum RetentionCmd {
    /// Sweep now: expire what is past the window (or delivered everywhere, if configured).
    Run,
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
    let cli = Cli::parse();
    let (tls, certificate) = (cli.tls_ca.is_some(), cli.tls_cert.is_some());
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!("chatctl: {text}");
            if let Some(hint) = tls_hint(&text, tls, certificate) {
                eprintln!("chatctl: hint: {hint}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// What to try when an error looks like the two ends disagreeing about TLS: HTTP/2 spoken in
/// plaintext to a TLS port fails in framing or a closed connection, and a TLS port that wants a
/// client certificate says so in its alert (or, with TLS 1.3, just closes the connection).
fn tls_hint(error: &str, tls: bool, certificate: bool) -> Option<&'static str> {
    let refused = ["CertificateRequired", "UnknownCA", "BadCertificate"]
        .iter()
        .any(|alert| error.contains(alert));
    let closed = [
        "frame with invalid size",
        "connection closed",
        "broken pipe",
    ]
    .iter()
    .any(|what| error.contains(what));
    match (tls, certificate) {
        (true, false) if refused || closed => Some(
            "the node's internal address takes only clients with a certificate of its cluster \
             CA: give --tls-cert and --tls-key (`chatctl certs client`)",
        ),
        (true, true) if refused => {
            Some("the node does not accept this certificate: is it signed by the cluster's CA?")
        }
        (false, _) if closed => Some(
            "the node may have TLS on: give --tls-ca (and --tls-cert/--tls-key for admin calls)",
        ),
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let dialer = cli.dialer()?;
    if let Cmd::Health = cli.command {
        let addrs = if cli.endpoints.is_empty() {
            vec![cli.addr.clone()]
        } else {
            cli.endpoints.clone()
        };
        return health(&dialer, &addrs, cli.timeout, cli.output).await;
    }
    if let Cmd::Restore { backup, to } = &cli.command {
        return restore(backup, to, cli.output);
    }
    if let Cmd::Certs(cmd) = cli.command {
        return certs(cmd, cli.output);
    }
    let secret = resolve_secret(cli.secret, &cli.data_dir)?;
    let output = cli.output;
    if !cli.endpoints.is_empty() {
        return across(
            &dialer,
            &cli.endpoints,
            &secret,
            cli.timeout,
            output,
            cli.command,
        )
        .await;
    }
    let mut admin = Admin::connect_via(&dialer, &cli.addr, &secret, cli.timeout).await?;
    match cli.command {
        Cmd::Health | Cmd::Restore { .. } | Cmd::Certs(_) => {
            unreachable!("answered above, before the secret is read")
        }
        Cmd::Replay {
            partition,
            from,
            limit,
        } => replay(&mut admin, partition, from, limit, output).await?,
        Cmd::Retention(RetentionCmd::Run) => {
            let working = spinner("sweeping the partitions this node leads");
            let reply = admin.run_retention().await;
            working.finish_and_clear();
            let reply = reply?;
            let value = json!({
                "node": admin.addr(),
                "partitions": reply.partitions,
                "chats_expired": reply.chats_expired,
                "messages_expired": reply.messages_expired,
                "errors": reply.errors,
            });
            emit(output, value, || {
                let mut out = format!(
                    "{}: swept {} partitions, {} messages expired in {} chats\n",
                    admin.addr(),
                    reply.partitions.len(),
                    reply.messages_expired,
                    reply.chats_expired
                );
                for e in &reply.errors {
                    out.push_str(&format!("  failed: {e}\n"));
                }
                out
            });
            if !reply.errors.is_empty() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Cmd::Backup { out } => {
            let chunks = admin.backup().await?;
            let bar = bytes_bar("backed up");
            let manifest = chat_client::backup::receive(chunks, &out, |p| match p {
                Progress::Total(total) => bar.set_length(total),
                Progress::Bytes(n) => bar.inc(n),
            })
            .await;
            bar.finish_and_clear();
            let manifest = manifest?;
            emit(output, serde_json::to_value(&manifest)?, || {
                format!(
                    "backup of node {} ({} partitions) taken at {}: {} files, {} bytes, in {}\n",
                    manifest.node_id,
                    manifest.partitions,
                    manifest.taken_at,
                    manifest.files.len(),
                    manifest.total_bytes(),
                    out.display()
                )
            });
        }
        Cmd::Status => {
            let status = admin.status().await?;
            let map = admin.map().await;
            let value = json!({
                "status": status_json(&status),
                "map": map.as_ref().ok().map(map_json),
                "map_error": map.as_ref().err().map(|e| format!("{e:#}")),
            });
            emit(output, value, || {
                let map = match &map {
                    Ok(map) => format_map(map),
                    Err(e) => format!("partition map: {e:#}\n"),
                };
                format!("{}{map}", format_status(&status))
            });
        }
        Cmd::Map => {
            let map = admin.map().await?;
            emit(output, map_json(&map), || format_map(&map));
        }
        Cmd::Node(cmd) => return node(&mut admin, cmd, output).await,
        Cmd::Move {
            partition,
            from,
            to,
            wait,
        } => {
            let epoch = admin.move_replica(partition, from, to).await?;
            let value = json!({"partition": partition, "from": from, "to": to, "epoch": epoch});
            emit(output, value, || {
                format!("partition {partition}: moving its replica from node {from} to node {to} (map epoch {epoch})\n")
            });
            if wait {
                wait_until(&mut admin, output, |m| {
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
            emit(
                output,
                json!({"partition": partition, "leader": leader}),
                || format!("partition {partition}: node {leader} leads it\n"),
            );
        }
        Cmd::Balancing { state } => {
            let epoch = admin.set_balancing(state == "on").await?;
            emit(
                output,
                json!({"balancing": state == "on", "epoch": epoch}),
                || format!("balancing {state} (map epoch {epoch})\n"),
            );
        }
        Cmd::Append { partition, records } => {
            let records = records.into_iter().map(String::into_bytes).collect();
            let (reply, via) = admin
                .append(partition, records, Duration::from_secs(10))
                .await?;
            let value = json!({
                "partition": partition,
                "offsets": reply.offsets,
                "raft_index": reply.raft_index,
                "via": via,
            });
            emit(output, value, || {
                format!(
                    "partition {partition}: offsets {:?} (raft index {}, via {via})\n",
                    reply.offsets, reply.raft_index
                )
            });
        }
        Cmd::Read {
            partition,
            from,
            limit,
        } => {
            let reply = admin.read(partition, from, limit).await?;
            let events: Vec<serde_json::Value> = reply
                .events
                .iter()
                .map(|e| {
                    json!({
                        "offset": e.offset,
                        "raft_index": e.raft_index,
                        "timestamp_ms": e.timestamp_ms,
                        "payload": String::from_utf8_lossy(&e.payload),
                    })
                })
                .collect();
            let value = json!({"events": events, "last_offset": reply.last_offset});
            emit(output, value, || {
                let rows = reply.events.iter().map(|e| {
                    format!(
                        "{}\t{}\t{}\t{}\n",
                        e.offset,
                        e.raft_index,
                        e.timestamp_ms,
                        String::from_utf8_lossy(&e.payload)
                    )
                });
                rows.collect()
            });
            eprintln!(
                "{} events; last offset on this replica: {}",
                reply.events.len(),
                reply.last_offset
            );
        }
        Cmd::Digest { partition } => {
            let partitions = one_or_held(&mut admin, partition).await?;
            let mut digests = Vec::new();
            for p in partitions {
                digests.push((p, admin.digest(p).await?));
            }
            let value: Vec<serde_json::Value> = digests
                .iter()
                .map(|(p, d)| {
                    json!({
                        "partition": p,
                        "last_offset": d.last_offset,
                        "applied_index": d.applied_index,
                        "sha256": hex::encode(&d.sha256),
                    })
                })
                .collect();
            emit(output, value.into(), || {
                let rows = digests.iter().map(|(p, d)| {
                    format!(
                        "partition {p}\tlast_offset {}\tapplied_index {}\tsha256 {}\n",
                        d.last_offset,
                        d.applied_index,
                        hex::encode(&d.sha256)
                    )
                });
                rows.collect()
            });
        }
        Cmd::Compact { partition } => {
            let working = spinner(&format!("building a snapshot of partition {partition}"));
            let reply = admin.compact(partition).await;
            working.finish_and_clear();
            let reply = reply?;
            let index = reply.snapshot_index;
            emit(
                output,
                json!({"partition": partition, "snapshot_index": index}),
                || format!("partition {partition}: snapshot at raft index {index}\n"),
            );
        }
        Cmd::Projections => {
            let all = admin.projections().await?.projections;
            let value: Vec<serde_json::Value> = all
                .iter()
                .map(|p| {
                    json!({
                        "partition": p.partition,
                        "name": p.name,
                        "checkpoint": p.checkpoint,
                        "generation": p.generation,
                        "rebuilding_at": p.rebuilding.then_some(p.rebuild_checkpoint),
                        "sha256": p.digest,
                    })
                })
                .collect();
            emit(output, value.into(), || {
                let rows = all.iter().map(|p| {
                    let rebuild = if p.rebuilding {
                        format!("\trebuilding at {}", p.rebuild_checkpoint)
                    } else {
                        String::new()
                    };
                    format!(
                        "partition {}\t{}\tcheckpoint {}\tgeneration {}\tsha256 {}{rebuild}\n",
                        p.partition, p.name, p.checkpoint, p.generation, p.digest
                    )
                });
                rows.collect()
            });
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
            emit(
                output,
                json!({"rebuilding": name, "partitions": partitions}),
                || format!("rebuilding {name} of partitions {partitions:?}\n"),
            );
            if wait {
                // Events replayed of the events to replay, over every partition rebuilding.
                let bar = progress_bar("events replayed");
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
                        bar.finish_and_clear();
                        if output == Output::Table {
                            println!("done: the rebuilt copies are live");
                        }
                        break;
                    }
                    bar.set_length(pending.iter().map(|s| s.checkpoint).sum());
                    bar.set_position(pending.iter().map(|s| s.rebuild_checkpoint).sum());
                    bar.set_message(format!("{} partition(s) rebuilding", pending.len()));
                }
            }
        }
        Cmd::Repair { partition } => {
            let working = spinner(&format!(
                "rebuilding partition {partition} from its healthy replicas (out of the group, delete, catch up, back in)"
            ));
            let reply = admin.repair_partition(partition).await;
            working.finish_and_clear();
            let reply = reply?;
            let value = json!({"partition": partition, "from_leader": reply.from_leader, "last_offset": reply.last_offset});
            emit(output, value, || {
                format!(
                    "partition {partition} repaired: caught up from node {} to offset {}, a voter again\n",
                    reply.from_leader, reply.last_offset
                )
            });
        }
        Cmd::Verify => {
            let working = spinner("re-reading every stored record and checking its crc32");
            let reply = admin.verify().await;
            working.finish_and_clear();
            let reply = reply?;
            let value = json!({"records_checked": reply.records_checked, "errors": reply.errors});
            emit(output, value, || {
                let mut out = format!(
                    "{} records checked, {} corrupt\n",
                    reply.records_checked,
                    reply.errors.len()
                );
                for e in &reply.errors {
                    out.push_str(&format!("  {e}\n"));
                }
                out
            });
            if !reply.errors.is_empty() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn node(
    admin: &mut Admin,
    cmd: NodeCmd,
    output: Output,
) -> anyhow::Result<std::process::ExitCode> {
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
            emit(
                output,
                json!({"added": id, "addr": addr, "epoch": epoch}),
                || format!("node {id} at {addr} added (map epoch {epoch}); start it with --join\n"),
            );
        }
        NodeCmd::Drain { id } => {
            let epoch = admin.set_node_state(id, "draining").await?;
            emit(
                output,
                json!({"node": id, "state": "draining", "epoch": epoch}),
                || format!("node {id} draining: its leaderships move away (map epoch {epoch})\n"),
            );
        }
        NodeCmd::Activate { id } => {
            let epoch = admin.set_node_state(id, "active").await?;
            emit(
                output,
                json!({"node": id, "state": "active", "epoch": epoch}),
                || format!("node {id} active (map epoch {epoch})\n"),
            );
        }
        NodeCmd::Remove { id, wait } => {
            let epoch = admin.set_node_state(id, "leaving").await?;
            emit(
                output,
                json!({"node": id, "state": "leaving", "epoch": epoch}),
                || {
                    format!("node {id} leaving: its replicas move away, then it is removed (map epoch {epoch})\n")
                },
            );
            if wait {
                wait_until(admin, output, removed(id)).await?;
            }
        }
        NodeCmd::Replace {
            old,
            by,
            addr,
            wait,
        } => {
            let epoch = admin.replace_node(old, by, &addr).await?;
            let value = json!({"replaced": old, "by": by, "addr": addr, "epoch": epoch});
            emit(output, value, || {
                format!("node {by} at {addr} replaces node {old} (map epoch {epoch}); start it with --join\n")
            });
            if wait {
                wait_until(admin, output, removed(old)).await?;
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Poll the map every second until `done` says so, printing the moves under way meanwhile (on
/// stderr; the final word on stdout, for tables).
async fn wait_until(
    admin: &mut Admin,
    output: Output,
    done: impl Fn(&chat_proto::log::PartitionMap) -> Option<String>,
) -> anyhow::Result<()> {
    let working = spinner("waiting");
    loop {
        let map = admin.map().await?;
        if let Some(message) = done(&map) {
            working.finish_and_clear();
            if output == Output::Table {
                println!("{message}");
            }
            return Ok(());
        }
        let moving: Vec<String> = map
            .replicas
            .iter()
            .filter(|(_, r)| !r.learners.is_empty() || !r.leaving.is_empty())
            .map(|(p, r)| format!("partition {p}: {:?} -> {:?}", r.leaving, r.learners))
            .collect();
        working.set_message(format!(
            "map epoch {}: {}",
            map.epoch,
            if moving.is_empty() {
                "waiting for the next move".to_string()
            } else {
                moving.join("; ")
            }
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A spinner on stderr with `message`, ticking while a long call runs (drawn only when stderr
/// is a terminal: scripts and logs get none of it).
fn spinner(message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A progress bar on stderr counting `unit` (drawn only when stderr is a terminal).
fn progress_bar(unit: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{pos}}/{{len}} {unit} ({{percent}}%, {{eta}} left) {{msg}}"
    ))
    .expect("a valid template");
    indicatif::ProgressBar::new(0).with_style(style)
}

/// A progress bar on stderr counting bytes (drawn only when stderr is a terminal).
fn bytes_bar(what: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {{bytes}}/{{total_bytes}} {what} ({{percent}}%, {{eta}} left)"
    ))
    .expect("a valid template");
    indicatif::ProgressBar::new(0).with_style(style)
}

/// `chatctl replay`: read pages of events up to the end as of the first page (or `limit`),
/// then print them decoded.
async fn replay(
    admin: &mut Admin,
    partition: u32,
    from: u64,
    limit: Option<u64>,
    output: Output,
) -> anyhow::Result<()> {
    const PAGE: u32 = 10_000;
    let from = from.max(1);
    let mut events = Vec::new();
    let mut next = from;
    let mut end = None;
    let bar = progress_bar("events read");
    loop {
        let reply = admin.read(partition, next, PAGE).await?;
        let end = *end.get_or_insert(reply.last_offset);
        let wanted = limit.map_or(end, |l| end.min(from.saturating_add(l) - 1));
        bar.set_length(wanted.saturating_sub(from) + 1);
        let page: Vec<_> = reply
            .events
            .into_iter()
            .take_while(|e| e.offset <= wanted)
            .collect();
        let Some(last) = page.last().map(|e| e.offset) else {
            break;
        };
        bar.inc(page.len() as u64);
        events.extend(page);
        if last >= wanted {
            break;
        }
        next = last + 1;
    }
    bar.finish_and_clear();
    let time = |ms: u64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    };
    let decoded: Vec<_> = events
        .iter()
        .map(|e| (e, chat_client::replay::decode(e)))
        .collect();
    let value: Vec<serde_json::Value> = decoded
        .iter()
        .map(|(e, d)| {
            json!({
                "offset": e.offset,
                "raft_index": e.raft_index,
                "time": time(e.timestamp_ms),
                "type": d.what,
                "fields": d.fields,
            })
        })
        .collect();
    emit(output, value.into(), || {
        let mut out = String::from("offset\ttime\traft_index\ttype\tfields\n");
        for (e, d) in &decoded {
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\n",
                e.offset,
                time(e.timestamp_ms),
                e.raft_index,
                d.what,
                chat_client::replay::format_fields(&d.fields)
            ));
        }
        out
    });
    Ok(())
}

/// `chatctl restore`: a data dir built from a backup, offline.
fn restore(backup: &Path, to: &Path, output: Output) -> anyhow::Result<std::process::ExitCode> {
    let bar = bytes_bar("checked, then copied");
    let manifest = chat_client::backup::restore(backup, to, |p| match p {
        Progress::Total(total) => bar.set_length(total),
        Progress::Bytes(n) => bar.inc(n),
    });
    bar.finish_and_clear();
    let manifest = manifest?;
    let value = json!({"data_dir": to, "manifest": manifest});
    emit(output, value, || {
        let mut out = format!(
            "restored node {}'s data as of {} into {} ({} files, {} bytes, every SHA-256 checked)\n\
             start it: chatd --node-id {} --data-dir {}\n",
            manifest.node_id,
            manifest.taken_at,
            to.display(),
            manifest.files.len(),
            manifest.total_bytes(),
            manifest.node_id,
            to.display()
        );
        if manifest.cluster_nodes > 1 {
            out.push_str(&format!(
                "note: the backup is of one node of a {}-node cluster; a restored node starts only \
                 as a single-node cluster (it refuses to rejoin under its old id)\n",
                manifest.cluster_nodes
            ));
        }
        out
    });
    Ok(std::process::ExitCode::SUCCESS)
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

/// `status` or `digest` asked of every node of `endpoints`; other commands are refused.
async fn across(
    dialer: &Dialer,
    endpoints: &[String],
    secret: &str,
    timeout: Option<Duration>,
    output: Output,
    command: Cmd,
) -> anyhow::Result<std::process::ExitCode> {
    let mut answers: Vec<NodeAnswer> = Vec::new();
    let mut admins = Vec::new();
    for addr in endpoints {
        let answer = async {
            let mut admin = Admin::connect_via(dialer, addr, secret, timeout).await?;
            let status = admin.status().await?;
            anyhow::Ok((admin, status))
        }
        .await;
        match answer {
            Ok((admin, status)) => {
                answers.push((addr.clone(), Ok(status)));
                admins.push(Some(admin));
            }
            Err(e) => {
                answers.push((addr.clone(), Err(format!("{e:#}"))));
                admins.push(None);
            }
        }
    }
    let unreachable = answers.iter().any(|(_, a)| a.is_err());
    match command {
        Cmd::Status => {
            emit(output, cluster_status_json(&answers), || {
                format_cluster_status(&answers)
            });
        }
        Cmd::Digest { partition } => {
            // Every replica of each partition among the endpoints, then a verdict per partition.
            let mut replicas: std::collections::BTreeMap<u32, Vec<ReplicaDigest>> =
                Default::default();
            for ((addr, answer), admin) in answers.iter().zip(&mut admins) {
                let (Ok(status), Some(admin)) = (answer, admin) else {
                    continue;
                };
                for p in status.partitions.iter().map(|p| p.partition) {
                    if partition.is_some_and(|only| only != p) {
                        continue;
                    }
                    let digest = admin.digest(p).await?;
                    replicas.entry(p).or_default().push(ReplicaDigest {
                        addr: addr.clone(),
                        node_id: status.node_id,
                        digest,
                    });
                }
            }
            let verdicts: Vec<(u32, Verdict)> =
                replicas.iter().map(|(p, r)| (*p, verdict(r))).collect();
            let value: Vec<serde_json::Value> = replicas
                .iter()
                .zip(&verdicts)
                .map(|((p, r), (_, v))| {
                    let nodes: Vec<serde_json::Value> = r
                        .iter()
                        .map(|r| {
                            json!({
                                "node_id": r.node_id,
                                "addr": r.addr,
                                "last_offset": r.digest.last_offset,
                                "sha256": hex::encode(&r.digest.sha256),
                            })
                        })
                        .collect();
                    json!({"partition": p, "verdict": v.as_str(), "replicas": nodes})
                })
                .collect();
            emit(output, value.into(), || {
                let mut out =
                    String::from("partition  node  last_offset  sha256            verdict\n");
                for ((p, r), (_, v)) in replicas.iter().zip(&verdicts) {
                    for r in r {
                        let sha = hex::encode(&r.digest.sha256);
                        out.push_str(&format!(
                            "{p:<10} {:<5} {:<12} {:<17} {}\n",
                            r.node_id,
                            r.digest.last_offset,
                            &sha[..16.min(sha.len())],
                            v.as_str()
                        ));
                    }
                }
                out
            });
            for (p, v) in &verdicts {
                if let Verdict::Diverged(groups) = v {
                    eprintln!(
                        "partition {p}: replicas DIVERGED: nodes grouped by digest {groups:?}"
                    );
                }
            }
            if verdicts
                .iter()
                .any(|(_, v)| matches!(v, Verdict::Diverged(_)))
            {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Cmd::Retention(RetentionCmd::Run) => {
            // Each node sweeps the partitions it leads: together, every partition once.
            let mut rows = Vec::new();
            let mut failed = false;
            for (admin, (addr, _)) in admins.iter_mut().zip(&answers) {
                let Some(admin) = admin else { continue };
                match admin.run_retention().await {
                    Ok(r) => {
                        failed |= !r.errors.is_empty();
                        rows.push(json!({"node": addr, "partitions": r.partitions, "chats_expired": r.chats_expired, "messages_expired": r.messages_expired, "errors": r.errors}));
                    }
                    Err(e) => {
                        failed = true;
                        rows.push(json!({"node": addr, "error": format!("{e:#}")}));
                    }
                }
            }
            emit(output, rows.clone().into(), || {
                rows.iter()
                    .map(|r| match r.get("error") {
                        Some(e) => format!("{}: failed: {e}\n", r["node"]),
                        None => format!(
                            "{}: swept {} partitions, {} messages expired in {} chats\n",
                            r["node"].as_str().unwrap_or_default(),
                            r["partitions"].as_array().map_or(0, Vec::len),
                            r["messages_expired"],
                            r["chats_expired"]
                        ),
                    })
                    .collect()
            });
            if failed {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        _ => anyhow::bail!(
            "--endpoints is for `health`, `status`, `digest` and `retention run`; give other \
             commands --addr"
        ),
    }
    if unreachable {
        eprintln!("chatctl: some endpoints did not answer (see above)");
        return Ok(std::process::ExitCode::FAILURE);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `chatctl health`: each node's gRPC health, SERVING or why not.
async fn health(
    dialer: &Dialer,
    addrs: &[String],
    timeout: Option<Duration>,
    output: Output,
) -> anyhow::Result<std::process::ExitCode> {
    let mut answers = Vec::new();
    for addr in addrs {
        answers.push((addr.clone(), health_of(dialer, addr, timeout).await));
    }
    let value: Vec<serde_json::Value> = answers
        .iter()
        .map(|(addr, answer)| match answer {
            Ok(status) => json!({"addr": addr, "health": status}),
            Err(e) => json!({"addr": addr, "health": "UNREACHABLE", "error": e}),
        })
        .collect();
    emit(output, value.into(), || {
        let rows = answers.iter().map(|(addr, answer)| match answer {
            Ok(status) => format!("{addr:<22} {status}\n"),
            Err(e) => format!("{addr:<22} unreachable: {e}\n"),
        });
        rows.collect()
    });
    let all_serving = answers
        .iter()
        .all(|(_, answer)| matches!(answer, Ok(s) if *s == "SERVING"));
    Ok(if all_serving {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `chatctl certs ...`: make the CA, a node's or a client's certificate.
fn certs(cmd: CertsCmd, output: Output) -> anyhow::Result<std::process::ExitCode> {
    use chat_tls::ca::{self, Kind};
    let (dir, written, what) = match cmd {
        CertsCmd::Ca { dir, cluster, days } => {
            let written = ca::write(&dir, "ca", &ca::new_ca(&cluster, days)?)?;
            (dir, written, format!("CA of cluster {cluster:?}"))
        }
        CertsCmd::Node {
            name,
            hosts,
            dir,
            days,
        } => {
            let authority = ca::read(&dir, "ca")?;
            let issued = ca::issue(&authority, Kind::Node, &name, &hosts, days)?;
            let what = format!("node certificate {name:?} for {}", hosts.join(", "));
            (dir.clone(), ca::write(&dir, &name, &issued)?, what)
        }
        CertsCmd::Client { name, dir, days } => {
            let authority = ca::read(&dir, "ca")?;
            let issued = ca::issue(&authority, Kind::Client, &name, &[], days)?;
            let what = format!("client certificate {name:?}");
            (dir.clone(), ca::write(&dir, &name, &issued)?, what)
        }
    };
    let (cert, key) = written;
    let value = json!({"dir": dir, "cert": cert, "key": key, "what": what});
    emit(output, value, || {
        format!("wrote {what}: {} and {}\n", cert.display(), key.display())
    });
    Ok(std::process::ExitCode::SUCCESS)
}

/// The gRPC health of the node at `addr` (the whole server), as gRPC names it.
async fn health_of(
    dialer: &Dialer,
    addr: &str,
    timeout: Option<Duration>,
) -> Result<&'static str, String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let limit = timeout.unwrap_or(Duration::from_secs(5));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address: {e}"))?
        .connect_timeout(limit)
        .timeout(limit);
    let channel = dialer.connect(endpoint, None).await.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        format!("cannot connect: {e}{cause}")
    })?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let reply = client
        .check(request)
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(match reply.into_inner().status() {
        ServingStatus::Serving => "SERVING",
        ServingStatus::NotServing => "NOT_SERVING",
        ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        ServingStatus::Unknown => "UNKNOWN",
    })
}
