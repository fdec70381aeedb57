//! chatd's configuration: command-line flags over an optional TOML file over defaults.
//!
//! With nothing given, chatd is a single-node cluster (node 1) in `./data` listening on
//! 127.0.0.1:7400: the embedded default.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use chat_gateway::notify::{LogSink, PushSink, WebhookConfig, WebhookSink};
use chat_gateway::GatewayConfig;
use chat_log::{DiskConfig, EngineConfig, LogNodeConfig, NodeId, RaftTuning};
use chat_model::{ApplyLimits, CommandLimits};
use chat_sequencer::workers::retention::RetentionConfig;
use chat_sequencer::SequencerConfig;
use clap::Parser;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Partitions of a new cluster, fixed when it forms (a data dir keeps its count afterwards).
///
/// Placement moves whole partitions, so P bounds how far a cluster spreads: with R = 3 at most P
/// nodes lead something and at most 3P hold something, and the spread is even only while each
/// node gets several. At 32 a cluster grows to 32 nodes with one leadership and three replicas
/// each (96 replica slots), and at 12 nodes each still holds eight. What more partitions cost at
/// small sizes (proposals batch per partition) is measured in `docs/benchmarks.md`, "The
/// partition count": 32 keeps 0.56x of 8's throughput on 3 saturated nodes sharing 2 cores and
/// 1.07x at one send in flight; 64 would halve it. A node that will never grow can be formed
/// with `--partitions 8`.
pub const DEFAULT_PARTITIONS: u32 = 32;
/// Replicas per partition: a cluster of three or more keeps working with one node down and
/// stores each partition three times, however many nodes it has.
pub const DEFAULT_REPLICATION: u32 = 3;
const SECRET_FILE: &str = "cluster_secret";
/// The shortest cluster secret taken: it authorises Raft, forwarding and admin calls, so a guessable
/// one (or an empty file) is refused at start. A generated one is 32 hex digits.
pub const MIN_SECRET_LEN: usize = 16;

/// Command-line flags. Each overrides the same key of the config file, and each can be given as
/// a `CHATD_*` environment variable instead (`--data-dir` as `CHATD_DATA_DIR`); a flag on the
/// command line wins over its variable.
#[derive(Parser, Debug, Default)]
#[command(
    name = "chatd",
    version,
    about = "The chat server: a Raft-replicated, partitioned event log"
)]
pub struct Flags {
    /// TOML config file (keys as the long flags, with underscores, plus `[peers]` and `[raft]`).
    #[arg(long, env = "CHATD_CONFIG", short)]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "CHATD_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// The internal address: Raft, forwarding, peer calls and admin, and the device API too
    /// unless --public-listen gives it its own [default: the node's address in --peers, or
    /// 127.0.0.1:7400].
    #[arg(long, env = "CHATD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The public address: the device API (`chat.v1.Chat`) alone, with health and reflection.
    /// Required with TLS; the internal address then serves no device calls.
    #[arg(long, env = "CHATD_PUBLIC_LISTEN")]
    pub public_listen: Option<SocketAddr>,
    /// The cluster CA's certificate (PEM): turns TLS on, with --tls-cert and --tls-key. Nodes
    /// and admin clients must then show a certificate it signed (`chatctl certs`).
    #[arg(long, env = "CHATD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), issued by the cluster CA for the names it is dialled by.
    #[arg(long, env = "CHATD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "CHATD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext on an address that is not loopback. Without TLS, device tokens,
    /// messages and the cluster secret would cross the network in the clear: only for a
    /// network that is private end to end.
    #[arg(long, env = "CHATD_INSECURE")]
    pub insecure: bool,
    /// Every node of the cluster as id=host:port, comma separated, this node included
    /// (e.g. 1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403). Empty: a single-node cluster.
    #[arg(long, env = "CHATD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Where the node keeps its data [default: ./data].
    #[arg(long, env = "CHATD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Partitions of the cluster; fixed when the cluster forms. Left out, a data dir keeps the
    /// count it was made with [default for a new one: 32].
    #[arg(long, env = "CHATD_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Replicas of each partition when the cluster forms (all members if fewer); the same on
    /// every first member. The partition map keeps it afterwards [default: 3].
    #[arg(long, env = "CHATD_REPLICATION")]
    pub replication: Option<u32>,
    /// Join a running cluster instead of forming one: start with no partitions and wait to be
    /// added (`chatctl node add <id> <addr>` on any node). --peers names this node.
    #[arg(long, env = "CHATD_JOIN")]
    pub join: bool,
    /// Shared secret every internal and admin RPC must carry. Required for a multi-node cluster;
    /// a single node generates one into `<data-dir>/cluster_secret`.
    #[arg(long, env = "CHATD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Source IP for outgoing Raft connections (lets fault injection tell links apart).
    #[arg(long, env = "CHATD_BIND_IP")]
    pub bind_ip: Option<IpAddr>,
    /// chatd's HTTP address for devices: the embedded media store's uploads and downloads
    /// (`/media/...`, through presigned URLs the device API hands out). HTTPS with the public
    /// certificate when TLS is on [default: the device API's IP, a port the system picks].
    #[arg(long, env = "CHATD_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP at this address (`/metrics`) [default: off].
    #[arg(long, env = "CHATD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as text, or as one JSON object per line with the fields of the spans they
    /// happened in (`grpc` per request, `device_stream` per device stream). RUST_LOG filters.
    #[arg(long, env = "CHATD_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Print the configuration chatd would run with, as a config file (every key filled in, the
    /// secret left out), and exit without starting.
    #[arg(long)]
    pub print_config: bool,
}

/// How log lines are written (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The TOML file's shape.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<NodeId>,
    listen: Option<SocketAddr>,
    public_listen: Option<SocketAddr>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    tls: TlsSection,
    data_dir: Option<PathBuf>,
    partitions: Option<u32>,
    replication: Option<u32>,
    #[serde(default)]
    join: bool,
    cluster_secret: Option<String>,
    bind_ip: Option<IpAddr>,
    metrics_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    #[serde(default)]
    peers: BTreeMap<String, String>,
    #[serde(default)]
    raft: RaftTuning,
    #[serde(default)]
    chat: ChatConfig,
    #[serde(default)]
    gateway: GatewaySection,
    #[serde(default)]
    notifications: NotificationsSection,
    #[serde(default)]
    retention: RetentionSection,
    #[serde(default)]
    media: MediaSection,
    #[serde(default)]
    storage: DiskConfig,
    #[serde(default)]
    engine: EngineConfig,
}

/// The `[retention]` table: how long messages stay on the server.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Messages older than this are expired (payload removed).
    #[serde(deserialize_with = "chat_log::duration_setting::secs")]
    pub expire_after_secs: u64,
    /// Also expire messages every device of every member has acknowledged.
    pub delete_when_delivered: bool,
    /// How often each partition's leader sweeps it.
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub sweep_ms: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        let d = RetentionConfig::default();
        RetentionSection {
            expire_after_secs: d.expire_after.as_secs(),
            delete_when_delivered: d.delete_when_delivered,
            sweep_ms: d.sweep_every.as_millis() as u64,
        }
    }
}

impl RetentionSection {
    pub fn retention(&self) -> RetentionConfig {
        RetentionConfig {
            expire_after: std::time::Duration::from_secs(self.expire_after_secs),
            delete_when_delivered: self.delete_when_delivered,
            sweep_every: std::time::Duration::from_millis(self.sweep_ms.max(10)),
        }
    }
}

/// The `[media]` table: where blobs go (docs/operations.md, "Media").
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSection {
    /// "files" (the default: under `<data_dir>/media`, served on the HTTP address) or "s3".
    pub store: String,
    /// The URL devices reach this node's HTTP address at, when not `http(s)://<http address>`
    /// (behind a load balancer or NAT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Largest blob a device may upload.
    pub max_bytes: u64,
    /// How long an upload or download URL is valid.
    #[serde(deserialize_with = "chat_log::duration_setting::secs")]
    pub url_ttl_secs: u64,
    pub s3: S3Section,
}

/// The `[media.s3]` table.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct S3Section {
    pub bucket: String,
    /// An S3-compatible server's URL; empty for AWS.
    pub endpoint: String,
    pub region: String,
    /// Empty: from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    pub access_key_id: String,
    #[serde(skip_serializing)]
    pub secret_access_key: String,
}

impl Default for MediaSection {
    fn default() -> Self {
        let d = chat_gateway::media::MediaConfig::default();
        MediaSection {
            store: "files".into(),
            public_url: None,
            max_bytes: d.max_bytes,
            url_ttl_secs: d.url_ttl.as_secs(),
            s3: S3Section::default(),
        }
    }
}

impl MediaSection {
    pub fn media(&self) -> chat_gateway::media::MediaConfig {
        chat_gateway::media::MediaConfig {
            max_bytes: self.max_bytes.max(1),
            url_ttl: std::time::Duration::from_secs(self.url_ttl_secs.max(1)),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        match self.store.as_str() {
            "files" => Ok(()),
            "s3" if self.s3.bucket.is_empty() => {
                bail!("[media] store = \"s3\" needs [media.s3] bucket")
            }
            "s3" => Ok(()),
            other => bail!("[media] store is \"files\" or \"s3\", not {other:?}"),
        }
    }

    pub fn s3(&self) -> chat_gateway::media::s3::S3Config {
        chat_gateway::media::s3::S3Config {
            bucket: self.s3.bucket.clone(),
            endpoint: self.s3.endpoint.clone(),
            region: self.s3.region.clone(),
            access_key_id: self.s3.access_key_id.clone(),
            secret_access_key: self.s3.secret_access_key.clone(),
        }
    }
}

/// The `[notifications]` table: where offline notifications go.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsSection {
    /// "log" (the default), "webhook" or "none".
    pub sink: String,
    /// For the log sink: "debug" (the default: counted in metrics, not written at the default
    /// filter) or "info" (a line per notification).
    pub log_level: String,
    /// For the webhook sink: `https://host[:port]/path` (`http://` only to a loopback relay).
    pub webhook_url: Option<String>,
    /// The CA that signed the webhook receiver's certificate, if the system does not trust it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_ca: Option<PathBuf>,
    pub max_attempts: u32,
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub first_backoff_ms: u64,
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub timeout_ms: u64,
    /// How often pending notifications are collapsed and sent.
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub flush_ms: u64,
}

impl Default for NotificationsSection {
    fn default() -> Self {
        NotificationsSection {
            sink: "log".into(),
            log_level: "debug".into(),
            webhook_url: None,
            webhook_ca: None,
            max_attempts: 5,
            first_backoff_ms: 200,
            timeout_ms: 2000,
            flush_ms: 1000,
        }
    }
}

impl NotificationsSection {
    /// The configured sink (None: notifications off).
    pub fn sink(&self) -> anyhow::Result<Option<Arc<dyn PushSink>>> {
        Ok(match self.sink.as_str() {
            "none" => None,
            "log" => Some(Arc::new(LogSink {
                at_info: match self.log_level.as_str() {
                    "debug" => false,
                    "info" => true,
                    other => {
                        bail!("[notifications] log_level {other:?}: want \"debug\" or \"info\"")
                    }
                },
            })),
            "webhook" => {
                let url = self
                    .webhook_url
                    .clone()
                    .context("[notifications] sink = \"webhook\" needs webhook_url")?;
                let sink = WebhookSink::new(WebhookConfig {
                    url,
                    ca: self.webhook_ca.clone(),
                    max_attempts: self.max_attempts.max(1),
                    first_backoff: std::time::Duration::from_millis(self.first_backoff_ms),
                    timeout: std::time::Duration::from_millis(self.timeout_ms.max(1)),
                })
                .map_err(anyhow::Error::msg)?;
                Some(Arc::new(sink))
            }
            other => bail!("[notifications] sink {other:?}: want \"log\", \"webhook\" or \"none\""),
        })
    }
}

/// The `[gateway]` table: device streams.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// Pushes queued per device stream before it catches up from the log instead.
    pub queue_capacity: usize,
    /// Close a stream after this long without a frame (devices ping).
    #[serde(deserialize_with = "chat_log::duration_setting::secs")]
    pub idle_timeout_secs: u64,
    /// Largest client frame, in bytes.
    pub max_frame_bytes: usize,
    /// MiB of chat member lists cached for fan-out.
    pub member_cache_mib: u64,
    /// Authenticated unary calls (History, Presence, CreateGroup, ...) per user per second on
    /// this node, and the burst; more are RESOURCE_EXHAUSTED.
    pub calls_per_second: u32,
    pub call_burst: u32,
    /// Registers per remote address per second on this node, and the burst.
    pub registers_per_second: u32,
    pub register_burst: u32,
    /// A revoked device is refused by every node within this long of its revocation (a node
    /// that cannot confirm with the account's partition refuses it too), and its open streams
    /// end within twice this long.
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub revocation_bound_ms: u64,
    /// A device stream whose client reads nothing for this long (its window and queues full)
    /// is ended, so a client that stops reading holds no session.
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub write_deadline_ms: u64,
    /// Calls and streams open at once on one device connection to the public address (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS); a client opening more waits for one to end.
    pub max_streams_per_connection: u32,
    /// A deleted account's handle can be registered again (as a new account) after this long.
    #[serde(deserialize_with = "chat_log::duration_setting::secs")]
    pub account_release_after_secs: u64,
}

impl Default for GatewaySection {
    fn default() -> Self {
        let d = GatewayConfig::default();
        GatewaySection {
            queue_capacity: d.queue_capacity,
            idle_timeout_secs: d.idle_timeout.as_secs(),
            max_frame_bytes: d.max_frame_bytes,
            member_cache_mib: d.member_cache_bytes / (1024 * 1024),
            calls_per_second: d.calls_per_second,
            call_burst: d.call_burst,
            registers_per_second: d.registers_per_second,
            register_burst: d.register_burst,
            revocation_bound_ms: d.revocation_bound.as_millis() as u64,
            write_deadline_ms: d.write_deadline.as_millis() as u64,
            max_streams_per_connection: 256,
            account_release_after_secs: d.account_release_after.as_secs(),
        }
    }
}

impl GatewaySection {
    pub fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            queue_capacity: self.queue_capacity.max(1),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs.max(1)),
            max_frame_bytes: self.max_frame_bytes,
            member_cache_bytes: self.member_cache_mib.max(1) * 1024 * 1024,
            calls_per_second: self.calls_per_second,
            call_burst: self.call_burst,
            registers_per_second: self.registers_per_second,
            register_burst: self.register_burst,
            revocation_bound: std::time::Duration::from_millis(self.revocation_bound_ms.max(100)),
            write_deadline: std::time::Duration::from_millis(self.write_deadline_ms.max(100)),
            account_release_after: std::time::Duration::from_secs(self.account_release_after_secs),
            ..GatewayConfig::default()
        }
    }
}

/// The `[chat]` table: limits of the write path.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Most members of a group, creator included. Decides what is applied: same on every node.
    pub max_group_members: u32,
    /// How long a (device, client_msg_id) is remembered for retries. Same on every node.
    #[serde(deserialize_with = "chat_log::duration_setting::secs")]
    pub dedup_window_secs: u64,
    pub max_payload_bytes: usize,
    pub sends_per_second: u32,
    pub send_burst: u32,
    /// How long a write keeps trying while its partition has no leader before it is answered
    /// UNAVAILABLE (a device may ask for less per send). May differ per node.
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub submit_timeout_ms: u64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        let (apply, seq) = (ApplyLimits::default(), SequencerConfig::default());
        ChatConfig {
            max_group_members: apply.max_group_members,
            dedup_window_secs: apply.dedup_window_ms / 1000,
            max_payload_bytes: seq.limits.max_payload_bytes,
            sends_per_second: seq.sends_per_second,
            send_burst: seq.send_burst,
            submit_timeout_ms: seq.submit_timeout.as_millis() as u64,
        }
    }
}

impl ChatConfig {
    pub fn apply_limits(&self) -> ApplyLimits {
        ApplyLimits {
            max_group_members: self.max_group_members,
            dedup_window_ms: self.dedup_window_secs * 1000,
        }
    }

    pub fn sequencer(&self) -> SequencerConfig {
        SequencerConfig {
            limits: CommandLimits {
                max_payload_bytes: self.max_payload_bytes,
                ..CommandLimits::default()
            },
            sends_per_second: self.sends_per_second,
            send_burst: self.send_burst,
            submit_timeout: std::time::Duration::from_millis(self.submit_timeout_ms),
            ..SequencerConfig::default()
        }
    }
}

/// `[tls]`: the node's certificates. `ca`, `cert` and `key` together turn TLS on.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The certificate devices see on the public address when not the node's own (one from a
    /// public CA), with its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PathBuf>,
    /// How often the files are looked at for a change (a rotated certificate is taken by new
    /// connections without a restart). A number of milliseconds or a duration ("10s").
    #[serde(deserialize_with = "chat_log::duration_setting::millis")]
    pub reload_check_ms: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            ca: None,
            cert: None,
            key: None,
            public_cert: None,
            public_key: None,
            reload_check_ms: 10_000,
        }
    }
}

impl TlsSection {
    /// The files, if TLS is on; an error if only some of those that go together are given.
    pub fn paths(&self) -> anyhow::Result<Option<chat_tls::TlsPaths>> {
        let public_cert = match (&self.public_cert, &self.public_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => bail!("[tls] public_cert and public_key go together: give both or neither"),
        };
        match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(chat_tls::TlsPaths {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                public_cert,
            })),
            (None, None, None) if public_cert.is_none() => Ok(None),
            _ => bail!(
                "TLS needs all of --tls-ca, --tls-cert and --tls-key (or [tls] ca, cert, key); \
                 `chatctl certs` makes them"
            ),
        }
    }
}

/// The resolved configuration chatd runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The internal address (and the public one too when `public_listen` is None).
    pub listen: SocketAddr,
    /// The device API's own address.
    pub public_listen: Option<SocketAddr>,
    /// The certificates, when TLS is on.
    pub tls: TlsSection,
    /// Plaintext allowed off loopback.
    pub insecure: bool,
    /// Where Prometheus scrapes `/metrics` (None: no exporter).
    pub metrics_listen: Option<SocketAddr>,
    /// The HTTP address for devices (None: the device API's IP, any port).
    pub http_listen: Option<SocketAddr>,
    pub log: LogNodeConfig,
    pub chat: ChatConfig,
    pub gateway: GatewaySection,
    pub notifications: NotificationsSection,
    pub retention: RetentionSection,
    pub media: MediaSection,
}

impl ServerConfig {
    pub fn resolve(flags: Flags) -> anyhow::Result<ServerConfig> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read config {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parse config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        if file.chat.submit_timeout_ms == 0 {
            bail!("[chat] submit_timeout_ms must be positive (every write would time out at once)");
        }
        let node_id = flags.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            bail!("--node-id must be a positive integer");
        }
        let mut members = parse_peers(&flags.peers)?;
        if members.is_empty() {
            for (id, addr) in &file.peers {
                let id = id
                    .parse()
                    .with_context(|| format!("[peers] key {id:?} is not a node id"))?;
                members.insert(id, addr.clone());
            }
        }
        let listen = match flags.listen.or(file.listen) {
            Some(l) => l,
            None => match members.get(&node_id) {
                Some(addr) => addr.parse().with_context(|| {
                    format!("this node's peer address {addr:?} is not host:port; give --listen")
                })?,
                None => DEFAULT_LISTEN.parse().expect("valid default"),
            },
        };
        if members.is_empty() {
            members.insert(node_id, listen.to_string());
        }
        if !members.contains_key(&node_id) {
            bail!("--peers does not name this node ({node_id}): {members:?}");
        }
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let chosen_partitions = flags.partitions.or(file.partitions);
        let join = flags.join || file.join;
        let replication = flags
            .replication
            .or(file.replication)
            .unwrap_or(DEFAULT_REPLICATION);
        if replication == 0 {
            bail!("--replication must be at least 1");
        }
        let cluster_secret = match flags.cluster_secret.or(file.cluster_secret) {
            Some(s) => checked_secret(s, "the cluster secret given (--cluster-secret, CHATD_CLUSTER_SECRET or cluster_secret)")?,
            None if join => bail!("a joining node needs the cluster's --cluster-secret"),
            // Printing the configuration changes nothing on disk.
            None if members.len() == 1 && flags.print_config => String::new(),
            None if members.len() == 1 => load_or_create_secret(&data_dir)?,
            None => bail!(
                "a multi-node cluster needs a shared --cluster-secret (or CHATD_CLUSTER_SECRET)"
            ),
        };
        file.engine.check().map_err(anyhow::Error::msg)?;
        let mut tls = file.tls;
        for (flag, key) in [
            (flags.tls_ca, &mut tls.ca),
            (flags.tls_cert, &mut tls.cert),
            (flags.tls_key, &mut tls.key),
        ] {
            if flag.is_some() {
                *key = flag;
            }
        }
        let public_listen = flags.public_listen.or(file.public_listen);
        let insecure = flags.insecure || file.insecure;
        let http_listen = flags.http_listen.or(file.http_listen);
        check_transport(listen, public_listen, tls.paths()?.is_some(), insecure)?;
        check_transport_http(http_listen, tls.paths()?.is_some(), insecure)?;
        file.media.check()?;
        Ok(ServerConfig {
            listen,
            public_listen,
            tls,
            insecure,
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            http_listen,
            log: LogNodeConfig {
                node_id,
                data_dir,
                partitions: chosen_partitions.unwrap_or(DEFAULT_PARTITIONS),
                partitions_chosen: chosen_partitions.is_some(),
                replication,
                members,
                join,
                cluster_secret,
                bind_ip: flags.bind_ip.or(file.bind_ip),
                // Made from `tls` when the node starts (the files are read then).
                dialer: chat_tls::Dialer::plain(),
                raft: file.raft,
                disk: file.storage,
                engine: file.engine,
            },
            chat: file.chat,
            gateway: file.gateway,
            notifications: file.notifications,
            retention: file.retention,
            media: file.media,
        })
    }
}

/// The configuration as `--print-config` shows it: the config file's shape with every key
/// filled in. Fed back with `--config` (and the secret), it resolves to the same settings.
#[derive(Serialize)]
struct Printed<'a> {
    node_id: NodeId,
    listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_listen: Option<SocketAddr>,
    insecure: bool,
    data_dir: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<u32>,
    replication: u32,
    join: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bind_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<SocketAddr>,
    peers: BTreeMap<String, String>,
    tls: &'a TlsSection,
    raft: &'a RaftTuning,
    chat: &'a ChatConfig,
    gateway: &'a GatewaySection,
    notifications: &'a NotificationsSection,
    retention: &'a RetentionSection,
    media: &'a MediaSection,
    storage: &'a DiskConfig,
    engine: &'a EngineConfig,
}

impl ServerConfig {
    /// The effective configuration as a TOML config file (`chatd --print-config`).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let log = &self.log;
        let printed = Printed {
            node_id: log.node_id,
            listen: self.listen,
            public_listen: self.public_listen,
            insecure: self.insecure,
            data_dir: &log.data_dir,
            partitions: log.partitions_chosen.then_some(log.partitions),
            replication: log.replication,
            join: log.join,
            bind_ip: log.bind_ip,
            metrics_listen: self.metrics_listen,
            http_listen: self.http_listen,
            peers: log
                .members
                .iter()
                .map(|(id, addr)| (id.to_string(), addr.clone()))
                .collect(),
            tls: &self.tls,
            raft: &log.raft,
            chat: &self.chat,
            gateway: &self.gateway,
            notifications: &self.notifications,
            retention: &self.retention,
            media: &self.media,
            storage: &log.disk,
            engine: &log.engine,
        };
        let mut text = String::from(
            "# chatd's effective configuration (chatd --print-config).\n\
             # cluster_secret is left out: give it with --cluster-secret or CHATD_CLUSTER_SECRET\n\
             # (a single node without one keeps a generated one in <data_dir>/cluster_secret).\n",
        );
        if !log.partitions_chosen {
            text.push_str(&format!(
                "# partitions is left to the data dir: the count it was made with, or {DEFAULT_PARTITIONS} for a new one.\n"
            ));
        }
        text.push_str(&toml::to_string(&printed).context("printing the configuration")?);
        Ok(text)
    }
}

/// Where plaintext may be served, and what TLS needs: plaintext off loopback only with
/// `--insecure`; with TLS, the device API on an address of its own (the internal one takes only
/// CA-signed client certificates, which devices do not have).
fn check_transport(
    listen: SocketAddr,
    public_listen: Option<SocketAddr>,
    tls: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    if public_listen == Some(listen) && listen.port() != 0 {
        bail!("--public-listen must differ from --listen ({listen})");
    }
    if tls {
        if public_listen.is_none() {
            bail!(
                "with TLS the device API needs an address of its own: give --public-listen \
                 (the internal address --listen takes only clients with a certificate of the cluster CA)"
            );
        }
        return Ok(());
    }
    if insecure {
        return Ok(());
    }
    for addr in std::iter::once(listen).chain(public_listen) {
        if !addr.ip().is_loopback() {
            bail!(
                "{addr} is not a loopback address and TLS is off: device tokens, messages and the \
                 cluster secret would cross the network in the clear. Give --tls-ca, --tls-cert \
                 and --tls-key (`chatctl certs` makes them), or --insecure on a network that is \
                 private end to end"
            );
        }
    }
    Ok(())
}

/// The HTTP address follows the device API's rule: plaintext off loopback only with
/// `--insecure` (with TLS it serves HTTPS).
fn check_transport_http(http: Option<SocketAddr>, tls: bool, insecure: bool) -> anyhow::Result<()> {
    match http {
        Some(addr) if !tls && !insecure && !addr.ip().is_loopback() => bail!(
            "--http-listen {addr} is not a loopback address and TLS is off: media would cross the \
             network in the clear. Turn TLS on, or give --insecure on a private network"
        ),
        _ => Ok(()),
    }
}

/// Parse `id=host:port` items.
fn parse_peers(items: &[String]) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut peers = BTreeMap::new();
    for item in items.iter().filter(|s| !s.trim().is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .with_context(|| format!("peer {item:?} is not id=host:port"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .with_context(|| format!("peer {item:?}: {id:?} is not a node id"))?;
        if id == 0 {
            bail!("peer {item:?}: node ids start at 1");
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            bail!("node {id} is listed twice in --peers");
        }
    }
    Ok(peers)
}

/// The single-node default keeps its generated secret in the data dir, readable by its owner
/// only, so `chatctl --data-dir` can find it.
pub fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(SECRET_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        return checked_secret(s.trim().to_string(), &path.display().to_string());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let secret = hex::encode(rand::random::<[u8; 16]>());
    write_private(&path, &secret).with_context(|| format!("write {}", path.display()))?;
    Ok(secret)
}

/// `secret`, if it is long enough and travels in a header (printable ASCII); else an error
/// naming where it came from.
fn checked_secret(secret: String, from: &str) -> anyhow::Result<String> {
    if secret.len() < MIN_SECRET_LEN {
        bail!(
            "{from} is {} characters; a cluster secret needs at least {MIN_SECRET_LEN} (it \
             authorises Raft and admin calls): generate one with `openssl rand -hex 16`",
            secret.len()
        );
    }
    if !secret.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        bail!("{from} must be printable ASCII without spaces (it travels in an HTTP/2 header)");
    }
    Ok(secret)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_is_a_single_node_in_data() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Flags {
            data_dir: Some(dir.path().to_path_buf()),
            ..Flags::default()
        };
        let c = ServerConfig::resolve(flags).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.log.node_id, 1);
        assert_eq!(c.log.partitions, DEFAULT_PARTITIONS);
        assert!(!c.log.partitions_chosen);
        assert_eq!(c.log.members.len(), 1);
        // The generated secret is stable across restarts.
        let again = ServerConfig::resolve(Flags {
            data_dir: Some(dir.path().to_path_buf()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(c.log.cluster_secret, again.log.cluster_secret);
    }

    #[test]
    fn peers_give_the_listen_address_and_need_a_secret() {
        let flags = || Flags {
            node_id: Some(2),
            peers: vec!["1=127.0.0.1:1".into(), "2=127.0.0.1:2".into()],
            ..Flags::default()
        };
        let err = ServerConfig::resolve(flags()).unwrap_err().to_string();
        assert!(err.contains("cluster-secret"), "{err}");
        let c = ServerConfig::resolve(Flags {
            cluster_secret: Some("s-long-enough-secret".into()),
            ..flags()
        })
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2");
    }

    #[test]
    fn plaintext_off_loopback_needs_insecure_and_tls_needs_a_public_address() {
        let dir = tempfile::tempdir().unwrap();
        let flags = |listen: &str| Flags {
            listen: Some(listen.parse().unwrap()),
            data_dir: Some(dir.path().to_path_buf()),
            cluster_secret: Some("s-long-enough-secret".into()),
            ..Flags::default()
        };
        // Every interface, or one public address, in plaintext: refused, with what to do.
        for listen in ["0.0.0.0:7400", "10.1.2.3:7400", "[::]:7400"] {
            let err = ServerConfig::resolve(flags(listen))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("not a loopback address") && err.contains("--insecure"),
                "{err}"
            );
        }
        let err = ServerConfig::resolve(Flags {
            public_listen: Some("0.0.0.0:443".parse().unwrap()),
            ..flags("127.0.0.1:7400")
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("0.0.0.0:443"), "{err}");
        // Asked for explicitly, it starts; loopback needs nothing.
        let c = ServerConfig::resolve(Flags {
            insecure: true,
            ..flags("0.0.0.0:7400")
        })
        .unwrap();
        assert!(c.insecure);
        ServerConfig::resolve(flags("127.0.0.1:7400")).unwrap();

        // TLS: all three files or none, and the device API on its own address.
        let tls = |f: Flags| Flags {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("n1.pem".into()),
            tls_key: Some("n1.key".into()),
            ..f
        };
        let err = ServerConfig::resolve(Flags {
            tls_key: None,
            ..tls(flags("0.0.0.0:7400"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--tls-key"), "{err}");
        let err = ServerConfig::resolve(tls(flags("0.0.0.0:7400")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--public-listen"), "{err}");
        let c = ServerConfig::resolve(Flags {
            public_listen: Some("0.0.0.0:443".parse().unwrap()),
            ..tls(flags("0.0.0.0:7400"))
        })
        .unwrap();
        assert_eq!(
            c.tls.paths().unwrap().unwrap().cert,
            PathBuf::from("n1.pem")
        );
    }

    #[test]
    fn bad_peers_are_clear_errors() {
        for (bad, want) in [
            ("x", "id=host:port"),
            ("a=1.2.3.4:5", "not a node id"),
            ("0=h:1", "start at 1"),
        ] {
            let err = parse_peers(&[bad.to_string()]).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
        assert!(parse_peers(&["1=a:1".into(), "1=b:2".into()]).is_err());
    }

    #[test]
    fn engine_sizes_and_sink_level_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |toml: &str| {
            let path = dir.path().join("n.toml");
            std::fs::write(&path, toml).unwrap();
            ServerConfig::resolve(Flags {
                config: Some(path),
                data_dir: Some(dir.path().join("data")),
                ..Flags::default()
            })
        };
        let c = resolve("[engine]\nwal_max_mib = 256\nblock_cache_mib = 32\n").unwrap();
        assert_eq!(
            (c.log.engine.wal_max_mib, c.log.engine.block_cache_mib),
            (256, 32)
        );
        let err = resolve("[engine]\nwal_max_mib = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("wal_max_mib = 4"), "{err}");
        let c = resolve("[notifications]\nlog_level = \"loud\"\n").unwrap();
        let err = c.notifications.sink().err().unwrap().to_string();
        assert!(err.contains("log_level \"loud\""), "{err}");
    }

    #[test]
    fn toml_config_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "node_id = 3\npartitions = 4\ncluster_secret = \"k-long-enough-secret\"\n[peers]\n1 = \"127.0.0.1:1\"\n3 = \"127.0.0.1:3\"\n[raft]\nheartbeat_ms = 50\n[chat]\nmax_group_members = 16\n",
        )
        .unwrap();
        let c = ServerConfig::resolve(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(
            (c.log.node_id, c.log.partitions, c.log.raft.heartbeat_ms),
            (3, 4, 50)
        );
        assert_eq!(c.listen.to_string(), "127.0.0.1:3");
    }

    #[test]
    fn short_or_empty_secrets_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |secret: Option<&str>| {
            ServerConfig::resolve(Flags {
                data_dir: Some(dir.path().join("data")),
                cluster_secret: secret.map(str::to_string),
                ..Flags::default()
            })
            .map_err(|e| format!("{e:#}"))
        };
        let err = resolve(Some("")).unwrap_err();
        assert!(err.contains("at least 16"), "{err}");
        let err = resolve(Some("hunter2")).unwrap_err();
        assert!(err.contains("is 7 characters"), "{err}");
        let err = resolve(Some("sixteen chars ok but spaced")).unwrap_err();
        assert!(err.contains("printable ASCII without spaces"), "{err}");
        assert!(resolve(Some("0123456789abcdef")).is_ok());

        // A single node's secret file, emptied or cut short, is refused rather than taken.
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let file = dir.path().join("data").join(SECRET_FILE);
        for contents in ["", "\n", "short\n"] {
            std::fs::write(&file, contents).unwrap();
            let err = resolve(None).unwrap_err();
            assert!(
                err.contains("cluster_secret") && err.contains("at least 16"),
                "{err}"
            );
        }
        // A generated one is taken again.
        std::fs::remove_file(&file).unwrap();
        let made = resolve(None).unwrap().log.cluster_secret;
        assert_eq!(made.len(), 32);
        assert_eq!(resolve(None).unwrap().log.cluster_secret, made);
    }

    #[test]
    fn durations_take_units() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "[raft]\nheartbeat_ms = \"80ms\"\nelection_timeout_max_ms = \"1s\"\n[retention]\nexpire_after_secs = \"7d\"\nsweep_ms = \"2m\"\n[chat]\nsubmit_timeout_ms = 5000\n",
        )
        .unwrap();
        let resolve = |path: PathBuf| {
            ServerConfig::resolve(Flags {
                config: Some(path),
                data_dir: Some(dir.path().join("data")),
                cluster_secret: Some("s-long-enough-secret".into()),
                ..Flags::default()
            })
        };
        let c = resolve(path.clone()).unwrap();
        assert_eq!(
            (c.log.raft.heartbeat_ms, c.log.raft.election_timeout_max_ms),
            (80, 1000)
        );
        assert_eq!(
            (c.retention.expire_after_secs, c.retention.sweep_ms),
            (7 * 86400, 120_000)
        );
        std::fs::write(&path, "[retention]\nsweep_ms = \"soon\"\n").unwrap();
        let err = format!("{:#}", resolve(path).unwrap_err());
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
    }

    #[test]
    fn printed_config_resolves_to_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let given = dir.path().join("given.toml");
        std::fs::write(
            &given,
            "node_id = 2\npartitions = 16\nmetrics_listen = \"127.0.0.1:9100\"\n[peers]\n1 = \"127.0.0.1:7401\"\n2 = \"127.0.0.1:7402\"\n[raft]\nheartbeat_ms = 70\n[chat]\nmax_group_members = 64\n[notifications]\nsink = \"webhook\"\nwebhook_url = \"http://127.0.0.1:1/hook\"\n[storage]\nreserve_mib = 512\n",
        )
        .unwrap();
        let resolve = |path: PathBuf| {
            ServerConfig::resolve(Flags {
                config: Some(path),
                data_dir: Some(dir.path().join("data")),
                cluster_secret: Some("s-long-enough-secret".into()),
                ..Flags::default()
            })
            .unwrap()
        };
        let first = resolve(given);
        let text = first.to_toml().unwrap();
        assert!(!text.contains("cluster_secret ="), "{text}");
        let printed = dir.path().join("printed.toml");
        std::fs::write(&printed, &text).unwrap();
        let second = resolve(printed);
        assert_eq!(format!("{first:?}"), format!("{second:?}"), "{text}");
        assert_eq!(second.log.raft.heartbeat_ms, 70);
        assert_eq!(second.chat.max_group_members, 64);

        // Left out, the partition count stays left to the data dir.
        let c = ServerConfig::resolve(Flags {
            data_dir: Some(dir.path().join("data")),
            print_config: true,
            ..Flags::default()
        })
        .unwrap();
        let text = c.to_toml().unwrap();
        assert!(!text.contains("\npartitions ="), "{text}");
        // Printing alone writes nothing: no generated secret in the data dir.
        assert!(!dir.path().join("data").exists());
    }
}
