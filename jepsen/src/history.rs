//! Histories in Jepsen's shape: one JSON object per line with `index, time, process, type, f,
//! value, node, error`. An operation is invoked (`invoke`) and then completes as `ok` (it
//! happened), `fail` (it definitely did not happen) or `info` (unknown: a timeout; the process is
//! retired, as Jepsen does, and the operation may or may not have taken effect).
//!
//! The functions (`f`) of the chat workload:
//! - `send`: value `{chat, id}` on invoke; `{chat, id, seq}` on ok. Sends through the device
//!   API also name the sending `device` (`u<user>d<device>`); the order a device wrote its sends
//!   in is the order of their first invocations.
//! - `poll`: a batch a reader's device stream delivered: `{chat, messages: [{seq, id}], resumed_from}`
//!   (`resumed_from` is set on the first batch after (re)connecting with a cursor), with the
//!   reading `user` and `device` when a device stream read it.
//! - `drain`: the final read of a whole chat from one node, after heal and quiesce:
//!   `{chat, messages: [{seq, id, ts}]}`.
//! - `receipt`: watermarks a reader observed: `{chat, user, delivered, read, last_seq}`.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Send,
    Poll,
    Drain,
    Receipt,
}

/// One message as a reader saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub seq: u64,
    /// The sender's client_msg_id (unique per workload).
    pub id: String,
    /// The leader-assigned server time (set by drains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    pub chat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Seen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// The device that sent or read (`u<user>d<device>`), for operations of the device API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl Value {
    /// A value naming only its chat (invocations of reads, failed reads).
    pub fn of_chat(chat: u64) -> Value {
        Value {
            chat,
            ..Value::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub index: u64,
    /// Nanoseconds since the start of the run.
    pub time: u64,
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: F,
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A history: operations in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// Append an operation, numbering it (its `index` is overwritten).
    pub fn push(&mut self, mut op: Op) {
        op.index = self.ops.len() as u64;
        self.ops.push(op);
    }

    pub fn write_jsonl(&self, mut out: impl Write) -> anyhow::Result<()> {
        for op in &self.ops {
            serde_json::to_writer(&mut out, op)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn read_jsonl(input: impl BufRead) -> anyhow::Result<History> {
        let mut ops = Vec::new();
        for (n, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let op: Op = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("history line {}: {e}", n + 1))?;
            ops.push(op);
        }
        Ok(History { ops })
    }

    /// Each completed operation with the invocation it completes (same process, the most recent
    /// open invoke of that process).
    pub fn pairs(&self) -> Vec<(&Op, Option<&Op>)> {
        let mut open: std::collections::HashMap<u64, &Op> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for op in &self.ops {
            match op.kind {
                OpType::Invoke => {
                    open.insert(op.process, op);
                }
                _ => out.push((op, open.remove(&op.process))),
            }
        }
        out
    }
}
