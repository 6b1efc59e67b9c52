//! Promotions against the real control plane, the test kubelet and the built worker (`silverline-worker
//! promote`): a run becomes current only once approved; a rejection or a refused gate moves nothing; two
//! promotions of one dataset are serialized; a Dataset with `requestOnSuccess` asks for the review itself.

mod support;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use silverline_crds::promotion::{
    ANNOTATION_APPROVAL_REASON, ANNOTATION_APPROVED_BY, ANNOTATION_REJECTED_BY, ANNOTATION_REJECTION_REASON,
    ANNOTATION_REQUESTED_BY,
};
use silverline_crds::{EtlRunPhase, Promotion, PromotionMode, PromotionPhase, PromotionSpec};
use std::path::Path;
use std::time::Duration;
use support::{Scenario, create_dataset, create_run, eventually, finished, transactions_dataset};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs an EtlRun to success and returns its run id.
async fn succeeded_run(s: &Scenario, name: &str, op: &support::Operator) -> String {
    let input = s.input(&format!("{name}.csv"), support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, name, &input).await;
    let run = finished(&s.client, &s.ns.name, name, RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[op]));
    run.status.and_then(|st| st.run_id).expect("run id")
}

fn promotion(name: &str, run_ids: &[&str], mode: Option<PromotionMode>) -> Promotion {
    let mut p = Promotion::new(
        name,
        PromotionSpec {
            dataset: "transactions".into(),
            run_ids: Some(run_ids.iter().map(|r| (*r).to_owned()).collect()),
            restore_version: None,
            mode,
            reason: "monthly load".into(),
        },
    );
    p.metadata.annotations = Some([(ANNOTATION_REQUESTED_BY.to_owned(), "alice".to_owned())].into());
    p
}

async fn create_promotion(s: &Scenario, promotion: &Promotion) -> Promotion {
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    api.create(&PostParams::default(), promotion).await.expect("create Promotion")
}

async fn annotate(s: &Scenario, name: &str, annotations: &[(&str, &str)]) {
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let map: serde_json::Map<String, serde_json::Value> =
        annotations.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
    let patch = serde_json::json!({"metadata": {"annotations": map}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotate");
}

async fn approve(s: &Scenario, name: &str) {
    annotate(s, name, &[(ANNOTATION_APPROVED_BY, "jane"), (ANNOTATION_APPROVAL_REASON, "counts checked")]).await;
}

async fn in_phase(s: &Scenario, name: &str, phase: PromotionPhase, timeout: Duration) -> Promotion {
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually(&format!("Promotion {name} in phase {phase}"), timeout, || async {
        let p = api.get(name).await.ok()?;
        (p.phase() == Some(phase)).then_some(p)
    })
    .await
}

async fn finished_promotion(s: &Scenario, name: &str, op: &support::Operator) -> Promotion {
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let found = tokio::time::timeout(PROMOTE_TIMEOUT, async {
        loop {
            if let Ok(p) = api.get(name).await
                && p.phase().is_some_and(PromotionPhase::is_terminal)
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    match found {
        Ok(p) => p,
        Err(_) => {
            let now = api.get(name).await.ok().and_then(|p| p.status);
            panic!("Promotion {name} did not finish: {now:?}\n{}", s.diagnostics(&[op]))
        }
    }
}

fn latest(lake: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(lake.join("silver/transactions/_LATEST.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn audit_records(lake: &Path) -> Vec<serde_json::Value> {
    let Ok(dir) = std::fs::read_dir(lake.join("audit/transactions")) else { return vec![] };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
        .collect()
}

fn reasons(events: Vec<k8s_openapi::api::core::v1::Event>) -> Vec<String> {
    events.into_iter().filter_map(|e| e.reason).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_promotion_waits_and_moves_nothing_until_approved_then_becomes_version_1() {
    let s = Scenario::new("promote").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-jan", &op).await;
    let created = create_promotion(&s, &promotion("tx-jan-promo", &[&run_id], None)).await;

    // Awaiting approval: the reviewer sees the run's metrics and what would change; nothing moves.
    let waiting = in_phase(&s, "tx-jan-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;
    let status = eventually("the preview in status", Duration::from_secs(20), || async {
        let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
        api.get("tx-jan-promo").await.ok()?.status.filter(|st| !st.runs.is_empty() && st.change.is_some())
    })
    .await;
    assert_eq!(waiting.status.as_ref().and_then(|st| st.created_by.as_deref()), Some("alice"));
    assert_eq!(status.runs[0].run_id, run_id);
    assert!(status.runs[0].valid_rows.is_some_and(|n| n > 0), "{status:?}");
    let change = status.change.expect("change");
    assert_eq!((change.files_before, change.rows_before), (0, 0));
    assert!(change.files_after > 0 && change.rows_after > 0, "{change:?}");
    assert_eq!(status.mode, Some(PromotionMode::Append));
    eventually("the awaiting-approval gauge", Duration::from_secs(15), || async {
        let n = op.metric(r#"silverline_promotions_awaiting_approval{dataset="transactions"}"#).await?;
        (n == 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(latest(&s.lake()).is_none(), "nothing is current before the approval");
    assert_eq!(
        in_phase(&s, "tx-jan-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(1)).await.uid(),
        created.uid()
    );

    approve(&s, "tx-jan-promo").await;
    let done = finished_promotion(&s, "tx-jan-promo", &op).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!((status.version, status.previous_version), (Some(1), None));
    assert_eq!(status.approved_by.as_deref(), Some("jane"));
    assert_eq!(status.job_name.as_deref(), Some("tx-jan-promo-p1"));
    let pointer = latest(&s.lake()).expect("_LATEST.json");
    assert_eq!(pointer["version"], 1);
    assert_eq!(pointer["approved_by"], "jane");
    assert_eq!(pointer["runs"][0], run_id.as_str());
    assert_eq!(pointer["promotion"]["uid"], created.uid().expect("uid").as_str());
    let reasons = reasons(support::events(&s.client, &s.ns.name, "tx-jan-promo").await);
    for reason in ["AwaitingApproval", "Promoting", "Promoted"] {
        assert!(reasons.contains(&reason.to_owned()), "{reason} missing in {reasons:?}");
    }
    assert_eq!(op.metric(r#"silverline_promotions_total{dataset="transactions",result="promoted"}"#).await, Some(1.0));
    assert!(
        op.metric(r#"silverline_last_promotion_timestamp_seconds{dataset="transactions"}"#)
            .await
            .is_some_and(|t| t > 1e9)
    );
    assert!(op.metric(r#"silverline_reconciles_total{controller="promotion"}"#).await.is_some_and(|n| n > 0.0));
    eventually("the awaiting-approval gauge back to 0", Duration::from_secs(15), || async {
        let n = op.metric(r#"silverline_promotions_awaiting_approval{dataset="transactions"}"#).await?;
        (n == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_promotion_moves_nothing_and_is_audited() {
    let s = Scenario::new("reject").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-feb", &op).await;
    create_promotion(&s, &promotion("tx-feb-promo", &[&run_id], None)).await;
    in_phase(&s, "tx-feb-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;

    annotate(&s, "tx-feb-promo", &[(ANNOTATION_REJECTED_BY, "bob"), (ANNOTATION_REJECTION_REASON, "wrong month")])
        .await;
    let done = finished_promotion(&s, "tx-feb-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Rejected));
    assert_eq!(status.rejected_by.as_deref(), Some("bob"));
    let records = eventually("the rejection's audit record", Duration::from_secs(60), || async {
        let records = audit_records(&s.lake());
        (!records.is_empty()).then_some(records)
    })
    .await;
    assert_eq!(records[0]["result"], "rejected", "{records:?}");
    assert_eq!(records[0]["rejected_by"], "bob");
    assert!(latest(&s.lake()).is_none(), "a rejection moves nothing");
    assert_eq!(op.metric(r#"silverline_promotions_total{dataset="transactions",result="rejected"}"#).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_never_committed_is_refused_by_the_gate_naming_the_check() {
    let s = Scenario::new("refuse").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    // A real run first, so that the lake exists; then a Promotion of a run id that never committed.
    succeeded_run(&s, "tx-mar", &op).await;
    create_promotion(&s, &promotion("tx-ghost-promo", &["20990101T000000Z-deadbeef-a1"], None)).await;
    approve(&s, "tx-ghost-promo").await;

    let done = finished_promotion(&s, "tx-ghost-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Failed), "{status:?}\n{}", s.diagnostics(&[&op]));
    let names: Vec<&str> = status.failed_checks.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"success_marker"), "{:?}", status.failed_checks);
    let promoted = status.conditions.iter().find(|c| c.type_ == "Promoted").expect("Promoted condition");
    assert_eq!((promoted.status.as_str(), promoted.reason.as_str()), ("False", "GateRefused"));
    assert!(promoted.message.contains("success_marker"), "{}", promoted.message);
    let events = support::events(&s.client, &s.ns.name, "tx-ghost-promo").await;
    assert!(
        events.iter().any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("GateRefused")),
        "{:?}",
        reasons(events)
    );
    assert!(latest(&s.lake()).is_none());
    assert_eq!(op.metric(r#"silverline_promotions_total{dataset="transactions",result="failed"}"#).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_job_that_finds_the_pointer_contended_is_retried_by_a_new_job() {
    let s = Scenario::new("contend").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-may", &op).await;
    s.kubelet.inject("tx-may-promo-p1", support::kubelet::Fault::Exit(7));
    create_promotion(&s, &promotion("tx-may-promo", &[&run_id], None)).await;
    approve(&s, "tx-may-promo").await;

    let done = finished_promotion(&s, "tx-may-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!((status.attempts, status.job_name.as_deref()), (2, Some("tx-may-promo-p2")));
    assert_eq!(status.version, Some(1));
    let reasons = reasons(support::events(&s.client, &s.ns.name, "tx-may-promo").await);
    assert!(reasons.contains(&"PromoteRetrying".to_owned()), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approved_promotions_of_one_dataset_run_one_at_a_time_and_a_rollback_is_a_new_version() {
    let s = Scenario::new("serial").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let first = succeeded_run(&s, "tx-one", &op).await;
    let second = succeeded_run(&s, "tx-two", &op).await;
    // Both carry the same rows: ReplaceAll, so that the second does not collide with the first's keys.
    for (name, run_id) in [("tx-one-promo", &first), ("tx-two-promo", &second)] {
        create_promotion(&s, &promotion(name, &[run_id], Some(PromotionMode::ReplaceAll))).await;
    }
    for name in ["tx-one-promo", "tx-two-promo"] {
        in_phase(&s, name, PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;
    }
    approve(&s, "tx-one-promo").await;
    approve(&s, "tx-two-promo").await;

    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let mut both_promoting = false;
    let mut waited = false;
    let done = tokio::time::timeout(PROMOTE_TIMEOUT * 2, async {
        loop {
            let (a, b) = (api.get("tx-one-promo").await.ok(), api.get("tx-two-promo").await.ok());
            let phases = [a.as_ref().and_then(|p| p.phase()), b.as_ref().and_then(|p| p.phase())];
            both_promoting |= phases.iter().all(|p| *p == Some(PromotionPhase::Promoting));
            waited |= [&a, &b].iter().any(|p| {
                p.as_ref().and_then(|p| p.status.as_ref()).is_some_and(|st| {
                    st.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "WaitingForPromotion")
                })
            });
            if phases.iter().all(|p| *p == Some(PromotionPhase::Promoted)) {
                return (a, b);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (a, b) = done.unwrap_or_else(|_| panic!("both promotions did not finish\n{}", s.diagnostics(&[&op])));
    assert!(!both_promoting, "two promotions of one dataset were Promoting at once");
    assert!(waited, "one of them waited for the other");
    let mut versions: Vec<u64> =
        [a, b].into_iter().filter_map(|p| p.and_then(|p| p.status).and_then(|st| st.version)).collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2]);
    assert_eq!(latest(&s.lake()).expect("_LATEST.json")["version"], 2);
    let promoted = audit_records(&s.lake()).into_iter().filter(|r| r["result"] == "promoted").count();
    assert_eq!(promoted, 2, "both audited");

    // A rollback goes through the same approval and is itself a new version.
    let mut rollback = promotion("tx-rollback", &[], None);
    rollback.spec.run_ids = None;
    rollback.spec.restore_version = Some(1);
    create_promotion(&s, &rollback).await;
    approve(&s, "tx-rollback").await;
    let done = finished_promotion(&s, "tx-rollback", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!((status.version, status.previous_version), (Some(3), Some(2)));
    assert_eq!(latest(&s.lake()).expect("_LATEST.json")["restored_version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_with_request_on_success_asks_for_review_and_the_published_rbac_suffices() {
    let s = Scenario::new("request").await;
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.promotion.request_on_success = true;
    dataset.spec.promotion.mode = PromotionMode::ReplacePartitions;
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    let kubeconfig = s.operator_service_account().await;
    let op = support::Operator::start(support::OperatorOptions {
        namespace: &s.ns.name,
        identity: "replica-a",
        log_dir: s.dir.path(),
        kubeconfig: Some(&kubeconfig),
        env: vec![],
    })
    .await;
    let run_id = succeeded_run(&s, "tx-apr", &op).await;

    let requested = in_phase(&s, "tx-apr-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;
    assert_eq!(requested.spec.run_ids, Some(vec![run_id.clone()]));
    assert_eq!(requested.spec.mode, Some(PromotionMode::ReplacePartitions));
    assert_eq!(requested.requested_by(), Some("silverline-operator"));
    assert!(requested.owner_references().is_empty(), "the review outlives its run");
    let reasons = reasons(support::events(&s.client, &s.ns.name, "tx-apr").await);
    assert!(reasons.contains(&"PromotionRequested".to_owned()), "{reasons:?}");

    approve(&s, "tx-apr-promo").await;
    let done = finished_promotion(&s, "tx-apr-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.created_by.as_deref(), Some("silverline-operator"));
    assert_eq!(latest(&s.lake()).expect("_LATEST.json")["mode"], "ReplacePartitions");
    assert!(!op.logs().contains("forbidden"), "the operator was refused something:\n{}", op.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_on_an_s3_lake_is_previewed_read_only_and_written_by_the_job() {
    let s = Scenario::new("promo-s3").await;
    let s3 = support::S3Server::start().await;
    s3.create_bucket("lake").await;
    // The promote Job writes with the Dataset's credentials Secret; the operator only reads, with its own identity.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.ns.name);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lake-writer"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.var("AWS_ACCESS_KEY_ID"), "AWS_SECRET_ACCESS_KEY": s3.var("AWS_SECRET_ACCESS_KEY")},
    }))
    .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("create Secret");
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.storage.lake_uri = "s3://lake/warehouse".into();
    dataset.spec.storage.endpoint = Some(s3.var("AWS_ENDPOINT_URL"));
    dataset.spec.storage.region = Some("us-east-1".into());
    dataset.spec.storage.credentials_secret = Some(silverline_crds::SecretKeyRef { name: "lake-writer".into() });
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    let op = support::Operator::start(support::OperatorOptions {
        namespace: &s.ns.name,
        identity: "replica-a",
        log_dir: s.dir.path(),
        kubeconfig: None,
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), s3.var("SILVERLINE_TEST_RO_ACCESS_KEY_ID")),
            ("AWS_SECRET_ACCESS_KEY".into(), s3.var("SILVERLINE_TEST_RO_SECRET_ACCESS_KEY")),
        ],
    })
    .await;
    let run_id = succeeded_run(&s, "tx-s3", &op).await;
    create_promotion(&s, &promotion("tx-s3-promo", &[&run_id], None)).await;
    let status = eventually("the preview from S3 in status", Duration::from_secs(30), || async {
        let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
        api.get("tx-s3-promo").await.ok()?.status.filter(|st| st.runs.first().is_some_and(|r| r.state == "committed"))
    })
    .await;
    assert!(status.change.is_some_and(|c| c.files_after > 0));

    approve(&s, "tx-s3-promo").await;
    let done = finished_promotion(&s, "tx-s3-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.version, Some(1));
}
