//! Request and response framing checks at the edge (RFC 9112), on what pingora parsed: the
//! cases where a lenient reading could differ from the upstream's, which are refused or made
//! unambiguous before anything is forwarded. Pure functions over headers, unit-tested.

use http::header::{HeaderMap, HeaderName, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderValue, Version};

/// A value that is not one clear Content-Length (values that differ, or not a number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// Why a request is refused, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, or 501 for a transfer coding the gate does not know.
    pub status: u16,
    /// The plain-text answer.
    pub body: &'static str,
}

const fn bad(body: &'static str) -> Refusal {
    Refusal { status: 400, body }
}

/// One Content-Length out of every value given (`5`, `5, 5`, or the header twice), when they
/// agree; `Err` when they differ or one is not a number. `Ok(None)`: there is none.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Ambiguous> {
    let mut found = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        let text = v.to_str().map_err(|_| Ambiguous)?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Ambiguous);
            }
            let n: u64 = part.parse().map_err(|_| Ambiguous)?;
            match found {
                Some(m) if m != n => return Err(Ambiguous),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Checks a request's framing (`target`: the request target as received); `Ok(true)` when
/// its Content-Length must be rewritten as one value (it came as a list or twice).
pub fn check_request(
    version: Version,
    target: &[u8],
    has_authority: bool,
    headers: &HeaderMap,
) -> Result<bool, Refusal> {
    // Origin form, `*`, or absolute form: anything else is a space where none belongs
    // (`GET  /p`, which the parser reads into the target) or worse.
    let absolute = target.starts_with(b"http://") || target.starts_with(b"https://");
    if !(target.starts_with(b"/") || target == b"*" || absolute) {
        return Err(bad("sluice: malformed request target\n"));
    }
    let hosts = headers.get_all(HOST).iter().count();
    if hosts > 1 {
        return Err(bad("sluice: more than one Host header\n"));
    }
    if version == Version::HTTP_11 && hosts == 0 && !has_authority {
        return Err(bad("sluice: HTTP/1.1 requires a Host header\n"));
    }
    let te: Vec<&HeaderValue> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if version == Version::HTTP_10 {
            return Err(bad("sluice: Transfer-Encoding in an HTTP/1.0 request\n"));
        }
        let [only] = te[..] else {
            return Err(bad("sluice: more than one Transfer-Encoding header\n"));
        };
        let value = only.to_str().unwrap_or("").trim();
        if !value.eq_ignore_ascii_case("chunked") {
            return Err(if value.to_ascii_lowercase().contains("chunked") {
                bad("sluice: chunked must be the only transfer coding\n")
            } else {
                Refusal {
                    status: 501,
                    body: "sluice: unsupported transfer coding\n",
                }
            });
        }
    }
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    match content_length(headers) {
        Err(Ambiguous) => Err(bad("sluice: invalid or conflicting Content-Length\n")),
        Ok(Some(_)) => Ok(lengths > 1
            || headers
                .get(CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes().contains(&b','))),
        Ok(None) => Ok(false),
    }
}

/// Header names with an underscore: dropped, as nginx does by default, since some stacks
/// read `Transfer_Encoding` or `X_Forwarded_For` as their dash-spelled twins.
pub fn underscored(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    names.dedup();
    names
}

/// What makes an upstream response's framing unambiguous for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseFix {
    /// An `Upgrade` header on anything but a 101: remove it.
    pub drop_upgrade: bool,
    /// A Content-Length list or repetition of one value: write it once, as this.
    pub content_length: Option<u64>,
}

/// The fix an upstream response needs; `Err` when its Content-Length values differ (the
/// gate answers 502).
pub fn response_fix(status: u16, headers: &HeaderMap) -> Result<ResponseFix, Ambiguous> {
    let many = headers.get_all(CONTENT_LENGTH).iter().count() > 1
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().contains(&b','));
    Ok(ResponseFix {
        drop_upgrade: status != 101 && headers.contains_key(UPGRADE),
        content_length: if many { content_length(headers)? } else { None },
    })
}

/// A path with a `%` that does not start an escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEscape;

/// The path routed and forwarded: percent-encoded unreserved characters decoded, duplicate
/// slashes collapsed, `.` and `..` segments removed (RFC 3986 6.2.2 and 5.2.4; `..` never
/// climbs above the root). `None` when the path is already normal (no allocation). Other
/// percent-encodings stay as they are: `%2F` is not a slash, so `/a%2Fb` is one segment.
/// A `%` not followed by two hex digits is refused ([`BadEscape`]: the gate answers 400):
/// `/%%41` would read `%A` here and `A` to anything decoding once more, two paths from one.
pub fn normalise_path(path: &str) -> Result<Option<String>, BadEscape> {
    let b = path.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    for (i, _) in b.iter().enumerate().filter(|(_, c)| **c == b'%') {
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {}
            _ => return Err(BadEscape),
        }
    }
    let needs = b.contains(&b'%')
        || b.windows(2).any(|w| w == b"//" || w == b"/.")
        || !path.starts_with('/');
    if !needs {
        return Ok(None);
    }
    // Decode what RFC 3986 calls unreserved; keep every other escape, and every other byte
    // (UTF-8 included), as sent.
    let mut decoded: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded.split(|c| *c == b'/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            b"" | b"." => trailing = n == last,
            b".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normal: Vec<u8> = Vec::with_capacity(decoded.len());
    for seg in &out {
        normal.push(b'/');
        normal.extend_from_slice(seg);
    }
    if trailing || normal.is_empty() {
        normal.push(b'/');
    }
    // Only ASCII was decoded and only whole segments moved: still UTF-8.
    let normal = String::from_utf8(normal).map_err(|_| BadEscape)?;
    Ok((normal != path).then_some(normal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_beyond_ascii_are_kept_as_sent() {
        // Found by fuzz/request_head: UTF-8 was re-read byte by byte as Latin-1.
        assert_eq!(normalise_path("/a//é/%41"), Ok(Some("/a/é/A".to_string())));
        assert_eq!(normalise_path("/a/é"), Ok(None));
        let odd = "E\0T /a/*./b//c/%0e/\0ȴ1?";
        let once = normalise_path(odd).unwrap().unwrap();
        assert_eq!(normalise_path(&once), Ok(None), "{once:?}");
        assert!(once.ends_with("ȴ1?"), "{once:?}");
        // Found by fuzz/request_head too: an escape made of a broken one and a decoded one.
        for bad in ["/%%333", "/a%", "/a%4", "/%g1", "/%+1"] {
            assert_eq!(normalise_path(bad), Err(BadEscape), "{bad}");
        }
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn content_lengths_must_agree() {
        assert_eq!(
            content_length(&map(&[("content-length", "5")])),
            Ok(Some(5))
        );
        assert_eq!(
            content_length(&map(&[("content-length", "5, 5")])),
            Ok(Some(5))
        );
        assert_eq!(
            content_length(&map(&[("content-length", "5"), ("content-length", "5")])),
            Ok(Some(5))
        );
        for bad in ["5, 6", "-1", "", "0x5", "5,"] {
            assert_eq!(
                content_length(&map(&[("content-length", bad)])),
                Err(Ambiguous),
                "{bad}"
            );
        }
        assert_eq!(content_length(&map(&[])), Ok(None));
    }

    #[test]
    fn requests_are_refused_as_rfc_9112_says() {
        let ok = |h: &[(&'static str, &'static str)]| {
            check_request(Version::HTTP_11, b"/p", false, &map(h))
        };
        assert_eq!(ok(&[("host", "a")]), Ok(false));
        assert_eq!(ok(&[("host", "a"), ("content-length", "5, 5")]), Ok(true));
        assert_eq!(ok(&[]).unwrap_err().status, 400);
        assert_eq!(ok(&[("host", "a"), ("host", "b")]).unwrap_err().status, 400);
        for te in ["identity, chunked", "chunked, chunked"] {
            assert_eq!(
                ok(&[("host", "a"), ("transfer-encoding", te)])
                    .unwrap_err()
                    .status,
                400
            );
        }
        assert_eq!(
            ok(&[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])
            .unwrap_err()
            .status,
            400
        );
        assert_eq!(
            ok(&[("host", "a"), ("transfer-encoding", "gzip")])
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(
            ok(&[("host", "a"), ("transfer-encoding", "Chunked")]),
            Ok(false)
        );
        let target = check_request(Version::HTTP_11, b" /p", false, &map(&[("host", "a")]));
        assert_eq!(target.unwrap_err().status, 400);
        assert!(check_request(Version::HTTP_2, b"/p", true, &map(&[])).is_ok());
    }

    #[test]
    fn paths_are_normalised_before_routing() {
        for (path, want) in [
            ("/x/../internal/x", Some("/internal/x")),
            ("/%69nternal/x", Some("/internal/x")),
            ("//internal/x", Some("/internal/x")),
            ("/./internal/x", Some("/internal/x")),
            ("/internal/../x", Some("/x")),
            ("/../../etc/passwd", Some("/etc/passwd")),
            ("/a/b/", None),
            ("/a/./", Some("/a/")),
            ("/a/..", Some("/")),
            ("/a%2Fb", None),
            ("/%2e%2e/x", Some("/x")),
            ("/caf%C3%A9", None),
            ("/", None),
        ] {
            assert_eq!(normalise_path(path).unwrap().as_deref(), want, "{path}");
        }
    }

    #[test]
    fn responses_are_made_unambiguous() {
        let h = map(&[("content-length", "5, 5"), ("upgrade", "h2c")]);
        assert_eq!(
            response_fix(200, &h),
            Ok(ResponseFix {
                drop_upgrade: true,
                content_length: Some(5)
            })
        );
        let h = map(&[("content-length", "5"), ("content-length", "6")]);
        assert!(response_fix(200, &h).is_err());
        let h = map(&[("upgrade", "websocket"), ("content-length", "0")]);
        assert_eq!(response_fix(101, &h), Ok(ResponseFix::default()));
        assert_eq!(
            underscored(&map(&[("transfer_encoding", "chunked"), ("x-a", "1")])),
            ["transfer_encoding"]
        );
    }
}
