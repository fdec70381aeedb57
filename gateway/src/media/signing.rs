//! URL signatures of the embedded media store: HMAC-SHA256 over what a URL allows (method, key,
//! expiry, and for an upload the exact size and sha256), keyed by a key derived from the cluster
//! secret. Every node derives the same key, so a node can check a URL another node signed;
//! devices never see the key and cannot widen what a URL allows.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks the embedded store's URLs.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
}

/// What a URL lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant<'a> {
    /// Upload exactly `size` bytes whose sha256 is `sha256` (hex) to `key`.
    Put {
        key: &'a str,
        size: u64,
        sha256: &'a str,
    },
    /// Read `key`.
    Get { key: &'a str },
}

impl UrlSigner {
    /// A signer keyed by `cluster_secret` (domain-separated: the secret itself never signs).
    pub fn new(cluster_secret: &str) -> UrlSigner {
        let mut h = Sha256::new();
        h.update(b"chat media url signing v1\0");
        h.update(cluster_secret.as_bytes());
        UrlSigner {
            key: h.finalize().into(),
        }
    }

    /// The signature (hex) of `grant` until `expires_ms`.
    pub fn sign(&self, grant: &Grant<'_>, expires_ms: u64) -> String {
        hex::encode(self.mac(grant, expires_ms).finalize().into_bytes())
    }

    /// Whether `signature` (hex) signs `grant` until `expires_ms` (compared in constant time).
    pub fn verify(&self, grant: &Grant<'_>, expires_ms: u64, signature: &str) -> bool {
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        self.mac(grant, expires_ms).verify_slice(&signature).is_ok()
    }

    fn mac(&self, grant: &Grant<'_>, expires_ms: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        let text = match grant {
            Grant::Put { key, size, sha256 } => {
                format!("PUT\n{key}\n{expires_ms}\n{size}\n{sha256}")
            }
            Grant::Get { key } => format!("GET\n{key}\n{expires_ms}"),
        };
        mac.update(text.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_every_field_and_the_secret() {
        let signer = UrlSigner::new("secret-a");
        let put = Grant::Put {
            key: "n1/u2/00000000000000000000000000000003",
            size: 10,
            sha256: "ab",
        };
        let sig = signer.sign(&put, 1000);
        assert!(signer.verify(&put, 1000, &sig));
        assert!(!signer.verify(&put, 1001, &sig), "another expiry");
        let bigger = Grant::Put {
            key: "n1/u2/00000000000000000000000000000003",
            size: 11,
            sha256: "ab",
        };
        assert!(!signer.verify(&bigger, 1000, &sig), "another size");
        let get = Grant::Get {
            key: "n1/u2/00000000000000000000000000000003",
        };
        assert!(
            !signer.verify(&get, 1000, &sig),
            "a put's signature is no get's"
        );
        assert!(
            !UrlSigner::new("secret-b").verify(&put, 1000, &sig),
            "another secret"
        );
        assert!(!signer.verify(&put, 1000, "zz"), "not hex");
    }
}
