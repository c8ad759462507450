use crate::OcppVersion;

/// OCPP-J RPC error codes, by meaning. [`ErrorCode::spelling`] writes them the way the negotiated
/// version spells them, so callers never juggle the 1.6 typos themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not a readable OCPP-J array (2.x `RpcFrameworkError`).
    RpcFrameworkError,
    /// Unknown message type number (2.x `MessageTypeNotSupported`).
    MessageTypeNotSupported,
    /// Payload structure is wrong: unknown property, wrong shape.
    FormatViolation,
    /// A required field is missing (2.x meaning).
    OccurrenceConstraintViolation,
    PropertyConstraintViolation,
    TypeConstraintViolation,
    ProtocolError,
    NotImplemented,
    NotSupported,
    InternalError,
    SecurityError,
    GenericError,
}

impl ErrorCode {
    /// The code as written on the wire for `version` (ARCHITECTURE §3.1, §6.5).
    ///
    /// 1.6 has neither `RpcFrameworkError` nor `MessageTypeNotSupported`; its answer to an
    /// unreadable frame or an unknown message type is `FormationViolation`.
    pub fn spelling(self, version: OcppVersion) -> &'static str {
        let v16 = version.is_v16();
        match self {
            Self::RpcFrameworkError if v16 => "FormationViolation",
            Self::RpcFrameworkError => "RpcFrameworkError",
            Self::MessageTypeNotSupported if v16 => "FormationViolation",
            Self::MessageTypeNotSupported => "MessageTypeNotSupported",
            Self::FormatViolation if v16 => "FormationViolation",
            Self::FormatViolation => "FormatViolation",
            Self::OccurrenceConstraintViolation if v16 => "OccurenceConstraintViolation",
            Self::OccurrenceConstraintViolation => "OccurrenceConstraintViolation",
            Self::PropertyConstraintViolation => "PropertyConstraintViolation",
            Self::TypeConstraintViolation => "TypeConstraintViolation",
            Self::ProtocolError => "ProtocolError",
            Self::NotImplemented => "NotImplemented",
            Self::NotSupported => "NotSupported",
            Self::InternalError => "InternalError",
            Self::SecurityError => "SecurityError",
            Self::GenericError => "GenericError",
        }
    }

    /// Reads a code in either spelling (errors relayed from peers of any version).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RpcFrameworkError" => Self::RpcFrameworkError,
            "MessageTypeNotSupported" => Self::MessageTypeNotSupported,
            "FormatViolation" | "FormationViolation" => Self::FormatViolation,
            "OccurrenceConstraintViolation" | "OccurenceConstraintViolation" => {
                Self::OccurrenceConstraintViolation
            }
            "PropertyConstraintViolation" => Self::PropertyConstraintViolation,
            "TypeConstraintViolation" => Self::TypeConstraintViolation,
            "ProtocolError" => Self::ProtocolError,
            "NotImplemented" => Self::NotImplemented,
            "NotSupported" => Self::NotSupported,
            "InternalError" => Self::InternalError,
            "SecurityError" => Self::SecurityError,
            "GenericError" => Self::GenericError,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v16_spells_its_own_typos() {
        let v = OcppVersion::V16;
        assert_eq!(ErrorCode::FormatViolation.spelling(v), "FormationViolation");
        assert_eq!(
            ErrorCode::OccurrenceConstraintViolation.spelling(v),
            "OccurenceConstraintViolation"
        );
        assert_eq!(
            ErrorCode::RpcFrameworkError.spelling(v),
            "FormationViolation"
        );
        assert_eq!(
            ErrorCode::MessageTypeNotSupported.spelling(v),
            "FormationViolation"
        );
    }

    #[test]
    fn v2_spells_correctly() {
        for v in [OcppVersion::V201, OcppVersion::V21] {
            assert_eq!(ErrorCode::FormatViolation.spelling(v), "FormatViolation");
            assert_eq!(
                ErrorCode::OccurrenceConstraintViolation.spelling(v),
                "OccurrenceConstraintViolation"
            );
            assert_eq!(
                ErrorCode::RpcFrameworkError.spelling(v),
                "RpcFrameworkError"
            );
        }
    }

    #[test]
    fn parse_accepts_both_spellings() {
        assert_eq!(
            ErrorCode::parse("FormationViolation"),
            Some(ErrorCode::FormatViolation)
        );
        assert_eq!(
            ErrorCode::parse("FormatViolation"),
            Some(ErrorCode::FormatViolation)
        );
        assert_eq!(ErrorCode::parse("Bogus"), None);
    }
}
