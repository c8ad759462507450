//! Security profiles 1, 2 and 3 on node-to-node links (ARCHITECTURE §4, §6.2, §6.4), with real
//! processes and an rcgen test PKI. For each profile one edge has the right credentials (its
//! uplink comes up and a charger's Heartbeat reaches the CSMS) and one has a wrong one (its
//! uplink never comes up and the hub logs the refusal):
//!
//! * profile 1 (Basic auth over ws): a wrong password;
//! * profile 2 (TLS + Basic): the edge does not trust the hub's server certificate;
//! * profile 3 (mutual TLS): the edge's client certificate names another node (CN).
//!
//! Also: a secrets file readable by others is a config error that names the file.

mod common;
use std::path::Path;
use std::time::{Duration, Instant};

use common::check_config;
use common::hash_password;
use common::topology::{
    Ca, Charger, Csms, Node, NodeConfig, Timers, Uplink, diagnostics, has_security_event,
    overlay_links, wait_for, wait_uplink_up, write_secrets,
};

const UP: Duration = Duration::from_secs(15);
const REPLY: Duration = Duration::from_secs(10);
/// How long the refused edge is watched: several reconnect rounds at reconnect_max_ms = 1000.
const WATCH: Duration = Duration::from_secs(5);

fn timers() -> Timers {
    Timers {
        request_timeout_s: 10,
        announce_ttl_s: 300,
        ping_interval_s: 5,
        connect_timeout_s: 3,
        reconnect_initial_ms: 200,
        reconnect_max_ms: 1000,
        csms_grace_s: 10,
    }
}

/// An edge with one uplink `hub` (plus `uplink_keys`) and, when given, a secrets file with the
/// uplink's Basic-auth password.
fn edge(id: &str, hub_url: &str, uplink_keys: &str, password: Option<&str>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::edge(dir.path(), id)
        .timers(timers())
        .uplink(Uplink::new("hub", hub_url, 0).with(uplink_keys));
    if let Some(pw) = password {
        let secrets = write_secrets(
            dir.path(),
            "secrets.toml",
            &format!("[uplinks.hub]\npassword = \"{pw}\"\n"),
            0o600,
        );
        cfg = cfg.secrets_file(&secrets);
    }
    cfg.start(dir)
}

/// `wss://localhost:PORT/path` for a listener announced as `wss://127.0.0.1:PORT/path`: the
/// edge checks the server certificate against the URL's host name.
fn by_name(url: &str) -> String {
    url.replacen("127.0.0.1", "localhost", 1)
}

/// The hub's server certificate (for `localhost` and 127.0.0.1) and listener keys for `profile`.
fn tls_listener_keys(dir: &Path, server_ca: &Ca, client_ca: Option<&Ca>, profile: u8) -> String {
    let (cert, key) =
        server_ca.write_leaf(dir, "hub-server", &["localhost", "127.0.0.1"], "localhost");
    let mut keys = format!(
        "security_profile = {profile}\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        let path = ca.write(&dir.join("node-client-ca.pem"));
        keys += &format!("tls_client_ca_file = \"{}\"\n", path.display());
    }
    keys
}

/// How the hub's log shows a refusal.
#[derive(Debug, Clone, Copy)]
enum Logged {
    /// A line with `security_event=<kind>`.
    SecurityEvent(&'static str),
    /// A line with this text.
    Text(&'static str),
}

impl Logged {
    fn is_in(self, log: &str) -> bool {
        match self {
            Logged::SecurityEvent(kind) => has_security_event(log, kind),
            Logged::Text(text) => log.contains(text),
        }
    }
}

/// The good edge's uplink comes up and carries a Heartbeat to the CSMS; the bad edge's never
/// comes up, and the hub's log shows `refusal`.
async fn good_up_bad_refused(hub: &Node, csms: &Csms, good: &Node, bad: &Node, refusal: Logged) {
    let watch_from = Instant::now();
    wait_uplink_up(good, "hub", UP, &[hub]).await;
    let mut charger = Charger::connect(good.url("chargers"), "CP-T1").await;
    assert!(
        csms.wait_connected("CP-T1", 1, REPLY).await,
        "no CSMS connection for CP-T1{}",
        diagnostics(&[good, hub])
    );
    let (id, reply) = charger.heartbeat(REPLY).await;
    let reply =
        reply.unwrap_or_else(|| panic!("no answer to the Heartbeat{}", diagnostics(&[good, hub])));
    assert_eq!(reply[0], 3, "{reply}{}", diagnostics(&[good, hub]));
    assert_eq!(reply[1], id.as_str(), "{reply}");
    assert_eq!(csms.calls(Some("CP-T1"), "Heartbeat"), 1);

    // The refused edge: watched for WATCH, its uplink is never up.
    let mut samples = 0;
    while watch_from.elapsed() < WATCH || samples < 10 {
        let state = bad.uplink_state("hub");
        assert_ne!(
            state.as_deref(),
            Some("up"),
            "the edge with wrong credentials got its uplink up{}",
            diagnostics(&[bad, hub])
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(overlay_links(&bad.status()).is_empty(), "{}", bad.status());
    let hub_status = hub.status();
    let links = overlay_links(&hub_status);
    assert_eq!(links.len(), 1, "only the good edge is linked: {hub_status}");
    assert_eq!(links[0]["peer"], good.id.as_str(), "{hub_status}");

    let logged = wait_for(Duration::from_secs(5), || {
        refusal.is_in(&hub.stderr_log()).then_some(())
    })
    .await;
    assert!(
        logged.is_some(),
        "the hub did not log the refusal ({refusal:?}){}",
        diagnostics(&[hub, bad])
    );
}

#[tokio::test]
async fn profile_1_basic_auth_on_the_uplink() {
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = NodeConfig::hub(hub_dir.path(), "hub-t1", &csms.url, "127.0.0.1:0")
        .timers(timers())
        .listener_keys("security_profile = 1")
        .node_peer("edge-ok", &["CP-*"], Some(&hash_password("edge-ok-secret")))
        .node_peer(
            "edge-bad",
            &["CP-*"],
            Some(&hash_password("edge-bad-secret")),
        )
        .start(hub_dir);
    let url = hub.url("nodes").to_owned();
    assert!(url.starts_with("ws://"), "{url}");
    let good = edge("edge-ok", &url, "", Some("edge-ok-secret"));
    let bad = edge("edge-bad", &url, "", Some("not-the-password"));
    good_up_bad_refused(
        &hub,
        &csms,
        &good,
        &bad,
        Logged::SecurityEvent("overlay_refused"),
    )
    .await;
    // The refused edge records it too: its own credentials or its hub's certificate refused.
    assert!(
        has_security_event(&bad.stderr_log(), "uplink_auth_failed"),
        "no security_event=uplink_auth_failed on the refused edge{}",
        diagnostics(&[&bad])
    );
    for n in [&hub, &good, &bad] {
        let log = n.stderr_log();
        assert!(
            !log.contains("edge-ok-secret") && !log.contains("not-the-password"),
            "{}: passwords are never logged",
            n.id
        );
    }
}

#[tokio::test]
async fn profile_2_tls_server_certificate_and_basic_auth() {
    let server_ca = Ca::new("Hub server CA");
    let other_ca = Ca::new("Some other CA");
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let keys = tls_listener_keys(hub_dir.path(), &server_ca, None, 2);
    let hub = NodeConfig::hub(hub_dir.path(), "hub-t2", &csms.url, "127.0.0.1:0")
        .timers(timers())
        .listener_keys(&keys)
        .node_peer("edge-ok", &["CP-*"], Some(&hash_password("edge-ok-secret")))
        .node_peer(
            "edge-bad",
            &["CP-*"],
            Some(&hash_password("edge-bad-secret")),
        )
        .start(hub_dir);
    let url = by_name(hub.url("nodes"));
    assert!(url.starts_with("wss://localhost:"), "{url}");

    let trust_dir = tempfile::tempdir().unwrap();
    let good_ca = server_ca.write(&trust_dir.path().join("hub-ca.pem"));
    let wrong_ca = other_ca.write(&trust_dir.path().join("other-ca.pem"));
    let good = edge(
        "edge-ok",
        &url,
        &format!("tls_ca_file = \"{}\"", good_ca.display()),
        Some("edge-ok-secret"),
    );
    // The right password, but the edge does not trust the hub's certificate.
    let bad = edge(
        "edge-bad",
        &url,
        &format!("tls_ca_file = \"{}\"", wrong_ca.display()),
        Some("edge-bad-secret"),
    );
    good_up_bad_refused(
        &hub,
        &csms,
        &good,
        &bad,
        Logged::Text("TLS handshake failed"),
    )
    .await;
    // The refused edge records it too: its own credentials or its hub's certificate refused.
    assert!(
        has_security_event(&bad.stderr_log(), "uplink_certificate_invalid"),
        "no security_event=uplink_certificate_invalid on the refused edge{}",
        diagnostics(&[&bad])
    );
}

#[tokio::test]
async fn profile_3_mutual_tls_client_certificate_names_the_node() {
    let server_ca = Ca::new("Hub server CA");
    let client_ca = Ca::new("Node client CA");
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let keys = tls_listener_keys(hub_dir.path(), &server_ca, Some(&client_ca), 3);
    let hub = NodeConfig::hub(hub_dir.path(), "hub-t3", &csms.url, "127.0.0.1:0")
        .timers(timers())
        .listener_keys(&keys)
        .node_peer("edge-ok", &["CP-*"], None)
        .node_peer("edge-bad", &["CP-*"], None)
        .start(hub_dir);
    let url = by_name(hub.url("nodes"));
    assert!(url.starts_with("wss://localhost:"), "{url}");

    let files = tempfile::tempdir().unwrap();
    let ca_file = server_ca.write(&files.path().join("hub-ca.pem"));
    let (ok_cert, ok_key) = client_ca.write_leaf(files.path(), "edge-ok", &[], "edge-ok");
    // A certificate from the trusted CA, but for another node: edge-bad cannot log in with it.
    let (other_cert, other_key) = client_ca.write_leaf(files.path(), "edge-ok-2", &[], "edge-ok");
    let keys = |cert: &Path, key: &Path| {
        format!(
            "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            ca_file.display(),
            cert.display(),
            key.display()
        )
    };
    let good = edge("edge-ok", &url, &keys(&ok_cert, &ok_key), None);
    let bad = edge("edge-bad", &url, &keys(&other_cert, &other_key), None);
    good_up_bad_refused(
        &hub,
        &csms,
        &good,
        &bad,
        Logged::SecurityEvent("overlay_refused"),
    )
    .await;
    // The refused edge records it too: its own credentials or its hub's certificate refused.
    assert!(
        has_security_event(&bad.stderr_log(), "uplink_auth_failed"),
        "no security_event=uplink_auth_failed on the refused edge{}",
        diagnostics(&[&bad])
    );
}

#[test]
fn a_secrets_file_readable_by_others_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = write_secrets(
        dir.path(),
        "secrets.toml",
        "[uplinks.hub]\npassword = \"edge-secret\"\n",
        0o644,
    );
    let cfg = NodeConfig::edge(dir.path(), "edge-s")
        .timers(timers())
        .uplink(Uplink::new("hub", "ws://127.0.0.1:9/ocpp", 0))
        .secrets_file(&secrets);
    let file = dir.path().join("node.toml");
    std::fs::write(&file, cfg.text()).unwrap();
    let out = std::process::Command::new(common::BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "mode 0644 must be refused:\n{text}"
    );
    assert!(
        text.contains(&secrets.display().to_string()) || text.contains("secrets.toml"),
        "the error names the secrets file:\n{text}"
    );
    assert!(!text.contains("edge-secret"), "the secret is never printed");

    // The same config with mode 0600 is valid: it was the mode, nothing else.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (valid, text) = check_config(&file);
    assert!(valid, "{text}");
}
