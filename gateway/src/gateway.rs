//! The gateway of one node: what its device sessions share (the write path, reads of chat
//! state wherever it is held, the hub, cluster presence, the projector) and how it starts; plus
//! the read-or-read-index helper and the read-error status the sessions and the service use.

use std::sync::Arc;
use std::time::Duration;

use chat_log::{PartitionId, ReadError};
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
    pub config: GatewayConfig,
    /// Set when the node is going away: every device stream ends (see [`Gateway::until_closing`]).
    closing: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// Start the hub's partition tailers (and the offline notifier when there is a `sink`).
    /// Call inside the tokio runtime. `cluster_secret` authenticates presence lookups to the
    /// other nodes.
    pub fn start(
        sequencer: Arc<Sequencer>,
        projector: Arc<Projector>,
        sink: Option<Arc<dyn PushSink>>,
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
        Ok(Arc::new(Gateway {
            reads: StateReader::new(node),
            presence,
            hub,
            sequencer,
            projector,
            config,
            closing: tokio::sync::watch::Sender::new(false),
        }))
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
        if let Some(found) = read(self.reads.clone()).await.map_err(storage)? {
            return Ok(Some(found));
        }
        read(self.fresh(p).await?).await.map_err(storage)
    }

    /// A reader that sees, in partition `p`, every write acknowledged before the call.
    pub async fn fresh(&self, p: PartitionId) -> Result<StateReader, Status> {
        let offset = self.sequencer.read_index(p).await?;
        Ok(self.reads.fresh_at(p, offset))
    }
}

/// A failed read as the gRPC status devices get: UNAVAILABLE when no replica answered (try
/// again), INTERNAL for a storage error.
pub fn storage(e: impl Into<ReadError>) -> Status {
    match e.into() {
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
