//! The config parser and validators, file text in, errors with key paths out.

use super::*;

use crate::time::{format_duration, parse_duration};
use crate::types::{HostPattern, Weight};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::probes::{Combine, ProbeKind, ProbePolicy};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml")
}

const MINIMAL: &str = r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
"#;

#[test]
fn minimal_file_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.server.threads, DEFAULT_THREADS);
    assert_eq!(c.services[0].path_prefix, "/");
    assert!(c.services[0].canary.is_empty());
    assert_eq!(
        c.routing.override_header.as_deref(),
        Some(DEFAULT_OVERRIDE_HEADER)
    );
    assert!(c.admin.token.is_none());
}

#[test]
fn weight_parses_fractions_and_refuses_out_of_range() {
    assert_eq!(Weight::from_percent(0.1).unwrap().units(), 100);
    assert_eq!(Weight::from_percent(12.345).unwrap().units(), 12_345);
    assert!(Weight::from_percent(100.01).is_err());
    assert!(Weight::from_percent(-1.0).is_err());
    assert!(Weight::from_percent(f64::NAN).is_err());
}

#[test]
fn durations_need_units() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("10 parsecs").is_err());
    assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
}

#[test]
fn unknown_key_names_its_path() {
    let err = parse(
        r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
colour = "blue"
"#,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.toml: services[0]"), "{text}");
    assert!(text.contains("colour"), "{text}");
    assert!(text.contains("line 5"), "{text}");
}

#[test]
fn wrong_type_names_its_path() {
    let err =
        parse("[server]\nthreads = \"two\"\n[[services]]\nname=\"a\"\nstable=[\"127.0.0.1:1\"]\n")
            .unwrap_err();
    assert!(
        err.to_string().starts_with("test.toml: server.threads: "),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let err = parse(
        r#"
[server]
threads = 0
[[services]]
name = "Web Site"
stable = []
canary_weight = 150.0
[[services]]
name = "api"
stable = ["nonsense"]
canary_weight = 5
"#,
    )
    .unwrap_err();
    let paths = err.paths();
    for p in [
        "server.threads",
        "services[0].name",
        "services[0].stable",
        "services[0].canary_weight",
        "services[1].stable[0]",
        "services[1].canary_weight",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing in {paths:?}");
    }
}

#[test]
fn duplicate_names_and_routes_are_refused() {
    let err = parse(
        r#"
[[services]]
name = "a"
stable = ["127.0.0.1:1"]
[[services]]
name = "a"
stable = ["127.0.0.1:2"]
"#,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("services[1].name"), "{text}");
    assert!(text.contains("second catch-all"), "{text}");
}

#[test]
fn public_admin_needs_a_token() {
    let err = parse(&format!(
        "[server]\nadmin_listen = \"0.0.0.0:9901\"\n{MINIMAL}"
    ))
    .unwrap_err();
    assert_eq!(err.paths(), vec!["admin.token".to_string()]);
    let ok = parse(&format!(
        "[server]\nadmin_listen = \"0.0.0.0:9901\"\n[admin]\ntoken = \"0123456789\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(ok.admin.token.as_deref(), Some("0123456789"));
}

#[test]
fn store_paths_are_relative_to_the_config() {
    let c = Config::parse_in(MINIMAL, "t.toml", Path::new("/etc/sluice")).unwrap();
    assert_eq!(
        c.store.url,
        StoreUrl::Sqlite("/etc/sluice/sluice.db".into())
    );
    assert_eq!(c.store.spool, PathBuf::from("/etc/sluice/sluice.db.spool"));
    let c = Config::parse_in(
        &format!("[store]\nurl = \"postgres://gate:s3cret@db.internal/sluice\"\n{MINIMAL}"),
        "t.toml",
        Path::new("/srv"),
    )
    .unwrap();
    assert_eq!(
        c.store.url.to_string(),
        "postgres://gate:***@db.internal/sluice"
    );
    assert_eq!(c.store.spool, PathBuf::from("/srv/sluice.spool"));
    let err = Config::parse(
        &format!("[store]\nurl = \"mysql://x\"\n{MINIMAL}"),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(err.paths(), vec!["store.url".to_string()]);
}

#[test]
fn probes_are_validated_with_their_key_paths() {
    let err = parse(
        r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
probe_combine = "most"
[[services.probes]]
name = "a"
kind = "http"
interval = "0s"
expect_status = ["2xx", "600"]
send = "PING"
[[services.probes]]
name = "b"
kind = "script"
command = ["/definitely/not/here"]
[[services.probes]]
name = "c"
kind = "carrier-pigeon"
[[services.probes]]
name = "a"
kind = "tcp"
timeout = "20s"
"#,
    )
    .unwrap_err();
    let paths = err.paths();
    for p in [
        "services[0].probe_combine",
        "services[0].probes[0].interval",
        "services[0].probes[0].expect_status[1]",
        "services[0].probes[0].send",
        "services[0].probes[1].command[0]",
        "services[0].probes[2].kind",
        "services[0].probes[3].timeout",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing in {paths:?}");
    }
}

#[test]
fn probes_get_their_defaults() {
    let c = parse(
        r#"
[[services]]
name = "web"
stable = ["127.0.0.1:3000"]
probe_combine = "any"
[[services.probes]]
name = "health"
kind = "http"
path = "/health"
expect_status = [200, "3xx"]
body_contains = "ok"
[[services.probes]]
name = "redis"
kind = "tcp"
send = "PING\\r\\n"
expect = "+PONG"
[[services.probes]]
name = "check"
kind = "script"
command = ["true"]
"#,
    )
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.probe_combine, Combine::Any);
    assert_eq!(s.probes.len(), 3);
    assert_eq!(s.probes[0].policy, ProbePolicy::default());
    let ProbeKind::Http(h) = &s.probes[0].kind else {
        panic!()
    };
    assert!(
        h.expect_status.contains(200)
            && h.expect_status.contains(302)
            && !h.expect_status.contains(204)
    );
    let ProbeKind::Tcp(t) = &s.probes[1].kind else {
        panic!()
    };
    assert_eq!(t.send.as_deref(), Some(&b"PING\r\n"[..]));
    let ProbeKind::Script(sc) = &s.probes[2].kind else {
        panic!()
    };
    assert!(
        sc.command[0].ends_with("/true"),
        "resolved on PATH: {:?}",
        sc.command
    );
}

#[test]
fn hosts_are_normalised() {
    let c = parse(
        r#"
[[services]]
name = "a"
hosts = ["Web.Example.com", "*.example.org"]
stable = ["127.0.0.1:1"]
"#,
    )
    .unwrap();
    assert_eq!(
        c.services[0].hosts,
        vec![
            HostPattern::Exact("web.example.com".into()),
            HostPattern::Wildcard(".example.org".into())
        ]
    );
    assert!(
        parse("[[services]]\nname=\"a\"\nhosts=[\"a.com:80\"]\nstable=[\"127.0.0.1:1\"]").is_err()
    );
}

#[test]
fn check_reads_names_without_resolving_them_and_load_resolves() {
    // `.invalid` never resolves (RFC 6761): the check must not depend on the machine's DNS.
    let text = r#"
[[services]]
name = "web"
stable = ["app.invalid:8080", "127.0.0.1:3000"]
"#;
    let source = |lookup| Source {
        text,
        file: "test.toml",
        base: Path::new("."),
        lookup,
    };
    let checked = Config::try_from(source(Lookup::SyntaxOnly)).unwrap();
    let stable = &checked.services[0].stable;
    assert_eq!(stable[0].spec, "app.invalid:8080");
    assert_eq!(stable[0].addr.port(), 8080);
    assert_eq!(stable[1].addr, "127.0.0.1:3000".parse().unwrap());
    let err = Config::try_from(source(Lookup::Resolve)).unwrap_err();
    assert!(err.to_string().contains("services[0].stable[0]"), "{err}");
    // Syntax is still checked without lookups, and a name listed twice is still refused.
    let twice = r#"
[[services]]
name = "web"
stable = ["app.invalid:8080", "app.invalid:8080", "no-port"]
"#;
    let err = Config::try_from(Source {
        text: twice,
        ..source(Lookup::SyntaxOnly)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("stable[1]") && err.contains("twice"), "{err}");
    assert!(
        err.contains("stable[2]") && err.contains("no port"),
        "{err}"
    );
}

const TWO_LISTENERS: &str = r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[listeners]]
name = "https"
address = "127.0.0.1:0"
tls = true
"#;

#[test]
fn acme_names_come_from_the_services_that_ask() {
    // Per service: only the one that says so.
    let c = parse(&format!(
        r#"{TWO_LISTENERS}
[[services]]
name = "shop"
hosts = ["shop.example.com", "*.shop.example.com"]
stable = ["127.0.0.1:3000"]
tls.acme = true
redirect_https = true
[[services]]
name = "api"
hosts = ["api.example.com"]
stable = ["127.0.0.1:3001"]
"#
    ))
    .unwrap_err();
    // The wildcard has no file: refused under the key that asked.
    assert_eq!(c.paths(), ["services[0].tls.acme"]);
    let c = parse(&format!(
        r#"{TWO_LISTENERS}
[tls]
acme = true
[[services]]
name = "shop"
hosts = ["shop.example.com"]
stable = ["127.0.0.1:3000"]
redirect_https = true
[[services]]
name = "api"
hosts = ["api.example.com"]
stable = ["127.0.0.1:3001"]
tls.acme = false
"#
    ))
    .unwrap();
    assert_eq!(c.tls.acme.unwrap().names, ["shop.example.com"]);
    assert!(c.services[0].acme && c.services[0].redirect_https);
    assert!(!c.services[1].acme && !c.services[1].redirect_https);
}

#[test]
fn analyses_are_read_with_defaults_and_their_errors_name_the_key() {
    let ok = format!(
        "{MINIMAL}[[services.analysis]]\nname = \"checkouts\"\nkind = \"prometheus\"\naddress = \"http://127.0.0.1:9090/\"\nquery = 'sum(x{{version=\"{{canary_version}}\",arm=\"{{arm}}\"}})'\nfailure_condition = \"canary > stable * 1.2\"\n"
    );
    let c = parse(&ok).unwrap();
    let a = &c.services[0].analysis[0];
    assert_eq!(a.address, "http://127.0.0.1:9090");
    assert_eq!(a.interval, crate::analysis::DEFAULT_INTERVAL);
    assert_eq!(a.failure_limit, 0);
    assert_eq!(a.max_inconclusive, 3);
    assert!(a.failure_condition.needs_stable());
    for (change, key, says) in [
        (
            "kind = \"prometheus\"",
            "kind",
            "'datadog' is not prometheus",
        ),
        (
            "address = \"http://127.0.0.1:9090/\"",
            "address",
            "is not an http(s) address",
        ),
        (
            "failure_condition = \"canary > stable * 1.2\"",
            "failure_condition",
            "expected a comparison",
        ),
        ("name = \"checkouts\"", "name", "must be 1 to 64"),
    ] {
        let replacement = match key {
            "kind" => "kind = \"datadog\"",
            "address" => "address = \"127.0.0.1:9090\"",
            "failure_condition" => "failure_condition = \"result\"",
            _ => "name = \"\"",
        };
        let err = parse(&ok.replace(change, replacement))
            .unwrap_err()
            .to_string();
        let want = format!("test.toml: services[0].analysis[0].{key}: ");
        assert!(err.contains(&want) && err.contains(says), "{err}");
    }
    let twice = format!("{ok}{}", &ok[MINIMAL.len()..]);
    assert!(parse(&twice)
        .unwrap_err()
        .to_string()
        .contains("already the name"));
    let typo = ok.replace("{canary_version}", "{canary}");
    assert!(parse(&typo)
        .unwrap_err()
        .to_string()
        .contains("'{canary}' is not a placeholder"));
}
