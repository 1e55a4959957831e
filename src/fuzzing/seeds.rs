//! The fuzz targets' seeds (tests/fuzz/corpus/) run through their harnesses.

/// Every NDJSON and config seed passes its harness (the fuzzer starts from them).
#[test]
fn harnesses_accept_their_seeds() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    for (target, run) in [
        ("ndjson", super::ndjson as fn(&[u8])),
        ("config", super::config as fn(&[u8])),
    ] {
        let dir = corpus.join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
        for entry in entries.flatten() {
            if entry.path().is_file() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                run(&bytes);
            }
        }
    }
}
