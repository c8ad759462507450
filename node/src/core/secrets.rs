//! Outbound secrets (ARCHITECTURE §6.4): the passwords this node presents to its uplinks and,
//! on a hub, per charger to the CSMS. They live in their own file, apart from the config that
//! technicians copy around, and that file must not be readable by group or others.
//!
//! ```toml
//! [uplinks.hub1]
//! password = "..."
//! [chargers."CP-1"]
//! password = "..."
//! [admin]
//! token = "..."      # the admin API's bearer token
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A password that never shows up in logs or debug output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    token: Secret,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    uplinks: BTreeMap<String, Entry>,
    chargers: BTreeMap<String, Entry>,
    admin: Option<AdminEntry>,
}

#[derive(Debug, Clone, Default)]
pub struct Secrets {
    file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secrets file {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    // The parser's message names the key and position, never the value.
    #[error("secrets file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

impl Secrets {
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        check_permissions(path)?;
        let text =
            crate::core::small_file::read_to_string(path).map_err(|source| SecretsError::Read {
                path: path.to_owned(),
                source,
            })?;
        let file: File = toml::from_str(&text).map_err(|e| SecretsError::Parse {
            path: path.to_owned(),
            message: redact(&e),
        })?;
        Ok(Secrets { file })
    }

    pub fn uplink_password(&self, name: &str) -> Option<&Secret> {
        self.file.uplinks.get(name).map(|e| &e.password)
    }

    pub fn charger_password(&self, charger: &str) -> Option<&Secret> {
        self.file.chargers.get(charger).map(|e| &e.password)
    }

    /// The admin API's bearer token, when the file sets one.
    pub fn admin_token(&self) -> Option<&Secret> {
        self.file.admin.as_ref().map(|a| &a.token)
    }
}

/// toml's message quotes the offending line, which may hold a password: keep only its first
/// line (position and reason).
fn redact(e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message.to_owned(),
    }
}

fn check_permissions(path: &Path) -> Result<(), SecretsError> {
    match loose_mode(path) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => Err(SecretsError::Permissions {
            path: path.to_owned(),
            mode,
        }),
        Err(source) => Err(SecretsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The permission bits of a file that holds secrets (the secrets file, the node's private key)
/// when group or others may access it, `None` when only its owner can. Such a file is refused
/// rather than used: a key anyone on the machine can read signs nothing worth trusting.
#[cfg(unix)]
pub fn loose_mode(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

#[cfg(not(unix))]
pub fn loose_mode(path: &Path) -> std::io::Result<Option<u32>> {
    std::fs::metadata(path).map(|_| None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn write(mode: u32, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn reads_uplink_and_charger_passwords() {
        let (_d, path) = write(
            0o600,
            "[uplinks.hub1]\npassword = \"u\"\n[chargers.\"CP-1\"]\npassword = \"c\"\n",
        );
        let s = Secrets::load(&path).expect("load");
        assert_eq!(s.uplink_password("hub1").map(Secret::expose), Some("u"));
        assert_eq!(s.charger_password("CP-1").map(Secret::expose), Some("c"));
        assert!(s.charger_password("CP-2").is_none());
    }

    #[test]
    fn group_or_world_readable_file_is_refused() {
        let (_d, path) = write(0o644, "[uplinks.hub1]\npassword = \"u\"\n");
        let e = Secrets::load(&path).expect_err("0644 must be refused");
        assert!(
            matches!(e, SecretsError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn parse_errors_never_echo_the_secret() {
        let (_d, path) = write(0o600, "[uplinks.hub1]\npassword = \"hunter2\"\nextra = 1\n");
        let e = Secrets::load(&path).expect_err("unknown key");
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("extra"), "{text}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let (_d, path) = write(0o600, "[uplinks.hub1]\npassword = \"hunter2\"\n");
        let s = Secrets::load(&path).expect("load");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
