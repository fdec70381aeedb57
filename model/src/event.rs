//! A chat event as read back from the log: the `chat.v1.ChatEvent` a command emitted, decoded,
//! with where and when it happened. Everything that follows the log (the hub, projections,
//! follow-ups, history, expiry) reads events through [`ChatEventAt`] instead of checking the
//! kind and decoding the payload itself.

use chat_log::LogOffset;
use chat_proto::chat_v1::{self as pb, chat_event};
use chat_proto::log::LogEvent;
use prost::Message;

/// The `LogEvent.kind` of chat events (raw records appended through the admin API are 0).
pub const CHAT_EVENT_KIND: u32 = 1;

/// A chat event at its offset.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatEventAt {
    pub offset: LogOffset,
    /// The Raft index of the command that emitted it.
    pub raft_index: u64,
    /// The leader's time of the proposal (ms since the Unix epoch): the event's time on every
    /// replica.
    pub timestamp_ms: u64,
    pub kind: chat_event::Kind,
}

/// A log event of the chat kind whose payload does not decode.
#[derive(Debug, thiserror::Error)]
#[error("chat event at offset {offset} does not decode: {source}")]
pub struct UndecodableEvent {
    pub offset: u64,
    pub source: prost::DecodeError,
}

impl ChatEventAt {
    /// The chat event in `event`: `None` for events of other kinds and for a chat event with no
    /// kind set (nothing to act on), an error if the payload does not decode.
    pub fn decode(event: &LogEvent) -> Result<Option<ChatEventAt>, UndecodableEvent> {
        if event.kind != CHAT_EVENT_KIND {
            return Ok(None);
        }
        let decoded =
            pb::ChatEvent::decode(event.payload.as_ref()).map_err(|source| UndecodableEvent {
                offset: event.offset,
                source,
            })?;
        Ok(decoded.kind.map(|kind| ChatEventAt {
            offset: LogOffset(event.offset),
            raft_index: event.raft_index,
            timestamp_ms: event.timestamp_ms,
            kind,
        }))
    }

    /// The message in `event`, if it is a chat message event.
    pub fn message(event: &LogEvent) -> Result<Option<pb::Message>, UndecodableEvent> {
        Ok(Self::decode(event)?.and_then(|e| match e.kind {
            chat_event::Kind::Message(m) => Some(m),
            _ => None,
        }))
    }
}

/// The payload bytes of a chat event of `kind` (what a command emits into the log).
pub fn encode(kind: chat_event::Kind) -> Vec<u8> {
    pb::ChatEvent { kind: Some(kind) }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_event(kind: u32, payload: Vec<u8>) -> LogEvent {
        LogEvent {
            offset: 7,
            raft_index: 9,
            timestamp_ms: 1234,
            payload: payload.into(),
            kind,
        }
    }

    #[test]
    fn chat_events_decode_with_their_position_and_others_are_skipped() {
        let message = pb::Message {
            chat_id: 3,
            seq: 2,
            ..Default::default()
        };
        let bytes = encode(chat_event::Kind::Message(message.clone()));
        let at = ChatEventAt::decode(&log_event(CHAT_EVENT_KIND, bytes.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(
            (at.offset, at.raft_index, at.timestamp_ms),
            (LogOffset(7), 9, 1234)
        );
        assert_eq!(at.kind, chat_event::Kind::Message(message.clone()));
        assert_eq!(
            ChatEventAt::message(&log_event(CHAT_EVENT_KIND, bytes.clone())).unwrap(),
            Some(message)
        );

        assert!(
            ChatEventAt::decode(&log_event(0, bytes)).unwrap().is_none(),
            "a raw record"
        );
        assert!(ChatEventAt::decode(&log_event(CHAT_EVENT_KIND, vec![]))
            .unwrap()
            .is_none());
        let err = ChatEventAt::decode(&log_event(CHAT_EVENT_KIND, vec![0xff, 0xff])).unwrap_err();
        assert!(err.to_string().contains("offset 7"), "{err}");
    }
}
