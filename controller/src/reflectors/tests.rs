use super::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use kube::runtime::watcher::Event;

fn cm(ns: &str, name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("v".to_string(), v.to_string())].into()),
        ..Default::default()
    }
}

/// Feeds events into a store through `merge`; returns the store's content as `ns/name=v`.
fn feed(
    merge: &mut Merge<ConfigMap>,
    writer: &mut reflector::store::Writer<ConfigMap>,
    store: &Store<ConfigMap>,
    events: Vec<(usize, Event<ConfigMap>)>,
) -> Vec<String> {
    for (i, e) in events {
        for out in merge.apply(i, e) {
            writer.apply_watcher_event(&out);
        }
    }
    let mut all: Vec<String> = store
        .state()
        .iter()
        .map(|o| {
            format!(
                "{}/{}={}",
                o.namespace().unwrap_or_default(),
                o.name_any(),
                o.data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default()
            )
        })
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn merged_namespaces_share_one_store_and_relists_keep_the_others() {
    let (store, mut writer) = reflector::store::<ConfigMap>();
    let mut merge = Merge::new(2);
    // Namespace a lists first: the store stays unready and empty until b has listed too.
    let s = feed(
        &mut merge,
        &mut writer,
        &store,
        vec![
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x", "1"))),
            (0, Event::InitDone),
            (0, Event::Apply(cm("a", "y", "1"))),
            (1, Event::Init),
        ],
    );
    assert!(s.is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(10), store.wait_until_ready())
            .await
            .is_err()
    );
    let s = feed(
        &mut merge,
        &mut writer,
        &store,
        vec![
            (1, Event::InitApply(cm("b", "x", "1"))),
            (1, Event::InitDone),
        ],
    );
    assert_eq!(s, ["a/x=1", "a/y=1", "b/x=1"]);
    store.wait_until_ready().await.unwrap();

    // A relist of b (after a watch desync) drops what b lost, and never touches a.
    let s = feed(
        &mut merge,
        &mut writer,
        &store,
        vec![
            (1, Event::Init),
            (1, Event::InitApply(cm("b", "z", "2"))),
            (0, Event::Delete(cm("a", "y", "1"))),
            (1, Event::InitDone),
            (0, Event::Apply(cm("a", "x", "3"))),
        ],
    );
    assert_eq!(s, ["a/x=3", "b/z=2"]);
}
