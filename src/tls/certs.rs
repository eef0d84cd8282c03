//! A certificate as the gate serves it: a PEM chain and its key, checked (the key matches,
//! not expired) and read for the names it covers, its issuer and its expiry.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Certificates expiring within this are loaded with a warning (default 7 days).
pub const DEFAULT_EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Why a certificate cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CertError {
    /// The file cannot be read.
    #[error("cannot read {path}: {why}")]
    Unreadable {
        /// The file.
        path: String,
        /// The OS error.
        why: String,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate(String),
    /// The key file holds no PEM private key.
    #[error("{0}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    /// The key is of a kind rustls cannot sign with.
    #[error("{path}: the private key cannot be used: {why}")]
    BadKey {
        /// The key file.
        path: String,
        /// Why.
        why: String,
    },
    /// The first certificate is not valid X.509.
    #[error("{path}: the certificate cannot be parsed: {why}")]
    BadCertificate {
        /// The certificate file.
        path: String,
        /// Why.
        why: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// The certificate is past its notAfter.
    #[error("{path}: the certificate for {names} expired at {at} (UTC)")]
    Expired {
        /// The certificate file.
        path: String,
        /// The names it covers.
        names: String,
        /// When.
        at: String,
    },
}

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The chain and the signing key.
    pub key: Arc<CertifiedKey>,
    /// The DNS names it covers (subjectAltName; the subject CN when there is none),
    /// lowercase, `*.` wildcards included as written.
    pub names: Vec<String>,
    /// notAfter, epoch seconds.
    pub not_after: i64,
    /// notBefore, epoch seconds.
    pub not_before: i64,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The serial number (hex).
    pub serial: String,
}

impl Loaded {
    /// Seconds left until expiry at `now` (epoch seconds); negative once expired.
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.not_after - now
    }

    /// Whether it covers `name` (exactly, or by a one-label wildcard).
    pub fn covers(&self, name: &str) -> bool {
        self.covering_name(name).is_some()
    }

    /// The name of its that covers `name` (`name` itself or a `*.` wildcard), if any.
    pub fn covering_name(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.names
            .iter()
            .find(|n| match n.strip_prefix("*.") {
                Some(suffix) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
                None => **n == name,
            })
            .map(String::as_str)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Unreadable {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Loads and checks a certificate chain file and its key file. `now` (epoch seconds) is
/// when expiry is judged.
pub fn load_files(cert: &Path, key: &Path, now: i64) -> Result<Loaded, CertError> {
    let chain = read(cert)?;
    let key_pem = read(key)?;
    from_pem(
        &chain,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
        now,
    )
}

/// Parses and checks a PEM chain and key (`cert_name` / `key_name` name them in errors).
pub fn from_pem(
    chain: &[u8],
    key: &[u8],
    cert_name: &str,
    key_name: &str,
    now: i64,
) -> Result<Loaded, CertError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .filter_map(Result::ok)
        .collect();
    let Some(leaf) = certs.first() else {
        return Err(CertError::NoCertificate(cert_name.to_string()));
    };
    let key_der =
        PrivateKeyDer::from_pem_slice(key).map_err(|_| CertError::NoKey(key_name.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        CertError::BadKey {
            path: key_name.to_string(),
            why: e.to_string(),
        }
    })?;
    let info = inspect(leaf).map_err(|why| CertError::BadCertificate {
        path: cert_name.to_string(),
        why,
    })?;
    let certified = CertifiedKey::new(certs, signer);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(CertError::KeyMismatch {
            cert: cert_name.to_string(),
            key: key_name.to_string(),
        });
    }
    if info.not_after <= now {
        return Err(CertError::Expired {
            path: cert_name.to_string(),
            names: info.names.join(", "),
            at: crate::time::format_time(info.not_after.max(0) as u64 * 1000),
        });
    }
    Ok(Loaded {
        key: Arc::new(certified),
        names: info.names,
        not_after: info.not_after,
        not_before: info.not_before,
        issuer: info.issuer,
        serial: info.serial,
    })
}

struct Info {
    names: Vec<String>,
    not_after: i64,
    not_before: i64,
    issuer: String,
    serial: String,
}

fn inspect(der: &CertificateDer<'_>) -> Result<Info, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    Ok(Info {
        names,
        not_after: cert.validity().not_after.timestamp(),
        not_before: cert.validity().not_before.timestamp(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names`, valid from `from` to `until` (epoch s).
    pub(crate) fn make(names: &[&str], from: i64, until: i64) -> (String, String) {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.not_before = time_of(from);
        p.not_after = time_of(until);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn time_of(epoch: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(epoch).unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_good_pair_loads_with_its_names_and_expiry() {
        let (c, k) = make(
            &["Shop.example.com", "*.example.com"],
            NOW - 10,
            NOW + 86_400,
        );
        let l = from_pem(c.as_bytes(), k.as_bytes(), "c.pem", "k.pem", NOW).unwrap();
        assert_eq!(l.names, ["shop.example.com", "*.example.com"]);
        assert_eq!(l.not_after, NOW + 86_400);
        assert_eq!(l.seconds_left(NOW), 86_400);
        assert!(l.covers("SHOP.example.com"));
        assert!(l.covers("api.example.com"));
        assert!(!l.covers("a.b.example.com"), "a wildcard covers one label");
        assert!(!l.covers("example.com"));
    }

    #[test]
    fn every_mistake_is_named() {
        let (c, k) = make(&["a.test"], NOW - 10, NOW + 100);
        let (_, other_key) = make(&["a.test"], NOW - 10, NOW + 100);
        let err = |c: &str, k: &str| from_pem(c.as_bytes(), k.as_bytes(), "c.pem", "k.pem", NOW);
        assert_eq!(
            err("hello", &k).unwrap_err(),
            CertError::NoCertificate("c.pem".into())
        );
        assert_eq!(
            err(&c, "hello").unwrap_err(),
            CertError::NoKey("k.pem".into())
        );
        assert!(matches!(
            err(&c, &other_key).unwrap_err(),
            CertError::KeyMismatch { .. }
        ));
        let (old, old_key) = make(&["old.test"], NOW - 1000, NOW - 10);
        let e = err(&old, &old_key).unwrap_err();
        assert!(matches!(e, CertError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("old.test"), "{e}");
        let e = load_files(Path::new("/nonexistent/c.pem"), Path::new("k"), NOW).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }
}
