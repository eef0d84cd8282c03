//! The config loader on any text: an error naming the file and a key or line, never a panic.
//! Names are checked for syntax only (no lookup leaves the machine).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::config::{Config, Lookup, Source};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::env::temp_dir();
    let source = Source {
        text,
        file: "fuzz.toml",
        base: &base,
        lookup: Lookup::SyntaxOnly,
    };
    if let Err(e) = Config::try_from(source) {
        let message = e.to_string();
        assert!(message.starts_with("fuzz.toml"), "{message}");
    }
});
