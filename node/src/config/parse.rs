//! Turning TOML into a [`Config`] while collecting every type error: each failing key is
//! dropped so that its default applies, and deserializing is tried again, so one run reports
//! all of them, with the operator's own array indices.

use std::collections::{BTreeSet, HashMap};

use serde_path_to_error::Segment;

use super::{Config, ConfigError, MAX_PASSES};

#[derive(Debug, Default)]
pub(super) struct Removed(HashMap<String, BTreeSet<usize>>);

impl Removed {
    /// Maps a current index in the array at `array_path` to the operator's original index.
    pub(super) fn original(&self, array_path: &str, current: usize) -> usize {
        let Some(gone) = self.0.get(array_path) else {
            return current;
        };
        let mut seen = 0;
        let mut original = 0;
        loop {
            if !gone.contains(&original) {
                if seen == current {
                    return original;
                }
                seen += 1;
            }
            original += 1;
        }
    }
}

/// Deserializes `table` into `Config`, dropping each key that fails and retrying, so that every
/// type error is collected. Returns `None` when a failing key could not be removed (or too many
/// passes), in which case the errors are all there is to report.
pub(super) fn deserialize_all(
    mut table: toml::Table,
) -> (Option<Config>, Vec<ConfigError>, Removed) {
    let mut errors = Vec::new();
    let mut removed = Removed::default();
    for _ in 0..MAX_PASSES {
        let err = match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(
            table.clone(),
        )) {
            Ok(config) => return (Some(config), errors, removed),
            Err(err) => err,
        };
        let segments: Vec<Segment> = err.path().iter().cloned().collect();
        let mut message = err.inner().message().trim_end().to_owned();
        // The most common slip: `[listener]` instead of `[[listener]]`.
        if matches!(segments.as_slice(), [Segment::Map { key }] if key == "listener")
            && message.contains("expected a sequence")
        {
            message.push_str(" (write each listener as a [[listener]] table)");
        }
        let (path, array) = display_path(&segments, &removed);
        errors.push(ConfigError::new(path, message));
        if !remove_at(&mut table, &segments) {
            return (None, errors, removed);
        }
        if let (Some((array_path, original)), Some(Segment::Seq { .. })) = (array, segments.last())
        {
            removed.0.entry(array_path).or_default().insert(original);
        }
    }
    errors.push(ConfigError::new(
        "",
        format!("more than {MAX_PASSES} errors; stopped checking"),
    ));
    (None, errors, removed)
}

/// Renders a serde path as a TOML key path with the operator's array indices. Also returns, when
/// the last segment is an array index, the array's path and the original index (for `Removed`).
fn display_path(segments: &[Segment], removed: &Removed) -> (String, Option<(String, usize)>) {
    let mut path = String::new();
    let mut last_array = None;
    for seg in segments {
        match seg {
            Segment::Seq { index } => {
                let original = removed.original(&path, *index);
                last_array = Some((path.clone(), original));
                path.push_str(&format!("[{original}]"));
            }
            Segment::Map { key } => {
                path = key_path(&path, key);
                last_array = None;
            }
            Segment::Enum { variant } => {
                path = key_path(&path, variant);
                last_array = None;
            }
            Segment::Unknown => {
                path = key_path(&path, "?");
                last_array = None;
            }
        }
    }
    (path, last_array)
}

/// Removes the value at `segments` (current indices) from the table. False if there is nothing
/// to remove, which ends the collection loop rather than spinning on the same error.
fn remove_at(table: &mut toml::Table, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur: &mut toml::Value = match parents.first() {
        None => {
            return match last {
                Segment::Map { key } => table.remove(key).is_some(),
                _ => false,
            };
        }
        Some(Segment::Map { key }) => match table.get_mut(key) {
            Some(v) => v,
            None => return false,
        },
        Some(_) => return false,
    };
    for seg in &parents[1..] {
        cur = match (seg, cur) {
            (Segment::Map { key }, toml::Value::Table(t)) => match t.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, toml::Value::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key).is_some(),
        (Segment::Seq { index }, toml::Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}

/// `prefix.key`, quoting keys that are not TOML bare keys so the path can be pasted back.
pub(super) fn key_path(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}
