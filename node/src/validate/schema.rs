//! Payload validation against the OCA JSON schemas (ARCHITECTURE §6.5).
//!
//! The schemas are the ones the Python `ocpp` package ships, vendored unmodified in
//! `node/schemas/` and embedded by `build.rs`. Each is compiled on first use and kept; after that
//! a lookup is a hash-map read plus a lock-free `OnceLock` load, so nothing on the frame path
//! locks. Validation happens once, where a plain peer's frame enters the node.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::{Draft, ValidationError, Validator, error::ValidationErrorKind};
use serde_json::Value;
use wire::{ErrorCode, OcppVersion};

include!(concat!(env!("OUT_DIR"), "/schemas.rs"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

/// Why a payload failed its schema: the OCPP error code (by meaning) and a readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: ErrorCode,
    pub message: String,
}

struct Entry {
    text: &'static str,
    compiled: OnceLock<Result<Validator, String>>,
}

pub struct SchemaRegistry {
    entries: HashMap<(OcppVersion, Direction, &'static str), Entry>,
}

impl SchemaRegistry {
    pub fn new() -> Self {
        let mut entries = HashMap::with_capacity(SCHEMAS.len());
        for &(dir, stem, text) in SCHEMAS {
            let version = match dir {
                "v16" => OcppVersion::V16,
                "v201" => OcppVersion::V201,
                _ => OcppVersion::V21,
            };
            // 1.6 names requests `<Action>.json`; 2.x names them `<Action>Request.json`.
            let (action, direction) = if let Some(a) = stem.strip_suffix("Response") {
                (a, Direction::Response)
            } else if let Some(a) = stem
                .strip_suffix("Request")
                .filter(|_| version != OcppVersion::V16)
            {
                (a, Direction::Request)
            } else {
                (stem, Direction::Request)
            };
            entries.insert(
                (version, direction, action),
                Entry {
                    text,
                    compiled: OnceLock::new(),
                },
            );
        }
        SchemaRegistry { entries }
    }

    /// Whether `action` is an action of `version` at all (in either direction of travel).
    pub fn knows(&self, version: OcppVersion, action: &str) -> bool {
        self.entries
            .contains_key(&(version, Direction::Request, action))
    }

    /// Validates `payload`; `Ok` also when no schema exists for the action (callers check
    /// [`Self::knows`] first where an unknown action is an error).
    pub fn validate(
        &self,
        version: OcppVersion,
        direction: Direction,
        action: &str,
        payload: &Value,
    ) -> Result<(), Violation> {
        let Some(entry) = self.entries.get(&(version, direction, action)) else {
            return Ok(());
        };
        let validator = entry
            .compiled
            .get_or_init(|| compile(version, entry.text))
            .as_ref()
            .map_err(|e| Violation {
                code: ErrorCode::InternalError,
                message: format!("schema for {action} does not compile: {e}"),
            })?;
        // Report the most fundamental problem: structure, then presence, then type, then value.
        let worst = validator
            .iter_errors(payload)
            .map(|e| (classify(&e, version), e))
            .min_by_key(|((rank, _), _)| *rank);
        match worst {
            None => Ok(()),
            Some(((_, code), error)) => Err(Violation {
                code,
                message: describe(&error),
            }),
        }
    }
}

fn compile(version: OcppVersion, text: &str) -> Result<Validator, String> {
    let schema: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let draft = if version == OcppVersion::V16 {
        Draft::Draft4
    } else {
        Draft::Draft6
    };
    jsonschema::options()
        .with_draft(draft)
        // Like the `ocpp` package and most CSMSs, formats (date-time, uri) are not enforced: real
        // chargers send timestamps without offsets, and rejecting them would break sessions.
        .should_validate_formats(false)
        .build(&schema)
        .map_err(|e| e.to_string())
}

/// Ranks an error (lower = more fundamental) and maps it to the OCPP error code of §6.5.
fn classify(error: &ValidationError<'_>, version: OcppVersion) -> (u8, ErrorCode) {
    let at_root = error.instance_path().as_str().is_empty();
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { .. } => (0, ErrorCode::FormatViolation),
        ValidationErrorKind::Type { .. } if at_root => (0, ErrorCode::FormatViolation),
        ValidationErrorKind::Required { .. } if version == OcppVersion::V16 => {
            (1, ErrorCode::ProtocolError)
        }
        ValidationErrorKind::Required { .. } => (1, ErrorCode::OccurrenceConstraintViolation),
        ValidationErrorKind::Type { .. } | ValidationErrorKind::Enum { .. } => {
            (2, ErrorCode::TypeConstraintViolation)
        }
        _ => (3, ErrorCode::PropertyConstraintViolation),
    }
}

fn describe(error: &ValidationError<'_>) -> String {
    let at = error.instance_path().as_str();
    let mut text = if at.is_empty() {
        error.to_string()
    } else {
        format!("{at}: {error}")
    };
    // Descriptions go back to the peer: keep them short and never echo large input.
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Default for SchemaRegistry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: OcppVersion, action: &str, p: Value) -> Result<(), Violation> {
        SchemaRegistry::new().validate(v, Direction::Request, action, &p)
    }

    #[test]
    fn every_embedded_schema_compiles() {
        let reg = SchemaRegistry::new();
        assert!(reg.entries.len() > 350, "{} schemas", reg.entries.len());
        for ((version, _, action), entry) in &reg.entries {
            assert!(compile(*version, entry.text).is_ok(), "{version} {action}");
        }
    }

    #[test]
    fn knows_actions_per_version() {
        let reg = SchemaRegistry::new();
        assert!(reg.knows(OcppVersion::V16, "StartTransaction"));
        assert!(!reg.knows(OcppVersion::V201, "StartTransaction"));
        assert!(reg.knows(OcppVersion::V201, "TransactionEvent"));
        assert!(reg.knows(OcppVersion::V21, "TransactionEvent"));
        assert!(!reg.knows(OcppVersion::V16, "Bogus"));
    }

    #[test]
    fn maps_violations_per_version() {
        let missing = json!({"chargePointVendor": "v"});
        let e = check(OcppVersion::V16, "BootNotification", missing).unwrap_err();
        assert_eq!(e.code, ErrorCode::ProtocolError);
        let e = check(
            OcppVersion::V201,
            "BootNotification",
            json!({"reason": "PowerUp"}),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::OccurrenceConstraintViolation);

        let wrong_type = json!({"chargePointVendor": 5, "chargePointModel": "m"});
        let e = check(OcppVersion::V16, "BootNotification", wrong_type).unwrap_err();
        assert_eq!(e.code, ErrorCode::TypeConstraintViolation);

        let extra = json!({"chargePointVendor": "v", "chargePointModel": "m", "x": 1});
        let e = check(OcppVersion::V16, "BootNotification", extra).unwrap_err();
        assert_eq!(e.code, ErrorCode::FormatViolation);

        let e = check(OcppVersion::V201, "Heartbeat", json!([])).unwrap_err();
        assert_eq!(e.code, ErrorCode::FormatViolation);
    }

    #[test]
    fn decimal_multiple_of_accepts_valid_floats() {
        let profile = |limit: f64| {
            json!({"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 1, "stackLevel": 0,
                "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
                "chargingSchedule": {"chargingRateUnit": "A",
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}})
        };
        for ok in [0.3, 16.1, 32.7, 0.0, 6.0] {
            assert_eq!(
                check(OcppVersion::V16, "SetChargingProfile", profile(ok)),
                Ok(()),
                "{ok}"
            );
        }
        assert!(check(OcppVersion::V16, "SetChargingProfile", profile(16.15)).is_err());
    }
}
