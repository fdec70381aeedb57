//! The cluster's certificate authority: a self-signed CA made once per cluster, and the
//! certificates it issues — one per node (a server and a client certificate in one: nodes dial
//! each other with it) and one per operator or tool that calls the admin API.
//!
//! Keys are ECDSA P-256. The CA's key is what lets anyone join the cluster's internal network:
//! keep it off the nodes (they need only `ca.pem`, their own certificate and key).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What an issued certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A node: serves the internal and public addresses and dials other nodes.
    Node,
    /// An operator or tool calling the internal address (`chatctl` admin commands).
    Client,
}

/// A new CA for a cluster named `cluster`, valid for `days`.
pub fn new_ca(cluster: &str, days: u32) -> anyhow::Result<Issued> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("{cluster} cluster CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params.self_signed(&key).context("signing the CA")?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `name`, signed by the CA in `ca`, valid for `days`. A node's names
/// (`hosts`: DNS names and IP addresses its peers and devices dial it by) go in its subject
/// alternative names; a client needs none.
pub fn issue(
    ca: &Issued,
    kind: Kind,
    name_: &str,
    hosts: &[String],
    days: u32,
) -> anyhow::Result<Issued> {
    if kind == Kind::Node && hosts.is_empty() {
        bail!(
            "a node certificate needs at least one host (the names or addresses it is dialled by)"
        );
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("reading the CA key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("reading the CA certificate")?;
    let key = KeyPair::generate().context("generating a key")?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .with_context(|| format!("bad host name among {hosts:?}"))?;
    params.distinguished_name = name(name_);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        Kind::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, days);
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Write `issued` as `<dir>/<stem>.pem` and `<dir>/<stem>.key` (the key readable by its owner
/// only), refusing to overwrite either: a CA or key replaced by mistake cannot be got back.
pub fn write(dir: &Path, stem: &str, issued: &Issued) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    for path in [&cert, &key] {
        if path.exists() {
            bail!(
                "{} exists: not overwritten (remove it first to replace it)",
                path.display()
            );
        }
    }
    write_new(&key, issued.key_pem.as_bytes(), 0o600)?;
    write_new(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Read `<dir>/<stem>.pem` and `<dir>/<stem>.key`.
pub fn read(dir: &Path, stem: &str) -> anyhow::Result<Issued> {
    let read = |ext: &str| {
        let path = dir.join(format!("{stem}.{ext}"));
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(Issued {
        cert_pem: read("pem")?,
        key_pem: read("key")?,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from an hour ago (clocks a little behind still accept it) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}
