//! The HTTP client the ACME protocol runs on: reqwest with rustls, trusting a private CA
//! when one is configured, and keeping the `Retry-After` of the latest refused request
//! (instant-acme's problem documents do not carry it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use parking_lot::Mutex;

/// How long one request to the ACME server may take (default 30 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured (default 1 day); longer ones are cut to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// The client, and the `Retry-After` the server last sent with a refusal.
#[derive(Clone)]
pub struct AcmeHttp {
    client: reqwest::Client,
    retry_after: Arc<Mutex<Option<Duration>>>,
}

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The CA file cannot be read or holds no certificate.
    #[error("ca_file {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// reqwest refused the settings.
    #[error("cannot build the ACME client: {0}")]
    Build(String),
}

impl AcmeHttp {
    /// A client trusting the system's roots, plus `ca_file`'s certificates when given.
    pub fn new(ca_file: Option<&std::path::Path>) -> Result<AcmeHttp, HttpError> {
        let mut builder = reqwest::Client::builder()
            .timeout(DEFAULT_REQUEST_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let ca = |why: String| HttpError::CaFile {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("no PEM certificate in it".into()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder
            .build()
            .map_err(|e| HttpError::Build(e.to_string()))?;
        Ok(AcmeHttp {
            client,
            retry_after: Arc::default(),
        })
    }

    /// The `Retry-After` of the latest refused request, taken (so it is used once).
    pub fn take_retry_after(&self) -> Option<Duration> {
        self.retry_after.lock().take()
    }
}

/// A `Retry-After` value: delay seconds, or an HTTP date.
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate_delay(value, now)?,
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` minus now (zero when past).
fn httpdate_delay(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    let at = crate::time::parse_time(&format!("{year:04}-{month:02}-{day:02}T{time}Z"), 0)?;
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Some(Duration::from_millis((at - now_ms).max(0) as u64))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let client = self.client.clone();
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            };
            let rsp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| Error::Other(Box::new(e)))?;
            if rsp.status().is_client_error() || rsp.status().is_server_error() {
                if let Some(d) = rsp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
                {
                    *retry_after.lock() = Some(d);
                }
            }
            let mut head = http::Response::builder()
                .status(rsp.status())
                .version(rsp.version());
            if let Some(h) = head.headers_mut() {
                *h = rsp.headers().clone();
            }
            let (parts, ()) = head.body(()).map_err(Error::Http)?.into_parts();
            let bytes = rsp.bytes().await.map_err(|e| Error::Other(Box::new(e)))?;
            Ok(BytesResponse {
                parts,
                body: Box::new(bytes),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        let earlier = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777 - 60);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", earlier),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
