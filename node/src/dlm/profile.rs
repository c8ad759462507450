//! The charging profiles load management sends, and the limits it reads out of the profiles
//! the CSMS sends. Both directions speak the charger's own version: a 1.6 charger gets
//! `csChargingProfiles` on connector 0, a 2.x one `chargingProfile` on EVSE 0 (the whole
//! station), each with one period from now on.
//!
//! The node's profile has an id of its own ([`PROFILE_ID`]), so a CSMS profile is never taken
//! for it and replacing it never touches the CSMS's.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use wire::OcppVersion;

/// The `chargingProfileId` (1.6) / `id` (2.x) of the node's own profile.
pub const PROFILE_ID: i64 = 90_210;
/// The mains voltage used to turn a profile in W into amps per phase.
pub const VOLTS: f64 = 230.0;

pub struct ProfileSpec<'a> {
    pub purpose_v16: &'a str,
    pub purpose_v2: &'a str,
    pub stack_level: u32,
}

/// The SetChargingProfile payload that limits a charger to `limit_a` per phase.
pub fn set_profile(
    version: OcppVersion,
    spec: &ProfileSpec<'_>,
    limit_a: f64,
    now: &str,
) -> String {
    let limit = (limit_a * 10.0).floor() / 10.0;
    let period = json!([{"startPeriod": 0, "limit": limit}]);
    let v = if version.is_v16() {
        json!({
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": PROFILE_ID,
                "stackLevel": spec.stack_level,
                "chargingProfilePurpose": spec.purpose_v16,
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "startSchedule": now,
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": period,
                },
            },
        })
    } else {
        json!({
            "evseId": 0,
            "chargingProfile": {
                "id": PROFILE_ID,
                "stackLevel": spec.stack_level,
                "chargingProfilePurpose": spec.purpose_v2,
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [{
                    "id": 1,
                    "startSchedule": now,
                    "chargingRateUnit": "A",
                    "chargingSchedulePeriod": period,
                }],
            },
        })
    };
    v.to_string()
}

/// Whether a SetChargingProfile answer accepted the profile.
pub fn accepted(response: &str) -> bool {
    serde_json::from_str::<Value>(response)
        .ok()
        .is_some_and(|v| v["status"] == "Accepted")
}

/// Profiles remembered per charger; chargers themselves keep only a handful.
pub const MAX_CSMS_PROFILES: usize = 32;

/// The CSMS's profiles on one charger, by profile id: their limit now, in A per phase. The
/// CSMS limit is the smallest of them.
#[derive(Debug, Clone, Default)]
pub struct CsmsProfiles(BTreeMap<i64, f64>);

impl CsmsProfiles {
    pub fn limit(&self) -> Option<f64> {
        self.0.values().copied().reduce(f64::min)
    }

    /// A SetChargingProfile the CSMS sent. Returns false when the payload is not a profile this
    /// reads (or is the node's own).
    pub fn set(&mut self, version: OcppVersion, payload: &Value) -> bool {
        let (profile, schedule) = if version.is_v16() {
            let p = &payload["csChargingProfiles"];
            (p, &p["chargingSchedule"])
        } else {
            let p = &payload["chargingProfile"];
            (p, &p["chargingSchedule"][0])
        };
        let id = if version.is_v16() {
            profile["chargingProfileId"].as_i64()
        } else {
            profile["id"].as_i64()
        };
        let Some(id) = id.filter(|&id| id != PROFILE_ID) else {
            return false;
        };
        let Some(first) = schedule["chargingSchedulePeriod"][0].as_object() else {
            return false;
        };
        let Some(limit) = first.get("limit").and_then(Value::as_f64) else {
            return false;
        };
        let amps = if schedule["chargingRateUnit"] == "W" {
            let phases = first
                .get("numberPhases")
                .and_then(Value::as_f64)
                .unwrap_or(3.0)
                .max(1.0);
            limit / (VOLTS * phases)
        } else {
            limit
        };
        if !amps.is_finite() || amps < 0.0 {
            return false;
        }
        if self.0.len() >= MAX_CSMS_PROFILES && !self.0.contains_key(&id) {
            // Only the smallest limit counts: at the bound, the largest one makes room, so a
            // CSMS that writes endless profile ids costs bounded memory and the limit stays right.
            let largest = self
                .0
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(&k, &v)| (k, v));
            match largest {
                Some((k, v)) if amps < v => {
                    self.0.remove(&k);
                }
                _ => return false,
            }
        }
        self.0.insert(id, amps);
        true
    }

    /// A ClearChargingProfile the CSMS sent. Returns true when the charger may have dropped the
    /// node's own profile too (no id given, or ours), so it must be sent again.
    pub fn clear(&mut self, version: OcppVersion, payload: &Value) -> bool {
        let id = if version.is_v16() {
            payload["id"].as_i64()
        } else {
            payload["chargingProfileId"].as_i64()
        };
        match id {
            Some(id) if id != PROFILE_ID => {
                self.0.remove(&id);
                false
            }
            _ => {
                self.0.clear();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: ProfileSpec<'static> = ProfileSpec {
        purpose_v16: "TxDefaultProfile",
        purpose_v2: "ChargingStationMaxProfile",
        stack_level: 50,
    };

    #[test]
    fn the_node_profile_is_read_back_as_its_own() {
        let mut p = CsmsProfiles::default();
        for v in [OcppVersion::V16, OcppVersion::V201] {
            let ours: Value =
                serde_json::from_str(&set_profile(v, &SPEC, 12.34, "2026-01-01T00:00:00Z"))
                    .unwrap_or_default();
            assert!(!p.set(v, &ours), "our own profile is not a CSMS limit");
        }
        assert_eq!(p.limit(), None);
    }

    #[test]
    fn the_node_profile_is_valid_for_every_version() {
        use crate::validate::schema::{Direction, SchemaRegistry};
        let schemas = SchemaRegistry::new();
        for v in [OcppVersion::V16, OcppVersion::V201, OcppVersion::V21] {
            for (p16, p2) in [
                ("TxDefaultProfile", "ChargingStationMaxProfile"),
                ("ChargePointMaxProfile", "TxDefaultProfile"),
            ] {
                let spec = ProfileSpec {
                    purpose_v16: p16,
                    purpose_v2: p2,
                    stack_level: 50,
                };
                let text = set_profile(v, &spec, 7.25, "2026-12-07T10:00:00Z");
                let payload: Value = serde_json::from_str(&text).unwrap_or_default();
                assert!(schemas.knows(v, "SetChargingProfile"));
                let checked =
                    schemas.validate(v, Direction::Request, "SetChargingProfile", &payload);
                assert!(checked.is_ok(), "{v:?} {text}: {checked:?}");
            }
        }
    }

    #[test]
    fn csms_limits_combine_by_minimum_and_clear_by_id() {
        let mut p = CsmsProfiles::default();
        let a = json!({"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 1,
            "chargingSchedule": {"chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20}]}}});
        // 6900 W on 3 phases at 230 V = 10 A per phase.
        let w = json!({"evseId": 0, "chargingProfile": {"id": 2, "chargingSchedule": [{
            "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6900}]}]}});
        assert!(p.set(OcppVersion::V16, &a));
        assert_eq!(p.limit(), Some(20.0));
        assert!(p.set(OcppVersion::V201, &w));
        assert!((p.limit().unwrap_or_default() - 10.0).abs() < 1e-9);
        assert!(!p.clear(OcppVersion::V201, &json!({"chargingProfileId": 2})));
        assert_eq!(p.limit(), Some(20.0));
        assert!(
            p.clear(OcppVersion::V16, &json!({})),
            "a clear-all drops ours too"
        );
        assert_eq!(p.limit(), None);
    }

    #[test]
    fn endless_csms_profile_ids_stay_bounded_and_keep_the_smallest_limit() {
        let mut p = CsmsProfiles::default();
        for id in 0..(MAX_CSMS_PROFILES as i64 * 4) {
            let limit = 100.0 - id as f64 * 0.1;
            let payload = json!({"chargingProfile": {"id": id + 1, "chargingSchedule": [{
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}]}});
            p.set(OcppVersion::V201, &payload);
        }
        assert_eq!(p.0.len(), MAX_CSMS_PROFILES);
        let want = 100.0 - (MAX_CSMS_PROFILES as f64 * 4.0 - 1.0) * 0.1;
        assert!(
            (p.limit().unwrap_or_default() - want).abs() < 1e-9,
            "{:?}",
            p.limit()
        );
    }
}
