//! The semantic checks of a parsed config: values in range, ids well formed, roles with the
//! links they need, listeners that do not collide. Pure: no file is read here (the files a
//! config names are loaded by `files`, the start-up step).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::parse::{Removed, key_path};
use super::{Config, ConfigError, ListenerConfig, MAX_ID_LEN, MAX_ID_TAG_LEN, OverlayConfig, Role};

// ---------------------------------------------------------------------------------------------
// Semantic checks
// ---------------------------------------------------------------------------------------------

/// Charger id rules (§6.2), shared with the handshake code. `id` is already percent-decoded.
pub fn valid_charger_id(id: &str, node_id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("charger id is empty");
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err("charger id is longer than 48 characters");
    }
    if id.contains(':') {
        return Err("charger id contains ':'");
    }
    // Ids end up in logs and on technicians' terminals: a newline or an escape sequence in one
    // could forge log lines or repaint the screen.
    if id.chars().any(char::is_control) {
        return Err("charger id contains a control character");
    }
    // A '/' would make `<csms_base_url>/<id>` and the listener path ambiguous.
    if id.contains('/') {
        return Err("charger id contains '/'");
    }
    if id == "CSMS" || id == "*" {
        return Err("charger id is reserved (CSMS and * are not allowed)");
    }
    if id == node_id {
        return Err("charger id is the node's own id");
    }
    Ok(())
}

pub fn valid_node_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("node id is empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("node id is longer than 48 bytes");
    }
    // ':' separates ids in overlay routes.
    if id.contains(':') {
        return Err("node id contains ':'");
    }
    if id.chars().any(char::is_control) {
        return Err("node id contains a control character");
    }
    if id == "CSMS" || id == "*" {
        return Err("node id is reserved (CSMS and * are not allowed)");
    }
    Ok(())
}

fn valid_listener_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("path must start with '/'");
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("path must not end with '/' (the charger id follows it)");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("path must not contain spaces or control characters");
    }
    // A query or fragment would never match a request path.
    if path.contains(['?', '#']) {
        return Err("path must not contain '?' or '#'");
    }
    Ok(())
}

/// Two sockets on the same port collide when the addresses are equal or one of them covers the
/// other: on Linux, binding 127.0.0.1:9000 next to 0.0.0.0:9000 fails, and `[::]` is dual-stack
/// by default so it covers IPv4 too. Port 0 asks the OS for a free port, so it never collides.
fn binds_collide(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (ia, ib) = (a.ip(), b.ip());
    let v6_any = |ip: IpAddr| ip.is_ipv6() && ip.is_unspecified();
    ia == ib
        || v6_any(ia)
        || v6_any(ib)
        || (ia.is_ipv4() && ib.is_ipv4() && (ia.is_unspecified() || ib.is_unspecified()))
}

/// TLS keys of one listener: required for profiles 2 and 3, absent otherwise (a certificate on a
/// plain listener would suggest a security the listener does not give).
fn check_tls(profile: u8, mut err: impl FnMut(&str, String), l: &ListenerConfig) {
    if profile > 3 {
        return; // the profile itself is the mistake; reported by the caller
    }
    let tls = profile >= 2;
    let files = [
        ("tls_cert_file", &l.tls_cert_file, tls),
        ("tls_key_file", &l.tls_key_file, tls),
        ("tls_client_ca_file", &l.tls_client_ca_file, profile >= 3),
    ];
    for (key, value, required) in files {
        match (value, required) {
            (None, true) => err(key, format!("security_profile {profile} needs {key}")),
            (Some(_), false) => err(
                key,
                format!(
                    "{key} is not used with security_profile {profile}; remove it or raise the profile"
                ),
            ),
            // Loaded (and reported) by the start-up step, `files`.
            _ => {}
        }
    }
    if l.cpo_name.is_some() && profile < 3 {
        err(
            "cpo_name",
            "cpo_name is checked against client certificates; it needs security_profile 3".into(),
        );
    }
}

/// Which combinations of role, uplinks and hub make sense.
fn check_roles(config: &Config, err: &mut impl FnMut(String, String)) {
    match config.node.role {
        Role::Hub if !config.is_overlay() => err(
            "node.role".into(),
            "role \"hub\" needs [hub] csms_url or at least one [[uplink]]".into(),
        ),
        Role::Edge if config.uplink.is_empty() => err(
            "node.role".into(),
            "role \"edge\" needs at least one [[uplink]]".into(),
        ),
        Role::Edge | Role::LocalController if config.hub.is_some() => err(
            "hub".into(),
            format!(
                "[hub] is for role \"hub\", not {:?}",
                config.node.role.as_str()
            ),
        ),
        _ => {}
    }
}

/// Bounds of the overlay timers: (key, value, range).
/// A numeric key, its value and the range it must lie in. Every bounded number of the config is
/// listed in one of the tables below and checked by `check_bounds`, so a new key is one line.
type Bound = (&'static str, u64, RangeInclusive<u64>);

fn overlay_bounds(o: &OverlayConfig) -> [Bound; 8] {
    [
        ("request_timeout_s", o.request_timeout_s, 1..=3600),
        ("announce_ttl_s", o.announce_ttl_s, 3..=86_400),
        ("ping_interval_s", o.ping_interval_s, 1..=3600),
        ("connect_timeout_s", o.connect_timeout_s, 1..=300),
        ("reconnect_initial_ms", o.reconnect_initial_ms, 10..=600_000),
        ("reconnect_max_ms", o.reconnect_max_ms, 10..=3_600_000),
        ("hop_limit", o.hop_limit as u64, 1..=16),
        ("csms_grace_s", o.csms_grace_s, 0..=3600),
    ]
}

fn listener_bounds(l: &ListenerConfig) -> [Bound; 12] {
    [
        (
            "max_frame_bytes",
            l.max_frame_bytes as u64,
            1024..=64 * 1024 * 1024,
        ),
        ("upgrade_timeout_s", l.upgrade_timeout_s, 1..=300),
        ("max_connections", l.max_connections as u64, 1..=1_000_000),
        ("max_pending_calls", l.max_pending_calls as u64, 1..=32),
        ("ping_interval_s", l.ping_interval_s, 0..=3600),
        ("pong_timeout_s", l.pong_timeout_s, 1..=600),
        ("write_timeout_s", l.write_timeout_s, 1..=600),
        ("ip_connect_rate", l.ip_connect_rate.into(), 1..=100_000),
        ("ip_connect_burst", l.ip_connect_burst.into(), 1..=1_000_000),
        (
            "auth_failures_per_ip",
            l.auth_failures_per_ip.into(),
            1..=100_000,
        ),
        ("auth_block_s", l.auth_block_s, 1..=86_400),
        ("auth_block_max_s", l.auth_block_max_s, 1..=86_400),
    ]
}

fn top_level_bounds(config: &Config) -> [Bound; 7] {
    let o = &config.outbox;
    [
        ("outbox.max_messages", o.max_messages, 1..=10_000_000),
        ("outbox.message_attempts", o.message_attempts, 1..=100),
        ("outbox.retry_interval_s", o.retry_interval_s, 1..=3_600),
        (
            "outbox.offline_interval_s",
            o.offline_interval_s,
            1..=86_400,
        ),
        (
            "outbox.dedup_retention_s",
            o.dedup_retention_s,
            60..=31_536_000,
        ),
        (
            "local_csms.heartbeat_interval_s",
            config.local_csms.heartbeat_interval_s.into(),
            1..=86_400,
        ),
        (
            "audit.report_interval_s",
            config.audit.report_interval_s,
            1..=86_400,
        ),
    ]
}

/// Reports every value outside its range, under `path(key)`.
fn check_bounds(
    bounds: impl IntoIterator<Item = Bound>,
    path: impl Fn(&str) -> String,
    err: &mut impl FnMut(String, String),
) {
    for (key, value, range) in bounds {
        if !range.contains(&value) {
            err(
                path(key),
                format!("{value} is outside {}..={}", range.start(), range.end()),
            );
        }
    }
}

/// A `ws://` or `wss://` URL with a host and no query; true for `wss`.
pub fn check_ws_url(url: &str) -> Result<bool, String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("{url:?} must start with ws:// or wss://")),
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() || url.ends_with('/') {
        return Err(format!(
            "{url:?} must not end with '/' or carry a query: the id is appended as /<id>"
        ));
    }
    Ok(tls)
}

/// TLS files of an outbound connection: only for wss, the client key with its certificate.
fn check_client_tls(
    path: &str,
    tls: bool,
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    err: &mut impl FnMut(String, String),
) {
    let files = [
        ("tls_ca_file", ca),
        ("tls_cert_file", cert),
        ("tls_key_file", key),
    ];
    for (name, file) in files {
        if file.is_some() && !tls {
            err(
                format!("{path}.{name}"),
                "TLS files need a wss:// URL".into(),
            );
        }
    }
    if cert.is_some() != key.is_some() {
        err(
            path.to_owned(),
            "tls_cert_file and tls_key_file go together".into(),
        );
    }
}

fn check_overlay(config: &Config, err: &mut impl FnMut(String, String)) {
    check_bounds(
        overlay_bounds(&config.overlay),
        |k| format!("overlay.{k}"),
        err,
    );
    if config.overlay.reconnect_max_ms < config.overlay.reconnect_initial_ms {
        err(
            "overlay.reconnect_max_ms".into(),
            "must be at least reconnect_initial_ms".into(),
        );
    }
    let mut names = BTreeSet::new();
    for (i, u) in config.uplink.iter().enumerate() {
        let path = format!("uplink[{i}]");
        if u.name.is_empty() || u.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            err(
                format!("{path}.name"),
                "must be non-empty and contain no spaces".into(),
            );
        }
        if !names.insert(u.name.as_str()) {
            err(
                format!("{path}.name"),
                format!("duplicate uplink name {:?}", u.name),
            );
        }
        match check_ws_url(&u.url) {
            Ok(tls) => check_client_tls(
                &path,
                tls,
                &u.tls_ca_file,
                &u.tls_cert_file,
                &u.tls_key_file,
                err,
            ),
            Err(m) => err(format!("{path}.url"), m),
        }
    }
    for (id, peer) in &config.node_peers {
        let path = key_path("node_peers", id);
        if let Err(m) = valid_node_id(id) {
            err(path.clone(), m.into());
        }
        if *id == config.node.id {
            err(path.clone(), "a node cannot be its own peer".into());
        }
        if config.chargers.contains_key(id) {
            err(
                path.clone(),
                "also configured as a charger; an id is a node or a charger".into(),
            );
        }
        for (k, pattern) in peer.allow.iter().enumerate() {
            if let Err(e) = routing::Glob::new(pattern.as_str()) {
                err(format!("{path}.allow[{k}]"), e.to_string());
            }
        }
        if let Some(hash) = &peer.password_hash
            && let Err(e) = argon2::PasswordHash::new(hash)
        {
            err(
                format!("{path}.password_hash"),
                format!("not a valid PHC password hash ({e}); use `ocpp-node hash-password`"),
            );
        }
    }
    if let Some(hub) = &config.hub {
        match check_ws_url(&hub.csms_url) {
            Ok(tls) => check_client_tls(
                "hub",
                tls,
                &hub.tls_ca_file,
                &hub.tls_cert_file,
                &hub.tls_key_file,
                err,
            ),
            Err(m) => err("hub.csms_url".into(), m),
        }
    }
}

pub(super) fn validate(
    config: &Config,
    removed: &Removed,
    had_listener_errors: bool,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));

    if let Err(m) = valid_node_id(&config.node.id) {
        err("node.id".into(), m.into());
    }
    check_roles(config, &mut err);
    super::dlm::check(config, &mut err);
    super::signing::check(config, &mut err);
    if config.node.data_dir.as_os_str().is_empty() {
        err("node.data_dir".into(), "must not be empty".into());
    }
    check_bounds(top_level_bounds(config), str::to_owned, &mut err);

    // An empty list after dropping bad entries was already reported by those entries.
    if config.listener.is_empty() && !had_listener_errors {
        err(
            "listener".into(),
            "at least one [[listener]] is required".into(),
        );
    }
    let any_password = config.chargers.values().any(|c| c.password_hash.is_some())
        || config
            .node_peers
            .values()
            .any(|p| p.password_hash.is_some());
    let lpath =
        |i: usize, field: &str| format!("listener[{}].{field}", removed.original("listener", i));
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, l) in config.listener.iter().enumerate() {
        // The name is printed in the `listening <name> <url>` line that tests parse.
        if l.name.is_empty() || l.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            err(
                lpath(i, "name"),
                "must be non-empty and contain no spaces".into(),
            );
        }
        if let Some(first) = names.insert(&l.name, i) {
            err(
                lpath(i, "name"),
                format!(
                    "duplicate listener name {:?} (also listener[{}])",
                    l.name,
                    removed.original("listener", first)
                ),
            );
        }
        if let Some(j) = config.listener[..i]
            .iter()
            .position(|o| binds_collide(o.bind, l.bind))
        {
            err(
                lpath(i, "bind"),
                format!(
                    "{} collides with listener[{}].bind",
                    l.bind,
                    removed.original("listener", j)
                ),
            );
        }
        if config.admin.enabled && binds_collide(l.bind, config.admin.bind) {
            err(
                lpath(i, "bind"),
                format!("{} collides with admin.bind", l.bind),
            );
        }
        if let Err(m) = valid_listener_path(&l.path) {
            err(lpath(i, "path"), m.into());
        }
        match l.security_profile {
            0 => {}
            1 | 2 if !any_password => err(
                lpath(i, "security_profile"),
                format!(
                    "security_profile {} needs at least one [chargers.<id>] or [node_peers.<id>] password_hash",
                    l.security_profile
                ),
            ),
            1..=3 => {}
            n => err(
                lpath(i, "security_profile"),
                format!("security_profile {n} does not exist (0, 1, 2 or 3)"),
            ),
        }
        check_tls(l.security_profile, |key, msg| err(lpath(i, key), msg), l);
        if l.subprotocols.is_empty() {
            err(
                lpath(i, "subprotocols"),
                "must list at least one subprotocol".into(),
            );
        }
        for (k, v) in l.subprotocols.iter().enumerate() {
            if l.subprotocols[..k].contains(v) {
                err(
                    format!("{}[{k}]", lpath(i, "subprotocols")),
                    format!("{v} is listed twice"),
                );
            }
        }
        check_bounds(listener_bounds(l), |k| lpath(i, k), &mut err);
        if l.auth_block_max_s < l.auth_block_s {
            err(
                lpath(i, "auth_block_max_s"),
                format!(
                    "{} is less than auth_block_s ({})",
                    l.auth_block_max_s, l.auth_block_s
                ),
            );
        }
    }

    for tag in config.auth.local_list.keys() {
        if tag.is_empty() || tag.len() > MAX_ID_TAG_LEN {
            err(
                key_path("auth.local_list", tag),
                format!("idTag must be 1..={MAX_ID_TAG_LEN} bytes"),
            );
        }
    }

    check_overlay(config, &mut err);

    for (id, charger) in &config.chargers {
        let path = key_path("chargers", id);
        if let Err(m) = valid_charger_id(id, &config.node.id) {
            err(path.clone(), m.into());
        }
        if let Some(hash) = &charger.password_hash {
            // Never echo the hash itself: it is a secret-derived value.
            if let Err(e) = argon2::PasswordHash::new(hash) {
                err(
                    format!("{path}.password_hash"),
                    format!("not a valid PHC password hash ({e}); use `ocpp-node hash-password`"),
                );
            }
        }
    }
    errors
}
