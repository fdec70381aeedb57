//! Fuzzing the device stream's frames and their handling on a real chatd process: streams that
//! open with a valid Hello (so the frames reach the session) or a damaged one, then carry
//! frames of every kind with random and extreme field values, and their encodings with bytes
//! flipped, cut or spliced. Whatever a stream gets back, the node must stay up and go on
//! serving a well-behaved device. Reproducible: `FUZZ_SEED` picks the inputs, `FUZZ_STREAMS`
//! how many streams (a longer run: `FUZZ_STREAMS=5000 cargo test --release -p chatd --test
//! all fuzz_frames::`).

use crate::common;

use std::time::Duration;

use chat_client::{Device, DeviceEvent, DeviceOptions};
use chat_proto::chat_v1::{self as pb, client_frame::Kind};
use common::{register, Cluster, RawCodec};
use futures::StreamExt;
use prost::Message;
use rand::{Rng, SeedableRng};

const WAIT: Duration = Duration::from_secs(30);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A number that is often at an edge: 0, 1, small, a real id, the largest values.
fn number(rng: &mut impl Rng, real: u64) -> u64 {
    match rng.gen_range(0..8) {
        0 => 0,
        1 => 1,
        2 => real,
        3 => u64::MAX,
        4 => u64::MAX - rng.gen_range(0..3),
        5 => 1 << 62,
        6 => rng.gen_range(0..1000),
        _ => rng.gen(),
    }
}

fn text(rng: &mut impl Rng) -> String {
    let len = match rng.gen_range(0..4) {
        0 => 0,
        1 => rng.gen_range(1..16),
        2 => rng.gen_range(100..300),
        _ => rng.gen_range(1000..5000),
    };
    (0..len).map(|_| rng.gen_range(' '..='~')).collect()
}

fn bytes(rng: &mut impl Rng) -> Vec<u8> {
    let len = match rng.gen_range(0..4) {
        0 => 0,
        1 => rng.gen_range(1..64),
        2 => rng.gen_range(60_000..70_000),
        _ => rng.gen_range(64..4096),
    };
    (0..len).map(|_| rng.gen()).collect()
}

/// A frame of a random kind with random, often extreme, fields.
fn frame(rng: &mut impl Rng, token: &str, chat: u64) -> pb::ClientFrame {
    let kind = match rng.gen_range(0..10) {
        // A second Hello ends a stream: rare, so most streams live long enough to send.
        0 => Kind::Hello(pb::Hello {
            token: if rng.gen_bool(0.5) {
                token.to_string()
            } else {
                text(rng)
            },
            cursors: (0..rng.gen_range(0..20))
                .map(|_| pb::Cursor {
                    chat_id: number(rng, chat),
                    seq: number(rng, 1),
                })
                .collect(),
        }),
        // Half of the sends well-formed, so the write path is reached too.
        1..=3 if rng.gen_bool(0.5) => Kind::Send(pb::SendFrame {
            client_msg_id: format!("m{}", rng.gen::<u32>()),
            chat_id: chat,
            payload: b"fuzz".to_vec(),
            media: vec![],
            timeout_ms: 0,
        }),
        1..=3 => Kind::Send(pb::SendFrame {
            client_msg_id: text(rng),
            chat_id: number(rng, chat),
            payload: bytes(rng),
            media: (0..rng.gen_range(0..4))
                .map(|_| pb::MediaRef {
                    object_key: text(rng),
                    mime: text(rng),
                    size: number(rng, 10),
                    sha256: bytes(rng),
                    key_blob: bytes(rng),
                })
                .collect(),
            timeout_ms: number(rng, 100) as u32,
        }),
        4 | 5 => Kind::Ack(pb::AckFrame {
            chat_id: number(rng, chat),
            up_to_seq: number(rng, 1),
        }),
        6 | 7 => Kind::Read(pb::AckFrame {
            chat_id: number(rng, chat),
            up_to_seq: number(rng, 1),
        }),
        _ => Kind::Ping(pb::Ping { nonce: rng.gen() }),
    };
    pb::ClientFrame { kind: Some(kind) }
}

/// An encoding, damaged with probability `chance`: bytes flipped, cut short, random bytes
/// spliced in.
fn damage(rng: &mut impl Rng, chance: f64, mut encoded: Vec<u8>) -> Vec<u8> {
    if !rng.gen_bool(chance) {
        return encoded;
    }
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..3) {
            0 if !encoded.is_empty() => {
                let at = rng.gen_range(0..encoded.len());
                encoded[at] ^= rng.gen_range(1..=255u8);
            }
            1 => encoded.truncate(rng.gen_range(0..=encoded.len())),
            _ => {
                let at = rng.gen_range(0..=encoded.len());
                let extra: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                encoded.splice(at..at, extra);
            }
        }
    }
    encoded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_damaged_frames_never_take_the_node_down() {
    let seed = env("FUZZ_SEED", rand::random());
    let streams = env("FUZZ_STREAMS", 150);
    println!("FUZZ_SEED={seed} FUZZ_STREAMS={streams}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start_with(
        1,
        2,
        "[chat]\nsends_per_second = 100000\nsend_burst = 100000\n[gateway]\ncalls_per_second = 100000\ncall_burst = 100000\n",
    );
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let (_bob, bob_token) = register(&addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;

    let path = http::uri::PathAndQuery::from_static("/chat.v1.Chat/Connect");
    // Streams let in (so their frames reached the session), sends that got through, streams
    // ended with an error: a run must see all three, or the inputs never reached the handling.
    let (mut welcomed, mut acked, mut refused) = (0, 0, 0);
    let mut grpc = common::raw_grpc(&addr).await;
    for _ in 0..streams {
        let first = pb::ClientFrame {
            kind: Some(Kind::Hello(pb::Hello {
                token: alice_token.clone(),
                cursors: vec![],
            })),
        };
        let mut frames = vec![damage(&mut rng, 0.3, first.encode_to_vec())];
        for _ in 0..rng.gen_range(1..20) {
            let encoded = frame(&mut rng, &alice_token, chat).encode_to_vec();
            frames.push(damage(&mut rng, 0.05, encoded));
        }
        // The stream stays open a while after its frames, so what they started can answer.
        let linger = futures::stream::once(tokio::time::sleep(Duration::from_millis(200)))
            .filter_map(|()| async { None::<Vec<u8>> });
        let frames = futures::stream::iter(frames).chain(linger);
        grpc.ready().await.unwrap();
        let opened = grpc
            .streaming(
                tonic::Request::new(frames),
                path.clone(),
                RawCodec::<pb::ServerFrame>::default(),
            )
            .await;
        // Read what comes back for a while; the stream may end with any status.
        if let Ok(reply) = opened {
            let mut reply = reply.into_inner();
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                loop {
                    match reply.message().await {
                        Ok(Some(pb::ServerFrame {
                            kind: Some(pb::server_frame::Kind::Welcome(_)),
                        })) => welcomed += 1,
                        Ok(Some(pb::ServerFrame {
                            kind: Some(pb::server_frame::Kind::SendAck(_)),
                        })) => acked += 1,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => {
                            refused += 1;
                            break;
                        }
                    }
                }
            })
            .await;
        }
        assert!(
            cluster.exited(1).is_none(),
            "the node died (FUZZ_SEED={seed})"
        );
    }

    println!("{welcomed} streams let in, {acked} sends acknowledged, {refused} streams refused");
    assert!(welcomed > 0 && acked > 0 && refused > 0, "FUZZ_SEED={seed}");

    // The node serves a well-behaved device as before.
    assert!(
        cluster.exited(1).is_none(),
        "the node died (FUZZ_SEED={seed})"
    );
    let sender = Device::start(DeviceOptions::new(vec![addr.clone()], &alice_token));
    let ack = sender.send(chat, b"still here".to_vec()).await.unwrap();
    let mut bob = Device::start(DeviceOptions::new(vec![addr.clone()], &bob_token));
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match bob.next_event().await {
                Some(DeviceEvent::Message(m)) if m.seq == ack.seq => return m,
                Some(_) => {}
                None => panic!("bob's device stopped"),
            }
        }
    })
    .await
    .expect("bob got the message");
    assert_eq!(got.payload, b"still here");
}
