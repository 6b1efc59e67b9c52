//! The CRDs' validation as the real apiserver applies it: CEL rules on names that become paths, the input URI,
//! the EtlRun's name, and an immutable spec.

mod support;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use silverline_crds::{Dataset, EtlRun, EtlRunSpec};

fn run(name: &str, dataset: &str, input: &str) -> EtlRun {
    EtlRun::new(
        name,
        EtlRunSpec { dataset: dataset.into(), input: input.into(), resources: None, deadline_seconds: None },
    )
}

fn rejection(result: Result<EtlRun, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("expected a validation error, got {e}"),
        Ok(run) => panic!("the apiserver accepted {:?}", run.spec),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn the_apiserver_rejects_runs_whose_names_or_input_could_escape_a_path() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::TestNamespace::create(&client, "cel").await;
    let api: Api<EtlRun> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();

    let cases = [
        ("bad-dataset", "../etc", "/in.csv", "dataset must be a DNS label"),
        ("bad-dataset-case", "Transactions", "/in.csv", "dataset must be a DNS label"),
        ("bad-input-relative", "transactions", "in.csv", "input must be"),
        ("bad-input-dotdot", "transactions", "s3://bucket/a/../b.csv", "input must be"),
        ("bad-input-space", "transactions", "/data/a b.csv", "input must be"),
        ("bad-input-scheme", "transactions", "http://example.com/a.csv", "input must be"),
        (&"a".repeat(51), "transactions", "/in.csv", "metadata.name must be a DNS label of at most 50"),
    ];
    for (name, dataset, input, expected) in cases {
        let message = rejection(api.create(&pp, &run(name, dataset, input)).await);
        assert!(message.contains(expected), "{name}: {message}");
        assert!(!message.contains("<nil>"), "every rule names its field: {name}: {message}");
    }
    let long = rejection(api.create(&pp, &run(&"a".repeat(51), "transactions", "/in.csv")).await);
    assert!(long.contains("metadata.name: Invalid value"), "the name rule's field path: {long}");
    for (name, input) in
        [("ok-s3", "s3://bronze-bucket/tx/2024/"), ("ok-file", "file:///data/in.csv"), ("ok-path", "/data/in.csv")]
    {
        api.create(&pp, &run(name, "transactions", input)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn the_spec_of_a_run_cannot_change_but_its_status_can() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::TestNamespace::create(&client, "immutable").await;
    let api: Api<EtlRun> = Api::namespaced(client.clone(), &ns.name);
    api.create(&PostParams::default(), &run("tx", "transactions", "/in.csv")).await.expect("create");

    let change = serde_json::json!({"spec": {"input": "/other.csv"}});
    let message = rejection(api.patch("tx", &PatchParams::default(), &Patch::Merge(&change)).await);
    assert!(message.contains("spec is immutable"), "{message}");
    let deadline = serde_json::json!({"spec": {"deadlineSeconds": 60}});
    let message = rejection(api.patch("tx", &PatchParams::default(), &Patch::Merge(&deadline)).await);
    assert!(message.contains("spec is immutable"), "{message}");

    let status = serde_json::json!({"status": {"phase": "Pending"}});
    api.patch_status("tx", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status is writable");
    let bad_phase = serde_json::json!({"status": {"phase": "Done"}});
    rejection(api.patch_status("tx", &PatchParams::default(), &Patch::Merge(&bad_phase)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn the_apiserver_rejects_datasets_whose_name_or_schema_version_is_not_a_path_segment() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::TestNamespace::create(&client, "dsval").await;
    let api: Api<Dataset> = Api::namespaced(client.clone(), &ns.name);
    let lake = std::path::Path::new("/tmp/lake");
    let mut dataset = support::transactions_dataset(lake, 3);
    dataset.spec.schema_version = "v1/../../etc".into();
    match api.create(&PostParams::default(), &dataset).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{status:?}"),
        other => panic!("expected a 422, got {other:?}"),
    }
    let mut dotted = support::transactions_dataset(lake, 3);
    dotted.metadata.name = Some("transactions.v2".into());
    match api.create(&PostParams::default(), &dotted).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("metadata.name must be a DNS label"), "{}", status.message);
            assert!(status.message.contains("metadata.name: Invalid value"), "a field path: {}", status.message);
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    api.create(&PostParams::default(), &support::transactions_dataset(lake, 3)).await.expect("the example is valid");
}

/// The operator's restart-safety rests on this: its server-side-apply status writes carry the resourceVersion it
/// decided from, and the apiserver refuses them when the EtlRun changed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_status_apply_from_a_stale_view_is_refused() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::TestNamespace::create(&client, "stale").await;
    let api: Api<EtlRun> = Api::namespaced(client.clone(), &ns.name);
    let created = api.create(&PostParams::default(), &run("tx", "transactions", "/in.csv")).await.expect("create");
    let stale = created.metadata.resource_version.clone().expect("resourceVersion");
    let apply = |rv: String, phase: &str| {
        serde_json::json!({
            "apiVersion": "etl.silverline.dev/v1alpha1", "kind": "EtlRun",
            "metadata": {"name": "tx", "resourceVersion": rv}, "status": {"phase": phase},
        })
    };
    let params = PatchParams::apply("silverline-operator").force();
    let fresh =
        api.patch_status("tx", &params, &Patch::Apply(&apply(stale.clone(), "Pending"))).await.expect("first write");
    match api.patch_status("tx", &params, &Patch::Apply(&apply(stale, "Running"))).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a stale write must be refused, got {other:?}"),
    }
    let current = fresh.metadata.resource_version.expect("resourceVersion");
    api.patch_status("tx", &params, &Patch::Apply(&apply(current, "Running"))).await.expect("a fresh write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn the_apiserver_keeps_a_promotion_immutable_and_to_runs_or_a_version() {
    use silverline_crds::Promotion;
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::TestNamespace::create(&client, "promo-cel").await;
    let api: Api<Promotion> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    let promotion = |name: &str, spec: serde_json::Value| -> Promotion {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "etl.silverline.dev/v1alpha1", "kind": "Promotion", "metadata": {"name": name}, "spec": spec,
        }))
        .expect("a Promotion")
    };
    let refused = |result: Result<Promotion, kube::Error>| match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("expected a validation error, got {e}"),
        Ok(p) => panic!("the apiserver accepted {:?}", p.spec),
    };
    let cases = [
        (
            "both",
            serde_json::json!({"dataset": "tx", "runIds": ["r1"], "restoreVersion": 1, "reason": "r"}),
            "not both",
        ),
        ("neither", serde_json::json!({"dataset": "tx", "reason": "r"}), "not both"),
        ("bad-run", serde_json::json!({"dataset": "tx", "runIds": ["../x"], "reason": "r"}), "each run id"),
        ("bad-dataset", serde_json::json!({"dataset": "../tx", "runIds": ["r1"], "reason": "r"}), "dataset must be"),
        ("no-runs", serde_json::json!({"dataset": "tx", "runIds": [], "reason": "r"}), "runIds"),
        (&"a".repeat(57), serde_json::json!({"dataset": "tx", "runIds": ["r1"], "reason": "r"}), "at most 56"),
    ];
    for (name, spec, expected) in cases {
        let message = refused(api.create(&pp, &promotion(name, spec)).await);
        assert!(message.contains(expected), "{name}: {message}");
    }
    api.create(
        &pp,
        &promotion(
            "ok-runs",
            serde_json::json!({"dataset": "tx", "runIds": ["20240101T000000Z-abc-a1"], "reason": "r"}),
        ),
    )
    .await
    .expect("runs");
    api.create(&pp, &promotion("ok-restore", serde_json::json!({"dataset": "tx", "restoreVersion": 2, "reason": "r"})))
        .await
        .expect("a rollback");
    let change = serde_json::json!({"spec": {"reason": "other"}});
    let message = refused(api.patch("ok-runs", &PatchParams::default(), &Patch::Merge(&change)).await);
    assert!(message.contains("spec is immutable"), "{message}");
    let annotate = serde_json::json!({"metadata": {"annotations": {"etl.silverline.dev/approved-by": "jane"}}});
    api.patch("ok-runs", &PatchParams::default(), &Patch::Merge(&annotate)).await.expect("approval annotations change");
    let status = serde_json::json!({"status": {"phase": "AwaitingApproval"}});
    api.patch_status("ok-runs", &PatchParams::default(), &Patch::Merge(&status)).await.expect("status is writable");
    let bad_phase = serde_json::json!({"status": {"phase": "Approved"}});
    refused(api.patch_status("ok-runs", &PatchParams::default(), &Patch::Merge(&bad_phase)).await);
}
