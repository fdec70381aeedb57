//! [`SequencerConfig`]: how one node's write path behaves. None of it decides what is applied,
//! so nodes may differ: the checks' limits ([`CommandLimits`], from `chat-model`, beside the
//! checks they bound), the per-user send rate, how long a submit retries, the history page cap.

use std::time::Duration;

use chat_model::CommandLimits;

/// Limits checked before proposing (they need not agree across nodes).
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Payload, client_msg_id and handle sizes.
    pub limits: CommandLimits,
    /// Sustained sends per second per user, and the burst above it.
    pub sends_per_second: u32,
    pub send_burst: u32,
    /// How long `submit` keeps retrying through elections before answering UNAVAILABLE.
    pub submit_timeout: Duration,
    /// Most messages one history page returns.
    pub max_history_page: u32,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            limits: CommandLimits::default(),
            sends_per_second: 50,
            send_burst: 200,
            submit_timeout: Duration::from_secs(10),
            max_history_page: 1000,
        }
    }
}
