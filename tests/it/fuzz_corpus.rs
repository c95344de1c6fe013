//! Replays the fuzz targets' corpus (`fuzz/corpus/`) as ordinary tests, so CI catches a
//! regression on any input a fuzzer once found interesting.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(replayed > 0, "{} holds no inputs", dir.display());
}

#[test]
fn the_log_recovery_corpus_replays_cleanly() {
    replay("log_recovery", lantern_tests::fuzzing::log_recovery);
}

#[test]
fn the_wire_corpus_replays_cleanly() {
    replay("wire_writes", lantern_tests::fuzzing::wire_writes);
}

#[test]
fn the_http_corpus_replays_cleanly() {
    replay("http_request", lantern_tests::fuzzing::http_request);
}
