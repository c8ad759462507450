//! The command line a technician uses: `check-config` and `status`.

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
    let out = Command::new(BIN)
        .args(["status", "--admin", &node.admin_url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("chargers connected: 1"), "{text}");
    assert!(
        text.contains("CP-STATUS") && text.contains("ocpp2.0.1"),
        "{text}"
    );
    assert!(text.contains(&node.charger_url), "{text}");
}
