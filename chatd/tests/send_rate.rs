//! The per-user send rate holds cluster-wide: a user who sends through every node of a 3-node
//! cluster at once gets the configured rate in all, not three times it (each node counting on
//! its own would let `burst + rate × t` through on each). Every refusal is RESOURCE_EXHAUSTED,
//! and the whole burst is usable.

use crate::common;

use std::time::{Duration, Instant};

use chat_client::ChatClient;
use chat_proto::chat_v1::server_frame;
use common::{register, Cluster};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const RATE: f64 = 5.0;
const BURST: usize = 10;
/// Sends offered through each node, all at once.
const EACH: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sending_through_every_node_gets_one_rate() {
    let cluster = Cluster::start_with(3, 4, "[chat]\nsends_per_second = 5\nsend_burst = 10\n");
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, token) = register(&cluster.node(1).addr, "alice").await;
    register(&cluster.node(1).addr, "bob").await;
    let chat = alice.create_direct("bob").await.unwrap().chat_id;

    // One stream of alice's device on each node; her bucket is full (she has sent nothing).
    let mut streams = Vec::new();
    for node in 1..=3 {
        let mut client = ChatClient::connect(&cluster.node(node).addr)
            .await
            .unwrap()
            .with_token(&token)
            .unwrap();
        let stream = client
            .open_stream(&token, &Default::default())
            .await
            .unwrap();
        streams.push(stream);
    }

    let started = Instant::now();
    for (i, stream) in streams.iter().enumerate() {
        for k in 0..EACH {
            stream
                .send(chat, &format!("n{i}-{k}"), b"x".to_vec())
                .await
                .unwrap();
        }
    }
    let mut accepted = 0;
    let mut refused = 0;
    for stream in &mut streams {
        let mut answered = 0;
        while answered < EACH {
            let frame = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("an answer to every send")
                .expect("the stream stays open")
                .unwrap();
            match frame {
                server_frame::Kind::SendAck(_) => {
                    accepted += 1;
                    answered += 1;
                }
                server_frame::Kind::SendError(e) => {
                    assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
                    assert!(e.message.contains("faster than 5 messages/s"), "{e:?}");
                    refused += 1;
                    answered += 1;
                }
                _ => {}
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("{accepted} accepted, {refused} refused in {elapsed:.2} s");
    assert_eq!(accepted + refused, 3 * EACH);
    // One bucket for the cluster: at most its burst plus what it refills while the flood lasts
    // (half a second of slack for the clock's start). Counted per node, each of the three would
    // have let its own burst through: 30 at least.
    let bound = BURST as f64 + RATE * (elapsed + 0.5);
    assert!(
        (accepted as f64) <= bound,
        "{accepted} sends accepted in {elapsed:.2} s through 3 nodes; one cluster-wide bucket allows at most {bound:.1}"
    );
    // The burst is usable, wherever the sends entered.
    assert!(accepted >= BURST, "only {accepted} accepted");

    let history = alice.history(chat, 0, 0, 200).await.unwrap().messages;
    assert_eq!(
        history.len(),
        accepted,
        "every accepted send is in the chat, nothing else"
    );
}
