//! `chat-jepsen`: the correctness suite of the chat backend, after Jepsen.
//!
//! - [`history`]: operations in Jepsen's JSONL shape.
//! - [`checkers`]: every anomaly the suite looks for, each proven by self-tests on synthetic
//!   histories.
//! - [`harness`]: real `chatd` processes in a private network namespace, a seeded workload and
//!   nemesis (kill, pause, partition), the final drain, the report.

pub mod checkers;
pub mod harness;
pub mod history;
