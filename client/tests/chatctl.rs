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
    // Ready (what health says SERVING on): the partition map made, every group led.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !running.node.can_serve() {
        assert!(std::time::Instant::now() < deadline, "not ready in 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let addr = running.local_addr.to_string();
    let data = dir.path().to_path_buf();

    let run = |args: &'static [&'static str]| {
        let (addr, data) = (addr.clone(), data.clone());
        tokio::task::spawn_blocking(move || chatctl(&addr, &data, args))
    };

    // The node reports SERVING shortly after it can serve (its readiness task looks every
    // 20 ms): health is asked until it says so, within the same deadline.
    let (out, err) = loop {
        let (ok, out, err) = run(&["health"]).await.unwrap();
        if ok {
            break (out, err);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never SERVING: {out}{err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        out.contains("SERVING") && !out.contains("NOT_SERVING"),
        "{out}{err}"
    );

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

    // The same answers as JSON documents, for scripts.
    let json = |out: &str| -> serde_json::Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    };
    let (ok, out, err) = run(&["-o", "json", "status"]).await.unwrap();
    assert!(ok, "{err}");
    let status = json(&out);
    assert_eq!(status["status"]["node_id"], 1, "{out}");
    let parts = status["status"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{out}");
    assert!(parts.iter().all(|p| p["role"] == "leader"), "{out}");
    assert_eq!(status["map"]["partitions"], 2, "{out}");
    let (ok, out, _) = run(&["--output", "json", "digest", "-p", "1"])
        .await
        .unwrap();
    assert!(ok);
    let digest = json(&out);
    assert_eq!(digest[0]["last_offset"], 2, "{out}");
    assert_eq!(digest[0]["sha256"].as_str().unwrap().len(), 64, "{out}");
    let (ok, out, _) = run(&["-o", "json", "read", "-p", "1"]).await.unwrap();
    assert!(ok);
    let events = json(&out)["events"].clone();
    assert_eq!(events[1]["payload"], "world", "{out}");
    let (ok, out, _) = run(&["-o", "json", "verify"]).await.unwrap();
    assert!(ok);
    assert_eq!(json(&out)["errors"].as_array().unwrap().len(), 0, "{out}");

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `--endpoints`: three nodes of one cluster (served in-process, talking over loopback), their
/// status in one table and each partition's digests compared across its replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatctl_across_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
        .collect();
    let starts = (1..=3u64).map(|id| {
        let config = ServerConfig::resolve(Flags {
            node_id: Some(id),
            data_dir: Some(dir.path().join(format!("n{id}"))),
            peers: peers.clone(),
            partitions: Some(2),
            cluster_secret: Some("across-cluster-secret".into()),
            ..Flags::default()
        })
        .unwrap();
        chatd::server::start(config)
    });
    let nodes: Vec<_> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for p in 0..2 {
        nodes[0]
            .node
            .wait_for_leader(chat_log::PartitionId(p), std::time::Duration::from_secs(30))
            .await
            .unwrap();
    }
    // Every node ready (what health says SERVING on): the map made, every group led.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !nodes.iter().all(|n| n.node.can_serve()) {
        assert!(std::time::Instant::now() < deadline, "not ready in 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let endpoints = addrs.join(",");
    let across = |args: Vec<String>| {
        let out = Command::new(env!("CARGO_BIN_EXE_chatctl"))
            .args(["--secret", "across-cluster-secret", "--endpoints"])
            .arg(&endpoints)
            .args(args)
            .output()
            .expect("run chatctl");
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = tokio::task::block_in_place(|| across(args(&["append", "-p", "1", "x"])));
    assert!(!ok, "append is not a command for several nodes: {out}");
    assert!(err.contains("--endpoints is for"), "{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_chatctl"))
            .args([
                "--secret",
                "across-cluster-secret",
                "--addr",
                &addrs[0],
                "append",
                "-p",
                "1",
                "a",
                "b",
            ])
            .output()
            .map(|o| (o.status.success(), (), String::from_utf8(o.stderr).unwrap()))
            .unwrap()
    });
    assert!(ok, "{err}");

    // Every node in one table: each holds both partitions (R = 3 of 3).
    let (ok, out, err) = tokio::task::block_in_place(|| across(args(&["status"])));
    assert!(ok, "{err}");
    for (i, addr) in addrs.iter().enumerate() {
        let row = out
            .lines()
            .find(|l| l.contains(addr.as_str()))
            .unwrap_or_else(|| panic!("no row for {addr}: {out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], (i + 1).to_string(), "{row}");
        assert_eq!(cols[2], "2", "held: {row}");
    }

    // Digests: identical once the followers have applied the appends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let value = loop {
        let (ok, out, err) =
            tokio::task::block_in_place(|| across(args(&["-o", "json", "digest"])));
        assert!(ok, "{err}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        let all_identical = value
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["verdict"] == "identical");
        if all_identical {
            break value;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(value.as_array().unwrap().len(), 2, "{value}");
    let p1 = &value[1]["replicas"];
    assert_eq!(p1.as_array().unwrap().len(), 3, "{value}");
    assert!(
        p1.as_array().unwrap().iter().all(|r| r["last_offset"] == 2),
        "{value}"
    );

    // A node that does not answer is named, and the exit status says so.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_chatctl"))
            .args([
                "--secret",
                "across-cluster-secret",
                "--timeout",
                "2s",
                "--endpoints",
            ])
            .arg(format!("{endpoints},{dead}"))
            .arg("status")
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&dead) && l.contains("unreachable")),
        "{table}"
    );
    // Health asks no secret; one node down makes the answer a failure, naming it.
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_chatctl"))
            .env_remove("CHATD_CLUSTER_SECRET")
            .args(["-o", "json", "--timeout", "2s", "--endpoints"])
            .arg(format!("{endpoints},{dead}"))
            .arg("health")
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    let answers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let health: Vec<&str> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["health"].as_str().unwrap())
        .collect();
    assert_eq!(
        health,
        ["SERVING", "SERVING", "SERVING", "UNREACHABLE"],
        "{answers}"
    );

    for stopped in futures::future::join_all(nodes.into_iter().map(|n| n.stop())).await {
        stopped.unwrap();
    }
}

/// Start a single node on `data_dir` on a loopback port and wait until it is ready.
async fn start_single(data_dir: &std::path::Path) -> chatd::server::Running {
    let config = ServerConfig::resolve(Flags {
        data_dir: Some(data_dir.to_path_buf()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Flags::default()
    })
    .unwrap();
    let running = chatd::server::start(config).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !running.node.can_serve() {
        assert!(std::time::Instant::now() < deadline, "not ready in 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running
}

/// `chatctl -o json digest` of every partition: (last offset, sha256) each.
async fn digests(addr: &str, data_dir: &std::path::Path) -> Vec<(u64, String)> {
    let (addr, data) = (addr.to_string(), data_dir.to_path_buf());
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || chatctl(&addr, &data, &["-o", "json", "digest"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let sha = d["sha256"].as_str().unwrap().to_string();
            (d["last_offset"].as_u64().unwrap(), sha)
        })
        .collect()
}

/// A backup taken from a running node and restored into a new data dir gives every partition
/// as it was when the backup was taken (same digests; what was written after is not there). A
/// damaged backup restores nothing, and a restored dir refuses to start as a member of a
/// larger cluster (its log is rewound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatctl_backup_and_restore_give_the_partitions_as_of_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let running = start_single(&data).await;
    let addr = running.local_addr.to_string();
    let run = |args: Vec<String>| {
        let (addr, data) = (addr.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            chatctl(&addr, &data, &args)
        })
    };
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for p in ["0", "1", "5"] {
        let (ok, _, err) = run(strings(&["append", "-p", p, "before", "the", "backup"]))
            .await
            .unwrap();
        assert!(ok, "{err}");
    }
    let before = digests(&addr, &data).await;
    assert!(before.iter().filter(|(last, _)| *last == 3).count() >= 3);

    let backup = dir.path().join("backup");
    let backup_arg = backup.to_str().unwrap();
    let (ok, out, err) = run(strings(&["backup", backup_arg])).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("backup of node 1"), "{out}");
    let manifest = chat_client::backup::read_manifest(&backup).unwrap();
    assert!(
        manifest.files.iter().any(|f| f.path == "CURRENT"),
        "{manifest:?}"
    );
    // The node deleted its checkpoint once streamed.
    let leftovers = std::fs::read_dir(data.join("backup-checkpoints.tmp")).map(|d| d.count());
    assert_eq!(leftovers.unwrap_or(0), 0);

    let (ok, _, err) = run(strings(&["append", "-p", "0", "after"])).await.unwrap();
    assert!(ok, "{err}");
    assert_ne!(digests(&addr, &data).await, before);
    running.stop().await.unwrap();

    // A damaged copy: refused, nothing written.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir_all(damaged.join("db")).unwrap();
    std::fs::copy(backup.join("MANIFEST.json"), damaged.join("MANIFEST.json")).unwrap();
    let largest = manifest.files.iter().max_by_key(|f| f.size).unwrap();
    for f in &manifest.files {
        let (from, to) = (
            backup.join("db").join(&f.path),
            damaged.join("db").join(&f.path),
        );
        std::fs::copy(&from, &to).unwrap();
        if f.path == largest.path {
            let mut bytes = std::fs::read(&to).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&to, bytes).unwrap();
        }
    }
    let nowhere = dir.path().join("nowhere");
    let args = strings(&[
        "restore",
        damaged.to_str().unwrap(),
        "--to",
        nowhere.to_str().unwrap(),
    ]);
    let (ok, _, err) = run(args).await.unwrap();
    assert!(!ok);
    assert!(
        err.contains("does not match the backup's manifest"),
        "{err}"
    );
    assert!(err.contains(&largest.path), "{err}");
    assert!(!nowhere.exists());

    // Restored: the partitions as of the backup.
    let restored = dir.path().join("restored");
    let args = strings(&["restore", backup_arg, "--to", restored.to_str().unwrap()]);
    let (ok, out, err) = run(args).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("restored node 1's data"), "{out}");
    let running = start_single(&restored).await;
    let addr = running.local_addr.to_string();
    assert_eq!(digests(&addr, &restored).await, before);
    assert!(!restored
        .join(chat_proto::protocol::RESTORED_MARKER)
        .exists());
    running.stop().await.unwrap();

    // The same backup as a member of a three-node cluster: refused.
    let member = dir.path().join("member-cluster-secret");
    let args = strings(&["restore", backup_arg, "--to", member.to_str().unwrap()]);
    let (ok, _, err) = run(args).await.unwrap();
    assert!(ok, "{err}");
    let peers = (1..=3)
        .map(|id| format!("{id}=127.0.0.1:{}", free_port()))
        .collect();
    let config = ServerConfig::resolve(Flags {
        node_id: Some(1),
        data_dir: Some(member.clone()),
        peers,
        cluster_secret: Some("member-cluster-secret".into()),
        ..Flags::default()
    })
    .unwrap();
    let refused = chatd::server::start(config).await.err().expect("refused");
    let message = format!("{refused:#}");
    assert!(message.contains("was restored from a backup"), "{message}");
    assert!(member.join(chat_proto::protocol::RESTORED_MARKER).exists());
}

/// `chatctl replay` prints a partition's chat events decoded (types and fields, no message
/// contents), and `chatctl retention run` sweeps at once: with a one-second window and the
/// periodic sweep an hour away, the messages sent expire only when it is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatctl_replay_decodes_events_and_retention_run_sweeps_now() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("chatd.toml");
    std::fs::write(
        &config_file,
        "[retention]\nexpire_after_secs = 1\nsweep_ms = 3600000\n",
    )
    .unwrap();
    let data = dir.path().join("node");
    let config = ServerConfig::resolve(Flags {
        config: Some(config_file),
        data_dir: Some(data.clone()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        partitions: Some(1),
        ..Flags::default()
    })
    .unwrap();
    let running = chatd::server::start(config).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !running.node.can_serve() {
        assert!(std::time::Instant::now() < deadline, "not ready in 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let addr = running.local_addr.to_string();

    let mut alice = chat_client::ChatClient::connect(&addr).await.unwrap();
    let token = alice.register("alice", 1).await.unwrap().token;
    let mut alice = alice.with_token(&token).unwrap();
    let chat = alice.create_group("g1", "ops", &[]).await.unwrap().chat_id;
    let device =
        chat_client::Device::start(chat_client::DeviceOptions::new(vec![addr.clone()], &token));
    for i in 0..3 {
        let text = format!("secret text {i}").into_bytes();
        device.send(chat, text).await.unwrap();
    }

    let run = |args: &'static [&'static str]| {
        let (addr, data) = (addr.clone(), data.clone());
        tokio::task::spawn_blocking(move || chatctl(&addr, &data, args))
    };
    let (ok, out, err) = run(&["replay", "-p", "0"]).await.unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("user_registered") && out.contains("handle=\"alice\""),
        "{out}"
    );
    assert!(
        out.contains("chat_created") && out.contains("name=\"ops\""),
        "{out}"
    );
    let messages = out.lines().filter(|l| l.contains("\tmessage\t")).count();
    assert_eq!(messages, 3, "{out}");
    assert!(
        !out.contains("secret text"),
        "message contents are not printed: {out}"
    );

    let (ok, out, err) = run(&[
        "-o", "json", "replay", "-p", "0", "--from", "2", "--limit", "2",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    let offsets: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3], "{out}");

    // Past the window; nothing expires until a sweep is asked for.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let page = alice.history(chat, 0, 0, 10).await.unwrap().messages;
    assert!(page.iter().all(|m| !m.expired), "{page:?}");
    let (ok, out, err) = run(&["-o", "json", "retention", "run"]).await.unwrap();
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["messages_expired"], 3, "{out}");
    assert_eq!(report["chats_expired"], 1, "{out}");
    let page = alice.history(chat, 0, 0, 10).await.unwrap().messages;
    assert_eq!(page.len(), 3);
    assert!(
        page.iter().all(|m| m.expired && m.payload.is_empty()),
        "{page:?}"
    );
    // And the log says so.
    let (ok, out, _) = run(&["replay", "-p", "0"]).await.unwrap();
    assert!(ok);
    assert!(out.contains("messages_expired"), "{out}");
    running.stop().await.unwrap();
}

/// `chatctl certs` makes a CA and certificates an operator can start a node with; `chatctl`
/// then reaches the node's admin API only with the admin certificate, and says why not without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatctl_certs_make_a_tls_cluster_that_admits_only_its_admins() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap().to_string();
    let data = dir.path().join("data");
    let make = |args: &[&str]| chatctl("127.0.0.1:1", &data, args);
    for args in [
        vec!["certs", "ca", "--dir", &certs_arg, "--cluster", "test"],
        vec![
            "certs",
            "node",
            "n1",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--dir",
            &certs_arg,
        ],
        vec!["certs", "client", "admin", "--dir", &certs_arg],
    ] {
        let (ok, out, err) = make(&args);
        assert!(ok && out.contains("wrote"), "{args:?}: {out}{err}");
    }
    // A CA is never written over.
    let (ok, _, err) = make(&["certs", "ca", "--dir", &certs_arg]);
    assert!(!ok && err.contains("exists"), "{err}");
    // A node certificate without a host cannot be checked by anyone: refused by clap.
    assert!(!make(&["certs", "node", "n2", "--dir", &certs_arg]).0);

    let config = ServerConfig::resolve(Flags {
        data_dir: Some(data.clone()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        public_listen: Some("127.0.0.1:0".parse().unwrap()),
        partitions: Some(1),
        tls_ca: Some(certs.join("ca.pem")),
        tls_cert: Some(certs.join("n1.pem")),
        tls_key: Some(certs.join("n1.key")),
        ..Flags::default()
    })
    .unwrap();
    let running = chatd::server::start(config).await.unwrap();
    let addr = running.local_addr.to_string();
    let file = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("admin.pem"), file("admin.key"));
    let run = move |args: Vec<String>| {
        let (addr, data) = (addr.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            chatctl(&addr, &data, &args)
        })
    };
    let with_cert = |cmd: &str| {
        vec![
            "--tls-ca".into(),
            ca.clone(),
            "--tls-cert".into(),
            cert.clone(),
            "--tls-key".into(),
            key.clone(),
            cmd.to_string(),
        ]
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, out, err) = run(with_cert("health")).await.unwrap();
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}{err}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (ok, out, err) = run(with_cert("status")).await.unwrap();
    assert!(ok && out.contains("node 1"), "{out}{err}");

    // Trusting the CA but showing no certificate, or in plaintext: refused, and said so.
    let (ok, _, err) = run(vec!["--tls-ca".into(), ca.clone(), "status".into()])
        .await
        .unwrap();
    assert!(
        !ok && err.contains("hint:") && err.contains("--tls-cert"),
        "{err}"
    );
    let (ok, _, err) = run(vec!["status".into()]).await.unwrap();
    assert!(
        !ok && err.contains("hint: the node may have TLS on"),
        "{err}"
    );
    running.stop().await.unwrap();
}
