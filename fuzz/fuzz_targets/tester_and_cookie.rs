//! What the gate reads from a client to pick an arm: the tester header's value, the sticky
//! cookie (among any other cookies), the address ranges of the trust lists.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::types::ArmRole;

fn options() -> &'static sluice::routing::RoutingOptions {
    static OPTIONS: std::sync::OnceLock<sluice::routing::RoutingOptions> =
        std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        let text = "[[services]]\nname = \"web\"\nstable = [\"127.0.0.1:9\"]\n";
        let config = sluice::config::Config::parse(text, "fuzz.toml").expect("valid");
        sluice::routing::RoutingOptions::from_config(&config.routing, config.server.idle_timeout)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = ArmRole::parse(data);
    let o = options();
    let mut headers = HeaderMap::new();
    for part in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(http::header::COOKIE, v);
        }
    }
    if let Some(seed) = o.sticky_seed(&headers) {
        // A seed read back is one the gate could have set.
        let set = o.set_cookie(seed);
        let mut again = HeaderMap::new();
        let pair = set.split(';').next().unwrap_or("");
        again.insert(http::header::COOKIE, HeaderValue::from_str(pair).unwrap());
        assert_eq!(o.sticky_seed(&again), Some(seed));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cidr) = sluice::trust::Cidr::parse(text) {
            let _ = cidr.contains(std::net::Ipv4Addr::LOCALHOST.into());
        }
    }
});
