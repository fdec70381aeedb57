//! faultfs: a fault-injecting FUSE filesystem for the fault-injection suite, in the spirit of
//! Jepsen's lazyfs.
//!
//! A passthrough over a backing directory, except that file data written but not yet fsynced
//! lives only in this process's memory (per file: the written bytes and a pending length). Reads
//! see it; `fsync`/`fdatasync` writes it to the backing file and syncs that; closing does not.
//! Namespace changes (create, unlink, rename, mkdir, links) go to the backing directory at once.
//! A control socket then lets a test:
//! - simulate a power loss (`power-loss`: every file reverts to what was fsynced),
//! - make writes or fsyncs fail with EIO or ENOSPC (`fail ...`),
//! - flip a bit of a file on "disk" (`flip ...`),
//! - and read counters (`status`). See [`control`] for the protocol.
//!
//! The binary is `chat-faultfs` (`mount` and `ctl`); see the crate's README.

pub mod admin;
pub mod control;
pub mod dirty;
pub mod faults;
pub mod fs;
pub mod mount;
mod names;
pub mod state;
pub mod sys;
pub mod table;

pub use control::request;
pub use mount::{run, spawn, MountOptions, Mounted};
pub use state::State;
