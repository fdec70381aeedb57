//! The `chat` CLI end to end: the real binary against a real node (served in-process on a
//! loopback port), one profile file per device, as the README walkthrough uses it.

use std::path::{Path, PathBuf};
use std::process::Command;

use chatd::config::{Flags, ServerConfig};

struct Env {
    addr: String,
    dir: PathBuf,
}

impl Env {
    /// Run `chat --profile <who>.json --server <addr> args…` and return (ok, stdout, stderr).
    async fn chat(&self, who: &str, args: &[&str]) -> (bool, String, String) {
        let profile = self.dir.join(format!("{who}.json"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat"));
        command
            .arg("--profile")
            .arg(&profile)
            .args(["--server", &self.addr])
            .args(args)
            .env_remove("CHAT_PROFILE")
            .env_remove("CHAT_SERVER");
        let out = tokio::task::spawn_blocking(move || command.output().expect("run chat"))
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

/// A single node in this process on a loopback port, with two partitions and `flags`, once both
/// have a leader.
async fn serve(flags: Flags) -> chatd::server::Running {
    let config = ServerConfig::resolve(Flags {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        partitions: Some(2),
        ..flags
    })
    .unwrap();
    let running = chatd::server::start(config).await.unwrap();
    for p in 0..2 {
        running
            .node
            .wait_for_leader(chat_log::PartitionId(p), std::time::Duration::from_secs(10))
            .await
            .unwrap();
    }
    running
}

fn profile(dir: &Path, who: &str) -> chat_client::profile::Profile {
    chat_client::profile::Profile::load(&dir.join(format!("{who}.json"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_send_tail_resume_history_group() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(Flags {
        data_dir: Some(dir.path().join("data")),
        ..Flags::default()
    })
    .await;
    let env = Env {
        addr: running.local_addr.to_string(),
        dir: dir.path().to_path_buf(),
    };

    let (ok, out, err) = env.chat("alice", &["register", "alice"]).await;
    assert!(ok && out.contains("registered alice"), "{out}{err}");
    let (ok, _, err) = env.chat("bob", &["register", "bob"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = env.chat("mallory", &["register", "alice"]).await;
    assert!(!ok && err.contains("taken"), "{err}");

    let (ok, out, err) = env.chat("bob", &["send", "alice", "hi", "alice"]).await;
    assert!(ok && out.contains("as seq 1"), "{out}{err}");
    let (ok, out, err) = env.chat("alice", &["tail", "--count", "1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("bob: hi alice"), "{out}");
    assert_eq!(
        profile(dir.path(), "alice").cursors.values().max(),
        Some(&1)
    );

    // Resume: tail picks up exactly where the profile's cursors stopped.
    env.chat("bob", &["send", "alice", "second"]).await;
    env.chat("bob", &["send", "alice", "third"]).await;
    let (ok, out, err) = env.chat("alice", &["tail", "--count", "2"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("bob: second") && lines[1].ends_with("bob: third"),
        "{out}"
    );

    // The newest page.
    let (ok, out, err) = env.chat("alice", &["history", "bob", "--limit", "2"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("(2 of 3 messages)")
            && out.contains("second")
            && out.contains("third")
            && !out.contains("hi alice"),
        "{out}"
    );

    // Typing: alice follows while bob types, then sends.
    let (tail, _) = tokio::join!(env.chat("alice", &["tail", "--count", "1"]), async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let (ok, _, err) = env.chat("bob", &["typing", "alice"]).await;
        assert!(ok, "{err}");
        let (ok, _, err) = env.chat("bob", &["send", "alice", "fourth"]).await;
        assert!(ok, "{err}");
    });
    let (ok, out, err) = tail;
    assert!(ok && out.contains("bob: fourth"), "{out}{err}");
    assert!(err.contains("bob is typing…"), "{err}");

    let (ok, out, err) = env
        .chat("bob", &["group", "create", "friends", "alice"])
        .await;
    assert!(ok && out.contains("\"friends\": bob, alice"), "{out}{err}");
    let group = out
        .split_whitespace()
        .find(|w| w.starts_with('#'))
        .expect("the group's id")
        .to_string();
    let (ok, out, err) = env.chat("alice", &["chats"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("group \"friends\"") && out.contains("direct [bob, alice]"),
        "{out}"
    );

    // Roles, a description, leaving, disappearing messages.
    let (ok, out, err) = env
        .chat("bob", &["group", "promote", &group, "alice"])
        .await;
    let admins = out
        .lines()
        .find(|l| l.starts_with("admins:"))
        .unwrap_or_default();
    assert!(
        ok && admins.contains("alice") && admins.contains("bob"),
        "{out}{err}"
    );
    let (ok, out, err) = env
        .chat(
            "alice",
            &["group", "set", &group, "--description", "weekend"],
        )
        .await;
    assert!(ok && out.contains("description: weekend"), "{out}{err}");
    let (ok, out, err) = env.chat("bob", &["group", "leave", &group]).await;
    assert!(ok && out.contains("\"friends\": alice\n"), "{out}{err}");
    let (ok, out, err) = env.chat("alice", &["disappear", "bob", "3600"]).await;
    assert!(ok && out.contains("disappear after 3600 s"), "{out}{err}");

    running.stop().await.unwrap();
}

/// Against a node with TLS on its public address: plaintext fails with a hint naming the TLS
/// flags, TLS with a CA that did not sign the node's certificate fails with a hint naming
/// `--tls-ca`, and `--tls-ca` with the cluster's CA works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_node_is_reached_with_its_ca_and_mismatches_say_what_to_give() {
    use chat_tls::ca::{self, Kind};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let authority = ca::new_ca("test", 1).unwrap();
    let (ca_pem, _) = ca::write(&certs, "ca", &authority).unwrap();
    let node = ca::issue(&authority, Kind::Node, "node1", &["127.0.0.1".into()], 1).unwrap();
    let (cert, key) = ca::write(&certs, "node1", &node).unwrap();
    let other = dir.path().join("other");
    let (other_ca, _) = ca::write(&other, "ca", &ca::new_ca("other", 1).unwrap()).unwrap();
    let running = serve(Flags {
        data_dir: Some(dir.path().join("data")),
        public_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_ca: Some(ca_pem.clone()),
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..Flags::default()
    })
    .await;
    let env = Env {
        addr: running.public_addr.to_string(),
        dir: dir.path().to_path_buf(),
    };

    let (ok, _, err) = env.chat("alice", &["register", "alice"]).await;
    assert!(!ok, "plaintext got through a TLS address");
    assert!(err.contains("hint:") && err.contains("--tls-ca"), "{err}");
    let other_ca = other_ca.display().to_string();
    let (ok, _, err) = env
        .chat("alice", &["--tls-ca", &other_ca, "register", "alice"])
        .await;
    assert!(!ok, "a foreign CA was trusted");
    assert!(
        err.contains("hint:") && err.contains("not signed by the CA"),
        "{err}"
    );
    let ca_pem = ca_pem.display().to_string();
    let (ok, out, err) = env
        .chat("alice", &["--tls-ca", &ca_pem, "register", "alice"])
        .await;
    assert!(ok && out.contains("registered alice"), "{out}{err}");

    // Media over HTTPS: the node's HTTP address speaks TLS with the same certificate.
    let (ok, out, err) = env
        .chat("bob", &["--tls-ca", &ca_pem, "register", "bob"])
        .await;
    assert!(ok, "{out}{err}");
    let photo = dir.path().join("photo.png");
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    let photo = photo.display().to_string();
    let (ok, out, err) = env
        .chat(
            "alice",
            &[
                "--tls-ca", &ca_pem, "send", "bob", "--file", &photo, "a", "photo",
            ],
        )
        .await;
    assert!(ok && out.contains("as seq 1"), "{out}{err}");
    let (ok, out, err) = env
        .chat("bob", &["--tls-ca", &ca_pem, "history", "alice"])
        .await;
    assert!(
        ok && out.contains("alice: a photo [image/png 70000 bytes]"),
        "{out}{err}"
    );
    let got = dir.path().join("got.png");
    let got_arg = got.display().to_string();
    let (ok, out, err) = env
        .chat(
            "bob",
            &["--tls-ca", &ca_pem, "get", "alice", "1", "--out", &got_arg],
        )
        .await;
    assert!(ok && out.contains("sha256 checked"), "{out}{err}");
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
    let (ok, _, err) = env
        .chat("bob", &["--tls-ca", &ca_pem, "get", "alice", "7"])
        .await;
    assert!(!ok && err.contains("no message 7"), "{err}");

    running.stop().await.unwrap();
}
