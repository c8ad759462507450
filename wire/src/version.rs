use std::fmt;
use std::str::FromStr;

/// The OCPP-J version negotiated as a WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OcppVersion {
    V16,
    V201,
    V21,
}

impl OcppVersion {
    /// All versions, lowest first.
    pub const ALL: [OcppVersion; 3] = [Self::V16, Self::V201, Self::V21];

    /// The subprotocol token, e.g. `ocpp2.0.1`.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Self::V16 => "ocpp1.6",
            Self::V201 => "ocpp2.0.1",
            Self::V21 => "ocpp2.1",
        }
    }

    pub fn is_v16(self) -> bool {
        self == Self::V16
    }
}

impl fmt::Display for OcppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subprotocol())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown OCPP subprotocol {0:?} (known: ocpp1.6, ocpp2.0.1, ocpp2.1)")]
pub struct UnknownVersion(pub String);

impl FromStr for OcppVersion {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.subprotocol() == s)
            .ok_or_else(|| UnknownVersion(s.to_owned()))
    }
}
