//! The admin API client behind `sluice status|canary|weight|promote|rollback|reload`.
//!
//! Plain HTTP/1.1 to the admin listener (loopback by default), bearer token from a flag or
//! `SLUICE_TOKEN`, the caller's name sent as `x-sluice-actor` so events say who did it.

use crate::time::format_time;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::api::ACTOR_HEADER;

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

fn api_error(status: u16, body: &[u8]) -> ClientError {
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

/// One deployment as a terminal line.
pub fn render_deployment(d: &Value) -> String {
    let finished = d["finished_ms"]
        .as_u64()
        .map(format_time)
        .unwrap_or_else(|| "-".into());
    format!(
        "{}  {:<40} {:<12} {:<12} {:<12} {:<16} until {}",
        format_time(d["started_ms"].as_u64().unwrap_or(0)),
        d["id"].as_str().unwrap_or("?"),
        d["service"].as_str().unwrap_or("?"),
        d["label"].as_str().unwrap_or("-"),
        d["outcome"].as_str().unwrap_or("?"),
        d["started_by"].as_str().unwrap_or("?"),
        finished
    )
}

/// A deployment with its trend and events, for a terminal.
pub fn render_deployment_detail(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", render_deployment(&v["deployment"]));
    let _ = writeln!(
        out,
        "\nper minute (UTC)        stable req  err %   p95 ms     canary req  err %   p95 ms"
    );
    let arms = &v["trend"]["arms"];
    let mut minutes: Vec<u64> = ["stable", "canary"]
        .iter()
        .flat_map(|a| arms[*a].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["minute_ms"].as_u64())
        .collect();
    minutes.sort_unstable();
    minutes.dedup();
    for m in minutes {
        let cell = |arm: &str| {
            arms[arm]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["minute_ms"].as_u64() == Some(m)))
                .map(|p| {
                    format!(
                        "{:>10} {:>6.2} {:>8}",
                        p["requests"].as_i64().unwrap_or(0),
                        p["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                        p["p95_ms"]
                            .as_f64()
                            .map(|x| format!("{x:.1}"))
                            .unwrap_or_else(|| "-".into())
                    )
                })
                .unwrap_or_else(|| format!("{:>10} {:>6} {:>8}", "-", "-", "-"))
        };
        let _ = writeln!(
            out,
            "{}   {}     {}",
            &format_time(m)[..16],
            cell("stable"),
            cell("canary")
        );
    }
    let _ = writeln!(out, "\nevents");
    if let Some(events) = v["events"].as_array() {
        for e in events.iter().rev() {
            let _ = writeln!(out, "  {}", render_event(e));
        }
    }
    if let Some(probes) = v["probe_results"].as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "\nlatest probe results: {}", probes.len());
    }
    out
}

/// A live deployment view (`GET /api/v1/deployments/{id}`'s `live`) as one terminal line:
/// state, where the plan is, the weight, instances and the judge.
pub fn render_progress(v: &Value) -> String {
    let mut out = format!(
        "{:<11} {}",
        v["state"].as_str().unwrap_or("?"),
        v["summary"].as_str().unwrap_or("")
    );
    let p = &v["progress"];
    if let Some(w) = p["waiting"].as_str() {
        let _ = write!(out, " ({w})");
    }
    let _ = write!(
        out,
        "  weight {}%",
        v["weight"]
            .as_f64()
            .map(|w| format!("{w}"))
            .unwrap_or_default()
    );
    let i = &v["instances"];
    if let Some(total) = i["total"].as_u64() {
        let failed = i["failed"].as_array().map(Vec::len).unwrap_or(0);
        let healthy = i["healthy"].as_u64().unwrap_or(0);
        let _ = write!(
            out,
            "  instances {}/{} updated",
            i["updated"].as_u64().unwrap_or(0),
            total
        );
        // Without probes nothing is known about an instance's health: say nothing.
        if healthy > 0 || failed > 0 {
            let _ = write!(out, ", {healthy} healthy");
        }
        if failed > 0 {
            let _ = write!(out, ", {failed} failing");
        }
    }
    if let Some(j) = v["judge"].as_str() {
        let _ = write!(out, "  judge: {j}");
    }
    out
}

/// A container service's releases: the live ones with their containers, then history.
pub fn render_releases(live: &[Value], history: Option<&Vec<Value>>) -> String {
    let mut out = String::new();
    for r in live {
        let _ = writeln!(
            out,
            "{:<10} {:<36} {:<28} {}",
            r["state"].as_str().unwrap_or("?"),
            r["id"].as_str().unwrap_or("?"),
            r["image"].as_str().unwrap_or("?"),
            &r["image_id"].as_str().unwrap_or("")
                [..r["image_id"].as_str().unwrap_or("").len().min(19)]
        );
        for c in r["containers"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "           {:<36} {}",
                c["name"].as_str().unwrap_or("?"),
                c["addr"].as_str().unwrap_or("?")
            );
        }
    }
    if let Some(h) = history.filter(|h| !h.is_empty()) {
        let _ = writeln!(out, "\nhistory (newest first)");
        for r in h {
            let _ = writeln!(
                out,
                "  {}  {:<10} {:<36} {}",
                format_time(r["updated_ms"].as_u64().unwrap_or(0)),
                r["state"].as_str().unwrap_or("?"),
                r["id"].as_str().unwrap_or("?"),
                r["image"].as_str().unwrap_or("?")
            );
        }
    }
    out
}

/// One event as a terminal line.
pub fn render_event(e: &Value) -> String {
    format!(
        "{}  {:<20} {:<12} {:<16} {}",
        format_time(e["at_ms"].as_u64().unwrap_or(0)),
        e["kind"].as_str().unwrap_or("?"),
        e["service"].as_str().unwrap_or("-"),
        e["actor"].as_str().unwrap_or("?"),
        e["message"].as_str().unwrap_or(""),
    )
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}ms"))
        .unwrap_or_else(|| "-".into())
}

fn render_arm(out: &mut String, role: &str, arm: &Value) {
    let ups: Vec<&str> = arm["upstreams"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let s = &arm["stats"];
    let _ = writeln!(
        out,
        "  {role:<7} {:<28} {:>8} req  {:>7.1}/s  err {:>5.1}%  p50 {:>8}  p95 {:>8}  p99 {:>8}",
        ups.join(","),
        s["requests"].as_u64().unwrap_or(0),
        s["rate_per_second"].as_f64().unwrap_or(0.0),
        s["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
        ms(&s["p50_ms"]),
        ms(&s["p95_ms"]),
        ms(&s["p99_ms"]),
    );
}

/// Renders one service view (as `GET /api/v1/services/{name}` returns it) for a terminal.
pub fn render_service(s: &Value) -> String {
    let mut out = String::new();
    let hosts: Vec<&str> = s["hosts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{}  state={}  canary_weight={}%  table=v{}  hosts={}{}",
        s["name"].as_str().unwrap_or("?"),
        s["state"].as_str().unwrap_or("?"),
        s["canary_weight"].as_f64().unwrap_or(0.0),
        s["table_version"].as_u64().unwrap_or(0),
        if hosts.is_empty() {
            "*".to_string()
        } else {
            hosts.join(",")
        },
        s["path_prefix"]
            .as_str()
            .filter(|p| *p != "/")
            .map(|p| format!(" prefix={p}"))
            .unwrap_or_default(),
    );
    render_arm(&mut out, "stable", &s["arms"]["stable"]);
    if !s["arms"]["canary"].is_null() {
        render_arm(&mut out, "canary", &s["arms"]["canary"]);
    }
    for (arm, label) in [("stable", "stable"), ("canary", "canary")] {
        if let Some(down) = s["arms"][arm]["down"].as_array().filter(|d| !d.is_empty()) {
            let list: Vec<&str> = down.iter().filter_map(Value::as_str).collect();
            let panic = if s["arms"][arm]["panic"] == true {
                " (all down: panic mode, sending to all)"
            } else {
                ""
            };
            let _ = writeln!(out, "  down    {label}: {}{panic}", list.join(", "));
        }
    }
    for p in s["probes"].as_array().into_iter().flatten() {
        let last = p["recent"]
            .as_array()
            .and_then(|r| r.last())
            .map(|r| {
                format!(
                    "{} {:.1}ms {}",
                    r["status"].as_str().unwrap_or("?"),
                    r["latency_ms"].as_f64().unwrap_or(0.0),
                    r["detail"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_else(|| "no result yet".into());
        let _ = writeln!(
            out,
            "  probe   {:<12} {:<6} {:<6} {:<22} {:<9} {}",
            p["probe"].as_str().unwrap_or("?"),
            p["kind"].as_str().unwrap_or("?"),
            p["arm"].as_str().unwrap_or("?"),
            p["upstream"].as_str().unwrap_or("?"),
            p["health"].as_str().unwrap_or("?"),
            last
        );
    }
    let judge = &s["judge"];
    if let Some(verdict) = judge["verdict"].as_object() {
        let name = verdict
            .get("verdict")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let why = verdict
            .get("reason")
            .or_else(|| verdict.get("note"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let watching = if judge["watching"] == true {
            " (watching)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  judge   {name}{watching}{}{why}",
            if why.is_empty() { "" } else { ": " }
        );
    }
    let last = &judge["last_decision"];
    if last.is_object() {
        let _ = writeln!(
            out,
            "  last    {} {} by {}: {}",
            format_time(last["at_ms"].as_u64().unwrap_or(0)),
            last["kind"].as_str().unwrap_or("?"),
            last["actor"].as_str().unwrap_or("?"),
            last["message"].as_str().unwrap_or(""),
        );
    }
    out
}

/// Renders the service list.
pub fn render_services(v: &Value) -> String {
    v["services"]
        .as_array()
        .map(|a| a.iter().map(render_service).collect::<Vec<_>>().join(""))
        .unwrap_or_default()
}
