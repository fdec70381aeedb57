//! Read models end to end against real `chatd` processes: the inbox (unread counts and order
//! through sends and reads), group ticks pushed to the sender, and the projector's guarantees —
//! a rebuild while serving is byte-identical to a copy that was never rebuilt, and a node killed
//! mid-projection (`kill -9` under load) resumes to exactly the same projection as the others.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_client::{ChatClient, Device, DeviceEvent, DeviceOptions};
use chat_proto::admin::ProjectionStatus;
use chat_proto::chat_v1::{InboxEntry, TickFrame};
use common::{register, until_synced, Cluster};

const CONFIG: &str = "[chat]\nsends_per_second = 1000000\nsend_burst = 1000000\n";
const WAIT: Duration = Duration::from_secs(30);

fn device(addr: &str, token: &str) -> Device {
    Device::start(DeviceOptions::new(vec![addr.to_string()], token))
}

/// Poll `client`'s inbox until `pred` holds.
async fn inbox_until(
    client: &mut ChatClient,
    what: &str,
    pred: impl Fn(&[InboxEntry]) -> bool,
) -> Vec<InboxEntry> {
    let deadline = Instant::now() + WAIT;
    loop {
        let inbox = client.inbox().await.unwrap();
        if pred(&inbox) {
            return inbox;
        }
        assert!(Instant::now() < deadline, "{what}: inbox is {inbox:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn entry(inbox: &[InboxEntry], chat: u64) -> &InboxEntry {
    inbox
        .iter()
        .find(|e| e.chat_id == chat)
        .expect("chat in inbox")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbox_unread_and_order_and_group_ticks() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, alice_token) = register(&addr, "alice").await;
    let (mut bob, bob_token) = register(&addr, "bob").await;
    let (_, carol_token) = register(&addr, "carol").await;
    let ab = alice.create_direct("bob").await.unwrap().chat_id;
    let ac = alice.create_direct("carol").await.unwrap().chat_id;
    let group = alice
        .create_group("g", "trio", &["bob".into(), "carol".into()])
        .await
        .unwrap()
        .chat_id;

    // Bob and carol write from devices that acknowledge nothing.
    let quiet = |token: &str| {
        let mut options = DeviceOptions::new(vec![addr.clone()], token);
        options.auto_ack = false;
        Device::start(options)
    };
    let b = quiet(&bob_token);
    let c = quiet(&carol_token);
    // Activity is ordered by the leader's clock in milliseconds (ties by chat id), and a send
    // can be acknowledged within the millisecond of the one before: keep the three chats'
    // last sends in distinct milliseconds so the order asserted below is the order sent.
    let next_ms = || tokio::time::sleep(Duration::from_millis(3));
    for i in 0..3 {
        b.send(ab, format!("b{i}").into_bytes()).await.unwrap();
    }
    next_ms().await;
    for i in 0..2 {
        c.send(ac, format!("c{i}").into_bytes()).await.unwrap();
    }
    next_ms().await;
    b.send(group, b"to the group".to_vec()).await.unwrap();
    let inbox = inbox_until(&mut alice, "unread after sends", |i| {
        i.len() == 3 && i.iter().map(|e| e.unread).sum::<u64>() == 6
    })
    .await;
    let order: Vec<u64> = inbox.iter().map(|e| e.chat_id).collect();
    assert_eq!(order, vec![group, ac, ab], "most recent activity first");
    assert_eq!(
        (
            entry(&inbox, ab).unread,
            entry(&inbox, ac).unread,
            entry(&inbox, group).unread
        ),
        (3, 2, 1)
    );
    // A sender's own messages are not unread for them.
    let bobs = inbox_until(&mut bob, "bob's inbox", |i| i.len() == 2).await;
    assert_eq!(entry(&bobs, ab).unread, 0);

    // Alice reads the direct chat with bob (through a stream): unread drops, and a new message
    // moves that chat to the top.
    let mut a = device(&addr, &alice_token);
    until_synced(&mut a, WAIT).await;
    a.read(ab, 3).await;
    inbox_until(&mut alice, "read", |i| entry(i, ab).unread == 0).await;
    b.send(ab, b"again".to_vec()).await.unwrap();
    let inbox = inbox_until(&mut alice, "new message", |i| entry(i, ab).unread == 1).await;
    assert_eq!(inbox[0].chat_id, ab);

    // Group ticks: alice sends two messages. Alice's device acks everything it receives; bob's
    // and carol's marks decide her ticks.
    for i in 0..2 {
        a.send(group, format!("a{i}").into_bytes()).await.unwrap();
    }
    // Seqs: 1 is bob's, 2 and 3 are alice's. Nobody else has delivered them yet.
    let inbox = inbox_until(&mut alice, "group seq", |i| entry(i, group).last_seq == 3).await;
    assert_eq!(entry(&inbox, group).ticks_delivered, 0);

    let ticks_until = |mut a: Device, want: TickFrame| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, a.next_event()).await {
                Ok(Some(DeviceEvent::Ticks(t))) if t == want => return a,
                Ok(Some(_)) => {}
                other => panic!("no tick frame {want:?}: {other:?}"),
            }
        }
    };
    // Bob's stream delivers everything: still one member (carol) short.
    let mut bob_dev = device(&addr, &bob_token);
    until_synced(&mut bob_dev, WAIT).await;
    inbox_until(&mut bob, "bob's delivered mark", |i| {
        entry(i, group).delivered_up_to == 3
    })
    .await;
    let inbox = alice.inbox().await.unwrap();
    assert_eq!(
        entry(&inbox, group).ticks_delivered,
        0,
        "carol has delivered nothing"
    );
    // Carol's stream delivers too: both of alice's messages are now delivered to everyone.
    let mut carol_dev = device(&addr, &carol_token);
    until_synced(&mut carol_dev, WAIT).await;
    let a = ticks_until(
        a,
        TickFrame {
            chat_id: group,
            delivered_up_to: 3,
            read_up_to: 0,
        },
    )
    .await;
    // Read: bob reads 3, carol reads 2 → read by all up to 2; then carol reads 3.
    bob_dev.read(group, 3).await;
    carol_dev.read(group, 2).await;
    let a = ticks_until(
        a,
        TickFrame {
            chat_id: group,
            delivered_up_to: 3,
            read_up_to: 2,
        },
    )
    .await;
    carol_dev.read(group, 3).await;
    let _a = ticks_until(
        a,
        TickFrame {
            chat_id: group,
            delivered_up_to: 3,
            read_up_to: 3,
        },
    )
    .await;
    let inbox = alice.inbox().await.unwrap();
    assert_eq!(
        (
            entry(&inbox, group).ticks_delivered,
            entry(&inbox, group).ticks_read
        ),
        (3, 3)
    );
}

/// Every event `device` yields until `quiet` passes without one.
async fn events_until_quiet(device: &mut Device, quiet: Duration) -> Vec<DeviceEvent> {
    let mut events = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, device.next_event()).await {
        events.push(e);
    }
    events
}

/// A group read receipt goes to the reader's own devices, and as ticks to the members whose
/// messages it covers, not to every member (which would cost members² frames in a big group).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipts_reach_the_readers_devices_and_ticks_the_senders_they_cover() {
    use chat_model::ids::user_id_for_handle;
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let handles = ["alice", "bob", "carol", "dave", "erin"];
    let mut tokens = Vec::new();
    let mut clients = Vec::new();
    for h in handles {
        let (client, token) = register(&addr, h).await;
        clients.push(client);
        tokens.push(token);
    }
    let others: Vec<String> = handles[1..].iter().map(|h| h.to_string()).collect();
    let group = clients[0]
        .create_group("g2", "five", &others)
        .await
        .unwrap()
        .chat_id;
    let dave_second = clients[3].link_device(2).await.unwrap().token;
    // Devices that acknowledge nothing by themselves: every receipt below is one we send.
    let quiet = |token: &str| {
        let mut options = DeviceOptions::new(vec![addr.clone()], token);
        options.auto_ack = false;
        Device::start(options)
    };
    let mut devices: Vec<Device> = tokens.iter().map(|t| quiet(t)).collect();
    let mut dave2 = quiet(&dave_second);
    for d in devices.iter_mut().chain([&mut dave2]) {
        until_synced(d, WAIT).await;
    }
    let (alice, bob, erin) = (0, 1, 4);
    devices[alice].send(group, b"hello".to_vec()).await.unwrap();
    // Everyone has it before anyone reads (the reads below are then all accepted).
    for d in devices.iter_mut().chain([&mut dave2]) {
        loop {
            match tokio::time::timeout(WAIT, d.next_event()).await {
                Ok(Some(DeviceEvent::Message(m))) if m.chat_id == group => break,
                Ok(Some(_)) => {}
                other => panic!("no message: {other:?}"),
            }
        }
    }
    // Drop what the creation and the message produced (first ticks of each member).
    for d in devices.iter_mut().chain([&mut dave2]) {
        events_until_quiet(d, Duration::from_millis(300)).await;
    }
    // Everyone but erin reads it; dave from his first device. Then erin reads last.
    for reader in [1, 2, 3] {
        devices[reader].read(group, 1).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    devices[erin].read(group, 1).await;
    // Alice, the sender, learns that all have read it.
    let mut alice_dev = devices.remove(alice);
    let _alice_dev = {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, alice_dev.next_event()).await {
                Ok(Some(DeviceEvent::Ticks(t))) if t.read_up_to == 1 => {
                    assert_eq!((t.chat_id, t.delivered_up_to), (group, 1));
                    break alice_dev;
                }
                Ok(Some(DeviceEvent::Receipt(r))) => {
                    panic!("alice got another member's receipt: {r:?}")
                }
                Ok(Some(_)) => {}
                other => panic!("no read tick for alice: {other:?}"),
            }
        }
    };
    // Bob (index 0 now that alice's device is out) sent nothing and read in the middle: he gets
    // his own receipt, never another member's, and no tick (nothing of his was covered).
    let bob_events = events_until_quiet(&mut devices[bob - 1], Duration::from_millis(500)).await;
    let bob_id = user_id_for_handle("bob").0;
    let receipts: Vec<_> = bob_events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::Receipt(r) => Some(r.user_id),
            _ => None,
        })
        .collect();
    assert_eq!(receipts, vec![bob_id], "bob's events: {bob_events:?}");
    assert!(
        !bob_events
            .iter()
            .any(|e| matches!(e, DeviceEvent::Ticks(_))),
        "bob's events: {bob_events:?}"
    );
    // Dave's other device hears of dave's read (his unread count follows), and of nobody else's.
    let dave2_events = events_until_quiet(&mut dave2, Duration::from_millis(500)).await;
    let receipts: Vec<_> = dave2_events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::Receipt(r) => Some((r.user_id, r.read_up_to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        receipts,
        vec![(user_id_for_handle("dave").0, 1)],
        "dave's second device: {dave2_events:?}"
    );
}

/// Every member's ticks are the lowest marks among the other members, through a mix of sends,
/// reads in any order (ties included), members joining at the chat's last seq and a member
/// leaving: the projection keeps only the two lowest marks and re-reads its index when they move,
/// and this checks it against the marks the test itself tracks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticks_are_the_lowest_marks_of_the_others_through_reads_joins_and_leaves() {
    let cluster = Cluster::start_with(1, 4, CONFIG);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    // Eight members, then two who join with user ids below all of theirs: joining at a value
    // the lowest members also hold, they sort first in the marks' index (the tie case).
    let mut handles: Vec<String> = (0..8).map(|i| format!("tick-user-{i}")).collect();
    let lowest_id = handles
        .iter()
        .map(|h| chat_model::ids::user_id_for_handle(h).0)
        .min()
        .unwrap();
    handles.extend(
        (0..)
            .map(|k| format!("tick-joiner-{k}"))
            .filter(|h| chat_model::ids::user_id_for_handle(h).0 < lowest_id)
            .take(2),
    );
    let mut clients = Vec::new();
    let mut devices = Vec::new();
    for h in &handles {
        let (client, token) = register(&addr, h).await;
        clients.push(client);
        let mut options = DeviceOptions::new(vec![addr.clone()], &token);
        options.auto_ack = false;
        devices.push(Device::start(options));
    }
    let group = clients[0]
        .create_group("ticks", "ticks", &handles[1..8])
        .await
        .unwrap()
        .chat_id;
    // (delivered, read) per member, as the server should have them.
    let mut marks: BTreeMap<usize, (u64, u64)> = (0..8).map(|i| (i, (0, 0))).collect();
    let mut last_seq = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for step in 0..60 {
        if step == 20 {
            // Everyone reads everything, so the lowest marks are the last seq; then two join at
            // the last seq (everything before counts as delivered and read for them).
            for (&i, m) in marks.iter_mut() {
                devices[i].read(group, last_seq).await;
                *m = (last_seq, last_seq);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            clients[0]
                .change_members(group, &handles[8..10], &[])
                .await
                .unwrap();
            marks.insert(8, (last_seq, last_seq));
            marks.insert(9, (last_seq, last_seq));
            // A new message everyone but the joiners reads: the lowest marks are now the
            // joiners' alone, who sort before every other member.
            last_seq = devices[1]
                .send(group, b"after the join".to_vec())
                .await
                .unwrap()
                .seq;
            marks.insert(1, (last_seq, last_seq));
            for (i, device) in devices.iter().enumerate().take(8) {
                device.read(group, last_seq).await;
                marks.insert(i, (last_seq, last_seq));
            }
            check_ticks(&mut clients, group, &marks).await;
        }
        if step == 40 {
            clients[0]
                .change_members(group, &[], &handles[3..4])
                .await
                .unwrap();
            marks.remove(&3);
        }
        let members: Vec<usize> = marks.keys().copied().collect();
        let who = members[next(members.len())];
        if last_seq == 0 || next(3) == 0 {
            let ack = devices[who]
                .send(group, format!("m{step}").into_bytes())
                .await
                .unwrap();
            last_seq = ack.seq;
            marks.insert(who, (ack.seq, ack.seq));
        } else {
            let upto = 1 + next(last_seq as usize) as u64;
            devices[who].read(group, upto).await;
            let m = marks.get_mut(&who).unwrap();
            m.1 = m.1.max(upto);
            m.0 = m.0.max(m.1);
        }
    }
    check_ticks(&mut clients, group, &marks).await;
}

/// Poll every tracked member's inbox until its own marks and its ticks (the lowest marks of the
/// others) are as `marks` says; receipts are applied asynchronously, and a wrong projection
/// never gets there (the poll fails, showing the inbox).
async fn check_ticks(
    clients: &mut [chat_client::ChatClient],
    group: u64,
    marks: &BTreeMap<usize, (u64, u64)>,
) {
    for (&i, &(delivered, read)) in marks {
        let others = marks.iter().filter(|(&j, _)| j != i).map(|(_, m)| *m);
        let want = (
            others.clone().map(|m| m.0).min().unwrap(),
            others.map(|m| m.1).min().unwrap(),
        );
        inbox_until(
            &mut clients[i],
            &format!("member {i}: marks and ticks"),
            |inbox| {
                inbox.iter().any(|e| {
                    e.chat_id == group
                        && (e.delivered_up_to, e.read_up_to) == (delivered, read)
                        && (e.ticks_delivered, e.ticks_read) == want
                })
            },
        )
        .await;
    }
}

/// Projection status of every node, keyed by (partition, name).
async fn projections(cluster: &Cluster, node: u64) -> BTreeMap<(u32, String), ProjectionStatus> {
    let mut admin = cluster.admin(node).await;
    admin
        .projections(chat_proto::admin::ProjectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .projections
        .into_iter()
        .map(|p| ((p.partition, p.name.clone()), p))
        .collect()
}

/// Wait until every node's projections have reached each partition's last offset and no rebuild
/// is running, then return node 1's.
async fn settled(
    cluster: &Cluster,
    nodes: &[u64],
) -> Vec<BTreeMap<(u32, String), ProjectionStatus>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = Vec::new();
        let mut done = true;
        for &n in nodes {
            let status = cluster.status(n).await;
            let proj = projections(cluster, n).await;
            for p in &status.partitions {
                let s = &proj[&(p.partition, "chats".to_string())];
                done &= s.checkpoint == p.last_offset && !s.rebuilding;
            }
            all.push(proj);
        }
        let lasts: Vec<_> = all
            .iter()
            .map(|m| m.values().map(|s| s.checkpoint).collect::<Vec<_>>())
            .collect();
        if done && lasts.windows(2).all(|w| w[0] == w[1]) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "projections never settled: {lasts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_while_serving_and_a_kill_mid_projection_give_identical_projections() {
    let mut cluster = Cluster::start_with(3, 4, CONFIG);
    cluster.wait_for_leaders(1, WAIT).await;
    let addrs: Vec<String> = (1..=3).map(|i| cluster.node(i).addr.clone()).collect();
    let mut tokens = Vec::new();
    let mut chats = Vec::new();
    let (mut owner, owner_token) = register(&addrs[0], "owner").await;
    tokens.push(owner_token);
    for i in 0..6 {
        let handle = format!("member{i}");
        let (_, token) = register(&addrs[i % 3], &handle).await;
        tokens.push(token);
        chats.push(owner.create_direct(&handle).await.unwrap().chat_id);
    }
    let group = owner
        .create_group(
            "big",
            "everyone",
            &(0..6).map(|i| format!("member{i}")).collect::<Vec<_>>(),
        )
        .await
        .unwrap()
        .chat_id;
    chats.push(group);

    // Load: every member sends to its direct chat and to the group, acking as it receives
    // (receipts), through nodes 1 and 2 only, so node 3 can be killed under load.
    let traffic = |round: usize, n: usize| {
        let (addrs, tokens, chats) = (addrs.clone(), tokens.clone(), chats.clone());
        tokio::spawn(async move {
            let mut devices = Vec::new();
            for (i, t) in tokens.iter().enumerate().skip(1) {
                let d = Device::start(DeviceOptions::new(vec![addrs[i % 2].clone()], t));
                devices.push((d, chats[i - 1]));
            }
            for k in 0..n {
                let sends = devices.iter().flat_map(|(d, chat)| {
                    let text = format!("r{round} k{k}").into_bytes();
                    [d.send(*chat, text.clone()), d.send(group, text)]
                });
                for ack in futures::future::join_all(sends).await {
                    ack.unwrap();
                }
            }
            devices
        })
    };

    // Round 1 with a kill -9 of node 3 in the middle; it restarts and catches up.
    let load = traffic(1, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.kill9(3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.spawn(3);
    let _devices = load.await.unwrap();
    let all = settled(&cluster, &[1, 2, 3]).await;
    let events: u64 = all[0].values().map(|s| s.checkpoint).sum();
    assert!(events > 2000, "only {events} events: not much of a test");
    for (key, s) in &all[0] {
        assert_eq!(&all[1][key].digest, &s.digest, "node 2 differs at {key:?}");
        assert_eq!(
            &all[2][key].digest, &s.digest,
            "node 3 (killed mid-projection) differs at {key:?}"
        );
    }

    // Round 2: rebuild every partition's projection on node 1 while traffic continues.
    let load = traffic(2, 60);
    let mut admin = cluster.admin(1).await;
    for p in 0..4 {
        admin
            .rebuild_projection(chat_proto::admin::RebuildProjectionRequest {
                partition: p,
                name: "chats".into(),
            })
            .await
            .unwrap();
    }
    let _devices = load.await.unwrap();
    let all = settled(&cluster, &[1, 2]).await;
    for (key, s) in &all[0] {
        assert!(s.generation >= 1, "{key:?} was not rebuilt: {s:?}");
        assert_eq!(all[1][key].generation, 0, "node 2 never rebuilt");
        assert_eq!(
            &all[1][key].digest, &s.digest,
            "the rebuilt copy differs from the never-rebuilt one at {key:?}"
        );
    }
    // Unknown projections and partitions are clear errors.
    let err = admin
        .rebuild_projection(chat_proto::admin::RebuildProjectionRequest {
            partition: 0,
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("no projection named"), "{err:?}");
}

/// How many `ChatListChanged` events for (user, chat) are in partition `p` of node 1.
async fn chat_list_events(cluster: &Cluster, p: u32, user: u64, chat: u64) -> Vec<(u32, u64)> {
    use chat_model::ChatEventAt;
    use chat_proto::chat_v1::chat_event;
    let events = cluster.read_all(1, p).await;
    events
        .iter()
        .filter_map(|e| match ChatEventAt::decode(e).ok()??.kind {
            chat_event::Kind::ChatListChanged(c) if c.user_id == user && c.chat_id == chat => {
                Some((c.source_partition, c.source_offset))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_ups_put_each_chat_in_each_members_list_exactly_once() {
    use chat_model::ids::partition_of;
    use chat_proto::chat_v1::{self as pb, command, command_reply};

    const P: u32 = 8;
    let cluster = Cluster::start_with(1, P, CONFIG);
    let addr = cluster.node(1).addr.clone();
    cluster.wait_for_leaders(1, WAIT).await;
    let (mut alice, _) = register(&addr, "alice").await;
    let mut members = Vec::new();
    for h in ["bob", "carol", "dave", "erin", "frank"] {
        let (client, token) = register(&addr, h).await;
        let user: u64 = token.split('.').next().unwrap().parse().unwrap();
        members.push((h.to_string(), client, user));
    }
    let handles: Vec<String> = members.iter().map(|(h, ..)| h.clone()).collect();
    let group = alice
        .create_group("fu", "follow-ups", &handles)
        .await
        .unwrap()
        .chat_id;

    // Every member's inbox (their chat list lives in their own partition) gets the group, once.
    for (h, client, _) in &mut members {
        let inbox = inbox_until(client, h, |i| i.iter().any(|e| e.chat_id == group)).await;
        assert_eq!(inbox.iter().filter(|e| e.chat_id == group).count(), 1);
    }

    // Redeliver bob's follow-up as its sender would after a leader change: no second effect.
    let bob = members[0].2;
    let bob_partition = partition_of(bob, P).0;
    let events = chat_list_events(&cluster, bob_partition, bob, group).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (source_partition, source_offset) = events[0];
    let mut seq = cluster.sequencer(1);
    let redeliver = |offset: u64, joined: bool| pb::SubmitRequest {
        command: Some(pb::Command {
            kind: Some(command::Kind::ApplyFollowUps(pb::ApplyFollowUps {
                source_partition,
                source_offset: offset,
                entries: vec![pb::FollowUp {
                    user_id: bob,
                    chat_id: group,
                    joined,
                }],
            })),
        }),
        forwarded: false,
    };
    for request in [
        redeliver(source_offset, true),
        redeliver(source_offset - 1, false),
    ] {
        let reply = seq.submit(request).await.unwrap().into_inner();
        assert_eq!(
            reply.kind,
            Some(command_reply::Kind::FollowUp(pb::FollowUpReply {
                applied: false
            })),
            "a redelivered (or older) follow-up must be ignored"
        );
    }
    assert_eq!(
        chat_list_events(&cluster, bob_partition, bob, group)
            .await
            .len(),
        1
    );
    let inbox = members[0].1.inbox().await.unwrap();
    assert_eq!(inbox.iter().filter(|e| e.chat_id == group).count(), 1);

    // A removed member's list follows too.
    alice
        .change_members(group, &[], &["carol".to_string()])
        .await
        .unwrap();
    inbox_until(&mut members[1].1, "carol removed", |i| {
        i.iter().all(|e| e.chat_id != group)
    })
    .await;
    // Follow-ups from a mismatched batch are refused before proposing.
    let other = members
        .iter()
        .map(|(_, _, u)| *u)
        .find(|u| partition_of(*u, P).0 != bob_partition);
    if let Some(other) = other {
        let mut request = redeliver(source_offset + 1_000, true);
        if let Some(command::Kind::ApplyFollowUps(f)) =
            request.command.as_mut().and_then(|c| c.kind.as_mut())
        {
            f.entries.push(pb::FollowUp {
                user_id: other,
                chat_id: group,
                joined: true,
            });
        }
        let err = seq.submit(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
}
