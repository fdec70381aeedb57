//! Offline notifications: what a device with no live stream is told, and where it goes.
//!
//! A [`Notification`] is collapsed — per device and chat, a count of new messages and the last
//! seq — and never carries a payload (messages may be end-to-end encrypted, and push services
//! are third parties). Sinks implement [`PushSink`]: [`LogSink`] writes them to the log,
//! [`WebhookSink`] POSTs them as JSON to an https endpoint with retries, backoff and timeouts
//! (APNs/FCM adapters would sit behind the same trait). Deciding *who* is offline is the
//! gateway's job: it knows the streams.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// New messages in a chat for a device that is not connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub user_id: u64,
    pub device_id: u64,
    pub chat_id: u64,
    /// Messages since the last notification of this device for this chat.
    pub count: u64,
    pub last_seq: u64,
}

pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where notifications go. Called from the notifier's own task, so a slow sink delays only
/// notifications.
pub trait PushSink: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Deliver a batch; an error means the sink gave up on it (after its own retries).
    fn deliver(&self, batch: Vec<Notification>) -> DeliverFuture<'_>;
}

/// Writes each notification to the log (the embedded default), at `debug` unless configured
/// otherwise: at a few hundred a second a line each would fill an SRE's disk, and the
/// notifier counts them in `chatd_notifications_delivered_total` either way.
pub struct LogSink {
    /// Write them at `info` (the default filter shows them) instead of `debug`.
    pub at_info: bool,
}

impl PushSink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn deliver(&self, batch: Vec<Notification>) -> DeliverFuture<'_> {
        // tracing needs the level at compile time: one call site per level, same fields.
        macro_rules! log_at {
            ($level:expr, $n:expr) => {
                tracing::event!(
                    $level,
                    user = $n.user_id,
                    device = $n.device_id,
                    chat = $n.chat_id,
                    count = $n.count,
                    last_seq = $n.last_seq,
                    "offline notification"
                )
            };
        }
        Box::pin(async move {
            for n in batch {
                if self.at_info {
                    log_at!(tracing::Level::INFO, n);
                } else {
                    log_at!(tracing::Level::DEBUG, n);
                }
            }
            Ok(())
        })
    }
}

/// How a [`WebhookSink`] retries.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `https://host[:port]/path`; `http://` only to a loopback host (a local relay), as
    /// notifications name users, devices and chats.
    pub url: String,
    /// The CA that signed the receiver's certificate, when not one the system trusts (PEM).
    pub ca: Option<std::path::PathBuf>,
    /// Attempts per batch, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub first_backoff: Duration,
    /// Each attempt's limit, connection included.
    pub timeout: Duration,
}

/// POSTs `{"notifications": [...]}` to a URL; any 2xx is success, anything else (or a timeout,
/// or no connection) is retried with exponential backoff up to `max_attempts`.
pub struct WebhookSink {
    config: WebhookConfig,
    uri: hyper::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

#[derive(Serialize)]
struct Payload<'a> {
    notifications: &'a [Notification],
}

impl WebhookSink {
    pub fn new(config: WebhookConfig) -> Result<WebhookSink, String> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|e| format!("webhook url {:?}: {e}", config.url))?;
        let loopback_host = match uri.host() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        match uri.scheme_str() {
            _ if uri.host().is_none() => {
                return Err(format!("webhook url {:?} has no host", config.url))
            }
            Some("https") => {}
            Some("http") if loopback_host => {}
            _ => {
                return Err(format!(
                    "webhook url {:?} must be https://host[:port]/path (http:// only to a loopback relay)",
                    config.url
                ))
            }
        }
        let mut tls = (*chat_tls::client_config(config.ca.as_deref(), None)
            .map_err(|e| format!("webhook TLS: {e:#}"))?)
        .clone();
        // The webhook speaks HTTP/1.1; the connector offers what it speaks.
        tls.alpn_protocols.clear();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(WebhookSink {
            config,
            uri,
            client,
        })
    }

    async fn attempt(&self, body: Bytes) -> Result<(), String> {
        let request = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let send = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Drain the body so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the webhook answered {status}"))
            }
        };
        tokio::time::timeout(self.config.timeout, send)
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.timeout))?
    }
}

impl PushSink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn deliver(&self, batch: Vec<Notification>) -> DeliverFuture<'_> {
        Box::pin(async move {
            let body = Bytes::from(
                serde_json::to_vec(&Payload {
                    notifications: &batch,
                })
                .map_err(|e| e.to_string())?,
            );
            let mut backoff = self.config.first_backoff;
            let mut last = String::new();
            for attempt in 1..=self.config.max_attempts.max(1) {
                match self.attempt(body.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(url = %self.config.url, attempt, error = %e,
                            "webhook delivery failed");
                        last = e;
                    }
                }
                if attempt < self.config.max_attempts {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
            Err(format!(
                "gave up after {} attempts: {last}",
                self.config.max_attempts
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;

    #[derive(Default)]
    struct Receiver {
        calls: AtomicU32,
        bodies: Mutex<Vec<serde_json::Value>>,
    }

    /// A real HTTP server on loopback that fails the first `fail` requests with 500.
    async fn server(fail: u32) -> (String, Arc<Receiver>) {
        let receiver = Arc::new(Receiver::default());
        let app = axum::Router::new()
            .route(
                "/push",
                post(
                    move |State(r): State<Arc<Receiver>>, body: axum::body::Bytes| async move {
                        let n = r.calls.fetch_add(1, Ordering::SeqCst) + 1;
                        if n <= fail {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        r.bodies
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/push"), receiver)
    }

    fn config(url: String) -> WebhookConfig {
        WebhookConfig {
            url,
            ca: None,
            max_attempts: 4,
            first_backoff: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
        }
    }

    fn batch() -> Vec<Notification> {
        vec![Notification {
            user_id: 7,
            device_id: 2,
            chat_id: 99,
            count: 3,
            last_seq: 12,
        }]
    }

    #[tokio::test]
    async fn webhook_retries_after_failures_then_delivers_json() {
        let (url, receiver) = server(2).await;
        let sink = WebhookSink::new(config(url)).unwrap();
        sink.deliver(batch()).await.unwrap();
        assert_eq!(
            receiver.calls.load(Ordering::SeqCst),
            3,
            "two failures, one success"
        );
        let bodies = receiver.bodies.lock().unwrap();
        assert_eq!(
            bodies[0],
            serde_json::json!({"notifications": [
                {"user_id": 7, "device_id": 2, "chat_id": 99, "count": 3, "last_seq": 12}
            ]})
        );
    }

    #[tokio::test]
    async fn webhook_gives_up_after_max_attempts_and_on_no_server() {
        let (url, receiver) = server(u32::MAX).await;
        let sink = WebhookSink::new(config(url)).unwrap();
        let err = sink.deliver(batch()).await.unwrap_err();
        assert!(err.contains("gave up after 4 attempts"), "{err}");
        assert_eq!(receiver.calls.load(Ordering::SeqCst), 4);

        // Nothing listening: connection refused, retried, then an error (not a hang).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sink = WebhookSink::new(config(format!("http://127.0.0.1:{port}/push"))).unwrap();
        assert!(sink.deliver(batch()).await.is_err());
        // Plaintext off loopback would carry who is messaging whom in the clear.
        let err = WebhookSink::new(config("http://example.com/x".into()))
            .err()
            .unwrap();
        assert!(err.contains("https://"), "{err}");
    }

    /// An https receiver on loopback with a certificate of a CA made here: what it was sent.
    async fn https_server(dir: &std::path::Path) -> (String, Arc<Mutex<Vec<String>>>) {
        use rustls::pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let authority = chat_tls::ca::new_ca("hook", 1).unwrap();
        chat_tls::ca::write(dir, "ca", &authority).unwrap();
        let cert = chat_tls::ca::issue(
            &authority,
            chat_tls::ca::Kind::Node,
            "hook",
            &["127.0.0.1".into()],
            1,
        )
        .unwrap();
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // One request: headers, then the body its content-length names.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = tls.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length: usize = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                seen.lock().unwrap().push(text[end + 4..].to_string());
                                break;
                            }
                        }
                    }
                    tls.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tls.shutdown().await;
                });
            }
        });
        (format!("https://127.0.0.1:{}/push", addr.port()), received)
    }

    #[tokio::test]
    async fn webhook_speaks_https_and_checks_the_receivers_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (url, received) = https_server(dir.path()).await;
        let mut trusted = config(url.clone());
        trusted.ca = Some(dir.path().join("ca.pem"));
        WebhookSink::new(trusted)
            .unwrap()
            .deliver(batch())
            .await
            .unwrap();
        let bodies = received.lock().unwrap().clone();
        assert_eq!(bodies.len(), 1);
        assert!(bodies[0].contains("\"chat_id\":99"), "{bodies:?}");

        // A receiver whose certificate the sink cannot check gets nothing: a man in the middle
        // with his own certificate learns nothing.
        let other = tempfile::tempdir().unwrap();
        chat_tls::ca::write(
            other.path(),
            "ca",
            &chat_tls::ca::new_ca("other", 1).unwrap(),
        )
        .unwrap();
        let mut misled = config(url);
        misled.ca = Some(other.path().join("ca.pem"));
        let err = WebhookSink::new(misled)
            .unwrap()
            .deliver(batch())
            .await
            .unwrap_err();
        assert!(err.contains("gave up"), "{err}");
        assert_eq!(
            received.lock().unwrap().len(),
            1,
            "nothing more was received"
        );
    }
}
