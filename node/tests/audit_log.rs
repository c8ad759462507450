//! The security event log end to end: failed logins on a real node end up as records of a hash
//! chain in its store file, `ocpp-node audit verify` accepts the log, and names the record whose
//! stored bytes were altered on a copy.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::audit::{alter_record, audit, show, stdout};
use common::{BIN, NodeProc, connect, hash_password};
use serde_json::Value;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// SIGTERM, so the node writes its last records and signed head, then waits for the exit.
fn stop(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kinds(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["kind"].as_str().expect("kind"))
        .collect()
}

#[tokio::test]
async fn failed_logins_are_chained_and_an_altered_record_is_named() {
    let hash = hash_password("right-password");
    let mut node = NodeProc::start(
        "security_profile = 1",
        &format!("[chargers.\"CP-1\"]\npassword_hash = \"{hash}\"\n"),
    );
    let wrong = ["wrong-pass-1", "wrong-pass-2", "wrong-pass-3"];
    for password in wrong {
        let refused = connect(
            &node.charger_url,
            "CP-1",
            Some("ocpp1.6"),
            Some(("CP-1", password)),
        )
        .await
        .err();
        assert_eq!(refused, Some(401), "{password}");
    }

    // Records are appended off the request path: wait until the admin API's head covers them
    // (node_started, identity_key_created, 3 × auth_failed).
    let deadline = Instant::now() + Duration::from_secs(20);
    let head = loop {
        let head = node.get_json("/api/audit");
        if head["records"].as_u64() >= Some(5) {
            break head;
        }
        assert!(Instant::now() < deadline, "audit head stuck at {head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The head is signed with the node's key over the documented message.
    let public_key = head["publicKey"].as_str().expect("publicKey").to_owned();
    assert_eq!(public_key.len(), 64, "{head}");
    let message = format!(
        "ocpp-overlay-audit-head:lc-test:{}:{}",
        head["index"],
        head["head"].as_str().expect("head")
    );
    assert_eq!(head["signedMessage"], message.as_str());
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, unhex(&public_key))
        .verify(
            message.as_bytes(),
            &unhex(head["signature"].as_str().expect("signature")),
        )
        .expect("the head signature verifies with the node's public key");
    assert_eq!(
        head["records"].as_u64(),
        head["index"].as_u64().map(|i| i + 1)
    );
    let metrics = common::http_get_text(&node.admin_url, "/metrics");
    assert!(metrics.contains("ocpp_audit_dropped_total 0"), "{metrics}");

    stop(&mut node.child);
    let log = node.stderr_log();
    assert!(log.contains("security_event=auth_failed"), "{log}");
    assert!(log.contains("audit_head index="), "{log}");
    assert!(log.contains(&public_key), "the public key is logged");
    for password in wrong {
        assert!(!log.contains(password), "passwords are never logged");
    }

    let store = node.dir.path().join("data").join("node.redb");
    let out = audit(&["verify", "--public-key", &public_key], &store);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = show(&store);
    assert!(
        text.starts_with(&format!("ok: {} records, head ", records.len())),
        "{text}"
    );
    assert!(
        text.contains("signature valid with the given public key"),
        "{text}"
    );
    let kinds = kinds(&records);
    assert_eq!(kinds[0], "node_started", "{kinds:?}");
    assert_eq!(records[0]["event"], "StartupOfTheDevice");
    assert_eq!(kinds.last(), Some(&"node_stopping"), "{kinds:?}");
    let failures: Vec<usize> = (0..records.len())
        .filter(|&i| kinds[i] == "auth_failed")
        .collect();
    assert_eq!(failures.len(), 3, "{kinds:?}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"].as_u64(), Some(i as u64));
        let detail = r["detail"].as_str().expect("detail");
        for password in wrong {
            assert!(!detail.contains(password), "{detail}");
        }
        assert!(!detail.contains("Basic "), "{detail}");
    }
    for &i in &failures {
        assert!(
            records[i]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("wrong password for \"CP-1\"")),
            "{}",
            records[i]
        );
        // An inbound failed login has no §8 name (see audit::whitepaper_event).
        assert_eq!(records[i]["event"], Value::Null);
    }

    // A copy with one character of one record's detail changed: named exactly.
    let altered = failures[1] as u64;
    let copy = node.dir.path().join("copy.redb");
    alter_record(&store, &copy, altered, "wrong password", "wrong passwork");
    let out = audit(&["verify"], &copy);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with(&format!("broken at record {altered}: ")),
        "expected record {altered} named: {text}"
    );
    // The original is untouched by either run.
    let out = audit(&["verify", "--public-key", &public_key], &store);
    assert!(out.status.success(), "{}", stdout(&out));
}

fn config(dir: &Path, heartbeat: u32) -> String {
    format!(
        "{}\n[local_csms]\nheartbeat_interval_s = {heartbeat}\n",
        common::config(dir, "", "").replace("[auth]", "[audit]\nreport_interval_s = 1\n[auth]")
    )
}

#[test]
fn restarts_and_config_changes_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.toml");
    let data = dir.path().join("data");
    for heartbeat in [60, 60, 90] {
        std::fs::write(&file, config(dir.path(), heartbeat)).expect("config");
        let (mut child, _) = common::spawn_node(&file, dir.path());
        stop(&mut child);
    }
    let store = data.join("node.redb");
    let records = show(&store);
    let kinds = kinds(&records);
    let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count("node_started"), 3, "{kinds:?}");
    assert_eq!(count("identity_key_created"), 1, "{kinds:?}");
    // Same config twice, then a different one: one change, at the third start.
    assert_eq!(count("config_changed"), 1, "{kinds:?}");
    let changed = records
        .iter()
        .find(|r| r["kind"] == "config_changed")
        .expect("config_changed");
    assert_eq!(changed["event"], "ReconfigurationOfSecurityParameters");
    let out = audit(&["verify"], &store);
    assert!(out.status.success(), "{}", stdout(&out));

    // The generated key is private; once others can read it, the node refuses to start.
    use std::os::unix::fs::PermissionsExt as _;
    let key = data.join("node-identity.pk8");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "must refuse before serving"
    );
}
