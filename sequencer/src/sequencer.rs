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

use chat_log::{Dispatch, LogNode, LogOffset, PartitionId};
use chat_model::commands::{self, ChatCommand, CheckContext, CHAT_COMMAND_TAG};
use chat_proto::chat_v1::{self as pb, command, command_reply};
use chat_proto::AttachSecret;
use prost::Message;

use crate::config::SequencerConfig;
use crate::error::{reply_of, unexpected, SeqError};
use crate::forward::{leader_elsewhere, Forwarder};
use crate::send_rate::SendRate;

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
        let partition = self.prepare(&mut command)?;
        // Counted once, where the send entered the cluster.
        if let (Some(command::Kind::SendMessage(m)), false) = (&command.kind, forwarded) {
            self.send_rate.admit(m.sender_user, &self.forwarder).await?;
        }
        let bytes = Dispatch::tagged(CHAT_COMMAND_TAG, &command.encode_to_vec());
        let started = Instant::now();
        let deadline = started + within.unwrap_or(self.config.submit_timeout);
        // Short and capped low: during a failover the new leader is usually known within a few
        // hundred milliseconds, and every step of backoff past that is added to the client's wait.
        let mut backoff = Duration::from_millis(10);
        loop {
            let attempt = async {
                match self.node.propose(partition, vec![bytes.clone()]).await {
                    Ok(outcome) => Ok(reply_of(outcome)),
                    Err(e) => match leader_elsewhere(&e, self.node.node_id()) {
                        Some(addr) if !forwarded => {
                            match self.forwarder.forward(&addr, &command, deadline).await {
                                Ok(reply) => Ok(Ok(reply)),
                                Err(status) => Err(SeqError::from_status(&status)),
                            }
                        }
                        _ => Err(SeqError::from(e)),
                    },
                }
            };
            // A leader that has lost its quorum (its followers died or were cut off) takes the
            // proposal and never commits it: the deadline bounds that wait too.
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(answer)) => return answer,
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
            // Only "no leader could take it" is worth retrying; anything else is the answer. A
            // forwarded command is retried by the node it came from.
            let retry = matches!(err, SeqError::Unavailable { .. });
            if !retry || forwarded || Instant::now() + backoff > deadline {
                return Err(possibly_committed(err));
            }
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
