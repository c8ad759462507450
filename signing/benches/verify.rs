//! Verifications per second on one core, per algorithm: `signing::signature::verify` on a
//! signed Reset payload (the member checks, the time window, base64, the signer object and the
//! RFC 8785 canonical bytes, then the curve), against the curve crate's own verify of the same
//! canonical bytes with the signature already decoded. The ratio says what the envelope costs;
//! the target is ≥ 0.8 × raw.
//!
//! `cargo bench -p ocpp-signing --bench verify` (release, one thread); one line per algorithm
//! and measurement. `SIGNING_BENCH_MS` sets each measuring slice (default 300 ms); the rates are
//! the median of 7 slices, the two measurements taking turns.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use signing::canonical::{Message, signed_bytes};
use signing::signature::{self, SignOptions};
use signing::{Algorithm, PrivateKey, PublicKey};

const NOW: i64 = 1_796_644_800; // 2026-12-07T12:00:00Z
const SLICES: usize = 7;

const RESET: Message<'static> = Message {
    message_type: 2,
    action: "Reset",
    destination: "CP-0001",
};

/// A 2.0.1 Reset as a CSMS operator signs it: name, description, timestamp and a 16-byte nonce.
fn signed_reset(key: &PrivateKey) -> Value {
    let mut payload = json!({"type": "Immediate", "evseId": 1});
    let sig = signature::sign(
        &RESET,
        &payload,
        key,
        SignOptions {
            timestamp: "2026-12-07T12:00:00Z".into(),
            nonce: Some("9f2c4e1a7b3d58e6c0a1f4b29d7e6c35".into()),
            name: Some("operator-7".into()),
            description: Some("remote reset after firmware update".into()),
        },
    )
    .expect("sign");
    signature::attach(&mut payload, sig).expect("attach");
    payload
}

/// The curve crate's own verify, the signature decoded beforehand.
enum Raw {
    Ed25519(ed25519_dalek::VerifyingKey, ed25519_dalek::Signature),
    P256(p256::ecdsa::VerifyingKey, p256::ecdsa::Signature),
    P384(p384::ecdsa::VerifyingKey, p384::ecdsa::Signature),
}

impl Raw {
    fn new(key: &PublicKey, sig: &[u8]) -> Raw {
        match key {
            PublicKey::Ed25519(k) => {
                Raw::Ed25519(*k, ed25519_dalek::Signature::from_slice(sig).expect("sig"))
            }
            PublicKey::Secp256r1(k) => {
                Raw::P256(*k, p256::ecdsa::Signature::from_slice(sig).expect("sig"))
            }
            PublicKey::Secp384r1(k) => {
                Raw::P384(*k, p384::ecdsa::Signature::from_slice(sig).expect("sig"))
            }
        }
    }

    fn verify(&self, message: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match self {
            Raw::Ed25519(k, s) => k.verify_strict(message, s).is_ok(),
            Raw::P256(k, s) => k.verify(message, s).is_ok(),
            Raw::P384(k, s) => k.verify(message, s).is_ok(),
        }
    }
}

/// Calls `f` for `slice`, and returns calls per second.
fn rate(slice: Duration, mut f: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        // Check the clock every 16 calls; a call is tens of µs, so that is precise enough.
        for _ in 0..16 {
            assert!(f(), "a signature did not verify");
        }
        n += 16;
        let elapsed = start.elapsed();
        if elapsed >= slice {
            return n as f64 / elapsed.as_secs_f64();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of `f`, the median of the slices.
fn ns_per_call<T>(slice: Duration, mut f: impl FnMut() -> T) -> f64 {
    let rates: Vec<f64> = (0..SLICES)
        .map(|_| {
            rate(slice / 3, || {
                black_box(f());
                true
            })
        })
        .collect();
    1e9 / median(rates)
}

/// Where the envelope's time goes, outside the curve: each step of `signature::verify` alone.
fn breakdown(slice: Duration, payload: &Value, object: &Map<String, Value>) {
    let stamp = object["timestamp"].as_str().expect("timestamp");
    let value = object["value"].as_str().expect("value");
    let mut signer = object.clone();
    signer.remove("value");
    let steps = [
        (
            "signer_clone",
            ns_per_call(slice, || {
                let mut s = black_box(object).clone();
                s.remove("value");
                s
            }),
        ),
        (
            "canonical_bytes",
            ns_per_call(slice, || {
                signed_bytes(&RESET, black_box(payload), black_box(&signer)).expect("canonical")
            }),
        ),
        (
            "timestamp_parse",
            ns_per_call(slice, || {
                chrono::DateTime::parse_from_rfc3339(black_box(stamp))
            }),
        ),
        (
            "base64_decode",
            ns_per_call(slice, || STANDARD.decode(black_box(value))),
        ),
    ];
    let line: Vec<String> = steps
        .iter()
        .map(|(name, ns)| format!("{name}_ns={ns:.0}"))
        .collect();
    println!("signing verify envelope {}", line.join(" "));
}

fn main() {
    let slice = Duration::from_millis(
        std::env::var("SIGNING_BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    for algorithm in Algorithm::ALL {
        let key = PrivateKey::generate(algorithm).expect("key");
        let public = key.public();
        let payload = signed_reset(&key);
        let objects = signature::signatures(&payload).expect("signatures");
        let object: &Map<String, Value> = objects[0];
        let mut signer = object.clone();
        let value = signer.remove("value").expect("value");
        let raw_sig = STANDARD
            .decode(value.as_str().expect("value is a string"))
            .expect("base64");
        let bytes = signed_bytes(&RESET, &payload, &signer).expect("canonical");
        let raw = Raw::new(&public, &raw_sig);
        if algorithm == Algorithm::Ed25519 {
            breakdown(slice, &payload, object);
        }

        // Warm both paths up, then take turns.
        rate(slice / 3, || raw.verify(black_box(&bytes)));
        let full = || {
            signature::verify(
                black_box(&RESET),
                black_box(&payload),
                black_box(object),
                &public,
                NOW,
                300,
            )
            .is_ok()
        };
        rate(slice / 3, full);
        let (mut wrapped, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..SLICES {
            wrapped.push(rate(slice, full));
            bare.push(rate(slice, || raw.verify(black_box(&bytes))));
        }
        let (wrapped, bare) = (median(wrapped), median(bare));
        let ratio = wrapped / bare;
        println!(
            "signing verify algorithm={algorithm} canonical_bytes={} signature::verify_per_s={wrapped:.0} raw_verify_per_s={bare:.0} ratio={ratio:.3} target=0.8 {}",
            bytes.len(),
            if ratio >= 0.8 { "PASS" } else { "FAIL" }
        );
    }
}
