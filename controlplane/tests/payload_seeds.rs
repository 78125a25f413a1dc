//! The translation pool's payload check (`agw_controlplane::translation::fuzzing`): the fuzz
//! target's seed corpus (`fuzz/seeds/payload/`: plain text, A2A parts, JSON text fields, JSON
//! and protobuf bookings, garbage) replayed on stable, and what the seeds convert to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_controlplane::translation::fuzzing::check_payload;

#[test]
fn every_seed_passes_the_payload_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/payload");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        check_payload(&std::fs::read(&path).unwrap());
        seeds += 1;
    }
    assert!(seeds >= 6, "{seeds} seeds in {}", dir.display());
}

#[test]
fn the_booking_seeds_convert_both_ways() {
    use agw_controlplane::translation::{formats, fuzzing::schema};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/payload");
    let json = std::fs::read(dir.join("json-booking")).unwrap();
    let protobuf = formats::json_to_protobuf(schema().unwrap(), &json[1..]).unwrap();
    assert_eq!(&protobuf[..6], b"\x0a\x04twin");
    let seed = std::fs::read(dir.join("protobuf-booking")).unwrap();
    let back = formats::protobuf_to_json(schema().unwrap(), bytes::Bytes::from(seed[1..].to_vec()))
        .unwrap();
    let back: serde_json::Value = serde_json::from_slice(&back).unwrap();
    assert_eq!(back["room"], "twin");
    assert_eq!(back["kind"], "KIND_TWIN");
    assert_eq!(back["guest"]["name"], "x");
    assert!(formats::json_to_protobuf(schema().unwrap(), br#"{"room": 1}"#).is_err());
}
