//! End-to-end signatures by hand: `ocpp-node keys generate | show`, `sign` and `verify`, run
//! as the real binary on files and stdin.

mod common;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::BIN;
use serde_json::{Value, json};

const ALGORITHMS: [&str; 3] = ["ed25519", "secp256r1", "secp384r1"];
const RESET: &str = r#"{"type":"Immediate","evseId":1}"#;

/// Runs the binary with `args`, `stdin` written to it (closed at once when `None`).
fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocpp-node");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("ocpp-node output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts exit 1 with `want` in stderr, and nothing on stdout.
fn fails(out: &Output, want: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(want), "stderr must say {want:?}:\n{stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A new key file: its path and keyId.
fn generate(dir: &Path, algorithm: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{algorithm}.pem"));
    let out = run(
        &[
            "keys",
            "generate",
            "--algorithm",
            algorithm,
            "--out",
            path.to_str().unwrap(),
        ],
        None,
    );
    let stdout = ok(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must be the keyId alone: {stdout:?}");
    (path, lines[0].to_owned())
}

fn sign(key: &Path, extra: &[&str], payload: &str) -> Value {
    let mut args = vec![
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--action",
        "Reset",
        "--destination",
        "CS-1",
    ];
    args.extend_from_slice(extra);
    let stdout = ok(&run(&args, Some(payload)));
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout:?}");
    serde_json::from_str(&stdout).expect("sign prints JSON")
}

fn verify(key_ids: &[&str], extra: &[&str], payload: &str) -> Output {
    let mut args = vec!["verify", "--action", "Reset", "--destination", "CS-1"];
    for id in key_ids {
        args.extend_from_slice(&["--key-id", id]);
    }
    args.extend_from_slice(extra);
    run(&args, Some(payload))
}

#[test]
fn generate_writes_a_private_key_whose_id_show_prints() {
    let dir = tempfile::tempdir().unwrap();
    for algorithm in ALGORITHMS {
        let (path, key_id) = generate(dir.path(), algorithm);
        assert_eq!(mode(&path), 0o600, "{algorithm}");
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let out = run(&["keys", "show", path.to_str().unwrap()], None);
        let shown = ok(&out);
        assert_eq!(
            shown,
            format!("keyId: {key_id}\nalgorithm: {algorithm}\n"),
            "{algorithm}"
        );
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        assert!(!shown.contains("PRIVATE"));
    }
    // A group-readable key file is still shown, with a warning.
    let path = dir.path().join("ed25519.pem");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["keys", "show", path.to_str().unwrap()], None);
    ok(&out);
    assert!(
        text(&out.stderr).contains("readable by group or others (mode 644)"),
        "{}",
        text(&out.stderr)
    );
    fails(
        &run(
            &[
                "keys",
                "show",
                dir.path().join("none.pem").to_str().unwrap(),
            ],
            None,
        ),
        "cannot read",
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    fails(
        &run(&["keys", "show", junk.to_str().unwrap()], None),
        "is not a signing key",
    );
}

#[test]
fn generate_refuses_to_overwrite_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (path, first) = generate(dir.path(), "ed25519");
    let before = std::fs::read(&path).unwrap();
    let args = [
        "keys",
        "generate",
        "--algorithm",
        "secp256r1",
        "--out",
        path.to_str().unwrap(),
    ];
    fails(&run(&args, None), "exists; not overwriting it (use --force");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // --force replaces it, and the new file is 0600 even where the old one was not.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut forced = args.to_vec();
    forced.push("--force");
    let second = ok(&run(&forced, None));
    assert_ne!(second.trim(), first);
    assert_eq!(mode(&path), 0o600);
    let shown = ok(&run(&["keys", "show", path.to_str().unwrap()], None));
    assert!(shown.contains("algorithm: secp256r1"), "{shown}");
    assert!(!dir.path().join("ed25519.pem.tmp").exists());
    // A wrong argument is a usage error (clap's exit 2), and writes nothing.
    let rsa = dir.path().join("rsa.pem");
    let out = run(
        &[
            "keys",
            "generate",
            "--algorithm",
            "rsa",
            "--out",
            rsa.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown signature algorithm \"rsa\" (expected ed25519"),
        "{}",
        text(&out.stderr)
    );
    assert!(!rsa.exists());
}

#[test]
fn signed_payloads_verify_for_all_three_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    for algorithm in ALGORITHMS {
        let (key, key_id) = generate(dir.path(), algorithm);
        let signed = sign(&key, &["--name", "technician"], RESET);
        assert_eq!(signed["type"], "Immediate");
        let sig = &signed["signatures"][0];
        assert_eq!(sig["keyId"], key_id.as_str());
        assert_eq!(sig["algorithm"], algorithm);
        assert_eq!(sig["signingMethod"], "jcs-v1");
        assert_eq!(sig["name"], "technician");
        assert_eq!(sig["nonce"].as_str().unwrap().len(), 32, "16 bytes hex");
        let stamp = sig["timestamp"].as_str().unwrap();
        assert!(stamp.ends_with('Z') && stamp.len() == 20, "{stamp}");
        // From stdin, and from a file.
        let text = signed.to_string();
        let out = verify(&[&key_id], &[], &text);
        assert_eq!(ok(&out), format!("verified {key_id}\n"));
        let file = dir.path().join(format!("{algorithm}.json"));
        std::fs::write(&file, &text).unwrap();
        let out = verify(&[&key_id], &[file.to_str().unwrap()], "");
        assert_eq!(ok(&out), format!("verified {key_id}\n"));
    }
}

#[test]
fn two_signers_and_unlisted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_id) = generate(dir.path(), "ed25519");
    let (b, b_id) = generate(dir.path(), "secp384r1");
    let once = sign(&a, &[], RESET);
    let twice = sign(
        &b,
        &[
            "--nonce",
            "n-1",
            "--timestamp",
            &chrono::Utc::now().to_rfc3339(),
            "-",
        ],
        &once.to_string(),
    );
    assert_eq!(twice["signatures"].as_array().unwrap().len(), 2);
    assert_eq!(twice["signatures"][1]["nonce"], "n-1");
    let text = twice.to_string();
    let out = verify(&[&a_id, &b_id], &[], &text);
    assert_eq!(ok(&out), format!("verified {a_id}\nverified {b_id}\n"));
    // Only b asked for: a's signature is reported and ignored.
    let out = verify(&[&b_id], &[], &text);
    assert_eq!(ok(&out), format!("verified {b_id}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("ignored: signature 1 by {a_id} (not a --key-id)")),
        "{stderr}"
    );
}

#[test]
fn changed_or_misaddressed_payloads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, key_id) = generate(dir.path(), "secp256r1");
    let (_, other_id) = generate(dir.path(), "ed25519");
    let signed = sign(&key, &[], RESET);

    let mut tampered = signed.clone();
    tampered["type"] = json!("OnIdle");
    fails(
        &verify(&[&key_id], &[], &tampered.to_string()),
        &format!(
            "signature 1: signature by {key_id} does not verify (the message was changed, or the key is wrong)"
        ),
    );
    let text = signed.to_string();
    let wrong_action = run(
        &[
            "verify",
            "--key-id",
            &key_id,
            "--action",
            "UpdateFirmware",
            "--destination",
            "CS-1",
        ],
        Some(&text),
    );
    fails(&wrong_action, "does not verify");
    let wrong_destination = run(
        &[
            "verify",
            "--key-id",
            &key_id,
            "--action",
            "Reset",
            "--destination",
            "CS-2",
        ],
        Some(&text),
    );
    fails(&wrong_destination, "does not verify");
    fails(
        &verify(&[&key_id], &["--message-type", "6"], &text),
        "does not verify",
    );
    fails(
        &verify(&[&other_id], &[], &text),
        "no signature by any --key-id (it has 1, by other keys)",
    );
    fails(
        &verify(&[&key_id], &[], RESET),
        "no signature by any --key-id (it has no signatures)",
    );
    fails(&verify(&["AAAA"], &[], &text), "--key-id AAAA");
    fails(&verify(&[&key_id], &[], "[1,2]"), "is not a JSON object");
    fails(&verify(&[&key_id], &[], "{"), "is not JSON");
}

#[test]
fn timestamps_outside_the_window_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, key_id) = generate(dir.path(), "ed25519");
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let old = sign(&key, &["--timestamp", &hour_ago], RESET).to_string();
    fails(&verify(&[&key_id], &[], &old), "outside the ±300 s window");
    let out = verify(&[&key_id], &["--window", "7200"], &old);
    assert_eq!(ok(&out), format!("verified {key_id}\n"));
    fails(
        &run(
            &[
                "sign",
                "--key",
                key.to_str().unwrap(),
                "--action",
                "Reset",
                "--destination",
                "CS-1",
                "--timestamp",
                "yesterday",
            ],
            Some(RESET),
        ),
        "is not RFC 3339",
    );
}
