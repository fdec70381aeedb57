//! chatd, the chat server, as a library: configuration, the admin service, per-call gRPC
//! metrics, the backup stream and the server composition (the log, sequencer, projector and gateway on one port).
//! `main.rs` is a thin wrapper; tests and the benchmark host nodes in-process through
//! [`server::start`].

pub mod admin;
pub mod backup;
pub mod config;
pub mod connections;
pub mod grpc_metrics;
pub mod http;
pub mod server;
