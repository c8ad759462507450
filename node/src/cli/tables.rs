//! `ocpp-node chargers | routes | events | outbox`: one admin resource each, as a table.
//!
//! Columns are fixed-width and values that are absent print as `-`, so the output lines up in a
//! terminal and stays greppable; scripts take `--json` instead of parsing it.

use serde_json::Value;

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(" > "),
        other => other.to_string(),
    }
}

fn rows<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Prints a header and one line per row; `columns` are (title, key, width).
fn table(rows: &[Value], columns: &[(&str, &str, usize)]) {
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for ((_, _, width), c) in columns.iter().zip(cells) {
            out.push_str(&format!("{c:<width$}  "));
        }
        println!("{}", out.trim_end());
    };
    line(columns.iter().map(|(t, _, _)| (*t).to_owned()).collect());
    for r in rows {
        line(columns.iter().map(|(_, k, _)| cell(&r[*k])).collect());
    }
}

pub fn chargers(status: &Value) {
    let list = rows(status, "chargers");
    table(
        list,
        &[
            ("CHARGER", "id", 24),
            ("VERSION", "ocppVersion", 10),
            ("PROFILE", "securityProfile", 7),
            ("FROM", "remoteAddr", 22),
            ("CONNECTED SINCE", "connectedSince", 25),
            ("LAST MESSAGE", "lastMessageAt", 25),
            ("PATH", "path", 0),
        ],
    );
    println!("{} connected", list.len());
}

pub fn routes(status: &Value) {
    let list = rows(status, "routes");
    table(
        list,
        &[
            ("DESTINATION", "destination", 24),
            ("LINK", "link", 6),
            ("PEER", "peer", 24),
            ("SOURCE", "source", 9),
            ("VERSION", "ocppVersion", 10),
            ("EXPIRES IN S", "expiresInS", 0),
        ],
    );
    let csms = rows(status, "csmsConnections");
    if !csms.is_empty() {
        println!();
        table(
            csms,
            &[
                ("CSMS SOCKET OF", "charger", 24),
                ("VERSION", "ocppVersion", 10),
                ("STATE", "state", 10),
                ("PATH", "path", 0),
            ],
        );
    }
}

pub fn events(events: &Value) {
    table(
        rows(events, "events"),
        &[
            ("#", "index", 6),
            ("TIME", "time", 25),
            ("KIND", "kind", 28),
            ("DETAIL", "detail", 0),
        ],
    );
}

pub fn outbox(outbox: &Value) {
    let o = &outbox["outbox"];
    if o.is_null() {
        println!("no outbox: this node's role queues nothing for a CSMS");
        return;
    }
    println!(
        "queued {} for {} chargers, {} in flight, oldest {} s{}",
        cell(&o["queued"]),
        cell(&o["chargers"]),
        cell(&o["inFlight"]),
        cell(&o["oldestAgeS"]),
        if o["queuedBeforeStart"].as_bool() == Some(true) {
            " (and some from before the last start)"
        } else {
            ""
        }
    );
    println!("dead letters: {}", cell(&outbox["deadLetterCount"]));
    let dead = rows(outbox, "deadLetters");
    if dead.is_empty() {
        return;
    }
    let flat: Vec<Value> = dead
        .iter()
        .map(|d| {
            serde_json::json!({
                "charger": d["entry"]["charger"],
                "action": d["entry"]["action"],
                "id": d["entry"]["upstreamId"],
                "error": d["error"],
            })
        })
        .collect();
    table(
        &flat,
        &[
            ("CHARGER", "charger", 24),
            ("ACTION", "action", 20),
            ("MESSAGE ID", "id", 38),
            ("CSMS ERROR", "error", 0),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_show_absent_values_and_paths_readably() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&json!("x")), "x");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(
            cell(&json!(["CP-1", "edge-1", "hub"])),
            "CP-1 > edge-1 > hub"
        );
    }
}
