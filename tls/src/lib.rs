//! TLS on every link of a chat cluster.
//!
//! Two kinds of listener, two kinds of trust (see `docs/security.md`):
//! - the **internal** address (Raft, forwarding, peer calls, admin) takes only clients that show
//!   a certificate of the cluster's CA — other nodes with their node certificate, operators with a
//!   client certificate made by `chatctl certs client` — and nodes dial each other the same way;
//! - the **public** address (the device API) is plain server-authenticated TLS: devices check the
//!   node's certificate (the node's own, or a public one given for it) and show none.
//!
//! [`ca`] makes the cluster's CA and the certificates it issues. [`NodeTls`] holds a node's
//! configs, built from PEM files and rebuilt when the files change (certificates rotate without a
//! restart: new connections take the new files, open ones go on). [`accept`] turns a listener's
//! TCP connections into TLS ones (or passes them through plain); [`Dialer`] makes tonic channels
//! that dial through TLS with whatever config is current at each (re)connect.

mod accept;
pub mod ca;
mod dial;
mod node;

pub use accept::{accept, Conn, Side};
pub use dial::Dialer;
pub use node::{client_config, NodeTls, TlsPaths};

/// The ALPN protocol every link speaks: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Install ring as the process's rustls provider (if none is yet), for libraries that build
/// TLS configs with rustls' defaults (reqwest, behind media URLs and S3).
pub fn install_provider() {
    provider();
}

/// The process-wide rustls crypto provider (ring): installed once, so that every config built
/// here, and any built by a library with rustls' defaults, agree on it.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            // Another part of the process may have installed one first; ours is used explicitly
            // wherever this crate builds a config, so that is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            provider
        })
        .clone()
}
