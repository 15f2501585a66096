//! Replays every committed fuzz corpus file (seeds and regressions) through
//! the same code the fuzz targets run, so plain `cargo test` exercises them.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        run(&data);
        replayed += 1;
    }
    assert!(
        replayed >= 12,
        "expected the seed corpus in {}, found {replayed} files",
        dir.display()
    );
}

#[test]
fn response_corpus_replays_cleanly() {
    replay("response", rotary_proto::fuzzing::response);
}

#[test]
fn chunked_corpus_replays_cleanly() {
    replay("chunked", rotary_proto::fuzzing::chunked);
}
