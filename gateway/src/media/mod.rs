//! Media beside the log: devices upload and download blobs through short-lived presigned URLs;
//! a message carries only a [`pb::MediaRef`] (docs/protocol.md, "Media").
//!
//! - [`BlobStore`]: where blobs live, behind a narrow trait — sign an upload URL for an exact
//!   size and sha256, sign a download URL, delete. Two stores:
//!   - [`files`]: the embedded default, files under the node's data dir served by chatd over HTTP
//!     (range requests, the size and checksum checked on upload). A blob lives on the node that
//!     took its upload; any node hands out download URLs for it (asking that node to sign them).
//!   - [`s3`]: an S3-compatible bucket shared by every node, presigned by `object_store`.
//! - [`Media`]: the gateway's side — grants for the `CreateUpload`/`CreateDownload` calls.
//! - [`reaper`]: deletes the blobs whose messages expired or were deleted (`MediaReleased`
//!   events in the log), each on the node that owns its key.

pub mod files;
pub mod reaper;
pub mod s3;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use chat_log::NodeId;
use chat_model::ids::UserId;
use chat_model::media::ObjectKey;
use chat_proto::chat_v1 as pb;
use tonic::{Request, Status};

pub(crate) use crate::hub::now_ms;
use crate::presence::ClusterPresence;

/// Media settings (the `[media]` table of chatd's config).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Largest blob a device may upload.
    pub max_bytes: u64,
    /// How long an upload or download URL stays valid.
    pub url_ttl: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_bytes: 100 * 1024 * 1024,
            url_ttl: Duration::from_secs(15 * 60),
        }
    }
}

/// Where a device sends an upload: method, URL, and headers it must send as given.
#[derive(Debug, Clone)]
pub struct UploadUrl {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// Why a store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media store: {0}")]
    Store(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where blobs live.
#[tonic::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// What this store is, for logs and `chatctl status`.
    fn describe(&self) -> String;
    /// Whether every node reaches every blob (a shared bucket) rather than only the blobs of
    /// its own keys (files on each node).
    fn shared(&self) -> bool;
    /// A URL that takes exactly `size` bytes whose sha256 is `sha256` for `key`, until `expires_ms`.
    async fn upload_url(
        &self,
        key: &ObjectKey,
        size: u64,
        sha256: &[u8; 32],
        expires_ms: u64,
    ) -> Result<UploadUrl, MediaError>;
    /// A URL that reads `key` (ranges allowed) until `expires_ms`.
    async fn download_url(&self, key: &ObjectKey, expires_ms: u64) -> Result<String, MediaError>;
    /// Remove `key`'s bytes; removing what is not there is no error.
    async fn delete(&self, key: &ObjectKey) -> Result<(), MediaError>;
}

/// The gateway's media: grants for devices, signatures for peers.
pub struct Media {
    store: Arc<dyn BlobStore>,
    node: NodeId,
    config: MediaConfig,
}

impl Media {
    pub fn new(store: Arc<dyn BlobStore>, node: NodeId, config: MediaConfig) -> Media {
        Media {
            store,
            node,
            config,
        }
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// When a URL signed now expires.
    fn expiry(&self) -> u64 {
        now_ms() + self.config.url_ttl.as_millis() as u64
    }

    /// An upload grant for `user`: a new key on this node and a URL bound to the size and sha256.
    pub async fn grant_upload(
        &self,
        user: UserId,
        request: &pb::CreateUploadRequest,
    ) -> Result<pb::UploadGrant, Status> {
        if request.size == 0 || request.size > self.config.max_bytes {
            return Err(Status::invalid_argument(format!(
                "a blob has 1 to {} bytes (asked for {})",
                self.config.max_bytes, request.size
            )));
        }
        let sha256: [u8; 32] = request.sha256.as_slice().try_into().map_err(|_| {
            Status::invalid_argument("an upload needs the sha256 of its bytes (32 bytes)")
        })?;
        crate::limits::check_bytes("a media mime type", &request.mime, MAX_MIME_BYTES)?;
        let key = ObjectKey::new(self.node, user, rand::random::<u128>());
        let expires_ms = self.expiry();
        let url = self
            .store
            .upload_url(&key, request.size, &sha256, expires_ms)
            .await
            .map_err(unavailable)?;
        metrics::counter!("chatd_media_upload_grants_total").increment(1);
        Ok(pb::UploadGrant {
            object_key: key.to_string(),
            url: url.url,
            method: url.method.to_string(),
            headers: url.headers.into_iter().collect(),
            expires_at_ms: expires_ms,
        })
    }

    /// A download grant for `key`: signed here when this node's store reaches it, by the key's
    /// node otherwise (over `GatewayPeer.SignDownload`).
    pub async fn grant_download(
        &self,
        key: &str,
        presence: &ClusterPresence,
    ) -> Result<pb::DownloadGrant, Status> {
        let parsed = ObjectKey::parse(key).map_err(Status::invalid_argument)?;
        if self.store.shared() || parsed.node == self.node {
            return self.sign_download(&parsed).await;
        }
        let addr = presence.node_address(parsed.node).ok_or_else(|| {
            Status::not_found(format!("no node {} holds media {key}", parsed.node))
        })?;
        let mut client = presence
            .peer(&addr)
            .ok_or_else(|| Status::unavailable(format!("node {} is not reachable", parsed.node)))?;
        let mut request = Request::new(pb::CreateDownloadRequest {
            object_key: key.to_string(),
        });
        request.set_timeout(PEER_SIGN_TIMEOUT);
        match tokio::time::timeout(PEER_SIGN_TIMEOUT, client.sign_download(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::unavailable(format!(
                "node {} holds media {key} and did not answer in time",
                parsed.node
            ))),
        }
    }

    /// A download grant signed by this node's store (a peer's `SignDownload`).
    pub async fn sign_download(&self, key: &ObjectKey) -> Result<pb::DownloadGrant, Status> {
        if !self.store.shared() && key.node != self.node {
            return Err(Status::not_found(format!(
                "media {key} is not in node {}'s store",
                self.node
            )));
        }
        let expires_ms = self.expiry();
        let url = self
            .store
            .download_url(key, expires_ms)
            .await
            .map_err(unavailable)?;
        Ok(pb::DownloadGrant {
            url,
            expires_at_ms: expires_ms,
        })
    }
}

/// How long a node waits for the key's node to sign a download URL.
const PEER_SIGN_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest MIME type of an upload (as in a MediaRef).
const MAX_MIME_BYTES: usize = 128;

fn unavailable(e: MediaError) -> Status {
    tracing::warn!(error = %e, "media store");
    Status::unavailable(e.to_string())
}
