//! Replays the frame-decoder fuzz target's seed corpus, and any input saved under
//! `fuzz/seeds/frame_decoder/` after a crash, on stable as an ordinary test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_proto::fuzzing::check_frame_stream;

#[test]
fn seed_corpus_passes_the_fuzz_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame_decoder");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus directory") {
        let path = entry.expect("dir entry").path();
        let data = std::fs::read(&path).expect("seed file");
        check_frame_stream(&data);
        count += 1;
    }
    assert!(count >= 40, "only {count} seeds in {}", dir.display());
}
