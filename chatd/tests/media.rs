//! Media beside the log, through presigned URLs, on real chatd processes:
//! - three nodes with the embedded store: a blob uploaded on node 1 is downloaded by a member on
//!   node 2 (node 2 has node 1 sign the URL), with ranges; the bytes are in node 1's data dir and
//!   in no replica's log; forged, expired, oversize and mismatched requests are refused; deleting
//!   the message deletes the blob, while deleting a message that only quotes someone else's key
//!   does not;
//! - one node: the disappearing-messages timer expires a media message and its blob;
//! - an S3 bucket (moto's standalone server, started by the test): the same upload, download
//!   and release through presigned S3 URLs.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chat_client::{ChatClient, DeviceStream};
use chat_model::media::ObjectKey;
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use common::{register, Cluster};
use sha2::{Digest, Sha256};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

fn http() -> reqwest::Client {
    chat_client::media::http_client(None).unwrap()
}

/// Bytes no log should ever hold: a recognisable run inside random data.
fn blob(len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    let marker = b"MEDIA-MARKER-THAT-NEVER-IS-LOGGED";
    bytes[100..100 + marker.len()].copy_from_slice(marker);
    bytes
}

/// A raw stream past its SyncComplete.
async fn stream(addr: &str, token: &str) -> DeviceStream {
    common::synced_stream(addr, token, WAIT).await.0
}

/// Send a message with `media` (and `text`) on `s`; its ack.
async fn send_media(
    s: &mut DeviceStream,
    chat: u64,
    id: &str,
    text: &str,
    media: Vec<pb::MediaRef>,
) -> pb::SendAck {
    s.send_frame(client_frame::Kind::Send(pb::SendFrame {
        client_msg_id: id.into(),
        chat_id: chat,
        payload: text.as_bytes().to_vec(),
        media,
        timeout_ms: 0,
    }))
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(WAIT, s.next()).await.unwrap() {
            Some(Ok(server_frame::Kind::SendAck(ack))) if ack.client_msg_id == id => {
                return ack.ack.unwrap();
            }
            Some(Ok(server_frame::Kind::SendError(e))) if e.client_msg_id == id => {
                panic!("send {id} refused: {e:?}")
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Where node `data_dir`'s embedded store keeps `key`.
fn blob_path(data_dir: &Path, key: &str) -> PathBuf {
    let key = ObjectKey::parse(key).unwrap();
    data_dir
        .join("media")
        .join(format!("u{}", key.uploader))
        .join(key.id)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `url` with query parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_string()
            } else {
                v.into()
            };
            (k.into(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_go_beside_the_log_and_are_deleted_with_their_message() {
    let cluster = Cluster::start_with(3, 2, "[media]\nmax_bytes = 1048576\n");
    cluster.wait_for_leaders(1, WAIT).await;
    let (addr1, addr2) = (cluster.node(1).addr.clone(), cluster.node(2).addr.clone());
    let (mut ann, ann_token) = register(&addr1, "ann").await;
    let (mut ben, ben_token) = register(&addr2, "ben").await;
    let chat = ann
        .create_group("g", "pictures", &["ben".into()])
        .await
        .unwrap()
        .chat_id;
    let http = http();

    // Upload on node 1: the blob lands in node 1's data dir, whole.
    let bytes = blob(300_000);
    let media = chat_client::media::upload(&mut ann, &http, bytes.clone(), "image/png")
        .await
        .unwrap();
    assert!(media.object_key.starts_with("n1/"), "{}", media.object_key);
    let stored = blob_path(&cluster.node(1).data_dir, &media.object_key);
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);

    // A media-only message; ben, on node 2, reads it and downloads the blob through node 2.
    let mut ann_stream = stream(&addr1, &ann_token).await;
    let ack = send_media(&mut ann_stream, chat, "pic-1", "", vec![media.clone()]).await;
    let page = ben.history(chat, 0, 0, 10).await.unwrap();
    let got = page.messages.iter().find(|m| m.seq == ack.seq).unwrap();
    assert!(got.payload.is_empty());
    assert_eq!(got.media, vec![media.clone()]);
    let downloaded = chat_client::media::download(&mut ben, &http, &got.media[0])
        .await
        .unwrap();
    assert_eq!(downloaded, bytes, "node 2 had node 1 sign the URL");

    // Range requests.
    let grant = ben.create_download(&media.object_key).await.unwrap();
    let part = http
        .get(&grant.url)
        .header("range", "bytes=1000-1099")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[1000..1100]);

    // Forged and expired URLs, and keys that are not keys.
    let forged = with_param(&grant.url, "sig", &"0".repeat(64));
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);
    let stretched = with_param(
        &grant.url,
        "exp",
        &(grant.expires_at_ms + 3_600_000).to_string(),
    );
    assert_eq!(http.get(&stretched).send().await.unwrap().status(), 403);
    let expired = with_param(&grant.url, "exp", "1000");
    assert_eq!(http.get(&expired).send().await.unwrap().status(), 403);
    let bad = ben.create_download("../../etc/passwd").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // Uploads: over the node's limit, with other bytes than granted, more bytes than granted.
    let too_big = ann
        .create_upload("image/png", 2 * 1024 * 1024, vec![0; 32])
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument, "{too_big:?}");
    let no_hash = ann
        .create_upload("image/png", 10, vec![])
        .await
        .unwrap_err();
    assert_eq!(no_hash.code(), Code::InvalidArgument, "{no_hash:?}");
    let anonymous = ChatClient::connect(&addr1)
        .await
        .unwrap()
        .create_upload("image/png", 10, vec![0; 32])
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let other = blob(1000);
    let grant = ann
        .create_upload("image/png", 1000, Sha256::digest(&other).to_vec())
        .await
        .unwrap();
    let mismatched = http.put(&grant.url).body(blob(1000)).send().await.unwrap();
    assert_eq!(mismatched.status(), 400);
    let longer = http.put(&grant.url).body(blob(1001)).send().await.unwrap();
    assert_eq!(longer.status(), 400);
    assert!(!blob_path(&cluster.node(1).data_dir, &grant.object_key).exists());
    let ok = http
        .put(&grant.url)
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let again = http
        .put(&grant.url)
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "a retried upload of a stored blob");

    // Ben quotes ann's blob in a message of his own and deletes it; then ann deletes another
    // message of hers, with the second blob. Once that blob is gone the reaper has passed
    // ben's deletion too (one chat, one partition, in log order): ann's first blob must stay.
    let second = blob_path(&cluster.node(1).data_dir, &grant.object_key);
    let second_ref = pb::MediaRef {
        object_key: grant.object_key.clone(),
        mime: "image/png".into(),
        size: 1000,
        sha256: Sha256::digest(&other).to_vec(),
        key_blob: vec![7; 32],
    };
    let ack2 = send_media(&mut ann_stream, chat, "pic-2", "second", vec![second_ref]).await;
    let mut ben_stream = stream(&addr2, &ben_token).await;
    let quote = send_media(
        &mut ben_stream,
        chat,
        "quote-1",
        "look",
        vec![media.clone()],
    )
    .await;
    ben.delete_message(chat, quote.seq).await.unwrap();
    ann.delete_message(chat, ack2.seq).await.unwrap();
    wait_until("the second blob removed", || !second.exists()).await;
    assert!(
        stored.exists(),
        "a quoting message's deletion removed the uploader's blob"
    );

    // Ann deletes her first message: the blob goes from node 1's disk, its URL answers 404.
    ann.delete_message(chat, ack.seq).await.unwrap();
    wait_until("the deleted message's blob removed", || !stored.exists()).await;
    let grant = ben.create_download(&media.object_key).await.unwrap();
    assert_eq!(http.get(&grant.url).send().await.unwrap().status(), 404);

    // The bytes never went through the log.
    for id in 1..=3 {
        for p in 0..2 {
            for event in cluster.read_all(id, p).await {
                let hit = event
                    .payload
                    .windows(16)
                    .any(|w| w == &b"MEDIA-MARKER-THA"[..]);
                assert!(
                    !hit,
                    "node {id} partition {p} offset {} holds media bytes",
                    event.offset
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappearing_messages_take_their_blobs_with_them() {
    let cluster = Cluster::start_with(1, 2, "[retention]\nsweep_ms = 200\n");
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let (mut ann, ann_token) = register(&addr, "ann").await;
    register(&addr, "ben").await;
    let chat = ann.create_direct("ben").await.unwrap().chat_id;
    let bytes = blob(5000);
    let media = chat_client::media::upload(&mut ann, &http(), bytes, "video/mp4")
        .await
        .unwrap();
    let stored = blob_path(&cluster.node(1).data_dir, &media.object_key);
    assert!(stored.exists());
    let mut s = stream(&addr, &ann_token).await;
    let ack = send_media(&mut s, chat, "v1", "a clip", vec![media]).await;
    ann.update_chat(pb::UpdateChatRequest {
        chat_id: chat,
        disappear_after_secs: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_until("the expired message's blob removed", || !stored.exists()).await;
    let page = ann.history(chat, 0, 0, 10).await.unwrap();
    let m = page.messages.iter().find(|m| m.seq == ack.seq).unwrap();
    assert!(m.expired && m.media.is_empty(), "{m:?}");
}

/// moto's S3 server on a free port, stopped when dropped.
struct Moto(std::process::Child, String);

impl Moto {
    async fn start() -> Moto {
        let port = common::free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/deps test installs moto[server])");
        let url = format!("http://127.0.0.1:{port}");
        let moto = Moto(child, url);
        let deadline = Instant::now() + WAIT;
        while http().get(&moto.1).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_bucket_stores_media_through_presigned_urls() {
    let moto = Moto::start().await;
    let http = http();
    let created = http
        .put(format!("{}/chat-media", moto.1))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{created:?}");
    let cluster = Cluster::start_with(
        1,
        2,
        &format!(
            "[media]\nstore = \"s3\"\n[media.s3]\nbucket = \"chat-media\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            moto.1
        ),
    );
    cluster.wait_for_leaders(1, WAIT).await;
    let addr = cluster.node(1).addr.clone();
    let (mut ann, ann_token) = register(&addr, "ann").await;
    let (mut ben, _) = register(&addr, "ben").await;
    let chat = ann.create_direct("ben").await.unwrap().chat_id;

    let bytes = blob(200_000);
    let media = chat_client::media::upload(&mut ann, &http, bytes.clone(), "image/jpeg")
        .await
        .unwrap();
    let grant = ann.create_download(&media.object_key).await.unwrap();
    assert!(
        grant.url.starts_with(&moto.1),
        "a bucket URL: {}",
        grant.url
    );
    assert!(
        grant.url.contains("X-Amz-Signature="),
        "presigned: {}",
        grant.url
    );
    // The object is in the bucket under its key.
    let listing = http
        .get(format!("{}/chat-media?list-type=2", moto.1))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains(&media.object_key), "{listing}");

    let mut s = stream(&addr, &ann_token).await;
    let ack = send_media(&mut s, chat, "p1", "", vec![media.clone()]).await;
    let got = chat_client::media::download(&mut ben, &http, &media)
        .await
        .unwrap();
    assert_eq!(got, bytes);

    ann.delete_message(chat, ack.seq).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let grant = ben.create_download(&media.object_key).await.unwrap();
        if http.get(&grant.url).send().await.unwrap().status() == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the released object is still in the bucket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
