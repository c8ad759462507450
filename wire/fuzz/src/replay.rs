//! Replays a committed fuzz corpus on stable Rust, without libFuzzer: every file under
//! `wire/fuzz/corpus/<target>/`, then any crash artifact a local fuzz run left in
//! `wire/fuzz/artifacts/<target>/` (the quickest way to debug one). Included by path from the
//! crates' corpus tests (`wire/tests/fuzz_corpus.rs`, `routing/tests/fuzz_corpus.rs`).

use std::fs;
use std::path::{Path, PathBuf};

/// Every file under `<fuzz_dir>/<kind>/<target>/`, sorted for a stable order.
pub fn inputs(fuzz_dir: &Path, kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir.join(kind).join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on the corpus and the artifacts of `target`; the seeds must be there.
pub fn replay(fuzz_dir: &Path, target: &str, check: fn(&[u8])) {
    let corpus = inputs(fuzz_dir, "corpus", target);
    assert!(
        corpus.len() >= 10,
        "corpus/{target} has {} files; the seeds are missing",
        corpus.len()
    );
    for path in corpus.iter().chain(&inputs(fuzz_dir, "artifacts", target)) {
        let data = fs::read(path).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target} fails on {}", path.display());
    }
}
