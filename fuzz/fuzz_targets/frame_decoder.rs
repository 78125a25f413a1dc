//! Fuzzes the frame decoder: framing under every read size, full decode, the relay's routing
//! view and re-encoding (see `agw_proto::fuzzing`).
//!
//! `cargo +nightly fuzz run frame_decoder fuzz/corpus/frame_decoder fuzz/seeds/frame_decoder`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agw_proto::fuzzing::check_frame_stream(data);
});
