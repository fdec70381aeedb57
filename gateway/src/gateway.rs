//! The gateway of one node: what its device sessions share (the write path, reads of chat
//! state wherever it is held, the hub, cluster presence, the projector) and how it starts; plus
//! the read-or-read-index helper and the read-error status the sessions and the service use.

use std::sync::Arc;
use std::time::Duration;

use chat_log::{LogOffset, PartitionId, ReadError, StoreError};
use chat_model::StateReader;
use chat_projector::{Change, Projector};
use chat_sequencer::Sequencer;
use tonic::Status;

use crate::notify::{self, PushSink};
use crate::{hub, presence, registry, ticks};

/// Gateway limits and timers (the `[gateway]` table of chatd's config).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Pushes queued per device stream before it is switched to catching up from the log.
    pub queue_capacity: usize,
    /// A stream with no frame from its device for this long is closed.
    pub idle_timeout: Duration,
    /// How long a new stream has to send its Hello.
    pub hello_timeout: Duration,
    /// How often a stream proposes the delivered/read marks its device sent.
    pub receipt_flush: Duration,
    /// Sends of one stream being committed at once; more wait (backpressure on the device).
    pub max_sends_in_flight: usize,
    /// Largest client frame accepted (bigger ones end the stream with OUT_OF_RANGE).
    pub max_frame_bytes: usize,
    /// How often offline notifications are collapsed and handed to the sink.
    pub notify_every: Duration,
    /// Bytes of chat member lists the hub keeps cached for fan-out.
    pub member_cache_bytes: u64,
    /// Authenticated unary calls per user per second (every node counts its own), and the burst.
    pub calls_per_second: u32,
    pub call_burst: u32,
    /// Registers per remote address per second, and the burst.
    pub registers_per_second: u32,
    pub register_burst: u32,
    /// How stale what this node knows of a device may be when it lets the device in: a
    /// revoked device is refused by every node within this long of the revocation, and its open
    /// streams are closed within twice this long.
    pub revocation_bound: Duration,
    /// A device stream whose client reads nothing for this long is ended.
    pub write_deadline: Duration,
    /// Media sizes and URL lifetimes.
    pub media: crate::media::MediaConfig,
    /// How long a deleted account's handle stays reserved before it can be registered again.
    pub account_release_after: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            queue_capacity: 1024,
            idle_timeout: Duration::from_secs(90),
            hello_timeout: Duration::from_secs(10),
            receipt_flush: Duration::from_millis(100),
            max_sends_in_flight: 64,
            max_frame_bytes: 1024 * 1024,
            notify_every: Duration::from_secs(1),
            member_cache_bytes: 32 * 1024 * 1024,
            calls_per_second: 100,
            call_burst: 1000,
            registers_per_second: 50,
            register_burst: 1000,
            revocation_bound: Duration::from_secs(15),
            write_deadline: crate::outbound::WRITE_DEADLINE,
            media: crate::media::MediaConfig::default(),
            account_release_after: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The gateway of one node.
pub struct Gateway {
    pub sequencer: Arc<Sequencer>,
    pub reads: StateReader,
    pub hub: Arc<hub::Hub>,
    pub presence: Arc<presence::ClusterPresence>,
    pub projector: Arc<Projector>,
    /// Upload and download grants for the node's blob store.
    pub media: crate::media::Media,
    /// Rates and sizes of what a client can cause through unary calls.
    pub limits: crate::limits::CallLimits,
    /// Per partition, when this node last confirmed a read index with its leader, and the
    /// index: reads from a replica that applied it are that fresh.
    confirmed:
        std::sync::Mutex<std::collections::HashMap<PartitionId, (std::time::Instant, LogOffset)>>,
    pub config: GatewayConfig,
    /// Set when the node is going away: every device stream ends (see [`Gateway::until_closing`]).
    closing: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// Start the hub's partition tailers, the media reaper of `blobs` (and the offline notifier
    /// when there is a `sink`). Call inside the tokio runtime. `cluster_secret` authenticates
    /// presence lookups to the other nodes.
    pub fn start(
        sequencer: Arc<Sequencer>,
        projector: Arc<Projector>,
        sink: Option<Arc<dyn PushSink>>,
        blobs: Arc<dyn crate::media::BlobStore>,
        cluster_secret: &str,
        config: GatewayConfig,
    ) -> Result<Arc<Gateway>, String> {
        let node = sequencer.node().clone();
        let hub = hub::Hub::start(
            node.clone(),
            config.queue_capacity,
            config.member_cache_bytes,
        );
        let secret = chat_proto::AttachSecret::new(cluster_secret).map_err(|e| e.to_string())?;
        tokio::spawn(push_ticks(hub.clone(), projector.subscribe()));
        let presence = Arc::new(presence::ClusterPresence::new(
            hub.clone(),
            secret,
            node.clone(),
        ));
        registry::Announcer::start(node.clone(), hub.clone(), presence.clone());
        ticks::follow_remote(node.clone(), hub.clone(), presence.clone());
        if let Some(sink) = sink {
            notify::start(
                node.clone(),
                hub.clone(),
                presence.clone(),
                sink,
                config.notify_every,
            );
        }
        let limits = crate::limits::CallLimits::new(crate::limits::Rates {
            calls_per_second: config.calls_per_second,
            call_burst: config.call_burst,
            registers_per_second: config.registers_per_second,
            register_burst: config.register_burst,
        });
        crate::media::reaper::start(node.clone(), blobs.clone());
        let media = crate::media::Media::new(blobs, node.node_id(), config.media.clone());
        let reads = StateReader::new(node);
        crate::presence_push::start(
            sequencer.clone(),
            reads.clone(),
            hub.clone(),
            presence.clone(),
        );
        let gateway = Arc::new(Gateway {
            limits,
            confirmed: Default::default(),
            reads,
            presence,
            hub,
            sequencer,
            projector,
            media,
            config,
            closing: tokio::sync::watch::Sender::new(false),
        });
        // The limiters' maps keep a key per user and address seen: forget the idle ones.
        let weak = Arc::downgrade(&gateway);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                match weak.upgrade() {
                    Some(gateway) => gateway.limits.shrink(),
                    None => return,
                }
            }
        });
        Ok(gateway)
    }

    /// End every device stream (with UNAVAILABLE, so devices resume on another node): the node
    /// is shutting down. Without it a graceful stop would wait on streams that never end.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when device streams must end: [`Gateway::close_streams`] was called, or the log
    /// node stopped by itself (removed from the cluster, its data lost), after which this node
    /// can serve no chat.
    pub async fn until_closing(&self) {
        let mut closing = self.closing.subscribe();
        tokio::select! {
            _ = closing.wait_for(|c| *c) => {}
            () = self.sequencer.node().until_stopped() => {}
        }
    }
}

impl Gateway {
    /// Read something of partition `p`; if it is not there, the replica read may only not have
    /// applied it yet, so read again from a replica that has applied a read index of `p` (asked
    /// of its leader). Costs a quorum round trip only on a miss.
    pub async fn read_fresh<T, Fut>(
        &self,
        p: PartitionId,
        read: impl Fn(StateReader) -> Fut,
    ) -> Result<Option<T>, Status>
    where
        Fut: std::future::Future<Output = Result<Option<T>, ReadError>>,
    {
        self.read_or_fresh(self.reads.clone(), p, read, |status| status)
            .await
    }

    /// A reader that sees, in partition `p`, every write acknowledged before the call.
    pub async fn fresh(&self, p: PartitionId) -> Result<StateReader, Status> {
        let asked = std::time::Instant::now();
        let offset = self.sequencer.read_index(p).await?;
        self.confirmed
            .lock()
            .expect("confirmed lock")
            .insert(p, (asked, offset));
        Ok(self.reads.fresh_at(p, offset))
    }

    /// The read index of `p` this node confirmed with its leader less than `revocation_bound`
    /// ago, if any: it covers every write acknowledged before it was asked, at no round trip.
    pub fn recent_read_index(&self, p: PartitionId) -> Option<LogOffset> {
        self.confirmed
            .lock()
            .expect("confirmed lock")
            .get(&p)
            .filter(|(asked, _)| asked.elapsed() < self.config.revocation_bound)
            .map(|&(_, offset)| offset)
    }

    /// Read something of partition `p` from a replica that has applied a read index confirmed
    /// with `p`'s leader less than `revocation_bound` ago (asking for one now if the last is
    /// older: at most one round trip per partition per bound). A miss is read again at a new read
    /// index. When no leader confirms in time the answer is UNAVAILABLE: a node cut off from
    /// `p`'s leader refuses rather than trust what it last knew.
    pub async fn read_confirmed<T, Fut>(
        &self,
        p: PartitionId,
        read: impl Fn(StateReader) -> Fut,
    ) -> Result<Option<T>, Status>
    where
        Fut: std::future::Future<Output = Result<Option<T>, ReadError>>,
    {
        let reader = match self.recent_read_index(p) {
            Some(offset) => self.reads.fresh_at(p, offset),
            None => self.fresh(p).await.map_err(unconfirmed)?,
        };
        self.read_or_fresh(reader, p, read, unconfirmed).await
    }

    /// `read` from `reader`; on a miss, again from a replica that applied a new read index of
    /// `p` (a failure to get one mapped by `no_index`).
    async fn read_or_fresh<T, Fut>(
        &self,
        reader: StateReader,
        p: PartitionId,
        read: impl Fn(StateReader) -> Fut,
        no_index: fn(Status) -> Status,
    ) -> Result<Option<T>, Status>
    where
        Fut: std::future::Future<Output = Result<Option<T>, ReadError>>,
    {
        if let Some(found) = read(reader).await.map_err(storage)? {
            return Ok(Some(found));
        }
        read(self.fresh(p).await.map_err(no_index)?)
            .await
            .map_err(storage)
    }
}

/// A read index that could not be had, as the caller hears it: the device is not let in.
fn unconfirmed(status: Status) -> Status {
    if status.code() == tonic::Code::Unavailable {
        Status::unavailable(format!(
            "cannot confirm this device's access with its account's partition ({}); try another node",
            status.message()
        ))
    } else {
        status
    }
}

/// A failed read as the gRPC status devices get: UNAVAILABLE when no replica answered (try
/// again), DATA_LOSS for a stored record that does not check, INTERNAL for another storage
/// error.
pub fn storage(e: impl Into<ReadError>) -> Status {
    match e.into() {
        ReadError::Store(e @ (StoreError::Corrupt(_) | StoreError::Decode { .. })) => {
            Status::data_loss(e.to_string())
        }
        ReadError::Store(e) => Status::internal(e.to_string()),
        e @ ReadError::Unavailable { .. } => Status::unavailable(e.to_string()),
    }
}

/// Push each member's tick changes, as the projector announces them, to that member's streams.
/// Ticks are watermarks: a change missed because this task fell behind is superseded by the
/// next one (and the Inbox RPC always has the current value).
async fn push_ticks(hub: Arc<hub::Hub>, mut changes: tokio::sync::broadcast::Receiver<Change>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match changes.recv().await {
            Ok(Change::Ticks {
                chat,
                user,
                delivered_up_to,
                read_up_to,
            }) => hub.push_ticks(user, chat, delivered_up_to, read_up_to),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "tick pushes fell behind the projector")
            }
            Err(RecvError::Closed) => return,
        }
    }
}
