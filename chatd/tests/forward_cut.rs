//! A forwarded send whose connection to the leader is cut after the leader took it: the device
//! is told UNAVAILABLE, "may have been committed" — never a definite rejection, since the
//! message is in the chat — and sending it again with the same id returns the original seq,
//! one copy.
//!
//! Three processes. Node 1 leads the chat's partition and is reached, by the others, through a
//! TCP relay in this test (its advertised address is the relay; it listens behind it). Node 2
//! dials from 127.0.0.2 (`bind_ip`), so the relay knows its connections: it first swallows what
//! node 1 answers them (the command gets in, its answer never comes back), then closes them
//! and refuses new ones — a cable pulled between node 2 and the leader mid-call.

use crate::common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::ChatClient;
use chat_proto::admin::{SetBalancingRequest, TransferLeaderRequest};
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use common::{free_port, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const NODE2_IP: &str = "127.0.0.2";

#[derive(Clone, Copy, PartialEq)]
enum Link {
    Open,
    /// Node 2's bytes reach node 1; node 1's answers to node 2 are dropped.
    Swallow,
    /// Node 2's connections are closed and new ones refused.
    Cut,
}

/// The relay in front of node 1.
#[derive(Clone, Default)]
struct Relay {
    node2: Arc<Mutex<Option<Link>>>,
    node2_conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    fn link(&self) -> Link {
        self.node2.lock().unwrap().unwrap_or(Link::Open)
    }

    fn set(&self, link: Link) {
        *self.node2.lock().unwrap() = Some(link);
        if link == Link::Cut {
            for conn in self.node2_conns.lock().unwrap().drain(..) {
                conn.abort();
            }
        }
    }

    async fn start(self, listen: &str, target: String) {
        let listener = TcpListener::bind(listen).await.unwrap();
        tokio::spawn(async move {
            while let Ok((inbound, peer)) = listener.accept().await {
                let from_node2 = peer.ip() == NODE2_IP.parse::<IpAddr>().unwrap();
                if from_node2 && self.link() == Link::Cut {
                    continue; // dropped: refused
                }
                let relay = self.clone();
                let target = target.clone();
                let task = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut in_r, mut in_w) = inbound.into_split();
                    let (mut out_r, mut out_w) = outbound.into_split();
                    let up = tokio::io::copy(&mut in_r, &mut out_w);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match out_r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if from_node2 && relay.link() != Link::Open {
                                continue;
                            }
                            if in_w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                if from_node2 {
                    self.node2_conns.lock().unwrap().push(task.abort_handle());
                }
            }
        });
    }
}

async fn next_answer(stream: &mut chat_client::DeviceStream) -> server_frame::Kind {
    loop {
        let frame = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an answer in time")
            .expect("the stream stays open")
            .unwrap();
        if matches!(
            frame,
            server_frame::Kind::SendAck(_) | server_frame::Kind::SendError(_)
        ) {
            return frame;
        }
    }
}

fn send(client_msg_id: &str, chat_id: u64, timeout_ms: u32) -> client_frame::Kind {
    client_frame::Kind::Send(pb::SendFrame {
        client_msg_id: client_msg_id.into(),
        chat_id,
        payload: client_msg_id.as_bytes().to_vec(),
        media: Vec::new(),
        timeout_ms,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_cut_after_the_leader_took_it_is_unavailable_and_a_resend_finds_it() {
    let behind_relay = format!("127.0.0.1:{}", free_port());
    let node1_listen = behind_relay.clone();
    let cluster = Cluster::start_each(
        3,
        4,
        move |id| match id {
            1 => format!("listen = \"{node1_listen}\"\n"),
            2 => format!("bind_ip = \"{NODE2_IP}\"\n"),
            _ => String::new(),
        },
        &BTreeMap::new(),
    );
    let relay = Relay::default();
    relay
        .clone()
        .start(&cluster.node(1).addr, behind_relay)
        .await;
    cluster.wait_for_leaders(1, WAIT).await;

    let (mut alice, token) = common::register(&cluster.node(3).addr, "alice").await;
    common::register(&cluster.node(3).addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let p = chat_model::ids::partition_of(chat, 4).0;
    cluster
        .wait_for_map(3, WAIT, "a map", |m| m.epoch > 0)
        .await;
    let mut admin = cluster.admin(3).await;
    admin
        .set_balancing(SetBalancingRequest { enabled: false })
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while cluster.wait_for_leaders(3, WAIT).await[&p] != 1 {
        let _ = admin
            .transfer_leader(TransferLeaderRequest {
                partition: p,
                to_node: 1,
            })
            .await;
        assert!(Instant::now() < deadline, "node 1 never led partition {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Alice's device on node 2: a first send is forwarded to node 1 and answered (the
    // forwarding stream is up).
    let mut on2 = ChatClient::connect(&cluster.node(2).addr)
        .await
        .unwrap()
        .with_token(&token)
        .unwrap();
    let mut stream = on2.open_stream(&token, &Default::default()).await.unwrap();
    stream.send_frame(send("warm", chat, 0)).await.unwrap();
    assert!(matches!(
        next_answer(&mut stream).await,
        server_frame::Kind::SendAck(_)
    ));

    // The leader takes the next one, its answer is lost, then the link is cut.
    relay.set(Link::Swallow);
    stream.send_frame(send("cut", chat, 4000)).await.unwrap();
    let mut on3 = alice.clone();
    let committed = loop {
        let page = on3.history(chat, 0, 0, 100).await.unwrap().messages;
        if let Some(m) = page.iter().find(|m| m.client_msg_id == "cut") {
            break m.seq;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never committed the send"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    relay.set(Link::Cut);
    match next_answer(&mut stream).await {
        server_frame::Kind::SendError(e) => {
            eprintln!("the cut send was answered: {}", e.message);
            assert_eq!(e.code, Code::Unavailable as i32, "{e:?}");
            assert!(
                e.message.contains("may have been committed")
                    || e.message.contains("may still commit"),
                "{e:?}"
            );
        }
        other => panic!("a committed send answered {other:?}"),
    }

    // The link back, the same send again: the original seq, one copy.
    relay.set(Link::Open);
    let deadline = Instant::now() + WAIT;
    let ack = loop {
        stream.send_frame(send("cut", chat, 0)).await.unwrap();
        match next_answer(&mut stream).await {
            server_frame::Kind::SendAck(a) => break a.ack.unwrap(),
            server_frame::Kind::SendError(e) if e.code == Code::Unavailable as i32 => {
                assert!(
                    Instant::now() < deadline,
                    "node 2 never reached the leader again"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ack.seq, committed);
    assert!(ack.duplicate, "{ack:?}");
    let page = on3.history(chat, 0, 0, 100).await.unwrap().messages;
    let copies = page.iter().filter(|m| m.client_msg_id == "cut").count();
    assert_eq!(copies, 1, "{page:?}");
}
