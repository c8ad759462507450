//! The command line a technician uses: `check-config`, and `status`, `chargers`, `routes`,
//! `events`, `outbox` and `wait` over the admin API with its token.

mod common;
use std::process::Command;

use common::{BIN, NodeProc, check_config, connect};

#[test]
fn check_config_names_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[node]
id = "site-1"
colour = "blue"

[[listener]]
name = "chargers"
bind = "not-an-address"
security_profile = "high"
"#,
    )
    .unwrap();
    let (valid, text) = check_config(&file);
    assert!(!valid);
    for path in [
        "node.colour",
        "listener[0].bind",
        "listener[0].security_profile",
    ] {
        assert!(
            text.contains(path),
            "check-config must name {path}:\n{text}"
        );
    }
    assert!(text.contains("3 mistake(s)"), "{text}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[node]\nid = \"site-1\"\n").unwrap();
    let (valid, text) = check_config(&good);
    assert!(valid, "{text}");
}

#[tokio::test]
async fn status_shows_connected_chargers() {
    let node = NodeProc::start("", "");
    let _ws = connect(&node.charger_url, "CP-STATUS", Some("ocpp2.0.1"), None)
        .await
        .unwrap();
    let config = node.dir.path().join("node.toml");
    let out = Command::new(BIN)
        .args(["status", "--admin", &node.admin_url, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("chargers connected: 1"), "{text}");
    assert!(
        text.contains("CP-STATUS") && text.contains("ocpp2.0.1"),
        "{text}"
    );
    assert!(text.contains(&node.charger_url), "{text}");
}

/// Runs `ocpp-node <args>` against `node`'s admin API with its config (for the token).
fn cli(node: &NodeProc, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--admin", &node.admin_url, "--config"])
        .arg(node.dir.path().join("node.toml"))
        .env_remove("OCPP_NODE_ADMIN_TOKEN")
        .output()
        .expect("run ocpp-node")
}

#[tokio::test]
async fn resource_commands_print_tables_and_json() {
    let node = NodeProc::start("", "");
    let _ws = connect(&node.charger_url, "CP-TABLE", Some("ocpp1.6"), None)
        .await
        .unwrap();

    let out = cli(&node, &["chargers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("CHARGER"), "a header first:\n{text}");
    assert!(
        text.contains("CP-TABLE") && text.contains("ocpp1.6"),
        "{text}"
    );
    assert!(text.contains("1 connected"), "{text}");

    let out = cli(&node, &["chargers", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(json["chargers"][0]["id"], "CP-TABLE");

    // The node's start is a security-relevant event of its own.
    let out = cli(&node, &["events", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("events JSON");
    let kinds: Vec<&str> = json["events"]
        .as_array()
        .expect("events list")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"node_started"), "{json}");
    let out = cli(&node, &["events"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("node_started"));

    let out = cli(&node, &["outbox", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("outbox JSON");
    assert_eq!(json["deadLetterCount"], 0, "{json}");

    let out = cli(&node, &["routes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("DESTINATION"));
}

#[tokio::test]
async fn wait_returns_once_healthy_and_fails_after_its_timeout() {
    let node = NodeProc::start("", "");
    let _ws = connect(&node.charger_url, "CP-WAIT", Some("ocpp1.6"), None)
        .await
        .unwrap();
    // Piped: no spinner, only the verdict.
    let out = cli(&node, &["wait", "--chargers", "1", "--timeout", "10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "healthy");
    assert!(out.stderr.is_empty(), "no progress output when piped");

    // A standalone node has no uplink: asking for one times out, saying what is missing.
    let out = cli(&node, &["wait", "--uplink-up", "--timeout", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no uplink up"), "{err}");
}

#[test]
fn the_cli_without_the_token_says_how_to_give_it() {
    let node = NodeProc::start("", "");
    let dir = tempfile::tempdir().unwrap();
    // No --config, and a working directory without ./ocpp-node-data: no token to find.
    let out = Command::new(BIN)
        .args(["status", "--admin", &node.admin_url])
        .current_dir(dir.path())
        .env_remove("OCPP_NODE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("OCPP_NODE_ADMIN_TOKEN"),
        "{err}"
    );
    // The variable works on its own.
    let token = common::admin_token(&node.admin_url).expect("the harness found the token");
    let out = Command::new(BIN)
        .args(["status", "--admin", &node.admin_url])
        .current_dir(dir.path())
        .env("OCPP_NODE_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
