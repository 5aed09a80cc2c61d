use super::*;
use k8s_openapi::api::authentication::v1::UserInfo;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Answers from a fixed token → username table; counts the calls.
struct Fake {
    calls: AtomicUsize,
}

const GOOD: &str = "good-token";

impl Review for Arc<Fake> {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, kube::Error>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(if token == GOOD {
                TokenReviewStatus {
                    authenticated: Some(true),
                    audiences: audience.map(|a| vec![a.to_owned()]),
                    user: Some(UserInfo {
                        username: Some("system:serviceaccount:team-b:keyway-proxy".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            } else {
                TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some(format!("invalid bearer token {token}")),
                    ..Default::default()
                }
            })
        })
    }
}

fn reviewer() -> (Arc<Fake>, TokenReviewer<Arc<Fake>>) {
    let fake = Arc::new(Fake {
        calls: AtomicUsize::new(0),
    });
    (fake.clone(), TokenReviewer::new(fake, None))
}

#[test]
fn service_account_usernames() {
    assert_eq!(
        service_account("system:serviceaccount:team-a:proxy"),
        Some(("team-a", "proxy"))
    );
    assert_eq!(service_account("system:serviceaccount:team-a"), None);
    assert_eq!(service_account("system:serviceaccount::proxy"), None);
    assert_eq!(service_account("system:serviceaccount:a:b:c"), None);
    assert_eq!(service_account("admin"), None);
    assert_eq!(service_account("system:node:n1"), None);
}

#[test]
fn bearer_metadata() {
    let mut md = tonic::metadata::MetadataMap::new();
    assert_eq!(bearer(&md).unwrap(), None);
    md.insert("authorization", "Bearer abc.def".parse().unwrap());
    assert_eq!(bearer(&md).unwrap().as_deref(), Some("abc.def"));
    md.insert("authorization", "bearer  abc ".parse().unwrap());
    assert_eq!(bearer(&md).unwrap().as_deref(), Some("abc"));
    for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
        md.insert("authorization", bad.parse().unwrap());
        let err = bearer(&md).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad}");
    }
}

#[test]
fn reviews_prove_a_service_account_namespace_only() {
    let ok = TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(vec!["keyway".into()]),
        user: Some(UserInfo {
            username: Some("system:serviceaccount:team-a:proxy".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = identity_from_review(&ok, None, "t").unwrap();
    assert_eq!(id.namespace.as_deref(), Some("team-a"));
    assert!(identity_from_review(&ok, Some("keyway"), "t").is_ok());
    let wrong_aud = identity_from_review(&ok, Some("other"), "t").unwrap_err();
    assert_eq!(wrong_aud.code(), tonic::Code::Unauthenticated);

    let mut user = ok.clone();
    user.user = Some(UserInfo {
        username: Some("alice".into()),
        ..Default::default()
    });
    let denied = identity_from_review(&user, None, "t").unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let refused = TokenReviewStatus {
        authenticated: Some(false),
        error: Some("token secret-123 expired".into()),
        ..Default::default()
    };
    let err = identity_from_review(&refused, None, "secret-123").unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        !err.message().contains("secret-123"),
        "the token never appears in a message: {}",
        err.message()
    );
}

#[tokio::test(start_paused = true)]
async fn successful_reviews_are_cached_for_a_minute() {
    let (fake, auth) = reviewer();
    let id = auth.authenticate(Some(GOOD)).await.unwrap();
    assert_eq!(id.namespace.as_deref(), Some("team-b"));
    auth.authenticate(Some(GOOD)).await.unwrap();
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1,
        "second connect: cached"
    );

    tokio::time::advance(CACHE_TTL + Duration::from_secs(1)).await;
    auth.authenticate(Some(GOOD)).await.unwrap();
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        2,
        "expired: reviewed again"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_are_not_cached_and_no_token_is_not_reviewed() {
    let (fake, auth) = reviewer();
    let missing = auth.authenticate(None).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    for _ in 0..2 {
        let bad = auth.authenticate(Some("bogus")).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
        assert!(!bad.message().contains("bogus"), "{}", bad.message());
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}
