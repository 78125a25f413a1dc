//! Helpers shared by the proto crate's tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub)]

/// Parses an annotated byte vector: hex digits (an even number per token), and 'quoted ASCII' for string contents.
/// Whitespace separates tokens; `#` starts a comment that runs to the end of the line.
pub fn bytes(spec: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in spec.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut rest = line.trim();
        while !rest.is_empty() {
            if let Some(quoted) = rest.strip_prefix('\'') {
                let end = quoted.find('\'').expect("unterminated quote");
                out.extend_from_slice(&quoted.as_bytes()[..end]);
                rest = quoted[end + 1..].trim_start();
            } else {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                let token = &rest[..end];
                assert_eq!(token.len() % 2, 0, "hex tokens are whole bytes: {token:?}");
                for pair in token.as_bytes().chunks(2) {
                    let pair = std::str::from_utf8(pair).expect("ASCII");
                    out.push(u8::from_str_radix(pair, 16).expect("hex byte"));
                }
                rest = rest[end..].trim_start();
            }
        }
    }
    out
}
