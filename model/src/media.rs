//! Media object keys: the id of a blob stored beside the log (docs/protocol.md, "Media").
//!
//! A key says where its bytes live and who uploaded them, `n<node>/u<user>/<32 hex>`:
//! - the node whose media store holds it (the embedded store keeps blobs on the node that took
//!   the upload; with S3 the node is the one that deletes it when it is released);
//! - the uploading user: a message releases (gets deleted) only the blobs its own sender
//!   uploaded, so quoting someone else's key in a message and deleting it cannot destroy their
//!   media;
//! - 128 random bits: a key cannot be guessed, it is handed on in messages.

use std::fmt;

use chat_log::NodeId;

use crate::ids::UserId;

/// A parsed media object key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub node: NodeId,
    pub uploader: UserId,
    /// The random part, 32 lowercase hex digits.
    pub id: String,
}

impl ObjectKey {
    /// A new key for a blob `uploader` puts in `node`'s store, with `random` as its id.
    pub fn new(node: NodeId, uploader: UserId, random: u128) -> ObjectKey {
        ObjectKey {
            node,
            uploader,
            id: format!("{random:032x}"),
        }
    }

    /// `text` as a key, or why it is not one.
    pub fn parse(text: &str) -> Result<ObjectKey, String> {
        let bad = || format!("{text:?} is not a media object key (n<node>/u<user>/<32 hex>)");
        let mut parts = text.split('/');
        let (Some(node), Some(user), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let number = |s: &str, prefix: char| {
            s.strip_prefix(prefix)
                .filter(|d| !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
        };
        let (Some(node), Some(user)) = (number(node, 'n'), number(user, 'u')) else {
            return Err(bad());
        };
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok(ObjectKey {
            node,
            uploader: UserId(user),
            id: id.to_string(),
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}/u{}/{}", self.node, self.uploader, self.id)
    }
}

/// The keys among `media` that `sender` uploaded: what deleting or expiring its message frees.
pub fn released_by<'a>(
    sender: UserId,
    media: impl IntoIterator<Item = &'a chat_proto::chat_v1::MediaRef>,
) -> Vec<String> {
    media
        .into_iter()
        .filter(|m| ObjectKey::parse(&m.object_key).is_ok_and(|k| k.uploader == sender))
        .map(|m| m.object_key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_malformed_ones_are_refused() {
        let key = ObjectKey::new(3, UserId(42), 0xabc);
        let text = key.to_string();
        assert_eq!(text, "n3/u42/00000000000000000000000000000abc");
        assert_eq!(ObjectKey::parse(&text).unwrap(), key);
        for bad in [
            "",
            "n3/u42",
            "n3/u42/00000000000000000000000000000abc/x",
            "x3/u42/00000000000000000000000000000abc",
            "n/u42/00000000000000000000000000000abc",
            "n3/u42/00000000000000000000000000000ABC",
            "n3/u42/0abc",
            "n3/u42/../../../../etc/passwd000000000",
            "n99999999999999999999/u1/00000000000000000000000000000abc",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_message_releases_only_what_its_sender_uploaded() {
        let media = |key: String| chat_proto::chat_v1::MediaRef {
            object_key: key,
            ..Default::default()
        };
        let own = ObjectKey::new(1, UserId(7), 1).to_string();
        let quoted = ObjectKey::new(1, UserId(8), 2).to_string();
        let list = [media(own.clone()), media(quoted), media("opaque".into())];
        assert_eq!(released_by(UserId(7), &list), vec![own]);
    }
}
