use super::*;

fn load(healthy: Option<bool>, capacity: Option<f64>, consumption: Option<f64>) -> ModelLoad {
    ModelLoad {
        healthy,
        capacity,
        consumption,
    }
}

#[test]
fn documented_shape() {
    let body = br#"{"models":[
            {"name":"m1","payload":{"healthy":true,"capacity":2000,"consumption":15}},
            {"name":"m2","payload":{"healthy":false,"capacity":1.5,"consumption":0.25}}
        ]}"#;
    let models = parse_deep(body).unwrap();
    assert_eq!(
        models,
        vec![
            ("m1".into(), load(Some(true), Some(2000.0), Some(15.0))),
            ("m2".into(), load(Some(false), Some(1.5), Some(0.25))),
        ]
    );
    let snap = DeepSnapshot::new(models, Instant::now());
    assert_eq!(snap.load(), Some((2001.5, 15.25)));
    assert_eq!(snap.model("m1").and_then(|m| m.headroom()), Some(1985.0));
}

#[test]
fn tolerant_fields() {
    let body = br#"{"version":3,"models":[
            {"name":"unknown-fields","extra":[1,2],"payload":{"healthy":true,"capacity":10,"consumption":1,"queue":7}},
            {"name":"no-payload"},
            {"name":"partial","payload":{"capacity":5}},
            {"name":"mistyped","payload":{"healthy":"yes","capacity":"12.5","consumption":-3}},
            {"name":"payload-not-object","payload":[1]},
            {"payload":{"capacity":1}},
            {"name":"","payload":{"capacity":1}},
            {"name":42},
            "not an object",
            null,
            {"name":"partial","payload":{"capacity":6,"consumption":2}}
        ]}"#;
    let models = parse_deep(body).unwrap();
    assert_eq!(
        models,
        vec![
            (
                "unknown-fields".into(),
                load(Some(true), Some(10.0), Some(1.0))
            ),
            ("no-payload".into(), ModelLoad::default()),
            ("partial".into(), load(None, Some(6.0), Some(2.0))),
            ("mistyped".into(), load(None, Some(12.5), None)),
            ("payload-not-object".into(), ModelLoad::default()),
        ]
    );
    let snap = DeepSnapshot::new(models, Instant::now());
    // Only the models with both numbers count.
    assert_eq!(snap.load(), Some((16.0, 3.0)));
    assert_eq!(
        snap.models()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        [
            "mistyped",
            "no-payload",
            "partial",
            "payload-not-object",
            "unknown-fields"
        ]
    );
}

#[test]
fn empty_models_is_ok() {
    let models = parse_deep(br#"{"models":[]}"#).unwrap();
    assert!(models.is_empty());
    let snap = DeepSnapshot::new(models, Instant::now());
    assert_eq!(snap.load(), None);
    let snap = DeepSnapshot::new(
        vec![("a".into(), load(Some(true), Some(1.0), None))],
        Instant::now(),
    );
    assert_eq!(snap.load(), None);
}

#[test]
fn malformed_bodies() {
    assert!(matches!(parse_deep(b""), Err(DeepError::Json(_))));
    assert!(matches!(parse_deep(b"{"), Err(DeepError::Json(_))));
    assert!(matches!(parse_deep(b"not json"), Err(DeepError::Json(_))));
    assert!(matches!(
        parse_deep(br#"{"models":[]} trailing"#),
        Err(DeepError::Json(_))
    ));
    assert!(matches!(parse_deep(&[0xff, 0xfe]), Err(DeepError::Json(_))));
    assert!(matches!(parse_deep(b"[]"), Err(DeepError::NotAnObject)));
    assert!(matches!(parse_deep(b"\"x\""), Err(DeepError::NotAnObject)));
    assert!(matches!(parse_deep(b"null"), Err(DeepError::NotAnObject)));
    assert!(matches!(parse_deep(b"{}"), Err(DeepError::NoModels)));
    assert!(matches!(
        parse_deep(br#"{"models":null}"#),
        Err(DeepError::NoModels)
    ));
    assert!(matches!(
        parse_deep(br#"{"models":{"name":"m"}}"#),
        Err(DeepError::NoModels)
    ));
}

#[test]
fn deep_nesting_does_not_overflow() {
    // serde_json's recursion limit turns this into an error instead of a stack overflow.
    let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        parse_deep(body.as_bytes()),
        Err(DeepError::Json(_))
    ));
    let nested = format!(
        r#"{{"models":[{{"name":"m","payload":{{"x":{}1{}}}}}]}}"#,
        "[".repeat(50),
        "]".repeat(50)
    );
    assert_eq!(parse_deep(nested.as_bytes()).unwrap().len(), 1);
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A tiny deterministic fuzz loop (xorshift) over mutations of a valid body.
    let seed = br#"{"models":[{"name":"m1","payload":{"healthy":true,"capacity":2000,"consumption":15}}]}"#;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5_000 {
        let mut body = seed.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % body.len();
            body[i] = next() as u8;
        }
        let _ = parse_deep(&body);
    }
}
