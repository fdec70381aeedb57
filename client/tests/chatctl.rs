//! `chatctl` end to end: the real binary against a real node (served in-process on a loopback
//! port), finding the generated secret in the data dir like an operator would.

use std::process::Command;

use chatd::config::{Flags, ServerConfig};

fn chatctl(addr: &str, data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatctl"))
        .args(["--addr", addr, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("CHATD_CLUSTER_SECRET")
        .output()
        .expect("run chatctl");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatctl_status_append_read_digest_compact_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::resolve(Flags {
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        partitions: Some(2),
        ..Flags::default()
    })
    .unwrap();
    let running = chatd::server::start(config).await.unwrap();
    running
        .node
        .wait_for_leader(chat_log::PartitionId(1), std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let addr = running.local_addr.to_string();
    let data = dir.path().to_path_buf();

    let run = |args: &'static [&'static str]| {
        let (addr, data) = (addr.clone(), data.clone());
        tokio::task::spawn_blocking(move || chatctl(&addr, &data, args))
    };

    let (ok, out, err) = run(&["status"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("node 1 — holds 2 of 2 partitions"), "{out}");
    let role = |l: &&str| l.split_whitespace().nth(1) == Some("leader");
    let partition_rows = out.lines().filter(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|p| p.parse::<u32>().is_ok())
    });
    assert_eq!(partition_rows.filter(role).count(), 2, "{out}");
    // The metadata group (the partition map's Raft group) has a row of its own.
    assert!(
        out.lines().any(|l| l.starts_with("meta ") && role(&l)),
        "{out}"
    );
    assert!(
        out.contains(&format!("1 ({addr})")),
        "leader address must be the bound one: {out}"
    );

    let (ok, out, err) = run(&["append", "-p", "1", "hello", "world"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("offsets [1, 2]"), "{out}");

    let (ok, out, _) = run(&["read", "-p", "1"]).await.unwrap();
    assert!(ok);
    let payloads: Vec<&str> = out
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(payloads, ["hello", "world"]);

    let (ok, out, _) = run(&["digest"]).await.unwrap();
    assert!(ok);
    assert!(
        out.contains("partition 0\tlast_offset 0") && out.contains("partition 1\tlast_offset 2"),
        "{out}"
    );

    let (ok, out, err) = run(&["compact", "-p", "1"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("snapshot at raft index"), "{out}");

    let (ok, out, _) = run(&["verify"]).await.unwrap();
    assert!(ok);
    assert!(out.contains(", 0 corrupt"), "{out}");

    // Errors are clear and the exit status says so.
    let (ok, _, err) = run(&["append", "-p", "9", "x"]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("partition 9 does not exist"), "{err}");
    let (ok, _, err) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || chatctl(&addr, std::path::Path::new("/nonexistent"), &["status"])
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("cluster_secret"), "{err}");

    running.stop().await.unwrap();
}
