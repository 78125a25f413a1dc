//! Fuzzes the authority's CSR intake: size check, PKCS#10 parsing, key classification and
//! signature verification must refuse hostile bytes with a typed error, never a panic.
//!
//! `cargo +nightly fuzz run csr fuzz/corpus/csr fuzz/seeds/csr`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agw_aca::csr::verify_csr(data);
});
