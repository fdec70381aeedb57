//! Checkers of the chat log's guarantees over a [`History`]. Each reports anomalies with
//! examples; none is allowed. Per-chat seqs are dense, so skips are checked strictly.
//!
//! | checker | anomalies |
//! |---|---|
//! | [`seqs`] | `inconsistent-seq` (one (chat, seq) holding two messages), `duplicate` (one message at two seqs, or twice in one read) |
//! | [`durability`] | `drain-failed` (a node could not be drained), `gap` (a final drain missing a seq below its last), `lost` (an acknowledged send in no drain), `lost-on-node` (missing from some node's drain), `lost-after-read` (a message a reader saw in no drain) |
//! | [`device_order`] | `device-order` (one device's messages to one chat at seqs out of the order it sent them in) |
//! | [`devices`] | `device-missed` (a device of a user that never got a message of the drains), `device-disagree` (a device holding another message at a seq than the drains) |
//! | [`phantoms`] | `aborted-read` (a message whose send definitely failed), `phantom-read` (a message never sent) |
//! | [`streams`] | `poll-skip`, `nonmonotonic-poll` (a device stream skipping or going back), `bad-resume` (resume after k not starting at k+1) |
//! | [`realtime`] | `realtime-order` (send A acknowledged before send B was invoked, same chat, yet seq A > seq B) |
//! | [`receipts`] | `receipt-regression`, `receipt-order` (read > delivered), `receipt-beyond-last` (past the chat's last seq) |
//! | [`timestamps`] | `timestamp-regression` (a later seq with an earlier server time, e.g. under clock skew) |

pub mod device_order;
pub mod devices;
pub mod durability;
pub mod phantoms;
pub mod realtime;
pub mod receipts;
pub mod seqs;
pub mod streams;
pub mod timestamps;

use std::fmt;

use crate::history::History;

/// One violation, with enough detail to find it in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: &'static str,
    pub detail: String,
}

impl Anomaly {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Anomaly {
            kind,
            detail: detail.into(),
        }
    }
}

/// A checker's verdict.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub checker: &'static str,
    pub anomalies: Vec<Anomaly>,
}

/// Every checker's verdict on a history.
#[derive(Debug, Clone)]
pub struct Report {
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn valid(&self) -> bool {
        self.results.iter().all(|r| r.anomalies.is_empty())
    }

    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.results.iter().flat_map(|r| r.anomalies.iter())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EXAMPLES: usize = 5;
        for r in &self.results {
            let verdict = if r.anomalies.is_empty() {
                "ok"
            } else {
                "FAILED"
            };
            writeln!(
                f,
                "{:<12} {verdict:<6} {} anomalies",
                r.checker,
                r.anomalies.len()
            )?;
            for a in r.anomalies.iter().take(EXAMPLES) {
                writeln!(f, "    {}: {}", a.kind, a.detail)?;
            }
            if r.anomalies.len() > EXAMPLES {
                writeln!(f, "    … {} more", r.anomalies.len() - EXAMPLES)?;
            }
        }
        let failed = self
            .results
            .iter()
            .filter(|r| !r.anomalies.is_empty())
            .count();
        write!(
            f,
            "checks: {} passed, {failed} failed",
            self.results.len() - failed
        )
    }
}

/// Run every checker.
pub fn check_all(h: &History) -> Report {
    Report {
        results: vec![
            CheckResult {
                checker: "seqs",
                anomalies: seqs::check(h),
            },
            CheckResult {
                checker: "durability",
                anomalies: durability::check(h),
            },
            CheckResult {
                checker: "device-order",
                anomalies: device_order::check(h),
            },
            CheckResult {
                checker: "devices",
                anomalies: devices::check(h),
            },
            CheckResult {
                checker: "phantoms",
                anomalies: phantoms::check(h),
            },
            CheckResult {
                checker: "streams",
                anomalies: streams::check(h),
            },
            CheckResult {
                checker: "realtime",
                anomalies: realtime::check(h),
            },
            CheckResult {
                checker: "receipts",
                anomalies: receipts::check(h),
            },
            CheckResult {
                checker: "timestamps",
                anomalies: timestamps::check(h),
            },
        ],
    }
}
