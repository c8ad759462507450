//! The periodic meter payloads of a site charger: per-phase `Current.Import` plus the energy
//! register, so that a CSMS doing load management sees what each charger draws.
//!
//! Same style and schema rules as `crate::payloads` (a unit test validates them against the
//! vendored OCA schemas). 1.6 sends them as MeterValues for the running transaction; 2.0.1 as a
//! TransactionEvent Updated (MeterValuePeriodic), which is where 2.0.1 puts transaction samples.

use serde_json::{Value, json};

use crate::payloads::now;

const PHASES: [&str; 3] = ["L1", "L2", "L3"];

/// Amps and Wh rounded the way a meter would report them.
fn amps(a: f64) -> f64 {
    (a * 100.0).round() / 100.0
}

/// 1.6 MeterValues: `draw_a` on each of the first `phases` phases, and `wh` imported.
pub fn v16_meter_values(transaction_id: i64, phases: u32, draw_a: f64, wh: f64) -> Value {
    let mut sampled: Vec<Value> = PHASES
        .iter()
        .take(phases as usize)
        .map(|phase| {
            json!({
                "value": amps(draw_a).to_string(),
                "context": "Sample.Periodic",
                "measurand": "Current.Import",
                "phase": phase,
                "unit": "A",
            })
        })
        .collect();
    sampled.push(json!({
        "value": format!("{:.0}", wh.max(0.0)),
        "context": "Sample.Periodic",
        "measurand": "Energy.Active.Import.Register",
        "unit": "Wh",
    }));
    json!({
        "connectorId": 1,
        "transactionId": transaction_id,
        "meterValue": [{ "timestamp": now(), "sampledValue": sampled }],
    })
}

/// 2.0.1 TransactionEvent Updated with the same samples.
pub fn v201_updated(transaction_id: &str, seq_no: u32, phases: u32, draw_a: f64, wh: f64) -> Value {
    let mut sampled: Vec<Value> = PHASES
        .iter()
        .take(phases as usize)
        .map(|phase| {
            json!({
                "value": amps(draw_a),
                "context": "Sample.Periodic",
                "measurand": "Current.Import",
                "phase": phase,
                "unitOfMeasure": { "unit": "A" },
            })
        })
        .collect();
    sampled.push(json!({
        "value": wh.max(0.0).round(),
        "context": "Sample.Periodic",
        "measurand": "Energy.Active.Import.Register",
        "unitOfMeasure": { "unit": "Wh" },
    }));
    json!({
        "eventType": "Updated",
        "timestamp": now(),
        "triggerReason": "MeterValuePeriodic",
        "seqNo": seq_no,
        "transactionInfo": { "transactionId": transaction_id, "chargingState": "Charging" },
        "evse": { "id": 1, "connectorId": 1 },
        "meterValue": [{ "timestamp": now(), "sampledValue": sampled }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(dir: &str, file: &str, draft: jsonschema::Draft, payload: &Value) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../node/schemas")
            .join(dir)
            .join(file);
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let validator = jsonschema::options()
            .with_draft(draft)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{file}: {payload} is invalid: {errors:?}"
        );
    }

    #[test]
    fn samples_match_the_oca_schemas() {
        for phases in 1..=3 {
            let v16 = v16_meter_values(42, phases, 12.345, 1234.6);
            let sampled = v16["meterValue"][0]["sampledValue"].as_array().unwrap();
            assert_eq!(sampled.len(), phases as usize + 1);
            assert_eq!(sampled[0]["value"], "12.35");
            validate("v16", "MeterValues.json", jsonschema::Draft::Draft4, &v16);
            let v201 = v201_updated("tx-1", 3, phases, 12.345, 1234.6);
            validate(
                "v201",
                "TransactionEventRequest.json",
                jsonschema::Draft::Draft6,
                &v201,
            );
        }
    }
}
