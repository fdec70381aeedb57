//! Most of chatd's integration tests, in one test binary: each file of this directory is a
//! module here rather than a binary of its own, so `common` is compiled once and the binary
//! (which links RocksDB) is linked once. Run one file's tests by its module path, e.g.
//! `cargo test --release -p chatd --test all fuzz_frames::`.
//!
//! The files declared as test binaries of their own in `Cargo.toml` are not modules here: long
//! and heavy ones (`placement`, `elastic_under_load`) and root-only ones that mount filesystems
//! (`disk_full`, which also serializes its tests on a process-wide lock, and `disk_faults`).

mod common;

mod bad_input;
mod chat_on_placement;
mod cluster;
mod crash;
mod data_dir_format;
mod data_loss;
mod deletion;
mod forward_cut;
mod fuzz_frames;
mod gateway;
mod gateway_cluster;
mod groups;
mod limits;
mod media;
mod metrics;
mod notifications;
mod presence_push;
mod presence_registry;
mod privacy;
mod projector;
mod python_client;
mod reflection;
mod repair;
mod retention;
mod revocation;
mod safe_restart;
mod send_order;
mod send_rate;
mod tls;
mod typing;
mod write_path_cluster;
