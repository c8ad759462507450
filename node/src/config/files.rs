//! The start-up step: loads every file a config names (TLS certificates and keys, the secrets
//! file, the identity key) once, and reports each one that cannot be used under its config key,
//! beside the config's own mistakes. `check-config` runs the same step, so a config it calls
//! valid starts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{Config, ConfigError, Parsed, parse_all, read};
use crate::core::identity::NodeKey;
use crate::core::secrets::Secrets;
use crate::net::tls;

/// What the files named by a valid config hold.
#[derive(Default)]
pub struct Loaded {
    pub secrets: Secrets,
    /// The configured identity key (`node.identity_key_file`); unset, the node generates one.
    pub identity_key: Option<NodeKey>,
    /// Per listener, in config order: the TLS server config of profiles 2 and 3.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Per uplink, in config order: the TLS client config of a `wss://` uplink.
    pub uplink_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// The hub's TLS client config toward a `wss://` CSMS.
    pub hub_tls: Option<Arc<rustls::ClientConfig>>,
    /// `[[signing.key]]` by name.
    pub signing_keys: HashMap<String, signing::PrivateKey>,
    /// `[signing] jws_trust`.
    pub jws_keys: Vec<signing::jws::JwsKey>,
    /// The config file this was loaded from (read again on SIGHUP); none for the embedded one.
    pub config_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("identity_key", &self.identity_key)
            .field(
                "listener_tls",
                &self
                    .listener_tls
                    .iter()
                    .map(Option::is_some)
                    .collect::<Vec<_>>(),
            )
            .field(
                "uplink_tls",
                &self
                    .uplink_tls
                    .iter()
                    .map(Option::is_some)
                    .collect::<Vec<_>>(),
            )
            .field("hub_tls", &self.hub_tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads a config file, checks it, and loads the files it names.
pub fn load(path: &Path) -> Result<(Config, Loaded), Vec<ConfigError>> {
    let (config, mut loaded) = check_text(&read(path)?)?;
    loaded.config_file = Some(path.to_owned());
    Ok((config, loaded))
}

/// Reads `[signing] jws_trust`: PEM certificates ("CERTIFICATE") or public keys ("PUBLIC KEY").
pub fn load_jws_keys(
    config: &super::SigningConfig,
) -> (Vec<signing::jws::JwsKey>, Vec<ConfigError>) {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
    use signing::jws::JwsKey;
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (i, path) in config.jws_trust.iter().enumerate() {
        let at = format!("signing.jws_trust[{i}]");
        let shown = path.display();
        let bytes = match crate::core::small_file::read(path) {
            Ok(b) => b,
            Err(e) => {
                errors.push(ConfigError::new(at, format!("cannot read {shown}: {e}")));
                continue;
            }
        };
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            match cert
                .map_err(|e| e.to_string())
                .and_then(|c| JwsKey::from_certificate_der(c.as_ref()).map_err(|e| e.to_string()))
            {
                Ok(k) => {
                    keys.push(k);
                    found += 1;
                }
                Err(e) => errors.push(ConfigError::new(at.clone(), format!("{shown}: {e}"))),
            }
        }
        if found == 0 {
            match SubjectPublicKeyInfoDer::from_pem_slice(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|k| JwsKey::from_spki_der(k.as_ref()).map_err(|e| e.to_string()))
            {
                Ok(k) => keys.push(k),
                Err(e) => errors.push(ConfigError::new(
                    at,
                    format!(
                        "{shown} holds no usable CERTIFICATE or PUBLIC KEY (P-256 or RSA): {e}"
                    ),
                )),
            }
        }
    }
    (keys, errors)
}

/// Reads the `[[signing.key]]` files: PKCS#8, readable by the owner only.
pub fn load_signing_keys(
    config: &super::SigningConfig,
) -> (HashMap<String, signing::PrivateKey>, Vec<ConfigError>) {
    let mut keys = HashMap::new();
    let mut errors = Vec::new();
    for (i, k) in config.key.iter().enumerate() {
        let path = format!("signing.key[{i}].file");
        let shown = k.file.display();
        match crate::core::secrets::loose_mode(&k.file) {
            Ok(Some(mode)) => {
                errors.push(ConfigError::new(
                    path,
                    format!("{shown} is readable by group or others (mode {mode:o}); run chmod 600 on it"),
                ));
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                errors.push(ConfigError::new(path, format!("cannot read {shown}: {e}")));
                continue;
            }
        }
        let read = crate::core::small_file::read(&k.file)
            .map_err(|e| format!("cannot read {shown}: {e}"))
            .and_then(|bytes| {
                signing::PrivateKey::from_pkcs8(&bytes).map_err(|e| format!("{shown}: {e}"))
            });
        match read {
            Ok(key) => {
                if keys.insert(k.name.clone(), key).is_some() {
                    errors.push(ConfigError::new(
                        format!("signing.key[{i}].name"),
                        format!("{:?} is defined twice", k.name),
                    ));
                }
            }
            Err(m) => errors.push(ConfigError::new(path, m)),
        }
    }
    (keys, errors)
}

/// Checks a config text and loads the files it names; every mistake of both is reported.
pub fn check_text(text: &str) -> Result<(Config, Loaded), Vec<ConfigError>> {
    let mut parsed = parse_all(text);
    let loaded = parsed.config.as_ref().map(|c| load_files(c, &parsed));
    match loaded {
        Some((loaded, errors)) => {
            parsed.errors.extend(errors);
            parsed.into_result().map(|c| (c, loaded))
        }
        None => Err(parsed.errors),
    }
}

/// Loads what `config` names; `parsed` gives the operator's listener numbering for errors.
fn load_files(config: &Config, parsed: &Parsed) -> (Loaded, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));
    let mut loaded = Loaded::default();

    if let Some(file) = &config.node.secrets_file {
        match Secrets::load(file) {
            Ok(s) => loaded.secrets = s,
            Err(e) => err("node.secrets_file".into(), e.to_string()),
        }
    }
    // A configured key must already be there: generating one at a path the operator chose would
    // hide a typo behind a new identity. Only the default path is generated.
    if let Some(file) = &config.node.identity_key_file {
        match NodeKey::load(file) {
            Ok(k) => loaded.identity_key = Some(k),
            Err(e) => err("node.identity_key_file".into(), e.to_string()),
        }
    }

    let (keys, key_errors) = load_signing_keys(&config.signing);
    loaded.signing_keys = keys;
    errors.extend(key_errors);
    let (jws, jws_errors) = load_jws_keys(&config.signing);
    loaded.jws_keys = jws;
    errors.extend(jws_errors);
    let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));

    for (i, l) in config.listener.iter().enumerate() {
        let profile = l.security_profile;
        let mut server = None;
        if matches!(profile, 2 | 3) {
            let path = |field: &str| parsed.listener_path(i, field);
            let cert = l.tls_cert_file.as_deref().map(|p| {
                tls::load_certs(p)
                    .map_err(|e| err(path("tls_cert_file"), format!("cannot load: {e}")))
            });
            let key = l.tls_key_file.as_deref().map(|p| {
                tls::load_key(p).map_err(|e| err(path("tls_key_file"), format!("cannot load: {e}")))
            });
            let ca = match (profile, l.tls_client_ca_file.as_deref()) {
                (3, Some(p)) => Some(
                    tls::load_certs(p)
                        .map_err(|e| err(path("tls_client_ca_file"), format!("cannot load: {e}"))),
                ),
                (3, None) => None,
                _ => Some(Ok(Vec::new())),
            };
            // Missing files are the config check's to report; only complete sets are built.
            if let (Some(Ok(chain)), Some(Ok(key)), Some(Ok(ca))) = (cert, key, ca) {
                let roots = (profile == 3).then_some(ca);
                match tls::server_config(chain, key, roots) {
                    Ok(c) => server = Some(c),
                    Err(e) => err(path("tls_cert_file"), e.to_string()),
                }
            }
        }
        loaded.listener_tls.push(server);
    }

    for (i, u) in config.uplink.iter().enumerate() {
        let client = client_tls(
            &format!("uplink[{i}]"),
            &u.url,
            [&u.tls_ca_file, &u.tls_cert_file, &u.tls_key_file],
            &mut err,
        );
        loaded.uplink_tls.push(client);
    }
    if let Some(hub) = &config.hub {
        loaded.hub_tls = client_tls(
            "hub",
            &hub.csms_url,
            [&hub.tls_ca_file, &hub.tls_cert_file, &hub.tls_key_file],
            &mut err,
        );
    }
    (loaded, errors)
}

/// The client config of a `wss://` link: trust anchors and, for mutual TLS, a certificate.
fn client_tls(
    path: &str,
    url: &str,
    [ca, cert, key]: [&Option<std::path::PathBuf>; 3],
    err: &mut impl FnMut(String, String),
) -> Option<Arc<rustls::ClientConfig>> {
    if super::check_ws_url(url) != Ok(true) {
        return None;
    }
    let mut ok = true;
    let mut load = |name: &str, file: &Option<std::path::PathBuf>, is_key: bool| {
        let Some(file) = file else { return };
        let r = if is_key {
            tls::load_key(file).map(drop)
        } else {
            tls::load_certs(file).map(drop)
        };
        if let Err(e) = r {
            ok = false;
            err(format!("{path}.{name}"), format!("cannot load: {e}"));
        }
    };
    load("tls_ca_file", ca, false);
    load("tls_cert_file", cert, false);
    load("tls_key_file", key, true);
    if !ok || cert.is_some() != key.is_some() {
        return None;
    }
    match tls::client_config(ca.as_deref(), cert.as_deref(), key.as_deref()) {
        Ok(c) => Some(c),
        Err(e) => {
            err(path.to_owned(), e.to_string());
            None
        }
    }
}
