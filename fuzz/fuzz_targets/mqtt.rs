//! Fuzzes the MQTT adapter (rumqttc's 3.1.1 and 5 decoders, then the translation into native
//! frames) with what a client could send: a typed close, never a panic, and the same outcome
//! whether the bytes come at once or in small reads.
//!
//! `cargo +nightly fuzz run mqtt fuzz/corpus/mqtt fuzz/seeds/mqtt`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agw_dataplane::mqtt::check_client_bytes(data);
});
