//! Every admin API command body on any bytes, read as the API reads it, and a deployment's
//! body turned into its plan: accepted, or refused with a client error (400 or 415), never a
//! panic or a server error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for answer in sluice::admin::check_bodies(data) {
        if let Err(status) = answer {
            assert!(matches!(status, 400 | 413 | 415 | 422), "status {status}");
        }
    }
});
