//! The allow-list: which overlay peer may read (and write) which registers of which target.
//!
//! A tunnel into a site's fieldbus is only safe when it is narrow, so nothing is reachable unless
//! a rule names it: peer (glob), target (glob), unit ids and register ranges. The whole requested
//! range must lie inside one allowed range, and a refusal says exactly which part failed so an
//! operator can fix the rule rather than guess. `ranges` are for reads; writes need
//! `write_ranges` (coils and holding registers only), and absent that a rule allows no write.
//! The allow-list is only half of a write's check: the node also demands a signature by a role
//! that grants `ModbusWrite`.
//!
//! TOML form (one `[[allow]]` table per rule, see [`AllowList::from_toml`]):
//!
//! ```toml
//! [[allow]]
//! peer = "csms-*"          # glob: '*' any run of characters, '?' one
//! target = "grid-meter"    # glob as well
//! units = [1]              # empty or absent: any unit
//! ranges = ["holding:0-99", "input:30000-30100", "0-9"]  # kind optional: any kind
//! write_ranges = ["holding:100-110", "coils:0-3"]          # absent: no writes
//! ```

use std::str::FromStr;

use routing::glob;
use serde::Deserialize;
use thiserror::Error;

use crate::pdu::{ReadKind, ReadRequest, WriteRequest};

/// One allowed register range, written `"[kind:]start-end"` (inclusive) or `"[kind:]address"`.
///
/// Kinds: `coils`, `discrete`, `holding`, `input` (a few spellings are accepted, see
/// [`parse_kind`]). Without a kind the range applies to every read kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RangeRule {
    pub kind: Option<ReadKind>,
    pub start: u16,
    pub end: u16,
}

impl RangeRule {
    /// True when the whole of `req` lies inside this range.
    pub fn contains(&self, req: &ReadRequest) -> bool {
        self.contains_span(req.kind, req.address, req.count)
    }

    /// True when `count` items of `kind` from `address` lie inside this range.
    pub fn contains_span(&self, kind: ReadKind, address: u16, count: u16) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && address >= self.start
            && u32::from(address) + u32::from(count) <= u32::from(self.end) + 1
    }
}

/// Why a range string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeParseError {
    #[error("empty register range")]
    Empty,
    #[error("unknown register kind {0:?} (use coils, discrete, holding or input)")]
    UnknownKind(String),
    #[error("bad register address {0:?} (expected a number 0-65535, decimal or 0x hex)")]
    BadNumber(String),
    #[error("register range {start}-{end} is reversed")]
    Reversed { start: u16, end: u16 },
}

/// Parses a register kind name as used in allow-lists and maps.
pub fn parse_kind(s: &str) -> Option<ReadKind> {
    match s.trim().to_ascii_lowercase().as_str() {
        "coil" | "coils" => Some(ReadKind::Coils),
        "discrete" | "discrete_inputs" | "discrete-inputs" | "inputs" => {
            Some(ReadKind::DiscreteInputs)
        }
        "holding" | "holding_registers" | "holding-registers" => Some(ReadKind::HoldingRegisters),
        "input" | "input_registers" | "input-registers" => Some(ReadKind::InputRegisters),
        _ => None,
    }
}

fn parse_address(s: &str) -> Result<u16, RangeParseError> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => t.parse::<u16>(),
    };
    parsed.map_err(|_| RangeParseError::BadNumber(t.to_owned()))
}

impl FromStr for RangeRule {
    type Err = RangeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RangeParseError::Empty);
        }
        let (kind, span) = match s.split_once(':') {
            Some((k, span)) => (
                Some(parse_kind(k).ok_or_else(|| RangeParseError::UnknownKind(k.to_owned()))?),
                span,
            ),
            None => (None, s),
        };
        let (start, end) = match span.split_once('-') {
            Some((a, b)) => (parse_address(a)?, parse_address(b)?),
            None => {
                let a = parse_address(span)?;
                (a, a)
            }
        };
        if start > end {
            return Err(RangeParseError::Reversed { start, end });
        }
        Ok(Self { kind, start, end })
    }
}

impl TryFrom<String> for RangeRule {
    type Error = RangeParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One rule of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Overlay peer id, a glob as in node allow-lists (`*`, `?`).
    pub peer: String,
    /// Modbus target (device) name, glob with `*`.
    pub target: String,
    /// Allowed unit ids; empty means any.
    #[serde(default)]
    pub units: Vec<u8>,
    /// Register ranges allowed to read; empty means none.
    #[serde(default)]
    pub ranges: Vec<RangeRule>,
    /// Ranges allowed to write (FC 5, 6, 15, 16), coils and holding registers only; empty or
    /// absent means no writes. A write also needs a signature by a role granting `ModbusWrite`.
    #[serde(default)]
    pub write_ranges: Vec<RangeRule>,
}

impl AllowRule {
    /// Mistakes serde cannot see: a write range of a read-only kind.
    pub fn problems(&self) -> Vec<String> {
        self.write_ranges
            .iter()
            .filter_map(|r| match r.kind {
                Some(k @ (ReadKind::DiscreteInputs | ReadKind::InputRegisters)) => Some(format!(
                    "write_ranges: {k} are read-only (only coils and holding registers are written)"
                )),
                _ => None,
            })
            .collect()
    }
}

/// The allow-list: a request passes when some rule allows all of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AllowList(pub Vec<AllowRule>);

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("no allow rule for peer {peer:?} and target {target:?}")]
    NoRule { peer: String, target: String },
    #[error("unit {unit} is not allowed for peer {peer:?} on target {target:?}")]
    UnitNotAllowed {
        peer: String,
        target: String,
        unit: u8,
    },
    #[error("{kind} registers {first}..{last} are outside the allowed ranges on target {target:?}")]
    OutsideRanges {
        target: String,
        kind: ReadKind,
        first: u16,
        last: u16,
    },
    #[error(
        "writing {kind} {first}..{last} is outside the allowed write_ranges on target {target:?}"
    )]
    NotWritable {
        target: String,
        kind: ReadKind,
        first: u16,
        last: u16,
    },
}

/// Why an allow-list file did not load.
#[derive(Debug, Error)]
pub enum AllowListError {
    #[error("allow-list: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("allow-list rule {rule}: {problem}")]
    Invalid { rule: usize, problem: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    #[serde(default)]
    allow: AllowList,
}

impl AllowList {
    /// Parses a TOML document of `[[allow]]` tables.
    pub fn from_toml(text: &str) -> Result<Self, AllowListError> {
        let list = toml::from_str::<AllowFile>(text)?.allow;
        for (i, rule) in list.0.iter().enumerate() {
            if let Some(problem) = rule.problems().into_iter().next() {
                return Err(AllowListError::Invalid { rule: i, problem });
            }
        }
        Ok(list)
    }

    /// Checks one read of `peer` on `target`, unit `unit`.
    pub fn check(
        &self,
        peer: &str,
        target: &str,
        unit: u8,
        req: &ReadRequest,
    ) -> Result<(), Refusal> {
        self.check_span(peer, target, unit, |rule| {
            rule.ranges.iter().any(|range| range.contains(req))
        })
        .map_err(|e| {
            e.unwrap_or_else(|| Refusal::OutsideRanges {
                target: target.to_owned(),
                kind: req.kind,
                first: req.address,
                last: req.last_address(),
            })
        })
    }

    /// Checks one write of `peer` on `target`, unit `unit`, against the rules' `write_ranges`
    /// (never `ranges`). The signature a write also needs is the caller's to check.
    pub fn check_write(
        &self,
        peer: &str,
        target: &str,
        unit: u8,
        req: &WriteRequest,
    ) -> Result<(), Refusal> {
        let (kind, address, count) = (req.kind(), req.address(), req.count());
        self.check_span(peer, target, unit, |rule| {
            // A read-only kind in write_ranges is refused at load; never honour one anyway.
            rule.problems().is_empty()
                && rule
                    .write_ranges
                    .iter()
                    .any(|range| range.contains_span(kind, address, count))
        })
        .map_err(|e| {
            e.unwrap_or_else(|| Refusal::NotWritable {
                target: target.to_owned(),
                kind,
                first: address,
                last: req.last_address(),
            })
        })
    }

    /// `Err(Some)` for no rule or no unit, `Err(None)` when no matching rule's ranges fit.
    fn check_span(
        &self,
        peer: &str,
        target: &str,
        unit: u8,
        fits: impl Fn(&AllowRule) -> bool,
    ) -> Result<(), Option<Refusal>> {
        let mut matching = self
            .0
            .iter()
            .filter(|r| glob::matches(&r.peer, peer) && glob::matches(&r.target, target))
            .peekable();
        if matching.peek().is_none() {
            return Err(Some(Refusal::NoRule {
                peer: peer.to_owned(),
                target: target.to_owned(),
            }));
        }
        let mut unit_ok = false;
        for rule in matching {
            if !rule.units.is_empty() && !rule.units.contains(&unit) {
                continue;
            }
            unit_ok = true;
            if fits(rule) {
                return Ok(());
            }
        }
        if !unit_ok {
            return Err(Some(Refusal::UnitNotAllowed {
                peer: peer.to_owned(),
                target: target.to_owned(),
                unit,
            }));
        }
        Err(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
        [[allow]]
        peer = "csms-*"
        target = "grid-meter"
        units = [1, 2]
        ranges = ["holding:0-99", "input:30000-30100", "0x10-0x1F"]

        [[allow]]
        peer = "installer"
        target = "*"
        ranges = ["coils:5"]
    "#;

    fn req(kind: ReadKind, address: u16, count: u16) -> ReadRequest {
        ReadRequest::new(kind, address, count).expect("valid request")
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(
            "holding:0-99".parse(),
            Ok(RangeRule {
                kind: Some(ReadKind::HoldingRegisters),
                start: 0,
                end: 99
            })
        );
        assert_eq!(
            "0-9".parse(),
            Ok(RangeRule {
                kind: None,
                start: 0,
                end: 9
            })
        );
        assert_eq!(
            " input : 7 ".parse(),
            Ok(RangeRule {
                kind: Some(ReadKind::InputRegisters),
                start: 7,
                end: 7
            })
        );
        assert_eq!(
            "bogus:1-2".parse::<RangeRule>(),
            Err(RangeParseError::UnknownKind("bogus".into()))
        );
        assert_eq!(
            "9-1".parse::<RangeRule>(),
            Err(RangeParseError::Reversed { start: 9, end: 1 })
        );
        assert_eq!(
            "0-70000".parse::<RangeRule>(),
            Err(RangeParseError::BadNumber("70000".into()))
        );
        assert_eq!("".parse::<RangeRule>(), Err(RangeParseError::Empty));
    }

    #[test]
    fn loads_toml_and_reports_bad_ranges() {
        let list = AllowList::from_toml(LIST).expect("valid list");
        assert_eq!(list.0.len(), 2);
        assert_eq!(list.0[1].units, Vec::<u8>::new());
        let bad = AllowList::from_toml(
            "[[allow]]\npeer = \"a\"\ntarget = \"b\"\nranges = [\"holdin:1-2\"]\n",
        )
        .expect_err("bad kind");
        assert!(bad.to_string().contains("unknown register kind"), "{bad}");
        let unknown = AllowList::from_toml("[[allow]]\npeer = \"a\"\ntarget = \"b\"\nunit = [1]\n")
            .expect_err("unknown field");
        assert!(unknown.to_string().contains("unit"), "{unknown}");
    }

    #[test]
    fn checks_each_part() {
        let list = AllowList::from_toml(LIST).expect("valid list");
        let holding = req(ReadKind::HoldingRegisters, 90, 10);
        assert_eq!(list.check("csms-eu", "grid-meter", 1, &holding), Ok(()));
        assert_eq!(
            list.check("other", "grid-meter", 1, &holding),
            Err(Refusal::NoRule {
                peer: "other".into(),
                target: "grid-meter".into()
            })
        );
        assert!(matches!(
            list.check("csms-eu", "grid-meter", 3, &holding),
            Err(Refusal::UnitNotAllowed { unit: 3, .. })
        ));
        let err = list
            .check(
                "csms-eu",
                "grid-meter",
                1,
                &req(ReadKind::HoldingRegisters, 95, 10),
            )
            .expect_err("runs past 99");
        assert_eq!(
            err,
            Refusal::OutsideRanges {
                target: "grid-meter".into(),
                kind: ReadKind::HoldingRegisters,
                first: 95,
                last: 104
            }
        );
        assert!(err.to_string().contains("registers 95..104"), "{err}");
        // Wrong kind for a kinded range.
        assert!(
            list.check(
                "csms-eu",
                "grid-meter",
                1,
                &req(ReadKind::InputRegisters, 0, 1)
            )
            .is_err()
        );
        // A kind-less range allows every kind.
        assert_eq!(
            list.check("csms-eu", "grid-meter", 2, &req(ReadKind::Coils, 0x10, 16)),
            Ok(())
        );
        assert_eq!(
            list.check("installer", "anything", 200, &req(ReadKind::Coils, 5, 1)),
            Ok(())
        );
        assert!(
            list.check("installer", "anything", 200, &req(ReadKind::Coils, 5, 2))
                .is_err()
        );
    }

    #[test]
    fn whole_range_must_fit_one_allowed_range() {
        let list = AllowList(vec![AllowRule {
            peer: "*".into(),
            target: "*".into(),
            units: vec![],
            ranges: vec![
                "holding:0-9".parse().expect("ok"),
                "holding:10-19".parse().expect("ok"),
            ],
            write_ranges: vec![],
        }]);
        assert!(
            list.check("p", "t", 1, &req(ReadKind::HoldingRegisters, 8, 4))
                .is_err()
        );
        assert!(
            list.check("p", "t", 1, &req(ReadKind::HoldingRegisters, 10, 10))
                .is_ok()
        );
        let top = AllowList(vec![AllowRule {
            peer: "*".into(),
            target: "*".into(),
            units: vec![],
            ranges: vec!["65535".parse().expect("ok")],
            write_ranges: vec![],
        }]);
        assert!(
            top.check("p", "t", 0, &req(ReadKind::InputRegisters, 65535, 1))
                .is_ok()
        );
    }

    fn w_reg(address: u16, values: &[u16]) -> WriteRequest {
        if let [value] = values {
            WriteRequest::SingleRegister {
                address,
                value: *value,
            }
        } else {
            WriteRequest::MultipleRegisters {
                address,
                values: values.to_vec(),
            }
        }
    }

    const WRITES: &str = r#"
        [[allow]]
        peer = "hub"
        target = "wallbox-io"
        units = [1]
        ranges = ["holding:0-199", "coils:0-15"]
        write_ranges = ["holding:100-110", "coils:0-3"]

        [[allow]]
        peer = "reader"
        target = "*"
        ranges = ["0-65535"]
    "#;

    #[test]
    fn writes_need_write_ranges() {
        let list = AllowList::from_toml(WRITES).expect("valid list");
        assert_eq!(
            list.check_write("hub", "wallbox-io", 1, &w_reg(100, &[7])),
            Ok(())
        );
        assert_eq!(
            list.check_write("hub", "wallbox-io", 1, &w_reg(105, &[1, 2, 3, 4, 5, 6])),
            Ok(())
        );
        // Readable is not writable.
        let err = list
            .check_write("hub", "wallbox-io", 1, &w_reg(99, &[7]))
            .expect_err("99 is read-only");
        assert_eq!(
            err,
            Refusal::NotWritable {
                target: "wallbox-io".into(),
                kind: ReadKind::HoldingRegisters,
                first: 99,
                last: 99
            }
        );
        assert!(err.to_string().contains("write_ranges"), "{err}");
        // Straddling the end of a write range.
        assert!(
            list.check_write("hub", "wallbox-io", 1, &w_reg(109, &[1, 2, 3]))
                .is_err()
        );
        // Coils 0-3, by single and multiple writes; a holding range does not cover coils.
        let coil = |address, n: usize| {
            if n == 1 {
                WriteRequest::SingleCoil {
                    address,
                    value: true,
                }
            } else {
                WriteRequest::MultipleCoils {
                    address,
                    values: vec![true; n],
                }
            }
        };
        assert_eq!(
            list.check_write("hub", "wallbox-io", 1, &coil(3, 1)),
            Ok(())
        );
        assert_eq!(
            list.check_write("hub", "wallbox-io", 1, &coil(0, 4)),
            Ok(())
        );
        assert!(
            list.check_write("hub", "wallbox-io", 1, &coil(1, 4))
                .is_err()
        );
        assert!(
            list.check_write("hub", "wallbox-io", 1, &coil(100, 1))
                .is_err()
        );
        // Unit and peer are checked as for reads.
        assert!(matches!(
            list.check_write("hub", "wallbox-io", 2, &w_reg(100, &[7])),
            Err(Refusal::UnitNotAllowed { unit: 2, .. })
        ));
        assert!(matches!(
            list.check_write("intruder", "wallbox-io", 1, &w_reg(100, &[7])),
            Err(Refusal::NoRule { .. })
        ));
        // A rule without write_ranges allows no write, however wide its read ranges.
        assert!(
            list.check("reader", "x", 1, &req(ReadKind::HoldingRegisters, 100, 1))
                .is_ok()
        );
        assert!(matches!(
            list.check_write("reader", "x", 1, &w_reg(100, &[7])),
            Err(Refusal::NotWritable { .. })
        ));
        // And write_ranges do not widen reads.
        let only_write = AllowList::from_toml(
            "[[allow]]\npeer = \"p\"\ntarget = \"t\"\nwrite_ranges = [\"holding:0-9\"]\n",
        )
        .expect("valid");
        assert!(
            only_write
                .check("p", "t", 1, &req(ReadKind::HoldingRegisters, 0, 1))
                .is_err()
        );
        assert_eq!(only_write.check_write("p", "t", 1, &w_reg(0, &[1])), Ok(()));
    }

    #[test]
    fn read_only_kinds_cannot_be_write_ranges() {
        for kind in ["input", "discrete"] {
            let err = AllowList::from_toml(&format!(
                "[[allow]]\npeer = \"p\"\ntarget = \"t\"\nwrite_ranges = [\"{kind}:0-9\"]\n"
            ))
            .expect_err("read-only kind");
            assert!(err.to_string().contains("read-only"), "{err}");
        }
        // A kind-less write range covers coils and holding registers.
        let any = AllowList::from_toml(
            "[[allow]]\npeer = \"p\"\ntarget = \"t\"\nwrite_ranges = [\"0-9\"]\n",
        )
        .expect("valid");
        assert!(any.check_write("p", "t", 1, &w_reg(9, &[1])).is_ok());
        assert!(
            any.check_write(
                "p",
                "t",
                1,
                &WriteRequest::SingleCoil {
                    address: 0,
                    value: false
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn globs() {
        assert!(glob::matches("*", ""));
        assert!(glob::matches("*", "abc"));
        assert!(glob::matches("a*c", "abbbc"));
        assert!(glob::matches("a*b*c", "aXbYc"));
        assert!(!glob::matches("a*c", "abcd"));
        assert!(glob::matches("csms-*", "csms-"));
        assert!(!glob::matches("csms", "csms-1"));
        assert!(glob::matches("*-meter", "grid-meter"));
        assert!(!glob::matches("", "x"));
    }
}
