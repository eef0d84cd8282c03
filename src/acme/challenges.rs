//! The answers to ACME challenges the listeners give while an order is open: HTTP-01
//! tokens (served on plain listeners at `/.well-known/acme-challenge/TOKEN`, before any
//! routing) and TLS-ALPN-01 certificates (served to `acme-tls/1` handshakes through the
//! certificate store).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

/// The path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// HTTP-01 key authorizations by token; read per request on that path only.
#[derive(Debug, Default)]
pub struct Http01 {
    tokens: ArcSwap<HashMap<String, String>>,
}

impl Http01 {
    /// The key authorization of `token`, if one is being validated.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.tokens.load().get(token).cloned()
    }

    /// Serves `key_authorization` for `token` until [`Http01::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.insert(token.to_string(), key_authorization.to_string());
            m
        });
    }

    /// Stops serving `token`.
    pub fn remove(&self, token: &str) {
        self.tokens.rcu(|old| {
            let mut m = HashMap::clone(old);
            m.remove(token);
            m
        });
    }
}

/// Why a TLS-ALPN-01 certificate cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the tls-alpn-01 certificate for {name}: {why}")]
pub struct ChallengeCertError {
    name: String,
    why: String,
}

/// The self-signed certificate TLS-ALPN-01 validation expects (RFC 8737 §3): the name as
/// its only SAN and the critical acmeIdentifier extension holding SHA-256 of the key
/// authorization.
pub fn alpn_certificate(
    name: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, ChallengeCertError> {
    let err = |why: String| ChallengeCertError {
        name: name.to_string(),
        why,
    };
    if digest.len() != 32 {
        return Err(err(format!(
            "the digest has {} bytes, not 32",
            digest.len()
        )));
    }
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| err(e.to_string()))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| err(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| err(e.to_string()))?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| err(e.to_string()))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| err(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_and_go() {
        let h = Http01::default();
        h.insert("abc", "abc.thumb");
        assert_eq!(h.answer("abc").as_deref(), Some("abc.thumb"));
        h.remove("abc");
        assert_eq!(h.answer("abc"), None);
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest() {
        let k = alpn_certificate("shop.test", &[7u8; 32]).unwrap();
        let der = k.cert[0].as_ref().to_vec();
        use x509_parser::prelude::*;
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        let ext = c
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // OCTET STRING (0x04), length 32, the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        assert!(alpn_certificate("shop.test", &[0u8; 5]).is_err());
    }
}
