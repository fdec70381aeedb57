//! Media in an S3-compatible bucket shared by every node, presigned with `object_store`.
//!
//! An upload URL binds the `x-amz-checksum-sha256` of the bytes into its SigV4 signature, so
//! S3 refuses any other bytes (and so any other size); the device sends that header as the
//! grant lists it. (object_store will not sign `content-length`: the checksum binds the size.
//! moto, the S3 server the tests use, does not check checksums; S3 does.) Objects are named by
//! their key.
//! Credentials come from the config or the usual `AWS_*` environment variables.

use std::time::Duration;

use base64::Engine as _;
use chat_model::media::ObjectKey;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{HeaderName, HeaderValue, Method, SignedUrlOptions, Signer};
use object_store::ObjectStoreExt;

use super::{now_ms, BlobStore, MediaError, UploadUrl};

/// Where the bucket is (the `[media.s3]` table of chatd's config).
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `http://127.0.0.1:9000` for a local S3-compatible server; empty for AWS.
    pub endpoint: String,
    pub region: String,
    /// Empty: from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// A bucket as a blob store.
pub struct S3Store {
    s3: AmazonS3,
    describe: String,
}

impl S3Store {
    pub fn new(config: &S3Config) -> Result<S3Store, MediaError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if !config.region.is_empty() {
            builder = builder.with_region(&config.region);
        }
        if !config.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&config.endpoint)
                .with_allow_http(config.endpoint.starts_with("http://"));
        }
        if !config.access_key_id.is_empty() {
            builder = builder
                .with_access_key_id(&config.access_key_id)
                .with_secret_access_key(&config.secret_access_key);
        }
        let s3 = builder
            .build()
            .map_err(|e| MediaError::Store(format!("S3 bucket {:?}: {e}", config.bucket)))?;
        Ok(S3Store {
            s3,
            describe: format!(
                "S3 bucket {} at {}",
                config.bucket,
                or_aws(&config.endpoint)
            ),
        })
    }
}

fn or_aws(endpoint: &str) -> &str {
    if endpoint.is_empty() {
        "AWS"
    } else {
        endpoint
    }
}

fn path(key: &ObjectKey) -> Path {
    Path::from(key.to_string())
}

/// How long from now until `expires_ms` (at least a second).
fn ttl(expires_ms: u64) -> Duration {
    Duration::from_millis(expires_ms.saturating_sub(now_ms()).max(1000))
}

fn store_error(e: object_store::Error) -> MediaError {
    MediaError::Store(e.to_string())
}

#[tonic::async_trait]
impl BlobStore for S3Store {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    async fn upload_url(
        &self,
        key: &ObjectKey,
        _size: u64,
        sha256: &[u8; 32],
        expires_ms: u64,
    ) -> Result<UploadUrl, MediaError> {
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256);
        let headers = vec![("x-amz-checksum-sha256".to_string(), checksum)];
        let mut options = SignedUrlOptions::new();
        for (name, value) in &headers {
            options = options.with_signed_header(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(value).expect("a valid header value"),
            );
        }
        let url = self
            .s3
            .signed_url_opts(Method::PUT, &path(key), ttl(expires_ms), &options)
            .await
            .map_err(store_error)?;
        Ok(UploadUrl {
            method: "PUT",
            url: url.to_string(),
            headers,
        })
    }

    async fn download_url(&self, key: &ObjectKey, expires_ms: u64) -> Result<String, MediaError> {
        let url = self
            .s3
            .signed_url(Method::GET, &path(key), ttl(expires_ms))
            .await
            .map_err(store_error)?;
        Ok(url.to_string())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), MediaError> {
        match self.s3.delete(&path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(e)),
        }
    }
}
