//! Media for devices: upload a blob through the URL the server grants and build the
//! [`pb::MediaRef`] a message carries; download one by its reference and check its sha256.
//! The bytes go straight to the media store (chatd's HTTP address or a bucket), never through
//! the device stream (docs/protocol.md, "Media").

use std::sync::Arc;

use anyhow::{bail, Context};
use chat_proto::chat_v1 as pb;
use sha2::{Digest, Sha256};

use crate::device::ChatClient;

/// An HTTP client for media URLs: HTTPS checked against `tls` when given (the chat CLI's
/// `--tls-ca`), against the platform's roots otherwise (a bucket's URLs), or plain HTTP.
pub fn http_client(tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<reqwest::Client> {
    chat_tls::install_provider();
    let builder = reqwest::Client::builder();
    let builder = match tls {
        Some(tls) => {
            let mut config = (*tls).clone();
            // Media URLs are HTTP/1.1 (the device API's config asks for h2 only).
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            builder.tls_backend_preconfigured(config)
        }
        None => builder,
    };
    builder
        .build()
        .context("building the HTTP client for media")
}

/// Upload `bytes` as a blob of type `mime`; the reference to put in a message.
pub async fn upload(
    client: &mut ChatClient,
    http: &reqwest::Client,
    bytes: Vec<u8>,
    mime: &str,
) -> anyhow::Result<pb::MediaRef> {
    let sha256 = Sha256::digest(&bytes).to_vec();
    let size = bytes.len() as u64;
    let grant = client
        .create_upload(mime, size, sha256.clone())
        .await
        .context("asking for an upload URL")?;
    let method = reqwest::Method::from_bytes(grant.method.as_bytes())
        .with_context(|| format!("the server granted an upload by {:?}", grant.method))?;
    let mut request = http.request(method, &grant.url);
    for (name, value) in &grant.headers {
        request = request.header(name, value);
    }
    let answer = request
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("uploading to {}", without_query(&grant.url)))?;
    if !answer.status().is_success() {
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        bail!(
            "the media store refused the upload: {status} {}",
            text.trim()
        );
    }
    Ok(pb::MediaRef {
        object_key: grant.object_key,
        mime: mime.to_string(),
        size,
        sha256,
        key_blob: Vec::new(),
    })
}

/// Download what `media` refers to, checked against its size and sha256.
pub async fn download(
    client: &mut ChatClient,
    http: &reqwest::Client,
    media: &pb::MediaRef,
) -> anyhow::Result<Vec<u8>> {
    let grant = client
        .create_download(&media.object_key)
        .await
        .context("asking for a download URL")?;
    let answer = http
        .get(&grant.url)
        .send()
        .await
        .with_context(|| format!("downloading {}", without_query(&grant.url)))?;
    if !answer.status().is_success() {
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        bail!("the media store answered {status} {}", text.trim());
    }
    let bytes = answer
        .bytes()
        .await
        .context("reading the download")?
        .to_vec();
    if media.size != 0 && bytes.len() as u64 != media.size {
        bail!(
            "got {} bytes of {}; the message says {}",
            bytes.len(),
            media.object_key,
            media.size
        );
    }
    if !media.sha256.is_empty() && Sha256::digest(&bytes).as_slice() != media.sha256.as_slice() {
        bail!(
            "{} does not match the sha256 its message gives",
            media.object_key
        );
    }
    Ok(bytes)
}

/// A URL without its signature, for error messages.
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// A MIME type from a file name's extension (what `chat send --file` says unless told).
pub fn guess_mime(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("mp4") => "video/mp4",
        Some("mp3") => "audio/mpeg",
        Some("ogg" | "opus") => "audio/ogg",
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}
