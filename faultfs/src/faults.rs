//! Injected failures: which operations currently fail, and with which errno. Set and cleared
//! through the control socket (`fail write eio`, `fail fsync enospc`, `fail clear`).

use std::fmt;

/// The errors a disk can be made to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// EIO: the device failed.
    Eio,
    /// ENOSPC: no space left on the device.
    Enospc,
}

impl Injected {
    /// Parse `eio` or `enospc`.
    pub fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_lowercase().as_str() {
            "eio" => Some(Injected::Eio),
            "enospc" => Some(Injected::Enospc),
            _ => None,
        }
    }

    /// The errno a failed operation returns.
    pub fn errno(self) -> fuser::Errno {
        match self {
            Injected::Eio => fuser::Errno::EIO,
            Injected::Enospc => fuser::Errno::ENOSPC,
        }
    }
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Injected::Eio => "eio",
            Injected::Enospc => "enospc",
        })
    }
}

/// Which kind of operation a failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `write` (and `fallocate`, which reserves space): fails storing nothing.
    Write,
    /// `fsync`, `fdatasync` and `fsyncdir`: fail leaving the data dirty.
    Fsync,
}

impl Op {
    /// Parse `write` or `fsync`.
    pub fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_lowercase().as_str() {
            "write" => Some(Op::Write),
            "fsync" => Some(Op::Fsync),
            _ => None,
        }
    }
}

/// The failures in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// What writes fail with, if they do.
    pub write: Option<Injected>,
    /// What fsyncs fail with, if they do.
    pub fsync: Option<Injected>,
}

impl Faults {
    /// Make `op` fail with `with` (or succeed again with `None`).
    pub fn set(&mut self, op: Op, with: Option<Injected>) {
        match op {
            Op::Write => self.write = with,
            Op::Fsync => self.fsync = with,
        }
    }

    /// The failure in force for `op`.
    pub fn get(&self, op: Op) -> Option<Injected> {
        match op {
            Op::Write => self.write,
            Op::Fsync => self.fsync,
        }
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |x: Option<Injected>| x.map_or("none".to_string(), |i| i.to_string());
        write!(
            f,
            "fail_write={} fail_fsync={}",
            show(self.write),
            show(self.fsync)
        )
    }
}
