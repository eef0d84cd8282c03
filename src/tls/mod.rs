//! TLS termination: certificates from files or ACME, chosen by SNI behind one swap.

pub mod accept;
pub mod certs;
pub mod store;

pub use accept::{settings, HandshakeCounts, HelloInspector, TlsInfo};
pub use certs::{from_pem, load_files, CertError, Loaded, DEFAULT_EXPIRY_WARNING};
pub use store::{CertSet, CertStore, Entry, Resolver, Source, UnknownName, ACME_TLS_ALPN};
