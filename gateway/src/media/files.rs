//! The embedded media store: blobs as files under the node's data dir (`<data>/media/`), served
//! by chatd over HTTP at `/media/<key>` with presigned URLs (see `signing.rs`).
//!
//! - `PUT /media/<key>?exp=&size=&sha256=&sig=`: the body must be exactly the signed size and
//!   hash to the signed sha256; it is written to a temporary file, fsynced, and renamed into
//!   place (then the directory fsynced), so a blob is either whole and durable or absent. A
//!   retried upload of a stored key answers 200 without reading the body again.
//! - `GET /media/<key>?exp=&sig=` (and HEAD): the file, with range requests (tower-http's
//!   `ServeFile`).
//!
//! Errors are plain text: 400 malformed or not matching the grant, 403 a bad or expired
//! signature, 404 no such blob (or another node's key), 413 a body over the signed size, 507
//! the node's data disk is low (uploads stop before the log's reserve).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chat_log::NodeId;
use chat_model::media::ObjectKey;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use super::signing::{Grant, UrlSigner};
use super::{now_ms, BlobStore, MediaError, UploadUrl};

/// Whether an upload may be written now: the data dir is shared with the log, whose reserve
/// uploads must not eat (`Err` says why not).
pub type SpaceCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Blobs in files under one node's data dir.
pub struct FileStore {
    root: PathBuf,
    node: NodeId,
    /// What devices put before `/media/<key>`: `http(s)://host:port`.
    base_url: String,
    signer: UrlSigner,
    room: SpaceCheck,
}

impl FileStore {
    /// The store of node `node` in `root` (created if missing), reached by devices at
    /// `base_url`, its URLs signed with a key derived from `cluster_secret`; `room` says whether
    /// an upload may be written now.
    pub fn open(
        root: &Path,
        node: NodeId,
        base_url: &str,
        cluster_secret: &str,
        room: SpaceCheck,
    ) -> std::io::Result<FileStore> {
        std::fs::create_dir_all(root.join(TMP))?;
        // Uploads cut off by a crash leave temporaries behind; nothing refers to them.
        for entry in std::fs::read_dir(root.join(TMP))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(FileStore {
            root: root.to_path_buf(),
            node,
            base_url: base_url.trim_end_matches('/').to_string(),
            signer: UrlSigner::new(cluster_secret),
            room,
        })
    }

    /// Where `key`'s bytes are (keys are validated, so this never leaves the root).
    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(format!("u{}", key.uploader)).join(&key.id)
    }

    /// This store's HTTP routes, `/media/...`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/media/{*key}", get(download).put(upload))
            .with_state(self)
    }

    /// `key` as this store's, or a 404 answer.
    fn own_key(&self, text: &str) -> Result<ObjectKey, Refusal> {
        match ObjectKey::parse(text) {
            Ok(key) if key.node == self.node => Ok(key),
            Ok(key) => Err(refuse(
                StatusCode::NOT_FOUND,
                format!("media {key} is not stored on node {}", self.node),
            )),
            Err(e) => Err(refuse(StatusCode::NOT_FOUND, e)),
        }
    }
}

/// Temporaries of uploads in progress, under the root.
const TMP: &str = ".tmp";

#[tonic::async_trait]
impl BlobStore for FileStore {
    fn describe(&self) -> String {
        format!(
            "files in {} served at {}",
            self.root.display(),
            self.base_url
        )
    }

    fn shared(&self) -> bool {
        false
    }

    async fn upload_url(
        &self,
        key: &ObjectKey,
        size: u64,
        sha256: &[u8; 32],
        expires_ms: u64,
    ) -> Result<UploadUrl, MediaError> {
        let (key, sha256) = (key.to_string(), hex::encode(sha256));
        let sig = self.signer.sign(
            &Grant::Put {
                key: &key,
                size,
                sha256: &sha256,
            },
            expires_ms,
        );
        Ok(UploadUrl {
            method: "PUT",
            url: format!(
                "{}/media/{key}?exp={expires_ms}&size={size}&sha256={sha256}&sig={sig}",
                self.base_url
            ),
            headers: Vec::new(),
        })
    }

    async fn download_url(&self, key: &ObjectKey, expires_ms: u64) -> Result<String, MediaError> {
        let key = key.to_string();
        let sig = self.signer.sign(&Grant::Get { key: &key }, expires_ms);
        Ok(format!(
            "{}/media/{key}?exp={expires_ms}&sig={sig}",
            self.base_url
        ))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), MediaError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[derive(serde::Deserialize)]
struct Signed {
    exp: u64,
    sig: String,
    size: Option<u64>,
    sha256: Option<String>,
}

/// A refused request: its status and why, answered as plain text.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1 + "\n").into_response()
    }
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal(status, why.into())
}

/// Refuses an expired URL or one whose signature does not sign `grant`.
fn check(store: &FileStore, grant: &Grant<'_>, q: &Signed) -> Result<(), Refusal> {
    if q.exp < now_ms() {
        return Err(refuse(StatusCode::FORBIDDEN, "this media URL has expired"));
    }
    if !store.signer.verify(grant, q.exp, &q.sig) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this media URL's signature does not match it",
        ));
    }
    Ok(())
}

async fn download(
    State(store): State<Arc<FileStore>>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<Signed>,
    request: Request<Body>,
) -> Result<Response, Refusal> {
    let key = store.own_key(&key)?;
    let text = key.to_string();
    check(&store, &Grant::Get { key: &text }, &q)?;
    let path = store.path(&key);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no media {key} (deleted or never uploaded)"),
        ));
    }
    match tower_http::services::ServeFile::new(path)
        .oneshot(request)
        .await
    {
        Ok(response) => Ok(response.map(Body::new)),
        Err(e) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn upload(
    State(store): State<Arc<FileStore>>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<Signed>,
    request: Request<Body>,
) -> Result<Response, Refusal> {
    let key = store.own_key(&key)?;
    let (Some(size), Some(sha256)) = (q.size, q.sha256.as_deref()) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "an upload URL names its size and sha256",
        ));
    };
    let text = key.to_string();
    let grant = Grant::Put {
        key: &text,
        size,
        sha256,
    };
    check(&store, &grant, &q)?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n != size) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("this URL takes exactly {size} bytes"),
        ));
    }
    let path = store.path(&key);
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok((StatusCode::OK, "already stored\n").into_response());
    }
    (store.room)().map_err(|why| refuse(StatusCode::INSUFFICIENT_STORAGE, why))?;
    let stored = receive(&store, &key, &path, size, sha256, request.into_body()).await;
    let result = if stored.is_ok() { "stored" } else { "refused" };
    metrics::counter!("chatd_media_uploads_total", "result" => result).increment(1);
    stored.map(|()| (StatusCode::CREATED, "stored\n").into_response())
}

/// Write `body` to a temporary, check its size and hash, fsync it and rename it to `path`.
async fn receive(
    store: &FileStore,
    key: &ObjectKey,
    path: &Path,
    size: u64,
    sha256: &str,
    body: Body,
) -> Result<(), Refusal> {
    let tmp = store
        .root
        .join(TMP)
        .join(format!("{}-{:016x}", key.id, rand::random::<u64>()));
    let written = write_checked(&tmp, size, sha256, body).await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
        return written;
    }
    let publish = async {
        let dir = path.parent().expect("a blob's path has a directory");
        tokio::fs::create_dir_all(dir).await?;
        tokio::fs::rename(&tmp, path).await?;
        tokio::fs::File::open(dir).await?.sync_all().await
    };
    publish.await.map_err(|e| {
        tracing::warn!(%key, error = %e, "media: storing an upload failed");
        refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("could not store the upload: {e}"),
        )
    })
}

async fn write_checked(tmp: &Path, size: u64, sha256: &str, body: Body) -> Result<(), Refusal> {
    let io = |e: std::io::Error| {
        refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("could not store the upload: {e}"),
        )
    };
    let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("upload cut off: {e}")))?;
        got += chunk.len() as u64;
        if got > size {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("this URL takes exactly {size} bytes"),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    if got != size {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("got {got} bytes; this URL takes exactly {size}"),
        ));
    }
    if hex::encode(hasher.finalize()) != sha256 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the bytes do not match the sha256 the upload was granted for",
        ));
    }
    file.sync_all().await.map_err(io)?;
    Ok(())
}
