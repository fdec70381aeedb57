//! chatd's HTTP address for devices: today the embedded media store's presigned uploads and
//! downloads (`/media/...`, see `chat_gateway::media::files`). HTTP/1.1, through TLS with the
//! node's public certificate when TLS is on (re-read per connection, so a renewed certificate
//! is used without a restart).

use std::sync::Arc;

use axum::Router;
use chat_tls::NodeTls;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve `router` on `listener` until `stop` turns true (connections in progress are dropped
/// with the task).
pub fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "http: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            };
            let _ = tcp.set_nodelay(true);
            let (router, tls) = (router.clone(), tls.clone());
            tokio::spawn(async move {
                let service = TowerToHyperService::new(router);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let served = match tls {
                    None => builder.serve_connection(TokioIo::new(tcp), service).await,
                    Some(tls) => {
                        let mut config = (*tls.public_server()).clone();
                        config.alpn_protocols = vec![b"http/1.1".to_vec()];
                        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "http: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "http: connection ended with an error");
                }
            });
        }
    })
}
