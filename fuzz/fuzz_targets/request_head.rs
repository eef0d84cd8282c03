//! The gate's own request-head code on any bytes, parsed as pingora parses them (httparse):
//! the framing checks, the header fixes and the path's normal form. No panic; a normal path
//! is normal (rooted, no empty, `.` or `..` segment, stable when normalised again) and keeps
//! every byte it did not decode (a path with a broken escape is refused instead).
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Version};
use libfuzzer_sys::fuzz_target;
use sluice::framing;

fn check_normal(path: &str) {
    let Ok(Some(normal)) = framing::normalise_path(path) else {
        return;
    };
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    let inner = normal.strip_suffix('/').unwrap_or(&normal);
    for seg in inner.split('/').skip(1) {
        assert!(
            !seg.is_empty() && seg != "." && seg != "..",
            "{path:?} -> {normal:?}"
        );
    }
    assert_eq!(framing::normalise_path(&normal), Ok(None), "{path:?} -> {normal:?}");
    let high = |s: &str| s.bytes().filter(|b| *b >= 0x80).count();
    assert!(high(&normal) <= high(path), "{path:?} -> {normal:?}");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (status, head) = (u16::from_be_bytes([data[0], data[1]]), &data[2..]);
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        // Not a head pingora would pass on; the path code still gets the bytes.
        if let Ok(text) = std::str::from_utf8(head) {
            check_normal(text);
        }
        return;
    }
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return; // pingora refuses these heads itself
        };
        map.append(name, value);
    }
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let target = req.path.unwrap_or("");
    let absolute = target.starts_with("http://") || target.starts_with("https://");
    let rewrite = framing::check_request(version, target.as_bytes(), absolute, &map);
    if let Ok(true) = rewrite {
        // A Content-Length to rewrite as one value is one value.
        assert!(matches!(framing::content_length(&map), Ok(Some(_))));
    }
    let dropped = framing::underscored(&map);
    assert!(dropped.iter().all(|n| n.as_str().contains('_')));
    let _ = framing::response_fix(status, &map);
    let path = target.split('?').next().unwrap_or("");
    check_normal(path);
    let given = map.get("x-request-id").map(|v| v.as_bytes());
    let id = sluice::request_id::of(given);
    assert!(sluice::request_id::well_formed(id.as_bytes()), "{id:?}");
});
