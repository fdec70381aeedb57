//! `chat-jepsen`: the correctness suite of the chat backend, after Jepsen.
//!
//! Today: [`history`] (operations in Jepsen's JSONL shape) and [`checkers`] (every anomaly the
//! suite looks for, each proven by self-tests on synthetic histories). The harness that runs
//! real `chatd` processes under faults and records histories is the next step (issue #6).

pub mod checkers;
pub mod history;
