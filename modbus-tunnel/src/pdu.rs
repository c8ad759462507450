//! Modbus request PDUs: parsing and encoding of the four reads (function codes 1–4) and the
//! four writes (5, 6, 15, 16).
//!
//! The overlay carries raw Modbus PDUs (function code + data, no unit id, no CRC or MBAP header),
//! so everything that crosses a trust boundary is parsed here first, strictly and without
//! panicking on arbitrary bytes. [`parse_request`] accepts reads only; [`parse`] accepts writes
//! too, for a caller that checks the write grant (a signature by a role that grants
//! `ModbusWrite`, in the node). Every other function code is unsupported.

use thiserror::Error;

/// Largest Modbus PDU (256-byte serial ADU minus address and CRC).
pub const MAX_PDU_LEN: usize = 253;
/// Most coils or discrete inputs one request may read (Modbus spec, FC 1 and 2).
pub const MAX_BITS: u16 = 2000;
/// Most registers one request may read (Modbus spec, FC 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Most coils one request may write (Modbus spec, FC 15).
pub const MAX_WRITE_BITS: u16 = 1968;
/// Most registers one request may write (Modbus spec, FC 16).
pub const MAX_WRITE_REGISTERS: u16 = 123;

/// Function codes that write.
pub const WRITE_CODES: [u8; 4] = [5, 6, 15, 16];

/// True when `pdu` is a write request (by its function code alone; it may still be malformed).
pub fn is_write(pdu: &[u8]) -> bool {
    pdu.first().is_some_and(|fc| WRITE_CODES.contains(fc))
}

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
    #[error("function code {0} writes; writes are refused here (reads only)")]
    WriteRefused(u8),
    #[error("function code {0} is not supported (only reads 1-4 and writes 5, 6, 15, 16)")]
    Unsupported(u8),
    #[error("write single coil: value 0x{0:04X} is neither 0xFF00 (on) nor 0x0000 (off)")]
    CoilValue(u16),
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
    #[error(
        "function code {fc}: byte count {declared} does not match the {expected} bytes for the quantity"
    )]
    WriteByteCount {
        fc: u8,
        declared: usize,
        expected: usize,
    },
    #[error("quantity {count} exceeds the Modbus maximum of {max} for a write of {kind}")]
    WriteCountTooLarge {
        kind: ReadKind,
        count: u16,
        max: u16,
    },
    #[error("the reply {reply:02X?} does not echo the write request {request:02X?}")]
    EchoMismatch { request: Vec<u8>, reply: Vec<u8> },
}

/// A validated write request. Coils and holding registers are the only writable tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WriteRequest {
    /// FC 5.
    SingleCoil { address: u16, value: bool },
    /// FC 6.
    SingleRegister { address: u16, value: u16 },
    /// FC 15: `values.len()` coils from `address`.
    MultipleCoils { address: u16, values: Vec<bool> },
    /// FC 16: `values.len()` registers from `address`.
    MultipleRegisters { address: u16, values: Vec<u16> },
}

impl WriteRequest {
    /// The Modbus function code of this write.
    pub fn function_code(&self) -> u8 {
        match self {
            Self::SingleCoil { .. } => 5,
            Self::SingleRegister { .. } => 6,
            Self::MultipleCoils { .. } => 15,
            Self::MultipleRegisters { .. } => 16,
        }
    }

    /// The table written: [`ReadKind::Coils`] or [`ReadKind::HoldingRegisters`].
    pub fn kind(&self) -> ReadKind {
        match self {
            Self::SingleCoil { .. } | Self::MultipleCoils { .. } => ReadKind::Coils,
            Self::SingleRegister { .. } | Self::MultipleRegisters { .. } => {
                ReadKind::HoldingRegisters
            }
        }
    }

    pub fn address(&self) -> u16 {
        match self {
            Self::SingleCoil { address, .. }
            | Self::SingleRegister { address, .. }
            | Self::MultipleCoils { address, .. }
            | Self::MultipleRegisters { address, .. } => *address,
        }
    }

    /// Items written.
    pub fn count(&self) -> u16 {
        let n = match self {
            Self::SingleCoil { .. } | Self::SingleRegister { .. } => 1,
            Self::MultipleCoils { values, .. } => values.len(),
            Self::MultipleRegisters { values, .. } => values.len(),
        };
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    /// The last address written (inclusive). Only meaningful on a validated request.
    pub fn last_address(&self) -> u16 {
        self.address()
            .saturating_add(self.count().saturating_sub(1))
    }

    /// Checks counts (1..=1968 coils, 1..=123 registers) and the address range.
    pub fn validate(&self) -> Result<(), PduError> {
        let (count, max) = match self {
            Self::SingleCoil { .. } | Self::SingleRegister { .. } => return Ok(()),
            Self::MultipleCoils { values, .. } => (values.len(), MAX_WRITE_BITS),
            Self::MultipleRegisters { values, .. } => (values.len(), MAX_WRITE_REGISTERS),
        };
        if count == 0 {
            return Err(PduError::CountZero);
        }
        let count = u16::try_from(count).unwrap_or(u16::MAX);
        if count > max {
            return Err(PduError::WriteCountTooLarge {
                kind: self.kind(),
                count,
                max,
            });
        }
        let address = self.address();
        if u32::from(address) + u32::from(count) > 0x1_0000 {
            return Err(PduError::AddressOverflow { address, count });
        }
        Ok(())
    }

    /// The request PDU.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.function_code()];
        out.extend_from_slice(&self.address().to_be_bytes());
        match self {
            Self::SingleCoil { value, .. } => {
                out.extend_from_slice(&(if *value { 0xFF00u16 } else { 0 }).to_be_bytes());
            }
            Self::SingleRegister { value, .. } => out.extend_from_slice(&value.to_be_bytes()),
            Self::MultipleCoils { values, .. } => {
                out.extend_from_slice(&self.count().to_be_bytes());
                let bytes = values.len().div_ceil(8);
                out.push(u8::try_from(bytes).unwrap_or(u8::MAX));
                for chunk in values.chunks(8) {
                    let byte = chunk
                        .iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &on)| if on { b | (1 << i) } else { b });
                    out.push(byte);
                }
            }
            Self::MultipleRegisters { values, .. } => {
                out.extend_from_slice(&self.count().to_be_bytes());
                out.push(u8::try_from(values.len() * 2).unwrap_or(u8::MAX));
                for v in values {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        out
    }

    /// The normal response PDU: FC 5 and 6 echo the request; FC 15 and 16 echo address and
    /// quantity.
    pub fn encode_response(&self) -> Vec<u8> {
        match self {
            Self::SingleCoil { .. } | Self::SingleRegister { .. } => self.encode(),
            Self::MultipleCoils { .. } | Self::MultipleRegisters { .. } => {
                let mut out = vec![self.function_code()];
                out.extend_from_slice(&self.address().to_be_bytes());
                out.extend_from_slice(&self.count().to_be_bytes());
                out
            }
        }
    }

    /// Checks a device's reply PDU: `Ok(Ok(()))` for the exact echo, `Ok(Err(code))` for a
    /// Modbus exception, `Err` for anything else.
    pub fn check_response(&self, pdu: &[u8]) -> Result<Result<(), u8>, PduError> {
        let fc = self.function_code();
        match pdu {
            [] => Err(PduError::Empty),
            [actual, code] if *actual == fc | 0x80 => Ok(Err(*code)),
            [actual, ..] if *actual == fc | 0x80 => Err(PduError::Length {
                fc: *actual,
                expected: 2,
                actual: pdu.len(),
            }),
            [actual, ..] if *actual != fc => Err(PduError::FunctionMismatch {
                expected: fc,
                actual: *actual,
            }),
            reply => {
                let want = self.encode_response();
                if reply == want.as_slice() {
                    Ok(Ok(()))
                } else {
                    Err(PduError::EchoMismatch {
                        request: want,
                        reply: reply.to_vec(),
                    })
                }
            }
        }
    }
}

/// A parsed request PDU: a read or a write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    Read(ReadRequest),
    Write(WriteRequest),
}

/// Parses a request PDU, reads and writes. A write still needs its grant; see the crate docs.
pub fn parse(pdu: &[u8]) -> Result<Request, PduError> {
    let (&fc, rest) = pdu.split_first().ok_or(PduError::Empty)?;
    if !WRITE_CODES.contains(&fc) {
        return parse_request(pdu).map(Request::Read);
    }
    let length = |expected: usize| PduError::Length {
        fc,
        expected,
        actual: pdu.len(),
    };
    let word = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
    let write = match fc {
        5 | 6 => {
            if rest.len() != 4 {
                return Err(length(5));
            }
            let (address, value) = (word(0), word(2));
            if fc == 6 {
                WriteRequest::SingleRegister { address, value }
            } else {
                let value = match value {
                    0xFF00 => true,
                    0x0000 => false,
                    other => return Err(PduError::CoilValue(other)),
                };
                WriteRequest::SingleCoil { address, value }
            }
        }
        _ => {
            // Address, quantity, byte count, then the data.
            if rest.len() < 5 {
                return Err(length(6));
            }
            let (address, count) = (word(0), word(2));
            let kind = if fc == 15 {
                ReadKind::Coils
            } else {
                ReadKind::HoldingRegisters
            };
            let max = if fc == 15 {
                MAX_WRITE_BITS
            } else {
                MAX_WRITE_REGISTERS
            };
            if count == 0 {
                return Err(PduError::CountZero);
            }
            if count > max {
                return Err(PduError::WriteCountTooLarge { kind, count, max });
            }
            let expected = kind.byte_count(count);
            let declared = usize::from(rest[4]);
            if declared != expected {
                return Err(PduError::WriteByteCount {
                    fc,
                    declared,
                    expected,
                });
            }
            let data = &rest[5..];
            if data.len() != expected {
                return Err(length(6 + expected));
            }
            if fc == 15 {
                let values = (0..usize::from(count))
                    .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
                    .collect();
                WriteRequest::MultipleCoils { address, values }
            } else {
                let values = data
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                WriteRequest::MultipleRegisters { address, values }
            }
        }
    };
    write.validate()?;
    Ok(Request::Write(write))
}

/// Parses a read request PDU; writes are refused ([`PduError::WriteRefused`]), see [`parse`].
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

    fn write_request() -> impl Strategy<Value = WriteRequest> {
        prop_oneof![
            (any::<u16>(), any::<bool>())
                .prop_map(|(address, value)| WriteRequest::SingleCoil { address, value }),
            (any::<u16>(), any::<u16>())
                .prop_map(|(address, value)| WriteRequest::SingleRegister { address, value }),
            (1..=MAX_WRITE_BITS).prop_flat_map(|n| (
                0..=(u16::MAX - (n - 1)),
                proptest::collection::vec(any::<bool>(), usize::from(n))
            )
                .prop_map(|(address, values)| WriteRequest::MultipleCoils { address, values })),
            (1..=MAX_WRITE_REGISTERS).prop_flat_map(|n| (
                0..=(u16::MAX - (n - 1)),
                proptest::collection::vec(any::<u16>(), usize::from(n))
            )
                .prop_map(|(address, values)| WriteRequest::MultipleRegisters { address, values })),
        ]
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
        fn write_round_trips(w in write_request()) {
            let pdu = w.encode();
            prop_assert!(pdu.len() <= MAX_PDU_LEN);
            prop_assert_eq!(parse(&pdu), Ok(Request::Write(w.clone())));
            prop_assert_eq!(w.check_response(&w.encode_response()), Ok(Ok(())));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
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
    fn writes_are_refused_by_the_read_parser() {
        for fc in [5u8, 6, 15, 16] {
            assert_eq!(
                parse_request(&[fc, 0, 0, 0, 1]),
                Err(PduError::WriteRefused(fc))
            );
            assert!(is_write(&[fc]));
        }
        assert!(!is_write(&[3, 0, 0, 0, 1]));
        assert!(!is_write(&[]));
        assert!(
            PduError::WriteRefused(6)
                .to_string()
                .contains("writes are refused")
        );
    }

    fn write(pdu: &[u8]) -> Result<WriteRequest, PduError> {
        match parse(pdu)? {
            Request::Write(w) => Ok(w),
            Request::Read(r) => panic!("parsed as a read: {r:?}"),
        }
    }

    #[test]
    fn single_writes_parse_strictly() {
        assert_eq!(
            write(&[6, 0, 100, 0x12, 0x34]),
            Ok(WriteRequest::SingleRegister {
                address: 100,
                value: 0x1234
            })
        );
        assert_eq!(
            write(&[5, 0, 3, 0xFF, 0x00]),
            Ok(WriteRequest::SingleCoil {
                address: 3,
                value: true
            })
        );
        assert_eq!(
            write(&[5, 0, 3, 0, 0]),
            Ok(WriteRequest::SingleCoil {
                address: 3,
                value: false
            })
        );
        assert_eq!(write(&[5, 0, 3, 0, 1]), Err(PduError::CoilValue(1)));
        assert_eq!(
            write(&[5, 0, 3, 0xFF, 0xFF]),
            Err(PduError::CoilValue(0xFFFF))
        );
        assert!(matches!(
            write(&[6, 0, 1, 0]),
            Err(PduError::Length {
                fc: 6,
                actual: 4,
                ..
            })
        ));
        assert!(matches!(
            write(&[6, 0, 1, 0, 1, 0]),
            Err(PduError::Length {
                fc: 6,
                actual: 6,
                ..
            })
        ));
        // A single write at the last address is fine.
        assert!(write(&[6, 0xFF, 0xFF, 0, 1]).is_ok());
        // Reads still parse through the same entry point.
        assert_eq!(
            parse(&[3, 0, 0, 0, 2]),
            Ok(Request::Read(ReadRequest {
                kind: ReadKind::HoldingRegisters,
                address: 0,
                count: 2
            }))
        );
        assert_eq!(parse(&[0x17, 0, 0]), Err(PduError::Unsupported(0x17)));
    }

    #[test]
    fn multiple_writes_parse_strictly() {
        assert_eq!(
            write(&[16, 0, 10, 0, 2, 4, 0, 1, 0, 2]),
            Ok(WriteRequest::MultipleRegisters {
                address: 10,
                values: vec![1, 2]
            })
        );
        assert_eq!(
            write(&[15, 0, 0, 0, 10, 2, 0b0000_0101, 0b10]),
            Ok(WriteRequest::MultipleCoils {
                address: 0,
                values: vec![
                    true, false, true, false, false, false, false, false, false, true
                ]
            })
        );
        // Byte count disagreeing with the quantity, and data disagreeing with the byte count.
        assert_eq!(
            write(&[16, 0, 10, 0, 2, 3, 0, 1, 0]),
            Err(PduError::WriteByteCount {
                fc: 16,
                declared: 3,
                expected: 4
            })
        );
        assert!(matches!(
            write(&[16, 0, 10, 0, 2, 4, 0, 1, 0]),
            Err(PduError::Length { fc: 16, .. })
        ));
        assert!(matches!(
            write(&[16, 0, 10, 0, 2, 4, 0, 1, 0, 2, 0]),
            Err(PduError::Length { fc: 16, .. })
        ));
        assert!(matches!(
            write(&[15, 0, 0, 0, 9, 1, 0xFF]),
            Err(PduError::WriteByteCount {
                fc: 15,
                declared: 1,
                expected: 2
            })
        ));
        assert!(matches!(
            write(&[16, 0, 0, 0]),
            Err(PduError::Length { .. })
        ));
        assert_eq!(write(&[16, 0, 0, 0, 0, 0]), Err(PduError::CountZero));
        // The spec's limits: 123 registers, 1968 coils.
        let mut max = vec![16, 0, 0, 0, 123, 246];
        max.extend(std::iter::repeat_n(0, 246));
        assert!(write(&max).is_ok());
        let mut over = vec![16, 0, 0, 0, 124, 248];
        over.extend(std::iter::repeat_n(0, 248));
        assert!(matches!(
            write(&over),
            Err(PduError::WriteCountTooLarge {
                count: 124,
                max: 123,
                ..
            })
        ));
        let mut coils = vec![15, 0, 0, 0x07, 0xB0, 246];
        coils.extend(std::iter::repeat_n(0xFF, 246));
        assert!(write(&coils).is_ok());
        let mut too_many = vec![15, 0, 0, 0x07, 0xB1, 247];
        too_many.extend(std::iter::repeat_n(0xFF, 247));
        assert!(matches!(
            write(&too_many),
            Err(PduError::WriteCountTooLarge {
                count: 1969,
                max: 1968,
                ..
            })
        ));
        assert_eq!(
            write(&[16, 0xFF, 0xFF, 0, 2, 4, 0, 1, 0, 2]),
            Err(PduError::AddressOverflow {
                address: 0xFFFF,
                count: 2
            })
        );
    }

    #[test]
    fn write_echoes_are_checked() {
        let single = WriteRequest::SingleRegister {
            address: 7,
            value: 42,
        };
        assert_eq!(single.check_response(&[6, 0, 7, 0, 42]), Ok(Ok(())));
        assert!(matches!(
            single.check_response(&[6, 0, 7, 0, 43]),
            Err(PduError::EchoMismatch { .. })
        ));
        assert_eq!(single.check_response(&[0x86, 2]), Ok(Err(2)));
        assert!(matches!(
            single.check_response(&[3, 0, 7, 0, 42]),
            Err(PduError::FunctionMismatch { .. })
        ));
        let multi = WriteRequest::MultipleCoils {
            address: 1,
            values: vec![true; 3],
        };
        assert_eq!(multi.encode_response(), vec![15, 0, 1, 0, 3]);
        assert_eq!(multi.check_response(&[15, 0, 1, 0, 3]), Ok(Ok(())));
        assert!(multi.check_response(&[15, 0, 1, 0, 2]).is_err());
        assert!(multi.check_response(&[]).is_err());
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
