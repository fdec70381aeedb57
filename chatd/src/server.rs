//! Runs a chatd node: opens the log with the node's command handlers (raw records and chat
//! commands), serves the device API (`chat.v1.Chat`) on the public address and, behind the
//! cluster secret, Raft, admin, the sequencer's forwarding and the gateways' peer service on the
//! internal one, both with gRPC health and reflection (the public one lists only public
//! services); forms the cluster, and shuts down gracefully on SIGTERM / Ctrl-C. Without a
//! public address (the embedded default, loopback only) the internal address serves devices too.
//! With TLS, the internal address takes only clients with a certificate of the cluster CA and
//! nodes dial each other with theirs (`chat_tls`).
//!
//! Health is what load balancers and orchestrators go by: NOT_SERVING until the node knows the
//! partition map and a leader of every group it holds, SERVING from then, and NOT_SERVING again
//! as soon as a stop begins. A stop hands the node's leaderships to other voters first (so its
//! partitions go on after a lease instead of an election timeout), then ends device streams with
//! UNAVAILABLE (devices reconnect to another node and resume from their last seq), lets calls in
//! flight finish, and exits within [`HANDOVER_WAIT`] + [`STOP_GRACE`].

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use chat_gateway::media::files::FileStore;
use chat_gateway::media::s3::S3Store;
use chat_gateway::media::BlobStore;
use chat_gateway::presence::GatewayPeerService;
use chat_gateway::{ChatService, Gateway};
use chat_log::{Dispatch, LogNode, RawAppend, RAW_COMMAND_TAG};
use chat_model::{ChatHandler, CHAT_COMMAND_TAG};
use chat_projector::{ChatsProjection, Projector};
use chat_proto::admin::admin_server::AdminServer;
use chat_sequencer::service::SequencerService;
use chat_sequencer::Sequencer;
use chat_tls::{NodeTls, Side};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::admin::AdminService;
use crate::config::ServerConfig;

/// A connection with no traffic for this long gets kernel keepalive probes...
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// ...this far apart...
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// ...and is dropped after this many go unanswered (about 90 s after the peer vanished).
const KEEPALIVE_RETRIES: u32 = 3;

/// How long a stopping node lets open calls and streams finish.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a stopping node waits for its leaderships to be taken by other voters (about a
/// lease, 0.3 s with the default timings, when they are caught up).
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Ids of the calls this process has served, for their log spans.
static REQUEST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The names health is reported under: the whole server ("") and each service clients use.
const HEALTH_NAMES: [&str; 3] = [
    "",
    <chat_proto::chat_v1::chat_server::ChatServer<ChatService> as NamedService>::NAME,
    <AdminServer<AdminService> as NamedService>::NAME,
];

/// A node being served; dropping it does not stop it, call [`Running::stop`].
pub struct Running {
    pub node: Arc<LogNode>,
    pub sequencer: Arc<Sequencer>,
    pub gateway: Arc<Gateway>,
    pub projector: Arc<Projector>,
    /// The internal address (Raft, admin, ...; devices too when there is no public one).
    pub local_addr: std::net::SocketAddr,
    /// The address devices connect to.
    pub public_addr: std::net::SocketAddr,
    /// The HTTP address of the embedded media store (None with a shared bucket).
    pub http_addr: Option<std::net::SocketAddr>,
    /// What the media store is, for the log line.
    pub media: String,
    health: HealthReporter,
    stop_tx: tokio::sync::watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    tls_reloader: Option<tokio::task::JoinHandle<()>>,
    http: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop serving: report NOT_SERVING, hand this node's leaderships to other voters (for up
    /// to [`HANDOVER_WAIT`]), end the device streams (devices resume elsewhere), let the gRPC
    /// server finish what is in flight for up to [`STOP_GRACE`] (streams other nodes hold open,
    /// such as a remote tail, are then cut), and shut the log node.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        set_health(&self.health, ServingStatus::NotServing).await;
        if !self.node.is_stopped() {
            let (moved, kept) = self.node.hand_over_leaderships(HANDOVER_WAIT).await;
            if moved + kept > 0 {
                tracing::info!(moved, kept, "leaderships handed over before stopping");
            }
        }
        self.gateway.close_streams();
        let _ = self.stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for server in &mut self.servers {
            match tokio::time::timeout_at(deadline, &mut *server).await {
                Ok(served) => served?.context("gRPC server")?,
                Err(_) => {
                    tracing::info!(grace = ?STOP_GRACE, "streams still open after the grace period: closed");
                    server.abort();
                }
            }
        }
        if let Some(reloader) = self.tls_reloader.take() {
            reloader.abort();
        }
        if let Some(http) = self.http.take() {
            http.abort();
        }
        self.node.shutdown().await;
        Ok(())
    }
}

/// Open the node and start serving it.
pub async fn start(mut config: ServerConfig) -> anyhow::Result<Running> {
    let listener = bind(config.listen).await?;
    let local_addr = listener.local_addr()?;
    let public_listener = match config.public_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let public_addr = match &public_listener {
        Some(l) => l.local_addr()?,
        None => local_addr,
    };
    // Listening on port 0 (tests, tools): peers and leader hints need the port actually bound.
    if let Some(own) = config.log.members.get_mut(&config.log.node_id) {
        if own
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.port() == 0)
        {
            *own = local_addr.to_string();
        }
    }
    let tls = match config.tls.paths()? {
        Some(paths) => Some(NodeTls::load(paths).context("loading the TLS certificates")?),
        None => None,
    };
    let tls_reloader = tls.as_ref().map(|tls| {
        config.log.dialer = chat_tls::Dialer::node(tls.clone());
        tls.spawn_reloader(std::time::Duration::from_millis(
            config.tls.reload_check_ms.max(100),
        ))
    });
    let secret = config.log.cluster_secret.clone();
    let data_dir = config.log.data_dir.clone();
    let handler = Dispatch::new()
        .with(RAW_COMMAND_TAG, Arc::new(RawAppend))
        .with(
            CHAT_COMMAND_TAG,
            Arc::new(ChatHandler::new(config.chat.apply_limits())),
        );
    let node = LogNode::open(config.log, Arc::new(handler)).await?;
    let media = open_media(
        &config.media,
        config.http_listen,
        &data_dir,
        &node,
        &secret,
        public_addr,
        tls.is_some(),
    )
    .await?;
    let sequencer = Arc::new(
        Sequencer::new(node.clone(), &secret, config.chat.sequencer())
            .map_err(anyhow::Error::msg)?,
    );

    let projector = Projector::start(node.clone(), vec![Arc::new(ChatsProjection)]);
    let sweeper =
        chat_sequencer::workers::retention::start(sequencer.clone(), config.retention.retention());
    chat_sequencer::workers::followups::start(
        sequencer.clone(),
        std::time::Duration::from_millis(100),
    );
    let mut gateway_config = config.gateway.gateway();
    gateway_config.media = config.media.media();
    gateway_config.notify_every =
        std::time::Duration::from_millis(config.notifications.flush_ms.max(10));
    let gateway = Gateway::start(
        sequencer.clone(),
        projector.clone(),
        config.notifications.sink()?,
        media.store.clone(),
        &secret,
        gateway_config,
    )
    .map_err(anyhow::Error::msg)?;
    let gateway_peer = tonic::service::interceptor::InterceptedService::new(
        GatewayPeerService::server(&gateway),
        node.internal_check(),
    );
    let chat_service = ChatService::server(gateway.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let admin = AdminServer::new(AdminService::new(node.clone(), projector.clone(), sweeper))
        .max_decoding_message_size(chat_log::MAX_MESSAGE_BYTES);
    let admin = tonic::service::interceptor::InterceptedService::new(admin, node.admin_check());
    let sequencer_service = tonic::service::interceptor::InterceptedService::new(
        SequencerService::server(sequencer.clone()),
        node.internal_check(),
    );
    let (reflection_v1, reflection_v1alpha) = reflection(None)?;
    let internal = grpc_server()
        .add_service(gateway_peer)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(node.raft_service())
        .add_service(node.placement_service())
        .add_service(node.replica_service())
        .add_service(admin)
        .add_service(sequencer_service)
        .add_service(health_service.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    match public_listener {
        None => servers.push(serve(
            internal.add_service(chat_service),
            listener,
            None,
            stop_rx.clone(),
        )),
        Some(public_listener) => {
            servers.push(serve(
                internal,
                listener,
                tls.clone().map(|t| (t, Side::Internal)),
                stop_rx.clone(),
            ));
            let (reflection_v1, reflection_v1alpha) = reflection(Some(PUBLIC_SERVICES))?;
            // Devices are the untrusted side: a bound on the streams one connection may hold
            // (the internal address carries many partitions' Raft calls per connection).
            let public = grpc_server()
                .max_concurrent_streams(config.gateway.max_streams_per_connection.max(1))
                .add_service(chat_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(health_service);
            servers.push(serve(
                public,
                public_listener,
                tls.clone().map(|t| (t, Side::Public)),
                stop_rx.clone(),
            ));
        }
    }

    let http = media
        .files
        .map(|(files, listener)| crate::http::serve(files.router(), listener, tls, stop_rx));

    node.initialize().await?;
    tokio::spawn(report_ready(node.clone(), health.clone()));
    Ok(Running {
        node,
        sequencer,
        gateway,
        projector,
        local_addr,
        public_addr,
        http_addr: media.http_addr,
        media: media.store.describe(),
        health,
        stop_tx,
        servers,
        tls_reloader,
        http,
    })
}

/// The node's blob store, and for the embedded one its HTTP listener.
struct OpenedMedia {
    store: Arc<dyn BlobStore>,
    files: Option<(Arc<FileStore>, TcpListener)>,
    http_addr: Option<std::net::SocketAddr>,
}

/// Open the `[media]` store: a bucket, or files under the data dir served on the HTTP address
/// (by default the device API's IP, a port the system picks: devices learn it from the URLs
/// they are given).
async fn open_media(
    media: &crate::config::MediaSection,
    http_listen: Option<std::net::SocketAddr>,
    data_dir: &std::path::Path,
    node: &Arc<LogNode>,
    secret: &str,
    public_addr: std::net::SocketAddr,
    tls: bool,
) -> anyhow::Result<OpenedMedia> {
    if media.store == "s3" {
        // reqwest, under object_store, dials HTTPS with the process's rustls provider.
        chat_tls::install_provider();
        let store = S3Store::new(&media.s3()).context("opening the media bucket")?;
        return Ok(OpenedMedia {
            store: Arc::new(store),
            files: None,
            http_addr: None,
        });
    }
    let listener =
        bind(http_listen.unwrap_or_else(|| std::net::SocketAddr::new(public_addr.ip(), 0))).await?;
    let http_addr = listener.local_addr()?;
    let base_url = match &media.public_url {
        Some(url) => url.clone(),
        None => {
            let scheme = if tls { "https" } else { "http" };
            // Listening on every address: devices reach the node by its cluster address's host.
            let host = if http_addr.ip().is_unspecified() {
                node.members()
                    .remove(&node.node_id())
                    .unwrap_or_default()
                    .rsplit_once(':')
                    .map(|(host, _)| host.to_string())
                    .unwrap_or_else(|| http_addr.ip().to_string())
            } else {
                http_addr.ip().to_string()
            };
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            format!("{scheme}://{host}:{}", http_addr.port())
        }
    };
    // Uploads stop while the data disk is low, so blobs never eat the log's reserve.
    let weak = Arc::downgrade(node);
    let room: chat_gateway::media::files::SpaceCheck = Arc::new(move || match weak.upgrade() {
        Some(node) if node.disk_state() != chat_log::DiskState::Ok => Err(format!(
            "the node's data disk is {:?}: uploads wait until space is freed",
            node.disk_state()
        )),
        _ => Ok(()),
    });
    let dir = data_dir.join("media");
    let files = FileStore::open(&dir, node.node_id(), &base_url, secret, room)
        .with_context(|| format!("opening the media store in {}", dir.display()))?;
    let files = Arc::new(files);
    Ok(OpenedMedia {
        store: files.clone(),
        files: Some((files, listener)),
        http_addr: Some(http_addr),
    })
}

/// What reflection lists on the public address: the device API and health.
const PUBLIC_SERVICES: &[&str] = &[
    <chat_proto::chat_v1::chat_server::ChatServer<ChatService> as NamedService>::NAME,
    "grpc.health.v1.Health",
];

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The layers every listener's server has.
type GrpcLayers =
    tower::layer::util::Stack<crate::grpc_metrics::GrpcMetricsLayer, tower::layer::util::Identity>;

/// A gRPC server with what every listener has: a span per call (a stream's lasts as long as the
/// stream), so what a call logs carries its method and an id in text and JSON logs alike, and
/// the per-call metrics.
fn grpc_server() -> tonic::transport::Server<GrpcLayers> {
    tonic::transport::Server::builder()
        .trace_fn(|request| {
            tracing::info_span!(
                "grpc",
                method = request.uri().path(),
                id = REQUEST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
        })
        .layer(crate::grpc_metrics::GrpcMetricsLayer)
}

/// Both reflection versions (grpcurl asks v1 first, many libraries still only speak v1alpha),
/// listing `only` these services when given, every service in the descriptors otherwise.
fn reflection(
    only: Option<&[&str]>,
) -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chat_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in only.unwrap_or_default() {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok((
        builder()
            .build_v1()
            .context("building the gRPC reflection service")?,
        builder()
            .build_v1alpha()
            .context("building the gRPC reflection service")?,
    ))
}

/// Serve `router` on `listener` (through TLS for `tls`'s side when given) until `stop` turns true.
fn serve(
    router: tonic::transport::server::Router<GrpcLayers>,
    listener: TcpListener,
    tls: Option<(Arc<NodeTls>, Side)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    // `serve_with_incoming` ignores the builder's TCP_NODELAY, so set it on the listener's
    // connections here: without it every small Raft and client reply can wait on Nagle. The
    // kernel's keepalive probes find dead connections (a phone gone behind a NAT) at no cost to
    // this process; HTTP/2 pings did the same from userspace, waking every idle connection's
    // task twice a minute. Open device streams are also closed by the gateway's idle timeout
    // (devices ping).
    let tcp = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(KEEPALIVE_IDLE))
        .with_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(KEEPALIVE_RETRIES));
    // Each connection counted while it is open.
    let incoming = tokio_stream::StreamExt::map(chat_tls::accept(tcp, tls), |accepted| {
        accepted.map(crate::connections::Counted::new)
    });
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    }))
}

/// Report SERVING once the node can serve (see [`LogNode::can_serve`]); a node that stops
/// first never does.
async fn report_ready(node: Arc<LogNode>, health: HealthReporter) {
    let started = std::time::Instant::now();
    loop {
        if node.is_stopped() {
            return;
        }
        if node.can_serve() {
            set_health(&health, ServingStatus::Serving).await;
            tracing::info!(after = ?started.elapsed(), "ready: health SERVING");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for name in HEALTH_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// Serve until `shutdown` resolves.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let data_dir = config.log.data_dir.clone();
    let members = config.log.members.len();
    let running = start(config).await?;
    // The data dir's count, which is not the configured one when it was left to the dir.
    let partitions = running.node.partition_count();
    tracing::info!(
        node = running.node.node_id(),
        listen = %running.local_addr,
        public = %running.public_addr,
        media = %running.media,
        data_dir = %data_dir.display(),
        partitions,
        members,
        "chatd serving"
    );
    // The log node stops by itself only when it must not go on (removed from the cluster, its
    // data lost, a partition count unlike the cluster's): the process ends with it, so the
    // operator sees it exit with the reason logged rather than a node serving nothing.
    let node = running.node.clone();
    let stopped_by_itself = tokio::select! {
        () = shutdown => false,
        () = node.until_stopped() => true,
    };
    tracing::info!("shutting down");
    running.stop().await?;
    if stopped_by_itself {
        anyhow::bail!("the log node stopped (the reason is logged above)");
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
