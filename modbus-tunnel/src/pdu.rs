//! Modbus read PDUs: parsing and encoding of the four read function codes.
//!
//! The overlay carries raw Modbus PDUs (function code + data, no unit id, no CRC or MBAP header),
//! so everything that crosses a trust boundary is parsed here first, strictly and without
//! panicking on arbitrary bytes. Only reads (function codes 1–4) exist: writes are refused
//! until signed roles exist, and every other function code is unsupported.

use thiserror::Error;

/// Largest Modbus PDU (256-byte serial ADU minus address and CRC).
pub const MAX_PDU_LEN: usize = 253;
/// Most coils or discrete inputs one request may read (Modbus spec, FC 1 and 2).
pub const MAX_BITS: u16 = 2000;
/// Most registers one request may read (Modbus spec, FC 3 and 4).
pub const MAX_REGISTERS: u16 = 125;

/// Function codes that write; refused outright.
const WRITE_CODES: [u8; 4] = [5, 6, 15, 16];

/// What a read request reads; the discriminant is the Modbus function code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReadKind {
    Coils = 1,
    DiscreteInputs = 2,
    HoldingRegisters = 3,
    InputRegisters = 4,
}

impl ReadKind {
    /// The Modbus function code of this read.
    pub fn function_code(self) -> u8 {
        self as u8
    }

    /// The read kind of a function code, if it is one of the four reads.
    pub fn from_function_code(fc: u8) -> Option<Self> {
        match fc {
            1 => Some(Self::Coils),
            2 => Some(Self::DiscreteInputs),
            3 => Some(Self::HoldingRegisters),
            4 => Some(Self::InputRegisters),
            _ => None,
        }
    }

    /// True for coils and discrete inputs (one bit per item).
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coils | Self::DiscreteInputs)
    }

    /// The most items one request of this kind may read.
    pub fn max_count(self) -> u16 {
        if self.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        }
    }

    /// Short lower-case name, as written in allow-lists and maps.
    pub fn name(self) -> &'static str {
        match self {
            Self::Coils => "coils",
            Self::DiscreteInputs => "discrete",
            Self::HoldingRegisters => "holding",
            Self::InputRegisters => "input",
        }
    }

    /// Bytes of payload a response carries for `count` items.
    fn byte_count(self, count: u16) -> usize {
        if self.is_bits() {
            usize::from(count).div_ceil(8)
        } else {
            usize::from(count) * 2
        }
    }
}

impl std::fmt::Display for ReadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated read request: `count` items of `kind` starting at `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    pub kind: ReadKind,
    pub address: u16,
    pub count: u16,
}

impl ReadRequest {
    /// A request, checked like a parsed one (count 1..=max, no address overflow).
    pub fn new(kind: ReadKind, address: u16, count: u16) -> Result<Self, PduError> {
        let req = Self {
            kind,
            address,
            count,
        };
        req.validate()?;
        Ok(req)
    }

    /// Checks count and address range.
    pub fn validate(&self) -> Result<(), PduError> {
        if self.count == 0 {
            return Err(PduError::CountZero);
        }
        let max = self.kind.max_count();
        if self.count > max {
            return Err(PduError::CountTooLarge {
                kind: self.kind,
                count: self.count,
                max,
            });
        }
        if u32::from(self.address) + u32::from(self.count) > 0x1_0000 {
            return Err(PduError::AddressOverflow {
                address: self.address,
                count: self.count,
            });
        }
        Ok(())
    }

    /// The last address read (inclusive). Only meaningful on a validated request.
    pub fn last_address(&self) -> u16 {
        self.address.saturating_add(self.count.saturating_sub(1))
    }
}

/// The data of a read response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
    /// Holding or input registers.
    Words(Vec<u16>),
}

/// Why a PDU was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PduError {
    #[error("empty PDU")]
    Empty,
    #[error("function code {0} writes; writes are refused until signed roles exist")]
    WriteRefused(u8),
    #[error("function code {0} is not supported (only reads, codes 1-4)")]
    Unsupported(u8),
    #[error("function code {fc}: PDU is {actual} bytes, expected {expected}")]
    Length {
        fc: u8,
        expected: usize,
        actual: usize,
    },
    #[error("quantity 0: a read must ask for at least one item")]
    CountZero,
    #[error("quantity {count} exceeds the Modbus maximum of {max} for {kind}")]
    CountTooLarge {
        kind: ReadKind,
        count: u16,
        max: u16,
    },
    #[error("address {address} + quantity {count} runs past register 65535")]
    AddressOverflow { address: u16, count: u16 },
    #[error("response function code {actual} does not match request code {expected}")]
    FunctionMismatch { expected: u8, actual: u8 },
    #[error("response byte count {declared} does not match the {expected} bytes expected")]
    ByteCount { declared: usize, expected: usize },
}

/// Parses a request PDU. Only reads are accepted.
pub fn parse_request(pdu: &[u8]) -> Result<ReadRequest, PduError> {
    let (&fc, rest) = pdu.split_first().ok_or(PduError::Empty)?;
    let kind = match ReadKind::from_function_code(fc) {
        Some(kind) => kind,
        None if WRITE_CODES.contains(&fc) => return Err(PduError::WriteRefused(fc)),
        None => return Err(PduError::Unsupported(fc)),
    };
    let [a_hi, a_lo, c_hi, c_lo] = rest else {
        return Err(PduError::Length {
            fc,
            expected: 5,
            actual: pdu.len(),
        });
    };
    ReadRequest::new(
        kind,
        u16::from_be_bytes([*a_hi, *a_lo]),
        u16::from_be_bytes([*c_hi, *c_lo]),
    )
}

/// Encodes a request PDU (for clients and tests).
pub fn encode_request(req: &ReadRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(5);
    out.push(req.kind.function_code());
    out.extend_from_slice(&req.address.to_be_bytes());
    out.extend_from_slice(&req.count.to_be_bytes());
    out
}

/// Encodes the response PDU to `req`.
///
/// Exactly `req.count` items are encoded: missing items are sent as 0/false, surplus items are
/// dropped, and data of the wrong shape (words for a bit read or bits for a register read) is
/// converted (non-zero word = true; bit = 0 or 1).
pub fn encode_response(req: &ReadRequest, data: &ReadData) -> Vec<u8> {
    let count = usize::from(req.count);
    let byte_count = req.kind.byte_count(req.count);
    let mut out = Vec::with_capacity(2 + byte_count);
    out.push(req.kind.function_code());
    // A validated request never needs more than 250 bytes; saturate instead of panicking.
    out.push(u8::try_from(byte_count).unwrap_or(u8::MAX));
    if req.kind.is_bits() {
        let bit = |i: usize| match data {
            ReadData::Bits(b) => b.get(i).copied().unwrap_or(false),
            ReadData::Words(w) => w.get(i).is_some_and(|&w| w != 0),
        };
        for byte_index in 0..byte_count {
            let mut byte = 0u8;
            for bit_index in 0..8 {
                let i = byte_index * 8 + bit_index;
                if i < count && bit(i) {
                    byte |= 1 << bit_index;
                }
            }
            out.push(byte);
        }
    } else {
        for i in 0..count {
            let word = match data {
                ReadData::Words(w) => w.get(i).copied().unwrap_or(0),
                ReadData::Bits(b) => u16::from(b.get(i).copied().unwrap_or(false)),
            };
            out.extend_from_slice(&word.to_be_bytes());
        }
    }
    out
}

/// Encodes an exception response PDU.
pub fn encode_exception(fc: u8, code: u8) -> Vec<u8> {
    vec![fc | 0x80, code]
}

/// Parses the response PDU to `req`: `Ok(Ok(data))` for data, `Ok(Err(code))` for a Modbus
/// exception, `Err` for anything that is not a well-formed answer to this request.
pub fn parse_response(req: &ReadRequest, pdu: &[u8]) -> Result<Result<ReadData, u8>, PduError> {
    let fc = req.kind.function_code();
    let (&actual, rest) = pdu.split_first().ok_or(PduError::Empty)?;
    if actual == fc | 0x80 {
        let [code] = rest else {
            return Err(PduError::Length {
                fc: actual,
                expected: 2,
                actual: pdu.len(),
            });
        };
        return Ok(Err(*code));
    }
    if actual != fc {
        return Err(PduError::FunctionMismatch {
            expected: fc,
            actual,
        });
    }
    let expected = req.kind.byte_count(req.count);
    let (&declared, payload) = rest.split_first().ok_or(PduError::Length {
        fc,
        expected: 2 + expected,
        actual: pdu.len(),
    })?;
    let declared = usize::from(declared);
    if declared != expected {
        return Err(PduError::ByteCount { declared, expected });
    }
    if payload.len() != expected {
        return Err(PduError::Length {
            fc,
            expected: 2 + expected,
            actual: pdu.len(),
        });
    }
    if req.kind.is_bits() {
        let bits = (0..usize::from(req.count))
            .map(|i| payload.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
            .collect();
        Ok(Ok(ReadData::Bits(bits)))
    } else {
        let words = payload
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        Ok(Ok(ReadData::Words(words)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = ReadKind> {
        prop_oneof![
            Just(ReadKind::Coils),
            Just(ReadKind::DiscreteInputs),
            Just(ReadKind::HoldingRegisters),
            Just(ReadKind::InputRegisters),
        ]
    }

    fn request() -> impl Strategy<Value = ReadRequest> {
        kind().prop_flat_map(|kind| {
            (1..=kind.max_count()).prop_flat_map(move |count| {
                (0..=(u16::MAX - (count - 1))).prop_map(move |address| ReadRequest {
                    kind,
                    address,
                    count,
                })
            })
        })
    }

    fn request_and_data() -> impl Strategy<Value = (ReadRequest, ReadData)> {
        request().prop_flat_map(|req| {
            let n = usize::from(req.count);
            let data = if req.kind.is_bits() {
                proptest::collection::vec(any::<bool>(), n)
                    .prop_map(ReadData::Bits)
                    .boxed()
            } else {
                proptest::collection::vec(any::<u16>(), n)
                    .prop_map(ReadData::Words)
                    .boxed()
            };
            (Just(req), data)
        })
    }

    proptest! {
        #[test]
        fn request_round_trips(req in request()) {
            prop_assert_eq!(parse_request(&encode_request(&req)), Ok(req));
        }

        #[test]
        fn response_round_trips((req, data) in request_and_data()) {
            let pdu = encode_response(&req, &data);
            prop_assert!(pdu.len() <= MAX_PDU_LEN);
            prop_assert_eq!(parse_response(&req, &pdu), Ok(Ok(data)));
        }

        #[test]
        fn exception_round_trips(req in request(), code in 1u8..=255) {
            let pdu = encode_exception(req.kind.function_code(), code);
            prop_assert_eq!(parse_response(&req, &pdu), Ok(Err(code)));
        }

        #[test]
        fn parse_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn parse_response_never_panics(
            req in request(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = parse_response(&req, &bytes);
        }
    }

    #[test]
    fn writes_are_refused() {
        for fc in [5u8, 6, 15, 16] {
            assert_eq!(
                parse_request(&[fc, 0, 0, 0, 1]),
                Err(PduError::WriteRefused(fc))
            );
        }
        assert!(
            PduError::WriteRefused(6)
                .to_string()
                .contains("writes are refused until signed roles exist")
        );
    }

    #[test]
    fn other_codes_are_unsupported() {
        assert_eq!(
            parse_request(&[0x17, 0, 0]),
            Err(PduError::Unsupported(0x17))
        );
        assert_eq!(
            parse_request(&[0x2B, 0x0E]),
            Err(PduError::Unsupported(0x2B))
        );
        assert_eq!(parse_request(&[0x83, 2]), Err(PduError::Unsupported(0x83)));
    }

    #[test]
    fn malformed_requests_are_rejected() {
        assert_eq!(parse_request(&[]), Err(PduError::Empty));
        assert!(matches!(
            parse_request(&[3, 0, 0, 0]),
            Err(PduError::Length { actual: 4, .. })
        ));
        assert!(matches!(
            parse_request(&[3, 0, 0, 0, 1, 0]),
            Err(PduError::Length { actual: 6, .. })
        ));
        assert_eq!(parse_request(&[3, 0, 0, 0, 0]), Err(PduError::CountZero));
        assert!(matches!(
            parse_request(&[3, 0, 0, 0, 126]),
            Err(PduError::CountTooLarge {
                count: 126,
                max: 125,
                ..
            })
        ));
        assert!(parse_request(&[4, 0, 0, 0, 125]).is_ok());
        assert!(parse_request(&[1, 0, 0, 0x07, 0xD0]).is_ok());
        assert!(matches!(
            parse_request(&[1, 0, 0, 0x07, 0xD1]),
            Err(PduError::CountTooLarge { count: 2001, .. })
        ));
        assert_eq!(
            parse_request(&[3, 0xFF, 0xFF, 0, 2]),
            Err(PduError::AddressOverflow {
                address: 0xFFFF,
                count: 2
            })
        );
        assert!(parse_request(&[3, 0xFF, 0xFF, 0, 1]).is_ok());
    }

    #[test]
    fn responses_are_validated_strictly() {
        let req = ReadRequest::new(ReadKind::HoldingRegisters, 10, 2).expect("valid");
        assert_eq!(
            parse_response(&req, &[3, 4, 0, 1, 0, 2]),
            Ok(Ok(ReadData::Words(vec![1, 2])))
        );
        assert_eq!(
            parse_response(&req, &[4, 4, 0, 1, 0, 2]),
            Err(PduError::FunctionMismatch {
                expected: 3,
                actual: 4
            })
        );
        assert_eq!(
            parse_response(&req, &[3, 2, 0, 1]),
            Err(PduError::ByteCount {
                declared: 2,
                expected: 4
            })
        );
        assert!(matches!(
            parse_response(&req, &[3, 4, 0, 1, 0]),
            Err(PduError::Length { .. })
        ));
        assert!(matches!(
            parse_response(&req, &[3, 4, 0, 1, 0, 2, 9]),
            Err(PduError::Length { .. })
        ));
        assert_eq!(parse_response(&req, &[0x83, 2]), Ok(Err(2)));
        assert!(matches!(
            parse_response(&req, &[0x83, 2, 0]),
            Err(PduError::Length { .. })
        ));
        assert!(matches!(
            parse_response(&req, &[0x84, 2]),
            Err(PduError::FunctionMismatch { .. })
        ));
    }

    #[test]
    fn bits_are_packed_lsb_first() {
        let req = ReadRequest::new(ReadKind::Coils, 0, 10).expect("valid");
        let mut bits = vec![false; 10];
        bits[0] = true;
        bits[9] = true;
        assert_eq!(
            encode_response(&req, &ReadData::Bits(bits)),
            vec![1, 2, 0x01, 0x02]
        );
    }
}
