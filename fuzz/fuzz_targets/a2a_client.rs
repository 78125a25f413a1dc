//! Fuzzes the gateway's A2A client (httparse's response heads, Content-Length and chunked
//! bodies, JSON-RPC answers, the translation into ACKs, replies and NACKs) with what an A2A
//! server could answer: frames or a typed close, never a panic, and the same outcome whether
//! the bytes come at once or in small reads.
//!
//! `cargo +nightly fuzz run a2a_client fuzz/corpus/a2a_client fuzz/seeds/a2a_client`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agw_dataplane::a2a_client::check_server_bytes(data);
});
