//! The PROXY protocol reader on any bytes: an answer or an error, never a panic, and never a
//! byte read past the header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::proxy_protocol;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut rest = data;
    let got = runtime.block_on(proxy_protocol::read(&mut rest));
    let used = data.len() - rest.len();
    if got.is_ok() {
        assert!(
            used <= proxy_protocol::V1_MAX || used <= 16 + proxy_protocol::V2_MAX_BODY,
            "{used}"
        );
        if data.starts_with(b"PROXY ") {
            assert!(used <= proxy_protocol::V1_MAX, "{used}");
            assert!(data[..used].ends_with(b"\r\n"));
        }
    }
    // The pure parsers directly, on the same bytes.
    let _ = proxy_protocol::parse_v1(data);
    if data.len() >= 16 {
        let mut start = [0u8; 16];
        start.copy_from_slice(&data[..16]);
        let _ = proxy_protocol::parse_v2(&start, &data[16..]);
    }
});
