//! TLS on every link, with real chatd processes: three nodes with certificates of one cluster
//! CA, each serving the device API on a public address and Raft, forwarding and admin on an
//! internal one. What an attacker would try — plaintext, no client certificate, a certificate
//! of another CA, internal services on the public port — fails; devices and admins with the
//! right certificates get through; a node's certificate replaced on disk is served to new
//! connections without a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use chat_client::device::ChatClient;
use chat_client::{Device, DeviceEvent, DeviceOptions};
use chat_tls::ca::{self, Kind};
use chat_tls::{client_config, Dialer};
use tonic::transport::Endpoint;

const SECRET: &str = "tls-test-cluster-secret";
const DAYS: u32 = 2;

struct Node {
    internal: String,
    public: String,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster CA, a certificate per node (for 127.0.0.1) and an admin certificate, in `dir`.
fn make_certs(dir: &Path, nodes: u64) {
    let authority = ca::new_ca("tls-test", DAYS).unwrap();
    ca::write(dir, "ca", &authority).unwrap();
    for id in 1..=nodes {
        let cert = ca::issue(
            &authority,
            Kind::Node,
            &format!("n{id}"),
            &["127.0.0.1".into()],
            DAYS,
        )
        .unwrap();
        ca::write(dir, &format!("n{id}"), &cert).unwrap();
    }
    ca::write(
        dir,
        "admin",
        &ca::issue(&authority, Kind::Client, "admin", &[], DAYS).unwrap(),
    )
    .unwrap();
}

/// Start `n` nodes with TLS; their addresses.
fn start(dir: &Path, certs: &Path, n: u64) -> Vec<Node> {
    let addrs: Vec<(String, String)> = (0..n)
        .map(|_| {
            (
                format!("127.0.0.1:{}", common::free_port()),
                format!("127.0.0.1:{}", common::free_port()),
            )
        })
        .collect();
    let peers: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, (internal, _))| format!("{}={internal}", i + 1))
        .collect();
    let config = dir.join("fast.toml");
    std::fs::write(
        &config,
        "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n[tls]\nreload_check_ms = 200\n",
    )
    .unwrap();
    (1..=n)
        .map(|id| {
            let (internal, public) = addrs[id as usize - 1].clone();
            let log = std::fs::File::create(dir.join(format!("n{id}.log"))).unwrap();
            let cert = |ext: &str| certs.join(format!("n{id}.{ext}"));
            let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
                .args(["--node-id", &id.to_string(), "--listen", &internal])
                .args(["--public-listen", &public, "--peers", &peers.join(",")])
                .args(["--partitions", "4", "--cluster-secret", SECRET])
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(dir.join(format!("n{id}")))
                .arg("--tls-ca")
                .arg(certs.join("ca.pem"))
                .arg("--tls-cert")
                .arg(cert("pem"))
                .arg("--tls-key")
                .arg(cert("key"))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            Node {
                internal,
                public,
                child,
            }
        })
        .collect()
}

fn endpoint(addr: &str) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
}

fn device_dialer(certs: &Path) -> Dialer {
    Dialer::fixed(client_config(Some(&certs.join("ca.pem")), None).unwrap())
}

fn admin_dialer(certs: &Path) -> Dialer {
    let identity = (certs.join("admin.pem"), certs.join("admin.key"));
    Dialer::fixed(
        client_config(
            Some(&certs.join("ca.pem")),
            Some((&identity.0, &identity.1)),
        )
        .unwrap(),
    )
}

/// Status of the node at `addr` through its admin API.
async fn status(dialer: &Dialer, addr: &str) -> Result<chat_proto::admin::StatusReply, String> {
    let channel = dialer
        .connect(endpoint(addr), None)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut admin = chat_proto::admin_client(channel, SECRET).unwrap();
    admin
        .status(chat_proto::admin::StatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Wait until every node's status names a leader for each of its partitions.
async fn wait_for_leaders(certs: &Path, nodes: &[Node]) {
    let admin = admin_dialer(certs);
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in nodes {
        loop {
            match status(&admin, &node.internal).await {
                Ok(s)
                    if !s.partitions.is_empty()
                        && s.partitions.iter().all(|p| p.leader_id != 0) =>
                {
                    break
                }
                other => assert!(
                    Instant::now() < deadline,
                    "no leaders on {}: {other:?}",
                    node.internal
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_serves_devices_and_admins_and_refuses_who_has_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs, 3);
    let nodes = start(dir.path(), &certs, 3);
    // Raft between the nodes runs over mutual TLS: leaders are elected.
    wait_for_leaders(&certs, &nodes).await;

    // Devices over TLS on the public addresses: a message sent through node 1 reaches a device
    // on node 3 (forwarded and replicated over the internal links).
    let devices = device_dialer(&certs);
    let mut alice = ChatClient::connect_via(&devices, &nodes[0].public)
        .await
        .unwrap();
    let alice_token = alice.register("alice", 1).await.unwrap().token;
    let mut bob = ChatClient::connect_via(&devices, &nodes[2].public)
        .await
        .unwrap();
    let bob_token = bob.register("bob", 1).await.unwrap().token;
    let mut alice = alice.with_token(&alice_token).unwrap();
    let chat = alice.create_direct("bob").await.unwrap().chat_id;
    let mut options = DeviceOptions::new(vec![nodes[0].public.clone()], &alice_token);
    options.dialer = devices.clone();
    let sender = Device::start(options);
    let ack = sender.send(chat, b"over tls".to_vec()).await.unwrap();
    let mut options = DeviceOptions::new(vec![nodes[2].public.clone()], &bob_token);
    options.dialer = devices.clone();
    let mut receiver = Device::start(options);
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match receiver.next_event().await {
                Some(DeviceEvent::Message(m)) => return m,
                Some(_) => {}
                None => panic!("the device stopped"),
            }
        }
    })
    .await
    .expect("bob's device got the message");
    assert_eq!(
        (got.seq, got.payload.as_slice()),
        (ack.seq, &b"over tls"[..])
    );

    // The admin API with the admin certificate works...
    let admin = admin_dialer(&certs);
    status(&admin, &nodes[1].internal).await.unwrap();
    // ...and without one, with one of another CA, or in plaintext, nothing gets through, even
    // with the right cluster secret.
    let no_cert = device_dialer(&certs);
    // (With TLS 1.3 the client finishes its handshake before the server has checked the
    // client's certificate: the refusal arrives on the first call.)
    assert!(status(&no_cert, &nodes[1].internal).await.is_err());
    let other = dir.path().join("other-ca");
    make_certs(&other, 1);
    let foreign = Dialer::fixed(
        client_config(
            Some(&certs.join("ca.pem")),
            Some((&other.join("admin.pem"), &other.join("admin.key"))),
        )
        .unwrap(),
    );
    assert!(status(&foreign, &nodes[1].internal).await.is_err());
    assert!(status(&Dialer::plain(), &nodes[1].internal).await.is_err());
    assert!(plain_register_fails(&nodes[1].public).await);

    // The public address serves no internal service, and the internal one no device call.
    let err = status(&devices, &nodes[1].public).await.unwrap_err();
    assert!(err.starts_with("Unimplemented"), "{err}");
    let mut on_internal = ChatClient::connect_via(&admin, &nodes[1].internal)
        .await
        .unwrap();
    let err = on_internal.register("mallory", 1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");

    // Reflection on the public address lists only the public services.
    assert_eq!(
        listed_services(&devices, &nodes[1].public).await,
        vec![
            "chat.v1.Chat".to_string(),
            "grpc.health.v1.Health".to_string()
        ]
    );
    let internal = listed_services(&admin, &nodes[1].internal).await;
    assert!(
        internal.iter().any(|s| s.starts_with("chat.admin")),
        "{internal:?}"
    );
}

/// A plaintext Register on a TLS port: fails (the connection may open, the call cannot).
async fn plain_register_fails(addr: &str) -> bool {
    match ChatClient::connect(addr).await {
        Err(_) => true,
        Ok(mut c) => c.register("eve", 1).await.is_err(),
    }
}

/// The services reflection lists at `addr`.
async fn listed_services(dialer: &Dialer, addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = dialer.connect(endpoint(addr), None).await.unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// The certificate the server at `addr` shows (DER).
async fn served_certificate(certs: &Path, addr: &str) -> Vec<u8> {
    let config = client_config(Some(&certs.join("ca.pem")), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &PathBuf) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs, 1);
    let nodes = start(dir.path(), &certs, 1);
    wait_for_leaders(&certs, &nodes).await;
    let before = served_certificate(&certs, &nodes[0].public).await;
    assert_eq!(before, pem_der(&certs.join("n1.pem")));

    // The operator issues a new certificate for the node and copies it over the old files.
    let authority = ca::read(&certs, "ca").unwrap();
    let renewed = ca::issue(
        &authority,
        Kind::Node,
        "n1-renewed",
        &["127.0.0.1".into()],
        DAYS,
    )
    .unwrap();
    let staging = dir.path().join("renewed");
    ca::write(&staging, "n1", &renewed).unwrap();
    for ext in ["key", "pem"] {
        std::fs::copy(
            staging.join(format!("n1.{ext}")),
            certs.join(format!("n1.{ext}")),
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = served_certificate(&certs, &nodes[0].public).await;
        if now == pem_der(&staging.join("n1.pem")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The node goes on serving: its internal side took the new certificate too.
    status(&admin_dialer(&certs), &nodes[0].internal)
        .await
        .unwrap();
}
