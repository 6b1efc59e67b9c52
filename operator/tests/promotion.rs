//! Promotions against the real control plane, the test kubelet and the built worker (`silverline-worker
//! promote`): a run becomes current only once approved; a rejection or a refused gate moves nothing; two
//! promotions of one dataset are serialized; a Dataset with `requestOnSuccess` asks for the review itself; a
//! promote Job killed after the pointer write with the operator restarted completes exactly once; a
//! quality-failed run is refused by the `success_marker` check.

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use silverline_crds::promotion::{
    ANNOTATION_APPROVAL_REASON, ANNOTATION_APPROVED_BY, ANNOTATION_REJECTED_BY, ANNOTATION_REJECTION_REASON,
    ANNOTATION_REQUESTED_BY,
};
use silverline_crds::{EtlRunPhase, Promotion, PromotionMode, PromotionPhase, PromotionSpec};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn an_unapproved_promotion_waits_and_moves_nothing_until_approved_then_becomes_version_1() {
    let s = Scenario::new("promote").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let mut op = s.operator("replica-a").await;
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
        let n = op.metric(&s.series(r#"silverline_promotions_awaiting_approval{dataset="transactions"}"#)).await?;
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
    // The finish's Event follows the status, and the metrics come before it.
    let (_, events) =
        support::event_appears(&s.client, &s.ns.name, "tx-jan-promo", |e| e.reason.as_deref() == Some("Promoted"))
            .await;
    let reasons = reasons(events);
    for reason in ["AwaitingApproval", "Promoting", "Promoted"] {
        assert!(reasons.contains(&reason.to_owned()), "{reason} missing in {reasons:?}");
    }
    assert_eq!(
        op.metric(&s.series(r#"silverline_promotions_total{dataset="transactions",result="promoted"}"#)).await,
        Some(1.0)
    );
    assert!(
        op.metric(&s.series(r#"silverline_last_promotion_timestamp_seconds{dataset="transactions"}"#))
            .await
            .is_some_and(|t| t > 1e9)
    );
    assert!(op.metric(r#"silverline_reconciles_total{controller="promotion"}"#).await.is_some_and(|n| n > 0.0));
    eventually("the awaiting-approval gauge back to 0", Duration::from_secs(15), || async {
        let n = op.metric(&s.series(r#"silverline_promotions_awaiting_approval{dataset="transactions"}"#)).await?;
        (n == 0.0).then_some(())
    })
    .await;

    // A new leader knows when the dataset was last promoted from the Promotion's status, at once.
    op.kill().await;
    let next = s.operator("replica-b").await;
    let finished = status.finished_at.expect("finishedAt").0.as_second() as f64;
    eventually("replica-b's last-promotion time", Duration::from_secs(60), || async {
        let t =
            next.metric(&s.series(r#"silverline_last_promotion_timestamp_seconds{dataset="transactions"}"#)).await?;
        (t == finished).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
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
    assert_eq!(
        op.metric(&s.series(r#"silverline_promotions_total{dataset="transactions",result="rejected"}"#)).await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
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
    let (refused, events) = support::event_appears(&s.client, &s.ns.name, "tx-ghost-promo", |e| {
        e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("GateRefused")
    })
    .await;
    assert!(refused, "{:?}", reasons(events));
    assert!(latest(&s.lake()).is_none());
    assert_eq!(
        op.metric(&s.series(r#"silverline_promotions_total{dataset="transactions",result="failed"}"#)).await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
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
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
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
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
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
    let (requested, events) =
        support::event_appears(&s.client, &s.ns.name, "tx-apr", |e| e.reason.as_deref() == Some("PromotionRequested"))
            .await;
    assert!(requested, "{:?}", reasons(events));

    approve(&s, "tx-apr-promo").await;
    let done = finished_promotion(&s, "tx-apr-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    // The operator names itself as creator (as the approval policy requires of every creator): its ServiceAccount.
    let operator = format!("system:serviceaccount:{}:silverline-operator", s.ns.name);
    assert_eq!(status.created_by.as_deref(), Some(operator.as_str()));
    assert_eq!(latest(&s.lake()).expect("_LATEST.json")["mode"], "ReplacePartitions");
    assert!(!op.logs().contains("forbidden"), "the operator was refused something:\n{}", op.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_promotion_on_an_s3_lake_is_previewed_read_only_and_written_by_the_job() {
    let s = Scenario::new("promo-s3").await;
    let s3 = support::S3Server::start().await;
    // The promote Job writes with the Dataset's credentials Secret; the operator only reads, with its own identity.
    let op = s.s3_dataset_and_read_only_operator(&s3).await;
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

/// Every file under `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The directory of one run's silver files: `silver/transactions/schema_v=v1/run_id={run_id}`.
fn run_dir(lake: &Path, run_id: &str) -> PathBuf {
    lake.join("silver/transactions/schema_v=v1").join(format!("run_id={run_id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_promote_job_killed_after_the_pointer_write_with_the_operator_restarted_completes_exactly_once() {
    let s = Scenario::new("crash").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let mut first = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-jun", &first).await;
    // The first promote Job's worker aborts right after it replaced `_LATEST.json`: before `current/`, its
    // manifest and the audit record. It is held until the operator is gone.
    let release = Arc::new(tokio::sync::Notify::new());
    let crash = vec![("SILVERLINE_PROMOTE_CRASH_AFTER".to_owned(), "pointer".to_owned())];
    s.kubelet.inject("tx-jun-promo-p1", support::kubelet::Fault::Env { vars: crash, hold: Some(release.clone()) });
    let created = create_promotion(&s, &promotion("tx-jun-promo", &[&run_id], None)).await;
    approve(&s, "tx-jun-promo").await;

    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually("Promoting, the pod of tx-jun-promo-p1 running", Duration::from_secs(30), || async {
        let p = api.get("tx-jun-promo").await.ok()?;
        (p.phase() == Some(PromotionPhase::Promoting)).then_some(())?;
        let selector = ListParams::default().labels("batch.kubernetes.io/job-name=tx-jun-promo-p1");
        let list = pods.list(&selector).await.ok()?;
        list.items
            .iter()
            .any(|pod| pod.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Running"))
            .then_some(())
    })
    .await;
    first.kill().await;

    // With no operator running, the worker moves the pointer and dies (SIGABRT): version 1 is current by the
    // pointer, but `current/` lags and nothing is audited yet.
    release.notify_one();
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually("the Job tx-jun-promo-p1 to fail with the operator down", Duration::from_secs(60), || async {
        let job = jobs.get("tx-jun-promo-p1").await.ok()?;
        (job.status?.failed == Some(1)).then_some(())
    })
    .await;
    let lake = s.lake();
    let dataset_dir = lake.join("silver/transactions");
    let pointer =
        latest(&lake).unwrap_or_else(|| panic!("the crashed worker wrote _LATEST.json\n{}", s.kubelet.logs()));
    assert_eq!(pointer["version"], 1);
    assert_eq!(pointer["promotion"]["uid"], created.uid().expect("uid").as_str());
    assert!(!dataset_dir.join("current/_MANIFEST.json").exists(), "the worker died before current/ was written");
    assert!(audit_records(&lake).is_empty(), "the worker died before the audit record");
    assert_eq!(api.get("tx-jun-promo").await.expect("promotion").phase(), Some(PromotionPhase::Promoting));

    let second = s.operator("replica-b").await;
    let done = finished_promotion(&s, "tx-jun-promo", &second).await;
    let status = done.status.expect("status");
    let diagnostics = || s.diagnostics(&[&first, &second]);
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", diagnostics());
    assert_eq!((status.version, status.previous_version), (Some(1), None), "{status:?}");
    // The operator only reads the lake: the catch-up is a second promote Job, a repeat of the same Promotion.
    assert_eq!((status.attempts, status.job_name.as_deref()), (2, Some("tx-jun-promo-p2")), "{status:?}");

    // Exactly one new version.
    let pointer = latest(&lake).expect("_LATEST.json");
    assert_eq!(pointer["version"], 1, "{pointer}");
    assert!(pointer["previous_version"].is_null(), "{pointer}");
    assert_eq!(pointer["runs"], serde_json::json!([run_id]));
    assert_eq!(pointer["manifest"], "silver/transactions/_manifests/1.json");
    assert_eq!(files_under(&dataset_dir.join("_manifests")), BTreeSet::from(["1.json".to_owned()]));
    let records = audit_records(&lake);
    let promoted: Vec<&serde_json::Value> = records.iter().filter(|r| r["result"] == "promoted").collect();
    assert_eq!(promoted.len(), 1, "one promoted audit record: {records:?}");
    assert_eq!(records.len(), 1, "and nothing else audited: {records:?}");
    assert_eq!(promoted[0]["version_after"], 1);
    assert_eq!(promoted[0]["promotion"]["uid"], created.uid().expect("uid").as_str());
    assert_eq!(promoted[0]["approved_by"], "jane");

    // current/_MANIFEST.json is manifest 1, byte for byte, and current/ holds exactly the run's files.
    let manifest_1 = std::fs::read(dataset_dir.join("_manifests/1.json")).expect("manifest 1");
    let current_manifest = std::fs::read(dataset_dir.join("current/_MANIFEST.json")).expect("current/_MANIFEST.json");
    assert_eq!(String::from_utf8_lossy(&current_manifest), String::from_utf8_lossy(&manifest_1));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_1).expect("manifest JSON");
    assert_eq!(manifest["version"], 1);
    let run_files: BTreeSet<String> =
        files_under(&run_dir(&lake, &run_id)).into_iter().filter(|f| f.ends_with(".parquet")).collect();
    assert!(!run_files.is_empty(), "the run wrote parquet files");
    let entries = manifest["files"].as_array().expect("files");
    let keys: BTreeSet<String> = entries.iter().map(|f| f["key"].as_str().expect("key").to_owned()).collect();
    let run_prefix = format!("silver/transactions/schema_v=v1/run_id={run_id}/");
    let expected_keys: BTreeSet<String> = run_files.iter().map(|f| format!("{run_prefix}{f}")).collect();
    assert_eq!(keys, expected_keys, "manifest 1 lists exactly the run's files");
    assert!(entries.iter().all(|f| f["run_id"] == run_id.as_str()));
    assert_eq!(manifest["totals"]["files"], run_files.len());
    // `current/year=YYYY/month=MM/{run_id}-part-NNNNN.parquet`, each a copy of the run's file.
    let expected_current: BTreeSet<String> = run_files
        .iter()
        .map(|f| {
            let (partition, part) = f.rsplit_once('/').expect("year=/month=/part");
            format!("{partition}/{run_id}-{part}")
        })
        .chain(["_MANIFEST.json".to_owned()])
        .collect();
    // Hidden names are the local lake's lock files of its conditional writes (docs/lake.md), which prefix readers
    // skip, as they skip `_`/`.` names.
    let current: BTreeSet<String> = files_under(&dataset_dir.join("current"))
        .into_iter()
        .filter(|f| !f.rsplit('/').next().is_some_and(|name| name.starts_with('.')))
        .collect();
    assert_eq!(current, expected_current, "current/ holds exactly the run's files");
    for f in &run_files {
        let (partition, part) = f.rsplit_once('/').expect("year=/month=/part");
        let copy = std::fs::read(dataset_dir.join("current").join(partition).join(format!("{run_id}-{part}")));
        let original = std::fs::read(run_dir(&lake, &run_id).join(f));
        assert_eq!(copy.expect("copy"), original.expect("original"), "{f}");
    }

    let (promoted, events) =
        support::event_appears(&s.client, &s.ns.name, "tx-jun-promo", |e| e.reason.as_deref() == Some("Promoted"))
            .await;
    assert!(promoted, "{:?}", reasons(events));
    assert_eq!(
        second.metric(&s.series(r#"silverline_promotions_total{dataset="transactions",result="promoted"}"#)).await,
        Some(1.0)
    );
    assert_eq!(
        jobs.list(&ListParams::default().labels("etl.silverline.dev/promotion=tx-jun-promo"))
            .await
            .expect("jobs")
            .items
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_quality_failed_run_is_refused_by_the_success_marker_check_with_a_warning() {
    let s = Scenario::new("qfail").await;
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.quality.max_quarantine_rate = 0.0001;
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    let op = s.operator("replica-a").await;
    // Five rows in a currency the contract does not allow: quarantined, above the tiny threshold → exit 5.
    let mut csv = support::TRANSACTIONS_CSV.to_owned();
    for i in 0..5 {
        csv.push_str(&format!("TX99999999{i:02},C100000,10.00,XXX,2024-01-05T00:00:00Z\n"));
    }
    let input = s.input("tx-bad.csv", &csv);
    create_run(&s.client, &s.ns.name, "tx-bad", &input).await;
    let run = finished(&s.client, &s.ns.name, "tx-bad", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::QualityGateFailed), "{}", s.diagnostics(&[&op]));
    let run_id = run.status.and_then(|st| st.run_id).expect("run id");
    let dir = run_dir(&s.lake(), &run_id);
    assert!(dir.join("_QUALITY_REPORT.json").exists(), "{:?}", files_under(&dir));
    assert!(!dir.join("_SUCCESS").exists());

    create_promotion(&s, &promotion("tx-bad-promo", &[&run_id], None)).await;
    // The preview already says what the gate will refuse.
    eventually("the preview naming success_marker", Duration::from_secs(30), || async {
        let p: Promotion = Api::namespaced(s.client.clone(), &s.ns.name).get("tx-bad-promo").await.ok()?;
        let st = p.status?;
        st.failed_checks.iter().any(|c| c.name == "success_marker").then_some(())
    })
    .await;
    approve(&s, "tx-bad-promo").await;

    let done = finished_promotion(&s, "tx-bad-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Failed), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.version, None);
    let check = status.failed_checks.iter().find(|c| c.name == "success_marker");
    let check = check.unwrap_or_else(|| panic!("no success_marker in {:?}", status.failed_checks));
    assert!(check.message.contains(&run_id), "{}", check.message);
    assert!(check.message.contains("failed its quality gate"), "{}", check.message);
    assert!(check.message.contains("_QUALITY_REPORT.json"), "{}", check.message);
    let promoted = status.conditions.iter().find(|c| c.type_ == "Promoted").expect("Promoted condition");
    assert_eq!((promoted.status.as_str(), promoted.reason.as_str()), ("False", "GateRefused"));
    assert!(promoted.message.contains("success_marker"), "{}", promoted.message);
    let gate_refused = |e: &k8s_openapi::api::core::v1::Event| {
        e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("GateRefused")
    };
    let (_, events) = support::event_appears(&s.client, &s.ns.name, "tx-bad-promo", gate_refused).await;
    let warning =
        events.iter().find(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("GateRefused"));
    let warning = warning.unwrap_or_else(|| panic!("no Warning GateRefused in {:?}", reasons(events.clone())));
    assert!(warning.message.as_deref().is_some_and(|m| m.contains("success_marker")), "{:?}", warning.message);

    // The refusal is audited; nothing moved.
    let records = audit_records(&s.lake());
    let refused: Vec<&serde_json::Value> = records.iter().filter(|r| r["result"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{records:?}");
    let checks = refused[0]["failed_checks"].as_array().expect("failed_checks");
    assert!(checks.iter().any(|c| c["check"] == "success_marker"), "{checks:?}");
    assert!(latest(&s.lake()).is_none(), "a refused promotion moves nothing");
    assert!(!s.lake().join("silver/transactions/current").exists());
    assert_eq!(
        op.metric(&s.series(r#"silverline_promotions_total{dataset="transactions",result="failed"}"#)).await,
        Some(1.0)
    );
}

/// `Ready`'s reason and message once they satisfy `wanted`.
async fn ready_when(s: &Scenario, name: &str, what: &str, wanted: impl Fn(&str, &str) -> bool) -> String {
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually(what, Duration::from_secs(40), || async {
        let status = api.get(name).await.ok()?.status?;
        let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        wanted(&c.reason, &c.message).then(|| c.message.clone())
    })
    .await
}

async fn warned(s: &Scenario, name: &str, reason: &str) -> bool {
    support::warned(&s.client, &s.ns.name, name, reason).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_configmap_planted_under_a_promotions_contract_name_is_never_mounted() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let s = Scenario::new("promo-plant").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-plant", &op).await;
    let created = create_promotion(&s, &promotion("tx-plant-promo", &[&run_id], None)).await;
    in_phase(&s, "tx-plant-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;

    // Someone who may create ConfigMaps but not approve plants the Promotion's contract before it is launched:
    // another manifest (here one that names another lake), even claiming the Promotion as its owner.
    let mut planted = transactions_dataset(&s.dir.path().join("elsewhere"), 3);
    planted.spec.quality.max_quarantine_rate = 1.0;
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "tx-plant-promo-contract",
            "ownerReferences": [{"apiVersion": "etl.silverline.dev/v1alpha1", "kind": "Promotion",
                "name": "tx-plant-promo", "uid": created.uid().expect("uid"), "controller": true}],
        },
        "data": {"dataset.yaml": serde_yaml::to_string(&planted).expect("yaml")},
    }))
    .expect("a ConfigMap");
    config_maps.create(&PostParams::default(), &cm).await.expect("plant the ConfigMap");

    approve(&s, "tx-plant-promo").await;
    let message =
        ready_when(&s, "tx-plant-promo", "Ready=False LaunchFailed", |reason, _| reason == "LaunchFailed").await;
    assert!(
        message.contains("tx-plant-promo-contract") && message.contains("another manifest"),
        "{message}\n{}",
        s.diagnostics(&[&op])
    );
    assert!(warned(&s, "tx-plant-promo", "LaunchFailed").await, "a Warning Event says it");
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    assert!(jobs.get_opt("tx-plant-promo-p1").await.expect("read Job").is_none(), "no Job mounts it");
    assert!(latest(&s.lake()).is_none(), "nothing moved");

    // Removed: the next launch makes the Promotion's own contract and promotes the reviewed run.
    config_maps.delete("tx-plant-promo-contract", &Default::default()).await.expect("delete the planted ConfigMap");
    let done = finished_promotion(&s, "tx-plant-promo", &op).await;
    assert_eq!(done.phase(), Some(PromotionPhase::Promoted), "{:?}\n{}", done.status, s.diagnostics(&[&op]));
    assert_eq!(latest(&s.lake()).expect("_LATEST.json")["runs"][0], run_id.as_str());
    let own = config_maps.get("tx-plant-promo-contract").await.expect("the Promotion's contract");
    let frozen = done.status.and_then(|st| st.contract_hash).expect("status.contractHash");
    let text = own.data.and_then(|d| d.get("dataset.yaml").cloned()).expect("manifest");
    assert_eq!(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())), frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_promote_job_whose_pod_cannot_start_is_said_on_the_promotion_until_it_can() {
    let s = Scenario::new("promo-nosecret").await;
    let (secrets, secret) = dataset_with_its_secret(&s).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-ns", &op).await;

    // The Secret is gone by the time the run is approved: the promote Job's pod cannot start.
    secrets.delete("lake-creds", &Default::default()).await.expect("delete the Secret");
    create_promotion(&s, &promotion("tx-ns-promo", &[&run_id], None)).await;
    approve(&s, "tx-ns-promo").await;
    let message = ready_when(&s, "tx-ns-promo", "Ready names the missing Secret", |reason, _| {
        reason == "CredentialsSecretNotFound"
    })
    .await;
    assert!(message.contains("Secret lake-creds") && message.contains("tx-ns-promo-p1"), "{message}");
    assert!(warned(&s, "tx-ns-promo", "CredentialsSecretNotFound").await, "a Warning Event says it");
    // As for a run's worker pods, the Dataset says it too, naming the Secret and whose pod waits.
    let missing = support::credentials_condition(&s.client, &s.ns.name, "transactions", "False", None).await;
    assert_eq!(missing.reason, "SecretNotFound", "{missing:?}");
    assert!(
        missing.message.contains("Secret lake-creds") && missing.message.contains("Promotion tx-ns-promo"),
        "{missing:?}"
    );
    assert_eq!(
        in_phase(&s, "tx-ns-promo", PromotionPhase::Promoting, Duration::from_secs(1))
            .await
            .status
            .map(|st| st.attempts),
        Some(1)
    );

    // The Secret is back: the same Job's pod starts and the Promotion completes; Ready said it runs again.
    secrets.create(&Default::default(), &secret).await.expect("create the Secret again");
    let done = finished_promotion(&s, "tx-ns-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts, 1, "the same Job, once its pod could start");
    let found = support::credentials_condition(&s.client, &s.ns.name, "transactions", "True", None).await;
    assert!(found.reason == "SecretFound" && found.message.contains("Promotion tx-ns-promo"), "{found:?}");
}

/// Removes annotations of a Promotion (a merge patch with `null`).
async fn remove_annotations(s: &Scenario, name: &str, keys: &[&str]) {
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let map: serde_json::Map<String, serde_json::Value> =
        keys.iter().map(|k| ((*k).to_owned(), serde_json::Value::Null)).collect();
    let patch = serde_json::json!({"metadata": {"annotations": map}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("remove annotations");
}

/// How many times Events of `reason` were said about `object` (a series counts each of its occurrences).
async fn said(s: &Scenario, object: &str, reason: &str) -> i32 {
    support::events(&s.client, &s.ns.name, object)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.and_then(|series| series.count).or(e.count).unwrap_or(1).max(1))
        .sum()
}

async fn condition_of(s: &Scenario, name: &str, type_: &str) -> Option<(String, String, String)> {
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let status = api.get(name).await.ok()?.status?;
    let c = status.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

/// A Dataset whose credentials Secret `lake-creds` does not exist: promote Jobs wait for it (their pods never
/// start).
async fn dataset_without_its_secret(s: &Scenario) {
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.storage.credentials_secret = Some(silverline_crds::SecretKeyRef { name: "lake-creds".into() });
    create_dataset(&s.client, &s.ns.name, &dataset).await;
}

/// The Dataset with its credentials Secret `lake-creds`, which exists (a test deletes it to stop a pod).
async fn dataset_with_its_secret(s: &Scenario) -> (Api<Secret>, Secret) {
    dataset_without_its_secret(s).await;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns.name);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lake-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    }))
    .expect("secret");
    secrets.create(&Default::default(), &secret).await.expect("create the Secret");
    (secrets, secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_withdrawal_or_rejection_while_the_promote_pod_cannot_start_wins_and_nothing_moves() {
    let s = Scenario::new("promo-withdraw").await;
    let (secrets, secret) = dataset_with_its_secret(&s).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-wd", &op).await;
    secrets.delete("lake-creds", &Default::default()).await.expect("delete the Secret");
    create_promotion(&s, &promotion("tx-wd-promo", &[&run_id], None)).await;
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);

    // Approved: the promote Job's pod waits for the Secret. The approval is withdrawn: the Job is deleted (its pod
    // never started) and the Promotion awaits approval again.
    approve(&s, "tx-wd-promo").await;
    ready_when(&s, "tx-wd-promo", "p1's pod waits for the Secret", |reason, message| {
        reason == "CredentialsSecretNotFound" && message.contains("tx-wd-promo-p1")
    })
    .await;
    remove_annotations(&s, "tx-wd-promo", &[ANNOTATION_APPROVED_BY, ANNOTATION_APPROVAL_REASON]).await;
    let back = in_phase(&s, "tx-wd-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(40)).await;
    assert_eq!(back.status.as_ref().and_then(|st| st.approved_by.clone()), None, "{:?}", back.status);
    eventually("Job tx-wd-promo-p1 deleted", Duration::from_secs(90), || async {
        jobs.get_opt("tx-wd-promo-p1").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        support::event_appears(&s.client, &s.ns.name, "tx-wd-promo", |e| e.reason.as_deref()
            == Some("ApprovalWithdrawn"))
        .await
        .0,
        "an Event says the approval was withdrawn"
    );

    // Approved again: a new Job (p2), waiting for the Secret again; then rejected: it is deleted and the
    // Promotion ends Rejected, with no new attempt.
    approve(&s, "tx-wd-promo").await;
    ready_when(&s, "tx-wd-promo", "p2's pod waits for the Secret", |reason, message| {
        reason == "CredentialsSecretNotFound" && message.contains("tx-wd-promo-p2")
    })
    .await;
    annotate(&s, "tx-wd-promo", &[(ANNOTATION_REJECTED_BY, "bob"), (ANNOTATION_REJECTION_REASON, "wrong month")]).await;
    let done = finished_promotion(&s, "tx-wd-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Rejected), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.rejected_by.as_deref(), Some("bob"));
    assert_eq!(status.attempts, 2, "{status:?}");
    eventually("Job tx-wd-promo-p2 deleted", Duration::from_secs(90), || async {
        jobs.get_opt("tx-wd-promo-p2").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        support::event_appears(&s.client, &s.ns.name, "tx-wd-promo", |e| e.reason.as_deref() == Some("Rejected"))
            .await
            .0,
        "an Event says it is rejected"
    );

    // The Secret is back: the rejection is recorded; nothing was ever promoted.
    secrets.create(&Default::default(), &secret).await.expect("create the Secret again");
    let records = eventually("the rejection's audit record", Duration::from_secs(60), || async {
        let records = audit_records(&s.lake());
        records.iter().any(|r| r["result"] == "rejected").then_some(records)
    })
    .await;
    assert!(records.iter().all(|r| r["result"] == "rejected"), "{records:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(latest(&s.lake()).is_none(), "nothing moved");
    let names: Vec<String> = jobs
        .list(&ListParams::default().labels("etl.silverline.dev/promotion=tx-wd-promo"))
        .await
        .expect("jobs")
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(names, ["tx-wd-promo-reject"], "no promote Job is left or launched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn an_approval_by_the_creator_is_refused_until_another_person_approves() {
    let s = Scenario::new("promo-self").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    // Created by alice (`requested-by`: no approval policy here), approved by alice.
    create_promotion(&s, &promotion("tx-self-promo", &["20240101T000000Z-abc-a1"], None)).await;
    annotate(&s, "tx-self-promo", &[(ANNOTATION_APPROVED_BY, "alice"), (ANNOTATION_APPROVAL_REASON, "mine")]).await;
    let approved = eventually("Approved=False SelfApprovalRefused", Duration::from_secs(30), || async {
        let c = condition_of(&s, "tx-self-promo", "Approved").await?;
        (c.1 == "SelfApprovalRefused").then_some(c)
    })
    .await;
    assert_eq!(approved.0, "False");
    assert!(approved.2.contains("alice"), "{}", approved.2);
    assert!(warned(&s, "tx-self-promo", "SelfApprovalRefused").await, "a Warning Event says it");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let waiting = api.get("tx-self-promo").await.expect("promotion");
    assert_eq!(waiting.phase(), Some(PromotionPhase::AwaitingApproval), "{:?}", waiting.status);
    assert_eq!(waiting.status.as_ref().and_then(|st| st.approved_by.clone()), None);
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    assert!(jobs.get_opt("tx-self-promo-p1").await.expect("read Job").is_none(), "no promote Job");
    assert_eq!(said(&s, "tx-self-promo", "SelfApprovalRefused").await, 1, "said once");

    // Another person approves: it goes on.
    approve(&s, "tx-self-promo").await;
    let on = eventually("approved by jane", Duration::from_secs(30), || async {
        let p = api.get("tx-self-promo").await.ok()?;
        (p.phase() != Some(PromotionPhase::AwaitingApproval)).then_some(p)
    })
    .await;
    let status = on.status.expect("status");
    assert_eq!(status.approved_by.as_deref(), Some("jane"), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.job_name.as_deref(), Some("tx-self-promo-p1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_lost_contract_fails_the_promotion_and_frees_its_dataset() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use silverline_crds::Dataset;
    let s = Scenario::new("promo-lost").await;
    dataset_without_its_secret(&s).await;
    let op = s.operator("replica-a").await;
    create_promotion(&s, &promotion("tx-lost-promo", &["20240101T000000Z-abc-a1"], None)).await;
    approve(&s, "tx-lost-promo").await;
    ready_when(&s, "tx-lost-promo", "p1's pod waits for the Secret", |reason, _| reason == "CredentialsSecretNotFound")
        .await;

    // The Dataset changes, the contract ConfigMap and the Job are removed: the frozen contract cannot be made again.
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let patch = serde_json::json!({"spec": {"quality": {"maxQuarantineRate": 0.5}}});
    datasets.patch("transactions", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("change the Dataset");
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    config_maps.delete("tx-lost-promo-contract", &Default::default()).await.expect("delete the contract");
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    jobs.delete("tx-lost-promo-p1", &kube::api::DeleteParams::background()).await.expect("delete the Job");

    let done = finished_promotion(&s, "tx-lost-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Failed), "{status:?}\n{}", s.diagnostics(&[&op]));
    let (state, reason, message) = condition_of(&s, "tx-lost-promo", "Promoted").await.expect("Promoted");
    assert_eq!((state.as_str(), reason.as_str()), ("False", "ContractLost"));
    assert!(message.contains("tx-lost-promo-contract"), "{message}");
    assert!(warned(&s, "tx-lost-promo", "ContractLost").await, "a Warning Event says it");

    // The dataset is free: another approved Promotion of it starts.
    create_promotion(&s, &promotion("tx-next-promo", &["20240101T000000Z-abc-a1"], None)).await;
    approve(&s, "tx-next-promo").await;
    in_phase(&s, "tx-next-promo", PromotionPhase::Promoting, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_reject_job_that_fails_transiently_is_retried_until_the_rejection_is_recorded() {
    let s = Scenario::new("promo-rejretry").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-rr", &op).await;
    s.kubelet.inject("tx-rr-promo-reject", support::kubelet::Fault::Exit(75));
    create_promotion(&s, &promotion("tx-rr-promo", &[&run_id], None)).await;
    in_phase(&s, "tx-rr-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;
    annotate(&s, "tx-rr-promo", &[(ANNOTATION_REJECTED_BY, "bob"), (ANNOTATION_REJECTION_REASON, "wrong month")]).await;

    let recorded = eventually("Promoted=False Rejected (recorded)", Duration::from_secs(90), || async {
        let c = condition_of(&s, "tx-rr-promo", "Promoted").await?;
        (c.1 != "RejectionPending").then_some(c)
    })
    .await;
    assert_eq!(recorded.1, "Rejected", "{recorded:?}\n{}", s.diagnostics(&[&op]));
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let status = api.get("tx-rr-promo").await.expect("promotion").status.expect("status");
    assert_eq!(status.job_name.as_deref(), Some("tx-rr-promo-r2"), "{status:?}");
    assert!(warned(&s, "tx-rr-promo", "RejectRetrying").await, "a Warning Event says it is retried");
    let records = audit_records(&s.lake());
    assert!(records.iter().any(|r| r["result"] == "rejected" && r["rejected_by"] == "bob"), "{records:?}");
    assert!(latest(&s.lake()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_rejection_whose_job_cannot_be_launched_is_still_said_and_counted() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let s = Scenario::new("promo-rejlaunch").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    // With only its published RBAC: the status written again after the failed launch needs nothing more.
    let kubeconfig = s.operator_service_account().await;
    let op = support::Operator::start(support::OperatorOptions {
        namespace: &s.ns.name,
        identity: "replica-a",
        log_dir: s.dir.path(),
        kubeconfig: Some(&kubeconfig),
        env: vec![],
    })
    .await;
    create_promotion(&s, &promotion("tx-rl-promo", &["20240101T000000Z-abc-a1"], None)).await;
    in_phase(&s, "tx-rl-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;
    // A ConfigMap under the contract's name that is not the Promotion's: the reject Job cannot be launched.
    let config_maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tx-rl-promo-contract"}, "data": {"dataset.yaml": "planted"},
    }))
    .expect("a ConfigMap");
    config_maps.create(&PostParams::default(), &cm).await.expect("plant the ConfigMap");

    annotate(&s, "tx-rl-promo", &[(ANNOTATION_REJECTED_BY, "bob"), (ANNOTATION_REJECTION_REASON, "no")]).await;
    in_phase(&s, "tx-rl-promo", PromotionPhase::Rejected, Duration::from_secs(30)).await;
    ready_when(&s, "tx-rl-promo", "Ready=False LaunchFailed", |reason, _| reason == "LaunchFailed").await;
    eventually("the Rejected Event", Duration::from_secs(20), || async {
        (said(&s, "tx-rl-promo", "Rejected").await >= 1).then_some(())
    })
    .await;
    eventually("promotions_total{result=rejected} 1", Duration::from_secs(20), || async {
        let n =
            op.metric(&s.series(r#"silverline_promotions_total{dataset="transactions",result="rejected"}"#)).await?;
        (n == 1.0).then_some(())
    })
    .await;
    assert!(!op.logs().contains("forbidden"), "the operator was refused something:\n{}", op.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn an_approved_promotion_waiting_for_another_writes_nothing_and_says_it_once() {
    let s = Scenario::new("promo-steady").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    // The first one's promote Job is held running: the second waits for it.
    let release = Arc::new(tokio::sync::Notify::new());
    s.kubelet.inject("tx-first-promo-p1", support::kubelet::Fault::Hold(release.clone()));
    for name in ["tx-first-promo", "tx-second-promo"] {
        create_promotion(&s, &promotion(name, &["20240101T000000Z-abc-a1"], None)).await;
        in_phase(&s, name, PromotionPhase::AwaitingApproval, Duration::from_secs(30)).await;
    }
    approve(&s, "tx-first-promo").await;
    in_phase(&s, "tx-first-promo", PromotionPhase::Promoting, Duration::from_secs(30)).await;
    approve(&s, "tx-second-promo").await;
    ready_when(&s, "tx-second-promo", "WaitingForPromotion", |reason, _| reason == "WaitingForPromotion").await;
    // Settled (the approval's own write done), then a steady wait: no write, no Event, for several polls (2 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let before = api.get("tx-second-promo").await.expect("promotion");
    // Its Event follows the status write seen above.
    let events_before = eventually("the wait said", Duration::from_secs(10), || async {
        let n = said(&s, "tx-second-promo", "WaitingForPromotion").await;
        (n >= 1).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = api.get("tx-second-promo").await.expect("promotion");
    assert_eq!(after.phase(), Some(PromotionPhase::AwaitingApproval));
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version,
        "a steady wait writes nothing: {:?}\n{}",
        after.status,
        s.diagnostics(&[&op])
    );
    assert_eq!(events_before, 1, "the wait is said once");
    assert_eq!(said(&s, "tx-second-promo", "WaitingForPromotion").await, 1, "and not again");
    release.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_dataset_moved_to_another_lake_while_promoting_is_read_where_its_job_wrote() {
    let s = Scenario::new("promo-moved").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-mv", &op).await;
    // The promote Job holds until the Dataset names another lake, then promotes in the lake it was approved for.
    let release = Arc::new(tokio::sync::Notify::new());
    s.kubelet.inject("tx-mv-promo-p1", support::kubelet::Fault::Hold(release.clone()));
    create_promotion(&s, &promotion("tx-mv-promo", &[&run_id], None)).await;
    approve(&s, "tx-mv-promo").await;
    in_phase(&s, "tx-mv-promo", PromotionPhase::Promoting, Duration::from_secs(30)).await;
    let elsewhere = s.dir.path().join("another-lake");
    let datasets: Api<silverline_crds::Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let moved = serde_json::json!({"spec": {"storage": {"lakeUri": format!("file://{}", elsewhere.display())}}});
    datasets.patch("transactions", &PatchParams::default(), &Patch::Merge(&moved)).await.expect("move the lake");
    release.notify_one();

    let done = finished_promotion(&s, "tx-mv-promo", &op).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(PromotionPhase::Promoted), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(latest(&s.lake()).expect("_LATEST.json in the frozen contract's lake")["runs"][0], run_id.as_str());
    assert!(latest(&elsewhere).is_none(), "nothing was written to the Dataset's new lake");
}

/// A Dataset's `Valid` condition (reason, message) once its status is `wanted`.
async fn valid_of(s: &Scenario, name: &str, wanted: &str) -> (String, String) {
    let datasets: Api<silverline_crds::Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually(&format!("Dataset {name} Valid={wanted}"), Duration::from_secs(30), || async {
        let c = datasets.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Valid")?;
        (c.status == wanted).then_some((c.reason, c.message))
    })
    .await
}

/// The operator's lake policy (`--allowed-lakes`, `--allowed-endpoints`): a Dataset whose lake is not granted to its
/// namespace — granted to another namespace only — is `Valid=False LakeNotAllowed` with one Warning Event, its run
/// waits with no Job, its Promotion says why and launches nothing, and nothing is written to the lake; a Dataset
/// naming an endpoint that is not granted is refused the same way. Granted (the operator restarted with the
/// grant), the run goes on to succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_lake_the_operator_does_not_allow_in_the_namespace_is_said_and_holds_runs_and_promotions_until_granted() {
    let s = Scenario::new("lake-policy").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let mut elsewhere = transactions_dataset(&s.lake(), 3);
    elsewhere.metadata.name = Some("metadata-endpoint".into());
    elsewhere.spec.storage.lake_uri = "s3://lake/x".into();
    elsewhere.spec.storage.endpoint = Some("http://169.254.169.254".into());
    create_dataset(&s.client, &s.ns.name, &elsewhere).await;
    // The scenario's directory is granted to another namespace, and this one has a bucket it does not use.
    let grants = format!("other-team={},{}=s3://lake/x", s.dir.path().display(), s.ns.name);
    let mut op = s.operator_with_env("replica-a", &[("SILVERLINE_ALLOWED_LAKES", &grants)]).await;

    let (reason, message) = valid_of(&s, "transactions", "False").await;
    assert_eq!(reason, "LakeNotAllowed", "{message}");
    let lake = transactions_dataset(&s.lake(), 3).spec.storage.lake_uri;
    assert!(message.contains(&format!("lake {lake} ")) && message.contains(&s.ns.name), "{message}");
    assert!(message.contains("allowed: s3://lake/x") && !message.contains("other-team"), "its own grants: {message}");
    assert!(warned(&s, "transactions", "LakeNotAllowed").await, "a Warning Event on the Dataset");
    let (reason, message) = valid_of(&s, "metadata-endpoint", "False").await;
    assert_eq!(reason, "LakeNotAllowed", "{message}");
    assert!(message.contains("S3 endpoint http://169.254.169.254"), "{message}");

    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-pol", &input).await;
    let runs: Api<silverline_crds::EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let waiting = support::run_waits(
        &runs,
        "tx-pol",
        "LakeNotAllowed",
        Some(EtlRunPhase::Pending),
        "the run to wait for its lake",
        Duration::from_secs(30),
    )
    .await;
    assert!(waiting.contains("Dataset transactions") && waiting.contains(&lake), "{waiting}");
    create_promotion(&s, &promotion("tx-pol-promo", &["20240101T000000Z-abc-a1"], None)).await;
    approve(&s, "tx-pol-promo").await;
    let said = ready_when(&s, "tx-pol-promo", "the Promotion to say its lake is not allowed", |reason, _| {
        reason == "LakeNotAllowed"
    })
    .await;
    assert!(said.contains("Dataset transactions") && said.contains(&lake), "{said}");
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    assert!(jobs.list(&ListParams::default()).await.expect("list Jobs").items.is_empty(), "no Job for either");
    assert_eq!(files_under(&s.lake()), BTreeSet::new(), "nothing written to the lake");

    // Granted: the operator restarted with its default grants (the scenario's directory) goes on.
    assert!(op.terminate().await, "the operator did not stop cleanly:\n{}", s.diagnostics(&[&op]));
    let op = s.operator("replica-a").await;
    valid_of(&s, "transactions", "True").await;
    let run = finished(&s.client, &s.ns.name, "tx-pol", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    ready_when(&s, "tx-pol-promo", "the Promotion to look at its lake", |reason, _| reason != "LakeNotAllowed").await;
    assert_eq!(valid_of(&s, "metadata-endpoint", "False").await.0, "LakeNotAllowed", "still no endpoint granted");
}

/// A Promotion's Jobs write the lake of the contract frozen at its first launch. When that lake is no longer
/// granted (the Dataset moved to a granted lake after a withdrawn approval, the old lake's grant withdrawn), a new
/// approval launches nothing there and reads nothing from it: `Ready=False, LakeNotAllowed` says so, and nothing
/// is written to either lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_promotion_whose_frozen_lake_is_no_longer_allowed_launches_nothing_there() {
    let s = Scenario::new("promo-frozen-lake").await;
    let (secrets, secret) = dataset_with_its_secret(&s).await;
    let mut op = s.operator("replica-a").await;
    let run_id = succeeded_run(&s, "tx-fz", &op).await;
    secrets.delete("lake-creds", &Default::default()).await.expect("delete the Secret");
    create_promotion(&s, &promotion("tx-fz-promo", &[&run_id], None)).await;
    approve(&s, "tx-fz-promo").await;
    ready_when(&s, "tx-fz-promo", "p1's pod waits for the Secret", |reason, message| {
        reason == "CredentialsSecretNotFound" && message.contains("tx-fz-promo-p1")
    })
    .await;
    remove_annotations(&s, "tx-fz-promo", &[ANNOTATION_APPROVED_BY, ANNOTATION_APPROVAL_REASON]).await;
    in_phase(&s, "tx-fz-promo", PromotionPhase::AwaitingApproval, Duration::from_secs(40)).await;
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually("Job tx-fz-promo-p1 deleted", Duration::from_secs(90), || async {
        jobs.get_opt("tx-fz-promo-p1").await.ok()?.is_none().then_some(())
    })
    .await;

    // Only another directory is granted now, and the Dataset moves there.
    assert!(op.terminate().await, "the operator did not stop cleanly:\n{}", s.diagnostics(&[&op]));
    let granted = s.dir.path().join("granted");
    let moved = granted.join("lake");
    let datasets: Api<silverline_crds::Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let patch = serde_json::json!({"spec": {"storage": {"lakeUri": format!("file://{}", moved.display())}}});
    datasets.patch("transactions", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("move the lake");
    let grant = format!("{}={}", s.ns.name, granted.display());
    let op = s.operator_with_env("replica-a", &[("SILVERLINE_ALLOWED_LAKES", &grant)]).await;
    secrets.create(&Default::default(), &secret).await.expect("create the Secret again");
    assert_eq!(valid_of(&s, "transactions", "True").await.0, "ContractValid");

    approve(&s, "tx-fz-promo").await;
    let frozen_lake = transactions_dataset(&s.lake(), 3).spec.storage.lake_uri;
    let said = ready_when(&s, "tx-fz-promo", "the frozen contract's lake refused", |reason, message| {
        reason == "LakeNotAllowed" && message.contains("not one the operator allows")
    })
    .await;
    assert!(said.contains(&frozen_lake), "names the frozen contract's lake: {said}\n{}", s.diagnostics(&[&op]));
    assert!(jobs.get_opt("tx-fz-promo-p2").await.expect("get Job").is_none(), "no Job for the frozen lake");
    assert!(latest(&s.lake()).is_none() && latest(&moved).is_none(), "nothing moved in either lake");
}
