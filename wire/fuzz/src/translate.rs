//! The fuzz check of the overlay translation (routing::correlation). It lives apart from lib.rs
//! because it needs the routing crate: the fuzz target includes this file, and
//! `routing/tests/fuzz_corpus.rs` replays the committed corpus through it on stable Rust.

use wire::Limits;
use wire::text::{decode_overlay, decode_plain};

/// Default limits, and limits small enough that short fuzzed inputs cross them.
fn all_limits() -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            max_frame_bytes: 96,
            max_id_bytes: 4,
            max_action_bytes: 6,
            max_path_len: 2,
            max_node_id_bytes: 5,
        },
    ]
}

/// The edge and hub translations (routing::correlation) on whatever decodes: plain → overlay →
/// text → overlay must agree, the restored id must be the charger's own, and the payload bytes
/// must cross untouched. The first byte picks the direction.
pub fn check_translate(data: &[u8]) {
    use routing::correlation::{self, Correlation};
    use wire::Route;
    use wire::text::{Frame, OverlayFrame, empty_details};

    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for limits in all_limits() {
        let mut corr: Correlation<()> = Correlation::new(4);
        if which & 1 == 0 {
            // Edge: a plain charger's frame goes up.
            let Ok(frame) = decode_plain(text, &limits) else {
                continue;
            };
            let original = frame.clone();
            let is_call = frame.message_type() == wire::MessageType::Call;
            match correlation::plain_call_to_overlay(
                &mut corr,
                "CP-1",
                frame,
                "u-1".to_owned(),
                deadline,
                (),
            ) {
                Ok(up) => {
                    assert!(is_call, "only a CALL translates up");
                    assert_eq!(up.frame.id, "u-1");
                    assert_eq!(up.path.first(), "CP-1", "the path is the authenticated id");
                    assert_eq!(up.frame.body, original.body, "payload passed through");
                    let sent = up.to_text();
                    // The overlay form may exceed tight limits (dest and path are added).
                    if let Ok(back) = decode_overlay(&sent, &Limits::default()) {
                        assert_eq!(back, up, "overlay text {sent}");
                    }
                    let reply = OverlayFrame {
                        dest: Route::single("CP-1"),
                        path: Route::single("CSMS"),
                        frame: Frame::result("u-1", empty_details()),
                    };
                    let (plain, _) = correlation::overlay_reply_to_plain(&mut corr, reply)
                        .expect("the reply to a translated CALL is known");
                    assert_eq!(plain.id, original.id, "the charger's own id is restored");
                }
                Err(_) => assert!(!is_call || corr.is_empty()),
            }
            if !is_call {
                let reply = correlation::plain_reply_to_overlay(&mut corr, "CP-1", original);
                assert!(reply.is_err(), "an unsolicited reply is not translated");
            }
        } else {
            // Hub or edge: an overlay frame comes down to a plain peer.
            let Ok(frame) = decode_overlay(text, &limits) else {
                continue;
            };
            let original = frame.clone();
            let is_call = frame.frame.message_type() == wire::MessageType::Call;
            match correlation::overlay_call_to_plain(&mut corr, frame, deadline, ()) {
                Ok(plain) => {
                    assert!(is_call && original.dest.len() == 1);
                    assert_eq!(plain, original.frame, "the CALL goes down unchanged");
                    let answer = Frame::result(plain.id.clone(), empty_details());
                    let (up, _) = correlation::plain_reply_to_overlay(
                        &mut corr,
                        original.dest.first(),
                        answer,
                    )
                    .expect("the charger's answer is known");
                    assert_eq!(
                        up.dest.first(),
                        original.path.first(),
                        "replies go to path[0]"
                    );
                    assert_eq!(up.frame.id, original.frame.id);
                }
                Err(_) => {
                    if !is_call {
                        let r = correlation::overlay_reply_to_plain(&mut corr, original);
                        assert!(r.is_err(), "an unknown reply is not translated");
                    }
                }
            }
        }
    }
}
