//! The sequencer: the entry point of every chat write on a node.
//!
//! `submit` checks a command (its own checks, in `chat_model::commands`, which also derive ids
//! and name the partition: `partition(user)` for user commands, `partition(chat)` for chat
//! commands), counts a send against its sender's rate, and proposes it on this node if it leads
//! that partition, or forwards it once to the leader over the internal `chat.v1.Sequencer`
//! service (`forward.rs`). Concurrent proposals to a partition share Raft entries
//! (the log's batcher). It retries through elections and ambiguous failures until its deadline:
//! safe, because every chat command is idempotent at apply (sends through the dedup window).
//! A reply means the command is committed on a quorum and applied.
//!
//! The typed helpers over `submit` (`send`, `create_group`, …) and history reads are in
//! `ops.rs`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_log::{CommandOutcome, Dispatch, LogNode, LogOffset, PartitionId, ProposalOutcome};
use chat_model::commands::{self, ChatCommand, CheckContext, Invalid, CHAT_COMMAND_TAG};
use chat_proto::chat_v1::{self as pb, command, command_reply, send_batch_item};
use chat_proto::AttachSecret;
use prost::Message;

use crate::config::SequencerConfig;
use crate::error::{outcome_reply, refusal, reply_of, unexpected, SeqError};
use crate::forward::{leader_elsewhere, Forwarder};
use crate::send_rate::SendRate;

/// The most messages one SendBatch may carry (gateways send far fewer: see their lanes).
const MAX_SEND_BATCH: usize = 1024;

/// The longest pause between two tries of a command while no leader takes it.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// An UNAVAILABLE answer to a device says what it means for the command: an earlier try may
/// have reached a leader (a forward whose answer was lost in transport, a leader that took it
/// and then lost its quorum), so the command may have been committed, never "it was not".
fn possibly_committed(err: SeqError) -> SeqError {
    match err {
        SeqError::Unavailable { message, hint }
            if !message.contains("may still commit") && !message.contains("may have been") =>
        {
            SeqError::Unavailable {
                message: format!(
                    "{message}; the command may have been committed: resubmitting it with the same id is safe"
                ),
                hint,
            }
        }
        other => other,
    }
}

/// What a try of a command came back with: this node's proposal's outcomes, or the leader's
/// reply to the forwarded command.
enum Answer {
    Local(ProposalOutcome),
    Forwarded(pb::CommandReply),
}

/// One message's outcome in a proposal of a SendBatch, as its item of the reply.
fn item_of(outcome: CommandOutcome) -> pb::SendBatchItem {
    match outcome_reply(outcome).map(|r| r.kind) {
        Ok(Some(command_reply::Kind::Send(ack))) => pb::SendBatchItem {
            result: Some(send_batch_item::Result::Ack(ack)),
        },
        Ok(Some(other)) => refused_item(unexpected(other)),
        Ok(None) => refused_item(SeqError::Internal("empty reply".into())),
        Err(e) => refused_item(e),
    }
}

fn refused_item(e: SeqError) -> pb::SendBatchItem {
    pb::SendBatchItem {
        result: Some(send_batch_item::Result::Refused(refusal(e.into()))),
    }
}

/// The write path of one node.
pub struct Sequencer {
    pub(crate) node: Arc<LogNode>,
    pub(crate) config: SequencerConfig,
    send_rate: Arc<SendRate>,
    forwarder: Forwarder,
}

impl Sequencer {
    pub fn new(
        node: Arc<LogNode>,
        cluster_secret: &str,
        config: SequencerConfig,
    ) -> Result<Self, String> {
        let rate =
            NonZeroU32::new(config.sends_per_second).ok_or("sends_per_second must be positive")?;
        let burst = NonZeroU32::new(config.send_burst).ok_or("send_burst must be positive")?;
        let secret = AttachSecret::new(cluster_secret).map_err(|e| e.to_string())?;
        Ok(Sequencer {
            forwarder: Forwarder::new(node.clone(), secret),
            send_rate: SendRate::new(node.clone(), rate, burst),
            node,
            config,
        })
    }

    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
    }

    /// Validate, route and apply `command`; the reply once it is committed and applied.
    /// `forwarded` is set when another node sent it here as the partition's leader.
    pub async fn submit(
        &self,
        command: pb::Command,
        forwarded: bool,
    ) -> Result<pb::CommandReply, SeqError> {
        self.submit_within(command, forwarded, None).await
    }

    /// [`Sequencer::submit`], answering UNAVAILABLE after `within` (the configured
    /// `submit_timeout` when `None`) if no leader has taken the command by then. Such a command
    /// may still commit; resubmitting it is safe (commands are idempotent at apply).
    pub async fn submit_within(
        &self,
        mut command: pb::Command,
        forwarded: bool,
        within: Option<Duration>,
    ) -> Result<pb::CommandReply, SeqError> {
        if let Some(command::Kind::SendBatch(batch)) = &mut command.kind {
            let items = self
                .submit_batch(std::mem::take(batch), forwarded, within)
                .await?;
            return Ok(pb::CommandReply {
                kind: Some(command_reply::Kind::SendBatch(pb::SendBatchReply { items })),
            });
        }
        let partition = self.prepare(&mut command)?;
        // Counted once, where the send entered the cluster.
        if let (Some(command::Kind::SendMessage(m)), false) = (&command.kind, forwarded) {
            self.send_rate.admit(m.sender_user, &self.forwarder).await?;
        }
        let bytes = Dispatch::tagged(CHAT_COMMAND_TAG, &command.encode_to_vec());
        match self
            .drive(partition, vec![bytes], &command, forwarded, within)
            .await
            .map_err(possibly_committed)?
        {
            Answer::Local(outcome) => reply_of(outcome),
            Answer::Forwarded(reply) => Ok(reply),
        }
    }

    /// A device's sends to one chat, in the order they must get seqs: each checked (and counted
    /// against the sender's rate) on its own, the ones that pass proposed as one proposal, so
    /// they apply contiguously in this order (forwarded to the leader as one call). One item
    /// per message. Past the first send the rate refuses, every later one is refused too: a
    /// later message must not be appended before an earlier one the device will resend.
    async fn submit_batch(
        &self,
        batch: pb::SendBatch,
        forwarded: bool,
        within: Option<Duration>,
    ) -> Result<Vec<pb::SendBatchItem>, SeqError> {
        let limit = MAX_SEND_BATCH;
        if batch.messages.is_empty() || batch.messages.len() > limit {
            return Err(Invalid::new(format!(
                "a SendBatch has 1 to {limit} messages, not {}",
                batch.messages.len()
            ))
            .into());
        }
        let from = |m: &pb::SendMessage| (m.chat_id, m.sender_user, m.sender_device);
        let first = from(&batch.messages[0]);
        if batch.messages.iter().any(|m| from(m) != first) {
            return Err(Invalid::new(
                "every message of a SendBatch goes to one chat from one device",
            )
            .into());
        }
        let mut items = vec![None; batch.messages.len()];
        let mut passed = Vec::new();
        let mut partition = None;
        let mut rate_refused = None;
        for (i, message) in batch.messages.into_iter().enumerate() {
            if let Some(e) = &rate_refused {
                // Refused by the rate as much as the first one: counted the same.
                metrics::counter!("chatd_sends_rate_limited_total").increment(1);
                items[i] = Some(refused_item(SeqError::clone(e)));
                continue;
            }
            let user = message.sender_user;
            let mut command = pb::Command {
                kind: Some(command::Kind::SendMessage(message)),
            };
            match self.prepare(&mut command) {
                Err(e) => items[i] = Some(refused_item(e)),
                Ok(p) => {
                    if !forwarded {
                        if let Err(e) = self.send_rate.admit(user, &self.forwarder).await {
                            items[i] = Some(refused_item(e.clone()));
                            rate_refused = Some(e);
                            continue;
                        }
                    }
                    partition = Some(p);
                    passed.push((i, command));
                }
            }
        }
        if let Some(p) = partition {
            let bytes = passed
                .iter()
                .map(|(_, c)| Dispatch::tagged(CHAT_COMMAND_TAG, &c.encode_to_vec()))
                .collect();
            let messages = passed
                .iter()
                .filter_map(|(_, c)| match &c.kind {
                    Some(command::Kind::SendMessage(m)) => Some(m.clone()),
                    _ => None,
                })
                .collect();
            let whole = pb::Command {
                kind: Some(command::Kind::SendBatch(pb::SendBatch { messages })),
            };
            let answers = match self.drive(p, bytes, &whole, forwarded, within).await {
                Ok(Answer::Local(outcome)) => outcome.outcomes.into_iter().map(item_of).collect(),
                Ok(Answer::Forwarded(reply)) => match reply.kind {
                    Some(command_reply::Kind::SendBatch(r)) => r.items,
                    Some(other) => return Err(unexpected(other)),
                    None => return Err(SeqError::Internal("empty reply".into())),
                },
                // The node it came from retries the whole batch.
                Err(e) if forwarded => return Err(e),
                Err(e) => {
                    let e = possibly_committed(e);
                    vec![refused_item(e); passed.len()]
                }
            };
            if answers.len() != passed.len() {
                return Err(SeqError::Internal(format!(
                    "{} answers for {} messages",
                    answers.len(),
                    passed.len()
                )));
            }
            for ((i, _), item) in passed.into_iter().zip(answers) {
                items[i] = Some(item);
            }
        }
        Ok(items.into_iter().flatten().collect())
    }

    /// Propose `bytes` (one proposal) on this node if it leads `partition`, or forward
    /// `command` (the same thing, as one call) to the leader; retried through elections and
    /// ambiguous failures until the deadline. A forwarded command is tried once: the node it
    /// came from retries.
    async fn drive(
        &self,
        partition: PartitionId,
        bytes: Vec<Vec<u8>>,
        command: &pb::Command,
        forwarded: bool,
        within: Option<Duration>,
    ) -> Result<Answer, SeqError> {
        let started = Instant::now();
        let deadline = started + within.unwrap_or(self.config.submit_timeout);
        // Short and capped low: during a failover the new leader is usually known within a few
        // hundred milliseconds, and every step of backoff past that is added to the client's wait.
        let mut backoff = Duration::from_millis(10);
        // Whether an earlier try ended UNAVAILABLE, so it may have been committed.
        let mut maybe_committed = false;
        loop {
            let attempt = async {
                match self.node.propose(partition, bytes.clone()).await {
                    Ok(outcome) => Ok(Answer::Local(outcome)),
                    Err(e) => match leader_elsewhere(&e, self.node.node_id()) {
                        Some(addr) if !forwarded => self
                            .forwarder
                            .forward(&addr, command, deadline)
                            .await
                            .map(Answer::Forwarded)
                            .map_err(|status| SeqError::from_status(&status)),
                        _ => Err(SeqError::from(e)),
                    },
                }
            };
            // A leader that has lost its quorum (its followers died or were cut off) takes the
            // proposal and never commits it: the deadline bounds that wait too.
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(err)) => err,
                Err(_) => {
                    return Err(SeqError::Unavailable {
                        message: format!(
                            "partition {partition} did not commit the command within {:?} (no leader with a quorum); it may still commit: resubmitting it is safe",
                            deadline.duration_since(started)
                        ),
                        hint: None,
                    })
                }
            };
            // Only "no leader could take it" is worth retrying; anything else is the answer —
            // but not a definite one after a try that may have been committed: a refusal before
            // proposing (a leader whose disk is low, say) says nothing of the earlier try, so
            // the caller must resubmit to learn (a committed command then answers its ack).
            let retry = matches!(err, SeqError::Unavailable { .. });
            if !retry && maybe_committed {
                return Err(SeqError::Unavailable {
                    message: format!(
                        "{err}; an earlier try may have been committed: resubmitting it with the same id is safe"
                    ),
                    hint: None,
                });
            }
            if !retry || forwarded || Instant::now() + backoff > deadline {
                return Err(err);
            }
            maybe_committed = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Check a command (filling in derived ids) and return the partition it goes to.
    fn prepare(&self, command: &mut pb::Command) -> Result<PartitionId, SeqError> {
        let cx = CheckContext {
            limits: &self.config.limits,
            partitions: self.node.partition_count(),
        };
        Ok(commands::check(command, &cx)?)
    }

    /// At a user's home (the leader of the user's partition): up to `want` of the user's send
    /// tokens for another node to spend (`chat.v1.Sequencer/GrantSends`).
    pub fn grant_sends(&self, user: u64, want: u32) -> Result<pb::GrantSendsReply, SeqError> {
        self.send_rate.grant(user, want)
    }

    /// Submit one command and answer its reply's kind.
    async fn run(
        &self,
        kind: command::Kind,
        within: Option<Duration>,
    ) -> Result<command_reply::Kind, SeqError> {
        let command = pb::Command { kind: Some(kind) };
        let reply = self.submit_within(command, false, within).await?;
        reply
            .kind
            .ok_or_else(|| SeqError::Internal("empty reply".into()))
    }

    /// Submit one command of a known kind; its own reply.
    pub async fn submit_typed<C: ChatCommand>(&self, command: C) -> Result<C::Reply, SeqError> {
        self.submit_typed_within(command, None).await
    }

    /// [`Sequencer::submit_typed`] with the caller's bound on the wait for a leader.
    pub async fn submit_typed_within<C: ChatCommand>(
        &self,
        command: C,
        within: Option<Duration>,
    ) -> Result<C::Reply, SeqError> {
        C::reply(self.run(command.into_kind(), within).await?).map_err(unexpected)
    }

    /// An offset of `p` that covers every write acknowledged before the call: a Raft read index,
    /// asked of the leader (a quorum round trip). A read from a replica that has applied it
    /// (`chat_model::StateReader::fresh_at`) sees all those writes, wherever the replica is.
    pub async fn read_index(&self, p: PartitionId) -> Result<LogOffset, SeqError> {
        self.forwarder
            .read_index(p, self.config.submit_timeout)
            .await
    }
}
