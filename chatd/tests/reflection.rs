//! A gRPC client not written here finds and calls the device API through server reflection:
//! Python's grpcio (installed by .ci/run) runs scripts/grpc_reflection_check.py against a real
//! chatd process.

use crate::common;

use std::time::Duration;

use common::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_lists_services_and_calls_register_through_reflection() {
    let cluster = Cluster::start(1, 2);
    cluster.wait_for_leaders(1, Duration::from_secs(20)).await;
    let addr = cluster.node(1).addr.clone();
    let (ok, stdout, stderr) = common::run_python(
        "scripts/grpc_reflection_check.py",
        &[&addr, "reflected-user"],
    )
    .await;
    assert!(ok, "reflection check failed:\n{stdout}\n{stderr}");
    for service in ["chat.v1.Chat", "grpc.health.v1.Health"] {
        assert!(stdout.contains(service), "{service} not listed:\n{stdout}");
    }
    assert!(stdout.contains("Register: user_id="), "{stdout}");
}
