//! Replays the materials fuzz target's seeds (`fuzz/seeds/materials/`, Subject Directory
//! Attributes extension values) on stable: each decodes or is refused as its name says, and
//! every one passes the fuzz check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_tls::materials::{MAX_ITEMS, MaterialsError, check_decode, decode};

#[test]
fn seed_extensions_decode_or_are_refused_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/materials");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        check_decode(&bytes);
        let result = decode(&bytes);
        let malformed = matches!(result, Err(MaterialsError::Malformed(_)));
        match name.as_str() {
            "valid-full" | "valid-beside-another-attribute" => {
                let m = result.unwrap().unwrap();
                assert_eq!(m.organization, "Acme Travel");
                assert_eq!(m.permission_scope, ["booking"]);
                assert_eq!(m.skills, ["hotel booking"]);
            }
            "valid-empty" => assert_eq!(result.unwrap(), Some(Default::default())),
            "valid-at-limits" => {
                assert_eq!(result.unwrap().unwrap().permission_scope.len(), MAX_ITEMS)
            }
            "none-only-another-attribute" => assert_eq!(result, Ok(None)),
            "field-too-long" | "too-many-scopes" | "two-values" | "too-many-attributes" => {
                assert_eq!(result, Err(MaterialsError::TooBig), "{name}")
            }
            "truncated" | "wrong-tag" | "trailing-byte" | "bad-utf8" | "huge-length"
            | "indefinite-length" | "no-attribute" => assert!(malformed, "{name}: {result:?}"),
            // Inputs saved from fuzzing runs: any typed outcome, no panic.
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 16, "{seen} seeds in {}", dir.display());
}
