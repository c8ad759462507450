//! The JSON payloads of the overlay CALL `ModbusTransfer`.
//!
//! A peer sends one Modbus PDU for one target and unit; the gateway answers with the reply PDU or
//! a status saying why there is none. Size limits are enforced while deserializing (the base64
//! string is bounded before it is decoded), so a handler cannot forget them; the raw payload
//! limit is checked with [`check_payload_len`] before the JSON is parsed at all.
//!
//! ```json
//! {"target": "grid-meter", "unitId": 1, "pdu": "AwAAAAI="}
//! {"status": "Ok", "pdu": "AwQAAQAC"}
//! {"status": "Exception", "pdu": "gwI=", "exceptionCode": 2}
//! {"status": "Refused", "reason": "..."}
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::pdu::MAX_PDU_LEN;

/// The overlay action name.
pub const ACTION: &str = "ModbusTransfer";
/// Largest accepted JSON payload of a request or response.
pub const MAX_PAYLOAD_BYTES: usize = 1024;
/// Longest base64 text of a [`MAX_PDU_LEN`]-byte PDU.
const MAX_PDU_BASE64: usize = MAX_PDU_LEN.div_ceil(3) * 4;

/// Why a transfer payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransferError {
    #[error("ModbusTransfer payload is {0} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge(usize),
}

/// Rejects raw payloads above [`MAX_PAYLOAD_BYTES`]; call before parsing the JSON.
pub fn check_payload_len(len: usize) -> Result<(), TransferError> {
    if len > MAX_PAYLOAD_BYTES {
        Err(TransferError::PayloadTooLarge(len))
    } else {
        Ok(())
    }
}

/// A `ModbusTransfer` request. `pdu` holds the decoded bytes (base64 on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferRequest {
    pub target: String,
    pub unit_id: u8,
    #[serde(with = "pdu_base64")]
    pub pdu: Vec<u8>,
}

impl TransferRequest {
    pub fn new(target: impl Into<String>, unit_id: u8, pdu: Vec<u8>) -> Self {
        Self {
            target: target.into(),
            unit_id,
            pdu,
        }
    }
}

/// Outcome of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The device answered; `pdu` is its reply.
    Ok,
    /// The device answered with a Modbus exception; `exceptionCode` (and `pdu`) carry it.
    Exception,
    /// The gateway refused the request (allow-list, writes, malformed PDU); see `reason`.
    Refused,
    /// The device was reached but did not answer in time.
    Timeout,
    /// The device could not be reached (connect failed, serial port missing).
    Unreachable,
    /// The device answered with something that is not a valid reply.
    BadReply,
}

/// A `ModbusTransfer` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferResponse {
    pub status: Status,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_pdu_base64"
    )]
    pub pdu: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_code: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TransferResponse {
    fn bare(status: Status) -> Self {
        Self {
            status,
            pdu: None,
            exception_code: None,
            reason: None,
        }
    }

    fn with_reason(status: Status, reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            ..Self::bare(status)
        }
    }

    /// The device's reply PDU.
    pub fn ok(pdu: Vec<u8>) -> Self {
        Self {
            pdu: Some(pdu),
            ..Self::bare(Status::Ok)
        }
    }

    /// A Modbus exception `code` to function `fc`; the exception PDU is included.
    pub fn exception(fc: u8, code: u8) -> Self {
        Self {
            pdu: Some(crate::pdu::encode_exception(fc, code)),
            exception_code: Some(code),
            ..Self::bare(Status::Exception)
        }
    }

    pub fn refused(reason: impl Into<String>) -> Self {
        Self::with_reason(Status::Refused, reason)
    }

    pub fn timeout() -> Self {
        Self::with_reason(Status::Timeout, "the device did not answer in time")
    }

    pub fn unreachable(reason: impl Into<String>) -> Self {
        Self::with_reason(Status::Unreachable, reason)
    }

    pub fn bad_reply(reason: impl Into<String>) -> Self {
        Self::with_reason(Status::BadReply, reason)
    }
}

fn decode_bounded(text: &str) -> Result<Vec<u8>, String> {
    if text.len() > MAX_PDU_BASE64 {
        return Err(format!("pdu is longer than {MAX_PDU_LEN} bytes"));
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("pdu is not valid base64: {e}"))?;
    if bytes.len() > MAX_PDU_LEN {
        return Err(format!(
            "pdu is {} bytes; the limit is {MAX_PDU_LEN}",
            bytes.len()
        ));
    }
    if bytes.is_empty() {
        return Err("pdu is empty".to_owned());
    }
    Ok(bytes)
}

mod pdu_base64 {
    use super::{STANDARD, decode_bounded};
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(pdu: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(pdu))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        decode_bounded(&text).map_err(D::Error::custom)
    }
}

mod opt_pdu_base64 {
    use super::{STANDARD, decode_bounded};
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(pdu: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match pdu {
            Some(pdu) => s.serialize_str(&STANDARD.encode(pdu)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.map(|t| decode_bounded(&t).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    //! serde_json is not a dependency of this crate; TOML exercises the same serde derive
    //! (field names, renames, base64, bounds).
    use super::*;

    #[test]
    fn request_fields_and_base64() {
        let req: TransferRequest =
            toml::from_str("target = \"grid-meter\"\nunitId = 1\npdu = \"AwAAAAI=\"\n")
                .expect("valid request");
        assert_eq!(
            req,
            TransferRequest::new("grid-meter", 1, vec![3, 0, 0, 0, 2])
        );
        let text = toml::to_string(&req).expect("serializes");
        assert!(text.contains("unitId = 1"), "{text}");
        assert!(text.contains("pdu = \"AwAAAAI=\""), "{text}");
    }

    #[test]
    fn request_bounds() {
        let unit =
            toml::from_str::<TransferRequest>("target = \"m\"\nunitId = 256\npdu = \"AwAAAAI=\"\n");
        assert!(unit.is_err());
        let bad = toml::from_str::<TransferRequest>("target = \"m\"\nunitId = 1\npdu = \"%%%\"\n")
            .expect_err("not base64");
        assert!(bad.to_string().contains("base64"), "{bad}");
        let big = STANDARD.encode(vec![3u8; 254]);
        let err = toml::from_str::<TransferRequest>(&format!(
            "target = \"m\"\nunitId = 1\npdu = \"{big}\"\n"
        ))
        .expect_err("too long");
        assert!(err.to_string().contains("253"), "{err}");
        let max = STANDARD.encode(vec![3u8; 253]);
        assert!(
            toml::from_str::<TransferRequest>(&format!(
                "target = \"m\"\nunitId = 1\npdu = \"{max}\"\n"
            ))
            .is_ok()
        );
        let empty = toml::from_str::<TransferRequest>("target = \"m\"\nunitId = 1\npdu = \"\"\n");
        assert!(empty.is_err());
        let extra = toml::from_str::<TransferRequest>(
            "target = \"m\"\nunitId = 1\npdu = \"AwAAAAI=\"\nwrite = true\n",
        );
        assert!(extra.is_err());
    }

    #[test]
    fn payload_limit() {
        assert_eq!(check_payload_len(1024), Ok(()));
        assert_eq!(
            check_payload_len(1025),
            Err(TransferError::PayloadTooLarge(1025))
        );
    }

    #[test]
    fn response_shapes() {
        let ok = toml::to_string(&TransferResponse::ok(vec![3, 2, 0, 7])).expect("serializes");
        assert!(ok.contains("status = \"Ok\""), "{ok}");
        assert!(ok.contains("pdu = \"AwIABw==\""), "{ok}");
        assert!(!ok.contains("reason"), "{ok}");
        let exc = TransferResponse::exception(3, 2);
        assert_eq!(exc.pdu, Some(vec![0x83, 2]));
        let text = toml::to_string(&exc).expect("serializes");
        assert!(text.contains("exceptionCode = 2"), "{text}");
        let back: TransferResponse = toml::from_str(&text).expect("parses");
        assert_eq!(back, exc);
        for (resp, status) in [
            (TransferResponse::refused("no"), "Refused"),
            (TransferResponse::timeout(), "Timeout"),
            (TransferResponse::unreachable("down"), "Unreachable"),
            (TransferResponse::bad_reply("junk"), "BadReply"),
        ] {
            let text = toml::to_string(&resp).expect("serializes");
            assert!(text.contains(&format!("status = \"{status}\"")), "{text}");
            assert!(text.contains("reason = "), "{text}");
            assert!(!text.contains("pdu"), "{text}");
        }
    }
}
