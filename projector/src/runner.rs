//! Runs every projection over every partition of the node, and rebuilds them on request.
//!
//! One task per (partition, projection) follows the partition's event log from the live
//! checkpoint, a batch of events at a time: it applies the batch to a transaction and commits
//! output and checkpoint together, then announces the batch's [`Change`]s to subscribers (the
//! gateway). A rebuild runs in the same task, interleaved with live batches: a second cursor
//! replays the log from offset 0 into a new generation until it reaches the live checkpoint,
//! then the new generation becomes live in one write. Readers never see a half-built copy, and
//! the live copy keeps serving and advancing meanwhile.

use chat_model::ids::{ChatId, ChatSeq, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chat_log::{LogNode, LogOffset, PartitionId, StoreError};
use chat_proto::log::LogEvent;
use tokio::sync::{broadcast, Notify};

use crate::store::{Cursor, ProjectionId, ProjectionStore, Txn};

/// Projection ids used by earlier releases and no longer (1: `chats` with all of a chat's marks
/// in one record). Their keys are dropped at start.
const RETIRED: [ProjectionId; 1] = [ProjectionId(1)];

/// Events applied per batch (one write batch each).
const BATCH: usize = 1024;

/// What a projection announces when its live copy changes (the gateway pushes these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A member's ticks in a chat moved: every other member has delivered / read up to these
    /// seqs, so the member's own messages up to them are delivered / read.
    Ticks {
        chat: ChatId,
        user: UserId,
        delivered_up_to: ChatSeq,
        read_up_to: ChatSeq,
    },
}

/// A read model derived from a partition's events.
pub trait Projection: Send + Sync + 'static {
    /// Stable id: the projection's namespace in the derived data. Never reuse one for a
    /// different projection.
    fn id(&self) -> ProjectionId;
    fn name(&self) -> &'static str;
    /// Apply one event, deterministically: only the event and the projection's own keys.
    fn apply(
        &self,
        event: &LogEvent,
        txn: &mut Txn<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<(), StoreError>;
}

/// Where one projection of one partition stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub partition: PartitionId,
    pub projection: &'static str,
    pub checkpoint: u64,
    pub generation: u32,
    /// The rebuild's checkpoint while one runs.
    pub rebuilding: Option<u64>,
}

/// The projections of one node.
pub struct Projector {
    node: Arc<LogNode>,
    store: ProjectionStore,
    projections: Vec<Arc<dyn Projection>>,
    changes: broadcast::Sender<Change>,
    wake: HashMap<(u32, ProjectionId), Arc<Notify>>,
}

impl Projector {
    /// Start projecting every partition `node` holds. Call inside the tokio runtime.
    pub fn start(node: Arc<LogNode>, projections: Vec<Arc<dyn Projection>>) -> Arc<Projector> {
        let store = ProjectionStore::new(node.derived());
        for p in 0..node.partition_count() {
            for retired in RETIRED {
                match store.drop_retired(PartitionId(p), retired) {
                    Ok(true) => tracing::info!(
                        partition = p,
                        projection = retired.0,
                        "dropped the keys of a retired projection"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(partition = p, projection = retired.0, error = %e,
                        "dropping the keys of a retired projection"),
                }
            }
        }
        let (changes, _) = broadcast::channel(4096);
        let mut wake = HashMap::new();
        for p in 0..node.partition_count() {
            for proj in &projections {
                wake.insert((p, proj.id()), Arc::new(Notify::new()));
            }
        }
        let projector = Arc::new(Projector {
            node,
            store,
            projections,
            changes,
            wake,
        });
        // The partitions this node holds, as they move here and away: a partition moved here
        // is projected from its first event (its derived data was deleted with the replica).
        let runner = projector.clone();
        projector.node.spawn_per_partition(move |p| {
            // A task per projection (they run in parallel); the partition's task ends when all
            // of them have.
            let runs: Vec<_> = runner
                .projections
                .iter()
                .map(|proj| tokio::spawn(run(runner.clone(), p, proj.clone())))
                .collect();
            async move {
                for run in runs {
                    let _ = run.await;
                }
            }
        });
        tokio::spawn(publish_lag(Arc::downgrade(&projector)));
        projector
    }

    pub fn store(&self) -> &ProjectionStore {
        &self.store
    }

    /// Changes of the live copies from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn projection(&self, name: &str) -> Option<&Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    /// Rebuild projection `name` of partition `p` by replay from offset 0, while serving.
    pub fn rebuild(&self, p: PartitionId, name: &str) -> Result<(), String> {
        let proj = self
            .projection(name)
            .ok_or_else(|| format!("no projection named {name:?} (have {:?})", self.names()))?;
        if p.0 >= self.node.partition_count() {
            return Err(format!("partition {} does not exist", p.0));
        }
        self.store
            .request_rebuild(p, proj.id())
            .map_err(|e| e.to_string())?;
        if let Some(w) = self.wake.get(&(p.0, proj.id())) {
            w.notify_one();
        }
        Ok(())
    }

    pub fn status(&self) -> Result<Vec<ProjectionStatus>, StoreError> {
        let mut out = Vec::new();
        for p in self.node.hosted() {
            for proj in &self.projections {
                let live = self.store.live(p, proj.id())?;
                out.push(ProjectionStatus {
                    partition: p,
                    projection: proj.name(),
                    checkpoint: live.checkpoint,
                    generation: live.generation,
                    rebuilding: self.store.rebuilding(p, proj.id())?.map(|c| c.checkpoint),
                });
            }
        }
        Ok(out)
    }

    /// sha256 of the live copy of projection `name` of `p`, with its checkpoint.
    pub fn digest(&self, p: PartitionId, name: &str) -> Result<(u64, [u8; 32]), String> {
        let proj = self
            .projection(name)
            .ok_or_else(|| format!("no projection named {name:?}"))?;
        let view = self.store.read(p, proj.id()).map_err(|e| e.to_string())?;
        Ok((
            view.cursor.checkpoint,
            view.digest().map_err(|e| e.to_string())?,
        ))
    }
}

/// Every few seconds, how many events each projection of each partition this node holds has
/// still to apply (`chatd_projection_lag_events`), until the projector is gone.
async fn publish_lag(projector: std::sync::Weak<Projector>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let Some(projector) = projector.upgrade() else {
            return;
        };
        for p in projector.node.hosted() {
            let Ok(last) = projector.node.last_offset(p) else {
                continue;
            };
            for proj in &projector.projections {
                let Ok(live) = projector.store.live(p, proj.id()) else {
                    continue;
                };
                let lag = last.0.saturating_sub(live.checkpoint);
                metrics::gauge!("chatd_projection_lag_events",
                    "partition" => p.0.to_string(), "projection" => proj.name())
                .set(lag as f64);
            }
        }
    }
}

/// Apply up to [`BATCH`] events after `cursor` (and not past `limit`) to `generation`; the new
/// cursor and whether the batch was full, or None if there was nothing to apply.
fn step(
    projector: &Projector,
    p: PartitionId,
    proj: &dyn Projection,
    cursor: Cursor,
    limit: Option<u64>,
    rebuild: bool,
) -> Result<Option<(Cursor, Vec<Change>, bool)>, StoreError> {
    let max = match limit {
        Some(l) if l <= cursor.checkpoint => return Ok(None),
        Some(l) => ((l - cursor.checkpoint) as usize).min(BATCH),
        None => BATCH,
    };
    let events = projector
        .node
        .read_events(p, LogOffset(cursor.checkpoint + 1), max)?;
    let Some(last) = events.last().map(|e| e.offset) else {
        return Ok(None);
    };
    let full = events.len() == max;
    let mut txn = projector.store.txn(p, proj.id(), cursor.generation);
    let mut changes = Vec::new();
    for event in &events {
        proj.apply(event, &mut txn, &mut changes)?;
    }
    let next = Cursor {
        generation: cursor.generation,
        checkpoint: last,
    };
    projector.store.commit(txn, rebuild, next)?;
    Ok(Some((next, changes, full)))
}

/// One (partition, projection) until the node stops.
///
/// Between batches the task waits on the partition's applied offset, which lives in memory, so
/// a quiet partition costs no storage reads; the stored cursors are read once per batch.
async fn run(projector: Arc<Projector>, p: PartitionId, proj: Arc<dyn Projection>) {
    let wake = projector.wake[&(p.0, proj.id())].clone();
    // What the last round left behind: the live checkpoint, if nothing more is known to be due.
    let mut caught_up: Option<u64> = None;
    // Whether a rebuild may be under way (one may be stored from before a restart; a request
    // wakes the task).
    let mut check_rebuild = true;
    loop {
        if projector.store.holds_growth() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        if let Some(checkpoint) = caught_up {
            let next = LogOffset(checkpoint + 1);
            tokio::select! {
                r = projector.node.wait_for_offset(p, next, Duration::from_secs(1)) => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = wake.notified() => check_rebuild = true,
            }
        }
        match round(&projector, p, proj.as_ref(), check_rebuild) {
            Ok(r) => {
                check_rebuild = r.rebuilding;
                // More may be stored already (a full batch, or a rebuild to continue).
                caught_up = (!r.full && !r.rebuilding).then_some(r.live);
                if caught_up.is_none() {
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                tracing::error!(%p, projection = proj.name(), error = %e, "projection failed; retrying in 1 s");
                caught_up = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What one round did.
struct Round {
    /// The live checkpoint after the round.
    live: u64,
    /// The live batch was full: more events may be waiting.
    full: bool,
    /// A rebuild is under way.
    rebuilding: bool,
}

/// One live batch and, during a rebuild (looked for only if `check_rebuild`), one rebuild batch.
fn round(
    projector: &Projector,
    p: PartitionId,
    proj: &dyn Projection,
    check_rebuild: bool,
) -> Result<Round, StoreError> {
    let live = projector.store.live(p, proj.id())?;
    let (live, full) = match step(projector, p, proj, live, None, false)? {
        Some((next, changes, full)) => {
            for c in changes {
                let _ = projector.changes.send(c);
            }
            (next, full)
        }
        None => (live, false),
    };
    let mut rebuilding = false;
    if !check_rebuild {
        // Nothing to look up.
    } else if let Some(shadow) = projector.store.rebuilding(p, proj.id())? {
        if shadow.checkpoint >= live.checkpoint {
            projector.store.finish_rebuild(p, proj.id(), shadow)?;
            tracing::info!(%p, projection = proj.name(), checkpoint = shadow.checkpoint,
                generation = shadow.generation, "projection rebuilt");
        } else {
            step(projector, p, proj, shadow, Some(live.checkpoint), true)?;
        }
        // Go round again: to continue, or to serve from the generation just made live.
        rebuilding = true;
    }
    Ok(Round {
        live: live.checkpoint,
        full,
        rebuilding,
    })
}
