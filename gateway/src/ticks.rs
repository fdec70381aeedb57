//! Live ticks for every chat, on every node. The projector announces tick changes only on the
//! nodes that hold (and so project) a chat's partition; with partitions on R of N nodes, a device
//! on another node would hear of its ticks only from the Inbox. So each node follows, for every
//! partition it does not hold, the tick changes of a node that does (`GatewayPeer.WatchTicks`,
//! the map's voters, hinted leader first) and hands them to its hub as it does its own
//! projector's. When the partition comes to this node the stream is dropped (the local projector
//! takes over); when it leaves, the follower starts. Device sessions start only once every
//! partition's changes reach the hub (`Hub::until_following`), so a device does not miss the
//! changes of a node's first seconds. A change can arrive twice around a switch, or be missed
//! while no stream is open: ticks are watermarks (the next change supersedes, the Inbox has the
//! current value), as with a lagging local subscriber.
//!
//! The serving side is here too: [`serve`] streams the local projector's changes of one
//! partition until the partition leaves this node.

use std::sync::Arc;
use std::time::Duration;

use chat_log::{LogNode, PartitionId, Replicas};
use chat_model::ids::{partition_of, ChatId, ChatSeq, UserId};
use chat_projector::{Change, Projector};
use chat_proto::chat_v1::{self as pb};
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::hub::Hub;
use crate::presence::ClusterPresence;

/// How often a serving stream checks that the partition is still here (a partition with no tick
/// changes would otherwise hold its followers on a node that no longer projects it).
const STILL_HERE_EVERY: Duration = Duration::from_secs(1);
/// Pause before a follower tries the replicas again.
const RETRY: Duration = Duration::from_millis(500);
/// How long a holder may take to open its stream before the next candidate is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// The tick changes of partition `p` that this node's projector announces from now on, as a
/// `WatchTicks` reply stream; FAILED_PRECONDITION if this node does not hold `p`.
pub fn serve(
    node: Arc<LogNode>,
    projector: &Projector,
    p: PartitionId,
) -> Result<ReceiverStream<Result<pb::TickChange, Status>>, Status> {
    let partitions = node.partition_count();
    if p.0 >= partitions {
        return Err(Status::invalid_argument(format!(
            "no partition {p}: the cluster has {partitions}"
        )));
    }
    if !node.hosts(p) {
        return Err(Status::failed_precondition(format!(
            "node {} does not hold {p}",
            node.node_id()
        )));
    }
    let mut changes = projector.subscribe();
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut still_here = tokio::time::interval(STILL_HERE_EVERY);
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = still_here.tick() => {
                    if node.hosts(p) && !node.is_stopped() {
                        continue;
                    }
                    return; // the follower goes to a node that holds it
                }
                _ = tx.closed() => return,
            };
            let change = match change {
                Ok(change) => change,
                // Superseded by later changes; the follower sees those.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            let Change::Ticks {
                chat,
                user,
                delivered_up_to,
                read_up_to,
            } = change;
            if partition_of(chat.0, partitions) != p {
                continue;
            }
            let frame = pb::TickChange {
                user_id: user.0,
                ticks: Some(pb::TickFrame {
                    chat_id: chat.0,
                    delivered_up_to: delivered_up_to.0,
                    read_up_to: read_up_to.0,
                }),
            };
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// For every partition, while this node does not hold it, hand a holder's tick changes to `hub`.
pub fn follow_remote(node: Arc<LogNode>, hub: Arc<Hub>, peers: Arc<ClusterPresence>) {
    for p in 0..node.partition_count() {
        tokio::spawn(follow(
            node.clone(),
            hub.clone(),
            peers.clone(),
            PartitionId(p),
        ));
    }
}

/// Follow `p`'s tick changes at a holder whenever this node does not hold `p`, until it stops.
async fn follow(node: Arc<LogNode>, hub: Arc<Hub>, peers: Arc<ClusterPresence>, p: PartitionId) {
    let replicas = Replicas::new(node.clone());
    let mut hosted = node.watch_hosted();
    // Counted once, when `p`'s changes first reach the hub (sessions wait for every partition).
    let mut counted = false;
    loop {
        if node.is_stopped() {
            return;
        }
        if node.hosts(p) {
            if !std::mem::replace(&mut counted, true) {
                hub.ticks_followed();
            }
            // The local projector's changes reach the hub; wait until `p` leaves.
            tokio::select! {
                changed = hosted.changed() => if changed.is_err() { return },
                _ = node.until_stopped() => return,
            }
            continue;
        }
        tokio::select! {
            () = follow_one_holder(&replicas, &hub, &peers, p, &mut counted) => {}
            _ = hosted.wait_for(|h| h.contains(&p)) => continue,
            _ = node.until_stopped() => return,
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Forward the first holder's stream that opens, until it ends or fails.
async fn follow_one_holder(
    replicas: &Replicas,
    hub: &Hub,
    peers: &ClusterPresence,
    p: PartitionId,
    counted: &mut bool,
) {
    for (id, addr) in replicas.candidates(p) {
        let Some(mut client) = peers.peer(&addr) else {
            continue;
        };
        let request = pb::WatchTicksRequest { partition: p.0 };
        let opened = tokio::time::timeout(OPEN_TIMEOUT, client.watch_ticks(request)).await;
        let opened =
            opened.unwrap_or_else(|_| Err(Status::deadline_exceeded("the holder did not answer")));
        let mut stream = match opened {
            Ok(reply) => {
                tracing::debug!(%p, node = id, "tick changes: following");
                if !std::mem::replace(counted, true) {
                    hub.ticks_followed();
                }
                reply.into_inner()
            }
            Err(status) => {
                tracing::debug!(%p, node = id, %status, "tick changes: refused");
                continue;
            }
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(change) => push(hub, change),
                Err(status) => {
                    tracing::debug!(%p, node = id, %status, "tick changes: stream failed");
                    break;
                }
            }
        }
        return;
    }
}

fn push(hub: &Hub, change: pb::TickChange) {
    if let Some(t) = change.ticks {
        hub.push_ticks(
            UserId(change.user_id),
            ChatId(t.chat_id),
            ChatSeq(t.delivered_up_to),
            ChatSeq(t.read_up_to),
        );
    }
}
