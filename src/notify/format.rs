//! What a notification says: one [`Notice`] per event, rendered as a signed JSON webhook
//! body, a Slack message, a Discord embed, or a plain-text email.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::events::{Event, EventKind};

/// How urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something went wrong or was refused.
    Critical,
    /// Worth knowing, not wrong.
    Warning,
    /// A release went well.
    Good,
    /// Everything else.
    Info,
}

impl Severity {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Good => "good",
            Severity::Info => "info",
        }
    }

    fn color(self) -> u32 {
        match self {
            Severity::Critical => 0xD0_3B_3B,
            Severity::Warning => 0xE0_A0_30,
            Severity::Good => 0x2E_A0_4F,
            Severity::Info => 0x5B_7B_A8,
        }
    }
}

/// One event, told to people.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The event's sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: EventKind,
    /// Headline: `web: canary cut back`.
    pub title: String,
    /// How urgent.
    pub severity: Severity,
    /// The service, if one.
    pub service: Option<String>,
    /// The event's own line.
    pub message: String,
    /// Name and value, in reading order: service, versions, rule, numbers, who, when.
    pub fields: Vec<(&'static str, String)>,
    /// Where to look.
    pub link: String,
    /// The event itself (for the webhook body).
    pub event: Arc<Event>,
}

fn headline(kind: EventKind) -> (&'static str, Severity) {
    use EventKind as K;
    match kind {
        K::RolledBack => ("canary cut back", Severity::Critical),
        K::Breach => ("canary breaches its policy", Severity::Critical),
        K::DeploymentFailed => ("deployment failed, rolled back", Severity::Critical),
        K::DeploymentAborted => ("deployment aborted", Severity::Warning),
        K::DeploymentSucceeded => ("deployment succeeded", Severity::Good),
        K::DeploymentStarted => ("deployment started", Severity::Info),
        K::DeploymentStalled => ("deployment stalled: no progress", Severity::Warning),
        K::AnalysisInconclusive => ("analysis inconclusive", Severity::Warning),
        K::RollbackRefused => (
            "rollback refused: the previous version is gone",
            Severity::Critical,
        ),
        K::ProbeFailed => ("probe failing", Severity::Critical),
        K::ProbeRecovered => ("probe passing again", Severity::Good),
        K::ReleaseMissing => ("previous release missing", Severity::Critical),
        K::ReleaseFailed => ("release failed to start", Severity::Critical),
        K::ReloadFailed => ("config reload refused", Severity::Warning),
        K::Promoted => ("canary promoted", Severity::Good),
        K::BreachCleared => ("breach cleared", Severity::Good),
        K::NotifyFailed => ("notifications failing", Severity::Warning),
        K::ShuttingDown => ("gate shutting down", Severity::Warning),
        _ => ("", Severity::Info),
    }
}

fn join(list: &Value) -> Option<String> {
    let items: Vec<&str> = list.as_array()?.iter().filter_map(Value::as_str).collect();
    (!items.is_empty()).then(|| items.join(", "))
}

/// `stable: a, b; canary: v2 (c, d)` from whatever the evidence has.
fn versions(ev: &Value) -> Option<String> {
    let snap = if ev["before"].is_object() {
        &ev["before"]
    } else {
        &ev["after"]
    };
    let stable = join(&snap["stable"]["upstreams"]);
    let label = ["version", "label", "image"]
        .iter()
        .find_map(|k| ev[*k].as_str().map(str::to_string));
    let upstreams = join(&snap["canary"]["upstreams"]).or_else(|| join(&ev["upstreams"]));
    let canary = match (label, upstreams) {
        (Some(l), Some(u)) if l != u => Some(format!("{l} ({u})")),
        (Some(l), _) => Some(l),
        (None, u) => u,
    };
    match (stable, canary) {
        (None, None) => None,
        (s, c) => Some(
            [
                s.map(|s| format!("stable: {s}")),
                c.map(|c| format!("canary: {c}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        ),
    }
}

/// `error rate 12.0 % (45 of 366), p95 88 ms` for one arm of a verdict.
fn arm_numbers(arm: &Value) -> Option<String> {
    let requests = arm["requests"].as_u64()?;
    let mut parts = vec![format!(
        "error rate {:.1} % ({} of {requests})",
        arm["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
        arm["failures"].as_u64().unwrap_or(0)
    )];
    if let Some(p95) = arm["p95_ms"].as_f64() {
        parts.push(format!("p95 {p95:.0} ms"));
    }
    if let Some(n) = arm["consecutive_failures"].as_u64().filter(|n| *n > 0) {
        parts.push(format!("{n} failures in a row"));
    }
    Some(parts.join(", "))
}

/// The latest failed requests by id, newest first and three at most (the evidence lists
/// them oldest first): what to look up in the app's logs.
fn failed_requests(list: &Value) -> Option<String> {
    let list = list.as_array().filter(|l| !l.is_empty())?;
    let shown: Vec<String> = list
        .iter()
        .rev()
        .take(3)
        .map(|r| {
            let status = match r["status"].as_u64() {
                Some(s) => s.to_string(),
                None => "no answer".to_string(),
            };
            format!(
                "{} {} ({status})",
                r["request_id"].as_str().unwrap_or("?"),
                r["request"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let more = list.len().saturating_sub(3);
    Some(if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    })
}

fn percent(v: &Value) -> Option<String> {
    let p = v.as_f64()?;
    Some(if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    })
}

impl Notice {
    /// The notice for `event`; links point into the dashboard at `dashboard`.
    pub fn new(event: &Arc<Event>, dashboard: &str) -> Notice {
        let (what, severity) = headline(event.kind);
        let what = if what.is_empty() {
            event.kind.as_str().replace('_', " ")
        } else {
            what.to_string()
        };
        let title = match &event.service {
            Some(s) => format!("{s}: {what}"),
            None => what,
        };
        let ev = &event.evidence;
        let mut fields: Vec<(&'static str, String)> = Vec::new();
        if let Some(s) = &event.service {
            fields.push(("Service", s.clone()));
        }
        if let Some(v) = versions(ev) {
            fields.push(("Versions", v));
        }
        let verdict = &ev["verdict"];
        if let Some(rule) = verdict["rule"].as_str() {
            fields.push(("Rule", rule.to_string()));
        }
        if let Some(n) = arm_numbers(&verdict["canary"]) {
            fields.push(("Canary", n));
        }
        if let Some(n) = arm_numbers(&verdict["stable"]) {
            fields.push(("Stable", n));
        }
        if let Some(f) = failed_requests(&ev["failed_requests"]) {
            fields.push(("Failed requests", f));
        }
        if let (Some(b), Some(a)) = (
            percent(&ev["before"]["canary_weight"]),
            percent(&ev["after"]["canary_weight"]),
        ) {
            if a != b {
                fields.push(("Weight", format!("{b} -> {a}")));
            }
        }
        if let Some(d) = &event.deployment {
            fields.push(("Deployment", d.clone()));
        }
        fields.push(("By", event.actor.clone()));
        fields.push((
            "At",
            format!("{} UTC", crate::time::format_time(event.at_ms)),
        ));
        let base = dashboard.trim_end_matches('#');
        let link = match (&event.deployment, &event.service) {
            (Some(d), _) => format!("{base}#deployment={d}"),
            (None, Some(s)) => format!("{base}#service={s}"),
            _ => base.to_string(),
        };
        Notice {
            seq: event.seq,
            kind: event.kind,
            title,
            severity,
            service: event.service.clone(),
            message: event.message.clone(),
            fields,
            link,
            event: event.clone(),
        }
    }

    /// The email subject.
    pub fn subject(&self) -> String {
        format!("[sluice] {}", self.title)
    }

    /// The plain-text body (email).
    pub fn text(&self) -> String {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
        let mut out = format!("{}\n\n{}\n\n", self.title, self.message);
        for (k, v) in &self.fields {
            out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
        }
        out.push_str(&format!("\nDashboard: {}\n", self.link));
        out
    }
}

/// The generic webhook's JSON: the notice and the whole event with its evidence.
pub fn webhook_body(n: &Notice) -> Value {
    let fields: serde_json::Map<String, Value> = n
        .fields
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone())))
        .collect();
    json!({
        "kind": n.kind.as_str(),
        "title": n.title,
        "severity": n.severity.as_str(),
        "service": n.service,
        "message": n.message,
        "fields": fields,
        "link": n.link,
        "event": &*n.event,
    })
}

/// Slack's control characters in mrkdwn text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A Slack incoming-webhook message (Block Kit, with `text` as the fallback).
pub fn slack_body(n: &Notice) -> Value {
    let marker = match n.severity {
        Severity::Critical => ":red_circle:",
        Severity::Warning => ":large_orange_circle:",
        Severity::Good => ":large_green_circle:",
        Severity::Info => ":large_blue_circle:",
    };
    let fields: Vec<Value> = n
        .fields
        .iter()
        .take(10)
        .map(|(k, v)| {
            json!({ "type": "mrkdwn", "text": clip(&format!("*{k}*\n{}", slack_escape(v)), 2000) })
        })
        .collect();
    json!({
        "text": clip(&format!("{}: {}", n.title, n.message), 3000),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": clip(&n.title, 150) } },
            { "type": "section", "text": { "type": "mrkdwn", "text": clip(&format!("{marker} {}", slack_escape(&n.message)), 3000) } },
            { "type": "section", "fields": fields },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("<{}|Open in the Sluice dashboard>", n.link) }
            ] },
        ],
    })
}

/// A Discord webhook message: one embed; mentions in the text are not pinged.
pub fn discord_body(n: &Notice) -> Value {
    let fields: Vec<Value> = n
        .fields
        .iter()
        .take(25)
        .map(|(k, v)| json!({ "name": k, "value": clip(v, 1024), "inline": v.len() < 40 }))
        .collect();
    let at = crate::time::format_time(n.event.at_ms).replace(' ', "T") + "Z";
    json!({
        "username": "Sluice",
        "allowed_mentions": { "parse": [] },
        "embeds": [{
            "title": clip(&n.title, 256),
            "description": clip(&n.message, 4096),
            "url": n.link,
            "color": n.severity.color(),
            "timestamp": at,
            "fields": fields,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rolled_back() -> Arc<Event> {
        Arc::new(Event {
            seq: 7,
            at_ms: 1_795_330_974_754,
            kind: EventKind::RolledBack,
            service: Some("web".into()),
            deployment: Some("web-1".into()),
            actor: "judge".into(),
            message: "canary cut back from 50% to 0: canary error rate 12.0 % is above 5 %".into(),
            table: None,
            evidence: json!({
                "version": "v2 <beta>",
                "before": { "canary_weight": 50.0, "stable": { "upstreams": ["10.0.0.1:80"] }, "canary": { "upstreams": ["10.0.0.2:80"] } },
                "after": { "canary_weight": 0.0 },
                "failed_requests": [
                    { "request_id": "r-8", "request": "GET /", "status": null, "at_ms": 1 },
                    { "request_id": "r-9", "request": "POST /checkout", "status": 502, "at_ms": 2 }
                ],
                "verdict": { "rule": "error_rate",
                    "canary": { "requests": 366, "failures": 44, "error_rate": 0.12, "p95_ms": 88.0, "consecutive_failures": 0 },
                    "stable": { "requests": 3000, "failures": 3, "error_rate": 0.001, "p95_ms": 12.0 } },
            }),
        })
    }

    #[test]
    fn a_cut_back_says_what_breached_with_the_numbers() {
        let n = Notice::new(&rolled_back(), "http://gate:9901/");
        assert_eq!(n.title, "web: canary cut back");
        assert_eq!(n.severity, Severity::Critical);
        let f: std::collections::HashMap<_, _> = n.fields.iter().cloned().collect();
        assert_eq!(
            f["Versions"],
            "stable: 10.0.0.1:80; canary: v2 <beta> (10.0.0.2:80)"
        );
        assert_eq!(f["Rule"], "error_rate");
        assert_eq!(f["Canary"], "error rate 12.0 % (44 of 366), p95 88 ms");
        assert_eq!(f["Weight"], "50% -> 0%");
        assert_eq!(
            f["Failed requests"],
            "r-9 POST /checkout (502), r-8 GET / (no answer)"
        );
        assert_eq!(f["At"], "2026-11-22 07:02:54 UTC");
        assert_eq!(n.link, "http://gate:9901/#deployment=web-1");
        let text = n.text();
        assert!(
            text.lines().any(|l| l.starts_with("Canary: ")
                && l.ends_with(" error rate 12.0 % (44 of 366), p95 88 ms")),
            "{text}"
        );
        assert!(text.ends_with("Dashboard: http://gate:9901/#deployment=web-1\n"));
    }

    #[test]
    fn slack_and_discord_bodies_escape_and_bound_their_text() {
        let n = Notice::new(&rolled_back(), "http://gate:9901/");
        let s = slack_body(&n);
        let fields = s["blocks"][2]["fields"].as_array().unwrap();
        assert!(fields
            .iter()
            .any(|f| f["text"].as_str().unwrap().contains("v2 &lt;beta&gt;")));
        assert!(s["text"]
            .as_str()
            .unwrap()
            .starts_with("web: canary cut back"));
        let d = discord_body(&n);
        assert_eq!(d["embeds"][0]["color"], 0xD03B3B);
        assert_eq!(d["embeds"][0]["timestamp"], "2026-11-22T07:02:54Z");
        assert_eq!(d["allowed_mentions"]["parse"], json!([]));
        let w = webhook_body(&n);
        assert_eq!(w["fields"]["rule"], "error_rate");
        assert_eq!(w["event"]["seq"], 7);
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
