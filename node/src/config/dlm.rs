//! The `[dlm]`, `[[meter]]` and `[modbus]` sections: load management against the grid meter,
//! the Modbus devices the node reads, and who may read them through the tunnel. Their checks
//! live here too, so a mistake in a grid limit is reported next to the key that holds it.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use super::{Config, Role};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlmConfig {
    /// The grid connection's limit per phase (L1, L2, L3), in A; one number means all three.
    #[serde(deserialize_with = "de_phases")]
    pub grid_limit_a: [f64; 3],
    /// Headroom kept below the grid limit, in A per phase.
    pub margin_a: f64,
    /// The `[[meter]]` read as the grid meter.
    pub meter: String,
    pub cycle_ms: u64,
    /// A meter reading older than this puts every charger on `safe_limit_a`.
    pub stale_s: u64,
    /// What each charger may draw when the meter is stale, and before its first allocation.
    pub safe_limit_a: f64,
    /// Defaults of every charger; `[[dlm.charger]]` overrides them by id glob.
    pub min_a: f64,
    pub max_a: f64,
    pub phases: u8,
    /// An increase smaller than this is not sent (a decrease always is).
    pub deadband_a: f64,
    /// Least time between two increases of one charger's limit.
    pub min_change_interval_s: u64,
    /// How long a charger keeps its slot when not every charger can get its minimum.
    pub rotation_s: u64,
    /// OCPP 1.6 profile purpose: `TxDefaultProfile` or `ChargePointMaxProfile`.
    pub profile_v16: String,
    /// OCPP 2.x profile purpose: `ChargingStationMaxProfile` or `TxDefaultProfile`.
    pub profile_v2: String,
    pub stack_level: u32,
    pub charger: Vec<DlmChargerConfig>,
}

impl Default for DlmConfig {
    fn default() -> Self {
        DlmConfig {
            grid_limit_a: [32.0; 3],
            margin_a: 0.0,
            meter: "grid".to_owned(),
            cycle_ms: 1000,
            stale_s: 5,
            safe_limit_a: 6.0,
            min_a: 6.0,
            max_a: 32.0,
            phases: 3,
            deadband_a: 1.0,
            min_change_interval_s: 5,
            rotation_s: 300,
            profile_v16: "TxDefaultProfile".to_owned(),
            profile_v2: "ChargingStationMaxProfile".to_owned(),
            stack_level: 50,
            charger: Vec::new(),
        }
    }
}

/// Per-charger settings; the first entry whose glob matches wins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlmChargerConfig {
    /// A charger-id glob (`*` matches any run of characters).
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default = "one")]
    pub priority: u32,
    pub min_a: Option<f64>,
    pub max_a: Option<f64>,
    pub phases: Option<u8>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    pub name: String,
    #[serde(default)]
    pub transport: MeterTransport,
    /// Modbus TCP: `host:port`.
    pub address: Option<SocketAddr>,
    /// Modbus RTU: the serial device and its speed.
    pub device: Option<String>,
    #[serde(default = "baud")]
    pub baud: u32,
    #[serde(default = "unit")]
    pub unit_id: u8,
    /// A shipped register map (`sunspec-201` … `sunspec-204`, `sdm630`, `generic`) or the path
    /// of a map file.
    pub map: String,
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u64,
    /// Replaces the map's plausibility bound on a phase current: a CT-connected meter reads
    /// what its transformers allow, far beyond a direct-connected one.
    #[serde(default)]
    pub max_current_a: Option<f64>,
}

fn baud() -> u32 {
    9600
}
fn unit() -> u8 {
    1
}
fn timeout_ms() -> u64 {
    500
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterTransport {
    #[default]
    Tcp,
    Rtu,
}

/// The Modbus tunnel: which node peers may read which `[[meter]]` devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusConfig {
    pub allow: Vec<modbus_tunnel::allow::AllowRule>,
}

fn de_phases<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(f64),
        Three([f64; 3]),
    }
    Ok(
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a number of amps or an array of three (L1, L2, L3)")
        })? {
            Either::One(a) => [a; 3],
            Either::Three(p) => p,
        },
    )
}

pub(super) fn check(config: &Config, err: &mut impl FnMut(String, String)) {
    let mut names = std::collections::HashSet::new();
    for (i, m) in config.meter.iter().enumerate() {
        let p = |f: &str| format!("meter[{i}].{f}");
        if m.name.is_empty() || !names.insert(m.name.as_str()) {
            err(
                p("name"),
                format!("must be non-empty and unique (got {:?})", m.name),
            );
        }
        match m.transport {
            MeterTransport::Tcp if m.address.is_none() => err(
                p("address"),
                "a tcp meter needs address = \"host:port\"".into(),
            ),
            MeterTransport::Rtu if m.device.is_none() => err(
                p("device"),
                "an rtu meter needs device = \"/dev/ttyUSB0\" (and baud)".into(),
            ),
            _ => {}
        }
        if !(1..=60_000).contains(&m.timeout_ms) {
            err(p("timeout_ms"), "must be between 1 and 60000".into());
        }
        if let Some(a) = m.max_current_a
            && !(a.is_finite() && a > 0.0 && a <= 100_000.0)
        {
            err(
                p("max_current_a"),
                "must be above 0 and at most 100000 A".into(),
            );
        }
        if m.map.is_empty() {
            err(p("map"), "must name a shipped map or a map file".into());
        } else if modbus_tunnel::map::Map::builtin(&m.map).is_err()
            && !m.map.contains('/')
            && !m.map.ends_with(".toml")
        {
            err(
                p("map"),
                format!(
                    "unknown map {:?}: use sunspec-201, sunspec-202, sunspec-203, sunspec-204, sdm630, generic or a file path",
                    m.map
                ),
            );
        }
    }
    for (i, rule) in config.modbus.allow.iter().enumerate() {
        if !names.contains(rule.target.as_str()) {
            err(
                format!("modbus.allow[{i}].target"),
                format!("no [[meter]] is named {:?}", rule.target),
            );
        }
        for problem in rule.problems() {
            err(format!("modbus.allow[{i}]"), problem);
        }
    }
    let Some(d) = &config.dlm else { return };
    if config.node.role != Role::LocalController {
        err(
            "dlm".into(),
            format!(
                "load management runs in the local-controller role only (node.role is {})",
                config.node.role
            ),
        );
    }
    if !config.meter.iter().any(|m| m.name == d.meter) {
        err(
            "dlm.meter".into(),
            format!("no [[meter]] is named {:?}", d.meter),
        );
    }
    let amps = |v: f64| v.is_finite() && (0.0..=10_000.0).contains(&v);
    if d.grid_limit_a.iter().any(|&a| !amps(a) || a <= 0.0) {
        err(
            "dlm.grid_limit_a".into(),
            "each phase must be above 0 and at most 10000 A".into(),
        );
    }
    for (key, v) in [
        ("margin_a", d.margin_a),
        ("safe_limit_a", d.safe_limit_a),
        ("min_a", d.min_a),
        ("max_a", d.max_a),
        ("deadband_a", d.deadband_a),
    ] {
        if !amps(v) {
            err(format!("dlm.{key}"), "must be between 0 and 10000 A".into());
        }
    }
    if d.min_a > d.max_a {
        err(
            "dlm.min_a".into(),
            format!("{} is above max_a {}", d.min_a, d.max_a),
        );
    }
    if d.safe_limit_a > d.grid_limit_a.iter().copied().fold(f64::INFINITY, f64::min) {
        err("dlm.safe_limit_a".into(), "is above the grid limit".into());
    }
    if !(100..=60_000).contains(&d.cycle_ms) {
        err(
            "dlm.cycle_ms".into(),
            "must be between 100 and 60000".into(),
        );
    }
    if d.stale_s == 0 || d.stale_s * 1000 < d.cycle_ms {
        err(
            "dlm.stale_s".into(),
            "must be at least one cycle (and above 0)".into(),
        );
    }
    if d.rotation_s == 0 {
        err("dlm.rotation_s".into(), "must be above 0".into());
    }
    if !matches!(d.phases, 1 | 3) {
        err("dlm.phases".into(), "must be 1 or 3".into());
    }
    if !matches!(
        d.profile_v16.as_str(),
        "TxDefaultProfile" | "ChargePointMaxProfile"
    ) {
        err(
            "dlm.profile_v16".into(),
            "must be TxDefaultProfile or ChargePointMaxProfile".into(),
        );
    }
    if !matches!(
        d.profile_v2.as_str(),
        "ChargingStationMaxProfile" | "TxDefaultProfile"
    ) {
        err(
            "dlm.profile_v2".into(),
            "must be ChargingStationMaxProfile or TxDefaultProfile".into(),
        );
    }
    for (i, c) in d.charger.iter().enumerate() {
        let p = |f: &str| format!("dlm.charger[{i}].{f}");
        if let Err(e) = routing::Glob::new(c.pattern.as_str()) {
            err(p("match"), e.to_string());
        }
        if c.priority == 0 || c.priority > 100 {
            err(p("priority"), "must be between 1 and 100".into());
        }
        if c.phases.is_some_and(|n| !matches!(n, 1 | 3)) {
            err(p("phases"), "must be 1 or 3".into());
        }
        for (key, v) in [("min_a", c.min_a), ("max_a", c.max_a)] {
            if v.is_some_and(|v| !amps(v)) {
                err(p(key), "must be between 0 and 10000 A".into());
            }
        }
        let (min, max) = (c.min_a.unwrap_or(d.min_a), c.max_a.unwrap_or(d.max_a));
        if min > max {
            err(p("min_a"), format!("{min} is above max_a {max}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const METER: &str = r#"
[[meter]]
name = "grid"
address = "127.0.0.1:502"
map = "sdm630"
"#;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_full_dlm_section_parses() {
        let text = format!(
            "[dlm]\ngrid_limit_a = [63, 63, 50]\n[[dlm.charger]]\nmatch = \"CP-*\"\npriority = 2\nphases = 1\n{METER}\n[[modbus.allow]]\npeer = \"hub\"\ntarget = \"grid\"\nranges = [\"holding:0-9\"]\n"
        );
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let d = c.dlm.unwrap_or_default();
        assert_eq!(d.grid_limit_a, [63.0, 63.0, 50.0]);
        assert_eq!(d.charger[0].priority, 2);
        assert_eq!(c.modbus.allow.len(), 1);
        let one = Config::parse(&format!("[dlm]\ngrid_limit_a = 40\n{METER}")).map(|c| c.dlm);
        assert_eq!(one.ok().flatten().map(|d| d.grid_limit_a), Some([40.0; 3]));
    }

    #[test]
    fn every_mistake_is_reported_at_its_key() {
        let text = r#"
[node]
role = "edge"
[[uplink]]
name = "hub"
url = "ws://127.0.0.1:1/ocpp"
[dlm]
grid_limit_a = -1
meter = "nope"
min_a = 20
max_a = 10
phases = 2
profile_v16 = "TxProfile"
[[meter]]
name = "grid"
map = "sdm999"
max_current_a = 0
[[modbus.allow]]
peer = "hub"
target = "other"
ranges = ["holding:0-9"]
"#;
        let e = errors(text).join("\n");
        for want in [
            "dlm: load management runs in the local-controller role only",
            "dlm.meter: no [[meter]] is named \"nope\"",
            "dlm.grid_limit_a:",
            "dlm.min_a: 20 is above max_a 10",
            "dlm.phases: must be 1 or 3",
            "dlm.profile_v16:",
            "meter[0].address: a tcp meter needs",
            "meter[0].map: unknown map \"sdm999\"",
            "meter[0].max_current_a: must be above 0",
            "modbus.allow[0].target: no [[meter]] is named \"other\"",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let bad_range = format!(
            "{METER}\n[[modbus.allow]]\npeer = \"hub\"\ntarget = \"grid\"\nranges = [\"holding:9-0\"]\n"
        );
        assert!(
            errors(&bad_range)
                .iter()
                .any(|e| e.starts_with("modbus.allow")),
            "{:?}",
            errors(&bad_range)
        );
        let read_only = format!(
            "{METER}\n[[modbus.allow]]\npeer = \"hub\"\ntarget = \"grid\"\nwrite_ranges = [\"input:0-9\"]\n"
        );
        assert!(
            errors(&read_only)
                .iter()
                .any(|e| e.starts_with("modbus.allow[0]") && e.contains("read-only")),
            "{:?}",
            errors(&read_only)
        );
        let writes = format!(
            "{METER}\n[[modbus.allow]]\npeer = \"hub\"\ntarget = \"grid\"\nwrite_ranges = [\"holding:100-110\", \"coils:0-3\"]\n"
        );
        assert!(errors(&writes).is_empty(), "{:?}", errors(&writes));
    }
}
