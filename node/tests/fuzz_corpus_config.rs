//! Replays the committed corpus of the `config_parse` fuzz target (`node/fuzz/corpus/config_parse/`)
//! through the very check the target runs, so every input libFuzzer found interesting stays a
//! regression test on stable Rust. A crash artifact a local fuzz run left in
//! `node/fuzz/artifacts/config_parse/` is replayed too.

use std::fs;
use std::path::{Path, PathBuf};

use ocpp_node::config::Config;

#[path = "../fuzz/src/lib.rs"]
mod node_fuzz;

#[path = "../../wire/fuzz/src/replay.rs"]
mod replay;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn seed(name: &str) -> String {
    let path = fuzz_dir().join("corpus/config_parse").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn config_parse_corpus() {
    replay::replay(&fuzz_dir(), "config_parse", node_fuzz::check_config_parse);
}

/// The seeds must keep reaching the success paths, or the fuzzer starts from nothing but errors.
#[test]
fn valid_seeds_parse() {
    for name in [
        "seed-default-toml",
        "seed-default-stripped",
        "seed-empty",
        "seed-full-valid",
        "seed-edge-valid",
        "seed-hub-valid",
        "seed-profile-1-valid",
        "seed-sim-e2e",
        "seed-bench-edge",
        "seed-bench-hub",
        "seed-inline-and-dotted",
    ] {
        let text = seed(name);
        let text = node_fuzz::without_file_paths(&text).expect("a seed toml can write back");
        if let Err(errors) = Config::parse(&text) {
            panic!(
                "{name}: {errors:?} (after changing node/default.toml or a key, re-run node/fuzz/make_seeds.py)"
            );
        }
    }
}

/// Every path the parser would open is redirected, however the key is spelled; a text that names
/// no file is parsed as it is.
#[test]
fn file_paths_are_redirected() {
    let text = seed("seed-default-toml");
    assert!(matches!(
        node_fuzz::without_file_paths(&text),
        Some(std::borrow::Cow::Borrowed(_))
    ));
    for name in [
        "seed-readme-profile-3",
        "seed-readme-hub",
        "seed-quoted-file-key",
        "seed-overlay-mistakes",
    ] {
        let text = seed(name);
        let redirected = node_fuzz::without_file_paths(&text).expect("writes back");
        let table = toml::Value::Table(redirected.parse().expect("toml wrote toml"));
        let mut paths = Vec::new();
        collect_file_values(&table, false, &mut paths);
        assert!(!paths.is_empty(), "{name} names files");
        assert!(
            paths.iter().all(|p| *p == node_fuzz::NO_SUCH_FILE),
            "{name}: {paths:?}"
        );
    }
    // A fuzzed config naming files that never end (or wait for input) must not reach them.
    let devices = "[[listener]]\nsecurity_profile = 3\ntls_cert_file = \"/dev/zero\"\n\
                   tls_key_file = \"/dev/stdin\"\ntls_client_ca_file = \"/dev/urandom\"\n\
                   [node]\nsecrets_file = \"/dev/zero\"\nidentity_key_file = \"/dev/zero\"\n";
    let redirected = node_fuzz::without_file_paths(devices).expect("writes back");
    assert!(!redirected.contains("/dev/"), "{redirected}");
    node_fuzz::check_config_parse(devices.as_bytes());
}

fn collect_file_values<'a>(value: &'a toml::Value, under_file: bool, out: &mut Vec<&'a str>) {
    match value {
        toml::Value::String(s) if under_file => out.push(s),
        toml::Value::Table(t) => {
            for (k, v) in t {
                collect_file_values(v, under_file || k.ends_with("_file"), out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                collect_file_values(v, under_file, out);
            }
        }
        _ => {}
    }
}

/// The `signatures` target's corpus: signature objects, policies and OCPP JWS from the network.
#[test]
fn signatures_corpus() {
    replay::replay(&fuzz_dir(), "signatures", node_fuzz::signatures::check);
}
