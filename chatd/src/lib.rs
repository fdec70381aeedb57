//! chatd, the chat server, as a library: configuration, the admin service and the server
//! composition. `main.rs` is a thin wrapper; the benchmark hosts nodes in-process through
//! [`server::start`].
//!
//! Today chatd hosts the partitioned log (`chat-log`); the sequencer, projector and gateway join
//! it here as they land.

pub mod admin;
pub mod config;
pub mod server;
