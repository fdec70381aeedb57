//! Packet delay and loss without netem (which this kernel lacks): every node-to-node link goes
//! through a TCP proxy in the harness, which can delay and stall each link on its own.
//!
//! Node *j* listens on `127.0.0.j:7401`; its advertised address `127.0.0.j:7400` (the one peers
//! dial) is a proxy that forwards to it. Nodes bind outgoing connections to their own address,
//! so the proxy knows each connection's link (source node → *j*), and it connects onward from
//! the source's address too, so nftables partitions still see the true endpoints. Each
//! direction of each connection is a queue: a chunk read at time *t* is written at *t* + delay
//! (+ jitter), never before the chunk ahead of it, so order holds and latency adds without
//! serialising throughput. "Loss" is modelled as TCP experiences it: a lost segment costs a
//! retransmission timeout, so a lost chunk is held back ~200 ms (and everything behind it).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::nodes::{ip, PORT};

/// Where a node really listens (behind its proxy).
pub const NODE_PORT: u16 = PORT + 1;

/// What one direction of one link suffers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFault {
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability that a chunk is "lost" (held back one retransmission timeout).
    pub loss: f64,
}

/// The faults of every link, keyed by (from node, to node); absent means a clean link.
#[derive(Default)]
pub struct Links(Mutex<HashMap<(u64, u64), LinkFault>>);

impl Links {
    pub fn set(&self, from: u64, to: u64, fault: LinkFault) {
        self.0.lock().unwrap().insert((from, to), fault);
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    fn get(&self, from: u64, to: u64) -> LinkFault {
        self.0
            .lock()
            .unwrap()
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }
}

/// Start the proxy in front of node `to`.
pub async fn start(to: u64, links: Arc<Links>) -> anyhow::Result<()> {
    let listen: SocketAddr = format!("{}:{PORT}", ip(to)).parse()?;
    let listener = TcpListener::bind(listen).await?;
    tokio::spawn(async move {
        while let Ok((inbound, peer)) = listener.accept().await {
            let links = links.clone();
            // Errors are normal under faults (a killed node, a reset): the connection just ends,
            // as it would on a real network.
            tokio::spawn(async move {
                let _ = relay(inbound, peer, to, links).await;
            });
        }
    });
    Ok(())
}

/// The node a loopback address belongs to (127.0.0.i → i; anything else → 0).
fn node_of(addr: &SocketAddr) -> u64 {
    match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] => u64::from(v4.octets()[3]),
        _ => 0,
    }
}

async fn relay(
    inbound: TcpStream,
    peer: SocketAddr,
    to: u64,
    links: Arc<Links>,
) -> anyhow::Result<()> {
    let from = node_of(&peer);
    let socket = TcpSocket::new_v4()?;
    if let std::net::IpAddr::V4(v4) = peer.ip() {
        socket.bind(SocketAddr::new(Ipv4Addr::from(v4.octets()).into(), 0))?;
    }
    let target: SocketAddr = format!("{}:{NODE_PORT}", ip(to)).parse()?;
    let outbound = socket.connect(target).await?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = pump(in_read, out_write, links.clone(), from, to);
    let down = pump(out_read, in_write, links, to, from);
    let _ = tokio::join!(up, down);
    Ok(())
}

/// Copy one direction, each chunk due at its read time plus the link's current fault.
async fn pump(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    links: Arc<Links>,
    from: u64,
    to: u64,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let fault = links.get(from, to);
            let mut due = Instant::now() + fault.delay;
            {
                let mut rng = rand::thread_rng();
                if !fault.jitter.is_zero() {
                    due += Duration::from_micros(rng.gen_range(0..fault.jitter.as_micros() as u64));
                }
                if fault.loss > 0.0 && rng.gen_bool(fault.loss.min(1.0)) {
                    due += Duration::from_millis(200);
                }
            }
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        let mut last = Instant::now();
        while let Some((due, chunk)) = rx.recv().await {
            last = last.max(due);
            tokio::time::sleep_until(last).await;
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(reader, writer);
}
