//! The node's Modbus devices and the tunnel's local handler: a `ModbusTransfer` CALL addressed
//! to this node is checked against the allow-list (who asks is the CALL's `path[0]`, which
//! the overlay only accepts from the link that speaks for it), parsed (reads only: function
//! codes 1–4), relayed to the named device, and answered with the device's response PDU, its
//! Modbus exception, or a status that says why not.
//!
//! The devices are the `[[meter]]` entries; the DLM loop reads the grid meter through the same
//! [`Device`], whose requests are serialized, so the tunnel and the loop never interleave on
//! one serial line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use modbus_tunnel::allow::AllowList;
use modbus_tunnel::gateway::{Device, Transport};
use modbus_tunnel::transfer::{TransferRequest, TransferResponse};

use crate::config::{MeterConfig, MeterTransport};
use crate::engine::handlers::Reply;
use crate::engine::{LocalHandler, LocalReply, LocalRequest};

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
}

impl Tunnel {
    pub fn new(devices: Devices, allow: AllowList) -> Self {
        Tunnel { devices, allow }
    }
}

impl LocalHandler for Tunnel {
    fn name(&self) -> &'static str {
        "modbus-tunnel"
    }

    fn handle(&self, request: LocalRequest) -> Reply {
        let devices = self.devices.clone();
        let allow = self.allow.clone();
        Box::pin(async move {
            let answer = transfer(&devices, &allow, &request).await;
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

async fn transfer(devices: &Devices, allow: &AllowList, r: &LocalRequest) -> TransferResponse {
    if let Err(e) = modbus_tunnel::transfer::check_payload_len(r.payload.len()) {
        return TransferResponse::refused(e.to_string());
    }
    let req: TransferRequest = match serde_json::from_str(&r.payload) {
        Ok(q) => q,
        Err(e) => return TransferResponse::refused(format!("bad ModbusTransfer request: {e}")),
    };
    let Some(device) = devices.get(&req.target) else {
        return TransferResponse::refused(format!("no device named {:?}", req.target));
    };
    let answer = modbus_tunnel::gateway::serve_transfer(allow, &r.from, &device, &req).await;
    if let Some(reason) = &answer.reason {
        tracing::info!(from = %r.from, target = %req.target, status = ?answer.status, "ModbusTransfer: {reason}");
    }
    answer
}
