//! Fuzzes the A2A adapter (httparse's request heads, then JSON-RPC, then the translation into
//! native frames and back) with what a client could send: an answer or a typed close, never a
//! panic, and the same outcome whether the bytes come at once or in small reads.
//!
//! `cargo +nightly fuzz run a2a fuzz/corpus/a2a fuzz/seeds/a2a`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agw_dataplane::a2a::check_client_bytes(data);
});
