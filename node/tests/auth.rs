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

    // (charger id in the URL, Basic credentials): each is refused at the upgrade with 401.
    let refused: [(&str, Option<(&str, &str)>); 4] = [
        ("CP-1", Some(("CP-1", "wrong"))),
        ("CP-1", None),
        // The user must be the charger id in the URL: one charger cannot log in as another.
        ("CP-2", Some(("CP-1", "correct horse"))),
        // A charger with no password configured cannot log in with anyone's.
        ("CP-2", Some(("CP-2", "correct horse"))),
    ];
    for (id, basic) in refused {
        let outcome = connect(url, id, Some("ocpp1.6"), basic).await.err();
        assert_eq!(outcome, Some(401), "{id} with {basic:?}");
    }

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
