//! Automatic certificates (ACME, RFC 8555): orders and renewals for the names of services
//! that ask for them, answered through HTTP-01 on the plain listeners or TLS-ALPN-01 on the
//! TLS listeners, on instant-acme (rustls and ring, like the rest of the gate).

pub mod challenges;
pub mod http;
pub mod manager;
pub mod storage;

pub use challenges::{alpn_certificate, Http01, HTTP01_PREFIX};
pub use manager::{
    AcmeBoard, AcmeError, Challenge, Manager, NameStatus, Report, Settings, DEFAULT_RENEW_BEFORE,
    DEFAULT_RETRY_MAX, DEFAULT_RETRY_MIN, LETS_ENCRYPT, LETS_ENCRYPT_STAGING,
};
