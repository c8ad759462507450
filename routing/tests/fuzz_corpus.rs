//! Replays the committed corpus of the `translate` fuzz target (`wire/fuzz/corpus/translate/`)
//! through the very check the target runs, so every input libFuzzer found interesting stays a
//! regression test on stable Rust.

use std::path::Path;

#[path = "../../wire/fuzz/src/translate.rs"]
mod translate;

#[path = "../../wire/fuzz/src/replay.rs"]
mod replay;

#[test]
fn translate_corpus() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/fuzz");
    replay::replay(&fuzz_dir, "translate", translate::check_translate);
}
