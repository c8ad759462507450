//! `ocpp-node keys generate | show`, `sign` and `verify`: end-to-end signature keys and
//! signatures by hand, for a technician or a script that talks to a charger through the overlay.
//!
//! A key file is PKCS#8 PEM, created mode 0600. `sign` and `verify` read one JSON payload from a
//! file or stdin; `sign` prints it back as one line with a new signature object appended to its
//! `signatures` member, and `verify` checks every signature made by the keys it is given.

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use ring::rand::SecureRandom as _;
use serde_json::Value;
use signing::signature::{self, SignOptions};
use signing::{Algorithm, Message, PrivateKey, PublicKey};

use crate::core::identity::write_private;

/// The largest payload read, as the largest WebSocket frame a listener may allow.
const MAX_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// A key file is a few hundred bytes; anything much larger is not one.
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// `keys generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// ed25519, secp256r1 or secp384r1.
    #[arg(long)]
    pub algorithm: Algorithm,
    /// The key file to write (PKCS#8 PEM, mode 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// What a signature is bound to, besides the payload.
#[derive(Debug, Clone, clap::Args)]
pub struct MessageArgs {
    /// The action (for a CALLRESULT, the action of the request answered).
    #[arg(long)]
    pub action: String,
    /// The final destination as the originator addresses it: a charger id, or `CSMS`.
    #[arg(long)]
    pub destination: String,
    /// 2 CALL, 3 CALLRESULT, 4 CALLERROR, 5 CALLRESULTERROR, 6 SEND.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=6))]
    pub message_type: u8,
}

impl MessageArgs {
    fn message(&self) -> Message<'_> {
        Message {
            message_type: self.message_type,
            action: &self.action,
            destination: &self.destination,
        }
    }
}

/// `sign`.
#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// The private key file (PKCS#8, PEM or DER).
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub message: MessageArgs,
    /// The signer's `name` member.
    #[arg(long)]
    pub name: Option<String>,
    /// The signer's `description` member.
    #[arg(long)]
    pub description: Option<String>,
    /// The nonce; default 16 random bytes as hex.
    #[arg(long)]
    pub nonce: Option<String>,
    /// RFC 3339; default now. Written in UTC with seconds precision.
    #[arg(long)]
    pub timestamp: Option<String>,
    /// The JSON payload; `-` or nothing for stdin.
    pub payload: Option<PathBuf>,
}

/// `verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// A keyId whose signatures must verify; repeat for more. Signatures by other keys are
    /// reported and ignored.
    #[arg(long = "key-id", required = true)]
    pub key_ids: Vec<String>,
    #[command(flatten)]
    pub message: MessageArgs,
    /// How far a signature's timestamp may be from now, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(i64).range(0..=31_536_000))]
    pub window: i64,
    /// The JSON payload; `-` or nothing for stdin.
    pub payload: Option<PathBuf>,
}

/// Writes a new key and returns its keyId. Without `force` an existing file is left alone.
pub fn generate(args: &GenerateArgs) -> anyhow::Result<String> {
    let key = PrivateKey::generate(args.algorithm)?;
    let pem = key.to_pkcs8_pem()?;
    let path = &args.out;
    if args.force {
        // A new 0600 file renamed over the old one: never a half-written key, whatever mode
        // the old file had.
        write_private(path, pem.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        write_new(path, pem.as_bytes())?;
    }
    Ok(key.public().key_id())
}

/// Creates `path` with mode 0600 (never wider, whatever the umask); refuses if it exists.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists; not overwriting it (use --force to replace it)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Reads a private key file; warns on stderr if group or others may read it.
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let bytes = read_bounded(path, MAX_KEY_BYTES)?;
    if let Some(mode) = wide_mode(path) {
        eprintln!(
            "warning: {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
            path.display()
        );
    }
    PrivateKey::from_pkcs8(&bytes)
        .with_context(|| format!("{} is not a signing key", path.display()))
}

/// The file's permission bits when group or others have any access.
fn wide_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// `keys show`: the lines to print.
pub fn show(path: &Path) -> anyhow::Result<String> {
    let key = read_key(path)?;
    Ok(format!(
        "keyId: {}\nalgorithm: {}",
        key.public().key_id(),
        key.algorithm()
    ))
}

/// `sign`: the payload with the new signature appended, as one line of JSON.
pub fn sign(args: &SignArgs) -> anyhow::Result<String> {
    let key = read_key(&args.key)?;
    let (source, mut payload) = read_payload(args.payload.as_deref())?;
    let timestamp = match &args.timestamp {
        Some(text) => normalize_timestamp(text)?,
        None => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let nonce = match &args.nonce {
        Some(nonce) => nonce.clone(),
        None => random_nonce()?,
    };
    let options = SignOptions {
        timestamp,
        nonce: Some(nonce),
        name: args.name.clone(),
        description: args.description.clone(),
    };
    let object = signature::sign(&args.message.message(), &payload, &key, options)
        .with_context(|| format!("cannot sign {source}"))?;
    signature::attach(&mut payload, object).with_context(|| format!("cannot sign {source}"))?;
    Ok(serde_json::to_string(&payload)?)
}

/// An RFC 3339 time in UTC with seconds precision and `Z`, as `sign` writes it.
fn normalize_timestamp(text: &str) -> anyhow::Result<String> {
    let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        anyhow!("--timestamp {text:?} is not RFC 3339 (e.g. 2026-12-07T12:00:00Z): {e}")
    })?;
    Ok(at
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// 16 bytes from the system random source, as hex.
fn random_nonce() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("cannot make a nonce: the system random source failed"))?;
    Ok(hex::encode(bytes))
}

/// What `verify` found: the keyIds that verified (one per signature), and the signatures by
/// keys not asked for, described for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub verified: Vec<String>,
    pub ignored: Vec<String>,
}

/// `verify`, at `now` (Unix seconds). An error names every signature that failed.
pub fn verify(args: &VerifyArgs, now: i64) -> anyhow::Result<Verified> {
    let mut keys: Vec<PublicKey> = Vec::new();
    for id in &args.key_ids {
        let key = PublicKey::from_key_id(id.trim()).with_context(|| format!("--key-id {id}"))?;
        keys.push(key);
    }
    let (source, payload) = read_payload(args.payload.as_deref())?;
    let objects = signature::signatures(&payload).with_context(|| source.clone())?;
    let message = args.message.message();
    let mut verified = Vec::new();
    let mut ignored = Vec::new();
    let mut failed = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let n = i + 1;
        let Ok(id) = signature::key_id(object) else {
            ignored.push(format!("signature {n} has no keyId"));
            continue;
        };
        let Some(key) = keys.iter().find(|k| k.key_id() == id) else {
            ignored.push(format!("signature {n} by {id} (not a --key-id)"));
            continue;
        };
        match signature::verify(&message, &payload, object, key, now, args.window) {
            Ok(v) => verified.push(v.key_id),
            // This error names the key already.
            Err(e @ signature::VerifyError::Invalid(_)) => {
                failed.push(format!("signature {n}: {e}"))
            }
            Err(e) => failed.push(format!("signature {n} by {id}: {e}")),
        }
    }
    if !failed.is_empty() {
        bail!("{source}: {}", failed.join("; "));
    }
    if verified.is_empty() {
        let found = match objects.len() {
            0 => "it has no signatures".to_owned(),
            n => format!("it has {n}, by other keys"),
        };
        bail!("{source}: no signature by any --key-id ({found})");
    }
    Ok(Verified { verified, ignored })
}

/// The payload of `sign` and `verify`, and how to name it in messages.
fn read_payload(path: Option<&Path>) -> anyhow::Result<(String, Value)> {
    let (source, bytes) = match path {
        Some(p) if p != Path::new("-") => {
            (p.display().to_string(), read_bounded(p, MAX_PAYLOAD_BYTES)?)
        }
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .take(MAX_PAYLOAD_BYTES + 1)
                .read_to_end(&mut bytes)
                .context("cannot read the payload from stdin")?;
            if bytes.len() as u64 > MAX_PAYLOAD_BYTES {
                bail!("the payload on stdin is larger than {MAX_PAYLOAD_BYTES} bytes");
            }
            ("the payload on stdin".to_owned(), bytes)
        }
    };
    let payload: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{source} is not JSON"))?;
    if !payload.is_object() {
        bail!("{source} is not a JSON object (an OCPP payload is one)");
    }
    Ok((source, payload))
}

fn read_bounded(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_in_utc_seconds() {
        assert_eq!(
            normalize_timestamp("2026-12-07T13:00:00.750+01:00").unwrap(),
            "2026-12-07T12:00:00Z"
        );
        assert!(normalize_timestamp("yesterday").is_err());
        assert_eq!(random_nonce().unwrap().len(), 32);
    }
}
