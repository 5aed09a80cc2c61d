//! `keyway-controller crd`: the CRD YAML generated from the Rust types. The files in `crds/`
//! are this output; a test fails when they drift.

use keyway_api::spec::{ApiKeyPool, LoadBalancerPool};
use kube::CustomResourceExt;

/// `(file name, YAML)` for every CRD, in a stable order.
pub fn crds() -> Result<Vec<(String, String)>, serde_saphyr::ser::Error> {
    let mut out = Vec::new();
    for crd in [LoadBalancerPool::crd(), ApiKeyPool::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_saphyr::to_string(&crd)?;
        out.push((format!("{name}.yaml"), yaml));
    }
    Ok(out)
}

/// All CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    Ok(crds()?
        .into_iter()
        .map(|(_, y)| format!("---\n{y}"))
        .collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The committed CRDs must be what the types generate. Regenerate with
    /// `cargo run -p keyway-controller -- crd --out crds` (or `make generate`).
    #[test]
    fn committed_crds_match_the_types() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in ["crds", "charts/keyway/crds"] {
            for (file, yaml) in crds().unwrap() {
                let committed = std::fs::read_to_string(root.join(dir).join(&file))
                    .unwrap_or_else(|e| panic!("{dir}/{file}: {e}; run `make generate`"));
                assert!(
                    committed == yaml,
                    "{dir}/{file} differs from the Rust types; run `make generate` and commit"
                );
            }
        }
    }

    #[test]
    fn crds_have_shortnames_status_and_columns() {
        let lbp = LoadBalancerPool::crd();
        assert_eq!(lbp.spec.names.short_names, Some(vec!["lbp".to_string()]));
        let v = &lbp.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Mode", "Strategy", "Active", "Healthy", "Backends", "Proxies", "Ready", "Reason",
                "Degraded", "Age"
            ]
        );
        let akp = ApiKeyPool::crd();
        assert_eq!(akp.spec.names.short_names, Some(vec!["akp".to_string()]));
        assert_eq!(akp.spec.scope, "Namespaced");
        // `-o wide` (priority 1): the key states and the reasons.
        let wide = |crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
            crd.spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .filter(|c| c.priority == Some(1))
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(wide(&akp), ["Cooling", "Exhausted", "Disabled", "Reason"]);
        assert_eq!(wide(&lbp), ["Reason", "Degraded"]);
    }

    /// Structural schema: every node has a type, and no $ref survives.
    #[test]
    fn schemas_are_structural() {
        fn walk(path: &str, v: &serde_json::Value) {
            if let Some(obj) = v.as_object() {
                assert!(!obj.contains_key("$ref"), "{path} has $ref");
                if obj.contains_key("properties") || obj.contains_key("items") {
                    assert!(obj.contains_key("type"), "{path} has no type");
                }
                for (k, child) in obj {
                    walk(&format!("{path}.{k}"), child);
                }
            }
        }
        for crd in [LoadBalancerPool::crd(), ApiKeyPool::crd()] {
            walk("crd", &serde_json::to_value(&crd).unwrap());
        }
    }
}
