//! The bytes a signature covers: the RFC 8785 (JCS) form of one object that binds the message
//! type, the action, the final destination, the payload without its `signatures` member and
//! the signer object (the signature object without `value`). A signature therefore cannot be
//! moved to another action, charger or message type, and covers its own timestamp and nonce.

use serde::Serialize;
use serde_json::{Map, Value};

/// What a signature is about, besides the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// 2 CALL, 3 CALLRESULT, 4 CALLERROR, 5 CALLRESULTERROR, 6 SEND.
    pub message_type: u8,
    /// The action; for 3/4/5 the action of the request answered.
    pub action: &'a str,
    /// The final destination as the originator addressed it (a charger id, or `"CSMS"`).
    pub destination: &'a str,
}

#[derive(Serialize)]
struct Signed<'a> {
    #[serde(rename = "messageType")]
    message_type: u8,
    action: &'a str,
    destination: &'a str,
    payload: PayloadWithout<'a>,
    signer: &'a Map<String, Value>,
}

/// The payload as it serializes without `signatures`, with no copy of the tree.
struct PayloadWithout<'a>(&'a Value);

impl Serialize for PayloadWithout<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Value::Object(map) => {
                let members = map.iter().filter(|(k, _)| k.as_str() != "signatures");
                let mut m = s.serialize_map(None)?;
                for (k, v) in members {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            other => other.serialize(s),
        }
    }
}

/// The canonical bytes for `payload` and `signer` (the signature object less `value`).
pub fn signed_bytes(
    message: &Message<'_>,
    payload: &Value,
    signer: &Map<String, Value>,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json_canonicalizer::to_vec(&Signed {
        message_type: message.message_type,
        action: message.action,
        destination: message.destination,
        payload: PayloadWithout(payload),
        signer,
    })
}

/// RFC 8785 text of any value (the CLI and tests).
pub fn canonicalize(value: &Value) -> Result<String, serde_json::Error> {
    serde_json_canonicalizer::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 8785 §3.2.2 / Appendix B: number serialization, one value per line of the RFC's
    /// table (IEEE 754 bits → expected ECMAScript text).
    #[test]
    fn rfc8785_numbers() {
        let cases: [(u64, &str); 14] = [
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        ];
        for (bits, want) in cases {
            let v = json!(f64::from_bits(bits));
            assert_eq!(canonicalize(&v).unwrap(), want, "bits {bits:#018x}");
        }
    }

    /// RFC 8785 §3.2.2.2 example: strings and literals, and §3.2.3 property sorting by
    /// UTF-16 code units.
    #[test]
    fn rfc8785_example_objects() {
        let input = r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#;
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            canonicalize(&v).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        let sorting = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let v: Value = serde_json::from_str(sorting).unwrap();
        assert_eq!(
            canonicalize(&v).unwrap(),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
    }

    #[test]
    fn signatures_member_is_left_out_and_the_rest_bound() {
        let signer = json!({"keyId": "k", "algorithm": "ed25519"});
        let signer = signer.as_object().unwrap();
        let m = Message {
            message_type: 2,
            action: "Reset",
            destination: "CS-1",
        };
        let with = json!({"type": "Immediate", "signatures": [{"value": "x"}]});
        let without = json!({"type": "Immediate"});
        let a = signed_bytes(&m, &with, signer).unwrap();
        assert_eq!(a, signed_bytes(&m, &without, signer).unwrap());
        assert_eq!(
            String::from_utf8(a).unwrap(),
            r#"{"action":"Reset","destination":"CS-1","messageType":2,"payload":{"type":"Immediate"},"signer":{"algorithm":"ed25519","keyId":"k"}}"#
        );
    }
}
