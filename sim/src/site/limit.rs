//! What a simulated EV obeys: the charging profiles a CSMS stored on its charger, the current
//! limit they add up to, and how the EV's draw follows that limit.
//!
//! Pure (no I/O, no clock) so that load-management tests can trust the simulated physics: the
//! unit tests pin the 1.6 and 2.0.1 payload readings, the W→A conversion, the minimum over
//! profiles, clearing, and the ramp.

use std::collections::BTreeMap;

use serde_json::Value;

/// Nominal phase voltage for W→A conversion and for the meter.
pub const VOLTS: f64 = 230.0;

/// Below this limit an EV cannot charge (IEC 61851 minimum): it pauses and draws 0 A.
pub const MIN_CHARGING_A: f64 = 6.0;

/// One stored profile, reduced to what the limit needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: i64,
    pub stack_level: i64,
    pub purpose: String,
    /// The first schedule period's limit, in A per phase.
    pub limit_a: f64,
}

impl Profile {
    /// Reads a 1.6 SetChargingProfile request (`csChargingProfiles`).
    pub fn from_v16(request: &Value, phases: u32) -> Option<Profile> {
        let profile = request.get("csChargingProfiles")?;
        Profile::read(
            profile,
            profile.get("chargingSchedule")?,
            "chargingProfileId",
            phases,
        )
    }

    /// Reads a 2.0.1 SetChargingProfile request (`chargingProfile`, first `chargingSchedule`).
    pub fn from_v201(request: &Value, phases: u32) -> Option<Profile> {
        let profile = request.get("chargingProfile")?;
        let schedule = profile.get("chargingSchedule")?.as_array()?.first()?;
        Profile::read(profile, schedule, "id", phases)
    }

    fn read(profile: &Value, schedule: &Value, id_field: &str, phases: u32) -> Option<Profile> {
        let limit = schedule
            .get("chargingSchedulePeriod")?
            .as_array()?
            .first()?
            .get("limit")?
            .as_f64()?;
        let limit_a = match schedule.get("chargingRateUnit")?.as_str()? {
            "A" => limit,
            "W" => limit / (VOLTS * f64::from(phases.max(1))),
            _ => return None,
        };
        if !limit_a.is_finite() {
            return None;
        }
        Some(Profile {
            id: profile.get(id_field)?.as_i64()?,
            stack_level: profile.get("stackLevel")?.as_i64()?,
            purpose: profile.get("chargingProfilePurpose")?.as_str()?.to_owned(),
            limit_a: limit_a.max(0.0),
        })
    }
}

/// Which stored profiles a ClearChargingProfile request removes. Absent fields match anything.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Clear {
    pub id: Option<i64>,
    pub purpose: Option<String>,
    pub stack_level: Option<i64>,
}

impl Clear {
    /// 1.6: `id`, `chargingProfilePurpose`, `stackLevel` (`connectorId` is ignored: one connector).
    pub fn from_v16(request: &Value) -> Clear {
        Clear {
            id: request.get("id").and_then(Value::as_i64),
            purpose: str_field(request, "chargingProfilePurpose"),
            stack_level: request.get("stackLevel").and_then(Value::as_i64),
        }
    }

    /// 2.0.1: `chargingProfileId` and `chargingProfileCriteria` (its `evseId` is ignored).
    pub fn from_v201(request: &Value) -> Clear {
        let criteria = request
            .get("chargingProfileCriteria")
            .unwrap_or(&Value::Null);
        Clear {
            id: request.get("chargingProfileId").and_then(Value::as_i64),
            purpose: str_field(criteria, "chargingProfilePurpose"),
            stack_level: criteria.get("stackLevel").and_then(Value::as_i64),
        }
    }

    /// An id names one profile and the other criteria are then ignored, as both versions say.
    fn matches(&self, p: &Profile) -> bool {
        if let Some(id) = self.id {
            return p.id == id;
        }
        self.purpose
            .as_ref()
            .is_none_or(|purpose| *purpose == p.purpose)
            && self.stack_level.is_none_or(|level| level == p.stack_level)
    }
}

fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// The profiles stored on one charger, by id.
#[derive(Debug, Default, Clone)]
pub struct ProfileStore {
    profiles: BTreeMap<i64, Profile>,
}

impl ProfileStore {
    /// Stores `p`. It replaces the profile with the same id and, as OCPP requires, the one with
    /// the same purpose and stack level.
    pub fn set(&mut self, p: Profile) {
        self.profiles
            .retain(|_, old| !(old.purpose == p.purpose && old.stack_level == p.stack_level));
        self.profiles.insert(p.id, p);
    }

    /// Removes the matching profiles; returns whether any was removed (Accepted vs Unknown).
    pub fn clear(&mut self, c: &Clear) -> bool {
        let before = self.profiles.len();
        self.profiles.retain(|_, p| !c.matches(p));
        self.profiles.len() != before
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// The minimum over all stored profiles' limits, capped at `max_a`; `max_a` with none.
    pub fn limit_a(&self, max_a: f64) -> f64 {
        self.profiles
            .values()
            .map(|p| p.limit_a)
            .fold(max_a, f64::min)
    }
}

/// The draw an EV charging at a `limit_a` limit heads for: the limit, or 0 below 6 A.
pub fn target_a(limit_a: f64) -> f64 {
    if limit_a < MIN_CHARGING_A {
        0.0
    } else {
        limit_a
    }
}

/// The draw `dt_s` seconds later. It rises toward the target at `rate` A/s and falls at twice
/// that (EVs shed load faster than they take it); a pause (target 0) is immediate. A rate of 0
/// means the draw follows at once.
pub fn ramp(draw_a: f64, target_a: f64, rate: f64, dt_s: f64) -> f64 {
    if target_a <= 0.0 || rate <= 0.0 {
        return target_a.max(0.0);
    }
    let dt = dt_s.max(0.0);
    if draw_a < target_a {
        (draw_a + rate * dt).min(target_a)
    } else {
        (draw_a - 2.0 * rate * dt).max(target_a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v16(id: i64, level: i64, purpose: &str, unit: &str, limit: f64) -> Value {
        json!({
            "connectorId": 1,
            "csChargingProfiles": {
                "chargingProfileId": id,
                "stackLevel": level,
                "chargingProfilePurpose": purpose,
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "chargingRateUnit": unit,
                    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
                },
            },
        })
    }

    fn v201(id: i64, level: i64, purpose: &str, unit: &str, limit: f64) -> Value {
        json!({
            "evseId": 1,
            "chargingProfile": {
                "id": id,
                "stackLevel": level,
                "chargingProfilePurpose": purpose,
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [{
                    "id": 1,
                    "chargingRateUnit": unit,
                    "chargingSchedulePeriod": [
                        {"startPeriod": 0, "limit": limit},
                        {"startPeriod": 60, "limit": 1.0},
                    ],
                }],
            },
        })
    }

    #[test]
    fn reads_v16_profiles() {
        let p = Profile::from_v16(&v16(7, 2, "TxDefaultProfile", "A", 10.5), 3).unwrap();
        assert_eq!(
            p,
            Profile {
                id: 7,
                stack_level: 2,
                purpose: "TxDefaultProfile".into(),
                limit_a: 10.5
            }
        );
        assert!(Profile::from_v16(&json!({"csChargingProfiles": {}}), 3).is_none());
        assert!(Profile::from_v16(&v201(1, 0, "TxProfile", "A", 8.0), 3).is_none());
        assert!(Profile::from_v16(&v16(1, 0, "TxProfile", "kW", 8.0), 3).is_none());
    }

    #[test]
    fn reads_v201_profiles_first_period() {
        let p = Profile::from_v201(&v201(3, 1, "ChargingStationMaxProfile", "A", 12.0), 3);
        assert_eq!(
            p.map(|p| (p.id, p.stack_level, p.limit_a)),
            Some((3, 1, 12.0))
        );
        assert!(Profile::from_v201(&v16(1, 0, "TxProfile", "A", 8.0), 3).is_none());
        assert!(
            Profile::from_v201(&json!({"chargingProfile": {"chargingSchedule": []}}), 3).is_none()
        );
    }

    #[test]
    fn watts_become_amps_per_phase() {
        let three = Profile::from_v16(&v16(1, 0, "TxProfile", "W", 6900.0), 3).unwrap();
        assert!((three.limit_a - 10.0).abs() < 1e-9);
        let one = Profile::from_v201(&v201(1, 0, "TxProfile", "W", 2300.0), 1).unwrap();
        assert!((one.limit_a - 10.0).abs() < 1e-9);
    }

    #[test]
    fn limit_is_the_minimum_capped_at_max() {
        let mut store = ProfileStore::default();
        assert_eq!(store.limit_a(16.0), 16.0);
        store.set(Profile::from_v16(&v16(1, 0, "TxDefaultProfile", "A", 32.0), 3).unwrap());
        assert_eq!(store.limit_a(16.0), 16.0);
        store.set(Profile::from_v16(&v16(2, 0, "ChargePointMaxProfile", "A", 10.0), 3).unwrap());
        store.set(Profile::from_v16(&v16(3, 1, "TxDefaultProfile", "W", 9660.0), 3).unwrap());
        assert_eq!(store.len(), 3);
        assert!((store.limit_a(16.0) - 10.0).abs() < 1e-9);
        // Same id replaces.
        store.set(Profile::from_v16(&v16(2, 0, "ChargePointMaxProfile", "A", 8.0), 3).unwrap());
        assert_eq!(store.len(), 3);
        assert_eq!(store.limit_a(16.0), 8.0);
        // Same purpose and stack level replaces, under a new id.
        store.set(Profile::from_v16(&v16(9, 0, "ChargePointMaxProfile", "A", 14.0), 3).unwrap());
        assert_eq!(store.len(), 3);
        assert!((store.limit_a(16.0) - 14.0).abs() < 1e-9);
    }

    #[test]
    fn clear_by_id_purpose_and_level() {
        let mut store = ProfileStore::default();
        for (id, level, purpose, limit) in [
            (1, 0, "TxDefaultProfile", 10.0),
            (2, 1, "TxDefaultProfile", 8.0),
            (3, 0, "ChargingStationMaxProfile", 12.0),
        ] {
            store.set(Profile::from_v201(&v201(id, level, purpose, "A", limit), 3).unwrap());
        }
        assert!(store.clear(&Clear::from_v16(&json!({"id": 2, "stackLevel": 0}))));
        assert_eq!((store.len(), store.limit_a(16.0)), (2, 10.0));
        assert!(!store.clear(&Clear::from_v16(&json!({"id": 2}))));
        let by_purpose =
            json!({"chargingProfileCriteria": {"chargingProfilePurpose": "TxDefaultProfile"}});
        assert!(store.clear(&Clear::from_v201(&by_purpose)));
        assert_eq!((store.len(), store.limit_a(16.0)), (1, 12.0));
        assert!(!store.clear(&Clear::from_v201(
            &json!({"chargingProfileCriteria": {"stackLevel": 5}})
        )));
        assert!(store.clear(&Clear::from_v201(&json!({"chargingProfileId": 3}))));
        assert_eq!(store.limit_a(16.0), 16.0);
        // No criteria at all clears everything.
        store.set(Profile::from_v16(&v16(4, 0, "TxProfile", "A", 7.0), 3).unwrap());
        assert!(store.clear(&Clear::from_v16(&json!({}))));
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn draw_ramps_up_down_and_pauses() {
        assert_eq!(target_a(5.9), 0.0);
        assert_eq!(target_a(6.0), 6.0);
        // Up at 8 A/s.
        assert_eq!(ramp(0.0, 16.0, 8.0, 0.5), 4.0);
        assert_eq!(ramp(14.0, 16.0, 8.0, 1.0), 16.0);
        // Down at twice that.
        assert_eq!(ramp(16.0, 10.0, 8.0, 0.25), 12.0);
        assert_eq!(ramp(16.0, 10.0, 8.0, 1.0), 10.0);
        // A pause is immediate; rate 0 follows at once.
        assert_eq!(ramp(16.0, 0.0, 8.0, 0.1), 0.0);
        assert_eq!(ramp(6.0, 16.0, 0.0, 0.1), 16.0);
        assert_eq!(ramp(6.0, 16.0, 8.0, -1.0), 6.0);
    }
}
