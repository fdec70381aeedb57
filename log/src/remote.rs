//! Reads of partitions this node does not hold, answered by a node that does: the server half
//! of the `Replica` RPC ([`ReplicaService`]) and [`Replicas`], the reads the layers above use,
//! which go to this node's replica when it holds the partition and otherwise to one the
//! partition map names (the leader it hints first, then the other voters).
//!
//! A read sees what the replica that answers has applied, and may trail the leader. A read that
//! must see every write acknowledged before it names a floor: an offset (a read index from the
//! leader, see `chat_sequencer::Sequencer::read_index`) the answering replica must have applied
//! first — this node's waits for it, a remote one waits a little or says UNAVAILABLE and the next
//! is asked.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::log::{LogEvent, StateEntry};
use chat_proto::raft::replica_client::ReplicaClient;
use chat_proto::raft::replica_server::{Replica, ReplicaServer};
use chat_proto::raft::{
    replica_space, ReplicaEvents, ReplicaEventsRequest, ReplicaGetReply, ReplicaGetRequest,
    ReplicaScanReply, ReplicaScanRequest, ReplicaSpace,
};
use futures::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::apply::StateEntries;
use crate::derived::Namespace;
use crate::engine::StoreError;
use crate::network::auth::with_secret;
use crate::node::LogNode;
use crate::types::{LogOffset, NodeId, PartitionId};

/// Most events one read returns.
const MAX_EVENTS: usize = 4096;
/// Most entries one scan returns.
const MAX_ENTRIES: usize = 1 << 20;
/// How long one remote read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica waits to reach a read's floor before it says UNAVAILABLE (well inside
/// `READ_TIMEOUT`, so the reader still has time to ask another).
const FLOOR_WAIT: Duration = Duration::from_secs(2);

/// Why a read of a partition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The replica's storage failed (a corrupt record, a disk error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No replica of the partition answered.
    #[error("no replica of {partition} answered: {detail}")]
    Unavailable {
        partition: PartitionId,
        detail: String,
    },
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Status {
        match e {
            ReadError::Store(e) => Status::data_loss(e.to_string()),
            ReadError::Unavailable { .. } => Status::unavailable(e.to_string()),
        }
    }
}

/// Which data a get or scan reads.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Space {
    /// The command handler's state.
    State,
    /// A namespace of derived data (a read model).
    Derived(Namespace),
}

impl Space {
    fn to_pb(self) -> ReplicaSpace {
        ReplicaSpace {
            space: Some(match self {
                Space::State => replica_space::Space::State(true),
                Space::Derived(ns) => replica_space::Space::Derived(u32::from(ns.0)),
            }),
        }
    }

    fn from_pb(pb: Option<ReplicaSpace>) -> Result<Space, Status> {
        match pb.and_then(|s| s.space) {
            Some(replica_space::Space::State(_)) => Ok(Space::State),
            Some(replica_space::Space::Derived(ns)) => u8::try_from(ns)
                .map(|ns| Space::Derived(Namespace(ns)))
                .map_err(|_| Status::invalid_argument(format!("namespace {ns} is not a byte"))),
            None => Err(Status::invalid_argument("a read must name its space")),
        }
    }
}

fn entries_to_pb(entries: StateEntries) -> Vec<StateEntry> {
    entries
        .into_iter()
        .map(|(key, value)| StateEntry { key, value })
        .collect()
}

fn store_status(e: StoreError) -> Status {
    Status::data_loss(e.to_string())
}

/// Serves `Replica` from this node's replicas.
pub struct ReplicaService {
    node: Arc<LogNode>,
}

impl ReplicaService {
    pub(crate) fn server(node: Arc<LogNode>) -> ReplicaServer<ReplicaService> {
        ReplicaServer::new(ReplicaService { node })
            .max_encoding_message_size(crate::network::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES)
    }

    /// `p`, if this node holds it; otherwise a redirect (or NOT_FOUND for no such partition).
    fn held(&self, p: u32) -> Result<PartitionId, Status> {
        let p = PartitionId(p);
        self.node.replica_here(p)?;
        if !self.node.serves_reads(p) {
            return Err(Status::unavailable(format!(
                "this node's replica of {p} is damaged: ask another replica"
            )));
        }
        Ok(p)
    }

    /// Wait until this replica of `p` has applied `floor` (0: at once).
    async fn reach(&self, p: PartitionId, floor: u64) -> Result<(), Status> {
        if floor == 0 {
            return Ok(());
        }
        match self
            .node
            .wait_for_offset(p, LogOffset(floor), FLOOR_WAIT)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::unavailable(format!(
                "this replica of {p} has not applied offset {floor} yet"
            ))),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ReplicaEvents, Status>> + Send>>;

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn read_events(
        &self,
        request: Request<ReplicaEventsRequest>,
    ) -> Result<Response<ReplicaEvents>, Status> {
        let r = request.into_inner();
        let p = self.held(r.partition)?;
        let events = if r.offsets.is_empty() {
            let limit = (r.limit as usize).clamp(1, MAX_EVENTS);
            self.node
                .read_events(p, LogOffset(r.from_offset), limit)
                .map_err(store_status)?
        } else {
            // The offsets come from an index read elsewhere: hold them before answering.
            let highest = r.offsets.iter().copied().max().unwrap_or(0);
            self.reach(p, highest).await?;
            let mut events = Vec::with_capacity(r.offsets.len().min(MAX_EVENTS));
            for &offset in r.offsets.iter().take(MAX_EVENTS) {
                events.extend(
                    self.node
                        .read_event(p, LogOffset(offset))
                        .map_err(store_status)?,
                );
            }
            events
        };
        let last_offset = self.node.last_offset(p)?.0;
        Ok(Response::new(ReplicaEvents {
            events,
            last_offset,
        }))
    }

    type TailStream = EventStream;

    async fn tail(
        &self,
        request: Request<ReplicaEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        let p = self.held(r.partition)?;
        let node = self.node.clone();
        let events = self.node.subscribe(p, LogOffset(r.from_offset))?;
        let batches = events.ready_chunks(256).map(move |chunk| {
            let events = chunk
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(store_status)?;
            let last_offset = node.last_offset(p).map(|o| o.0).unwrap_or_default();
            Ok(ReplicaEvents {
                events,
                last_offset,
            })
        });
        Ok(Response::new(Box::pin(batches)))
    }

    async fn get(
        &self,
        request: Request<ReplicaGetRequest>,
    ) -> Result<Response<ReplicaGetReply>, Status> {
        let r = request.into_inner();
        let p = self.held(r.partition)?;
        self.reach(p, r.min_offset).await?;
        let value = match Space::from_pb(r.space)? {
            Space::State => self.node.handler_get(p, &r.key),
            Space::Derived(ns) => self.node.derived().get(p, ns, &r.key),
        }
        .map_err(store_status)?;
        Ok(Response::new(ReplicaGetReply {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn scan(
        &self,
        request: Request<ReplicaScanRequest>,
    ) -> Result<Response<ReplicaScanReply>, Status> {
        let r = request.into_inner();
        let p = self.held(r.partition)?;
        self.reach(p, r.min_offset).await?;
        let limit = (r.limit as usize).clamp(1, MAX_ENTRIES);
        let entries = match Space::from_pb(r.space)? {
            Space::State => self.node.handler_scan(p, &r.from, &r.to, limit),
            Space::Derived(ns) => self
                .node
                .derived()
                .scan(p, ns, &r.prefix, &r.from)
                .take(limit)
                .collect(),
        }
        .map_err(store_status)?;
        Ok(Response::new(ReplicaScanReply {
            entries: entries_to_pb(entries),
        }))
    }
}

/// Reads of any partition, from this node's replica or another's; see the module docs.
#[derive(Clone)]
pub struct Replicas {
    node: Arc<LogNode>,
}

impl Replicas {
    pub fn new(node: Arc<LogNode>) -> Self {
        Replicas { node }
    }

    /// The node these reads start from.
    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
    }

    /// Whether to read `p` here: this node holds it as a voter (a learner still catching up
    /// would answer from far behind), or there is no map yet (every node holds every partition),
    /// and its replica is not damaged (or no other could answer).
    fn here(&self, p: PartitionId) -> bool {
        if !self.node.hosts(p) || !self.node.serves_reads(p) {
            return false;
        }
        match self.node.map() {
            Some(map) => map
                .replicas(p)
                .is_none_or(|r| r.voters.contains(&self.node.node_id())),
            None => true,
        }
    }

    /// Wait until this node's replica of `p` has applied `floor`.
    async fn reach_here(&self, p: PartitionId, floor: LogOffset) -> Result<(), ReadError> {
        if floor == LogOffset(0) {
            return Ok(());
        }
        let unavailable = |detail: String| ReadError::Unavailable {
            partition: p,
            detail,
        };
        match self.node.wait_for_offset(p, floor, READ_TIMEOUT).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(unavailable(format!(
                "this node has not applied offset {floor} within {READ_TIMEOUT:?}"
            ))),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// A read of this node's replica: its value, or None when it found the replica damaged and
    /// others may answer instead (the damage is kept in `lost`, the answer if none does).
    fn local<T>(
        &self,
        p: PartitionId,
        result: Result<T, StoreError>,
        lost: &mut Option<StoreError>,
    ) -> Result<Option<T>, ReadError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_damage() && self.node.has_healthy_peers(p) => {
                *lost = Some(e);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The other nodes to ask for `p`, in order: the leader the map hints, then the other
    /// voters (none without a map).
    pub fn candidates(&self, p: PartitionId) -> Vec<(NodeId, String)> {
        let Some(map) = self.node.map() else {
            return Vec::new();
        };
        let Some(r) = map.replicas(p) else {
            return Vec::new();
        };
        r.voters_leader_first()
            .into_iter()
            .filter(|id| *id != self.node.node_id())
            .filter_map(|id| map.addr(id).map(|a| (id, a.to_string())))
            .collect()
    }

    /// Run `call` against the replicas of `p` in turn until one answers.
    async fn remote<T, F, Fut>(&self, p: PartitionId, call: F) -> Result<T, ReadError>
    where
        F: Fn(
            ReplicaClient<Channel>,
            tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut detail = format!("the partition map names no replica of {p}");
        // A replica that answers DATA_LOSS has a damaged record: the next may have it intact.
        let mut lost = None;
        for (id, addr) in self.candidates(p) {
            let (client, secret) = match self.node.replica_client(id, &addr) {
                Ok(c) => c,
                Err(e) => {
                    detail = e;
                    continue;
                }
            };
            match tokio::time::timeout(READ_TIMEOUT, call(client, secret)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) if status.code() == tonic::Code::DataLoss => {
                    lost = Some(StoreError::decode(
                        format!("{p} on node {id}"),
                        status.message(),
                    ));
                }
                Ok(Err(status)) => detail = format!("node {id}: {}", status.message()),
                Err(_) => detail = format!("node {id}: no answer within {READ_TIMEOUT:?}"),
            }
        }
        Err(match lost {
            Some(e) => ReadError::Store(e),
            None => ReadError::Unavailable {
                partition: p,
                detail,
            },
        })
    }

    /// One key of `p`'s handler state or derived data, from a replica that has applied `floor`.
    pub async fn get(
        &self,
        p: PartitionId,
        space: Space,
        key: &[u8],
        floor: LogOffset,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        let mut lost = None;
        if self.here(p) {
            self.reach_here(p, floor).await?;
            let value = match space {
                Space::State => self.node.handler_get(p, key),
                Space::Derived(ns) => self.node.derived().get(p, ns, key),
            };
            if let Some(value) = self.local(p, value, &mut lost)? {
                return Ok(value);
            }
        }
        self.remote(p, |mut client, secret| {
            let request = ReplicaGetRequest {
                partition: p.0,
                space: Some(space.to_pb()),
                key: key.to_vec(),
                min_offset: floor.0,
            };
            async move {
                let reply = client
                    .get(with_secret(request, &secret))
                    .await?
                    .into_inner();
                Ok(reply.found.then_some(reply.value))
            }
        })
        .await
        .map_err(|e| keep_loss(e, lost))
    }

    /// Up to `limit` entries of `p`'s handler state with keys in `from..to`, from a replica
    /// that has applied `floor`.
    pub async fn scan_state(
        &self,
        p: PartitionId,
        from: &[u8],
        to: &[u8],
        limit: usize,
        floor: LogOffset,
    ) -> Result<StateEntries, ReadError> {
        let mut lost = None;
        if self.here(p) {
            self.reach_here(p, floor).await?;
            let entries = self.node.handler_scan(p, from, to, limit);
            if let Some(entries) = self.local(p, entries, &mut lost)? {
                return Ok(entries);
            }
        }
        self.remote(p, |mut client, secret| {
            let request = ReplicaScanRequest {
                partition: p.0,
                space: Some(Space::State.to_pb()),
                from: from.to_vec(),
                to: to.to_vec(),
                prefix: Vec::new(),
                limit: limit.min(MAX_ENTRIES) as u32,
                min_offset: floor.0,
            };
            async move { scan_reply(client.scan(with_secret(request, &secret)).await?) }
        })
        .await
        .map_err(|e| keep_loss(e, lost))
    }

    /// Up to `limit` entries of `p`'s handler state whose keys start with `prefix`, from a
    /// replica that has applied `floor`.
    pub async fn scan_state_prefix(
        &self,
        p: PartitionId,
        prefix: &[u8],
        limit: usize,
        floor: LogOffset,
    ) -> Result<StateEntries, ReadError> {
        let end = crate::codec::prefix_end(prefix);
        self.scan_state(p, prefix, &end, limit, floor).await
    }

    /// Up to `limit` entries of `p`'s derived namespace `ns` whose keys start with `prefix`,
    /// from `from` on, from a replica that has applied `floor`.
    pub async fn scan_derived(
        &self,
        p: PartitionId,
        ns: Namespace,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
        floor: LogOffset,
    ) -> Result<StateEntries, ReadError> {
        if self.here(p) {
            self.reach_here(p, floor).await?;
            return Ok(self
                .node
                .derived()
                .scan(p, ns, prefix, from)
                .take(limit)
                .collect::<Result<_, _>>()?);
        }
        self.remote(p, |mut client, secret| {
            let request = ReplicaScanRequest {
                partition: p.0,
                space: Some(Space::Derived(ns).to_pb()),
                from: from.to_vec(),
                to: Vec::new(),
                prefix: prefix.to_vec(),
                limit: limit.min(MAX_ENTRIES) as u32,
                min_offset: floor.0,
            };
            async move { scan_reply(client.scan(with_secret(request, &secret)).await?) }
        })
        .await
    }

    /// Up to `limit` events of `p` from offset `from`, and the last offset the replica that
    /// answered has applied.
    pub async fn read_events(
        &self,
        p: PartitionId,
        from: LogOffset,
        limit: usize,
    ) -> Result<(Vec<LogEvent>, LogOffset), ReadError> {
        let mut lost = None;
        if self.here(p) {
            if let Ok(last) = self.node.last_offset(p) {
                let events = self.node.read_events(p, from, limit);
                if let Some(events) = self.local(p, events, &mut lost)? {
                    return Ok((events, last));
                }
            }
        }
        self.remote(p, |mut client, secret| {
            let request = ReplicaEventsRequest {
                partition: p.0,
                from_offset: from.0,
                limit: limit.min(MAX_EVENTS) as u32,
                offsets: Vec::new(),
            };
            async move {
                let reply = client.read_events(with_secret(request, &secret)).await?;
                let reply = reply.into_inner();
                Ok((reply.events, LogOffset(reply.last_offset)))
            }
        })
        .await
        .map_err(|e| keep_loss(e, lost))
    }

    /// The events of `p` at `offsets` (those that exist, in the order asked; at most
    /// `MAX_EVENTS`), from a replica that has applied `floor`. The offsets come from a read of
    /// the same partition (an index), so a replica that has applied them holds them.
    pub async fn events_at(
        &self,
        p: PartitionId,
        offsets: &[LogOffset],
        floor: LogOffset,
    ) -> Result<Vec<LogEvent>, ReadError> {
        let offsets = &offsets[..offsets.len().min(MAX_EVENTS)];
        let highest = offsets
            .iter()
            .copied()
            .max()
            .unwrap_or(LogOffset(0))
            .max(floor);
        let mut lost = None;
        if self.here(p) {
            self.reach_here(p, highest).await?;
            let read = offsets
                .iter()
                .map(|&offset| self.node.read_event(p, offset))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>();
            if let Some(events) = self.local(p, read, &mut lost)? {
                return Ok(events);
            }
        }
        self.remote(p, |mut client, secret| {
            let request = ReplicaEventsRequest {
                partition: p.0,
                from_offset: 0,
                limit: 0,
                offsets: offsets.iter().map(|o| o.0).collect(),
            };
            async move {
                let reply = client.read_events(with_secret(request, &secret)).await?;
                Ok(reply.into_inner().events)
            }
        })
        .await
        .map_err(|e| keep_loss(e, lost))
    }

    /// Follow `p`'s committed events from offset `from`, wherever its replicas are: this
    /// node's own while it holds `p`, otherwise a remote replica's `Tail`, resumed from the
    /// next offset at another replica (or this node, once it holds `p`) when a stream ends or
    /// fails. Ends only when the receiver is dropped or the node stops.
    pub fn tail(&self, p: PartitionId, from: LogOffset) -> impl Stream<Item = LogEvent> + Send {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let replicas = self.clone();
        tokio::spawn(async move {
            let mut next = from.max(LogOffset(1));
            loop {
                if replicas.node.is_stopped() {
                    return;
                }
                let follow = async {
                    if replicas.node.hosts(p) && replicas.node.serves_reads(p) {
                        replicas.follow_local(p, &mut next, &tx).await
                    } else {
                        replicas.follow_remote(p, &mut next, &tx).await
                    }
                };
                let followed = tokio::select! {
                    followed = follow => followed,
                    _ = replicas.node.until_stopped() => return,
                };
                if followed.is_err() {
                    return; // the receiver is gone
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Forward this node's events of `p` until its subscription ends; Err once the receiver
    /// is gone.
    async fn follow_local(
        &self,
        p: PartitionId,
        next: &mut LogOffset,
        tx: &tokio::sync::mpsc::Sender<LogEvent>,
    ) -> Result<(), ()> {
        let Ok(mut events) = self.node.subscribe(p, *next) else {
            return Ok(());
        };
        while let Some(item) = events.next().await {
            let Ok(event) = item else {
                return Ok(());
            };
            *next = LogOffset(event.offset + 1);
            tx.send(event).await.map_err(drop)?;
        }
        Ok(())
    }

    /// Forward a remote replica's `Tail` of `p` until it ends or fails (or this node comes to
    /// hold `p`); Err once the receiver is gone.
    async fn follow_remote(
        &self,
        p: PartitionId,
        next: &mut LogOffset,
        tx: &tokio::sync::mpsc::Sender<LogEvent>,
    ) -> Result<(), ()> {
        for (id, addr) in self.candidates(p) {
            let (mut client, secret) = match self.node.replica_client(id, &addr) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%p, node = id, error = %e, "tail: no client");
                    continue;
                }
            };
            let request = ReplicaEventsRequest {
                partition: p.0,
                from_offset: next.0,
                limit: 0,
                offsets: Vec::new(),
            };
            let stream = match client.tail(with_secret(request, &secret)).await {
                Ok(stream) => stream,
                Err(status) => {
                    tracing::debug!(%p, node = id, %status, "tail: refused");
                    continue;
                }
            };
            let mut stream = stream.into_inner();
            let mut hosted = self.node.watch_hosted();
            loop {
                let batch = tokio::select! {
                    batch = stream.next() => batch,
                    _ = hosted.wait_for(|h| h.contains(&p)) => return Ok(()),
                };
                let batch = match batch {
                    Some(Ok(batch)) => batch,
                    Some(Err(status)) => {
                        tracing::debug!(%p, node = id, %status, "tail: stream failed");
                        break;
                    }
                    None => break,
                };
                for event in batch.events {
                    // A resumed stream starts where this one stopped: nothing twice.
                    if event.offset < next.0 {
                        continue;
                    }
                    *next = LogOffset(event.offset + 1);
                    tx.send(event).await.map_err(drop)?;
                }
            }
            return Ok(());
        }
        Ok(())
    }
}

/// A read that found this node's replica damaged and no other replica to answer: the damage
/// is the answer (DATA_LOSS), not "unavailable".
fn keep_loss(e: ReadError, lost: Option<StoreError>) -> ReadError {
    match (e, lost) {
        (ReadError::Unavailable { .. }, Some(lost)) => ReadError::Store(lost),
        (e, _) => e,
    }
}

fn scan_reply(reply: Response<ReplicaScanReply>) -> Result<StateEntries, Status> {
    Ok(reply
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect())
}
