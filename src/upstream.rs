//! How the gate speaks to a service's upstreams: HTTP/1.1 (default), h2c (HTTP/2 by prior
//! knowledge, as gRPC servers take it) or HTTP/2 over TLS, and for TLS the name it asks for,
//! whether the certificate is checked and the CA bundle it is checked against.

use std::path::Path;
use std::sync::Arc;

use pingora::utils::tls::WrappedX509;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The protocol spoken to upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (default).
    #[default]
    H1,
    /// HTTP/2 without TLS, by prior knowledge.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
}

/// `services[].upstream`, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamOptions {
    /// The protocol.
    pub protocol: Protocol,
    /// TLS to the upstreams (always with `h2`).
    pub tls: bool,
    /// The name sent as SNI and checked in the certificate (default: the upstream's host as
    /// written).
    pub sni: Option<String>,
    /// Check the upstream's certificate (default true).
    pub verify: bool,
    /// The roots it is checked against (default: the system's).
    pub ca: Option<Arc<CaBundle>>,
}

/// CA certificates from a PEM file, parsed once (the connector takes them per connection).
pub struct CaBundle {
    der: Vec<Vec<u8>>,
    certs: Arc<[WrappedX509]>,
    fingerprint: u64,
}

impl CaBundle {
    /// Reads and checks every certificate of `path` (each must parse: the connector's own
    /// parser would panic on a bad one).
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut der = Vec::new();
        for c in CertificateDer::pem_slice_iter(&bytes) {
            let c = c.map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
            if x509_parser::parse_x509_certificate(c.as_ref()).is_err() {
                return Err(format!(
                    "{}: a certificate in it does not parse",
                    path.display()
                ));
            }
            der.push(c.as_ref().to_vec());
        }
        if der.is_empty() {
            return Err(format!(
                "{}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        let certs = der
            .iter()
            .map(|d| WrappedX509::new(d.clone(), pingora::utils::tls::parse_x509))
            .collect();
        let fingerprint = crate::types::fnv1a(&der.concat());
        Ok(CaBundle {
            der,
            certs,
            fingerprint,
        })
    }

    /// A hash of the certificates: pooled connections are kept apart by it (pingora's pool
    /// key does not include the CA, so two services trusting different roots would otherwise
    /// share a connection one of them would have refused).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// What the connector takes.
    pub fn certs(&self) -> Arc<[WrappedX509]> {
        self.certs.clone()
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &CaBundle) -> bool {
        self.der == other.der
    }
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({} certificates)", self.der.len())
    }
}
