//! The gateway side: one connection per Modbus device, used for tunnelled reads and writes and
//! for meter polls.
//!
//! Field devices are slow, single-threaded and fragile, so each [`Device`] owns one connection,
//! serializes its requests, bounds every request by a timeout, drops the connection after any
//! transport failure and reconnects lazily on the next request. Results are mapped onto the
//! four outcomes a peer can act on (exception, timeout, unreachable, bad reply).

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout_at};
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{Request, Response, Slave};
use tokio_serial::SerialPortBuilderExt as _;

use crate::allow::AllowList;
use crate::map::{Map, MeterError, Reading};
use crate::pdu::{self, ReadData, ReadKind, ReadRequest, WriteRequest};
use crate::transfer::{TransferRequest, TransferResponse};

/// How a device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP (or a Modbus TCP to RTU gateway).
    Tcp(SocketAddr),
    /// Modbus RTU on a serial line (8N1).
    Rtu { path: String, baud: u32 },
}

/// Why a read produced no data.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GatewayError {
    #[error("Modbus exception {0}")]
    Exception(u8),
    #[error("the device did not answer in time")]
    Timeout,
    #[error("device unreachable: {0}")]
    Unreachable(String),
    #[error("bad reply: {0}")]
    BadReply(String),
}

/// One Modbus device: a lazily (re)connected, serialized connection.
pub struct Device {
    name: String,
    transport: Transport,
    timeout: Duration,
    conn: Mutex<Option<Context>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device; nothing connects until the first request. `timeout` bounds each request,
    /// including a connect it needs.
    pub fn new(name: impl Into<String>, transport: Transport, timeout: Duration) -> Self {
        Self {
            name: name.into(),
            transport,
            timeout,
            conn: Mutex::new(None),
        }
    }

    /// The target name peers use for this device.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    async fn connect(&self, unit: u8) -> Result<Context, String> {
        let slave = Slave(unit);
        match &self.transport {
            Transport::Tcp(addr) => tokio_modbus::client::tcp::connect_slave(*addr, slave)
                .await
                .map_err(|e| format!("{}: connect to {addr}: {e}", self.name)),
            Transport::Rtu { path, baud } => {
                let port = tokio_serial::new(path, *baud)
                    .open_native_async()
                    .map_err(|e| format!("{}: open {path}: {e}", self.name))?;
                Ok(tokio_modbus::client::rtu::attach_slave(port, slave))
            }
        }
    }

    /// Reads `req` from unit `unit`. The timeout starts once this request has the connection
    /// (requests queue behind each other); a request that fails [`ReadRequest::validate`] is
    /// answered with `BadReply` without touching the device.
    pub async fn read(&self, unit: u8, req: &ReadRequest) -> Result<ReadData, GatewayError> {
        req.validate()
            .map_err(|e| GatewayError::BadReply(format!("invalid request: {e}")))?;
        let request = match req.kind {
            ReadKind::Coils => Request::ReadCoils(req.address, req.count),
            ReadKind::DiscreteInputs => Request::ReadDiscreteInputs(req.address, req.count),
            ReadKind::HoldingRegisters => Request::ReadHoldingRegisters(req.address, req.count),
            ReadKind::InputRegisters => Request::ReadInputRegisters(req.address, req.count),
        };
        self.call(unit, request, |response| check_response(req, response))
            .await
    }

    /// Writes `req` to unit `unit`; `Ok` only when the device's reply echoes the request
    /// exactly (address and value, or address and quantity). Same timeout and validation
    /// rules as [`Device::read`]. Whether the write is allowed is the caller's to decide.
    pub async fn write(&self, unit: u8, req: &WriteRequest) -> Result<(), GatewayError> {
        req.validate()
            .map_err(|e| GatewayError::BadReply(format!("invalid request: {e}")))?;
        let request = match req {
            WriteRequest::SingleCoil { address, value } => {
                Request::WriteSingleCoil(*address, *value)
            }
            WriteRequest::SingleRegister { address, value } => {
                Request::WriteSingleRegister(*address, *value)
            }
            WriteRequest::MultipleCoils { address, values } => {
                Request::WriteMultipleCoils(*address, values.as_slice().into())
            }
            WriteRequest::MultipleRegisters { address, values } => {
                Request::WriteMultipleRegisters(*address, values.as_slice().into())
            }
        };
        self.call(unit, request, |response| check_echo(req, &response))
            .await
    }

    /// One request on the (re)connected, serialized connection; `check` maps the reply.
    async fn call<T>(
        &self,
        unit: u8,
        request: Request<'_>,
        check: impl FnOnce(Response) -> Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        let mut conn = self.conn.lock().await;
        let deadline = Instant::now() + self.timeout;
        let ctx = match conn.as_mut() {
            Some(ctx) => ctx,
            None => {
                let fresh = match timeout_at(deadline, self.connect(unit)).await {
                    Ok(Ok(ctx)) => ctx,
                    Ok(Err(e)) => return Err(GatewayError::Unreachable(e)),
                    Err(_) => {
                        return Err(GatewayError::Unreachable(format!(
                            "{}: no connection within {:?}",
                            self.name, self.timeout
                        )));
                    }
                };
                conn.insert(fresh)
            }
        };
        ctx.set_slave(Slave(unit));
        let result = match timeout_at(deadline, ctx.call(request)).await {
            Err(_) => Err(GatewayError::Timeout),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(transport_error(&self.name, &e)),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(GatewayError::BadReply(e.to_string())),
            Ok(Ok(Err(code))) => Err(GatewayError::Exception(code.into())),
            Ok(Ok(Ok(response))) => check(response),
        };
        match &result {
            // The connection is still in step after data or an exception; anything else may
            // leave a late or partial reply in the stream, so start over next time.
            Ok(_) | Err(GatewayError::Exception(_)) => {}
            Err(e) => {
                tracing::debug!(device = %self.name, error = %e, "dropping Modbus connection");
                *conn = None;
            }
        }
        result
    }
}

fn transport_error(name: &str, e: &std::io::Error) -> GatewayError {
    use std::io::ErrorKind;
    match e.kind() {
        // Undecodable frames; a closed or reset connection is "unreachable" instead.
        ErrorKind::InvalidData => GatewayError::BadReply(format!("{name}: {e}")),
        ErrorKind::TimedOut => GatewayError::Timeout,
        _ => GatewayError::Unreachable(format!("{name}: {e}")),
    }
}

/// Checks the reply matches the request exactly (kind and item count).
fn check_response(req: &ReadRequest, response: Response) -> Result<ReadData, GatewayError> {
    let count = usize::from(req.count);
    let bad = |what: &str| GatewayError::BadReply(what.to_owned());
    match (req.kind, response) {
        (ReadKind::Coils, Response::ReadCoils(mut bits))
        | (ReadKind::DiscreteInputs, Response::ReadDiscreteInputs(mut bits)) => {
            // Bit replies are padded to whole bytes.
            if bits.len() < count || bits.len() > count.div_ceil(8) * 8 {
                return Err(bad("bit count does not match the request"));
            }
            bits.truncate(count);
            Ok(ReadData::Bits(bits))
        }
        (ReadKind::HoldingRegisters, Response::ReadHoldingRegisters(words))
        | (ReadKind::InputRegisters, Response::ReadInputRegisters(words)) => {
            if words.len() != count {
                return Err(bad("register count does not match the request"));
            }
            Ok(ReadData::Words(words))
        }
        _ => Err(bad("reply does not match the request's function")),
    }
}

/// Checks a write's reply echoes it: FC 5/6 address and value, FC 15/16 address and quantity.
fn check_echo(req: &WriteRequest, response: &Response) -> Result<(), GatewayError> {
    let echoed = match (req, response) {
        (WriteRequest::SingleCoil { address, value }, Response::WriteSingleCoil(a, v)) => {
            a == address && v == value
        }
        (WriteRequest::SingleRegister { address, value }, Response::WriteSingleRegister(a, v)) => {
            a == address && v == value
        }
        (WriteRequest::MultipleCoils { address, .. }, Response::WriteMultipleCoils(a, n))
        | (
            WriteRequest::MultipleRegisters { address, .. },
            Response::WriteMultipleRegisters(a, n),
        ) => a == address && *n == req.count(),
        _ => {
            return Err(GatewayError::BadReply(
                "reply does not match the request's function".into(),
            ));
        }
    };
    if echoed {
        Ok(())
    } else {
        Err(GatewayError::BadReply(format!(
            "the reply {response:?} does not echo the write"
        )))
    }
}

/// Whether the caller has checked a write's grant (in the node: a valid signature by a role
/// that grants `ModbusWrite`). The allow-list's `write_ranges` are checked as well either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteGrant {
    /// Writes are refused.
    None,
    /// This request's write is authorized (still subject to `write_ranges`).
    Granted,
}

/// Relays one raw request PDU to `device` and maps the outcome to a transfer response. The
/// caller has already applied the allow-list (see [`serve_transfer`]). Reads only.
pub async fn transfer(device: &Device, unit: u8, request_pdu: &[u8]) -> TransferResponse {
    let req = match pdu::parse_request(request_pdu) {
        Ok(req) => req,
        Err(e) => return TransferResponse::refused(e.to_string()),
    };
    read_to_response(device, unit, &req).await
}

async fn read_to_response(device: &Device, unit: u8, req: &ReadRequest) -> TransferResponse {
    match device.read(unit, req).await {
        Ok(data) => TransferResponse::ok(pdu::encode_response(req, &data)),
        Err(GatewayError::Exception(code)) => {
            TransferResponse::exception(req.kind.function_code(), code)
        }
        Err(GatewayError::Timeout) => TransferResponse::timeout(),
        Err(GatewayError::Unreachable(why)) => TransferResponse::unreachable(why),
        Err(GatewayError::BadReply(why)) => TransferResponse::bad_reply(why),
    }
}

/// Handles a whole `ModbusTransfer` from `peer`: parses the PDU, checks the allow-list with
/// `device`'s name as target (`ranges` for a read, `write_ranges` for a write), then reads or
/// writes. A write is refused unless `grant` is [`WriteGrant::Granted`]. `request.target` must
/// name `device`.
pub async fn serve_transfer(
    allow: &AllowList,
    peer: &str,
    device: &Device,
    request: &TransferRequest,
    grant: WriteGrant,
) -> TransferResponse {
    if request.target != device.name() {
        return TransferResponse::refused(format!(
            "request is for target {:?}, not {:?}",
            request.target,
            device.name()
        ));
    }
    let parsed = match pdu::parse(&request.pdu) {
        Ok(parsed) => parsed,
        Err(e) => return TransferResponse::refused(e.to_string()),
    };
    match parsed {
        pdu::Request::Read(req) => {
            if let Err(refusal) = allow.check(peer, device.name(), request.unit_id, &req) {
                return TransferResponse::refused(refusal.to_string());
            }
            read_to_response(device, request.unit_id, &req).await
        }
        pdu::Request::Write(req) => {
            if grant != WriteGrant::Granted {
                return TransferResponse::refused(WRITE_NEEDS_GRANT);
            }
            if let Err(refusal) = allow.check_write(peer, device.name(), request.unit_id, &req) {
                return TransferResponse::refused(refusal.to_string());
            }
            match device.write(request.unit_id, &req).await {
                Ok(()) => TransferResponse::ok(req.encode_response()),
                Err(GatewayError::Exception(code)) => {
                    TransferResponse::exception(req.function_code(), code)
                }
                Err(GatewayError::Timeout) => TransferResponse::timeout(),
                Err(GatewayError::Unreachable(why)) => TransferResponse::unreachable(why),
                Err(GatewayError::BadReply(why)) => TransferResponse::bad_reply(why),
            }
        }
    }
}

/// The refusal of a write without its grant.
pub const WRITE_NEEDS_GRANT: &str =
    "writes are refused: a write needs a signature by a role that grants ModbusWrite";

/// Why a meter poll failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ReadMeterError {
    #[error("meter read: {0}")]
    Gateway(#[from] GatewayError),
    #[error("meter data: {0}")]
    Meter(#[from] MeterError),
}

/// Reads every block `map` needs from unit `unit` and decodes the reading.
pub async fn read_meter(device: &Device, unit: u8, map: &Map) -> Result<Reading, ReadMeterError> {
    let mut blocks = Vec::new();
    for req in map.reads() {
        match device.read(unit, &req).await? {
            ReadData::Words(words) => blocks.push((req, words)),
            ReadData::Bits(_) => {
                return Err(
                    GatewayError::BadReply("bits in reply to a register read".into()).into(),
                );
            }
        }
    }
    Ok(map.decode(&blocks)?)
}
