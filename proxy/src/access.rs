//! Who may talk to the proxy: source CIDRs per listener, static client tokens on the traffic
//! port (`--client-tokens-file`, re-read when it changes), and the admin token. Tokens are
//! compared in constant time and never logged or forwarded.

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use keyway_api::model::Cidr;
use keyway_api::secret::SecretValue;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Headers a client may carry its Keyway token in: Keyway's own, then the places SDKs put
/// their API key (so `OpenAI(api_key=<keyway token>)` works unchanged).
const TOKEN_HEADERS: [&str; 4] = [
    "x-keyway-token",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
];

/// Access settings of both listeners.
#[derive(Clone, Debug, Default)]
pub struct AccessSettings {
    /// Traffic port: allowed client addresses; empty: any.
    pub allowed_sources: Vec<Cidr>,
    /// Admin port: allowed client addresses; empty: any.
    pub admin_allowed_sources: Vec<Cidr>,
    /// Traffic port: one token per line; requests need one of them.
    pub client_tokens_file: Option<PathBuf>,
    /// The admin API's bearer token (writes, and reads when the admin port is exposed in
    /// controller mode). `None`: writes disabled.
    pub admin_token: Option<SecretValue>,
    /// Fraction of requests logged as access-log lines (0 = none).
    pub access_log_sample: f64,
}

/// The client tokens, swapped on reload.
pub struct ClientTokens {
    path: PathBuf,
    tokens: ArcSwap<Vec<SecretValue>>,
}

// === impl ClientTokens ===

impl ClientTokens {
    /// Reads the file; an unreadable or empty file is an error (the operator asked for
    /// authentication, so serving without it would be wrong).
    pub fn load(path: &Path) -> Result<Arc<Self>, String> {
        let tokens = read_tokens(path)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            tokens: ArcSwap::from_pointee(tokens),
        }))
    }

    /// Re-reads the file every `interval`; a bad read keeps the previous tokens.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            match read_tokens(&self.path) {
                Ok(t) if *t != **self.tokens.load() => {
                    tracing::info!(path = %self.path.display(), tokens = t.len(), "client tokens reloaded");
                    self.tokens.store(Arc::new(t));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "client tokens file unusable; keeping the previous tokens");
                }
            }
        }
    }

    /// Every header holding a valid token (all to be removed before forwarding: a client
    /// that sends its Keyway token twice must not have the second copy go upstream); empty
    /// when none holds one. Other credentials (a client's own upstream key, passed through a
    /// pool without keys) are left alone.
    pub fn check(&self, headers: &HeaderMap) -> Vec<HeaderName> {
        let tokens = self.tokens.load();
        let mut found = Vec::new();
        for name in TOKEN_HEADERS {
            let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let presented = if name == "authorization" {
                match strip_bearer(v) {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                v.trim()
            };
            if tokens
                .iter()
                .any(|t| ct_eq(t.expose().as_bytes(), presented.as_bytes()))
            {
                found.push(HeaderName::from_static(name));
            }
        }
        found
    }
}

fn read_tokens(path: &Path) -> Result<Vec<SecretValue>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tokens: Vec<SecretValue> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(SecretValue::new)
        .collect();
    if tokens.is_empty() {
        return Err(format!("{} holds no tokens (one per line)", path.display()));
    }
    Ok(tokens)
}

/// `Bearer <token>` → `<token>` (scheme case-insensitive).
pub fn strip_bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Equality whose time does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// Reads the admin token: `--admin-token-file` wins over `KEYWAY_ADMIN_TOKEN`.
pub fn admin_token(
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<SecretValue>, String> {
    let raw = match file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("--admin-token-file {}: {e}", p.display()))?,
        ),
        None => env,
    };
    match raw.map(|r| r.trim().to_string()) {
        None => Ok(None),
        Some(t) if t.is_empty() => Err("the admin token is empty".into()),
        Some(t) if t.len() < 16 => Err("the admin token must be at least 16 characters".into()),
        Some(t) => Ok(Some(SecretValue::new(t))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn tokens_from_any_sdk_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "# clients\ntoken-one\n\ntoken-two\n").unwrap();
        let t = ClientTokens::load(&p).unwrap();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer token-two".parse().unwrap());
        assert_eq!(t.check(&h), ["authorization"]);
        h.clear();
        h.insert("x-api-key", "token-one".parse().unwrap());
        assert_eq!(t.check(&h), ["x-api-key"]);
        // Every header carrying a token is named, so none of them is forwarded.
        h.insert("x-keyway-token", "token-two".parse().unwrap());
        assert_eq!(t.check(&h), ["x-keyway-token", "x-api-key"]);
        h.clear();
        h.insert("x-api-key", "nope".parse().unwrap());
        assert!(t.check(&h).is_empty());
        std::fs::write(&p, "\n").unwrap();
        assert!(ClientTokens::load(&p).is_err());
    }
}
