//! The node's own identity: an Ed25519 key pair (PKCS#8), which signs the security event log's
//! head today and, later, what the node attests for legacy chargers. Only the public half is
//! ever printed; a key file that group or others can read stops the node from starting.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// The identity key generated at first start when `node.identity_key_file` is not set.
pub const KEY_FILE_NAME: &str = "node-identity.pk8";

// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read identity key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "identity key file {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "identity key file {} is not an Ed25519 private key in PKCS#8 (DER, or PEM \"PRIVATE KEY\"): {why}",
        path.display()
    )]
    Invalid { path: PathBuf, why: String },
    #[error("cannot create identity key file {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate an identity key: the system random source failed")]
    Generate,
}

/// The node's Ed25519 identity key. Only its public half is ever printed.
pub struct NodeKey {
    pair: Ed25519KeyPair,
    path: PathBuf,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public_key", &self.public_hex())
            .field("path", &self.path)
            .finish()
    }
}

impl NodeKey {
    /// Reads an existing key file; refused if group or others may read it.
    pub fn load(path: &Path) -> Result<NodeKey, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        if let Some(mode) = crate::core::secrets::loose_mode(path).map_err(read)? {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = crate::core::small_file::read(path).map_err(read)?;
        let pair = parse_key(&bytes).map_err(|why| KeyError::Invalid {
            path: path.to_owned(),
            why,
        })?;
        Ok(NodeKey {
            pair,
            path: path.to_owned(),
        })
    }

    /// The configured key, or `<data_dir>/node-identity.pk8`, generated (mode 0600) when it does
    /// not exist yet. True when it was generated now.
    pub fn load_or_create(
        configured: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(NodeKey, bool), KeyError> {
        if let Some(path) = configured {
            return NodeKey::load(path).map(|k| (k, false));
        }
        let path = data_dir.join(KEY_FILE_NAME);
        let exists = path.try_exists().map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })?;
        if exists {
            return NodeKey::load(&path).map(|k| (k, false));
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        write_private(&path, pkcs8.as_ref()).map_err(|source| KeyError::Create {
            path: path.clone(),
            source,
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| KeyError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Ok((NodeKey { pair, path }, true))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// An Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// PKCS#8 v1 or v2, DER or PEM: `openssl genpkey -algorithm ed25519` writes v1 PEM.
fn parse_key(bytes: &[u8]) -> Result<Ed25519KeyPair, String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    let der: Cow<'_, [u8]> = if bytes.starts_with(b"-----BEGIN") {
        match PrivateKeyDer::from_pem_slice(bytes) {
            Ok(PrivateKeyDer::Pkcs8(k)) => Cow::Owned(k.secret_pkcs8_der().to_vec()),
            Ok(_) => return Err("a PEM key, but not PKCS#8 (BEGIN PRIVATE KEY)".into()),
            Err(e) => return Err(format!("PEM: {e}")),
        }
    } else {
        Cow::Borrowed(bytes)
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| e.to_string())
}

/// Writes a new private file: created 0600 (never wider, whatever the umask), synced, and only
/// then renamed into place, so a crash leaves no half-written key behind.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_private_and_loaded_again() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (k, created) = NodeKey::load_or_create(None, dir.path()).unwrap();
        assert!(created);
        let path = dir.path().join(KEY_FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = NodeKey::load_or_create(None, dir.path()).unwrap();
        assert!(!created);
        assert_eq!(again.public_hex(), k.public_hex());
        assert!(!format!("{again:?}").contains("pair"));
        // Group- or world-readable: refused, with the fix in the message.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = NodeKey::load_or_create(None, dir.path()).unwrap_err();
        assert!(
            matches!(e, KeyError::Permissions { mode: 0o640, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // A configured key must exist and be a key.
        let e = NodeKey::load_or_create(Some(&dir.path().join("nope.pk8")), dir.path());
        assert!(matches!(e, Err(KeyError::Read { .. })));
        let junk = dir.path().join("junk.pk8");
        std::fs::write(&junk, b"junk").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = NodeKey::load(&junk).unwrap_err();
        assert!(matches!(e, KeyError::Invalid { .. }), "{e}");
    }

    #[test]
    fn a_pem_pkcs8_key_is_accepted() {
        use base64::Engine as _;
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        );
        let from_pem = parse_key(pem.as_bytes()).expect("PEM");
        let from_der = parse_key(der.as_ref()).expect("DER");
        assert_eq!(
            from_pem.public_key().as_ref(),
            from_der.public_key().as_ref()
        );
    }
}
