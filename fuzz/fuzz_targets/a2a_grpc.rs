//! Fuzzes the A2A gRPC binding's adapter (HTTP/2 by h2, gRPC framing, A2A's protobuf read
//! into its JSON) with what a client sends: frames to the relay or an error, never a panic,
//! and the same frames whether the bytes come whole or in pieces.
//!
//! `cargo +nightly fuzz run a2a_grpc fuzz/corpus/a2a_grpc fuzz/seeds/a2a_grpc`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agw_dataplane::a2a_grpc::check_client_bytes(data);
});
