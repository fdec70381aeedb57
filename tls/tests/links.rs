//! TLS links over real sockets: a gRPC server (health) behind `accept`, clients dialling with
//! `Dialer`: who gets through the internal and the public side, and certificates replaced on
//! disk taking effect for new connections without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_tls::ca::{self, Kind};
use chat_tls::{accept, client_config, Dialer, NodeTls, Side, TlsPaths};
use tonic::transport::Endpoint;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const DAYS: u32 = 30;

/// A CA in `dir` (`ca.pem`, `ca.key`), a node certificate for 127.0.0.1 (`node.*`) and an admin
/// client certificate (`admin.*`).
fn make_certs(dir: &Path) -> ca::Issued {
    let authority = ca::new_ca("test", DAYS).unwrap();
    ca::write(dir, "ca", &authority).unwrap();
    let node = ca::issue(
        &authority,
        Kind::Node,
        "node1",
        &["127.0.0.1".into(), "localhost".into()],
        DAYS,
    )
    .unwrap();
    ca::write(dir, "node", &node).unwrap();
    let admin = ca::issue(&authority, Kind::Client, "admin", &[], DAYS).unwrap();
    ca::write(dir, "admin", &admin).unwrap();
    authority
}

fn paths(dir: &Path) -> TlsPaths {
    TlsPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
        public_cert: None,
    }
}

/// Serve gRPC health on a loopback port through `accept` for `side`; its address.
async fn serve(tls: Arc<NodeTls>, side: Side) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = accept(
        tonic::transport::server::TcpIncoming::from(listener),
        Some((tls, side)),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    addr
}

/// Whether a health check through `dialer` to `addr` gets an answer.
async fn gets_through(dialer: &Dialer, addr: std::net::SocketAddr) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    let channel = dialer
        .connect(endpoint, None)
        .await
        .map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_internal_side_takes_only_certificates_of_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let tls = NodeTls::load(paths(dir.path())).unwrap();
    let addr = serve(tls.clone(), Side::Internal).await;

    // Another node (the node's own identity) and an admin certificate get through.
    gets_through(&Dialer::node(tls.clone()), addr)
        .await
        .unwrap();
    let admin = client_config(
        Some(&dir.path().join("ca.pem")),
        Some((&dir.path().join("admin.pem"), &dir.path().join("admin.key"))),
    )
    .unwrap();
    gets_through(&Dialer::fixed(admin), addr).await.unwrap();

    // No client certificate: refused.
    let anonymous = client_config(Some(&dir.path().join("ca.pem")), None).unwrap();
    assert!(gets_through(&Dialer::fixed(anonymous), addr).await.is_err());

    // A certificate of another CA (an attacker's own cluster): refused.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path());
    let foreign = client_config(
        Some(&dir.path().join("ca.pem")),
        Some((
            &other.path().join("admin.pem"),
            &other.path().join("admin.key"),
        )),
    )
    .unwrap();
    assert!(gets_through(&Dialer::fixed(foreign), addr).await.is_err());

    // Plaintext: refused.
    assert!(gets_through(&Dialer::plain(), addr).await.is_err());

    // A client that trusts another CA does not accept this node as the server.
    let misled = client_config(
        Some(&other.path().join("ca.pem")),
        Some((
            &other.path().join("admin.pem"),
            &other.path().join("admin.key"),
        )),
    )
    .unwrap();
    assert!(gets_through(&Dialer::fixed(misled), addr).await.is_err());
}

#[tokio::test]
async fn the_public_side_needs_no_client_certificate_but_is_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let tls = NodeTls::load(paths(dir.path())).unwrap();
    let addr = serve(tls, Side::Public).await;
    let device = client_config(Some(&dir.path().join("ca.pem")), None).unwrap();
    gets_through(&Dialer::fixed(device), addr).await.unwrap();
    assert!(gets_through(&Dialer::plain(), addr).await.is_err());
}

#[tokio::test]
async fn certificates_replaced_on_disk_are_used_by_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let tls = NodeTls::load(paths(dir.path())).unwrap();
    let addr = serve(tls.clone(), Side::Internal).await;
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

    // The cluster moves to a new CA: new files written over the old ones.
    let next = tempfile::tempdir().unwrap();
    make_certs(next.path());
    let new_admin = client_config(
        Some(&next.path().join("ca.pem")),
        Some((
            &next.path().join("admin.pem"),
            &next.path().join("admin.key"),
        )),
    )
    .unwrap();
    assert!(gets_through(&Dialer::fixed(new_admin.clone()), addr)
        .await
        .is_err());

    // A half-copied set (a key that does not go with the certificate) is refused and the old
    // certificates stay in use.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(next.path().join("node.key"), dir.path().join("node.key")).unwrap();
    assert!(tls.reload_if_changed().is_err());
    gets_through(&Dialer::node(tls.clone()), addr)
        .await
        .unwrap();

    for file in ["ca.pem", "node.pem"] {
        std::fs::copy(next.path().join(file), dir.path().join(file)).unwrap();
    }
    assert!(tls.reload_if_changed().unwrap());
    gets_through(&Dialer::fixed(new_admin), addr).await.unwrap();
    let old_admin = client_config(
        Some(&next.path().join("ca.pem")),
        Some((&dir.path().join("admin.pem"), &dir.path().join("admin.key"))),
    )
    .unwrap();
    assert!(
        gets_through(&Dialer::fixed(old_admin), addr).await.is_err(),
        "a certificate of the old CA no longer gets in"
    );
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let mut bad = paths(dir.path());
    bad.cert = dir.path().join("missing.pem");
    let err = format!("{:#}", NodeTls::load(bad).err().unwrap());
    assert!(err.contains("missing.pem"), "{err}");

    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
    let mut bad = paths(dir.path());
    bad.ca = dir.path().join("garbage.pem");
    let err = format!("{:#}", NodeTls::load(bad).err().unwrap());
    assert!(err.contains("garbage.pem"), "{err}");

    // A node certificate names where it is dialled; writing over a CA is refused.
    let authority = ca::read(dir.path(), "ca").unwrap();
    assert!(ca::issue(&authority, Kind::Node, "n", &[], DAYS).is_err());
    assert!(ca::write(dir.path(), "ca", &authority).is_err());
}
