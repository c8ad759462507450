//! Frames and codecs of the OCPP overlay, with no I/O.
//!
//! * [`text`]: OCPP-J text frames, plain (`[2,id,action,payload]` …) and overlay
//!   (`[2,dest,path,id,action,payload]` …), message types 2 to 6 (ARCHITECTURE §3.1).
//! * [`binary`]: the binary frame that carries file chunks between nodes (§3.3).
//! * [`ErrorCode`] and [`OcppVersion`]: error codes spelled the way the negotiated version spells them.
//!
//! Payloads are never parsed into a tree here: a decoded frame borrows its payload as a
//! [`serde_json::value::RawValue`], so a forwarder re-emits the exact bytes it received and any
//! end-to-end signature inside stays valid. Every size and count is checked against [`Limits`]
//! before anything is allocated for it.

pub mod binary;
mod error_code;
mod json;
mod limits;
mod route;
pub mod text;
mod version;

pub use error_code::ErrorCode;
pub use json::Json;
pub use limits::Limits;
pub use route::Route;
pub use version::{OcppVersion, UnknownVersion};

/// Message type numbers shared by text and binary frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Call = 2,
    CallResult = 3,
    CallError = 4,
    /// OCPP 2.1 and overlay links only.
    CallResultError = 5,
    /// OCPP 2.1 and overlay links only; never answered.
    Send = 6,
}

impl MessageType {
    pub fn from_number(n: u64) -> Option<Self> {
        Some(match n {
            2 => Self::Call,
            3 => Self::CallResult,
            4 => Self::CallError,
            5 => Self::CallResultError,
            6 => Self::Send,
            _ => return None,
        })
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    /// Types 5 and 6 exist only from OCPP 2.1 on (and on overlay links).
    pub fn allowed_in(self, version: OcppVersion) -> bool {
        !matches!(self, Self::CallResultError | Self::Send) || version >= OcppVersion::V21
    }
}
