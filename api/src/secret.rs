//! Key material. A [`SecretValue`] never prints itself: `Debug` and `Display` show
//! `<redacted>`, and the bytes are zeroed when it is dropped.

use std::fmt;
use zeroize::Zeroize;

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
