//! `chat-client`: talking to chatd from outside.
//!
//! - [`device`]: the device client library over the `chat.v1.Chat` API: [`ChatClient`] (one
//!   connection; unary calls and a raw device stream) and [`Device`] (stays connected: resumes
//!   from its cursors, resends unacknowledged sends with their ids, pings, acks).
//! - [`media`]: uploading and downloading blobs through the URLs the server grants.
//! - [`profile`]: the `chat` CLI's local profile (servers, token, cursors).
//! - [`admin`]: the admin-API client behind `chatctl` (status, append with leader following,
//!   reads, digests, compaction, checksum verification), and [`cluster_view`]: several nodes'
//!   answers side by side (`chatctl --endpoints`); [`backup`]: `chatctl backup` and `restore`;
//!   [`replay`]: events decoded for `chatctl replay`.

pub mod admin;
pub mod backup;
pub mod cluster_view;
pub mod device;
pub mod media;
pub mod profile;
pub mod replay;

pub use device::{ChatClient, Device, DeviceEvent, DeviceOptions, DeviceStream, FrameSender};
