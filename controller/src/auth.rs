//! Who is on the other end of a discovery stream.
//!
//! The stream carries key values, so a proxy proves who it is: it sends its ServiceAccount
//! token as `authorization: Bearer <token>` metadata, the controller asks the API server whose
//! token it is (a `TokenReview`), and the proxy is then served as that ServiceAccount's
//! namespace only. Tokens are never logged nor kept: the short cache of successful reviews is
//! keyed by the token's SHA-256.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;

/// How long a successful review is trusted without asking the API server again. A revoked
/// token (deleted pod or ServiceAccount) is refused at the next connect after this.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most reviews cached; past it, expired entries go, then all of them.
const CACHE_MAX: usize = 4096;
/// Longest wait for the API server's answer.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// The username prefix of ServiceAccount tokens.
const SA_PREFIX: &str = "system:serviceaccount:";

/// How the controller authenticates proxies (`--proxy-auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyAuth {
    /// Review each proxy's ServiceAccount token; `audience` is the one the token must carry
    /// (`None`: the API server's default audience).
    TokenReview { audience: Option<String> },
    /// Trust whatever namespace a proxy claims: development without a cluster's identities.
    None,
}

/// An authenticated proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The one namespace this proxy may claim; `None` when proxies are not authenticated.
    pub namespace: Option<String>,
    /// For logs: the Kubernetes username, or `anonymous`.
    pub user: String,
}

/// Turns a stream's bearer token (if any) into an [`Identity`], or refuses it with the
/// `tonic::Status` the proxy receives.
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Identity, Status>>;
}

/// `--proxy-auth none`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAuth;

/// Asks the API server about a token. A trait so the cache is tested without a cluster.
pub trait Review: Send + Sync + 'static {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, kube::Error>>;
}

/// `--proxy-auth tokenreview`: a `TokenReview` per new token, cached for [`CACHE_TTL`].
pub struct TokenReviewer<R = Api<TokenReview>> {
    reviewer: R,
    audience: Option<String>,
    cache: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
    /// How long a review is trusted: [`CACHE_TTL`], or less with short stream lifetimes.
    cache_ttl: Duration,
}

/// The authenticator for `auth`. Reviews are cached for at most half of `stream_lifetime`, so
/// a reconnect at the end of a stream's life is really reviewed again: a deleted
/// ServiceAccount loses its keys within about 1.5 stream lifetimes.
pub fn authenticator(
    auth: &ProxyAuth,
    client: Client,
    stream_lifetime: Duration,
) -> Arc<dyn Authenticate> {
    match auth {
        ProxyAuth::None => Arc::new(NoAuth),
        ProxyAuth::TokenReview { audience } => Arc::new(
            TokenReviewer::new(Api::all(client), audience.clone())
                .with_cache_ttl(CACHE_TTL.min(stream_lifetime / 2)),
        ),
    }
}

/// `system:serviceaccount:<namespace>:<name>` → `(namespace, name)`.
pub fn service_account(username: &str) -> Option<(&str, &str)> {
    let (ns, name) = username.strip_prefix(SA_PREFIX)?.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The identity a review's answer proves, or why it proves none. `token` is only used to
/// scrub it from the API server's message, should that ever echo it.
pub fn identity_from_review(
    status: &TokenReviewStatus,
    audience: Option<&str>,
    token: &str,
) -> Result<Identity, Status> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut e = e.replace(token, "<token>");
                e.truncate(200);
                format!(": {e}")
            })
            .unwrap_or_default();
        return Err(Status::unauthenticated(format!(
            "the ServiceAccount token was not accepted by the API server{why}"
        )));
    }
    if let Some(aud) = audience
        && !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|x| x == aud))
    {
        return Err(Status::unauthenticated(format!(
            "the token is not valid for the audience {aud:?} (create it with that audience)"
        )));
    }
    let user = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    match service_account(&user) {
        Some((ns, _)) => Ok(Identity {
            namespace: Some(ns.to_owned()),
            user,
        }),
        None => Err(Status::permission_denied(format!(
            "{user:?} is not a ServiceAccount: a proxy authenticates with its ServiceAccount token"
        ))),
    }
}

/// The bearer token of `authorization` metadata: `Ok(None)` without one, `Err` when malformed.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Status::unauthenticated(
            "the authorization metadata must be `Bearer <ServiceAccount token>`",
        ));
    }
    Ok(Some(token.to_owned()))
}

// === impl NoAuth ===

impl Authenticate for NoAuth {
    fn authenticate<'a>(
        &'a self,
        _token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Identity, Status>> {
        Box::pin(async {
            Ok(Identity {
                namespace: None,
                user: "anonymous".to_owned(),
            })
        })
    }
}

// === impl Review ===

impl Review for Api<TokenReview> {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, kube::Error>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: audience.map(|a| vec![a.to_owned()]),
                },
                ..Default::default()
            };
            let answer = self.create(&PostParams::default(), &review).await?;
            Ok(answer.status.unwrap_or_default())
        })
    }
}

// === impl TokenReviewer ===

impl<R: Review> TokenReviewer<R> {
    pub fn new(reviewer: R, audience: Option<String>) -> Self {
        Self {
            reviewer,
            audience,
            cache: Mutex::new(HashMap::new()),
            cache_ttl: CACHE_TTL,
        }
    }

    /// Trusts a successful review for `ttl` instead of [`CACHE_TTL`].
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Identity> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(id, _)| id.clone())
    }

    fn remember(&self, key: [u8; 32], identity: Identity) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| now < *until);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (identity, now + self.cache_ttl));
    }

    async fn check(&self, token: Option<&str>) -> Result<Identity, Status> {
        let token = token.ok_or_else(|| {
            Status::unauthenticated(
                "no ServiceAccount token: send `authorization: Bearer <token>` metadata \
                 (keyway-proxy --token-file)",
            )
        })?;
        let key = hash(token);
        if let Some(identity) = self.cached(&key) {
            return Ok(identity);
        }
        let review = self.reviewer.review(token, self.audience.as_deref());
        let status = match tokio::time::timeout(REVIEW_TIMEOUT, review).await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => {
                let hint = match &error {
                    kube::Error::Api(e) if e.code == 403 => {
                        " (the controller needs RBAC: create tokenreviews.authentication.k8s.io)"
                    }
                    _ => "",
                };
                tracing::warn!(%error, "TokenReview failed{hint}");
                return Err(Status::unavailable(
                    "the controller cannot verify tokens right now (TokenReview failed); retry",
                ));
            }
            Err(_) => {
                tracing::warn!(timeout = ?REVIEW_TIMEOUT, "TokenReview timed out");
                return Err(Status::unavailable(
                    "the controller cannot verify tokens right now (TokenReview timed out); retry",
                ));
            }
        };
        let identity = identity_from_review(&status, self.audience.as_deref(), token)?;
        self.remember(key, identity.clone());
        Ok(identity)
    }
}

impl<R: Review> Authenticate for TokenReviewer<R> {
    fn authenticate<'a>(
        &'a self,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Identity, Status>> {
        Box::pin(self.check(token))
    }
}

fn hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

#[cfg(test)]
mod tests;
