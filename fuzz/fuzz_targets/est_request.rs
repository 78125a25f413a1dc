//! Fuzzes EST's request decoding (content type, Basic credentials, base64 body) and the CSR
//! checks behind it: hostile bytes get a typed refusal, never a panic.
//!
//! `cargo +nightly fuzz run est_request fuzz/corpus/est_request fuzz/seeds/est_request`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agw_aca::est::check_request(data);
});
