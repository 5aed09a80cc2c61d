//! Keeps the controller's certificates in their Secret and their CA in the
//! `MutatingWebhookConfiguration`, on every replica, leader or not. The same serving
//! certificate (for the controller Service's names) secures the webhook and the gRPC
//! discovery listener, whose clients (the proxies) are handed the CA bundle.
//!
//! Every pass reads the Secret, creates or renews its contents when needed (optimistic
//! concurrency: a create that finds the Secret, or an update that finds it changed, re-reads
//! and uses what the other replica wrote), loads the serving certificate for this replica's
//! HTTPS server, and patches `caBundle` in each webhook of the configuration when it differs.
//! Errors are logged and retried with backoff; they never stop the controller.

use super::certs::{self, Material, Renewal};
use super::{ServingCert, WebhookMetrics};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the Secret and the configuration are checked when all is well: also how soon a
/// configuration reset by a `helm upgrade` gets its `caBundle` back.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait between two attempts after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Attempts to settle the Secret in one pass when other replicas write it too.
const WRITE_ATTEMPTS: usize = 5;
/// Field manager of the `caBundle` patches.
const MANAGER: &str = "keyway-controller";

/// Where the certificates live and for which names.
#[derive(Clone, Debug)]
pub struct CertSettings {
    /// Namespace of the Secret (the controller's own).
    pub namespace: String,
    pub secret_name: String,
    /// The cluster-scoped `MutatingWebhookConfiguration` whose `caBundle`s are patched;
    /// `None` when the webhook is off (the certificates then only serve gRPC).
    pub config_name: Option<String>,
    /// SANs of the serving certificate (IP addresses become IP SANs).
    pub dns_names: Vec<String>,
}

/// A failed pass; `Display` never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("generating certificates: {0}")]
    Certs(#[from] certs::Invalid),
    #[error("building the caBundle patch: {0}")]
    Patch(String),
    #[error("the Secret kept changing under us (another replica?); trying again")]
    Contended,
}

/// What the last pass found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// All settled.
    Done,
    /// The configuration does not exist (yet).
    ConfigMissing,
}

/// One replica's certificate keeper.
pub struct CertManager {
    settings: CertSettings,
    secrets: Api<Secret>,
    configs: Api<MutatingWebhookConfiguration>,
    serving: Arc<ServingCert>,
    metrics: WebhookMetrics,
    /// Fingerprint of the CA the configuration trusted at the end of the previous pass: the
    /// serving certificate moves to a new CA only one pass after the API server was given it.
    trusted_ca: Option<String>,
    /// Fingerprint of the serving certificate loaded, to log changes once.
    loaded: Option<String>,
    /// Whether the missing configuration was already reported (warned once, then debug).
    warned_missing: bool,
}

// === impl CertManager ===

impl CertManager {
    pub fn new(
        client: Client,
        settings: CertSettings,
        serving: Arc<ServingCert>,
        metrics: WebhookMetrics,
    ) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            configs: Api::all(client),
            settings,
            serving,
            metrics,
            trusted_ca: None,
            loaded: None,
            warned_missing: false,
        }
    }

    /// Runs passes until `drain` turns true.
    pub async fn run(mut self, mut drain: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let wait = match self.pass().await {
                Ok(Pass::Done) => {
                    failures = 0;
                    CHECK_INTERVAL
                }
                Ok(Pass::ConfigMissing) => {
                    failures = failures.saturating_add(1);
                    backoff(failures).max(CHECK_INTERVAL)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let retry_in = backoff(failures);
                    tracing::warn!(%error, retry_in = ?retry_in, "webhook certificates: pass failed");
                    retry_in
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = drain.wait_for(|d| *d) => return,
            }
        }
    }

    async fn pass(&mut self) -> Result<Pass, Error> {
        let material = self.settle_secret().await?;
        let now = unix_now();
        let serving = material.serving()?;
        self.metrics
            .cert_expiry
            .with_label_values(&["serving"])
            .set(serving.info.not_after);
        self.metrics
            .cert_expiry
            .with_label_values(&["ca"])
            .set(serving.ca.not_after);
        if self.loaded.as_deref() != Some(serving.info.fingerprint.as_str()) {
            tracing::info!(
                fingerprint = %serving.info.fingerprint,
                not_after = %certs::rfc3339(serving.info.not_after),
                issuer = %serving.issuer,
                ca = %serving.ca.fingerprint,
                ca_not_after = %certs::rfc3339(serving.ca.not_after),
                "webhook serving certificate loaded"
            );
            self.loaded = Some(serving.info.fingerprint.clone());
        }
        // The bundle first: once a handshake can succeed, injected proxies are handed it.
        let bundle = material.ca_bundle(now);
        self.serving.set_ca_bundle(&bundle);
        self.serving.set(serving.key.clone());

        if self.settings.config_name.is_none() {
            // No webhook configuration to hand the CA to: proxies read the bundle from the
            // Secret (or get it injected), so a new CA may sign from the next pass on.
            self.trusted_ca = Some(serving.ca.fingerprint.clone());
            return Ok(Pass::Done);
        }
        match self.patch_bundle(&bundle).await? {
            Some(trusted) => {
                self.warned_missing = false;
                self.trusted_ca = trusted.then(|| serving.ca.fingerprint.clone());
                Ok(Pass::Done)
            }
            None => {
                self.trusted_ca = None;
                Ok(Pass::ConfigMissing)
            }
        }
    }

    /// Reads the Secret and writes it when it is missing or due; returns what it holds then.
    async fn settle_secret(&mut self) -> Result<Material, Error> {
        let name = &self.settings.secret_name;
        for _ in 0..WRITE_ATTEMPTS {
            let now = unix_now();
            let existing = self
                .secrets
                .get_opt(name)
                .await
                .map_err(|source| Error::Kube {
                    what: format!(
                        "reading Secret {}/{name} (RBAC: get secrets)",
                        self.settings.namespace
                    ),
                    source,
                })?;
            let Some(mut secret) = existing else {
                let fresh = Material::generate(now, &self.settings.dns_names)?;
                tracing::info!(secret = %name, "webhook certificates: creating the Secret with a new CA");
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some(BTreeMap::from([
                            (
                                "app.kubernetes.io/managed-by".to_owned(),
                                "keyway-controller".to_owned(),
                            ),
                            (
                                "app.kubernetes.io/component".to_owned(),
                                "webhook".to_owned(),
                            ),
                        ])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".to_owned()),
                    data: Some(to_secret_data(&fresh)),
                    ..Secret::default()
                };
                match self.secrets.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        self.count_renewal("new_ca");
                        return Ok(fresh);
                    }
                    // Another replica was first: use what it wrote.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(source) => {
                        return Err(Error::Kube {
                            what: format!(
                                "creating Secret {}/{name} (RBAC: create secrets)",
                                self.settings.namespace
                            ),
                            source,
                        });
                    }
                }
            };
            let data = from_secret_data(secret.data.as_ref());
            let material = Material::from_data(&data);
            let trusted = material.as_ref().is_some_and(|m| {
                self.trusted_ca.is_some()
                    && certs::inspect(&m.ca_cert).ok().map(|i| i.fingerprint) == self.trusted_ca
            });
            let (renewal, next) = match &material {
                None => {
                    let renewal = Renewal::NewCa {
                        reason: "the Secret lacks ca.crt, ca.key, tls.crt or tls.key".into(),
                    };
                    let fresh = Material::generate(now, &self.settings.dns_names)?;
                    (renewal, fresh)
                }
                Some(m) => match m.renewal(now, &self.settings.dns_names, trusted) {
                    None => return Ok(m.clone()),
                    Some(renewal) => {
                        let next = m.renewed(&renewal, now, &self.settings.dns_names)?;
                        (renewal, next)
                    }
                },
            };
            tracing::info!(secret = %name, "webhook certificates: {renewal}");
            let mut data = secret.data.take().unwrap_or_default();
            // Keys of ours are replaced; anything else someone put there stays.
            for key in [
                certs::CA_CERT,
                certs::CA_KEY,
                certs::PREVIOUS_CA_CERT,
                certs::TLS_CERT,
                certs::TLS_KEY,
            ] {
                data.remove(key);
            }
            data.extend(to_secret_data(&next));
            secret.data = Some(data);
            secret.string_data = None;
            // `replace` sends the resourceVersion read above: a concurrent writer makes it fail
            // with 409 instead of being overwritten.
            match self
                .secrets
                .replace(name, &PostParams::default(), &secret)
                .await
            {
                Ok(_) => {
                    self.count_renewal(renewal.label());
                    return Ok(next);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(source) => {
                    return Err(Error::Kube {
                        what: format!(
                            "updating Secret {}/{name} (RBAC: update secrets)",
                            self.settings.namespace
                        ),
                        source,
                    });
                }
            }
        }
        Err(Error::Contended)
    }

    /// Makes every webhook of the configuration trust `bundle`. `None`: no configuration;
    /// `Some(trusted)`: whether every webhook now has it.
    async fn patch_bundle(&mut self, bundle: &str) -> Result<Option<bool>, Error> {
        let Some(name) = &self.settings.config_name else {
            return Ok(Some(true));
        };
        let config = self.configs.get_opt(name).await.map_err(|source| Error::Kube {
            what: format!(
                "reading MutatingWebhookConfiguration {name} (RBAC: get mutatingwebhookconfigurations)"
            ),
            source,
        })?;
        let Some(config) = config else {
            if !self.warned_missing {
                tracing::warn!(
                    config = %name,
                    "MutatingWebhookConfiguration not found: the API server does not call the \
                     webhook until it exists (the Helm chart creates it); checking again \
                     periodically"
                );
                self.warned_missing = true;
            } else {
                tracing::debug!(config = %name, "MutatingWebhookConfiguration still missing");
            }
            return Ok(None);
        };
        let webhooks = config.webhooks.unwrap_or_default();
        if webhooks.is_empty() {
            tracing::warn!(config = %name, "the MutatingWebhookConfiguration has no webhooks");
            return Ok(Some(false));
        }
        let wanted = certs::bundle_certs(bundle.as_bytes());
        let mut ops = Vec::new();
        for (i, webhook) in webhooks.iter().enumerate() {
            let current = webhook
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| certs::bundle_certs(&b.0))
                .unwrap_or_default();
            if current != wanted {
                // `test` first: if the list changed since it was read, the patch fails instead
                // of writing into another webhook.
                ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
                ops.push(json!({
                    "op": "add",
                    "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                    "value": ByteString(bundle.as_bytes().to_vec()),
                }));
            }
        }
        if ops.is_empty() {
            return Ok(Some(true));
        }
        let patched = ops.len() / 2;
        let patch = serde_json::from_value(serde_json::Value::Array(ops))
            .map_err(|e| Error::Patch(e.to_string()))?;
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let result = self
            .configs
            .patch(name, &params, &Patch::<()>::Json(patch))
            .await;
        match result {
            Ok(_) => {
                self.metrics
                    .ca_bundle_patches
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(
                    config = %name,
                    webhooks = patched,
                    cas = wanted.len(),
                    "patched the webhook caBundle"
                );
                Ok(Some(true))
            }
            Err(source) => {
                self.metrics
                    .ca_bundle_patches
                    .with_label_values(&["error"])
                    .inc();
                Err(Error::Kube {
                    what: format!(
                        "patching the caBundle of MutatingWebhookConfiguration {name} (RBAC: patch mutatingwebhookconfigurations)"
                    ),
                    source,
                })
            }
        }
    }

    fn count_renewal(&self, kind: &str) {
        self.metrics.cert_renewals.with_label_values(&[kind]).inc();
    }
}

fn to_secret_data(m: &Material) -> BTreeMap<String, ByteString> {
    m.to_data()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v)))
        .collect()
}

fn from_secret_data(data: Option<&BTreeMap<String, ByteString>>) -> BTreeMap<String, Vec<u8>> {
    data.map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

/// 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`], with up to 20% jitter.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.2);
    base + jitter
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
