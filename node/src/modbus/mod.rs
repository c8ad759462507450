//! The node's Modbus devices and the tunnel's local handler: a `ModbusTransfer` CALL addressed
//! to this node is checked against the allow-list (who asks is the CALL's `path[0]`, which
//! the overlay only accepts from the link that speaks for it), parsed, relayed to the named
//! device, and answered with the device's response PDU, its Modbus exception, or a status that
//! says why not.
//!
//! A write (function codes 5, 6, 15, 16) also needs a valid signature in the CALL payload's
//! `signatures` member (message type 2, action `ModbusTransfer`, destination this node's id)
//! by a `[[signing.role]]` key whose role allows the pseudo-action `ModbusWrite`, and must lie
//! inside the allow rule's `write_ranges`. The roles are the ones the signature stage uses,
//! taken from the same watch channel (so a SIGHUP reload applies here too); the handler keeps
//! its own replay cache. A refused write is a `modbus_write_refused` security event.
//!
//! The devices are the `[[meter]]` entries; the DLM loop reads the grid meter through the same
//! [`Device`], whose requests are serialized, so the tunnel and the loop never interleave on
//! one serial line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use modbus_tunnel::allow::AllowList;
use modbus_tunnel::gateway::{Device, Transport, WriteGrant};
use modbus_tunnel::transfer::{TransferRequest, TransferResponse};
use serde::Deserialize as _;
use serde_json::Value;
use signing::{Message, ReplayCache};
use tokio::sync::watch;

use crate::config::{MeterConfig, MeterTransport};
use crate::engine::handlers::Reply;
use crate::engine::{LocalHandler, LocalReply, LocalRequest};
use crate::policy::Policy;

/// The pseudo-action a role's `actions` must allow for its keys to sign Modbus writes.
pub const WRITE_ACTION: &str = "ModbusWrite";
/// The refusal of an unsigned or unauthorized write.
pub const WRITE_REFUSED: &str = "a write needs a signature by a role that grants ModbusWrite";

/// Where a refused write is reported: `(kind, detail)`, a security event in the node.
pub type Alarm = Arc<dyn Fn(&'static str, String) + Send + Sync>;

/// The configured devices by name, each with its default unit id.
#[derive(Default, Clone)]
pub struct Devices(HashMap<String, Arc<Device>>);

impl Devices {
    pub fn from_config(meters: &[MeterConfig]) -> Self {
        let mut map = HashMap::new();
        for m in meters {
            let transport = match m.transport {
                MeterTransport::Tcp => match m.address {
                    Some(a) => Transport::Tcp(a),
                    None => continue,
                },
                MeterTransport::Rtu => match &m.device {
                    Some(path) => Transport::Rtu {
                        path: path.clone(),
                        baud: m.baud,
                    },
                    None => continue,
                },
            };
            let device = Device::new(
                m.name.clone(),
                transport,
                Duration::from_millis(m.timeout_ms),
            );
            map.insert(m.name.clone(), Arc::new(device));
        }
        Devices(map)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Device>> {
        self.0.get(name).cloned()
    }
}

pub struct Tunnel {
    devices: Devices,
    allow: AllowList,
    writes: Arc<Writes>,
}

/// What checks a write's signature: the node's id (the signed destination), the current
/// roles, and a replay cache of its own.
struct Writes {
    own_id: String,
    policies: watch::Receiver<Arc<Policy>>,
    /// `(capacity, cache)`; held only for the check, never across an await.
    replay: Mutex<(usize, ReplayCache)>,
    alarm: Alarm,
}

impl Tunnel {
    pub fn new(
        devices: Devices,
        allow: AllowList,
        own_id: String,
        policies: watch::Receiver<Arc<Policy>>,
        alarm: Alarm,
    ) -> Self {
        let capacity = policies.borrow().replay_cache;
        Tunnel {
            devices,
            allow,
            writes: Arc::new(Writes {
                own_id,
                policies,
                replay: Mutex::new((capacity, ReplayCache::new(capacity))),
                alarm,
            }),
        }
    }
}

impl LocalHandler for Tunnel {
    fn name(&self) -> &'static str {
        "modbus-tunnel"
    }

    fn handle(&self, request: LocalRequest) -> Reply {
        let devices = self.devices.clone();
        let allow = self.allow.clone();
        let writes = self.writes.clone();
        Box::pin(async move {
            let answer = transfer(&devices, &allow, &writes, &request).await;
            match serde_json::to_string(&answer) {
                Ok(text) => LocalReply::Result(text),
                Err(e) => LocalReply::Error {
                    code: wire::ErrorCode::InternalError,
                    description: e.to_string(),
                },
            }
        })
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Writes {
    /// The signers that grant this write, or why there are none.
    fn authorize(&self, payload: &Value) -> Result<Vec<String>, String> {
        // One Arc clone per request; the frame path never waits on it.
        let policy = self.policies.borrow().clone();
        let message = Message {
            message_type: 2,
            action: modbus_tunnel::transfer::ACTION,
            destination: &self.own_id,
        };
        let mut guard = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        let (capacity, replay) = &mut *guard;
        if *capacity != policy.replay_cache {
            // A reload changed the bound: seen signatures stay refused.
            let mut next = ReplayCache::new(policy.replay_cache);
            std::mem::swap(&mut next, replay);
            replay.absorb(next);
            *capacity = policy.replay_cache;
        }
        policy
            .set
            .authorize(&message, payload, unix_now(), replay, WRITE_ACTION)
    }
}

async fn transfer(
    devices: &Devices,
    allow: &AllowList,
    writes: &Writes,
    r: &LocalRequest,
) -> TransferResponse {
    if let Err(e) = modbus_tunnel::transfer::check_payload_len(r.payload.len()) {
        return TransferResponse::refused(e.to_string());
    }
    let bad = |e: serde_json::Error| {
        TransferResponse::refused(format!("bad ModbusTransfer request: {e}"))
    };
    let mut tree: Value = match serde_json::from_str(&r.payload) {
        Ok(v) => v,
        Err(e) => return bad(e),
    };
    // The signatures are checked on the whole tree; the request itself is the rest.
    let signed = tree.clone();
    if let Value::Object(map) = &mut tree {
        map.remove("signatures");
    }
    let req = match TransferRequest::deserialize(tree) {
        Ok(q) => q,
        Err(e) => return bad(e),
    };
    let Some(device) = devices.get(&req.target) else {
        return TransferResponse::refused(format!("no device named {:?}", req.target));
    };
    let grant = if modbus_tunnel::pdu::is_write(&req.pdu) {
        match writes.authorize(&signed) {
            Ok(signers) => {
                tracing::info!(from = %r.from, target = %req.target, ?signers, "ModbusTransfer: signed write");
                WriteGrant::Granted
            }
            Err(why) => {
                (writes.alarm)(
                    "modbus_write_refused",
                    format!(
                        "ModbusTransfer write from {:?} to {:?} refused: {why}",
                        r.from, req.target
                    ),
                );
                return TransferResponse::refused(format!("{WRITE_REFUSED} ({why})"));
            }
        }
    } else {
        WriteGrant::None
    };
    let answer = modbus_tunnel::gateway::serve_transfer(allow, &r.from, &device, &req, grant).await;
    if let Some(reason) = &answer.reason {
        tracing::info!(from = %r.from, target = %req.target, status = ?answer.status, "ModbusTransfer: {reason}");
    }
    answer
}
