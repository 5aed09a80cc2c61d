//! Key material. A [`SecretValue`] never prints itself: `Debug` and `Display` show
//! `<redacted>`, and the bytes are zeroed when it is dropped.

use std::collections::BTreeMap;
use std::fmt;
use zeroize::Zeroize;

/// The label a Secret carries to opt in as a key Secret. The controller watches only Secrets
/// labelled `keyway.dev/api-keys: "true"`: an ApiKeyPool author who may not read Secrets
/// cannot point a pool at `db-credentials` and read it through a proxy (the ingress-nginx
/// CVE-2021-25742 class of bug), and the controller's memory does not grow with every Secret
/// of the cluster.
pub const API_KEYS_LABEL: &str = "keyway.dev/api-keys";
/// The value of [`API_KEYS_LABEL`] that opts a Secret in.
pub const API_KEYS_LABEL_VALUE: &str = "true";
/// The label selector of the controller's Secret watch.
pub const API_KEYS_SELECTOR: &str = "keyway.dev/api-keys=true";

/// Whether a Secret with these labels opted in as a key Secret.
pub fn opted_in(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(API_KEYS_LABEL))
        .is_some_and(|v| v == API_KEYS_LABEL_VALUE)
}

/// An API key's value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretValue(String);

// === impl SecretValue ===

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the one place that must send it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_the_value() {
        let v = SecretValue::new("sk-live-123");
        assert_eq!(format!("{v:?} {v}"), "<redacted> <redacted>");
        assert_eq!(v.expose(), "sk-live-123");
    }
}
