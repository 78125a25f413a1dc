//! Fuzzes what the translation pool does with an agent's payload: text found in plain text,
//! A2A parts and JSON text fields (put back unchanged, the same payload), and JSON <-> protobuf
//! conversion by a schema (what converts converts back): an error or `None`, never a panic.
//!
//! `cargo +nightly fuzz run payload fuzz/corpus/payload fuzz/seeds/payload`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agw_controlplane::translation::fuzzing::check_payload(data);
});
