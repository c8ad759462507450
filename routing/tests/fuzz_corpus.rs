//! Replays the committed corpus of the `translate` fuzz target (`wire/fuzz/corpus/translate/`)
//! through the very check the target runs, so every input libFuzzer found interesting stays a
//! regression test on stable Rust. Crash artifacts of a local fuzz run are replayed too.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../../wire/fuzz/src/translate.rs"]
mod translate;

fn files(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wire/fuzz")
        .join(kind)
        .join("translate");
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

#[test]
fn translate_corpus() {
    let corpus = files("corpus");
    assert!(corpus.len() >= 10, "the translate seeds are missing");
    for path in corpus.iter().chain(&files("artifacts")) {
        let data = fs::read(path).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| translate::check_translate(&data));
        assert!(outcome.is_ok(), "translate fails on {}", path.display());
    }
}
