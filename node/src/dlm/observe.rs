//! The engine stage through which load management learns about the site: chargers coming and
//! going, their transactions and measured current (from the frames they send), and the limits
//! the CSMS sets (from the profiles written to them). It only watches: every frame passes on
//! unchanged, and what it learns goes to the DLM loop over a bounded channel, so a slow loop
//! can never hold up a frame.
//!
//! Only the few actions it reads are parsed; every other frame costs one string compare.

use std::collections::HashMap;

use routing::LinkId;
use serde_json::Value;
use tokio::sync::mpsc;
use wire::MessageType;

use super::allocate::Phases;
use super::control::SiteEvent;
use super::profile::CsmsProfiles;
use crate::engine::stages::{FromPlain, ToPlain};
use crate::engine::{Cx, Stage, Verdict};

pub struct Observe {
    tx: mpsc::Sender<SiteEvent>,
    csms: HashMap<String, CsmsProfiles>,
    dropped: prometheus::IntCounter,
}

impl Observe {
    pub fn new(tx: mpsc::Sender<SiteEvent>, dropped: prometheus::IntCounter) -> Self {
        Observe {
            tx,
            csms: HashMap::new(),
            dropped,
        }
    }

    fn send(&self, event: SiteEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }
}

impl Stage for Observe {
    fn name(&self) -> &'static str {
        "dlm"
    }

    fn on_plain(&mut self, f: &FromPlain<'_, '_>, _cx: &mut Cx<'_>) -> Verdict {
        if f.frame.message_type() != MessageType::Call {
            return Verdict::Continue;
        }
        let action = f.action();
        if !matches!(
            action,
            "MeterValues" | "StartTransaction" | "StopTransaction" | "TransactionEvent"
        ) {
            return Verdict::Continue;
        }
        let Ok(p) = f.payload() else {
            return Verdict::Continue;
        };
        let id = f.charger.to_owned();
        let active = match action {
            "StartTransaction" => Some(true),
            "StopTransaction" => Some(false),
            "TransactionEvent" => match p["eventType"].as_str() {
                Some("Ended") => Some(false),
                Some(_) => Some(true),
                None => None,
            },
            // A 1.6 MeterValues inside a transaction: how a restarted node learns of it.
            _ => p.get("transactionId").map(|_| true),
        };
        if let Some(active) = active {
            self.send(SiteEvent::Transaction {
                id: id.clone(),
                active,
            });
        }
        if let Some(amps) = current_import(p) {
            self.send(SiteEvent::Draw { id, amps });
        }
        Verdict::Continue
    }

    fn egress_plain(&mut self, f: &ToPlain<'_, '_>, _cx: &mut Cx<'_>) -> Option<String> {
        if f.frame.message_type() != MessageType::Call {
            return None;
        }
        let action = f.frame.action().unwrap_or_default();
        if !matches!(action, "SetChargingProfile" | "ClearChargingProfile") {
            return None;
        }
        let payload: Value = f
            .frame
            .payload()
            .and_then(|p| serde_json::from_str(p.get()).ok())?;
        let profiles = self.csms.entry(f.charger.to_owned()).or_default();
        let (changed, resend) = if action == "SetChargingProfile" {
            (profiles.set(f.version, &payload), false)
        } else {
            (true, profiles.clear(f.version, &payload))
        };
        if changed || resend {
            let limit = profiles.limit();
            self.send(SiteEvent::CsmsLimit {
                id: f.charger.to_owned(),
                limit,
                resend,
            });
        }
        None
    }

    fn charger_up(&mut self, _link: LinkId, charger: &str, _cx: &mut Cx<'_>) {
        self.csms.remove(charger);
        self.send(SiteEvent::Connected(charger.to_owned()));
    }

    fn charger_down(&mut self, _link: LinkId, charger: &str, _cx: &mut Cx<'_>) {
        self.csms.remove(charger);
        self.send(SiteEvent::Disconnected(charger.to_owned()));
    }
}

/// The per-phase `Current.Import` of the last meter value in a MeterValues or TransactionEvent
/// (1.6 gives values as strings, 2.x as numbers). A value without a phase counts on every phase
/// (the controller keeps only the phases the charger uses).
pub fn current_import(p: &Value) -> Option<Phases> {
    let last = p["meterValue"].as_array()?.last()?;
    let mut amps = [0.0; 3];
    let mut any = false;
    for s in last["sampledValue"].as_array()? {
        if s["measurand"] != "Current.Import" {
            continue;
        }
        let v = match &s["value"] {
            Value::String(t) => t.parse::<f64>().ok(),
            v => v.as_f64(),
        };
        let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) else {
            continue;
        };
        match s["phase"].as_str() {
            Some(ph) if ph.starts_with("L1") => amps[0] = v,
            Some(ph) if ph.starts_with("L2") => amps[1] = v,
            Some(ph) if ph.starts_with("L3") => amps[2] = v,
            None => amps = [v; 3],
            Some(_) => continue,
        }
        any = true;
    }
    any.then_some(amps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn current_import_of_both_versions() {
        let v16 = json!({"connectorId": 1, "transactionId": 5, "meterValue": [{"timestamp": "t",
            "sampledValue": [
                {"value": "12.5", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                {"value": "11", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                {"value": "1000", "measurand": "Energy.Active.Import.Register"}]}]});
        assert_eq!(current_import(&v16), Some([12.5, 11.0, 0.0]));
        let v2 = json!({"eventType": "Updated", "meterValue": [{"timestamp": "t",
            "sampledValue": [{"value": 7.0, "measurand": "Current.Import"}]}]});
        assert_eq!(current_import(&v2), Some([7.0; 3]));
        assert_eq!(
            current_import(&json!({"meterValue": [{"sampledValue": [
            {"value": "-3", "measurand": "Current.Import", "phase": "L1"}]}]})),
            None
        );
        assert_eq!(current_import(&json!({})), None);
    }
}
