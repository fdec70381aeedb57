//! Retention: messages do not stay on the server for ever.
//!
//! - **Expiry window** (default 30 days): a message older than the window is expired whether or
//!   not every device got it — the server stops holding it for devices that never came back.
//! - **Delete when delivered** (optional, off by default): a message is expired as soon as every
//!   device of every member has acknowledged it, as WhatsApp keeps no delivered messages.
//! - **Disappearing messages**: a chat whose members set a timer (`UpdateChat`) has its messages
//!   expired once they are older than it, at the first sweep after (so within `sweep_every`).
//!
//! Expiring removes a message's payload and media; it keeps its seq, offset, sender and time
//! and is marked `expired`, so seqs are never reused, streams stay gap-free and history reads
//! say what was expired. The decision of *how far* to expire is taken by a sweeper on the
//! partition's leader (it reads clocks and device cursors); the expiry itself is an
//! `ExpireMessages` command through Raft, applied identically on every replica.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_log::PartitionId;
use chat_model::ids::{ChatId, ChatSeq, UserId};
use chat_model::state::ChatRecord;
use chat_model::StateReader;

use crate::Sequencer;

/// Messages examined per chat per sweep for the time window, and per read.
const SCAN_PER_SWEEP: u32 = 1000;
const PAGE: u32 = 64;

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Messages older than this are expired.
    pub expire_after: Duration,
    /// Also expire what every device of every member has acknowledged.
    pub delete_when_delivered: bool,
    /// How often the leader of each partition sweeps it.
    pub sweep_every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            expire_after: Duration::from_secs(30 * 24 * 3600),
            delete_when_delivered: false,
            sweep_every: Duration::from_secs(60),
        }
    }
}

/// The retention sweeper of one node: it acts on the partitions this node leads.
pub struct Sweeper {
    sequencer: Arc<Sequencer>,
    reads: StateReader,
    config: RetentionConfig,
    /// One sweep at a time (the timer's and an operator's `chatctl retention run`).
    running: tokio::sync::Mutex<()>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    /// The partitions swept (those this node led).
    pub partitions: Vec<PartitionId>,
    /// Chats whose expiry moved on, and by how many messages in all.
    pub chats_expired: u64,
    pub messages_expired: u64,
    /// One line per partition whose sweep failed.
    pub errors: Vec<String>,
}

impl Sweeper {
    /// Sweep every partition this node leads now.
    pub async fn sweep_led(&self) -> SweepReport {
        let _one = self.running.lock().await;
        let mut report = SweepReport::default();
        let node = self.sequencer.node();
        for p in (0..node.partition_count()).map(PartitionId) {
            if !node.is_leader(p) {
                continue;
            }
            report.partitions.push(p);
            if let Err(e) = sweep(&self.sequencer, &self.reads, &self.config, p, &mut report).await
            {
                tracing::warn!(%p, error = %e, "retention sweep");
                report.errors.push(format!("{p}: {e}"));
            }
        }
        report
    }
}

/// Start the sweeper of this node, every `sweep_every`; the handle sweeps on demand too.
pub fn start(sequencer: Arc<Sequencer>, config: RetentionConfig) -> Arc<Sweeper> {
    let every = config.sweep_every;
    let sweeper = Arc::new(Sweeper {
        reads: StateReader::new(sequencer.node().clone()),
        sequencer,
        config,
        running: tokio::sync::Mutex::new(()),
    });
    let timed = sweeper.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            timed.sweep_led().await;
        }
    });
    sweeper
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn sweep(
    sequencer: &Sequencer,
    reads: &StateReader,
    config: &RetentionConfig,
    p: PartitionId,
    report: &mut SweepReport,
) -> Result<(), String> {
    let now = now_ms();
    let window_cutoff = now.saturating_sub(config.expire_after.as_millis() as u64);
    for (chat, record) in reads.chats_in(p).await.map_err(|e| e.to_string())? {
        let expired = ChatSeq(record.expired_up_to);
        if record.last_seq() <= expired {
            continue;
        }
        // A chat with disappearing messages keeps them for its own, shorter time.
        let cutoff = match record.disappear_after_secs {
            0 => window_cutoff,
            secs => window_cutoff.max(now.saturating_sub(u64::from(secs) * 1000)),
        };
        let mut cut = time_cut(sequencer, chat, &record, cutoff).await?;
        if config.delete_when_delivered {
            cut = cut.max(delivered_cut(reads, chat).await?);
        }
        let cut = cut.min(record.last_seq());
        if cut > expired {
            let reply = sequencer
                .expire_messages(chat, cut)
                .await
                .map_err(|e| e.to_string())?;
            tracing::debug!(%chat, up_to = reply.expired_up_to, "messages expired");
            if reply.expired_up_to > expired.0 {
                report.chats_expired += 1;
                report.messages_expired += reply.expired_up_to - expired.0;
            }
        }
    }
    Ok(())
}

/// The last seq (after what is already expired) whose message is older than `cutoff`.
async fn time_cut(
    sequencer: &Sequencer,
    chat: ChatId,
    record: &ChatRecord,
    cutoff: u64,
) -> Result<ChatSeq, String> {
    // Read in small pages and stop at the first message inside the window: a busy chat whose
    // oldest unexpired message is recent costs one short read per sweep, not SCAN_PER_SWEEP.
    let mut cut = ChatSeq(record.expired_up_to);
    while cut.0 - record.expired_up_to < u64::from(SCAN_PER_SWEEP) {
        let page = sequencer
            .history(chat, cut, None, PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let full = page.messages.len() == PAGE as usize;
        for m in page.messages {
            if m.server_ts_ms >= cutoff || m.seq - record.expired_up_to > u64::from(SCAN_PER_SWEEP)
            {
                return Ok(cut);
            }
            cut = ChatSeq(m.seq);
        }
        if !full {
            break;
        }
    }
    Ok(cut)
}

/// The seq every device of every member has acknowledged (members with no device do not hold
/// expiry back, but a chat with no device at all expires nothing this way; nothing before a
/// member joined is theirs to acknowledge).
async fn delivered_cut(reads: &StateReader, chat: ChatId) -> Result<ChatSeq, String> {
    let err = |e: chat_log::ReadError| e.to_string();
    let mut cut = ChatSeq(u64::MAX);
    for user in reads.members(chat).await.map_err(err)? {
        let joined = reads
            .member(chat, user)
            .await
            .map_err(err)?
            .map_or(ChatSeq::ZERO, |m| m.joined_after());
        // A member's devices are in the member's partition, which may be held elsewhere.
        for (device, record) in reads.devices(UserId(user.0)).await.map_err(err)? {
            if record.revoked {
                continue;
            }
            let acked = reads.device_cursor(chat, user, device).await.map_err(err)?;
            cut = cut.min(acked.max(joined));
        }
    }
    Ok(if cut.0 == u64::MAX {
        ChatSeq::ZERO
    } else {
        cut
    })
}
