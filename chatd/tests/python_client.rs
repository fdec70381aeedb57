//! A client written from the `.proto` files alone: `examples/python/chat_example.py` (Python's
//! grpcio, stubs generated at its start with grpcio-tools) registers two users, opens a direct
//! chat and both device streams, sends, receives live and reads history, against a real chatd
//! process — what docs/protocol.md tells a client developer, done by a client not written here.

use crate::common;

use std::time::Duration;

use common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_client_chats_through_a_real_node() {
    let cluster = Cluster::start(1, 2);
    cluster.wait_for_leaders(1, Duration::from_secs(20)).await;
    let addr = cluster.node(1).addr.clone();
    let (ok, stdout, stderr) =
        common::run_python("examples/python/chat_example.py", &[&addr]).await;
    assert!(ok, "the Python client failed:\n{stdout}\n{stderr}");
    for step in [
        "sent: seq 1",
        "bob received seq 1: hello from python",
        "history: 1 message(s), last seq 1",
        "ok",
    ] {
        assert!(stdout.contains(step), "{step:?} missing:\n{stdout}");
    }
}
