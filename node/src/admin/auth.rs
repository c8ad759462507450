//! Who may use the admin API: a bearer token on every request, or the cookie that `/login` sets
//! for a browser. The API shows every charger, route and security event of the node, so it is
//! never open, not even on loopback, where any local user could read it.
//!
//! The token is `[admin] token` in the secrets file; without one the node generates a random
//! token into `<data_dir>/admin.token` (mode 0600) at first start, so the default config is
//! protected too and the CLI on the same machine finds it. A wrong token costs the address one
//! failure in the same per-IP block the charger listeners use, and writes a security event.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use crate::core::node::Node;
use crate::net::ip_guard::{self, IpGuard};

/// The file, inside `data_dir`, of a generated token.
pub const TOKEN_FILE: &str = "admin.token";
/// The cookie `/login` sets; HttpOnly, so a script on some other page cannot read it.
pub const COOKIE: &str = "ocpp_admin_token";
/// Longest token accepted from a request or a file; longer input is refused before comparing.
const MAX_TOKEN: usize = 512;
/// Failed tokens from one address before it is blocked, and the block's first and longest span.
/// Fixed, unlike the listeners': a technician with the right token never fails five times.
const FAILURES: u32 = 5;
const BLOCK: Duration = Duration::from_secs(30);
const BLOCK_MAX: Duration = Duration::from_secs(600);

/// What the admin router's middleware checks against.
pub struct AdminAuth {
    token: String,
    /// `/metrics` without a token, for a Prometheus that cannot send one.
    metrics_open: bool,
    guard: IpGuard,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the admin token file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "admin token file {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("admin token file {} holds no usable token (1 to {MAX_TOKEN} printable characters)", path.display())]
    Invalid { path: PathBuf },
    #[error("no random numbers for the admin token")]
    Random,
}

impl AdminAuth {
    pub fn new(token: String, metrics_open: bool) -> AdminAuth {
        AdminAuth {
            token,
            metrics_open,
            guard: IpGuard::new(ip_guard::Limits {
                // Requests are not rate-limited here, only failures count.
                rate: f64::MAX,
                burst: f64::MAX,
                failures: FAILURES,
                block: BLOCK,
                block_max: BLOCK_MAX,
            }),
        }
    }

    fn matches(&self, presented: &str) -> bool {
        presented.len() <= MAX_TOKEN
            && bool::from(presented.as_bytes().ct_eq(self.token.as_bytes()))
    }
}

/// The token: the secrets file's, else the one in `<data_dir>/admin.token`, generated there if
/// the file does not exist. Returns the token and, when generated now, the file.
pub fn load_or_create(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<(String, Option<PathBuf>), TokenError> {
    if let Some(token) = configured {
        return Ok((token.to_owned(), None));
    }
    let path = data_dir.join(TOKEN_FILE);
    match read_token_file(&path) {
        Ok(token) => return Ok((token, None)),
        Err(TokenError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TokenError::Random)?;
    let token = hex::encode(bytes);
    crate::core::identity::write_private(&path, format!("{token}\n").as_bytes()).map_err(
        |source| TokenError::Write {
            path: path.clone(),
            source,
        },
    )?;
    Ok((token, Some(path)))
}

/// A token file as the node writes it: one line, private to its owner. The CLI reads it too.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    match crate::core::secrets::loose_mode(path) {
        Ok(None) => {}
        Ok(Some(mode)) => {
            return Err(TokenError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        Err(source) => {
            return Err(TokenError::Read {
                path: path.to_owned(),
                source,
            });
        }
    }
    let text =
        crate::core::small_file::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
    let token = text.trim();
    if token.is_empty() || token.len() > MAX_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// The middleware in front of every admin route.
pub async fn require(
    State((node, auth)): State<(Arc<Node>, Arc<AdminAuth>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/login" || (auth.metrics_open && path == "/metrics") {
        // /login checks the token itself: it is the one place a token arrives in a query.
        return next.run(request).await;
    }
    if let Some(refused) = blocked(&auth, peer) {
        return refused;
    }
    match presented(request.headers()) {
        Some(token) if auth.matches(token) => next.run(request).await,
        Some(_) => failed(&node, &auth, peer, "a wrong admin token"),
        // No token at all is a browser's first visit or a script without one: refused, but not
        // a security event, or every page load would write one.
        None => unauthorized(),
    }
}

#[derive(Deserialize)]
pub struct Login {
    token: Option<String>,
}

/// `GET /login?token=...`: sets the cookie and sends the browser to the status page. A link a
/// technician can paste once; the token then travels in the cookie, not in every URL.
pub async fn login(
    State((node, auth)): State<(Arc<Node>, Arc<AdminAuth>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(login): Query<Login>,
) -> Response {
    if let Some(refused) = blocked(&auth, peer) {
        return refused;
    }
    let Some(token) = login.token.filter(|t| auth.matches(t)) else {
        return failed(&node, &auth, peer, "a wrong admin token at /login");
    };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            response.headers_mut().insert(header::SET_COOKIE, v);
            response
        }
        Err(_) => unauthorized(),
    }
}

/// The refusal for an address that is blocked, if it is.
fn blocked(auth: &AdminAuth, peer: SocketAddr) -> Option<Response> {
    let left = auth.guard.blocked(peer.ip(), Instant::now())?;
    Some(
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, left.as_secs().max(1).to_string())],
            "blocked after failed admin authentication\n",
        )
            .into_response(),
    )
}

fn failed(node: &Node, auth: &AdminAuth, peer: SocketAddr, what: &str) -> Response {
    // The address only: the presented token may be a real secret mistyped.
    node.security_event(
        "admin_auth_failed",
        format_args!("{} presented {what}", peer.ip()),
    );
    ip_guard::failed_login(node, &auth.guard, peer);
    unauthorized()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"ocpp-node\"")],
        "admin API: send Authorization: Bearer <token> (see the README, admin access)\n",
    )
        .into_response()
}

/// The bearer token, else the cookie's.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return value.to_str().ok()?.strip_prefix("Bearer ").map(str::trim);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn a_token_comes_from_the_header_or_the_cookie() {
        let h = headers(&[(header::AUTHORIZATION, "Bearer abc")]);
        assert_eq!(presented(&h), Some("abc"));
        let h = headers(&[(header::COOKIE, "a=1; ocpp_admin_token=xyz; b=2")]);
        assert_eq!(presented(&h), Some("xyz"));
        // Another scheme is not a bearer token, and a look-alike cookie name is not ours.
        let h = headers(&[(header::AUTHORIZATION, "Basic abc")]);
        assert_eq!(presented(&h), None);
        let h = headers(&[(header::COOKIE, "ocpp_admin_token_x=1")]);
        assert_eq!(presented(&h), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_exact_token_matches() {
        let auth = AdminAuth::new("s3cret".into(), false);
        assert!(auth.matches("s3cret"));
        assert!(!auth.matches("s3cre"));
        assert!(!auth.matches("s3cret2"));
        assert!(!auth.matches(""));
        assert!(!auth.matches(&"s".repeat(MAX_TOKEN + 1)));
    }

    #[test]
    fn a_generated_token_is_private_and_kept_across_starts() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, created) = load_or_create(None, dir.path()).expect("create");
        let file = created.expect("generated now");
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = load_or_create(None, dir.path()).expect("load");
        assert_eq!((again, created), (first, None));
        // A configured token wins and writes nothing.
        let other = tempfile::tempdir().expect("tempdir");
        let (t, created) = load_or_create(Some("from-secrets"), other.path()).expect("configured");
        assert_eq!((t.as_str(), created), ("from-secrets", None));
        assert!(!other.path().join(TOKEN_FILE).exists());
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "abc\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            read_token_file(&path),
            Err(TokenError::Permissions { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token_file(&path).expect("read"), "abc");
        std::fs::write(&path, "  \n").expect("write");
        assert!(matches!(
            read_token_file(&path),
            Err(TokenError::Invalid { .. })
        ));
    }
}
