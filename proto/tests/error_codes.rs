//! The error-code table: declared once in common.proto, meanings generated from its comments,
//! and documented in docs/protocol.md together with every message kind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_proto::{Kind, pb::ErrorCode};

fn all_codes() -> Vec<ErrorCode> {
    (0..1000)
        .filter_map(|n| ErrorCode::try_from(n).ok())
        .collect()
}

#[test]
fn every_code_has_the_meaning_written_in_the_schema() {
    let codes = all_codes();
    assert!(codes.len() > 40, "the table lost codes: {}", codes.len());
    for code in codes {
        let meaning = code.meaning();
        assert_ne!(meaning, "unknown error code", "{code:?}");
        assert!(meaning.ends_with('.'), "{code:?}: {meaning}");
    }
    assert_eq!(
        ErrorCode::NoRoute.meaning(),
        "No route is known for the destination agent."
    );
    assert_eq!(
        ErrorCode::TtlExpired.to_string(),
        "TTL_EXPIRED (The hop limit reached zero before the destination.)"
    );
}

#[test]
fn retryable_codes_are_the_transient_ones() {
    assert!(ErrorCode::Overloaded.is_retryable());
    assert!(ErrorCode::RateLimited.is_retryable());
    assert!(!ErrorCode::Malformed.is_retryable());
    assert!(!ErrorCode::CertRevoked.is_retryable());
    assert!(!ErrorCode::NoRoute.is_retryable());
}

#[test]
fn protocol_doc_lists_every_kind_and_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md");
    for kind in Kind::ALL {
        let row = format!("| 0x{:02x} | {} |", kind.code(), kind.name());
        assert!(doc.contains(&row), "docs/protocol.md lacks the row `{row}`");
    }
    for code in all_codes().into_iter().skip(1) {
        let row = format!("| {} | {} |", code as i32, code.as_str_name());
        assert!(doc.contains(&row), "docs/protocol.md lacks the row `{row}`");
    }
}
