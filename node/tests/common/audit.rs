//! `ocpp-node audit` on a store file, and tampering with a copy of one, for the tests of the
//! security event log.

use std::path::Path;
use std::process::{Command, Output};

use redb::{ReadableTable as _, TableDefinition};
use serde_json::Value;

use super::BIN;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_log");

/// `ocpp-node audit <args> --store <store>`.
pub fn audit(args: &[&str], store: &Path) -> Output {
    Command::new(BIN)
        .arg("audit")
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .expect("run ocpp-node audit")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every record, parsed, through `ocpp-node audit show`.
pub fn show(store: &Path) -> Vec<Value> {
    let out = audit(&["show"], store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a record is one JSON line"))
        .collect()
}

/// Copies `store` to `copy` and, in the copy, replaces the first `from` in record `index`'s
/// stored bytes with `to`.
pub fn alter_record(store: &Path, copy: &Path, index: u64, from: &str, to: &str) {
    std::fs::copy(store, copy).expect("copy the store");
    let db = redb::Database::open(copy).expect("open the copy");
    let wtx = db.begin_write().expect("write");
    {
        let mut table = wtx.open_table(LOG).expect("audit table");
        let record = table.get(index).expect("read").expect("record");
        let text = String::from_utf8(record.value().to_vec()).expect("UTF-8 record");
        drop(record);
        let changed = text.replacen(from, to, 1);
        assert_ne!(changed, text, "record {index} has no {from:?}");
        table.insert(index, changed.as_bytes()).expect("write back");
    }
    wtx.commit().expect("commit");
}
