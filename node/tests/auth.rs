//! Security profile 1: HTTP Basic auth with salted hashes made by `ocpp-node hash-password`.

mod common;
use common::{NodeProc, call, connect, hash_password};

#[tokio::test]
async fn profile_1_refuses_wrong_credentials_at_the_upgrade() {
    let h = hash_password("correct horse");
    assert!(h.starts_with("$argon2id$"), "{h}");
    assert!(!h.contains("correct horse"));
    let node = NodeProc::start(
        "security_profile = 1",
        &format!("[chargers.\"CP-1\"]\npassword_hash = \"{h}\"\n"),
    );
    let url = &node.charger_url;

    assert_eq!(
        connect(url, "CP-1", Some("ocpp1.6"), Some(("CP-1", "wrong")))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        connect(url, "CP-1", Some("ocpp1.6"), None).await.err(),
        Some(401)
    );
    // The user must be the charger id in the URL: one charger cannot log in as another.
    assert_eq!(
        connect(
            url,
            "CP-2",
            Some("ocpp1.6"),
            Some(("CP-1", "correct horse"))
        )
        .await
        .err(),
        Some(401)
    );
    assert_eq!(
        connect(
            url,
            "CP-2",
            Some("ocpp1.6"),
            Some(("CP-2", "correct horse"))
        )
        .await
        .err(),
        Some(401)
    );

    let mut ws = connect(
        url,
        "CP-1",
        Some("ocpp1.6"),
        Some(("CP-1", "correct horse")),
    )
    .await
    .expect("right password");
    let boot = call(
        &mut ws,
        r#"[2,"b","BootNotification",{"chargePointVendor":"v","chargePointModel":"m"}]"#,
    )
    .await;
    assert_eq!(boot[2]["status"], "Accepted");
    assert!(
        !node.stderr_log().contains("correct horse"),
        "passwords are never logged"
    );
}
