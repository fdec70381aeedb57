//! The workload through the public device API (`chat.v1.Chat`), the path apps use: accounts made
//! with `Register` and more devices added with `LinkDevice`, groups made with `CreateGroup`, and
//! writer devices that send over `Connect` with several sends in flight, resending every
//! unanswered send, oldest first, with its id after a reconnect or an UNAVAILABLE, as
//! docs/protocol.md tells clients to.
//!
//! Every send attempt is its own process in the history (a device has several in flight, and an
//! unanswered one is retired as `info` when its connection ends, as Jepsen retires processes);
//! the send names its device, so the checkers can hold the device's order to the seqs it got.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_proto::chat_v1::chat_client::ChatClient;
use chat_proto::chat_v1::{self as pb, client_frame, server_frame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::nodes::channel;
use super::workload::Workload;
use crate::history::{OpType, Value, F};

/// Most sends a writer device has unanswered at once.
const IN_FLIGHT: usize = 4;
/// A connection with unanswered sends and no frame for this long is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a send may wait for a leader at the server before it answers UNAVAILABLE.
const SEND_TIMEOUT_MS: u32 = 2_000;
/// Setup calls are retried through faults for this long.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One device of an account: its ids and bearer token.
#[derive(Debug, Clone)]
pub struct Device {
    pub user: u64,
    pub device: u64,
    pub token: String,
}

impl Device {
    /// How the history names it.
    pub fn label(&self) -> String {
        format!("u{}d{}", self.user, self.device)
    }
}

/// `message` with the bearer token and a deadline.
pub fn authed<T>(message: T, token: &str, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request.set_timeout(timeout);
    request
}

/// `call(node)` on node after node until it answers, for setup (before any fault).
async fn retry<T, Fut>(
    what: &str,
    n: u64,
    call: impl Fn(ChatClient<tonic::transport::Channel>) -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let deadline = Instant::now() + SETUP_TIMEOUT;
    for attempt in 0u64.. {
        let client = ChatClient::new(channel(attempt % n + 1)?);
        match call(client).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("{what}: {e}"),
        }
    }
    unreachable!()
}

/// Register `handle` with device 1 and link devices 2..=`devices` (a retried call with the same
/// secret answers the same token).
pub async fn register(handle: &str, devices: u64, n: u64) -> anyhow::Result<Vec<Device>> {
    let secret = |d: u64| format!("jepsen{d}secret{:020}{handle}", rand::random::<u64>());
    let first_secret = secret(1);
    let reply = retry(&format!("registering {handle}"), n, |mut c| {
        let request = pb::RegisterRequest {
            handle: handle.to_string(),
            device_id: 1,
            secret: first_secret.clone(),
        };
        async move { c.register(request).await }
    })
    .await?;
    let mut all = vec![Device {
        user: reply.user_id,
        device: 1,
        token: reply.token,
    }];
    for device in 2..=devices {
        let (token, s) = (all[0].token.clone(), secret(device));
        let reply = retry(
            &format!("linking device {device} of {handle}"),
            n,
            |mut c| {
                let request = authed(
                    pb::LinkDeviceRequest {
                        device_id: device,
                        secret: s.clone(),
                    },
                    &token,
                    Duration::from_secs(2),
                );
                async move { c.link_device(request).await }
            },
        )
        .await?;
        all.push(Device {
            user: reply.user_id,
            device,
            token: reply.token,
        });
    }
    Ok(all)
}

/// A group made by `creator` with `members` (handles); the request id names it for retries.
pub async fn create_group(
    creator: &Device,
    name: &str,
    members: &[String],
    n: u64,
) -> anyhow::Result<u64> {
    let info = retry(&format!("creating group {name}"), n, |mut c| {
        let request = authed(
            pb::CreateGroupRequest {
                request_id: name.to_string(),
                name: name.to_string(),
                member_handles: members.to_vec(),
            },
            &creator.token,
            Duration::from_secs(2),
        );
        async move { c.create_group(request).await }
    })
    .await?;
    Ok(info.chat_id)
}

/// Accounts and groups for a run through the device API: `users` writer accounts with
/// `devices_each` devices each, and `chats` groups holding every writer and the `readers`
/// reader accounts (`jepsen-reader-<r>`, registered already). Returns the writer devices,
/// device by device across the accounts (slot s is account s mod `users`).
pub async fn setup(
    w: &mut Workload,
    n: u64,
    users: usize,
    devices_each: u64,
    chats: usize,
    readers: usize,
) -> anyhow::Result<Vec<Device>> {
    let mut accounts = Vec::new();
    for u in 0..users {
        accounts.push(register(&format!("jepsen-writer-{u}"), devices_each, n).await?);
    }
    let members: Vec<String> = (1..users)
        .map(|u| format!("jepsen-writer-{u}"))
        .chain((0..readers).map(|r| format!("jepsen-reader-{r}")))
        .collect();
    for c in 0..chats {
        let chat = create_group(&accounts[0][0], &format!("jepsen-{c}"), &members, n).await?;
        w.chats.push(chat);
    }
    w.users = accounts.iter().map(|a| a[0].user).collect();
    Ok((0..devices_each as usize)
        .flat_map(|d| accounts.iter().map(move |a| a[d].clone()))
        .collect())
}

/// Open a device stream to `node` with `hello`: the sender of client frames and the server's
/// frames, or None if it could not be opened within 2 s.
pub async fn connect(
    node: u64,
    hello: pb::Hello,
) -> Option<(
    mpsc::Sender<pb::ClientFrame>,
    tonic::Streaming<pb::ServerFrame>,
)> {
    let mut client = ChatClient::new(channel(node).ok()?);
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::ClientFrame {
        kind: Some(client_frame::Kind::Hello(hello)),
    };
    tx.send(hello).await.ok()?;
    let connect = client.connect(ReceiverStream::new(rx));
    let response = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    Some((tx, response.into_inner()))
}

/// Whether a SendError code leaves the send's fate open (docs/protocol.md: only UNAVAILABLE is
/// a "maybe" from the server; the rest here are what a broken call looks like).
fn ambiguous(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    )
}

/// A send the device has not had an answer to.
struct Pending {
    chat: u64,
    id: String,
    /// The process of its current attempt.
    process: u64,
}

/// One writer device: sends in bursts with up to [`IN_FLIGHT`] unanswered, over connections to
/// random nodes that it drops at random, until `deadline`.
pub struct Writer {
    w: Arc<Workload>,
    device: Device,
    label: String,
    slot: u64,
    n: u64,
    rng: StdRng,
    pending: VecDeque<Pending>,
    next_process: u64,
    sent: u64,
    /// The last seq seen per chat, named in each Hello so a reconnect's backlog stays short.
    cursors: BTreeMap<u64, u64>,
}

impl Writer {
    pub fn new(w: Arc<Workload>, slot: u64, device: Device, n: u64, seed: u64) -> Writer {
        let cursors = w.chats.iter().map(|&c| (c, 0)).collect();
        Writer {
            label: device.label(),
            rng: StdRng::seed_from_u64(seed.wrapping_mul(7_000_003).wrapping_add(slot)),
            next_process: 10_000_000 + slot * 1_000_000,
            w,
            device,
            slot,
            n,
            pending: VecDeque::new(),
            sent: 0,
            cursors,
        }
    }

    pub async fn run(mut self, deadline: Instant) {
        while Instant::now() < deadline {
            let node = self.rng.gen_range(1..=self.n);
            let until = (Instant::now() + Duration::from_millis(self.rng.gen_range(500..5000)))
                .min(deadline);
            self.connection(node, until, until >= deadline).await;
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(10..200))).await;
        }
    }

    fn value(&self, p: &Pending) -> Value {
        Value {
            chat: p.chat,
            id: Some(p.id.clone()),
            device: Some(self.label.clone()),
            ..Value::default()
        }
    }

    /// Record a new attempt of `pending[i]` and write it on the stream.
    async fn attempt(&mut self, i: usize, node: u64, tx: &mpsc::Sender<pb::ClientFrame>) {
        self.next_process += 1;
        self.pending[i].process = self.next_process;
        let p = &self.pending[i];
        self.w.record(
            p.process,
            OpType::Invoke,
            F::Send,
            self.value(p),
            node,
            None,
        );
        let frame = pb::ClientFrame {
            kind: Some(client_frame::Kind::Send(pb::SendFrame {
                client_msg_id: p.id.clone(),
                chat_id: p.chat,
                payload: p.id.clone().into_bytes(),
                media: vec![],
                timeout_ms: SEND_TIMEOUT_MS,
            })),
        };
        // A closed stream shows as the connection's end below.
        let _ = tx.send(frame).await;
    }

    /// Every unanswered send's attempt ends unknown (`info`); they stay pending for the next
    /// connection.
    fn abandon(&mut self, node: u64, why: &str) {
        for p in &self.pending {
            self.w.record(
                p.process,
                OpType::Info,
                F::Send,
                self.value(p),
                node,
                Some(why.to_string()),
            );
        }
    }

    /// One connection: resend what is pending, then bursts of new sends, until `until` (when
    /// `last`, waiting for the answers first) or the stream fails.
    async fn connection(&mut self, node: u64, until: Instant, last: bool) {
        let hello = pb::Hello {
            token: self.device.token.clone(),
            cursors: self
                .cursors
                .iter()
                .map(|(&chat_id, &seq)| pb::Cursor { chat_id, seq })
                .collect(),
        };
        let Some((tx, mut frames)) = connect(node, hello).await else {
            return;
        };
        for i in 0..self.pending.len() {
            self.attempt(i, node, &tx).await;
        }
        loop {
            let now = Instant::now();
            if now >= until && (self.pending.is_empty() || !last) {
                self.abandon(node, "the device closed its stream");
                return;
            }
            if self.pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(self.rng.gen_range(10..60))).await;
                let burst = self.rng.gen_range(1..=IN_FLIGHT);
                for _ in 0..burst {
                    let chat = self.w.chats[self.rng.gen_range(0..self.w.chats.len())];
                    let id = format!("d{}-{}", self.slot, self.sent);
                    self.sent += 1;
                    self.pending.push_back(Pending {
                        chat,
                        id,
                        process: 0,
                    });
                    self.attempt(self.pending.len() - 1, node, &tx).await;
                }
            }
            let frame = match tokio::time::timeout(ANSWER_TIMEOUT, frames.message()).await {
                Ok(Ok(Some(pb::ServerFrame { kind: Some(kind) }))) => kind,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return self.abandon(node, "the stream ended"),
                Ok(Err(e)) => return self.abandon(node, &e.to_string()),
                Err(_) => return self.abandon(node, "no answer in time"),
            };
            match frame {
                server_frame::Kind::SendAck(a) => {
                    if let Some(p) = self.take(&a.client_msg_id) {
                        let value = Value {
                            seq: a.ack.map(|ack| ack.seq),
                            ..self.value(&p)
                        };
                        self.w
                            .record(p.process, OpType::Ok, F::Send, value, node, None);
                    }
                }
                server_frame::Kind::SendError(e) if ambiguous(Code::from(e.code)) => {
                    // Resend every unanswered send, oldest first: on a new connection.
                    return self.abandon(node, &e.message);
                }
                server_frame::Kind::SendError(e) => {
                    if let Some(p) = self.take(&e.client_msg_id) {
                        let value = self.value(&p);
                        self.w.record(
                            p.process,
                            OpType::Fail,
                            F::Send,
                            value,
                            node,
                            Some(format!("{:?}: {}", Code::from(e.code), e.message)),
                        );
                    }
                }
                server_frame::Kind::Message(m) => {
                    let seen = self.cursors.entry(m.chat_id).or_default();
                    *seen = (*seen).max(m.seq);
                }
                server_frame::Kind::Error(e) => {
                    return self.abandon(node, &format!("error frame: {}", e.message))
                }
                _ => {}
            }
        }
    }

    fn take(&mut self, id: &str) -> Option<Pending> {
        let i = self.pending.iter().position(|p| p.id == id)?;
        self.pending.remove(i)
    }
}
