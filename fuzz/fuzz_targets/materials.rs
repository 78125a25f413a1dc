//! Fuzzes the decoder of the materials extension in agents' certificates (a gateway reads it
//! at every access): the size check and the DER parse must refuse hostile bytes with a typed
//! error, never a panic, and what decodes must survive re-encoding.
//!
//! `cargo +nightly fuzz run materials fuzz/corpus/materials fuzz/seeds/materials`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agw_tls::materials::check_decode(data);
});
