//! Plain-text rendering of API answers: services, arms, deployments, releases, events,
//! freezes.

use crate::time::format_time;
use serde_json::Value;
use std::fmt::Write as _;

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

pub fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}ms"))
        .unwrap_or_else(|| "-".into())
}

pub fn render_arm(out: &mut String, role: &str, arm: &Value) {
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
    for t in s["tls"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  tls     {}", render_host_certificate(t));
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

/// One host's certificate: `shop.test  acme  Pebble CA  until 2027-01-15 10:00:00`, with the
/// ACME orders' trouble when there is some.
pub fn render_host_certificate(t: &Value) -> String {
    let source = t["source"].as_str().unwrap_or("?");
    let mut line = format!("{:<24} {source:<7}", t["host"].as_str().unwrap_or("?"));
    if let Some(by) = t["covered_by"]
        .as_str()
        .filter(|b| Some(*b) != t["host"].as_str())
    {
        let _ = write!(line, " ({by})");
    }
    match t["not_after_ms"].as_u64() {
        Some(ms) => {
            let _ = write!(
                line,
                " {}  until {}",
                t["issuer"].as_str().unwrap_or("?"),
                format_time(ms)
            );
        }
        None => line.push_str(" no certificate: TLS handshakes for it are refused"),
    }
    let acme = &t["acme"];
    if acme["failures"].as_u64().is_some_and(|n| n > 0) {
        let _ = write!(
            line,
            "  ({} failed orders, next {}: {})",
            acme["failures"],
            format_time(acme["next_order_ms"].as_u64().unwrap_or(0)),
            acme["last_error"].as_str().unwrap_or("?")
        );
    }
    line
}

/// Renders the service list.
pub fn render_services(v: &Value) -> String {
    v["services"]
        .as_array()
        .map(|a| a.iter().map(render_service).collect::<Vec<_>>().join(""))
        .unwrap_or_default()
}
pub fn render_freezes(v: &Value) -> String {
    let line = |what: &str, f: &Value| {
        format!(
            "{what:<16} frozen since {} by {}: {}\n",
            crate::time::format_time(f["at_ms"].as_u64().unwrap_or(0)),
            f["by"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("")
        )
    };
    let mut out = String::new();
    if v["all"].is_object() {
        out.push_str(&line("all services", &v["all"]));
    }
    if let Some(map) = v["services"].as_object() {
        for (name, f) in map {
            out.push_str(&line(name, f));
        }
    }
    if out.is_empty() {
        out.push_str("no freeze in force\n");
    }
    out
}

pub fn summarize(answer: &Value) -> String {
    if let Some(md) = answer.get("markdown").and_then(Value::as_str) {
        return md.to_string();
    }
    if let Some(list) = answer.get("certificates").and_then(Value::as_array) {
        return render_certificates(list, &answer["acme"]);
    }
    if let Some(list) = answer.get("releases").and_then(Value::as_array) {
        return crate::cli::render::render_releases(list, answer["history"].as_array());
    }
    if answer.get("all").is_some() && answer.get("services").is_some() {
        return render_freezes(answer);
    }
    if answer.get("services").is_some() {
        return render_services(answer);
    }
    if let Some(items) = answer.get("items").and_then(Value::as_array) {
        let mut out = String::new();
        for item in items {
            if item.get("kind").is_some() {
                out.push_str(&render_event(item));
            } else {
                out.push_str(&crate::cli::render::render_deployment(item));
            }
            out.push('\n');
        }
        if let Some(next) = answer["next"].as_str() {
            out.push_str(&format!("(more: --cursor {next})\n"));
        }
        return out;
    }
    if answer.get("deployment").is_some() && answer.get("trend").is_some() {
        return crate::cli::render::render_deployment_detail(answer);
    }
    if answer.get("arms").is_some() {
        return render_service(answer);
    }
    let mut out = String::new();
    if let Some(msg) = answer["event"]["message"].as_str() {
        match answer["table_version"].as_u64() {
            Some(v) => out.push_str(&format!("{msg} (table v{v})\n")),
            None => out.push_str(&format!("{msg}\n")),
        }
    }
    if let Some(d) = answer.get("deployment").filter(|d| d.is_object()) {
        out.push_str(&format!(
            "{}  {}\n",
            d["id"].as_str().unwrap_or("?"),
            crate::cli::render::render_progress(d)
        ));
    }
    if let Some(report) = answer.get("report").filter(|r| !r.is_null()) {
        out.push_str(&format!(
            "{}\n",
            serde_json::to_string_pretty(report).unwrap_or_default()
        ));
    }
    if answer["service"].is_object() {
        out.push_str(&render_service(&answer["service"]));
    }
    out
}

/// The certificates served (`GET /api/v1/certificates`): one line per name with its source,
/// issuer and expiry, then each ACME name's orders, failures and next order.
pub fn render_certificates(list: &[Value], acme: &Value) -> String {
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no certificates (no TLS listener)\n");
    }
    for c in list {
        let expires = c["not_after_ms"]
            .as_u64()
            .map(format_time)
            .unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "{:<32} {:<5} expires {}  issuer {}\n",
            c["name"].as_str().unwrap_or("?"),
            c["source"].as_str().unwrap_or("?"),
            expires,
            c["issuer"].as_str().unwrap_or("?"),
        ));
    }
    if let Some(names) = acme.as_object() {
        out.push_str("acme:\n");
        for (name, s) in names {
            let next = s["next_order_ms"]
                .as_u64()
                .map(format_time)
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "  {name:<30} orders {} failures {} next {next}{}\n",
                s["orders"].as_u64().unwrap_or(0),
                s["failures"].as_u64().unwrap_or(0),
                s["last_error"]
                    .as_str()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_render_one_line_per_name_and_the_acme_board() {
        let answer = serde_json::json!({
            "certificates": [{ "name": "shop.test", "source": "acme", "issuer": "Pebble Intermediate CA", "serial": "ab", "not_after_ms": 1_800_000_000_000u64 }],
            "acme": { "shop.test": { "orders": 1, "failures": 0, "last_error": null, "next_order_ms": 1_790_000_000_000u64 } },
        });
        let text = summarize(&answer);
        assert!(
            text.contains("shop.test") && text.contains("acme") && text.contains("Pebble"),
            "{text}"
        );
        assert!(text.contains("orders 1 failures 0"), "{text}");
        assert!(text.contains("2027-01-15"), "{text}");
    }
}
