//! The answers a node gives in the CSMS's place (a standalone local controller, or an edge
//! while its uplink is down): the smallest valid response of each action's version, and the
//! readers of the CSMS's own answers that the edge learns from.

use serde_json::{Value, json};
use wire::OcppVersion;

use super::authorize::Authorizer;

/// What a local answer needs to know besides the request.
pub struct LocalContext<'a> {
    pub now: String,
    /// The heartbeat interval a BootNotification is answered with.
    pub interval_s: u64,
    /// The CSMS's last answer to this charger's boot.
    pub boot_status: Option<&'a str>,
    /// The 1.6 transaction id handed out for a StartTransaction.
    pub local_tx: Option<i64>,
    /// Decides the status of an idTag.
    pub auth: &'a Authorizer,
}

/// The node's own answer to a request: the smallest valid response of the action's version.
pub fn local_answer(version: OcppVersion, action: &str, p: &Value, cx: &LocalContext<'_>) -> Value {
    let v16 = version.is_v16();
    let id_tag_info =
        |tag: &Value| json!({"status": cx.auth.status(tag.as_str().unwrap_or_default())});
    match action {
        "BootNotification" => {
            // An offline "Accepted" never overrides a Rejected or Pending the CSMS gave.
            let status = cx
                .boot_status
                .filter(|s| matches!(*s, "Rejected" | "Pending"))
                .unwrap_or("Accepted");
            json!({"status": status, "currentTime": cx.now, "interval": cx.interval_s})
        }
        "Heartbeat" => json!({"currentTime": cx.now}),
        "Authorize" if v16 => json!({"idTagInfo": id_tag_info(&p["idTag"])}),
        "Authorize" => json!({"idTokenInfo": id_tag_info(&p["idToken"]["idToken"])}),
        "StartTransaction" => json!({
            "transactionId": cx.local_tx.unwrap_or(-1),
            "idTagInfo": id_tag_info(&p["idTag"]),
        }),
        "StopTransaction" if p.get("idTag").is_some() => {
            json!({"idTagInfo": id_tag_info(&p["idTag"])})
        }
        "TransactionEvent" if p.get("idToken").is_some() => {
            json!({"idTokenInfo": id_tag_info(&p["idToken"]["idToken"])})
        }
        _ => json!({}),
    }
}

/// The status of a BootNotification answer.
pub fn boot_status(response: &str) -> Option<String> {
    let v: Value = serde_json::from_str(response).ok()?;
    v["status"].as_str().map(str::to_owned)
}

/// The transactionId and idTag status of a 1.6 StartTransaction answer.
pub fn start_answer(response: &str) -> (Option<i64>, Option<String>) {
    let Ok(v) = serde_json::from_str::<Value>(response) else {
        return (None, None);
    };
    (
        v["transactionId"].as_i64(),
        v["idTagInfo"]["status"].as_str().map(str::to_owned),
    )
}

/// The status an Authorize answer (1.6 idTagInfo, 2.x idTokenInfo) gave.
pub fn authorize_status(response: &str) -> Option<String> {
    let v: Value = serde_json::from_str(response).ok()?;
    v["idTagInfo"]["status"]
        .as_str()
        .or_else(|| v["idTokenInfo"]["status"].as_str())
        .map(str::to_owned)
}

/// The idTag of an Authorize request, in either version (1.6 `idTag`, 2.x `idToken.idToken`).
/// Read with a typed view that skips the other fields: this runs for every Authorize relayed.
pub fn authorize_tag(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Token {
        #[serde(rename = "idToken")]
        id_token: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        #[serde(rename = "idTag")]
        id_tag: Option<String>,
        #[serde(rename = "idToken")]
        id_token: Option<Token>,
    }
    let r: Request = serde_json::from_str(payload).ok()?;
    r.id_tag.or(r.id_token.and_then(|t| t.id_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_tags_of_both_versions() {
        assert_eq!(authorize_tag(r#"{"idTag":"A"}"#).as_deref(), Some("A"));
        let v2 = r#"{"idToken":{"idToken":"B","type":"ISO14443"},"x":[1]}"#;
        assert_eq!(authorize_tag(v2).as_deref(), Some("B"));
        assert_eq!(authorize_tag("{}"), None);
    }

    #[test]
    fn offline_boot_never_overrides_rejected_or_pending() {
        let auth = Authorizer::new(crate::config::AuthConfig {
            unknown_id_tag: crate::config::AuthStatus::Accepted,
            ..Default::default()
        });
        let mut cx = LocalContext {
            now: "t".into(),
            interval_s: 60,
            boot_status: Some("Pending"),
            local_tx: None,
            auth: &auth,
        };
        let p = json!({});
        let a = local_answer(OcppVersion::V16, "BootNotification", &p, &cx);
        assert_eq!(a["status"], "Pending");
        cx.boot_status = Some("Accepted");
        let a = local_answer(OcppVersion::V201, "BootNotification", &p, &cx);
        assert_eq!(
            (a["status"].as_str(), a["interval"].as_u64()),
            (Some("Accepted"), Some(60))
        );
        cx.local_tx = Some(-4);
        let start = json!({"idTag": "T"});
        let a = local_answer(OcppVersion::V16, "StartTransaction", &start, &cx);
        assert_eq!(
            a,
            json!({"transactionId": -4, "idTagInfo": {"status": "Accepted"}})
        );
    }
}
