//! `chat-client`: talking to chatd from outside.
//!
//! Today: [`admin`], the admin-API client behind `chatctl` (status, append with leader
//! following, reads, digests, compaction, checksum verification). The device client library and
//! the `chat` CLI join when the gateway lands.

pub mod admin;
