//! The check of the `config_parse` fuzz target, kept free of libFuzzer so that
//! `node/tests/fuzz_corpus_config.rs` replays the committed corpus through the very same code as
//! an ordinary test on stable Rust.
//!
//! `Config::parse` is not pure: after the syntax, type and range checks it loads every file the
//! text names (`tls_cert_file`, `tls_key_file`, `tls_client_ca_file` of listeners,
//! `tls_ca_file`, `tls_cert_file`, `tls_key_file` of uplinks and the hub, `node.secrets_file`,
//! `node.identity_key_file`) to report one it cannot load. A fuzzed path may name `/dev/stdin` or
//! `/dev/zero` (a hang, or memory without bound) or any file on the machine, so every string
//! under a key ending in `_file` is first pointed at [`NO_SUCH_FILE`]. Inputs that name no file
//! are parsed exactly as they are, their TOML syntax included; the others are parsed as toml's
//! own rendering of the redirected table, which still reaches every type and semantic check,
//! the "cannot load" errors too. Nothing is ever created: the checks only read.

pub mod signatures;

use std::borrow::Cow;

use ocpp_node::config::{Config, valid_charger_id};

/// Larger inputs are ignored. A config is a few KiB, and the collect-all-errors loop deserializes
/// the whole table again for every error, so huge inputs would only slow the fuzzer down.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// What every `*_file` path of a fuzzed config is replaced with: a path under a directory that
/// does not exist, so each load fails at once, the same way every time, without reading anything.
pub const NO_SUCH_FILE: &str = "/nonexistent/ocpp-node-fuzz/file.pem";

/// Parses the input as a config: no panic; a valid config parses again to an equal one and keeps
/// the invariants the daemon relies on; an invalid one is reported by at least one non-empty error.
pub fn check_config_parse(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    // Config::load reads the file with read_to_string, so the parser only ever sees UTF-8; lossy
    // decoding keeps a mutated byte useful instead of throwing the whole input away.
    let text = String::from_utf8_lossy(data);
    let Some(text) = without_file_paths(&text) else {
        return;
    };
    match Config::parse(&text) {
        Ok(config) => {
            match Config::parse(&text) {
                Ok(again) => assert_eq!(again, config, "re-parsing {text:?} gives another config"),
                Err(errors) => panic!("{text:?} parses once, then fails: {errors:?}"),
            }
            assert!(
                !config.listener.is_empty(),
                "{text:?} parses without a listener"
            );
            for id in config.chargers.keys() {
                assert!(
                    valid_charger_id(id, &config.node.id).is_ok(),
                    "{text:?} accepts the charger id {id:?}"
                );
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "{text:?} fails without an error");
            for e in &errors {
                assert!(
                    !e.to_string().is_empty(),
                    "{text:?} gives an empty error: {e:?}"
                );
            }
        }
    }
}

/// `text` itself when it names no file (or is not TOML at all, which stops `Config::parse` at
/// this very toml call, before any file check); otherwise the table with every `*_file` string
/// replaced by [`NO_SUCH_FILE`], written back by toml. `None` (the input is skipped) when toml
/// cannot write the table, or when what it writes would name another file again.
pub fn without_file_paths(text: &str) -> Option<Cow<'_, str>> {
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return Some(Cow::Borrowed(text));
    };
    if !redirect_table(&mut table) {
        return Some(Cow::Borrowed(text));
    }
    let written = toml::to_string(&table).ok()?;
    let mut back = written.parse::<toml::Table>().ok()?;
    if redirect_table(&mut back) {
        return None;
    }
    Some(Cow::Owned(written))
}

/// Points every string under a key ending in `_file`, at any depth, at [`NO_SUCH_FILE`]. Serde
/// matches field names exactly and only the `*_file` fields are paths the parser opens (the
/// other path, `node.data_dir`, is only checked for emptiness). True if anything changed.
fn redirect_table(table: &mut toml::Table) -> bool {
    let mut changed = false;
    for (key, value) in table.iter_mut() {
        changed |= if key.ends_with("_file") {
            redirect_strings(value)
        } else {
            redirect_within(value)
        };
    }
    changed
}

fn redirect_within(value: &mut toml::Value) -> bool {
    match value {
        toml::Value::Table(t) => redirect_table(t),
        toml::Value::Array(a) => a.iter_mut().fold(false, |c, v| redirect_within(v) | c),
        _ => false,
    }
}

fn redirect_strings(value: &mut toml::Value) -> bool {
    match value {
        toml::Value::String(s) if s != NO_SUCH_FILE => {
            NO_SUCH_FILE.clone_into(s);
            true
        }
        toml::Value::Table(t) => t
            .iter_mut()
            .fold(false, |c, (_, v)| redirect_strings(v) | c),
        toml::Value::Array(a) => a.iter_mut().fold(false, |c, v| redirect_strings(v) | c),
        _ => false,
    }
}
