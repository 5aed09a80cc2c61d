use super::*;

const NOW: i64 = 1_800_000_000;

fn names() -> Vec<String> {
    vec![
        "127.0.0.1".into(),
        "localhost".into(),
        "Keyway.Example.svc".into(),
    ]
}

/// A material whose CA and serving certificate have the given validity windows.
fn material(ca: (i64, i64), serving: (i64, i64)) -> Material {
    let (ca_cert, ca_key) = ca_valid(ca.0, ca.1).expect("ca");
    let (tls_cert, tls_key) =
        serving_valid(serving.0, serving.1, &names(), &ca_cert, &ca_key).expect("serving");
    Material {
        ca_cert,
        ca_key,
        previous_ca_cert: None,
        tls_cert,
        tls_key,
    }
}

#[test]
fn generated_material_is_valid_and_needs_nothing() {
    let m = Material::generate(NOW, &names()).expect("generate");
    let serving = m.serving().expect("serving");
    assert_eq!(
        serving.info.sans,
        BTreeSet::from([
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "keyway.example.svc".to_owned()
        ])
    );
    assert!(!serving.info.is_ca);
    assert!(serving.ca.is_ca);
    assert_eq!(serving.info.not_after, NOW + SERVING_LIFETIME_SECS);
    assert_eq!(serving.ca.not_after, NOW + CA_LIFETIME_SECS);
    assert!(serving.info.not_before < NOW, "backdated for clock skew");
    assert_eq!(m.renewal(NOW, &names(), true), None);
    assert_eq!(m.renewal(NOW, &names(), false), None);
    // Round trip through the Secret's data.
    assert_eq!(Material::from_data(&m.to_data()), Some(m));
}

#[test]
fn secret_data_missing_a_key_is_no_material() {
    let m = Material::generate(NOW, &names()).expect("generate");
    for key in [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY] {
        let mut data = m.to_data();
        data.remove(key);
        assert_eq!(Material::from_data(&data), None, "without {key}");
    }
    let mut data = m.to_data();
    data.insert(TLS_KEY.into(), vec![0xff, 0xfe]);
    assert_eq!(Material::from_data(&data), None, "non-UTF-8");
}

#[test]
fn serving_certificate_is_renewed_when_a_third_of_its_life_is_left() {
    let life = 900;
    // 2/3 of its life gone plus a second: due.
    let m = material(
        (NOW - 1000, NOW + CA_LIFETIME_SECS),
        (NOW - 601, NOW - 601 + life),
    );
    let renewal = m.renewal(NOW, &names(), false).expect("due");
    assert!(matches!(renewal, Renewal::NewServing { .. }), "{renewal:?}");
    let next = m.renewed(&renewal, NOW, &names()).expect("renewed");
    assert_eq!(next.ca_cert, m.ca_cert, "the CA is kept");
    assert_eq!(next.ca_key, m.ca_key);
    assert_ne!(next.tls_cert, m.tls_cert);
    assert_eq!(next.renewal(NOW, &names(), false), None);
    assert_eq!(
        next.serving().expect("serving").info.not_after,
        NOW + SERVING_LIFETIME_SECS
    );
    // One second less gone: not due yet.
    let m = material(
        (NOW - 1000, NOW + CA_LIFETIME_SECS),
        (NOW - 599, NOW - 599 + life),
    );
    assert_eq!(m.renewal(NOW, &names(), false), None);
}

#[test]
fn expired_or_mismatched_serving_certificate_is_replaced() {
    let m = material((NOW - 1000, NOW + CA_LIFETIME_SECS), (NOW - 100, NOW - 1));
    assert!(matches!(
        m.renewal(NOW, &names(), false),
        Some(Renewal::NewServing { .. })
    ));
    // Another key than the certificate's.
    let mut m = Material::generate(NOW, &names()).expect("generate");
    m.tls_key = KeyPair::generate().expect("key").serialize_pem();
    assert!(m.serving().is_err());
    let renewal = m.renewal(NOW, &names(), false).expect("unusable");
    assert!(
        matches!(&renewal, Renewal::NewServing { reason } if reason.contains("unusable")),
        "{renewal:?}"
    );
    assert!(
        m.renewed(&renewal, NOW, &names())
            .expect("r")
            .serving()
            .is_ok()
    );
}

#[test]
fn serving_certificate_follows_the_configured_names() {
    let m = Material::generate(NOW, &names()).expect("generate");
    let other = vec!["keyway-controller.keyway.svc".to_owned()];
    let renewal = m.renewal(NOW, &other, false).expect("names changed");
    assert!(matches!(renewal, Renewal::NewServing { .. }));
    let next = m.renewed(&renewal, NOW, &other).expect("renewed");
    assert_eq!(next.renewal(NOW, &other, false), None);
    // Case and a trailing dot do not count as a change.
    let same = vec![
        "127.0.0.1".to_owned(),
        "LOCALHOST".to_owned(),
        "keyway.example.svc.".to_owned(),
    ];
    assert_eq!(m.renewal(NOW, &same, false), None);
}

#[test]
fn a_serving_certificate_signed_by_a_stranger_is_replaced() {
    let m = Material::generate(NOW, &names()).expect("generate");
    let stranger = Material::generate(NOW, &names()).expect("generate");
    let mixed = Material {
        tls_cert: stranger.tls_cert.clone(),
        tls_key: stranger.tls_key.clone(),
        ..m.clone()
    };
    assert!(mixed.serving().is_err());
    assert!(matches!(
        mixed.renewal(NOW, &names(), false),
        Some(Renewal::NewServing { .. })
    ));
}

#[test]
fn unusable_or_expired_ca_starts_over() {
    let m = Material::generate(NOW, &names()).expect("generate");
    let garbage = Material {
        ca_cert: "not a certificate".into(),
        ..m.clone()
    };
    let renewal = garbage.renewal(NOW, &names(), false).expect("new CA");
    assert!(matches!(renewal, Renewal::NewCa { .. }), "{renewal:?}");
    let fresh = garbage.renewed(&renewal, NOW, &names()).expect("renewed");
    assert!(fresh.serving().is_ok());
    assert_eq!(fresh.previous_ca_cert, None, "garbage is not kept");
    // The CA key of another CA.
    let wrong_key = Material {
        ca_key: KeyPair::generate().expect("key").serialize_pem(),
        ..m.clone()
    };
    assert!(matches!(
        wrong_key.renewal(NOW, &names(), false),
        Some(Renewal::NewCa { .. })
    ));
    // A serving certificate is not a CA.
    let not_ca = Material {
        ca_cert: m.tls_cert.clone(),
        ..m.clone()
    };
    assert!(matches!(
        not_ca.renewal(NOW, &names(), false),
        Some(Renewal::NewCa { .. })
    ));
    // Expired CA.
    let expired = material((NOW - 1000, NOW - 10), (NOW - 1000, NOW - 10));
    let renewal = expired.renewal(NOW, &names(), false).expect("expired");
    assert!(matches!(renewal, Renewal::NewCa { .. }));
    let fresh = expired.renewed(&renewal, NOW, &names()).expect("renewed");
    assert_eq!(fresh.previous_ca_cert, None, "an expired CA is not trusted");
    assert_eq!(fresh.renewal(NOW, &names(), false), None);
}

#[test]
fn ca_rotation_keeps_every_certificate_trusted() {
    let life = 3000;
    // The CA has less than a third of its life left; the serving certificate is fresh.
    let old = material((NOW - 2001, NOW - 2001 + life), (NOW - 10, NOW + 900));
    let rotate = old.renewal(NOW, &names(), true).expect("CA due");
    assert!(matches!(rotate, Renewal::RotateCa { .. }), "{rotate:?}");
    let step1 = old.renewed(&rotate, NOW, &names()).expect("rotated");
    assert_ne!(step1.ca_cert, old.ca_cert);
    assert_eq!(
        step1.previous_ca_cert.as_deref(),
        Some(old.ca_cert.as_str())
    );
    assert_eq!(
        step1.tls_cert, old.tls_cert,
        "the old CA keeps signing for now"
    );
    assert!(
        step1.serving().is_ok(),
        "signed by the previous CA: still valid"
    );
    let bundle = bundle_certs(step1.ca_bundle(NOW).as_bytes());
    assert_eq!(bundle.len(), 2, "both CAs are trusted");

    // Until the webhook configuration trusts the new CA, nothing moves.
    assert_eq!(step1.renewal(NOW, &names(), false), None);
    // Then the serving certificate moves to it.
    let moving = step1.renewal(NOW, &names(), true).expect("move");
    assert!(matches!(&moving, Renewal::NewServing { reason } if reason.contains("new CA")));
    let step2 = step1.renewed(&moving, NOW, &names()).expect("moved");
    assert_eq!(step2.ca_cert, step1.ca_cert);
    assert!(step2.serving_signed_by_current());
    let serving = step2.serving().expect("serving");
    assert_eq!(serving.issuer, serving.ca.fingerprint);
    assert_eq!(step2.renewal(NOW, &names(), true), None);
    // The old CA stays in the bundle until it expires, then goes.
    assert_eq!(bundle_certs(step2.ca_bundle(NOW).as_bytes()).len(), 2);
    let later = NOW - 2001 + life + 1;
    assert_eq!(bundle_certs(step2.ca_bundle(later).as_bytes()).len(), 1);
    assert_eq!(
        step2.renewal(later, &names(), true),
        Some(Renewal::DropPreviousCa)
    );
    let step3 = step2
        .renewed(&Renewal::DropPreviousCa, later, &names())
        .expect("dropped");
    assert_eq!(step3.previous_ca_cert, None);
}

#[test]
fn ca_bundle_merges_current_and_previous_once() {
    let a = Material::generate(NOW, &names()).expect("a");
    let b = Material::generate(NOW, &names()).expect("b");
    assert_eq!(bundle_certs(a.ca_bundle(NOW).as_bytes()).len(), 1);
    let both = Material {
        previous_ca_cert: Some(b.ca_cert.clone()),
        ..a.clone()
    };
    let bundle = both.ca_bundle(NOW);
    let certs = bundle_certs(bundle.as_bytes());
    assert_eq!(certs.len(), 2);
    assert_eq!(
        certs[0],
        bundle_certs(a.ca_cert.as_bytes())[0],
        "current CA first"
    );
    // The same CA twice, and extra whitespace, count once.
    let same = Material {
        previous_ca_cert: Some(format!("\n{}\n\n", a.ca_cert)),
        ..a.clone()
    };
    assert_eq!(bundle_certs(same.ca_bundle(NOW).as_bytes()).len(), 1);
    // bundle_certs compares by content, so a reordered or duplicated bundle is the same set.
    let doubled = format!("{}{}", a.ca_cert, a.ca_cert);
    assert_eq!(bundle_certs(doubled.as_bytes()).len(), 1);
    assert!(bundle_certs(b"").is_empty());
}

#[test]
fn debug_shows_fingerprints_never_keys() {
    let m = Material::generate(NOW, &names()).expect("generate");
    let shown = format!("{m:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains(m.ca_key.lines().nth(1).unwrap_or("x")));
    assert!(shown.contains("sha256:"), "{shown}");
}
