//! Replays the committed fuzz corpora (`wire/fuzz/corpus/<target>/`) through the checks the fuzz
//! targets run, so that every input libFuzzer ever found interesting stays a regression test on
//! stable Rust, without libFuzzer. Crash artifacts left in `wire/fuzz/artifacts/<target>/` by a
//! local fuzz run are replayed too, which is the quickest way to debug one.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod wire_fuzz;

#[path = "../fuzz/src/replay.rs"]
mod replay;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn replay(target: &str, check: fn(&[u8])) {
    replay::replay(&fuzz_dir(), target, check);
}

#[test]
fn decode_plain_corpus() {
    replay("decode_plain", wire_fuzz::check_plain);
}

#[test]
fn decode_overlay_corpus() {
    replay("decode_overlay", wire_fuzz::check_overlay);
}

#[test]
fn decode_binary_corpus() {
    replay("decode_binary", wire_fuzz::check_binary);
}

/// The seeds must keep reaching the success paths, or the fuzzer starts from nothing but errors.
#[test]
fn valid_seeds_decode() {
    let seed = |target: &str, name: &str| {
        fs::read(fuzz_dir().join("corpus").join(target).join(name)).expect("seed exists")
    };
    let limits = wire::Limits::default();
    for name in [
        "seed-call-boot",
        "seed-result",
        "seed-send",
        "seed-whitespace",
    ] {
        let data = seed("decode_plain", name);
        let text = std::str::from_utf8(&data).expect("UTF-8 seed");
        assert!(wire::text::decode_plain(text, &limits).is_ok(), "{name}");
    }
    for name in ["seed-call-path", "seed-broadcast", "seed-max-hops"] {
        let data = seed("decode_overlay", name);
        let text = std::str::from_utf8(&data).expect("UTF-8 seed");
        assert!(wire::text::decode_overlay(text, &limits).is_ok(), "{name}");
    }
    for name in [
        "seed-call-sendfile",
        "seed-send",
        "seed-unicode",
        "seed-max-hops",
    ] {
        let data = seed("decode_binary", name);
        assert!(wire::binary::decode(&data, &limits).is_ok(), "{name}");
    }
}
