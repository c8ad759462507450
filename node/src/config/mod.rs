//! Node configuration: a TOML file turned into a validated [`Config`].
//!
//! Every section and field is optional; what is missing takes the default shown in
//! `node/default.toml`, which is embedded in the binary and doubles as the reference example.
//!
//! Parsing reports *all* mistakes at once rather than stopping at the first, because an operator
//! editing a site controller's config over a slow link should not have to iterate one typo at a
//! time. Type errors are collected by deserializing repeatedly, dropping each offending key so that
//! its default applies, and semantic checks then run on the result.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use wire::OcppVersion;

mod check;
pub mod dlm;
pub mod files;
mod parse;
pub mod signing;

pub use check::{check_ws_url, valid_charger_id, valid_node_id};
pub use dlm::{DlmChargerConfig, DlmConfig, MeterConfig, MeterTransport, ModbusConfig};
pub use signing::SigningConfig;

/// The embedded default configuration (also the documented reference example).
pub const DEFAULT_TOML: &str = include_str!("../../default.toml");

/// Longest node or charger id (§6.2: at most 48 characters).
pub const MAX_ID_LEN: usize = 48;
/// Longest idTag in the local authorization list (OCPP 1.6 IdToken is CiString20, 2.x is 36).
pub const MAX_ID_TAG_LEN: usize = 36;
/// Passes of the collect-all-errors loop; each pass removes one bad key, so this caps the number
/// of type errors reported for a hopeless file instead of looping forever.
const MAX_PASSES: usize = 100;

// ---------------------------------------------------------------------------------------------
// The configuration types
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    /// Missing `[[listener]]` entirely means the default `chargers` listener.
    pub listener: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    pub local_csms: LocalCsmsConfig,
    pub auth: AuthConfig,
    /// Per-charger settings, keyed by charger id.
    pub chargers: BTreeMap<String, ChargerConfig>,
    /// Timers and limits of the overlay (edge and hub roles).
    pub overlay: OverlayConfig,
    /// Overlay uplinks, tried in priority order; at most one is up at a time.
    pub uplink: Vec<UplinkConfig>,
    /// Node identities allowed to open overlay connections to this node, keyed by node id.
    pub node_peers: BTreeMap<String, NodePeerConfig>,
    /// Present when this node owns the CSMS side (the hub).
    pub hub: Option<HubConfig>,
    /// The security event log.
    pub audit: AuditConfig,
    /// The durable queue of transaction messages (edge role).
    pub outbox: OutboxConfig,
    /// Load management against the grid meter (local-controller role).
    pub dlm: Option<DlmConfig>,
    /// Modbus devices the node reads (the grid meter, and the tunnel's targets).
    pub meter: Vec<MeterConfig>,
    pub modbus: ModbusConfig,
    /// Signature policies, user roles and the keys this node signs with.
    pub signing: SigningConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            listener: vec![ListenerConfig::default()],
            admin: AdminConfig::default(),
            local_csms: LocalCsmsConfig::default(),
            auth: AuthConfig::default(),
            chargers: BTreeMap::new(),
            overlay: OverlayConfig::default(),
            uplink: Vec::new(),
            node_peers: BTreeMap::new(),
            hub: None,
            audit: AuditConfig::default(),
            outbox: OutboxConfig::default(),
            dlm: None,
            meter: Vec::new(),
            modbus: ModbusConfig::default(),
            signing: SigningConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub id: String,
    pub role: Role,
    /// Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// Outbound secrets (uplink and CSMS passwords), kept apart from the config (§6.4).
    pub secrets_file: Option<PathBuf>,
    /// The node's Ed25519 identity key (PKCS#8), which signs the audit log's head. Unset: the
    /// node generates `<data_dir>/node-identity.pk8` at first start.
    pub identity_key_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "local-controller".to_owned(),
            role: Role::LocalController,
            data_dir: PathBuf::from("ocpp-node-data"),
            secrets_file: None,
            identity_key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often the node signs and logs the head of its security event log.
    pub report_interval_s: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            report_interval_s: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Messages the queue may hold over all chargers; beyond it a transaction message is refused.
    pub max_messages: u64,
    /// CALLERRORs from the CSMS after which a replayed message moves to the dead letters
    /// (OCPP's TransactionMessageAttempts).
    pub message_attempts: u64,
    /// Wait before a message is resent after a CALLERROR or an unanswered attempt.
    pub retry_interval_s: u64,
    /// Heartbeat interval of a BootNotification answered while the uplink is down.
    pub offline_interval_s: u64,
    /// How long delivered messages are remembered for recognising a charger's re-send.
    pub dedup_retention_s: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_messages: 100_000,
            message_attempts: 3,
            retry_interval_s: 5,
            offline_interval_s: 60,
            dedup_retention_s: 7 * 86_400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Edge,
    LocalController,
    Hub,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::LocalController => "local-controller",
            Role::Hub => "hub",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub path: String,
    pub security_profile: u8,
    #[serde(deserialize_with = "de_versions")]
    pub subprotocols: Vec<OcppVersion>,
    pub missing_subprotocol: MissingSubprotocol,
    pub max_frame_bytes: usize,
    pub upgrade_timeout_s: u64,
    /// Open connections (including unfinished upgrades) beyond which new ones are closed at once.
    pub max_connections: usize,
    /// CALLs one charger may have waiting for the CSMS's answer at once; more get CALLERROR
    /// "busy" (OCPP-J allows one; a few absorb chargers that retry early).
    pub max_pending_calls: usize,
    /// Seconds between WebSocket pings to a charger; 0 = never ping.
    pub ping_interval_s: u64,
    /// A charger silent (no frame, no pong) for ping_interval_s + this is disconnected.
    pub pong_timeout_s: u64,
    /// A frame the charger's socket does not take within this many seconds disconnects it
    /// (a peer that never reads must not pin a task and its buffers).
    pub write_timeout_s: u64,
    /// New connections per second admitted from one IP address, with `ip_connect_burst` on top.
    pub ip_connect_rate: u32,
    pub ip_connect_burst: u32,
    /// Failed authentications from one IP address before it is blocked.
    pub auth_failures_per_ip: u32,
    /// First block in seconds; it doubles with every further failure up to auth_block_max_s.
    pub auth_block_s: u64,
    pub auth_block_max_s: u64,
    /// Profiles 2 and 3: the server certificate chain (PEM, leaf first) and its private key.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Profile 3: the CA(s) that charger client certificates must chain to (PEM).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Profile 3: when set, a client certificate's O must equal it (the CPO name).
    pub cpo_name: Option<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "chargers".to_owned(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9000),
            path: "/ocpp".to_owned(),
            security_profile: 0,
            subprotocols: OcppVersion::ALL.to_vec(),
            missing_subprotocol: MissingSubprotocol::AssumeOcpp16,
            max_frame_bytes: 1024 * 1024,
            upgrade_timeout_s: 10,
            max_connections: 20_000,
            max_pending_calls: 8,
            ping_interval_s: 60,
            pong_timeout_s: 30,
            write_timeout_s: 30,
            ip_connect_rate: 20,
            ip_connect_burst: 200,
            auth_failures_per_ip: 10,
            auth_block_s: 10,
            auth_block_max_s: 600,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            cpo_name: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MissingSubprotocol {
    /// §6.2: a missing subprotocol is treated as `ocpp1.6`, with a warning.
    #[serde(rename = "assume-ocpp1.6")]
    AssumeOcpp16,
    #[serde(rename = "refuse")]
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub enabled: bool,
    /// Serve `/metrics` without the bearer token (every other endpoint still needs it).
    pub metrics_without_token: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9800),
            enabled: true,
            metrics_without_token: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalCsmsConfig {
    pub heartbeat_interval_s: u32,
}

impl Default for LocalCsmsConfig {
    fn default() -> Self {
        LocalCsmsConfig {
            heartbeat_interval_s: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Status answered for idTags that are not in `local_list`.
    pub unknown_id_tag: AuthStatus,
    pub local_list: BTreeMap<String, AuthStatus>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            unknown_id_tag: AuthStatus::Invalid,
            local_list: BTreeMap::new(),
        }
    }
}

/// The idTag statuses common to OCPP 1.6 `AuthorizationStatus` and 2.x `AuthorizationStatusEnumType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthStatus {
    Accepted,
    Blocked,
    Expired,
    Invalid,
}

impl AuthStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthStatus::Accepted => "Accepted",
            AuthStatus::Blocked => "Blocked",
            AuthStatus::Expired => "Expired",
            AuthStatus::Invalid => "Invalid",
        }
    }
}

impl fmt::Display for AuthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Deadline of a CALL at the node that translates it for a plain peer.
    pub request_timeout_s: u64,
    /// `ttl` of this node's NotifyNetworkTopology; refreshed every third of it.
    pub announce_ttl_s: u64,
    /// WebSocket ping interval on overlay links; two silent intervals close the link.
    pub ping_interval_s: u64,
    /// Dial timeout of an uplink or CSMS connection (TCP, TLS and upgrade).
    pub connect_timeout_s: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    pub hop_limit: usize,
    /// Hub: how long chargers' CSMS sockets outlive the loss of their edge's link.
    pub csms_grace_s: u64,
    /// Whether a charger id claimed through one node link may move to another.
    pub allow_move: bool,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            request_timeout_s: 30,
            announce_ttl_s: 300,
            ping_interval_s: 20,
            connect_timeout_s: 10,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            hop_limit: 16,
            csms_grace_s: 30,
            allow_move: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    pub name: String,
    /// `ws://` or `wss://` base; the node dials `<url>/<node id>`.
    pub url: String,
    /// Lower is preferred.
    #[serde(default)]
    pub priority: u32,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodePeerConfig {
    /// Charger-id globs the peer may speak and announce for; its own id is always allowed.
    pub allow: Vec<String>,
    /// PHC hash of the peer's Basic-auth password (profiles 1 and 2).
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// `ws://` or `wss://` base; each charger is dialled at `<csms_url>/<charger id>`.
    pub csms_url: String,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Config {
    /// Whether this node runs the overlay (edge or hub) rather than standalone.
    pub fn is_overlay(&self) -> bool {
        !self.uplink.is_empty() || self.hub.is_some()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChargerConfig {
    /// PHC string (argon2 or scrypt) of the charger's Basic-auth password; `ocpp-node hash-password`.
    pub password_hash: Option<String>,
}

/// `OcppVersion` lives in `wire`, which has no serde dependency; this wrapper parses each element
/// on its own so that a bad entry is reported as `subprotocols[i]`.
struct VersionDe(OcppVersion);

impl<'de> Deserialize<'de> for VersionDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(VersionDe).map_err(serde::de::Error::custom)
    }
}

fn de_versions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OcppVersion>, D::Error> {
    let v = Vec::<VersionDe>::deserialize(d)?;
    Ok(v.into_iter().map(|v| v.0).collect())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One configuration mistake. `path` is the TOML key path (`listener[1].bind`,
/// `chargers."CP:1"`), empty for file-level errors such as TOML syntax or an unreadable file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}", .path, path_sep(.path), .message)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

fn path_sep(path: &str) -> &'static str {
    if path.is_empty() { "" } else { ": " }
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// A config text as parsed and checked: the config (keys that failed at their defaults) and
/// every mistake found. The start-up step (`files`) adds the mistakes of the files it names.
pub struct Parsed {
    pub config: Option<Config>,
    pub errors: Vec<ConfigError>,
    removed: parse::Removed,
}

impl Parsed {
    /// The operator's path of field `field` of the listener now at index `i`.
    pub fn listener_path(&self, i: usize, field: &str) -> String {
        format!("listener[{}].{field}", self.removed.original("listener", i))
    }

    pub fn into_result(self) -> Result<Config, Vec<ConfigError>> {
        match self.config {
            Some(config) if self.errors.is_empty() => Ok(config),
            _ => Err(self.errors),
        }
    }
}

/// Parses and checks a config text, collecting every mistake; reads no file.
pub fn parse_all(text: &str) -> Parsed {
    // A syntax error leaves nothing to recover from: report toml's message (line, column,
    // snippet) as the single error.
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            return Parsed {
                config: None,
                errors: vec![ConfigError::new("", e.to_string().trim_end())],
                removed: parse::Removed::default(),
            };
        }
    };
    let (config, mut errors, removed) = parse::deserialize_all(table);
    if let Some(config) = &config {
        // Semantic checks on top of the type errors, so one run shows everything; the
        // removed-key record keeps listener indices in the operator's numbering.
        let had_listener_errors = errors
            .iter()
            .any(|e| e.path == "listener" || e.path.starts_with("listener["));
        errors.extend(check::validate(config, &removed, had_listener_errors));
    }
    Parsed {
        config,
        errors,
        removed,
    }
}

/// Reads a config file's text; an unreadable file is reported as a `ConfigError`.
pub fn read(path: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]
    })
}

impl Config {
    /// Parses and checks a config text, returning every mistake found. Reads no file: the
    /// files the config names are checked by [`files::check`].
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        parse_all(text).into_result()
    }

    /// Reads and parses a config file (without loading the files it names).
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::parse(&read(path)?)
    }

    /// The embedded default config. It is checked by a unit test, so failing here is a build bug.
    pub fn embedded_default() -> Config {
        match Config::parse(DEFAULT_TOML) {
            Ok(c) => c,
            Err(errors) => {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                panic!("embedded default.toml is invalid: {}", list.join("; "))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// A syntactically valid argon2id PHC string, shaped like `ocpp-node hash-password` output.
    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

    fn errors(text: &str) -> Vec<(String, String)> {
        match files::check_text(text) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    fn paths(text: &str) -> Vec<String> {
        errors(text).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn embedded_default_parses_to_the_documented_defaults() {
        let c = Config::embedded_default();
        assert_eq!(c, Config::default());
        assert_eq!(c.node.id, "local-controller");
        assert_eq!(c.node.role, Role::LocalController);
        assert_eq!(c.node.data_dir, PathBuf::from("ocpp-node-data"));
        assert_eq!(c.listener.len(), 1);
        let l = &c.listener[0];
        assert_eq!(l.name, "chargers");
        assert_eq!(l.bind, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(l.path, "/ocpp");
        assert_eq!(l.security_profile, 0);
        assert_eq!(l.subprotocols, OcppVersion::ALL.to_vec());
        assert_eq!(l.missing_subprotocol, MissingSubprotocol::AssumeOcpp16);
        assert_eq!(l.max_frame_bytes, 1_048_576);
        assert_eq!(l.upgrade_timeout_s, 10);
        assert_eq!(c.admin.bind, "127.0.0.1:9800".parse().unwrap());
        assert!(c.admin.enabled);
        assert_eq!(c.local_csms.heartbeat_interval_s, 300);
        assert_eq!(c.auth.unknown_id_tag, AuthStatus::Invalid);
        assert!(c.auth.local_list.is_empty());
        assert!(c.chargers.is_empty());
        assert_eq!(c.node.identity_key_file, None);
        assert_eq!(c.audit.report_interval_s, 300);
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn full_valid_config_parses_with_its_values() {
        let text = format!(
            r#"
            [node]
            id = "site-7"
            role = "local-controller"
            data_dir = "/var/lib/ocpp-node"

            [[listener]]
            name = "plain"
            bind = "127.0.0.1:0"
            path = "/"
            security_profile = 0
            subprotocols = ["ocpp2.1", "ocpp1.6"]
            missing_subprotocol = "refuse"
            max_frame_bytes = 2048
            upgrade_timeout_s = 300

            [[listener]]
            name = "basic"
            bind = "[::1]:9001"
            security_profile = 1

            [admin]
            bind = "127.0.0.1:0"
            enabled = false

            [local_csms]
            heartbeat_interval_s = 60

            [auth]
            unknown_id_tag = "Blocked"
            [auth.local_list]
            "TAG-1" = "Accepted"
            "TAG 2" = "Expired"

            [chargers."CP-1"]
            password_hash = "{HASH}"
            [chargers."CP 2"]
            "#
        );
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.node.id, "site-7");
        assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/ocpp-node"));
        assert_eq!(c.listener.len(), 2);
        let l = &c.listener[0];
        assert_eq!(l.name, "plain");
        assert_eq!(l.bind, "127.0.0.1:0".parse().unwrap());
        assert_eq!(l.path, "/");
        assert_eq!(l.subprotocols, vec![OcppVersion::V21, OcppVersion::V16]);
        assert_eq!(l.missing_subprotocol, MissingSubprotocol::Refuse);
        assert_eq!(l.max_frame_bytes, 2048);
        assert_eq!(l.upgrade_timeout_s, 300);
        let l = &c.listener[1];
        assert_eq!(l.name, "basic");
        assert_eq!(l.bind, "[::1]:9001".parse().unwrap());
        assert_eq!(l.path, "/ocpp");
        assert_eq!(l.security_profile, 1);
        assert_eq!(l.subprotocols, OcppVersion::ALL.to_vec());
        assert_eq!(c.admin.bind, "127.0.0.1:0".parse().unwrap());
        assert!(!c.admin.enabled);
        assert_eq!(c.local_csms.heartbeat_interval_s, 60);
        assert_eq!(c.auth.unknown_id_tag, AuthStatus::Blocked);
        assert_eq!(c.auth.local_list["TAG-1"], AuthStatus::Accepted);
        assert_eq!(c.auth.local_list["TAG 2"].as_str(), "Expired");
        assert_eq!(c.chargers["CP-1"].password_hash.as_deref(), Some(HASH));
        assert_eq!(c.chargers["CP 2"].password_hash, None);
    }

    #[test]
    fn reports_all_type_errors_with_their_paths() {
        let errs = errors(
            r#"
            [node]
            colour = "blue"

            [[listener]]
            security_profile = "one"
            bind = "not-an-address"
            "#,
        );
        let got: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "listener[0].bind",
                "listener[0].security_profile",
                "node.colour"
            ],
            "{errs:?}"
        );
        let msg = |p: &str| &errs.iter().find(|(q, _)| q == p).unwrap().1;
        assert!(msg("node.colour").contains("unknown field"), "{errs:?}");
        assert!(msg("listener[0].security_profile").contains("invalid type"));
    }

    #[test]
    fn bad_enum_values_and_unknown_sections_are_reported_and_skipped() {
        let errs = paths(
            r#"
            bogus = 1
            [node]
            role = "router"
            [listener_extra]
            x = 1
            [[listener]]
            missing_subprotocol = "guess"
            subprotocols = ["ocpp1.6", "ocpp9", "ocpp2.1", 5]
            [auth]
            unknown_id_tag = "Maybe"
            [auth.local_list]
            "TAG-1" = "Accepted"
            "TAG-2" = "Sure"
            [chargers."CP-1"]
            password = "x"
            "#,
        );
        let mut sorted = errs.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "auth.local_list.TAG-2",
                "auth.unknown_id_tag",
                "bogus",
                "chargers.CP-1.password",
                "listener[0].missing_subprotocol",
                "listener[0].subprotocols[1]",
                "listener[0].subprotocols[3]",
                "listener_extra",
                "node.role",
            ],
        );
    }

    #[test]
    fn removed_array_entries_keep_the_operators_numbering() {
        // listener[0] is not a table and gets dropped; the next listener's error must still
        // say listener[1], in deserialization and in semantic checks alike.
        let errs = paths(
            r#"
            listener = [5, { name = "a", max_frame_bytes = "big" }, { name = "a", path = "x" }]
            "#,
        );
        assert_eq!(
            errs,
            [
                "listener[0]",
                "listener[1].max_frame_bytes",
                "listener[2].name",
                "listener[2].bind",
                "listener[2].path",
            ]
        );
    }

    #[test]
    fn listener_table_instead_of_array_gets_a_hint() {
        let errs = errors("[listener]\nname = \"x\"\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "listener");
        assert!(errs[0].1.contains("[[listener]]"), "{errs:?}");
    }

    #[test]
    fn syntax_error_is_one_file_level_error_with_position() {
        let errs = Config::parse("[node]\nid = \n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "");
        assert!(errs[0].message.contains("line 2"), "{}", errs[0]);
        // No "path: " prefix for file-level errors.
        assert_eq!(errs[0].to_string(), errs[0].message);
    }

    #[test]
    fn error_display_is_path_colon_message() {
        let e = ConfigError::new("listener[1].bind", "bad");
        assert_eq!(e.to_string(), "listener[1].bind: bad");
    }

    #[test]
    fn load_reports_read_errors() {
        let errs = Config::load(Path::new("/nonexistent/ocpp-node.toml")).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .message
                .contains("cannot read /nonexistent/ocpp-node.toml")
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "[local_csms]\nheartbeat_interval_s = 42\n").unwrap();
        assert_eq!(
            Config::load(&file).unwrap().local_csms.heartbeat_interval_s,
            42
        );
    }

    #[test]
    fn node_id_rules() {
        for (id, _) in [
            ("", "empty"),
            ("a:b", "colon"),
            ("CSMS", "reserved"),
            ("*", "reserved"),
            (&"x".repeat(49), "long"),
        ] {
            let text = format!("[node]\nid = {id:?}\n");
            assert_eq!(paths(&text), ["node.id"], "{id:?}");
        }
        let ok = format!("[node]\nid = {:?}\n", "x".repeat(48));
        assert!(Config::parse(&ok).is_ok());
    }

    #[test]
    fn roles_need_their_links() {
        let errs = errors("[node]\nrole = \"edge\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "node.role");
        assert!(errs[0].1.contains("needs at least one [[uplink]]"));
        let errs = errors("[node]\nrole = \"hub\"\n");
        assert_eq!(errs[0].0, "node.role");
        assert!(errs[0].1.contains("[hub] csms_url"));
        let errs = errors(
            "[node]\nrole = \"edge\"\n[[uplink]]\nname = \"h\"\nurl = \"ws://h:1/o\"\n[hub]\ncsms_url = \"ws://c/o\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "hub");
    }

    #[test]
    fn valid_edge_and_hub_configs_parse() {
        let edge = Config::parse(
            r#"
            [node]
            id = "edge1"
            role = "edge"
            [overlay]
            request_timeout_s = 5
            reconnect_initial_ms = 100
            reconnect_max_ms = 1000
            [[uplink]]
            name = "hub1"
            url = "ws://127.0.0.1:9100/ocpp"
            [[uplink]]
            name = "hub2"
            url = "ws://127.0.0.1:9200/ocpp"
            priority = 1
            [node_peers.edge0]
            allow = ["CP-*"]
            "#,
        )
        .expect("valid edge");
        assert!(edge.is_overlay());
        assert_eq!(edge.uplink[1].priority, 1);
        assert_eq!(edge.overlay.request_timeout_s, 5);
        assert_eq!(edge.node_peers["edge0"].allow, ["CP-*"]);
        let hub = Config::parse(
            "[node]\nid = \"hub\"\nrole = \"hub\"\n[hub]\ncsms_url = \"wss://csms.example:443/ocpp\"\n",
        )
        .expect("valid hub");
        assert!(hub.is_overlay());
    }

    #[test]
    fn overlay_mistakes_are_all_reported() {
        let p = paths(
            r#"
            [node]
            id = "edge1"
            role = "edge"
            secrets_file = "/nonexistent/secrets.toml"
            [overlay]
            request_timeout_s = 0
            reconnect_initial_ms = 5000
            reconnect_max_ms = 1000
            hop_limit = 17
            [[uplink]]
            name = "a"
            url = "http://x/ocpp"
            [[uplink]]
            name = "a"
            url = "ws://x/ocpp/"
            tls_ca_file = "ca.pem"
            [node_peers.edge1]
            allow = [""]
            [node_peers."CS:MS"]
            password_hash = "nope"
            "#,
        );
        for expected in [
            "node.secrets_file",
            "overlay.request_timeout_s",
            "overlay.reconnect_max_ms",
            "overlay.hop_limit",
            "uplink[0].url",
            "uplink[1].name",
            "uplink[1].url",
            "node_peers.edge1",
            "node_peers.edge1.allow[0]",
            "node_peers.\"CS:MS\"",
            "node_peers.\"CS:MS\".password_hash",
        ] {
            assert!(
                p.iter().any(|x| x == expected),
                "{expected} missing from {p:?}"
            );
        }
    }

    #[test]
    fn ws_urls() {
        assert_eq!(check_ws_url("ws://127.0.0.1:9000/ocpp"), Ok(false));
        assert_eq!(check_ws_url("wss://csms.example/ocpp"), Ok(true));
        assert!(check_ws_url("ws:///ocpp").is_err());
        assert!(check_ws_url("https://x/ocpp").is_err());
        assert!(check_ws_url("ws://x/ocpp?a=1").is_err());
    }

    #[test]
    fn charger_id_rules() {
        assert_eq!(valid_charger_id("CP-1", "node"), Ok(()));
        assert_eq!(valid_charger_id(&"é".repeat(48), "node"), Ok(()));
        for bad in ["", "a:b", "a/b", "CSMS", "*", "node"] {
            assert!(valid_charger_id(bad, "node").is_err(), "{bad:?}");
        }
        assert!(valid_charger_id(&"x".repeat(49), "node").is_err());

        let errs = paths(
            r#"
            [node]
            id = "site"
            [chargers."CP:1"]
            [chargers.CSMS]
            [chargers.site]
            [chargers."a/b"]
            [chargers.ok]
            "#,
        );
        let mut sorted = errs.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "chargers.\"CP:1\"",
                "chargers.\"a/b\"",
                "chargers.CSMS",
                "chargers.site"
            ]
        );
    }

    #[test]
    fn password_hash_must_be_a_phc_string() {
        let errs = errors("[chargers.CP-1]\npassword_hash = \"secret\"\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "chargers.CP-1.password_hash");
        assert!(!errs[0].1.contains("secret"), "must not echo the value");
    }

    #[test]
    fn listener_semantic_checks() {
        let cases: &[(&str, &str)] = &[
            (r#"path = "ocpp""#, "listener[0].path"),
            (r#"path = "/ocpp/""#, "listener[0].path"),
            (r#"path = "/o cpp""#, "listener[0].path"),
            (r#"path = "/ocpp?x""#, "listener[0].path"),
            ("security_profile = 4", "listener[0].security_profile"),
            ("security_profile = 1", "listener[0].security_profile"),
            ("subprotocols = []", "listener[0].subprotocols"),
            (
                r#"subprotocols = ["ocpp1.6", "ocpp1.6"]"#,
                "listener[0].subprotocols[1]",
            ),
            ("max_frame_bytes = 1023", "listener[0].max_frame_bytes"),
            ("max_frame_bytes = 67108865", "listener[0].max_frame_bytes"),
            ("upgrade_timeout_s = 0", "listener[0].upgrade_timeout_s"),
            ("upgrade_timeout_s = 301", "listener[0].upgrade_timeout_s"),
            ("max_connections = 0", "listener[0].max_connections"),
            ("max_pending_calls = 0", "listener[0].max_pending_calls"),
            ("ping_interval_s = 3601", "listener[0].ping_interval_s"),
            ("write_timeout_s = 0", "listener[0].write_timeout_s"),
            ("ip_connect_rate = 0", "listener[0].ip_connect_rate"),
            (
                "auth_block_s = 60\nauth_block_max_s = 10",
                "listener[0].auth_block_max_s",
            ),
            (r#"name = """#, "listener[0].name"),
            (r#"name = "a b""#, "listener[0].name"),
            (r#"bind = "0.0.0.0:9800""#, "listener[0].bind"),
            (r#"bind = "127.0.0.1:9800""#, "listener[0].bind"),
        ];
        for (line, path) in cases {
            let text = format!("[[listener]]\n{line}\n");
            assert_eq!(paths(&text), [*path], "{line}");
        }
        // Profile 2 needs a password list and both TLS files; profile 3 also a client CA.
        let mut p2 = paths("[[listener]]\nsecurity_profile = 2\n");
        p2.sort();
        assert_eq!(
            p2,
            [
                "listener[0].security_profile",
                "listener[0].tls_cert_file",
                "listener[0].tls_key_file"
            ]
        );
        let errs =
            errors("[[listener]]\nsecurity_profile = 3\ntls_cert_file = \"/nonexistent.pem\"\n");
        let p3: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert!(p3.contains(&"listener[0].tls_cert_file"), "{errs:?}");
        assert!(
            p3.contains(&"listener[0].tls_key_file")
                && p3.contains(&"listener[0].tls_client_ca_file")
        );
        let cert_err = errs
            .iter()
            .find(|e| e.0 == "listener[0].tls_cert_file")
            .unwrap();
        assert!(
            cert_err.1.contains("cannot load") && cert_err.1.contains("/nonexistent.pem"),
            "{cert_err:?}"
        );
        assert_eq!(
            paths("[[listener]]\ntls_cert_file = \"c.pem\"\ncpo_name = \"X\"\n"),
            ["listener[0].tls_cert_file", "listener[0].cpo_name"]
        );
        let errs = errors("[[listener]]\nsecurity_profile = 1\n");
        assert!(
            errs[0]
                .1
                .contains("needs at least one [chargers.<id>] or [node_peers.<id>] password_hash")
        );

        // Profile 1 is fine once a charger has a hash; the bounds themselves are accepted.
        let ok = format!(
            "[[listener]]\nsecurity_profile = 1\nmax_frame_bytes = 67108864\n\
             upgrade_timeout_s = 1\n[chargers.CP-1]\npassword_hash = \"{HASH}\"\n"
        );
        assert!(Config::parse(&ok).is_ok());
        // The admin port is free when the admin API is off.
        assert!(Config::parse("[admin]\nenabled = false\nbind = \"0.0.0.0:9000\"\n").is_ok());
    }

    #[test]
    fn listeners_must_have_distinct_names_and_addresses() {
        let errs = paths(
            r#"
            [[listener]]
            name = "a"
            bind = "0.0.0.0:9000"
            [[listener]]
            name = "a"
            bind = "127.0.0.1:9001"
            [[listener]]
            name = "b"
            bind = "127.0.0.1:9000"
            [[listener]]
            name = "c"
            bind = "127.0.0.1:0"
            [[listener]]
            name = "d"
            bind = "127.0.0.1:0"
            [[listener]]
            name = "e"
            bind = "[::1]:9000"
            [[listener]]
            name = "f"
            bind = "[::]:9002"
            "#,
        );
        assert_eq!(errs, ["listener[1].name", "listener[2].bind"]);
        // `[::]` is dual-stack, so it takes the IPv4 port as well.
        let errs =
            paths("[[listener]]\nname = \"a\"\n[[listener]]\nname = \"b\"\nbind = \"[::]:9000\"\n");
        assert_eq!(errs, ["listener[1].bind"]);
        assert_eq!(paths("listener = []\n"), ["listener"]);
    }

    #[test]
    fn other_semantic_checks() {
        assert_eq!(
            paths("[local_csms]\nheartbeat_interval_s = 0\n"),
            ["local_csms.heartbeat_interval_s"]
        );
        assert_eq!(
            paths("[local_csms]\nheartbeat_interval_s = 86401\n"),
            ["local_csms.heartbeat_interval_s"]
        );
        let long = "T".repeat(37);
        assert_eq!(
            paths(&format!(
                "[auth.local_list]\n{long} = \"Accepted\"\n\"\" = \"Blocked\"\n"
            )),
            [
                "auth.local_list.\"\"",
                format!("auth.local_list.{long}").as_str()
            ]
        );
        assert_eq!(paths("[node]\ndata_dir = \"\"\n"), ["node.data_dir"]);
        assert_eq!(
            paths("[audit]\nreport_interval_s = 0\n"),
            ["audit.report_interval_s"]
        );
        assert_eq!(
            paths("[audit]\nreport_interval_s = 86401\n[audit.extra]\n"),
            ["audit.extra", "audit.report_interval_s"]
        );
        assert!(Config::parse("[audit]\nreport_interval_s = 86400\n").is_ok());
    }

    #[test]
    fn identity_key_file_must_be_a_private_ed25519_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pk8");
        let text = |p: &Path| {
            format!(
                "[node]\nidentity_key_file = {:?}\n",
                p.display().to_string()
            )
        };
        let errs = errors(&text(&missing));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "node.identity_key_file");
        assert!(errs[0].1.contains("cannot read"), "{errs:?}");

        // A real key, generated the way the node does it, then made readable by others.
        let (key, _) = crate::core::identity::NodeKey::load_or_create(None, dir.path()).unwrap();
        let path = key.path().to_owned();
        assert!(Config::parse(&text(&path)).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let errs = errors(&text(&path));
        assert_eq!(errs[0].0, "node.identity_key_file");
        assert!(errs[0].1.contains("chmod 600"), "{errs:?}");

        let junk = dir.path().join("junk.pk8");
        std::fs::write(&junk, "not a key").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let errs = errors(&text(&junk));
        assert!(errs[0].1.contains("not an Ed25519 private key"), "{errs:?}");
    }
}
