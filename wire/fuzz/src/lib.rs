//! The checks the fuzz targets run, kept free of libFuzzer so that `wire/tests/fuzz_corpus.rs`
//! can replay the committed corpora through the very same code as an ordinary test.
//!
//! Each check decodes the input; whatever decodes must re-encode, and the re-encoding must decode
//! to an equal frame. Decoding runs twice, with the default limits and with tight ones, so that
//! small inputs also reach the limit checks.

use wire::Limits;
use wire::binary;
use wire::text::{decode_overlay, decode_plain};

/// Limits small enough that a few hundred fuzzed bytes cross every one of them.
pub const TIGHT: Limits = Limits {
    max_frame_bytes: 96,
    max_id_bytes: 4,
    max_action_bytes: 6,
    max_path_len: 2,
    max_node_id_bytes: 5,
};

fn all_limits() -> [Limits; 2] {
    [Limits::default(), TIGHT]
}

/// A text frame arrives as a WebSocket text message, which is UTF-8 by the time it is decoded.
pub fn check_plain(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for limits in all_limits() {
        if let Ok(frame) = decode_plain(text, &limits) {
            let again = frame.to_plain_string();
            match decode_plain(&again, &limits) {
                Ok(back) => assert_eq!(back, frame, "re-encoded as {again}"),
                // Re-encoding may legitimately grow a frame (`\b` is written as `\u0008`).
                Err(e) => assert!(
                    again.len() > limits.max_frame_bytes,
                    "re-encoding {text:?} as {again:?} does not decode: {e:?}"
                ),
            }
        }
    }
}

pub fn check_overlay(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for limits in all_limits() {
        if let Ok(frame) = decode_overlay(text, &limits) {
            let again = frame.to_text();
            match decode_overlay(&again, &limits) {
                Ok(back) => assert_eq!(back, frame, "re-encoded as {again}"),
                Err(e) => assert!(
                    again.len() > limits.max_frame_bytes,
                    "re-encoding {text:?} as {again:?} does not decode: {e:?}"
                ),
            }
        }
    }
}

pub fn check_binary(data: &[u8]) {
    for limits in all_limits() {
        if let Ok(frame) = binary::decode(data, &limits) {
            // The encoder writes what the decoder read (only whitespace around the meta object
            // is dropped), so the re-encoding is never larger than the input and must succeed.
            let again = match frame.encode(&limits) {
                Ok(bytes) => bytes,
                Err(e) => panic!("decoded frame does not re-encode: {e:?}"),
            };
            assert!(again.len() <= data.len(), "re-encoding grew the frame");
            match binary::decode(&again, &limits) {
                Ok(back) => assert_eq!(back, frame),
                Err(e) => panic!("re-encoding does not decode: {e:?}"),
            }
        }
    }
}
