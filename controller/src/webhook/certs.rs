//! The webhook's certificates, with no Kubernetes in sight: what the Secret holds, whether it
//! is still good, what to issue next, and the `caBundle` the API server must trust.
//!
//! A self-signed CA (5 years) signs the serving certificate (1 year). Each is replaced once
//! less than a third of its lifetime is left, so a replica that has not re-read the Secret yet
//! still serves a valid certificate. A new CA only signs the serving certificate once the
//! webhook configuration trusts it: until then the old CA stays in the bundle (as
//! `ca-previous.crt`) and keeps signing, so no admission call fails during a CA rotation.
//!
//! Nothing here logs or formats a private key: [`Material`]'s `Debug` shows fingerprints only.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Secret key: the current CA certificate (PEM).
pub const CA_CERT: &str = "ca.crt";
/// Secret key: the current CA's private key (PEM, PKCS#8).
pub const CA_KEY: &str = "ca.key";
/// Secret key: the CA being retired, still trusted until the serving certificate moved on.
pub const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
/// Secret key: the serving certificate (PEM).
pub const TLS_CERT: &str = "tls.crt";
/// Secret key: the serving certificate's private key (PEM, PKCS#8).
pub const TLS_KEY: &str = "tls.key";

const DAY: i64 = 24 * 3600;
/// Lifetime of a new CA.
pub const CA_LIFETIME_SECS: i64 = 5 * 365 * DAY;
/// Lifetime of a new serving certificate.
pub const SERVING_LIFETIME_SECS: i64 = 365 * DAY;
/// Certificates start a little in the past: clocks of the API server and of this pod differ.
const BACKDATE_SECS: i64 = 300;

/// The PEM texts kept in the Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: String,
    pub previous_ca_cert: Option<String>,
    pub tls_cert: String,
    pub tls_key: String,
}

/// What a certificate says about itself (nothing secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names (lowercase) and IP addresses, as text.
    pub sans: BTreeSet<String>,
    pub is_ca: bool,
    /// `sha256:` and the first 16 hex digits of the DER's SHA-256: for logs.
    pub fingerprint: String,
}

/// A serving certificate ready for rustls, with what logs and metrics may say about it.
#[derive(Clone, Debug)]
pub struct Serving {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// The current CA (during a CA rotation, not necessarily the serving certificate's issuer).
    pub ca: CertInfo,
    /// Fingerprint of the CA that signed the serving certificate.
    pub issuer: String,
}

/// Why the material must change; `Display` is the log message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing usable: a new CA and a new serving certificate.
    NewCa { reason: String },
    /// The CA is due for rotation: a new CA joins the bundle; the old one keeps signing until
    /// the webhook configuration trusts the new one.
    RotateCa { reason: String },
    /// A new serving certificate from the current CA.
    NewServing { reason: String },
    /// The retired CA expired: drop it from the bundle.
    DropPreviousCa,
}

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

// === impl Material ===

impl Material {
    /// Reads the Secret's data; `None` unless every key is there as UTF-8.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Material> {
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .filter(|s| !s.trim().is_empty())
        };
        Some(Material {
            ca_cert: text(CA_CERT)?,
            ca_key: text(CA_KEY)?,
            previous_ca_cert: text(PREVIOUS_CA_CERT),
            tls_cert: text(TLS_CERT)?,
            tls_key: text(TLS_KEY)?,
        })
    }

    /// The Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::from([
            (CA_CERT.to_owned(), self.ca_cert.clone().into_bytes()),
            (CA_KEY.to_owned(), self.ca_key.clone().into_bytes()),
            (TLS_CERT.to_owned(), self.tls_cert.clone().into_bytes()),
            (TLS_KEY.to_owned(), self.tls_key.clone().into_bytes()),
        ]);
        if let Some(prev) = &self.previous_ca_cert {
            data.insert(PREVIOUS_CA_CERT.to_owned(), prev.clone().into_bytes());
        }
        data
    }

    /// A new CA and a serving certificate for `dns_names`, valid from `now`.
    pub fn generate(now: i64, dns_names: &[String]) -> Result<Material, Invalid> {
        let (ca_cert, ca_key) = new_ca(now)?;
        let (tls_cert, tls_key) = new_serving(now, dns_names, &ca_cert, &ca_key)?;
        Ok(Material {
            ca_cert,
            ca_key,
            previous_ca_cert: None,
            tls_cert,
            tls_key,
        })
    }

    /// The serving certificate and key, checked: parsed, keys matching, signed by the current
    /// or the previous CA.
    pub fn serving(&self) -> Result<Serving, Invalid> {
        let (ca, _) = self.check_ca()?;
        let (info, key) = self.check_serving()?;
        let issuer = if self.serving_signed_by_current() {
            ca.fingerprint.clone()
        } else {
            self.previous_ca_cert
                .as_deref()
                .and_then(|p| inspect(p).ok())
                .map_or_else(|| "unknown".to_owned(), |p| p.fingerprint)
        };
        Ok(Serving {
            key,
            info,
            ca,
            issuer,
        })
    }

    /// The PEM bundle the webhook configuration must trust: the current CA, then the previous
    /// one while it has not expired.
    pub fn ca_bundle(&self, now: i64) -> String {
        let mut bundle = normalize_pem(&self.ca_cert);
        if let Some(prev) = &self.previous_ca_cert
            && inspect(prev).is_ok_and(|i| i.not_after > now)
            && normalize_pem(prev) != bundle
        {
            bundle.push_str(&normalize_pem(prev));
        }
        bundle
    }

    /// What must change, if anything, at `now`, for a serving certificate naming exactly
    /// `dns_names`. `bundle_trusts_ca`: the webhook configuration is known to trust the
    /// current CA (so the serving certificate may move to it).
    pub fn renewal(
        &self,
        now: i64,
        dns_names: &[String],
        bundle_trusts_ca: bool,
    ) -> Option<Renewal> {
        let ca = match self.check_ca() {
            Ok((ca, _)) => ca,
            Err(e) => {
                return Some(Renewal::NewCa {
                    reason: format!("the CA is unusable: {e}"),
                });
            }
        };
        if ca.not_after <= now {
            return Some(Renewal::NewCa {
                reason: "the CA expired".into(),
            });
        }
        let ca_due = due(&ca, now);
        // A CA rotation already in progress is finished before another starts.
        if ca_due && self.previous_ca_cert.is_none() {
            return Some(Renewal::RotateCa {
                reason: format!("the CA expires at {}", rfc3339(ca.not_after)),
            });
        }
        let serving = match self.check_serving() {
            Ok((info, _)) => info,
            Err(e) => {
                return Some(Renewal::NewServing {
                    reason: format!("the serving certificate is unusable: {e}"),
                });
            }
        };
        if serving.not_after <= now || due(&serving, now) {
            return Some(Renewal::NewServing {
                reason: format!(
                    "the serving certificate expires at {}",
                    rfc3339(serving.not_after)
                ),
            });
        }
        if serving.sans != wanted_sans(dns_names) {
            return Some(Renewal::NewServing {
                reason: format!(
                    "the serving certificate names {:?}, not {:?}",
                    serving.sans,
                    wanted_sans(dns_names)
                ),
            });
        }
        if !self.serving_signed_by_current() && bundle_trusts_ca {
            return Some(Renewal::NewServing {
                reason: "moving the serving certificate to the new CA".into(),
            });
        }
        if let Some(prev) = &self.previous_ca_cert
            && self.serving_signed_by_current()
            && !inspect(prev).is_ok_and(|p| p.not_after > now)
        {
            return Some(Renewal::DropPreviousCa);
        }
        None
    }

    /// Applies `renewal` at `now`.
    pub fn renewed(
        &self,
        renewal: &Renewal,
        now: i64,
        dns_names: &[String],
    ) -> Result<Material, Invalid> {
        match renewal {
            Renewal::NewCa { .. } => {
                let mut fresh = Material::generate(now, dns_names)?;
                // The old CA, if still valid, stays trusted: replicas that have not re-read
                // the Secret yet still serve certificates it signed.
                fresh.previous_ca_cert = self
                    .check_ca()
                    .ok()
                    .filter(|(ca, _)| ca.not_after > now)
                    .map(|_| self.ca_cert.clone());
                Ok(fresh)
            }
            Renewal::RotateCa { .. } => {
                let (ca_cert, ca_key) = new_ca(now)?;
                // The serving certificate stays as it is, signed by the retiring CA, until the
                // webhook configuration trusts the new one.
                let (tls_cert, tls_key) = if self.check_serving().is_ok() {
                    (self.tls_cert.clone(), self.tls_key.clone())
                } else {
                    new_serving(now, dns_names, &self.ca_cert, &self.ca_key)?
                };
                Ok(Material {
                    ca_cert,
                    ca_key,
                    previous_ca_cert: Some(self.ca_cert.clone()),
                    tls_cert,
                    tls_key,
                })
            }
            Renewal::NewServing { .. } => {
                let (tls_cert, tls_key) = new_serving(now, dns_names, &self.ca_cert, &self.ca_key)?;
                Ok(Material {
                    tls_cert,
                    tls_key,
                    ..self.clone()
                })
            }
            Renewal::DropPreviousCa => Ok(Material {
                previous_ca_cert: None,
                ..self.clone()
            }),
        }
    }

    /// The current CA, checked: a CA certificate whose key is `ca.key`.
    fn check_ca(&self) -> Result<(CertInfo, Vec<u8>), Invalid> {
        let der = first_der(&self.ca_cert, CA_CERT)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| Invalid("ca.crt is not an X.509 certificate".into()))?;
        let info = info_of(&cert, &der);
        if !info.is_ca {
            return Err(Invalid("ca.crt is not a CA certificate".into()));
        }
        let key = KeyPair::from_pem(&self.ca_key)
            .map_err(|_| Invalid("ca.key is not a PEM private key".into()))?;
        if rcgen::PublicKeyData::der_bytes(&key)
            != cert.public_key().subject_public_key.data.as_ref()
        {
            return Err(Invalid("ca.key does not fit ca.crt".into()));
        }
        Ok((info, der))
    }

    /// The serving certificate, checked: not a CA, signed by the current or previous CA, its
    /// key matching.
    fn check_serving(&self) -> Result<(CertInfo, Arc<CertifiedKey>), Invalid> {
        let der = first_der(&self.tls_cert, TLS_CERT)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| Invalid("tls.crt is not an X.509 certificate".into()))?;
        let info = info_of(&cert, &der);
        if info.is_ca {
            return Err(Invalid("tls.crt is a CA certificate".into()));
        }
        let signed = std::iter::once(&self.ca_cert)
            .chain(self.previous_ca_cert.as_ref())
            .any(|ca| signed_by(&cert, ca));
        if !signed {
            return Err(Invalid("tls.crt is not signed by ca.crt".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.tls_key.as_bytes())
            .map_err(|_| Invalid("tls.key is not a PEM private key".into()))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(vec![CertificateDer::from(der)], key, &provider)
            .map_err(|e| Invalid(format!("tls.key does not fit tls.crt: {e}")))?;
        Ok((info, Arc::new(key)))
    }

    /// Whether the serving certificate is signed by the current CA (not the previous one).
    fn serving_signed_by_current(&self) -> bool {
        first_der(&self.tls_cert, TLS_CERT)
            .ok()
            .and_then(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
                Some(signed_by(&cert, &self.ca_cert))
            })
            .unwrap_or(false)
    }
}

impl std::fmt::Debug for Material {
    /// Fingerprints only: never a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fp = |pem: &str| inspect(pem).map_or_else(|_| "invalid".to_owned(), |i| i.fingerprint);
        f.debug_struct("Material")
            .field("ca", &fp(&self.ca_cert))
            .field("previous_ca", &self.previous_ca_cert.as_deref().map(fp))
            .field("serving", &fp(&self.tls_cert))
            .finish_non_exhaustive()
    }
}

// === impl Renewal ===

impl std::fmt::Display for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Renewal::NewCa { reason } => write!(f, "new CA and serving certificate: {reason}"),
            Renewal::RotateCa { reason } => write!(f, "CA rotation: {reason}"),
            Renewal::NewServing { reason } => write!(f, "new serving certificate: {reason}"),
            Renewal::DropPreviousCa => f.write_str("dropping the expired previous CA"),
        }
    }
}

impl Renewal {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Renewal::NewCa { .. } => "new_ca",
            Renewal::RotateCa { .. } => "rotate_ca",
            Renewal::NewServing { .. } => "new_serving",
            Renewal::DropPreviousCa => "drop_previous_ca",
        }
    }
}

/// What the first certificate of `pem` says about itself.
pub fn inspect(pem: &str) -> Result<CertInfo, Invalid> {
    let der = first_der(pem, "certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| Invalid("not an X.509 certificate".into()))?;
    Ok(info_of(&cert, &der))
}

/// The certificates of a PEM bundle, normalized, in order, without duplicates.
pub fn bundle_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for der in CertificateDer::pem_slice_iter(pem).flatten() {
        if !out.iter().any(|d| d.as_slice() == der.as_ref()) {
            out.push(der.as_ref().to_vec());
        }
    }
    out
}

/// `unix` as RFC 3339 (UTC), for logs.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Less than a third of its lifetime left.
fn due(info: &CertInfo, now: i64) -> bool {
    let lifetime = (info.not_after - info.not_before).max(1);
    (info.not_after - now) * 3 < lifetime
}

fn wanted_sans(dns_names: &[String]) -> BTreeSet<String> {
    dns_names.iter().map(|n| normalize_name(n)).collect()
}

fn normalize_name(name: &str) -> String {
    match name.trim().parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.trim().trim_end_matches('.').to_ascii_lowercase(),
    }
}

fn normalize_pem(pem: &str) -> String {
    let mut s = pem.trim().to_owned();
    s.push('\n');
    s
}

fn first_der(pem: &str, what: &str) -> Result<Vec<u8>, Invalid> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|d| d.as_ref().to_vec())
        .ok_or_else(|| Invalid(format!("{what} holds no PEM certificate")))
}

fn info_of(cert: &X509Certificate<'_>, der: &[u8]) -> CertInfo {
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    sans.insert(normalize_name(d));
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    CertInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sans,
        is_ca: cert.is_ca(),
        fingerprint: format!("sha256:{hex}"),
    }
}

fn signed_by(cert: &X509Certificate<'_>, ca_pem: &str) -> bool {
    let Ok(ca_der) = first_der(ca_pem, CA_CERT) else {
        return false;
    };
    let Ok((_, ca)) = x509_parser::parse_x509_certificate(&ca_der) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), Invalid> {
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|_| Invalid(format!("time {t} out of range")))
    };
    params.not_before = at(not_before)?;
    params.not_after = at(not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(&serial()));
    Ok(())
}

/// A random positive 16-byte serial number.
fn serial() -> [u8; 16] {
    let mut s: [u8; 16] = rand::random();
    s[0] &= 0x7f;
    s[0] |= 0x01;
    s
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> Invalid + '_ {
    move |e| Invalid(format!("{what}: {e}"))
}

/// A new self-signed CA: (certificate PEM, key PEM).
fn new_ca(now: i64) -> Result<(String, String), Invalid> {
    ca_valid(now - BACKDATE_SECS, now + CA_LIFETIME_SECS)
}

/// A new self-signed CA valid from `not_before` to `not_after`.
fn ca_valid(not_before: i64, not_after: i64) -> Result<(String, String), Invalid> {
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "keyway.dev");
    // Unique per CA, so two CAs in one bundle are told apart by name too.
    dn.push(
        DnType::CommonName,
        format!("keyway-webhook-ca-{not_before}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, not_before, not_after)?;
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("signing the CA"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `dns_names` (IP addresses become IP SANs), signed by the CA;
/// it never outlives the CA.
fn new_serving(
    now: i64,
    dns_names: &[String],
    ca_cert: &str,
    ca_key: &str,
) -> Result<(String, String), Invalid> {
    let ca_not_after = inspect(ca_cert)?.not_after;
    let not_after = (now + SERVING_LIFETIME_SECS).min(ca_not_after);
    serving_valid(now - BACKDATE_SECS, not_after, dns_names, ca_cert, ca_key)
}

/// A serving certificate valid from `not_before` to `not_after`.
fn serving_valid(
    not_before: i64,
    not_after: i64,
    dns_names: &[String],
    ca_cert: &str,
    ca_key: &str,
) -> Result<(String, String), Invalid> {
    let names: Vec<String> = dns_names.iter().map(|n| normalize_name(n)).collect();
    let mut params =
        CertificateParams::new(names.clone()).map_err(rcgen_err("the webhook DNS names"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "keyway.dev");
    dn.push(
        DnType::CommonName,
        names
            .first()
            .cloned()
            .unwrap_or_else(|| "keyway-webhook".into()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, not_before, not_after)?;
    let ca_key = KeyPair::from_pem(ca_key).map_err(rcgen_err("ca.key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key).map_err(rcgen_err("ca.crt"))?;
    let key = KeyPair::generate().map_err(rcgen_err("generating the serving key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("signing the serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests;
