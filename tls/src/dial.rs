//! Dialling through TLS: tonic channels whose every (re)connect makes the TCP connection itself
//! (from the node's own address when it has one, with TCP_NODELAY) and runs a handshake with the
//! client config current at that moment — so a rotated certificate is shown on the next
//! reconnect without rebuilding any channel.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::NodeTls;

/// How a process dials: plaintext, or TLS with a node's configs or a fixed one.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Source>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.tls {
            None => "Dialer(plain)",
            Some(_) => "Dialer(tls)",
        })
    }
}

#[derive(Clone)]
enum Source {
    Node(Arc<NodeTls>),
    Fixed(Arc<ClientConfig>),
}

impl Dialer {
    /// Plaintext (a cluster on loopback, the embedded default).
    pub fn plain() -> Dialer {
        Dialer { tls: None }
    }

    /// TLS with the node's configs, as they are when each connection is made.
    pub fn node(tls: Arc<NodeTls>) -> Dialer {
        Dialer {
            tls: Some(Source::Node(tls)),
        }
    }

    /// TLS with `config` (see [`crate::client_config`]).
    pub fn fixed(config: Arc<ClientConfig>) -> Dialer {
        Dialer {
            tls: Some(Source::Fixed(config)),
        }
    }

    /// Whether this dials through TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A channel to `endpoint` that connects on first use and reconnects when needed, from
    /// `local_ip` when given.
    pub fn lazy(&self, endpoint: Endpoint, local_ip: Option<IpAddr>) -> Channel {
        match self.connector(local_ip) {
            None => endpoint.local_address(local_ip).connect_lazy(),
            Some(connector) => endpoint.connect_with_connector_lazy(connector),
        }
    }

    /// A channel to `endpoint`, connected now.
    pub async fn connect(
        &self,
        endpoint: Endpoint,
        local_ip: Option<IpAddr>,
    ) -> Result<Channel, tonic::transport::Error> {
        match self.connector(local_ip) {
            None => endpoint.local_address(local_ip).connect().await,
            Some(connector) => endpoint.connect_with_connector(connector).await,
        }
    }

    fn connector(
        &self,
        local_ip: Option<IpAddr>,
    ) -> Option<
        impl tower::Service<
                Uri,
                Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                Error = io::Error,
                Future = impl Send,
            > + Clone
            + Send
            + 'static,
    > {
        let source = self.tls.clone()?;
        Some(tower::service_fn(move |uri: Uri| {
            let source = source.clone();
            async move {
                let config = match &source {
                    Source::Node(tls) => tls.client(),
                    Source::Fixed(config) => config.clone(),
                };
                let host = uri
                    .host()
                    .ok_or_else(|| invalid(format!("no host in {uri}")))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = uri.port_u16().unwrap_or(443);
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| invalid(format!("{host:?} is not a server name: {e}")))?;
                let tcp = tcp_connect(&host, port, local_ip).await?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
    }
}

async fn tcp_connect(host: &str, port: u16, local_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match tcp_connect_to(addr, local_ip).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| invalid(format!("{host} resolves to no address"))))
}

async fn tcp_connect_to(addr: SocketAddr, local_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
