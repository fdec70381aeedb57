//! Self-tests of the checkers: a clean history passes every checker, and each anomaly, injected
//! into that history, is detected (by its kind) — so a checker that silently passes everything
//! would fail here.

use std::collections::BTreeSet;

use chat_jepsen::checkers::check_all;
use chat_jepsen::history::{History, Op, OpType, Seen, Value, F};

#[derive(Default)]
struct Builder {
    h: History,
    t: u64,
}

fn seen(msgs: &[(u64, &str)]) -> Vec<Seen> {
    msgs.iter()
        .map(|&(seq, id)| Seen {
            seq,
            id: id.into(),
            ts: Some(1000 * seq),
        })
        .collect()
}

impl Builder {
    fn op(&mut self, process: u64, kind: OpType, f: F, value: Value, node: Option<u64>) {
        self.t += 1000;
        self.h.push(Op {
            index: 0,
            time: self.t,
            process,
            kind,
            f,
            value,
            node,
            error: None,
        });
    }

    fn send_invoke(&mut self, p: u64, chat: u64, id: &str) {
        let v = Value {
            chat,
            id: Some(id.into()),
            ..Value::default()
        };
        self.op(p, OpType::Invoke, F::Send, v, Some(1));
    }

    fn send_done(&mut self, p: u64, chat: u64, id: &str, kind: OpType, seq: Option<u64>) {
        let v = Value {
            chat,
            id: Some(id.into()),
            seq,
            ..Value::default()
        };
        self.op(p, kind, F::Send, v, Some(1));
    }

    fn send(&mut self, p: u64, chat: u64, id: &str, seq: u64) {
        self.send_invoke(p, chat, id);
        self.send_done(p, chat, id, OpType::Ok, Some(seq));
    }

    fn poll(&mut self, p: u64, chat: u64, resumed_from: Option<u64>, msgs: &[(u64, &str)]) {
        let v = Value {
            chat,
            messages: seen(msgs),
            resumed_from,
            ..Value::default()
        };
        self.op(p, OpType::Invoke, F::Poll, Value::of_chat(chat), Some(2));
        self.op(p, OpType::Ok, F::Poll, v, Some(2));
    }

    fn drain(&mut self, node: u64, chat: u64, msgs: &[(u64, &str)]) {
        let v = Value {
            chat,
            messages: seen(msgs),
            ..Value::default()
        };
        self.op(
            100 + node,
            OpType::Invoke,
            F::Drain,
            Value::of_chat(chat),
            Some(node),
        );
        self.op(100 + node, OpType::Ok, F::Drain, v, Some(node));
    }

    /// A send of `device` through the device API, acknowledged at `seq` (or unknown).
    fn device_send(&mut self, p: u64, device: &str, chat: u64, id: &str, seq: Option<u64>) {
        let v = Value {
            chat,
            id: Some(id.into()),
            device: Some(device.into()),
            ..Value::default()
        };
        self.op(p, OpType::Invoke, F::Send, v.clone(), Some(1));
        let (kind, seq) = match seq {
            Some(s) => (OpType::Ok, Some(s)),
            None => (OpType::Info, None),
        };
        self.op(p, kind, F::Send, Value { seq, ..v }, Some(1));
    }

    /// What device `device` of `user` got on its stream.
    fn device_poll(&mut self, p: u64, user: u64, device: &str, chat: u64, msgs: &[(u64, &str)]) {
        let v = Value {
            chat,
            messages: seen(msgs),
            user: Some(user),
            device: Some(device.into()),
            ..Value::default()
        };
        self.op(p, OpType::Invoke, F::Poll, Value::of_chat(chat), Some(2));
        self.op(p, OpType::Ok, F::Poll, v, Some(2));
    }

    fn receipt(&mut self, p: u64, chat: u64, user: u64, delivered: u64, read: u64, last: u64) {
        let v = Value {
            chat,
            user: Some(user),
            delivered: Some(delivered),
            read: Some(read),
            last_seq: Some(last),
            ..Value::default()
        };
        self.op(p, OpType::Invoke, F::Receipt, Value::of_chat(chat), Some(2));
        self.op(p, OpType::Ok, F::Receipt, v, Some(2));
    }
}

/// A clean run: three sends to chat 1 (a failed send and a timed-out one too), a reader that
/// reconnects and resumes, receipts, and full drains from three nodes.
fn clean(drains: impl Fn(&mut Builder)) -> Builder {
    let mut b = Builder::default();
    b.send(0, 1, "a", 1);
    b.poll(9, 1, Some(0), &[(1, "a")]);
    b.send(1, 1, "b", 2);
    b.send_invoke(2, 1, "f");
    b.send_done(2, 1, "f", OpType::Fail, None);
    b.send_invoke(3, 1, "t");
    b.send_done(3, 1, "t", OpType::Info, None); // timed out: it did happen, at seq 4 below
    b.send(0, 1, "c", 3);
    b.poll(9, 1, None, &[(2, "b"), (3, "c")]);
    b.poll(9, 1, Some(2), &[(3, "c"), (4, "t")]); // reconnected with cursor 2
    b.receipt(9, 1, 7, 1, 0, 3);
    b.receipt(9, 1, 7, 3, 2, 3);
    drains(&mut b);
    b
}

fn full_drains(b: &mut Builder) {
    for node in 1..=3 {
        b.drain(node, 1, &[(1, "a"), (2, "b"), (3, "c"), (4, "t")]);
    }
}

fn kinds(b: &Builder) -> BTreeSet<&'static str> {
    check_all(&b.h).anomalies().map(|a| a.kind).collect()
}

#[test]
fn a_clean_history_passes_every_checker() {
    let b = clean(full_drains);
    let report = check_all(&b.h);
    assert!(report.valid(), "{report}");
    assert!(
        report.to_string().ends_with("checks: 9 passed, 0 failed"),
        "{report}"
    );
}

#[test]
fn history_round_trips_through_jsonl() {
    let b = clean(full_drains);
    let mut out = Vec::new();
    b.h.write_jsonl(&mut out).unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.lines().next().unwrap().contains("\"type\":\"invoke\""),
        "{text}"
    );
    assert_eq!(History::read_jsonl(&out[..]).unwrap(), b.h);
    assert!(History::read_jsonl(&b"{not json\n"[..])
        .unwrap_err()
        .to_string()
        .contains("line 1"));
}

#[test]
fn inconsistent_seq_is_detected() {
    // Node 2 holds b at seq 3 and c at seq 2: readers disagree on order.
    let b = clean(|b| {
        b.drain(1, 1, &[(1, "a"), (2, "b"), (3, "c"), (4, "t")]);
        b.drain(2, 1, &[(1, "a"), (2, "c"), (3, "b"), (4, "t")]);
    });
    assert!(kinds(&b).contains("inconsistent-seq"), "{:?}", kinds(&b));
}

#[test]
fn duplicates_are_detected() {
    // The same message at two seqs of one read.
    let b = clean(|b| b.drain(1, 1, &[(1, "a"), (2, "b"), (3, "c"), (4, "t"), (5, "c")]));
    assert!(kinds(&b).contains("duplicate"), "{:?}", kinds(&b));
    // Two acks of one client_msg_id with different seqs.
    let mut b = clean(full_drains);
    b.send(0, 1, "c", 5);
    assert!(kinds(&b).contains("duplicate"), "{:?}", kinds(&b));
}

#[test]
fn gaps_lost_and_lost_on_node_are_detected() {
    let b = clean(|b| {
        for node in 1..=3 {
            b.drain(node, 1, &[(1, "a"), (3, "c"), (4, "t")]);
        }
    });
    let k = kinds(&b);
    assert!(k.contains("gap") && k.contains("lost"), "{k:?}");
    let b = clean(|b| {
        b.drain(1, 1, &[(1, "a"), (2, "b"), (3, "c"), (4, "t")]);
        b.drain(2, 1, &[(1, "a"), (2, "b"), (3, "c")]);
    });
    assert_eq!(kinds(&b), BTreeSet::from(["lost-on-node"]));
}

#[test]
fn aborted_and_phantom_reads_are_detected() {
    let b = clean(|b| {
        for node in 1..=3 {
            b.drain(node, 1, &[(1, "a"), (2, "b"), (3, "c"), (4, "t"), (5, "f")]);
        }
    });
    assert_eq!(kinds(&b), BTreeSet::from(["aborted-read"]));
    let b = clean(|b| {
        for node in 1..=3 {
            b.drain(
                node,
                1,
                &[(1, "a"), (2, "b"), (3, "c"), (4, "t"), (5, "ghost")],
            );
        }
    });
    assert_eq!(kinds(&b), BTreeSet::from(["phantom-read"]));
}

#[test]
fn stream_skips_repeats_and_bad_resumes_are_detected() {
    let mut b = clean(full_drains);
    b.poll(8, 1, Some(0), &[(1, "a"), (3, "c")]);
    assert_eq!(kinds(&b), BTreeSet::from(["poll-skip"]));
    let mut b = clean(full_drains);
    b.poll(8, 1, Some(0), &[(1, "a"), (2, "b")]);
    b.poll(8, 1, None, &[(2, "b")]);
    assert_eq!(kinds(&b), BTreeSet::from(["nonmonotonic-poll"]));
    let mut b = clean(full_drains);
    b.poll(8, 1, Some(2), &[(2, "b"), (3, "c")]);
    assert!(kinds(&b).contains("bad-resume"), "{:?}", kinds(&b));
}

#[test]
fn realtime_order_violations_are_detected() {
    // x is acknowledged before y is sent, yet y got the lower seq.
    let mut b = Builder::default();
    b.send(0, 2, "x", 2);
    b.send(1, 2, "y", 1);
    for node in 1..=3 {
        b.drain(node, 2, &[(1, "y"), (2, "x")]);
    }
    assert_eq!(kinds(&b), BTreeSet::from(["realtime-order"]));
    // A retried send spans from its first attempt: here y's first attempt (which took effect)
    // began before x was acknowledged, so y's lower seq is fine even though its retry began after.
    let mut b = Builder::default();
    b.send_invoke(1, 2, "y");
    b.send_done(1, 2, "y", OpType::Info, None);
    b.send(0, 2, "x", 2);
    b.send_invoke(5, 2, "y");
    b.send_done(5, 2, "y", OpType::Ok, Some(1));
    for node in 1..=3 {
        b.drain(node, 2, &[(1, "y"), (2, "x")]);
    }
    assert!(kinds(&b).is_empty(), "{:?}", kinds(&b));
    // Concurrent sends may commit in either order.
    let mut b = Builder::default();
    b.send_invoke(0, 2, "x");
    b.send_invoke(1, 2, "y");
    b.send_done(0, 2, "x", OpType::Ok, Some(2));
    b.send_done(1, 2, "y", OpType::Ok, Some(1));
    for node in 1..=3 {
        b.drain(node, 2, &[(1, "y"), (2, "x")]);
    }
    assert!(kinds(&b).is_empty(), "{:?}", kinds(&b));
}

#[test]
fn receipt_anomalies_are_detected() {
    let mut b = clean(full_drains);
    b.receipt(9, 1, 7, 2, 2, 4);
    assert_eq!(kinds(&b), BTreeSet::from(["receipt-regression"]));
    let mut b = clean(full_drains);
    b.receipt(8, 1, 7, 1, 2, 4);
    assert_eq!(kinds(&b), BTreeSet::from(["receipt-order"]));
    let mut b = clean(full_drains);
    b.receipt(8, 1, 7, 9, 0, 4);
    assert_eq!(kinds(&b), BTreeSet::from(["receipt-beyond-last"]));
}

#[test]
fn check_command_reports_and_sets_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let run = |b: &Builder, name: &str| {
        let path = dir.path().join(name);
        b.h.write_jsonl(std::fs::File::create(&path).unwrap())
            .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_chat-jepsen"))
            .args(["check", "--history"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = run(&clean(full_drains), "clean.jsonl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("checks: 9 passed, 0 failed"), "{stdout}");

    let broken = clean(|b| b.drain(1, 1, &[(1, "a"), (3, "c"), (4, "t")]));
    let out = run(&broken, "broken.jsonl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("gap:")
            && stdout.contains("lost:")
            && stdout.contains("checks: 8 passed, 1 failed"),
        "{stdout}"
    );
}

#[test]
fn timeline_svg_shows_latency_throughput_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timeline.svg");
    let faults = [chat_jepsen::harness::timeline::Interval {
        from: 0.2,
        to: 0.5,
        what: "kill -9 node 2, restart".into(),
    }];
    chat_jepsen::harness::timeline::write_svg(&path, &clean(full_drains).h, &faults).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    assert!(
        svg.contains("acknowledged send latency") && svg.contains("acknowledged sends per second")
    );
    // Three acknowledged sends are plotted as points; the fault is a shaded rectangle in each chart.
    assert!(svg.matches("<circle").count() >= 3, "points missing");
    let shaded = svg.lines().filter(|l| {
        l.contains("<rect") && l.contains("opacity=\"0.3\"") && !l.contains("width=\"0\"")
    });
    assert_eq!(
        shaded.count(),
        2,
        "the fault must be shaded in both charts:\n{svg}"
    );
}

#[test]
fn timestamp_regressions_are_detected() {
    let b = clean(|b| {
        full_drains(b);
        let mut msgs = seen(&[(1, "a"), (2, "b"), (3, "c"), (4, "t")]);
        msgs[2].ts = Some(1500); // seq 3 before seq 2's 2000 ms
        b.op(
            1_000_004,
            OpType::Invoke,
            F::Drain,
            Value::of_chat(1),
            Some(1),
        );
        b.op(
            1_000_004,
            OpType::Ok,
            F::Drain,
            Value {
                chat: 1,
                messages: msgs,
                ..Value::default()
            },
            Some(1),
        );
    });
    assert_eq!(kinds(&b), BTreeSet::from(["timestamp-regression"]));
}

#[test]
fn a_send_still_open_at_the_end_may_show_up_in_reads() {
    // Process 4 invokes "o" and never completes (the run ended): it may have been applied, so a
    // drain holding it is neither aborted nor phantom. A process that completed with a failure
    // afterwards closes its invoke, so "f" stays aborted.
    let b = clean(|b| {
        b.send_invoke(4, 1, "o");
        for node in 1..=3 {
            b.drain(node, 1, &[(1, "a"), (2, "b"), (3, "c"), (4, "t"), (5, "o")]);
        }
    });
    assert!(kinds(&b).is_empty(), "{:?}", kinds(&b));
}

/// Two devices of user 7 that each got all of chat 2, whose messages device u5d1 sent in the
/// order x, y, z (z's ack lost).
fn devices_history(drain: &[(u64, &str)], second_device: &[(u64, &str)]) -> Builder {
    let mut b = Builder::default();
    b.device_send(20, "u5d1", 2, "x", Some(1));
    b.device_send(21, "u5d1", 2, "y", Some(2));
    b.device_send(22, "u5d1", 2, "z", None);
    b.device_poll(30, 7, "u7d1", 2, &[(1, "x"), (2, "y"), (3, "z")]);
    b.device_poll(31, 7, "u7d2", 2, second_device);
    for node in 1..=3 {
        b.drain(node, 2, drain);
    }
    b
}

#[test]
fn device_order_missed_and_disagreeing_devices_are_detected() {
    let all = [(1, "x"), (2, "y"), (3, "z")];
    let b = devices_history(&all, &all);
    assert!(check_all(&b.h).valid(), "{}", check_all(&b.h));

    // The device sent y before z, and z's ack was lost: a drain holding z first breaks its order.
    let mut b = Builder::default();
    b.device_send(20, "u5d1", 2, "x", Some(1));
    b.device_send(21, "u5d1", 2, "y", None);
    b.device_send(22, "u5d1", 2, "z", None);
    for node in 1..=3 {
        b.drain(node, 2, &[(1, "x"), (2, "z"), (3, "y")]);
    }
    assert_eq!(kinds(&b), BTreeSet::from(["device-order"]));
    // Acks out of the device's order.
    let mut b = Builder::default();
    b.device_send(20, "u5d1", 2, "x", Some(2));
    b.device_send(21, "u5d1", 2, "y", Some(1));
    for node in 1..=3 {
        b.drain(node, 2, &[(1, "y"), (2, "x")]);
    }
    // (realtime-order too: x was acknowledged before y was sent.)
    let report = check_all(&b.h);
    let order: Vec<_> = report
        .anomalies()
        .filter(|a| a.kind == "device-order")
        .collect();
    assert_eq!(order.len(), 4, "the acks and three drains: {report}");

    // The second device never got seq 2; then one that got another message at seq 3.
    let b = devices_history(&all, &[(1, "x"), (3, "z")]);
    assert!(kinds(&b).contains("device-missed"), "{:?}", kinds(&b));
    let b = devices_history(&all, &[(1, "x"), (2, "y"), (3, "x")]);
    assert!(kinds(&b).contains("device-disagree"), "{:?}", kinds(&b));
    // A device that got nothing at all of the chat misses all of it.
    let mut b = devices_history(&all, &all);
    b.device_poll(32, 7, "u7d3", 9, &[]);
    assert!(kinds(&b).contains("device-missed"), "{:?}", kinds(&b));
}

#[test]
fn lost_after_read_and_failed_drains_are_detected() {
    // z's send was ambiguous, a reader saw it, and no drain holds it.
    let b = devices_history(&[(1, "x"), (2, "y")], &[(1, "x"), (2, "y")]);
    assert!(kinds(&b).contains("lost-after-read"), "{:?}", kinds(&b));
    let all = [(1, "x"), (2, "y"), (3, "z")];
    let mut b = devices_history(&all, &all);
    b.op(104, OpType::Invoke, F::Drain, Value::of_chat(2), Some(4));
    b.op(104, OpType::Fail, F::Drain, Value::of_chat(2), Some(4));
    assert_eq!(kinds(&b), BTreeSet::from(["drain-failed"]));
}
