//! Typing indicators: ephemeral, never in the log.
//!
//! A device's `TypingFrame` becomes a `TypingNotice` for the chat's other members: this node's
//! hub offers it to their streams here, and every peer gets it once (`GatewayPeer.Typing`, a
//! short call nobody waits for) for the streams it holds. Nothing is kept: a notice that a busy
//! stream or an unreachable peer misses is simply not shown, and a start lapses by itself after
//! [`TYPING_TTL`] on the device that shows it, so a stop that never arrives costs a few seconds
//! of a stale indicator, never a stuck one. Each stream is rate-limited (`TypingLimiter`) and
//! relays its frames in order ([`Typing`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_model::ids::{ChatId, UserId};
use chat_proto::chat_v1::{self as pb, server_frame};
use tokio::sync::mpsc;
use tonic::{Request, Status};

use crate::auth::Device;
use crate::gateway::{storage, Gateway};
use crate::hub::Push;
use crate::outbound::Outbound;

/// How long a start shows on the other devices unless it is repeated.
pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// A frame repeating a chat's state within this long of the last one is dropped.
const SAME_STATE_EVERY: Duration = Duration::from_secs(1);
/// The most typing frames a stream gets through per second, all chats together.
const FRAMES_PER_SECOND: u32 = 5;
/// How long a peer has to take a notice.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// The most users one relayed notice may name (a chat has at most this many members to tell).
pub(crate) const MAX_RELAYED_USERS: usize = 100_000;

/// Which typing frames of one stream go through.
#[derive(Default)]
struct TypingLimiter {
    /// Per chat, the state last let through and when.
    last: HashMap<ChatId, (bool, Instant)>,
    window_start: Option<Instant>,
    in_window: u32,
}

impl TypingLimiter {
    /// Whether a frame setting `chat` to `typing` at `now` goes through (and counts it).
    fn admit(&mut self, chat: ChatId, typing: bool, now: Instant) -> bool {
        if let Some(&(state, at)) = self.last.get(&chat) {
            if state == typing && now.duration_since(at) < SAME_STATE_EVERY {
                return false;
            }
        }
        let window_start = *self.window_start.get_or_insert(now);
        if now.duration_since(window_start) >= Duration::from_secs(1) {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= FRAMES_PER_SECOND {
            return false;
        }
        self.in_window += 1;
        self.last.insert(chat, (typing, now));
        if self.last.len() > 1024 {
            self.last
                .retain(|_, (_, at)| now.duration_since(*at) < SAME_STATE_EVERY);
        }
        true
    }
}

/// One stream's typing frames: limited, then relayed one after the other (a stop never
/// overtakes the start before it), by a task started with the first one.
pub(crate) struct Typing {
    gw: Arc<Gateway>,
    me: Device,
    out: Outbound,
    limiter: TypingLimiter,
    queue: Option<mpsc::Sender<(ChatId, bool)>>,
}

impl Typing {
    pub(crate) fn new(gw: Arc<Gateway>, me: Device, out: Outbound) -> Typing {
        Typing {
            gw,
            me,
            out,
            limiter: TypingLimiter::default(),
            queue: None,
        }
    }

    /// A `TypingFrame` from the device.
    pub(crate) fn on_frame(&mut self, frame: pb::TypingFrame) {
        let chat = ChatId(frame.chat_id);
        let queue = self.queue.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(relay_in_order(
                self.gw.clone(),
                self.me,
                self.out.clone(),
                rx,
            ));
            tx
        });
        let passed = self.limiter.admit(chat, frame.typing, Instant::now())
            && queue.try_send((chat, frame.typing)).is_ok();
        if !passed {
            metrics::counter!("chatd_typing_frames_dropped_total").increment(1);
        }
    }
}

async fn relay_in_order(
    gw: Arc<Gateway>,
    me: Device,
    out: Outbound,
    mut queue: mpsc::Receiver<(ChatId, bool)>,
) {
    while let Some((chat, typing)) = queue.recv().await {
        if let Err(status) = relay(&gw, me, chat, typing).await {
            out.try_control(server_frame::Kind::Error(pb::ErrorFrame {
                code: status.code() as i32,
                message: status.message().to_string(),
            }));
        }
    }
}

/// Tell `chat`'s other members, on every node, that `me` started or stopped typing.
/// PERMISSION_DENIED when `me` is not a member.
async fn relay(gw: &Gateway, me: Device, chat: ChatId, typing: bool) -> Result<(), Status> {
    let members = gw.reads.members(chat).await.map_err(storage)?;
    if !members.contains(&me.user) {
        return Err(Status::permission_denied(format!(
            "chat {chat} is not one of this user's chats"
        )));
    }
    let to: Vec<UserId> = members.into_iter().filter(|&u| u != me.user).collect();
    let notice = pb::TypingNotice {
        chat_id: chat.0,
        user_id: me.user.0,
        typing,
        ttl_ms: TYPING_TTL.as_millis() as u32,
    };
    gw.hub.offer_ephemeral(&to, &Push::Typing(notice));
    let relayed = pb::TypingRelay {
        notice: Some(notice),
        to_users: to.iter().map(|u| u.0).collect(),
    };
    let calls = gw.presence.peers().into_iter().filter_map(|addr| {
        let mut client = gw.presence.peer(&addr)?;
        let mut request = Request::new(relayed.clone());
        request.set_timeout(PEER_TIMEOUT);
        Some(async move {
            match tokio::time::timeout(PEER_TIMEOUT, client.typing(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::debug!(peer = %addr, %status, "typing notice not relayed")
                }
                Err(_) => tracing::debug!(peer = %addr, "typing notice not relayed in time"),
            }
        })
    });
    futures::future::join_all(calls).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_a_second_and_floods_are_dropped_changes_go_through() {
        let mut limiter = TypingLimiter::default();
        let t0 = Instant::now();
        let chat = ChatId(7);
        assert!(limiter.admit(chat, true, t0));
        assert!(!limiter.admit(chat, true, t0 + Duration::from_millis(500)));
        assert!(limiter.admit(chat, false, t0 + Duration::from_millis(600)));
        assert!(limiter.admit(chat, true, t0 + Duration::from_millis(1700)));
        // Five a second in all: other chats fill the window.
        let t1 = t0 + Duration::from_secs(3);
        for c in 0..5 {
            assert!(limiter.admit(ChatId(100 + c), true, t1));
        }
        assert!(!limiter.admit(ChatId(200), true, t1 + Duration::from_millis(10)));
        assert!(limiter.admit(ChatId(200), true, t1 + Duration::from_secs(1)));
    }
}
