//! The admin API client: one JSON call or an SSE stream, bearer token and actor header,
//! API errors decoded into [`ClientError`].

use crate::api::ACTOR_HEADER;
use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// How long one admin call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The admin URL when neither `--admin-url` nor `SLUICE_ADMIN_URL` says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The admin URL cannot be used.
    #[error("admin URL '{url}' is not valid: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// No answer.
    #[error("cannot reach the admin API at {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The API refused the request.
    #[error("{message} (HTTP {status} {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the body.
        code: String,
        /// Message from the body.
        message: String,
    },
    /// The answer was not what the API sends.
    #[error("unexpected answer from the admin API: {0}")]
    Protocol(String),
}

/// A client for one gate's admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    actor: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client for `url` (e.g. `http://127.0.0.1:9901`).
    pub fn new(
        url: &str,
        token: Option<String>,
        actor: String,
    ) -> Result<AdminClient, ClientError> {
        let bad = |why: &str| ClientError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "only http:// is supported (the admin API listens on loopback)",
            ));
        }
        if uri.authority().is_none() {
            return Err(bad("no host:port"));
        }
        Ok(AdminClient {
            base: url.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            actor,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    fn request(&self, method: Method, path: &str) -> (http::request::Builder, String) {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(ACTOR_HEADER, &self.actor);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        (req, url)
    }

    /// Sends a request, waiting at most [`DEFAULT_TIMEOUT`] for the answer's head.
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let unreachable = |why: String| ClientError::Unreachable {
            url: self.base.clone(),
            why,
        };
        tokio::time::timeout(DEFAULT_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {DEFAULT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(format!("{e:#}")))
    }

    /// Follows the live event stream at `path` (SSE), calling `each` with every event until
    /// the gate closes the stream.
    pub async fn follow(&self, path: &str, mut each: impl FnMut(Value)) -> Result<(), ClientError> {
        let (req, url) = self.request(Method::GET, path);
        let req = req
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::BadUrl {
                url: url.clone(),
                why: e.to_string(),
            })?;
        let unreachable = |why: String| ClientError::Unreachable {
            url: self.base.clone(),
            why,
        };
        let resp = self.send(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            return Err(api_error(status.as_u16(), &bytes));
        }
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreachable(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = pending.find("\n\n") {
                let message: String = pending.drain(..end + 2).collect();
                for line in message.lines() {
                    if let Some(json) = line.strip_prefix("data:") {
                        if let Ok(v) = serde_json::from_str(json.trim()) {
                            each(v);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Calls `method path` with an optional JSON body; returns the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let (mut req, url) = self.request(method, path);
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| ClientError::BadUrl {
            url: url.clone(),
            why: e.to_string(),
        })?;
        let unreachable = |why: String| ClientError::Unreachable {
            url: self.base.clone(),
            why,
        };
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = tokio::time::timeout(DEFAULT_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| unreachable("the answer stalled".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
            ClientError::Protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(api_error(status.as_u16(), &bytes))
        }
    }
}

pub fn api_error(status: u16, body: &[u8]) -> ClientError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = &value["error"];
    ClientError::Api {
        status,
        code: err["code"].as_str().unwrap_or("error").to_string(),
        message: err["message"]
            .as_str()
            .unwrap_or("the admin API refused the request")
            .to_string(),
    }
}
