//! Accepting connections through TLS.
//!
//! Each handshake runs on a task of its own with a deadline, so a client that opens a socket and
//! says nothing (or says it slowly) holds up no other connection and no memory for long. A
//! failed handshake (no certificate, one of another CA, not TLS at all) closes that connection,
//! is counted in `chatd_tls_handshake_failures_total` and logged at debug: it is what a scanner
//! or a misconfigured client causes, not a fault of the node.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::NodeTls;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted but not yet taken by the server.
const BACKLOG: usize = 1024;

/// Which listener a connection came in on, and so which config it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Raft, forwarding, peer calls, admin: a client certificate of the cluster CA required.
    Internal,
    /// The device API: no client certificate.
    Public,
}

/// An accepted connection, plain or through TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// The connections of `incoming`, through a TLS handshake with `tls`'s current config for
/// `side` when given, as they are accepted (handshakes finish in any order). The stream ends
/// when `incoming` does; dropping it stops accepting (the listener is closed).
pub fn accept<S>(
    incoming: S,
    tls: Option<(Arc<NodeTls>, Side)>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let Some((tls, side)) = tls else {
        return incoming.map(|tcp| tcp.map(Conn::Plain)).boxed();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(BACKLOG);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let tcp = tokio::select! {
                next = incoming.next() => match next {
                    Some(Ok(tcp)) => tcp,
                    // An accept error (too many open files, say) is the listener's, not a
                    // connection's: tonic logs it and goes on accepting.
                    Some(Err(e)) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    None => return,
                },
                // The server stopped: stop accepting, so the listener closes now.
                () = tx.closed() => return,
            };
            let config = match side {
                Side::Internal => tls.internal_server(),
                Side::Public => tls.public_server(),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream)))).await;
                    }
                    failed => {
                        metrics::counter!("chatd_tls_handshake_failures_total").increment(1);
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                        };
                        tracing::debug!(?peer, ?side, why, "TLS handshake failed");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
