//! Presence pushed to devices, last seen kept across restarts, and hidden presence.
//!
//! A user's home node (see `registry.rs`) is the one place that sees the user's first stream
//! anywhere open and its last one close: the registry reports each such [`Transition`], and the
//! task started here, at the home, (1) records the last seen in the user's partition on going
//! offline (`SetPresence`, so a restart forgets nothing), and (2) unless the user hides its
//! presence, tells every node (`GatewayPeer.PresenceChanged`; its own hub directly), whose hub
//! offers a `PresenceFrame` to the streams watching that user. A stream watches the users it
//! shares chats with once its device sends `PresenceSubscribe` (see [`subscribe`]), and gets
//! their presence as it is first. Best effort like typing: a node that does not answer within
//! [`PEER_TIMEOUT`] misses the change, and a device can always ask `Presence`.
//!
//! [`as_seen_by`] is what everyone but the user sees: nothing of a hidden user, and the stored
//! last seen when no node remembers a later one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chat_model::ids::UserId;
use chat_model::StateReader;
use chat_proto::chat_v1::{self as pb, server_frame};
use chat_sequencer::Sequencer;
use tokio::sync::mpsc;
use tonic::{Request, Status};

use crate::gateway::{storage, Gateway};
use crate::hub::{Hub, Presence, SessionHandle};
use crate::outbound::Outbound;
use crate::presence::ClusterPresence;
use crate::registry::Transition;

/// How long a peer has to take a presence change.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// The most users one stream watches (the users it shares chats with, up to this many).
const MAX_WATCHED: usize = 10_000;

/// Start publishing the transitions of the users homed at this node.
pub(crate) fn start(
    sequencer: Arc<Sequencer>,
    reads: StateReader,
    hub: Arc<Hub>,
    presence: Arc<ClusterPresence>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    presence.registry().set_transitions(tx);
    tokio::spawn(publish(sequencer, reads, hub, presence, rx));
}

async fn publish(
    sequencer: Arc<Sequencer>,
    reads: StateReader,
    hub: Arc<Hub>,
    presence: Arc<ClusterPresence>,
    mut transitions: mpsc::UnboundedReceiver<Transition>,
) {
    while let Some(t) = transitions.recv().await {
        if !t.online {
            let sequencer = sequencer.clone();
            tokio::spawn(async move {
                if let Err(e) = sequencer.set_presence(t.user, None, t.at_ms).await {
                    tracing::debug!(user = %t.user, error = %e, "last seen not recorded");
                }
            });
        }
        match reads.user(t.user).await {
            Ok(Some(record)) if !record.presence_hidden => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(user = %t.user, error = %e, "presence change not published");
                continue;
            }
        }
        let frame = pb::PresenceFrame {
            user_id: t.user.0,
            online: t.online,
            last_seen_ms: if t.online { 0 } else { t.at_ms },
        };
        hub.offer_presence(&frame);
        let calls = presence.peers().into_iter().filter_map(|addr| {
            let mut client = presence.peer(&addr)?;
            let mut request = Request::new(frame);
            request.set_timeout(PEER_TIMEOUT);
            Some(async move {
                let answer = tokio::time::timeout(PEER_TIMEOUT, client.presence_changed(request));
                if !matches!(answer.await, Ok(Ok(_))) {
                    tracing::debug!(peer = %addr, "presence change not delivered");
                }
            })
        });
        futures::future::join_all(calls).await;
    }
}

/// `users`' presence as `viewer` may see it: `None` for a user who hides it (from anyone but
/// itself); an offline user's last seen is the latest of what the nodes remember and what its
/// partition recorded.
pub(crate) async fn as_seen_by(
    gw: &Gateway,
    viewer: UserId,
    users: &[UserId],
) -> Result<Vec<Option<Presence>>, Status> {
    let found = gw.presence.lookup(users).await;
    let records = futures::future::try_join_all(users.iter().map(|&u| gw.reads.user(u)))
        .await
        .map_err(storage)?;
    Ok(users
        .iter()
        .zip(found)
        .zip(records)
        .map(|((&user, mut p), record)| {
            let record = record.unwrap_or_default();
            if record.presence_hidden && user != viewer {
                return None;
            }
            if !p.online() {
                p.last_seen_ms = p.last_seen_ms.max(record.last_seen_ms);
            }
            Some(p)
        })
        .collect())
}

/// A device's `PresenceSubscribe`: watch the users `viewer` shares chats with, and send each
/// one's presence as it is now.
pub(crate) async fn subscribe(
    gw: Arc<Gateway>,
    viewer: UserId,
    handle: Arc<SessionHandle>,
    out: Outbound,
) -> Result<(), Status> {
    let chats = gw.reads.user_chats(viewer).await.map_err(storage)?;
    let mut users = BTreeSet::new();
    for chat in chats {
        let members = gw.reads.members(chat).await.map_err(storage)?;
        users.extend(members.into_iter().filter(|&u| u != viewer));
        if users.len() >= MAX_WATCHED {
            break;
        }
    }
    let users: Vec<UserId> = users.into_iter().take(MAX_WATCHED).collect();
    // Watch first, then read: a change between the two arrives after the first frame.
    gw.hub.watch_presence(&handle, &users);
    for (user, p) in users.iter().zip(as_seen_by(&gw, viewer, &users).await?) {
        // Hidden: nothing to show, now or later.
        let Some(p) = p else { continue };
        let frame = pb::PresenceFrame {
            user_id: user.0,
            online: p.online(),
            last_seen_ms: if p.online() { 0 } else { p.last_seen_ms },
        };
        out.data(server_frame::Kind::Presence(frame)).await?;
    }
    Ok(())
}
