//! The per-user send rate, held cluster-wide.
//!
//! A user's tokens live in one bucket, on the leader of the user's partition (the user's home).
//! A send that enters the cluster there spends from it directly; a send that enters any other
//! node spends tokens that node was granted by the home (`GrantSends`), asked for a few at a
//! time (a tenth of a second's worth) and kept for at most [`LEASE`]. No node spends a token the
//! home did not hand out, so a user who spreads sends over N nodes gets the configured rate in
//! all, not N times it. The price: tokens granted to a node and not spent there within the lease
//! are lost to the user (at most one chunk per node per lease), and a send that finds no tokens
//! on its node waits one round trip to the home.
//!
//! When the home cannot be asked (the user's partition is electing a leader, or its leader does
//! not answer in [`ASK_TIMEOUT`]) the node counts the user on a bucket of its own instead: sends
//! keep flowing at the per-node rate rather than stopping with the user's partition
//! (`chatd_send_rate_fallbacks_total` counts these). A new home starts with a full bucket, so a
//! failover of the user's partition can give a user one extra burst.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chat_log::{LogNode, PartitionId, ProposeError, RejectCode};
use chat_model::ids::partition_of;
use chat_proto::chat_v1 as pb;
use chat_proto::LeaderHint;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::SeqError;
use crate::forward::Forwarder;

/// How long granted tokens may be spent.
pub(crate) const LEASE: Duration = Duration::from_secs(1);
/// How long a node waits for its user's home to grant tokens before counting on its own.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How often buckets of users who stopped sending are dropped.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The token buckets one node keeps.
struct Buckets {
    /// Those of users whose partition this node leads.
    home: DefaultKeyedRateLimiter<u64>,
    /// This node's own, for when a user's home cannot be asked.
    fallback: DefaultKeyedRateLimiter<u64>,
}

/// The send-rate buckets of one node: its users' homes, its own fallbacks, and its leases.
pub(crate) struct SendRate {
    node: Arc<LogNode>,
    sends_per_second: u32,
    burst: u32,
    /// Tokens asked of a home at a time.
    chunk: u32,
    buckets: Arc<Buckets>,
    /// Tokens other homes granted this node, per user; void after [`LEASE`].
    leases: moka::sync::Cache<u64, Arc<AtomicU32>>,
}

impl SendRate {
    pub(crate) fn new(node: Arc<LogNode>, rate: NonZeroU32, burst: NonZeroU32) -> Arc<SendRate> {
        let quota = Quota::per_second(rate).allow_burst(burst);
        let limits = Arc::new(SendRate {
            node,
            sends_per_second: rate.get(),
            burst: burst.get(),
            chunk: (rate.get() / 10).clamp(1, burst.get()),
            buckets: Arc::new(Buckets {
                home: RateLimiter::keyed(quota),
                fallback: RateLimiter::keyed(quota),
            }),
            leases: moka::sync::Cache::builder().time_to_live(LEASE).build(),
        });
        // Shown as 0 until they happen, rather than absent.
        metrics::counter!("chatd_sends_rate_limited_total").increment(0);
        metrics::counter!("chatd_send_rate_fallbacks_total").increment(0);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(forget_idle(Arc::downgrade(&limits.buckets)));
        }
        limits
    }

    /// Count one send of `user` against the user's rate; RESOURCE_EXHAUSTED if it is spent.
    pub(crate) async fn admit(&self, user: u64, forwarder: &Forwarder) -> Result<(), SeqError> {
        let home = self.home_of(user);
        let allowed = if self.node.is_leader(home) {
            self.spend_home(user)
        } else if self.spend_lease(user) {
            true
        } else {
            match self.ask_home(home, user, forwarder).await {
                Ok(0) => false,
                Ok(granted) => {
                    // One is this send's; the rest wait for the user's next sends here.
                    self.leases
                        .insert(user, Arc::new(AtomicU32::new(granted - 1)));
                    true
                }
                Err(why) => {
                    tracing::debug!(user, %why, "send rate counted on this node");
                    metrics::counter!("chatd_send_rate_fallbacks_total").increment(1);
                    self.buckets.fallback.check_key(&user).is_ok()
                }
            }
        };
        if allowed {
            return Ok(());
        }
        metrics::counter!("chatd_sends_rate_limited_total").increment(1);
        Err(SeqError::Rejected {
            code: RejectCode::ResourceExhausted,
            message: format!(
                "user {user} is sending faster than {} messages/s",
                self.sends_per_second
            ),
        })
    }

    /// At the user's home: hand out up to `want` of the user's tokens (possibly none).
    /// Elsewhere: UNAVAILABLE naming the home, as a write to the wrong node is answered.
    pub(crate) fn grant(&self, user: u64, want: u32) -> Result<pb::GrantSendsReply, SeqError> {
        let home = self.home_of(user);
        if !self.node.is_leader(home) {
            let (leader_id, leader_addr) = self.node.leader_hint(home).unzip();
            return Err(ProposeError::not_leader(home, leader_id, leader_addr).into());
        }
        // The bucket takes a batch whole or not at all: halve until one fits.
        let mut n = want.clamp(1, self.burst);
        let granted = loop {
            let batch = NonZeroU32::new(n).expect("n is at least 1");
            if matches!(self.buckets.home.check_key_n(&user, batch), Ok(Ok(()))) {
                break n;
            }
            if n == 1 {
                break 0;
            }
            n /= 2;
        };
        Ok(pb::GrantSendsReply {
            granted,
            valid_ms: LEASE.as_millis() as u32,
        })
    }

    fn home_of(&self, user: u64) -> PartitionId {
        partition_of(user, self.node.partition_count())
    }

    fn spend_home(&self, user: u64) -> bool {
        self.buckets.home.check_key(&user).is_ok()
    }

    fn spend_lease(&self, user: u64) -> bool {
        self.leases.get(&user).is_some_and(|left| {
            left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        })
    }

    /// Ask the user's home for a chunk of tokens: the leader this node knows of, then, if that
    /// node names another, the one it names.
    async fn ask_home(
        &self,
        home: PartitionId,
        user: u64,
        forwarder: &Forwarder,
    ) -> Result<u32, String> {
        let Some((mut leader, mut addr)) = self.node.leader_hint(home) else {
            return Err(format!("partition {home} has no known leader"));
        };
        for _ in 0..2 {
            if leader == self.node.node_id() {
                // This node became the home meanwhile.
                return Ok(u32::from(self.spend_home(user)));
            }
            let request = pb::GrantSendsRequest {
                user_id: user,
                want: self.chunk,
            };
            match forwarder.grant_sends(&addr, request, ASK_TIMEOUT).await {
                Ok(reply) => return Ok(reply.granted),
                Err(status) => match LeaderHint::from_status(&status) {
                    Some(LeaderHint {
                        leader_id: Some(id),
                        leader_addr: Some(next),
                        ..
                    }) if next != addr => (leader, addr) = (id, next),
                    _ => return Err(format!("the leader of {home} at {addr}: {status}")),
                },
            }
        }
        Err(format!("no leader of {home} answered"))
    }
}

/// Drop the buckets of users who have not sent for a while, so they do not grow with every user
/// who ever sent; ends with the limiter. (It holds the buckets alone, never the node.)
async fn forget_idle(buckets: Weak<Buckets>) {
    loop {
        tokio::time::sleep(FORGET_EVERY).await;
        let Some(buckets) = buckets.upgrade() else {
            return;
        };
        for bucket in [&buckets.home, &buckets.fallback] {
            bucket.retain_recent();
            bucket.shrink_to_fit();
        }
    }
}
