//! A node's TLS configs, built from PEM files and rebuilt when they change.
//!
//! Certificates rotate without a restart: a task looks at the files' modification times every
//! few seconds and, when one changed, builds every config again from all of them. A set that does
//! not load (a key written before its certificate, a file half copied) is logged and the old
//! configs stay until the files load together. Each new connection, in or out, takes the configs
//! current when it starts; connections already open go on with theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{provider, ALPN_H2};

/// Where a node's TLS material lives (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA's certificate: what other nodes' and admin clients' certificates must be
    /// signed by.
    pub ca: PathBuf,
    /// This node's certificate (chain), issued by the cluster CA.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The certificate devices see on the public address, when not the node's own (one from a
    /// public CA, say), and its key.
    pub public_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsPaths {
    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.ca.as_path(), &self.cert, &self.key];
        if let Some((cert, key)) = &self.public_cert {
            files.extend([cert.as_path(), key.as_path()]);
        }
        files
    }
}

/// The configs built from one loading of the files.
struct Configs {
    /// The internal address: the client must show a certificate of the cluster CA.
    internal: Arc<ServerConfig>,
    /// The public address: no client certificate.
    public: Arc<ServerConfig>,
    /// Dialling other nodes: their certificate checked against the CA, ours shown.
    client: Arc<ClientConfig>,
}

/// A node's TLS configs, current as of the last loading of its files.
pub struct NodeTls {
    paths: TlsPaths,
    current: RwLock<Arc<Configs>>,
    /// The files' modification times at the last successful loading.
    loaded_at: Mutex<Vec<Option<SystemTime>>>,
}

impl NodeTls {
    /// Load the configs from `paths`; any file missing or not what it should be is an error
    /// naming it.
    pub fn load(paths: TlsPaths) -> anyhow::Result<Arc<NodeTls>> {
        let stamps = stamps(&paths);
        let configs = build(&paths)?;
        Ok(Arc::new(NodeTls {
            paths,
            current: RwLock::new(Arc::new(configs)),
            loaded_at: Mutex::new(stamps),
        }))
    }

    /// The config for a connection accepted on the internal address.
    pub fn internal_server(&self) -> Arc<ServerConfig> {
        self.configs().internal.clone()
    }

    /// The config for a connection accepted on the public address.
    pub fn public_server(&self) -> Arc<ServerConfig> {
        self.configs().public.clone()
    }

    /// The config for dialling another node.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.configs().client.clone()
    }

    fn configs(&self) -> Arc<Configs> {
        self.current.read().expect("tls configs lock").clone()
    }

    /// Load the files again if any changed since they were last loaded; true if the configs
    /// were replaced. A set that does not load leaves the old configs and is the error.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let now = stamps(&self.paths);
        let mut loaded_at = self.loaded_at.lock().expect("tls stamps lock");
        if *loaded_at == now {
            return Ok(false);
        }
        let configs = build(&self.paths)?;
        *self.current.write().expect("tls configs lock") = Arc::new(configs);
        *loaded_at = now;
        Ok(true)
    }

    /// Look for changed files every `every` for as long as the returned task runs.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(every).await;
                let Some(tls) = tls.upgrade() else { return };
                match tls.reload_if_changed() {
                    Ok(true) => {
                        failing = false;
                        metrics::counter!("chatd_tls_reloads_total").increment(1);
                        tracing::info!(cert = %tls.paths.cert.display(), "TLS certificates reloaded");
                    }
                    Ok(false) => {}
                    // Said once per bad set, not every few seconds while an operator copies files.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "TLS files changed but do not load: the previous certificates stay in use"
                        );
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

/// A client config that checks servers against `ca` (the system's roots when none) and shows
/// `identity` (certificate, key) when asked: what `chatctl`, devices and tests dial with.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs(cert)?, private_key(key)?)
            .with_context(|| format!("{} does not go with {}", key.display(), cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

fn build(paths: &TlsPaths) -> anyhow::Result<Configs> {
    let ca = roots(&paths.ca)?;
    let (node_certs, node_key) = (certs(&paths.cert)?, private_key(&paths.key)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.clone()), provider())
        .build()
        .context("building the client certificate verifier")?;
    let server = || {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")
    };
    let mut internal = server()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(node_certs.clone(), node_key.clone_key())
        .with_context(|| {
            format!(
                "{} does not go with {}",
                paths.key.display(),
                paths.cert.display()
            )
        })?;
    let (public_certs, public_key) = match &paths.public_cert {
        Some((cert, key)) => (certs(cert)?, private_key(key)?),
        None => (node_certs.clone(), node_key.clone_key()),
    };
    let mut public = server()?
        .with_no_client_auth()
        .with_single_cert(public_certs, public_key)
        .context("the public certificate does not go with its key")?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(ca)
        .with_client_auth_cert(node_certs, node_key)
        .context("the node certificate as a client certificate")?;
    for alpn in [
        &mut internal.alpn_protocols,
        &mut public.alpn_protocols,
        &mut client.alpn_protocols,
    ] {
        *alpn = vec![ALPN_H2.to_vec()];
    }
    Ok(Configs {
        internal: Arc::new(internal),
        public: Arc::new(public),
        client: Arc::new(client),
    })
}

fn stamps(paths: &TlsPaths) -> Vec<Option<SystemTime>> {
    paths
        .files()
        .into_iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a private key from {}", path.display()))
}

fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    }
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!("no CA certificates found on this system: give the CA to trust (--tls-ca)");
    }
    Ok(roots)
}
