//! Transactions survive SIGKILL: they are acknowledged only once durable in the store file.

mod common;
use common::{NodeProc, call, connect};

#[tokio::test]
async fn transactions_survive_sigkill() {
    let mut node = NodeProc::start("", "");
    let mut v16 = connect(&node.charger_url, "CP-16", Some("ocpp1.6"), None)
        .await
        .unwrap();
    let start = call(
        &mut v16,
        r#"[2,"s1","StartTransaction",{"connectorId":1,"idTag":"TAG-OK","meterStart":100,"timestamp":"2026-01-01T10:00:00Z"}]"#,
    )
    .await;
    let tx = start[2]["transactionId"].as_i64().expect("transactionId");
    assert_eq!(start[2]["idTagInfo"]["status"], "Accepted");
    // A re-send after a lost answer (new message id, same content) gets the same transaction.
    let again = call(
        &mut v16,
        r#"[2,"s2","StartTransaction",{"connectorId":1,"idTag":"TAG-OK","meterStart":100,"timestamp":"2026-01-01T10:00:00Z"}]"#,
    )
    .await;
    assert_eq!(again[2]["transactionId"].as_i64(), Some(tx));
    let mv = format!(
        r#"[2,"m1","MeterValues",{{"connectorId":1,"transactionId":{tx},"meterValue":[{{"timestamp":"2026-01-01T10:05:00Z","sampledValue":[{{"value":"250"}}]}}]}}]"#
    );
    assert_eq!(call(&mut v16, &mv).await[0], 3);
    let stop = format!(
        r#"[2,"e1","StopTransaction",{{"transactionId":{tx},"meterStop":1500,"timestamp":"2026-01-01T11:00:00Z"}}]"#
    );
    assert_eq!(call(&mut v16, &stop).await[0], 3);

    let mut v201 = connect(&node.charger_url, "CP-201", Some("ocpp2.0.1"), None)
        .await
        .unwrap();
    let started = call(
        &mut v201,
        r#"[2,"t1","TransactionEvent",{"eventType":"Started","timestamp":"2026-01-01T10:00:00Z","triggerReason":"Authorized","seqNo":0,"transactionInfo":{"transactionId":"tx-201"},"idToken":{"idToken":"TAG-OK","type":"ISO14443"},"evse":{"id":1,"connectorId":1}}]"#,
    )
    .await;
    assert_eq!(started[2]["idTokenInfo"]["status"], "Accepted", "{started}");

    node.kill_and_restart();
    let list = node.get_json("/api/transactions");
    let txs = list["transactions"].as_array().expect("transactions");
    assert_eq!(txs.len(), 2, "{list}");
    let t16 = txs
        .iter()
        .find(|t| t["chargerId"] == "CP-16")
        .expect("1.6 transaction kept");
    assert_eq!(t16["transactionId"], tx.to_string());
    assert_eq!(t16["status"], "Ended");
    assert_eq!(
        (t16["meterStart"].as_f64(), t16["meterStop"].as_f64()),
        (Some(100.0), Some(1500.0))
    );
    assert_eq!(t16["meterValueCount"], 1);
    let t201 = txs
        .iter()
        .find(|t| t["chargerId"] == "CP-201")
        .expect("2.0.1 transaction kept");
    assert_eq!(
        (t201["transactionId"].as_str(), t201["status"].as_str()),
        (Some("tx-201"), Some("Active"))
    );

    // The restarted node keeps numbering after the last id instead of reusing it.
    let mut v16 = connect(&node.charger_url, "CP-16", Some("ocpp1.6"), None)
        .await
        .unwrap();
    let next = call(
        &mut v16,
        r#"[2,"s3","StartTransaction",{"connectorId":2,"idTag":"TAG-OK","meterStart":0,"timestamp":"2026-01-01T12:00:00Z"}]"#,
    )
    .await;
    assert!(next[2]["transactionId"].as_i64() > Some(tx), "{next}");
}
