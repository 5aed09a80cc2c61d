//! The API server itself rejects invalid pools, with a message that names the field: the CRD
//! schemas carry ranges, enums, patterns, list-map keys and CEL rules.

use keyway_e2e::cluster;

const VALID_BACKENDS: &str = r#"
    - {name: a, endpoint: "http://a.example:8080"}
    - {name: b, endpoint: "https://b.example/v1"}"#;

fn pool(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: keyway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata:\n  name: {name}\nspec:\n{spec}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pools_are_rejected_naming_the_field() {
    let cluster = cluster().await;
    let ns = cluster.namespace("validation").await;

    // A valid pool is accepted (so the rejections below are about what they change).
    let valid = "  mode: failover\n  evacuatePrimary: true\n  backends:\n    - {name: p, role: primary, endpoint: \"http://p\"}\n    - {name: s, role: secondary, endpoint: \"http://s\"}";
    ns.apply(&pool("ok", valid)).await;
    let multi = format!(
        "  mode: multiCluster\n  affinity: {{header: x-user, store: redis, redis: {{sentinels: [\"s1:26379\"], masterName: keyway}}}}\n  balanceAlgorithm: {{overloadedCapacityRatio: 0.9, tokenRebalance: {{maxFraction: 0.1}}}}\n  backends:{VALID_BACKENDS}"
    );
    ns.apply(&pool("ok-multi", &multi)).await;
    // A provider with a public endpoint needs no backends.
    ns.apply(&pool(
        "ok-provider",
        "  provider: anthropic\n  allowedSources: [\"10.0.0.0/8\"]",
    ))
    .await;

    let cases: &[(&str, String, &[&str])] = &[
        (
            "no primary in failover mode",
            pool(
                "bad1",
                &format!("  mode: failover\n  backends:{VALID_BACKENDS}"),
            ),
            &["spec.backends", "exactly one backend with role: primary"],
        ),
        (
            "duplicate backend names",
            pool(
                "bad2",
                "  backends:\n    - {name: a, endpoint: \"http://x\"}\n    - {name: a, endpoint: \"http://y\"}",
            ),
            &["spec.backends[1]", "Duplicate value"],
        ),
        (
            "endpoint that is not an http(s) URL",
            pool(
                "bad3",
                "  backends:\n    - {name: a, endpoint: \"ftp://x\"}",
            ),
            &["spec.backends[0].endpoint", "should match"],
        ),
        (
            "every weight zero",
            pool(
                "bad4",
                "  backends:\n    - {name: a, endpoint: \"http://x\", weight: 0}",
            ),
            &["spec.backends", "weight above 0"],
        ),
        (
            "weight out of range",
            pool(
                "bad5",
                "  backends:\n    - {name: a, endpoint: \"http://x\", weight: -1}",
            ),
            &["spec.backends[0].weight", "greater than or equal to 0"],
        ),
        (
            "unknown strategy",
            pool(
                "bad6",
                &format!("  strategy: fastest\n  backends:{VALID_BACKENDS}"),
            ),
            &["spec.strategy", "Unsupported value"],
        ),
        (
            "evacuatePrimary outside failover mode",
            pool(
                "bad7",
                &format!("  evacuatePrimary: true\n  backends:{VALID_BACKENDS}"),
            ),
            &["spec.evacuatePrimary", "only valid with mode: failover"],
        ),
        (
            "an unknown field",
            pool(
                "bad8",
                &format!("  colour: blue\n  backends:{VALID_BACKENDS}"),
            ),
            &["unknown field", "spec.colour"],
        ),
        (
            "balanceAlgorithm outside multiCluster mode",
            pool(
                "bad10",
                &format!(
                    "  balanceAlgorithm: {{overloadedCapacityRatio: 0.9}}\n  backends:{VALID_BACKENDS}"
                ),
            ),
            &[
                "spec.balanceAlgorithm",
                "only valid with mode: multiCluster",
            ],
        ),
        (
            "redis store without redis settings",
            pool(
                "bad11",
                &format!(
                    "  mode: multiCluster\n  affinity: {{store: redis}}\n  backends:{VALID_BACKENDS}"
                ),
            ),
            &["spec.affinity", "needs affinity.redis"],
        ),
        (
            "an unknown affinity store",
            pool(
                "bad12",
                &format!("  affinity: {{store: postgres}}\n  backends:{VALID_BACKENDS}"),
            ),
            &["spec.affinity.store", "Unsupported value"],
        ),
        // (An integer 0 would pass: the API server compares integers with the float minimum
        // truncated to an integer. The controller's own validation rejects it.)
        (
            "an overload ratio out of range",
            pool(
                "bad13",
                &format!(
                    "  mode: multiCluster\n  balanceAlgorithm: {{overloadedCapacityRatio: 0.001}}\n  backends:{VALID_BACKENDS}"
                ),
            ),
            &[
                "spec.balanceAlgorithm.overloadedCapacityRatio",
                "greater than or equal to 0.01",
            ],
        ),
        (
            "no backends",
            pool("bad9", "  backends: []"),
            &["spec.backends", "backends required unless provider"],
        ),
        (
            "openaiCompatible brings no endpoint",
            pool("bad10", "  provider: openaiCompatible"),
            &["spec.backends", "backends required unless provider"],
        ),
        (
            "unknown provider",
            pool("bad11", "  provider: mistral"),
            &["spec.provider", "Unsupported value"],
        ),
    ];
    for (what, yaml, expected) in cases {
        let out = cluster
            .kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], yaml)
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: the API server accepted it: {}\n{yaml}",
            String::from_utf8_lossy(&out.stdout)
        );
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{what}: expected {needle:?} in: {stderr}"
            );
        }
    }
}
