//! What happened in one deployment, told back from its stored evidence: a post-incident
//! draft (Markdown, ready to paste into a post-mortem) and the same facts as JSON. Pure:
//! the deployment's row and events in, the report out.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Value};

use crate::time::format_time;

/// Event kinds that make the timeline (per-measurement and per-minute noise is left out;
/// an analysis measurement that did not pass is kept).
const TIMELINE: &[&str] = &[
    "deployment_started",
    "canary_set",
    "weight_set",
    "deployment_step",
    "deployment_paused",
    "deployment_resumed",
    "deployment_stalled",
    "breach",
    "breach_cleared",
    "rolled_back",
    "rollback_refused",
    "probe_failed",
    "probe_recovered",
    "promoted",
    "analysis_measured",
    "analysis_inconclusive",
    "release_ready",
    "release_failed",
    "release_stopped",
    "notify_failed",
    "deployment_succeeded",
    "deployment_failed",
    "deployment_aborted",
];

/// Longest message kept in a timeline row.
const MESSAGE_LIMIT: usize = 240;

fn clip(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    match one_line.char_indices().nth(MESSAGE_LIMIT) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// Text that goes into a Markdown table cell.
fn cell(text: &str) -> String {
    clip(text).replace('|', "\\|")
}

fn ms(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_i64().and_then(|n| u64::try_from(n).ok()))
}

fn seconds(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        crate::time::format_duration(std::time::Duration::from_millis(ms / 1000 * 1000))
    }
}

/// The report of deployment `id`: `row` is its stored row (or the live view's fields),
/// `events` its events in any order.
pub fn report(id: &str, row: &Value, live: Option<&Value>, events: &[Value]) -> Value {
    let mut events: Vec<&Value> = events.iter().collect();
    events.sort_by_key(|e| (ms(&e["at_ms"]).unwrap_or(0), ms(&e["seq"]).unwrap_or(0)));
    let get = |key: &str| {
        let v = &row[key];
        if v.is_null() {
            live.map(|l| &l[key]).unwrap_or(v)
        } else {
            v
        }
    };
    let outcome = live
        .and_then(|l| l["state"].as_str())
        .or_else(|| row["outcome"].as_str())
        .unwrap_or("unknown")
        .to_string();
    let started = ms(get("started_ms"));
    let finished = ms(&row["finished_ms"]);
    let timeline: Vec<Value> = events
        .iter()
        .filter(|e| {
            let kind = e["kind"].as_str().unwrap_or("");
            TIMELINE.contains(&kind)
                && !(kind == "analysis_measured"
                    && e["evidence"]["measurement"]["outcome"] == "passed")
        })
        .map(|e| {
            let at = ms(&e["at_ms"]).unwrap_or(0);
            json!({
                "at_ms": at,
                "after_ms": started.map(|s| at.saturating_sub(s)),
                "kind": e["kind"],
                "actor": e["actor"],
                "message": e["message"],
            })
        })
        .collect();
    // The cut-back: its verdict and the canary's failed requests.
    let cut = events.iter().find(|e| e["kind"] == "rolled_back");
    let verdict = cut.map(|e| e["evidence"]["verdict"].clone());
    let failed: Vec<Value> = cut
        .and_then(|e| e["evidence"]["failed_requests"].as_array().cloned())
        .unwrap_or_default();
    let first_failure = failed.iter().filter_map(|f| ms(&f["at_ms"])).min();
    let first_breach = events
        .iter()
        .find(|e| e["kind"] == "breach" || e["kind"] == "rolled_back")
        .and_then(|e| ms(&e["at_ms"]));
    let cut_at = cut.and_then(|e| ms(&e["at_ms"]));
    let recovered = events
        .iter()
        .find(|e| e["kind"] == "deployment_failed" || e["kind"] == "deployment_aborted")
        .and_then(|e| ms(&e["at_ms"]))
        .or(cut_at);
    let figures = json!({
        // Of the failed requests the cut-back kept (the latest few), the first.
        "first_failing_answer_ms": first_failure,
        "detection_ms": first_failure.zip(first_breach).map(|(f, b)| b.saturating_sub(f)),
        "breach_to_cut_back_ms": first_breach.zip(cut_at).map(|(b, c)| c.saturating_sub(b)),
        "time_to_recovery_ms": first_failure.zip(recovered).map(|(f, r)| r.saturating_sub(f)),
        "duration_ms": started.zip(finished).map(|(s, f)| f.saturating_sub(s)),
    });
    let mut actors: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        if let Some(a) = e["actor"].as_str() {
            *actors.entry(a.to_string()).or_default() += 1;
        }
    }
    let notify_failures: Vec<Value> = events
        .iter()
        .filter(|e| e["kind"] == "notify_failed")
        .map(|e| e["message"].clone())
        .collect();
    let mut out = json!({
        "id": id,
        "service": get("service"),
        "strategy": get("strategy"),
        "label": get("label"),
        "started_by": get("started_by"),
        "started_ms": started,
        "finished_ms": finished,
        "outcome": outcome,
        "timeline": timeline,
        "breach": verdict,
        "failed_requests": failed,
        "figures": figures,
        "actors": actors,
        "notification_failures": notify_failures,
    });
    out["markdown"] = Value::String(markdown(&out));
    out
}

fn markdown(r: &Value) -> String {
    let mut m = String::new();
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| "-".into());
    let when = |v: &Value| {
        ms(v)
            .map(|t| format!("{} UTC", format_time(t)))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        m,
        "# Deployment {} of {}: {}\n",
        text(&r["id"]),
        text(&r["service"]),
        text(&r["outcome"])
    );
    let _ = writeln!(m, "- Strategy: {}", text(&r["strategy"]));
    let _ = writeln!(m, "- Version: {}", text(&r["label"]));
    let _ = writeln!(
        m,
        "- Started: {} by {}",
        when(&r["started_ms"]),
        text(&r["started_by"])
    );
    let _ = writeln!(m, "- Ended: {}", when(&r["finished_ms"]));
    let f = &r["figures"];
    let figure = |key: &str| ms(&f[key]).map(seconds);
    if let Some(d) = figure("duration_ms") {
        let _ = writeln!(m, "- Duration: {d}");
    }
    let _ = writeln!(m, "\n## Timeline\n\n| time (UTC) | since start | what | who | detail |\n|---|---|---|---|---|");
    for e in r["timeline"].as_array().into_iter().flatten() {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            ms(&e["at_ms"]).map(format_time).unwrap_or_default(),
            ms(&e["after_ms"]).map(seconds).unwrap_or_default(),
            text(&e["kind"]),
            cell(&text(&e["actor"])),
            cell(&text(&e["message"]))
        );
    }
    if let Some(b) = r["breach"].as_object() {
        let _ = writeln!(m, "\n## What breached\n");
        let _ = writeln!(
            m,
            "- Rule: `{}`",
            b.get("rule").map(text).unwrap_or_default()
        );
        let _ = writeln!(
            m,
            "- Reason: {}",
            b.get("reason").map(text).unwrap_or_default()
        );
        let num = |k: &str| {
            b.get(k)
                .and_then(Value::as_f64)
                .map(|v| format!("{v}"))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            m,
            "- Threshold {}, observed {}, p-value {}, confidence {}",
            num("threshold"),
            num("observed"),
            num("p_value"),
            num("confidence")
        );
        for arm in ["canary", "stable"] {
            let a = &b.get(arm).cloned().unwrap_or_default();
            if a.is_object() {
                let _ = writeln!(
                    m,
                    "- {arm}: {} requests, {} failed ({:.2} %), p95 {} ms",
                    a["requests"],
                    a["failures"],
                    a["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                    a["p95_ms"]
                        .as_f64()
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
    }
    if let Some(list) = r["failed_requests"].as_array().filter(|l| !l.is_empty()) {
        let _ = writeln!(m, "\n## Failed requests (the canary's latest, by X-Request-Id)\n\n| time (UTC) | request id | request | status |\n|---|---|---|---|");
        for f in list {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                ms(&f["at_ms"]).map(format_time).unwrap_or_default(),
                cell(&text(&f["request_id"])),
                cell(&text(&f["request"])),
                f["status"]
                    .as_u64()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no answer".into())
            );
        }
    }
    let _ = writeln!(m, "\n## Figures\n");
    for (key, name) in [
        (
            "detection_ms",
            "Detection (first failing answer kept to the first breach)",
        ),
        ("breach_to_cut_back_ms", "Breach to cut-back (table swap)"),
        (
            "time_to_recovery_ms",
            "Time to recovery (first failing answer to the previous version serving alone)",
        ),
    ] {
        let _ = writeln!(m, "- {name}: {}", figure(key).unwrap_or_else(|| "-".into()));
    }
    let _ = writeln!(m, "\n## Who acted\n");
    for (actor, n) in r["actors"].as_object().into_iter().flatten() {
        let _ = writeln!(m, "- {actor}: {n} event(s)");
    }
    if let Some(list) = r["notification_failures"]
        .as_array()
        .filter(|l| !l.is_empty())
    {
        let _ = writeln!(m, "\n## Notifications that failed\n");
        for n in list {
            let _ = writeln!(m, "- {}", clip(&text(n)));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_back_reads_as_a_timeline_with_its_rule_requests_and_figures() {
        let row = json!({ "service": "web", "strategy": "canary", "label": "v2", "started_by": "api@127.0.0.1",
            "started_ms": 1_000_000, "finished_ms": 1_009_000, "outcome": "rolled_back" });
        let events = vec![
            json!({ "seq": 5, "at_ms": 1_009_000, "kind": "deployment_failed", "actor": "judge", "message": "canary deployment d1 rolled_back: 5 in a row" }),
            json!({ "seq": 1, "at_ms": 1_000_000, "kind": "deployment_started", "actor": "api@127.0.0.1", "message": "canary deployment of 10.0.0.2:80 started (v2)" }),
            json!({ "seq": 2, "at_ms": 1_001_000, "kind": "analysis_measured", "actor": "analysis", "message": "passed",
                    "evidence": { "measurement": { "outcome": "passed" } } }),
            json!({ "seq": 4, "at_ms": 1_008_500, "kind": "rolled_back", "actor": "judge", "message": "canary cut back | 10% -> 0",
                    "evidence": {
                        "verdict": { "rule": "consecutive_failures", "reason": "5 canary requests failed in a row", "threshold": 5.0,
                                     "observed": 5.0, "confidence": 0.999,
                                     "canary": { "requests": 40, "failures": 5, "error_rate": 0.125, "p95_ms": 4.0 } },
                        "failed_requests": [
                            { "request_id": "r-1", "request": "GET /", "status": 500, "at_ms": 1_008_460 },
                            { "request_id": "r-2", "request": "POST /checkout", "status": null, "at_ms": 1_008_480 } ] } }),
        ];
        let r = report("d1", &row, None, &events);
        assert_eq!(r["outcome"], "rolled_back");
        let kinds: Vec<&str> = r["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["deployment_started", "rolled_back", "deployment_failed"]
        );
        assert_eq!(r["figures"]["detection_ms"], 40);
        assert_eq!(r["figures"]["time_to_recovery_ms"], 540);
        assert_eq!(r["figures"]["duration_ms"], 9000);
        assert_eq!(r["actors"]["judge"], 2);
        let md = r["markdown"].as_str().unwrap();
        for needle in [
            "# Deployment d1 of web: rolled_back",
            "| deployment_started | api@127.0.0.1 |",
            "canary cut back \\| 10% -> 0",
            "- Rule: `consecutive_failures`",
            "| r-2 | POST /checkout | no answer |",
            "- Detection (first failing answer kept to the first breach): 0.04 s",
            "- judge: 2 event(s)",
        ] {
            assert!(md.contains(needle), "{needle:?} not in\n{md}");
        }
    }

    #[test]
    fn a_deployment_without_a_breach_still_reports() {
        let r = report(
            "d2",
            &json!({ "service": "web", "outcome": "succeeded" }),
            None,
            &[],
        );
        assert!(r["breach"].is_null());
        assert!(r["markdown"]
            .as_str()
            .unwrap()
            .contains("- Detection (first failing answer kept to the first breach): -"));
    }
}
