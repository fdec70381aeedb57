//! Proposal batching: concurrent proposals to one partition are coalesced into one Raft entry.
//!
//! Each partition has a batcher task. It takes the first waiting proposal, then everything else
//! already queued (up to a cap), and submits them as one `client_write`; up to `MAX_IN_FLIGHT`
//! writes per partition are outstanding at once. While they are, new proposals queue up and form
//! the next, larger batch — so batches grow with load and a lone proposal is never held back.
//! Each caller gets back the outcomes of its own commands.
//!
//! The queue is bounded, in proposals and in bytes (`[raft] proposal_queue` and
//! `proposal_queue_bytes`): a proposal that finds it full is refused at once with
//! [`ProposeError::Overloaded`] — nothing of it was proposed — instead of waiting in memory that
//! grows while the partition cannot commit (a leader without its quorum, a slow disk). The bytes
//! stay counted until the batch they went into is answered, so they bound what is in flight too.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::ProposeError;
use crate::store::TypeConfig;
use crate::types::{PartitionId, Proposal, ProposalOutcome};

/// Most commands one Raft entry carries.
const MAX_BATCH_COMMANDS: usize = 4096;
/// Most bytes of commands one Raft entry carries (a batch may exceed it by one proposal).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Raft writes per partition outstanding at once. One is best measured (docs/benchmarks.md):
/// while it is in flight the next batch fills, so batches grow with load instead of fragmenting.
const MAX_IN_FLIGHT: usize = 1;

type Reply = oneshot::Sender<Result<ProposalOutcome, ProposeError>>;

struct Pending {
    commands: Vec<Vec<u8>>,
    reply: Reply,
    /// This proposal's share of the byte bound, given back once it is answered.
    bytes_held: OwnedSemaphorePermit,
}

/// How much may wait for one partition's Raft writes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueBounds {
    pub(crate) proposals: usize,
    pub(crate) bytes: usize,
}

/// The handle callers propose through.
#[derive(Clone)]
pub(crate) struct Batcher {
    partition: PartitionId,
    tx: mpsc::Sender<Pending>,
    bytes: Arc<Semaphore>,
    bounds: QueueBounds,
}

impl Batcher {
    pub(crate) fn spawn(
        partition: PartitionId,
        raft: Raft<TypeConfig>,
        bounds: QueueBounds,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(bounds.proposals.max(1));
        tokio::spawn(run(partition, raft, rx));
        Batcher {
            partition,
            tx,
            bytes: Arc::new(Semaphore::new(bounds.bytes)),
            bounds,
        }
    }

    pub(crate) async fn propose(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Result<ProposalOutcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || ProposeError::Stopped {
            partition: self.partition,
            message: "the partition's batcher has stopped".into(),
        };
        let overloaded = |what: &str| {
            metrics::counter!("chatd_proposals_refused_total", "reason" => "queue_full")
                .increment(1);
            ProposeError::Overloaded {
                partition: self.partition,
                message: format!(
                    "its queue holds {what} waiting for Raft (the bound); nothing of this call was proposed"
                ),
            }
        };
        // A proposal bigger than the whole byte bound takes all of it: it goes alone, when
        // nothing else is waiting, instead of never.
        let weight = size(&commands).clamp(1, self.bounds.bytes.max(1)) as u32;
        let bytes = match self.bytes.clone().try_acquire_many_owned(weight) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err(overloaded(&format!("{} bytes", self.bounds.bytes)))
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(stopped()),
        };
        let pending = Pending {
            commands,
            reply,
            bytes_held: bytes,
        };
        match self.tx.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(overloaded(&format!("{} proposals", self.bounds.proposals)))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
        }
        rx.await.map_err(|_| stopped())?
    }
}

async fn run(partition: PartitionId, raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Everything that queued while we waited for a permit joins this batch.
        let (mut count, mut bytes) = (first.commands.len(), size(&first.commands));
        let mut group = vec![first];
        while count < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            count += next.commands.len();
            bytes += size(&next.commands);
            group.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            write_batch(partition, &raft, group).await;
            drop(permit);
        });
    }
}

fn size(commands: &[Vec<u8>]) -> usize {
    commands.iter().map(Vec::len).sum()
}

/// Submit one batch and hand each caller the outcomes of its commands.
async fn write_batch(partition: PartitionId, raft: &Raft<TypeConfig>, group: Vec<Pending>) {
    let mut counts = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut commands = Vec::new();
    // Held until the write is answered: the bytes count as queued until then.
    let mut held = Vec::with_capacity(group.len());
    for p in group {
        counts.push(p.commands.len());
        commands.extend(p.commands);
        replies.push(p.reply);
        held.push(p.bytes_held);
    }
    let proposal = Proposal {
        timestamp_ms: now_ms(),
        commands,
    };
    let result = raft.client_write(proposal).await;
    // The room is given back before the callers hear: one that proposes again at once finds it.
    drop(held);
    match result {
        Ok(resp) => {
            let raft_index = resp.data.raft_index;
            let mut outcomes = resp.data.outcomes.into_iter();
            for (reply, n) in replies.into_iter().zip(counts) {
                let mine = outcomes.by_ref().take(n).collect();
                let _ = reply.send(Ok(ProposalOutcome {
                    raft_index,
                    outcomes: mine,
                }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(propose_error(partition, &e)));
            }
        }
    }
}

fn propose_error(
    partition: PartitionId,
    e: &RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>,
) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(fwd)) => ProposeError::not_leader(
            partition,
            fwd.leader_id,
            fwd.leader_node.as_ref().map(|n| n.addr.clone()),
        ),
        other => ProposeError::Stopped {
            partition,
            message: other.to_string(),
        },
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
