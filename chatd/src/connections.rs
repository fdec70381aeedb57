//! Connections to the node's gRPC port, counted: `chatd_connections_open` (devices, other
//! nodes, chatctl; one HTTP/2 connection carries many calls) and `chatd_connections_accepted_total`.
//! Each accepted connection (plain or TLS, on the internal or the public address) is wrapped so
//! that its drop, when the server is done with the connection, takes it off the gauge.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use chat_tls::Conn;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection, on the gauge while it lives.
pub struct Counted(Conn);

impl Counted {
    pub fn new(stream: Conn) -> Counted {
        metrics::gauge!("chatd_connections_open").increment(1.0);
        metrics::counter!("chatd_connections_accepted_total").increment(1);
        Counted(stream)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("chatd_connections_open").decrement(1.0);
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
