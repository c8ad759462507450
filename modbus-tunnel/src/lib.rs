//! Modbus through the OCPP overlay.
//!
//! Peers of the overlay read site Modbus devices (grid meters above all, for dynamic load
//! management) through a gateway node, without a VPN into the fieldbus. This crate holds the
//! pieces, one concept per module:
//!
//! - [`pdu`]: strict parsing and encoding of Modbus read and write request PDUs;
//! - [`allow`]: the allow-list deciding which peer may read (and write) which registers;
//! - [`transfer`]: the JSON payloads of the overlay CALL `ModbusTransfer`;
//! - [`map`]: meter register maps (SunSpec 201–204, Eastron SDM630, generic) and plausibility;
//! - [`gateway`]: devices over Modbus TCP/RTU with timeouts, lazy reconnects and meter polls.

pub mod allow;
pub mod gateway;
pub mod map;
pub mod pdu;
pub mod transfer;

pub use allow::{AllowList, AllowRule, RangeRule, Refusal};
pub use gateway::{
    Device, GatewayError, ReadMeterError, Transport, WriteGrant, read_meter, serve_transfer,
};
pub use map::{Map, MeterError, Plausibility, Reading};
pub use pdu::{PduError, ReadData, ReadKind, ReadRequest, Request, WriteRequest};
pub use transfer::{Status, TransferRequest, TransferResponse};
