//! The chat workload: client slots send messages with unique ids to random nodes — retrying the
//! same `client_msg_id` after any ambiguous failure — and poll chats from their cursors (device
//! stream readers are in `readers.rs`); at the end every chat is drained from every node. Every
//! operation goes into the history.
//!
//! An ambiguous failure (timeout, unavailable) is recorded as `info` and, as in Jepsen, its
//! process is retired: the slot continues as a new process (the retry is a new invocation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_proto::chat_v1::chat_client::ChatClient;
use chat_proto::chat_v1::sequencer_client::SequencerClient;
use chat_proto::chat_v1::{self as pb, command, command_reply};
use chat_proto::AttachSecret;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

use super::nodes::{channel, SECRET};
use crate::history::{History, Op, OpType, Seen, Value, F};

pub type Client = SequencerClient<InterceptedService<Channel, AttachSecret>>;

const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of a run's clients.
pub struct Workload {
    pub start: Instant,
    pub history: Mutex<History>,
    pub clients: Vec<Client>,
    pub users: Vec<u64>,
    pub chats: Vec<u64>,
    /// A device token to read history with through the device API (`chat.v1.Chat/History`)
    /// instead of the sequencer service, when the workload runs through the device API.
    pub drainer: Option<String>,
}

impl Workload {
    pub fn new(n: u64) -> anyhow::Result<Workload> {
        let clients = (1..=n)
            .map(|id| {
                Ok(SequencerClient::with_interceptor(
                    channel(id)?,
                    AttachSecret::new(SECRET)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Workload {
            start: Instant::now(),
            history: Mutex::default(),
            clients,
            users: Vec::new(),
            chats: Vec::new(),
            drainer: None,
        })
    }

    pub fn record(
        &self,
        process: u64,
        kind: OpType,
        f: F,
        value: Value,
        node: u64,
        error: Option<String>,
    ) {
        let op = Op {
            index: 0,
            time: self.start.elapsed().as_nanos() as u64,
            process,
            kind,
            f,
            value,
            node: Some(node),
            error,
        };
        self.history.lock().unwrap().push(op);
    }

    async fn submit(
        &self,
        node: u64,
        kind: command::Kind,
    ) -> Result<command_reply::Kind, tonic::Status> {
        let mut client = self.clients[node as usize - 1].clone();
        let mut request = tonic::Request::new(pb::SubmitRequest {
            command: Some(pb::Command { kind: Some(kind) }),
            forwarded: false,
        });
        request.set_timeout(OP_TIMEOUT);
        let reply = client.submit(request).await?.into_inner();
        reply
            .kind
            .ok_or_else(|| tonic::Status::internal("empty reply"))
    }

    pub async fn history(
        &self,
        node: u64,
        chat: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::HistoryReply, tonic::Status> {
        if let Some(token) = &self.drainer {
            let page = pb::HistoryPageRequest {
                chat_id: chat,
                after_seq,
                before_seq: 0,
                limit,
            };
            let channel = channel(node).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            return Ok(ChatClient::new(channel)
                .history(super::devices::authed(page, token, OP_TIMEOUT))
                .await?
                .into_inner());
        }
        let mut client = self.clients[node as usize - 1].clone();
        let mut request = tonic::Request::new(pb::HistoryRequest {
            chat_id: chat,
            after_seq,
            before_seq: 0,
            limit,
        });
        request.set_timeout(OP_TIMEOUT);
        Ok(client.history(request).await?.into_inner())
    }

    /// Apply a setup command through any node, retrying until it is applied.
    async fn setup_command(
        &self,
        kind: command::Kind,
        n: u64,
    ) -> anyhow::Result<command_reply::Kind> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for attempt in 0u64.. {
            match self.submit(attempt % n + 1, kind.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => anyhow::bail!("setup command {kind:?} failed: {e}"),
            }
        }
        unreachable!()
    }

    /// Register `users` users and create `chats` groups that all of them (and the `readers`,
    /// registered already) are in.
    pub async fn setup(
        &mut self,
        n: u64,
        users: usize,
        chats: usize,
        readers: &[u64],
    ) -> anyhow::Result<()> {
        for u in 0..users {
            let kind = command::Kind::RegisterUser(pb::RegisterUser {
                user_id: 0,
                handle: format!("jepsen-user-{u}"),
                ..Default::default()
            });
            let command_reply::Kind::User(reply) = self.setup_command(kind, n).await? else {
                anyhow::bail!("register: unexpected reply")
            };
            self.users.push(reply.user_id);
        }
        for c in 0..chats {
            let chat = chat_model::ids::group_chat_id(
                chat_model::ids::UserId(self.users[0]),
                &format!("jepsen-{c}"),
            );
            let kind = command::Kind::CreateChat(pb::CreateChat {
                chat_id: chat.0,
                kind: pb::ChatKind::Group as i32,
                name: format!("jepsen {c}"),
                creator: self.users[0],
                members: self.users[1..].iter().chain(readers).copied().collect(),
            });
            self.setup_command(kind, n).await?;
            self.chats.push(chat.0);
        }
        Ok(())
    }
}

/// Whether a failed call may still have taken effect. Transport failures always may, whatever
/// code tonic gives them (an HTTP/2 GOAWAY arrives as RESOURCE_EXHAUSTED, say); only a status
/// the server itself answered with is a definite verdict.
fn ambiguous(e: &tonic::Status) -> bool {
    use std::error::Error as _;
    let transport = e
        .source()
        .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some());
    transport
        || matches!(
            e.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Internal
        )
}

/// One client slot until `deadline`.
pub async fn run_client(
    w: Arc<Workload>,
    slot: u64,
    slots: u64,
    n: u64,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(slot));
    let mut process = slot;
    let user = w.users[slot as usize % w.users.len()];
    let mut cursors: HashMap<u64, u64> = HashMap::new();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let chat = w.chats[rng.gen_range(0..w.chats.len())];
        if rng.gen_bool(0.75) {
            let id = format!("s{slot}-{sent}");
            sent += 1;
            // The same id is retried after every ambiguous failure, until applied or the run ends.
            loop {
                let node = rng.gen_range(1..=n);
                let value = Value {
                    chat,
                    id: Some(id.clone()),
                    ..Value::default()
                };
                w.record(process, OpType::Invoke, F::Send, value.clone(), node, None);
                let kind = command::Kind::SendMessage(pb::SendMessage {
                    chat_id: chat,
                    sender_user: user,
                    sender_device: slot,
                    client_msg_id: id.clone(),
                    payload: id.clone().into_bytes(),
                    media: vec![],
                });
                match w.submit(node, kind).await {
                    Ok(command_reply::Kind::Send(ack)) => {
                        let ok = Value {
                            seq: Some(ack.seq),
                            ..value
                        };
                        w.record(process, OpType::Ok, F::Send, ok, node, None);
                        break;
                    }
                    Ok(other) => {
                        w.record(
                            process,
                            OpType::Fail,
                            F::Send,
                            value,
                            node,
                            Some(format!("unexpected reply {other:?}")),
                        );
                        break;
                    }
                    Err(e) if ambiguous(&e) => {
                        w.record(
                            process,
                            OpType::Info,
                            F::Send,
                            value,
                            node,
                            Some(e.to_string()),
                        );
                        process += slots;
                        if Instant::now() >= deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        w.record(
                            process,
                            OpType::Fail,
                            F::Send,
                            value,
                            node,
                            Some(e.to_string()),
                        );
                        break;
                    }
                }
            }
        } else {
            let node = rng.gen_range(1..=n);
            let cursor = cursors.get(&chat).copied().unwrap_or(0);
            w.record(
                process,
                OpType::Invoke,
                F::Poll,
                Value::of_chat(chat),
                node,
                None,
            );
            match w.history(node, chat, cursor, 50).await {
                Ok(h) => {
                    if let Some(last) = h.messages.last() {
                        cursors.insert(chat, last.seq);
                    }
                    let value = Value {
                        chat,
                        messages: h
                            .messages
                            .into_iter()
                            .map(|m| Seen {
                                seq: m.seq,
                                id: m.client_msg_id,
                                ts: None,
                            })
                            .collect(),
                        resumed_from: Some(cursor),
                        ..Value::default()
                    };
                    w.record(process, OpType::Ok, F::Poll, value, node, None);
                }
                // A read has no effect, so a failed read is a definite failure.
                Err(e) => w.record(
                    process,
                    OpType::Fail,
                    F::Poll,
                    Value::of_chat(chat),
                    node,
                    Some(e.to_string()),
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// After healing: wait until every node has the same last seq of every chat (or `timeout`), then
/// read every chat in full from every node.
pub async fn drain(w: &Workload, n: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for &chat in &w.chats {
        loop {
            let mut lasts = Vec::new();
            for node in 1..=n {
                lasts.push(w.history(node, chat, 0, 1).await.map(|h| h.last_seq).ok());
            }
            if lasts.iter().all(|l| l.is_some() && *l == lasts[0]) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for node in 1..=n {
            let process = 1_000_000 + node;
            w.record(
                process,
                OpType::Invoke,
                F::Drain,
                Value::of_chat(chat),
                node,
                None,
            );
            let mut messages = Vec::new();
            let result = loop {
                match w
                    .history(
                        node,
                        chat,
                        messages.last().map(|m: &Seen| m.seq).unwrap_or(0),
                        1000,
                    )
                    .await
                {
                    Ok(h) if h.messages.is_empty() => break Ok(()),
                    Ok(h) => messages.extend(h.messages.into_iter().map(|m| Seen {
                        seq: m.seq,
                        id: m.client_msg_id,
                        ts: Some(m.server_ts_ms),
                    })),
                    Err(e) => break Err(e),
                }
            };
            match result {
                Ok(()) => w.record(
                    process,
                    OpType::Ok,
                    F::Drain,
                    Value {
                        chat,
                        messages,
                        ..Value::default()
                    },
                    node,
                    None,
                ),
                Err(e) => w.record(
                    process,
                    OpType::Fail,
                    F::Drain,
                    Value::of_chat(chat),
                    node,
                    Some(e.to_string()),
                ),
            }
        }
    }
    Ok(())
}
