//! The admin API refuses anyone without the token: a wrong token is a 401 and a security event,
//! repeated wrong tokens block the address, and `/login` gives a browser its cookie.

mod common;
use std::io::{Read as _, Write as _};

use common::{NodeProc, admin_token};

/// One GET with extra header lines; returns (status code, head, body).
fn get(base: &str, path: &str, headers: &[String]) -> (u16, String, String) {
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect admin");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, head.to_owned(), body.to_owned())
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

fn security_events(node: &NodeProc) -> Vec<serde_json::Value> {
    node.get_json("/api/events")["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn every_endpoint_needs_the_token() {
    let node = NodeProc::start("", "");
    let token = admin_token(&node.admin_url).expect("generated token");
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    for path in [
        "/api/status",
        "/api/transactions",
        "/api/events",
        "/api/outbox",
        "/api/audit",
        "/metrics",
    ] {
        let (code, head, _) = get(&node.admin_url, path, &[]);
        assert_eq!(code, 401, "{path} without a token: {head}");
        assert!(head.contains("www-authenticate: Bearer"), "{head}");
        let (code, head, _) = get(&node.admin_url, path, &bearer(&token));
        assert_eq!(code, 200, "{path} with the token: {head}");
    }
    // The token is never written to the log.
    assert!(!node.stderr_log().contains(&token));
}

#[test]
fn a_wrong_token_is_refused_recorded_and_then_blocked() {
    let node = NodeProc::start("", "");
    let token = admin_token(&node.admin_url).expect("generated token");
    let (code, _, _) = get(&node.admin_url, "/api/status", &bearer("not-the-token"));
    assert_eq!(code, 401);
    // The audit log appends through a queue: give it a moment.
    let mut failed = Vec::new();
    for _ in 0..50 {
        failed = security_events(&node)
            .into_iter()
            .filter(|e| e["kind"] == "admin_auth_failed")
            .collect();
        if !failed.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(failed.len(), 1, "one security event per wrong token");
    assert!(
        failed[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("127.0.0.1"))
    );
    assert!(
        !failed[0].to_string().contains("not-the-token"),
        "never the token itself"
    );

    // Four more wrong tokens: the address is blocked, even for the right token, until the
    // block ends.
    for _ in 0..4 {
        get(&node.admin_url, "/api/status", &bearer("still-wrong"));
    }
    let (code, head, _) = get(&node.admin_url, "/api/status", &bearer(&token));
    assert_eq!(code, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    let log = node.stderr_log();
    assert!(log.contains("security_event=ip_blocked"), "{log}");
}

#[test]
fn login_sets_a_cookie_that_opens_the_api() {
    let node = NodeProc::start("", "");
    let token = admin_token(&node.admin_url).expect("generated token");
    let (code, head, _) = get(&node.admin_url, &format!("/login?token={token}"), &[]);
    assert_eq!(code, 303, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("location: /"), "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value");
    let (code, _, body) = get(&node.admin_url, "/api/status", &[format!("Cookie: {pair}")]);
    assert_eq!(code, 200);
    assert!(body.contains("\"chargers\""));

    let (code, _, _) = get(&node.admin_url, "/login?token=wrong", &[]);
    assert_eq!(code, 401);
    let (code, _, _) = get(
        &node.admin_url,
        "/api/status",
        &["Cookie: ocpp_admin_token=wrong".into()],
    );
    assert_eq!(code, 401);
}

#[test]
fn a_token_from_the_secrets_file_and_open_metrics_when_configured() {
    use std::os::unix::fs::PermissionsExt as _;
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = secrets_dir.path().join("secrets.toml");
    std::fs::write(&secrets, "[admin]\ntoken = \"site-token-1\"\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The whole config here: the harness config has no place for a secrets file.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"lc-secrets\"\ndata_dir = \"{}\"\nsecrets_file = \"{}\"\n\n\
             [[listener]]\nname = \"chargers\"\nbind = \"127.0.0.1:0\"\n\n\
             [admin]\nbind = \"127.0.0.1:0\"\nmetrics_without_token = true\n",
            dir.path().join("data").display(),
            secrets.display()
        ),
    )
    .unwrap();
    let (mut child, urls) = common::spawn_node(&config, dir.path());
    let admin = urls.get("admin").cloned().expect("admin url");
    assert!(
        !dir.path().join("data").join("admin.token").exists(),
        "a configured token means none is generated"
    );
    let (code, _, _) = get(&admin, "/api/status", &bearer("site-token-1"));
    assert_eq!(code, 200);
    let (code, _, body) = get(&admin, "/metrics", &[]);
    assert_eq!(code, 200, "metrics_without_token opens /metrics only");
    assert!(body.contains("ocpp_"));
    let (code, _, _) = get(&admin, "/api/status", &[]);
    assert_eq!(code, 401);
    let _ = child.kill();
    let _ = child.wait();
}
