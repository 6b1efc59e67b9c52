//! The EtlRun lifecycle against a real kube-apiserver and kube-controller-manager (Job and garbage-collector
//! controllers), with the operator as a process of its own and the test kubelet running the real worker.

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::{Api, ResourceExt};
use silverline_crds::report::RunReport;
use silverline_crds::{AttemptOutcome, Dataset, EtlRun, EtlRunPhase};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::kubelet::Fault;
use support::{Scenario, create_dataset, create_run, eventually, finished, transactions_dataset};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);
const DRY_RUN: kube::api::PostParams = kube::api::PostParams { dry_run: true, field_manager: None };

fn read_report(path: &Path) -> RunReport {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("a run report")
}

fn run_dir(lake: &Path, run_id: &str) -> std::path::PathBuf {
    lake.join(format!("silver/transactions/schema_v=v1/run_id={run_id}"))
}

async fn jobs_of(s: &Scenario, run: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let selector = format!("etl.silverline.dev/etlrun={run}");
    api.list(&ListParams::default().labels(&selector)).await.expect("list jobs").items
}

/// A valid input of `rows` rows, large enough to take a while.
fn big_input(rows: usize) -> String {
    let mut text = String::from("TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp\n");
    for i in 0..rows {
        text.push_str(&format!(
            "TX{i:010},C{:06},{}.{:02},EUR,2024-0{}-15T10:00:00Z\n",
            i % 999_999,
            i % 5000,
            i % 100,
            1 + i % 9
        ));
    }
    text
}

/// No control plane needed: an "apiserver" on loopback that takes the operator's connections and never answers,
/// as one behind a connection the network dropped. The operator's first request gives up after
/// `--api-timeout-seconds` and it stops saying why, instead of waiting (not ready) forever.
#[test]
fn an_apiserver_that_never_answers_stops_the_operator_at_start_saying_so() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = silent.local_addr().expect("address");
    std::thread::spawn(move || {
        // Keep every connection open, read nothing back: the requests stay unanswered.
        let held: Vec<_> = silent.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: silent, cluster: {{server: 'http://{addr}'}}}}]\n\
         users: [{{name: nobody, user: {{}}}}]\ncontexts: [{{name: silent, context: {{cluster: silent, user: nobody}}}}]\n\
         current-context: silent\n"
    );
    std::fs::write(&kubeconfig, text).expect("kubeconfig");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_silverline-operator"))
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .args(["--worker-image", "ghcr.io/silverline-dev/silverline-worker:test", "--http-addr", "127.0.0.1:0"])
        .args(["--api-timeout-seconds", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start silverline-operator");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the operator still waits for the silent apiserver after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "reaching the Kubernetes API server: ServiceError: the Kubernetes API server did not answer within 1s"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_run_succeeds_with_the_counts_of_its_success_marker_in_status_and_metrics() {
    let s = Scenario::new("happy").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-happy", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-happy", RUN_TIMEOUT).await;
    let status = run.status.clone().expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 1);
    let attempt = &status.attempts[0];
    assert_eq!(
        (attempt.outcome, attempt.exit_code, attempt.job_name.as_str()),
        (Some(AttemptOutcome::Succeeded), Some(0), "tx-happy-a1")
    );
    assert_eq!(status.run_id.as_deref(), Some(attempt.run_id.as_str()));
    assert_eq!(status.observed_generation, run.metadata.generation);

    // The counts in status are those of the _SUCCESS the worker wrote.
    let report = read_report(&run_dir(&s.lake(), &attempt.run_id).join("_SUCCESS"));
    let result = status.result.clone().expect("result");
    assert_eq!(
        (result.input_rows, result.valid_rows, result.quarantined_rows, result.condemned_rows),
        (report.input_rows, report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count)
    );
    assert_eq!(result.input_rows, 3000);
    assert!(result.valid_rows > 0 && result.quarantined_rows > 0, "{result:?}");
    // Every file counted; the first 20 listed (the report at reportUri holds them all).
    assert_eq!(result.file_count, report.files.len() as u64);
    assert_eq!(result.file_bytes, report.files.iter().map(|f| f.bytes).sum::<u64>());
    let first: Vec<silverline_crds::DataFile> =
        report.files.iter().take(silverline_crds::MAX_LISTED_FILES).map(Into::into).collect();
    assert!(report.files.len() > silverline_crds::MAX_LISTED_FILES, "this run writes more files than are listed");
    assert_eq!(result.files, first);
    assert!(result.report_uri.ends_with(&format!("run_id={}/_SUCCESS", attempt.run_id)), "{}", result.report_uri);
    let succeeded = status.conditions.iter().find(|c| c.type_ == "Succeeded").expect("Succeeded condition");
    assert_eq!((succeeded.status.as_str(), succeeded.reason.as_str()), ("True", "SuccessVerified"));

    // The Job as the apiserver holds it: one attempt, no retries inside, fails at once on permanent codes.
    let jobs = jobs_of(&s, "tx-happy").await;
    assert_eq!(jobs.len(), 1);
    let spec = jobs[0].spec.clone().expect("job spec");
    assert_eq!(spec.backoff_limit, Some(0));
    assert!(
        spec.pod_failure_policy.is_some()
            && spec.active_deadline_seconds.is_some()
            && spec.ttl_seconds_after_finished.is_some()
    );
    assert_eq!(jobs[0].owner_references()[0].uid, run.uid().expect("uid"));
    // The contract snapshot the status names is what the pod mounted: immutable, owned by the Dataset.
    let snapshot_name = status.contract_snapshot.clone().expect("the run's contract snapshot");
    let mounted = spec.template.spec.as_ref().and_then(|p| p.volumes.as_ref()).expect("volumes");
    assert_eq!(mounted[0].config_map.as_ref().map(|c| c.name.as_str()), Some(snapshot_name.as_str()));
    let snapshots: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let snapshot = snapshots.get(&snapshot_name).await.expect("contract snapshot");
    assert_eq!(snapshot.immutable, Some(true));
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let owner = datasets.get("transactions").await.expect("Dataset").uid();
    assert_eq!(snapshot.owner_references().iter().map(|o| Some(o.uid.clone())).collect::<Vec<_>>(), [owner]);

    // Freshness on the Dataset, Events on each change, metrics by dataset and result.
    let dataset = eventually("the Dataset's last success", Duration::from_secs(10), || async {
        let ds = datasets.get("transactions").await.ok()?;
        ds.status.filter(|st| st.last_successful_run_id.is_some())
    })
    .await;
    assert_eq!(dataset.last_successful_run_id.as_deref(), Some(attempt.run_id.as_str()));
    let reasons: Vec<String> =
        support::events(&s.client, &s.ns.name, "tx-happy").await.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.contains(&"AttemptStarted".to_owned()) && reasons.contains(&"Succeeded".to_owned()), "{reasons:?}");
    let valid = op.metric(&s.series(r#"silverline_rows_total{dataset="transactions",kind="valid"}"#)).await;
    assert_eq!(valid, Some(report.valid_rows_count as f64));
    assert_eq!(
        op.metric(&s.series(r#"silverline_runs_total{dataset="transactions",result="succeeded"}"#)).await,
        Some(1.0)
    );
    // What only the report holds, through the status's result: the gated rate, attempts and auto-condemnation.
    let result = status.result.clone().expect("result");
    assert_eq!(result.gated_quarantine_rate, Some(report.gated_rate()));
    assert_eq!(result.avg_attempt_count, Some(report.avg_attempt_count));
    assert_eq!(result.auto_condemnation_rate, Some(report.auto_condemnation_rate));
    for (series, value) in [
        (&s.series(r#"silverline_last_gated_quarantine_rate{dataset="transactions"}"#), report.gated_rate()),
        (&s.series(r#"silverline_last_avg_attempts{dataset="transactions"}"#), report.avg_attempt_count),
        (&s.series(r#"silverline_last_auto_condemnation_rate{dataset="transactions"}"#), report.auto_condemnation_rate),
    ] {
        assert_eq!(op.metric(series).await, Some(value), "{series}");
    }
    assert!(
        op.metric(&s.series(r#"silverline_last_success_timestamp_seconds{dataset="transactions"}"#))
            .await
            .is_some_and(|t| t > 1e9)
    );
    assert!(op.get("/healthz").await.is_some_and(|(code, _)| code == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_transient_failure_is_retried_after_a_backoff_under_a_new_run_id() {
    let s = Scenario::new("transient").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    s.kubelet.inject("tx-flaky-a1", Fault::Exit(75));
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-flaky", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-flaky", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    let [first, second] = status.attempts.as_slice() else { panic!("two attempts expected: {:?}", status.attempts) };
    assert_eq!(
        (first.outcome, first.exit_code, first.reason.as_deref()),
        (Some(AttemptOutcome::Failed), Some(75), Some("TransientFailure"))
    );
    assert_eq!(first.retryable, Some(true));
    assert!(first.message.as_deref().is_some_and(|m| m.contains("exit code 75")), "{first:?}");
    assert_eq!(second.outcome, Some(AttemptOutcome::Succeeded));
    assert_ne!(first.run_id, second.run_id);
    assert_eq!(status.run_id.as_deref(), Some(second.run_id.as_str()));
    // The failed attempt's Event announces the backoff (base 1s in these tests) before the next attempt.
    let events = support::events(&s.client, &s.ns.name, "tx-flaky").await;
    let retry =
        events.iter().find(|e| e.reason.as_deref() == Some("TransientFailure")).expect("a TransientFailure Event");
    assert!(retry.message.as_deref().is_some_and(|m| m.contains("retrying in")), "{retry:?}");
    assert_eq!(retry.type_.as_deref(), Some("Warning"));
    assert_eq!(jobs_of(&s, "tx-flaky").await.len(), 2);
    assert!(!run_dir(&s.lake(), &first.run_id).join("_SUCCESS").exists());
    assert_eq!(
        op.metric(&s.series(r#"silverline_retries_total{dataset="transactions",reason="transient_failure"}"#)).await,
        Some(1.0)
    );
}

/// A `ValidatingAdmissionPolicy` (+ binding) in the scenario's namespace refusing `operation` on `resource`
/// of `group` unless `expression` holds, as a quota or a cluster policy would. The apiserver enforces it once its
/// policy informer has both: `until_refused` waits for that.
struct Refusal {
    api: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>,
    bindings: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>,
    name: String,
}

impl Refusal {
    async fn create(s: &Scenario, group: &str, resource: &str, operation: &str, expression: &str) -> Refusal {
        let name = format!("refuse-{}-{}", resource.replace('/', "-"), s.ns.name);
        let policy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [
                    {"apiGroups": [group], "apiVersions": ["*"], "operations": [operation], "resources": [resource]}]},
                "validations": [{"expression": expression, "message": "refused here (test policy)", "reason": "Forbidden"}],
            },
        }))
        .expect("policy");
        let binding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "policyName": name, "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": s.ns.name}}},
            },
        }))
        .expect("binding");
        let refusal = Refusal { api: Api::all(s.client.clone()), bindings: Api::all(s.client.clone()), name };
        refusal.api.create(&Default::default(), &policy).await.expect("create policy");
        refusal.bindings.create(&Default::default(), &binding).await.expect("create binding");
        refusal
    }

    /// Waits until `probe` (a dry-run request the policy refuses) is refused by this policy.
    async fn until_refused<F, Fut, T>(&self, probe: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        eventually("the policy to be enforced", RUN_TIMEOUT, || async {
            match probe().await {
                Err(kube::Error::Api(e)) if e.message.contains("refused here (test policy)") => Some(()),
                _ => None,
            }
        })
        .await;
    }

    async fn lift(self) {
        self.bindings.delete(&self.name, &Default::default()).await.expect("delete binding");
        self.api.delete(&self.name, &Default::default()).await.expect("delete policy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_contract_snapshot_refused_beside_its_job_is_said_and_created_once_it_can_be() {
    let s = Scenario::new("snapshot-refused").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    // An admission policy (as a quota or a cluster policy would) refuses the run's snapshot ConfigMap and nothing
    // else. The snapshot and the Job are created side by side, so the Job exists and its pod waits for it.
    let refusal =
        Refusal::create(&s, "", "configmaps", "CREATE", "!object.metadata.name.startsWith('transactions-contract-')")
            .await;
    let snapshots: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let probe: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "transactions-contract-probe"}})).expect("cm");
    refusal.until_refused(|| snapshots.create(&DRY_RUN, &probe)).await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-refused", &input).await;

    let warning = eventually("a LaunchFailed Event naming the snapshot and the refusal", RUN_TIMEOUT, || async {
        let events = support::events(&s.client, &s.ns.name, "tx-refused").await;
        events.into_iter().find(|e| e.reason.as_deref() == Some("LaunchFailed"))
    })
    .await;
    let note = warning.message.clone().unwrap_or_default();
    assert!(note.contains("creating ConfigMap transactions-contract-") && note.contains("refused here"), "{note}");
    assert!(
        note.ends_with("(403 Forbidden)") && !note.contains("Status {"),
        "the apiserver's message, no dump: {note}"
    );
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    assert!(jobs.get_opt("tx-refused-a1").await.expect("get Job").is_some(), "the Job was created beside it");
    // What the pod waits for is said where users look: the run's condition and a Warning Event.
    let run: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let waiting = eventually("the run's condition naming the refused snapshot", RUN_TIMEOUT, || async {
        let run = run.get("tx-refused").await.ok()?;
        let refused = run.status.as_ref().is_some_and(|st| {
            st.conditions.iter().any(|c| c.type_ == "Progressing" && c.reason == "ContractSnapshotRefused")
        });
        refused.then_some(run)
    })
    .await;
    let status = waiting.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Running), "waits; nothing ran");
    let snapshot_name = status.contract_snapshot.clone().expect("the snapshot the Job mounts is named");
    assert!(snapshot_name.starts_with("transactions-contract-"), "{snapshot_name}");
    let condition = status.conditions.iter().find(|c| c.type_ == "Progressing").expect("Progressing");
    assert!(
        condition.message.contains("Job tx-refused-a1")
            && condition.message.contains(&format!("ConfigMap {snapshot_name} is missing and cannot be created"))
            && condition.message.contains("refused here"),
        "{}",
        condition.message
    );
    let event = eventually("a ContractSnapshotRefused Event", RUN_TIMEOUT, || async {
        let events = support::events(&s.client, &s.ns.name, "tx-refused").await;
        events.into_iter().find(|e| e.reason.as_deref() == Some("ContractSnapshotRefused"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.message.clone().unwrap_or_default().contains("refused here"), "{event:?}");

    // The policy lifted, the snapshot is created and the waiting pod runs the attempt to the end.
    refusal.lift().await;
    let done = finished(&s.client, &s.ns.name, "tx-refused", RUN_TIMEOUT).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 1, "the same attempt, not a retry");
    assert_eq!(status.contract_snapshot.as_deref(), Some(snapshot_name.as_str()));
    let snapshot = snapshots.get(&snapshot_name).await.expect("the snapshot exists");
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let owner = datasets.get("transactions").await.expect("Dataset").uid();
    assert!(snapshot.owner_references().iter().any(|o| Some(&o.uid) == owner.as_ref()), "{snapshot:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_run_launched_by_an_operator_before_shared_snapshots_keeps_its_own_snapshot() {
    use clap::Parser;
    use silverline_operator::job;
    let s = Scenario::new("legacy-snapshot").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    let run = create_run(&s.client, &s.ns.name, "tx-legacy", &input).await;

    // What an operator from before shared snapshots left mid-run: the run's own snapshot `{run}-contract`, owned
    // by the run; attempt 1's Job mounting it (no snapshot annotation); a status naming the attempt, no snapshot.
    let identity = job::RunIdentity::of(&run).expect("identity");
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let dataset = datasets.get("transactions").await.expect("Dataset");
    let legacy = job::legacy_contract_name("tx-legacy");
    let manifest = job::contract_manifest(&dataset).expect("manifest");
    let snapshot = job::contract_config_map(&s.ns.name, "transactions", &legacy, &manifest, identity.owner.clone());
    let snapshots: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    snapshots.create(&Default::default(), &snapshot).await.expect("the legacy snapshot");
    let argv = ["silverline-operator", "--worker-image", "ghcr.io/silverline-dev/silverline-worker:test"];
    let settings =
        silverline_operator::config::Config::try_parse_from(argv).expect("flags").job_settings().expect("settings");
    let started = k8s_openapi::jiff::Timestamp::now();
    let run_id = job::run_id(started, &identity.uid, 1);
    let plan = job::AttemptPlan { attempt: 1, run_id: &run_id, job_name: "tx-legacy-a1", snapshot: &legacy };
    let mut legacy_job = job::worker_job(&run, &identity, &dataset, &plan, &settings).expect("Job");
    legacy_job.metadata.annotations.get_or_insert_default().remove(job::ANNOTATION_CONTRACT_SNAPSHOT);
    if let Some(pod) = legacy_job.spec.as_mut().and_then(|spec| spec.template.spec.as_mut()) {
        pod.service_account_name = Some("default".into());
    }
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    jobs.create(&Default::default(), &legacy_job).await.expect("the legacy Job");
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let at = started.to_string();
    let status = serde_json::json!({"status": {
        "phase": "Running", "runId": run_id, "startedAt": at, "observedGeneration": run.metadata.generation,
        "attempts": [{"attempt": 1, "runId": run_id, "jobName": "tx-legacy-a1", "startedAt": at}],
    }});
    runs.patch_status("tx-legacy", &PatchParams::default(), &Patch::Merge(&status)).await.expect("legacy status");

    let op = s.operator("replica-a").await;
    let done = finished(&s.client, &s.ns.name, "tx-legacy", RUN_TIMEOUT).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 1, "the legacy attempt, adopted: {:?}", status.attempts);
    assert_eq!(status.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(status.contract_snapshot.as_deref(), Some(legacy.as_str()), "the status names the run's own");
    let names: Vec<String> =
        snapshots.list(&Default::default()).await.expect("list").iter().map(|c| c.name_any()).collect();
    assert!(!names.iter().any(|n| n.starts_with("transactions-contract-")), "no shared snapshot was made: {names:?}");
    assert_eq!(jobs_of(&s, "tx-legacy").await.len(), 1, "no second Job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_configmap_holding_another_manifest_under_a_snapshots_name_is_never_mounted() {
    use kube::Resource;
    use silverline_operator::job;
    let s = Scenario::new("snapshot-conflict").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let dataset = datasets.get("transactions").await.expect("Dataset");
    let snapshot = job::ContractSnapshot::of(&dataset).expect("the Dataset's snapshot");
    // Under the very name the Dataset's manifest gives, with the operator's labels and owner: another manifest.
    let owner = dataset.controller_owner_ref(&()).expect("owner");
    let squatter = "apiVersion: etl.silverline.dev/v1alpha1\nkind: Dataset\nmetadata:\n  name: transactions\n";
    let planted = job::contract_config_map(&s.ns.name, "transactions", &snapshot.name, squatter, owner);
    let snapshots: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    snapshots.create(&Default::default(), &planted).await.expect("plant the ConfigMap");
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-conflict", &input).await;

    // The launch fails before its Job: said in the run's condition, nothing mounts the planted ConfigMap.
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let status = eventually("a LaunchFailed condition naming the snapshot", RUN_TIMEOUT, || async {
        let status = runs.get("tx-conflict").await.ok()?.status?;
        let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing")?;
        (progressing.reason == "LaunchFailed").then_some(status)
    })
    .await;
    let message = &status.conditions.iter().find(|c| c.type_ == "Progressing").expect("condition").message;
    assert!(
        message.contains(&snapshot.name) && message.contains("holds another manifest"),
        "{message}\n{}",
        s.diagnostics(&[&op])
    );
    assert_eq!(status.phase, Some(EtlRunPhase::Pending), "{status:?}");
    assert!(status.attempts.is_empty() && status.contract_snapshot.is_none(), "{status:?}");
    assert!(jobs_of(&s, "tx-conflict").await.is_empty(), "no Job mounts the planted ConfigMap");

    // Removed, the run is launched with its own snapshot (the operator tries again within 30 s).
    snapshots.delete(&snapshot.name, &Default::default()).await.expect("remove the planted ConfigMap");
    let done = finished(&s.client, &s.ns.name, "tx-conflict", RUN_TIMEOUT).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.contract_snapshot.as_deref(), Some(snapshot.name.as_str()));
    let stored = snapshots.get(&snapshot.name).await.expect("the snapshot");
    assert_eq!(stored.data.and_then(|d| d.get(job::CONTRACT_KEY).cloned()), Some(snapshot.manifest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn runs_of_one_manifest_share_its_snapshot_and_a_changed_dataset_gets_another() {
    let s = Scenario::new("shared-snapshot").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    let snapshots: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let selector = ListParams::default().labels("app.kubernetes.io/component=contract-snapshot");
    let snapshot_of = |run: &EtlRun| run.status.as_ref().and_then(|st| st.contract_snapshot.clone());

    // Two runs of one manifest: one snapshot, created once.
    for name in ["tx-share-1", "tx-share-2"] {
        create_run(&s.client, &s.ns.name, name, &input).await;
    }
    let first = finished(&s.client, &s.ns.name, "tx-share-1", RUN_TIMEOUT).await;
    let second = finished(&s.client, &s.ns.name, "tx-share-2", RUN_TIMEOUT).await;
    for run in [&first, &second] {
        assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{:?}\n{}", run.status, s.diagnostics(&[&op]));
    }
    let shared = snapshot_of(&first).expect("the first run's snapshot");
    assert_eq!(snapshot_of(&second).as_deref(), Some(shared.as_str()), "the second run shares it");
    let listed = snapshots.list(&selector).await.expect("list snapshots");
    assert_eq!(listed.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), vec![shared.clone()]);
    let text = |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get("dataset.yaml").cloned()).unwrap_or_default();
    let before = text(&listed.items[0]);

    // The Dataset changed: the next run gets a snapshot of its own; the first one is untouched.
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let change = serde_json::json!({"spec": {"maxAttempts": 4}});
    datasets.patch("transactions", &PatchParams::default(), &Patch::Merge(&change)).await.expect("change the Dataset");
    eventually("the changed Dataset to be valid again", Duration::from_secs(20), || async {
        let dataset = datasets.get("transactions").await.ok()?;
        let observed = dataset.status?.observed_generation;
        (observed == dataset.metadata.generation).then_some(())
    })
    .await;
    create_run(&s.client, &s.ns.name, "tx-share-3", &input).await;
    let third = finished(&s.client, &s.ns.name, "tx-share-3", RUN_TIMEOUT).await;
    assert_eq!(third.phase(), Some(EtlRunPhase::Succeeded), "{:?}\n{}", third.status, s.diagnostics(&[&op]));
    let changed = snapshot_of(&third).expect("the third run's snapshot");
    assert_ne!(changed, shared);
    assert!(text(&snapshots.get(&changed).await.expect("the new snapshot")).contains("maxAttempts: 4"));
    assert_eq!(text(&snapshots.get(&shared).await.expect("the first snapshot")), before);

    // Deleting the Dataset deletes its snapshots (they are owned by it).
    datasets.delete("transactions", &Default::default()).await.expect("delete the Dataset");
    // By kube-controller-manager's garbage collector, which learns of a new kind (the CRDs installed for the tests)
    // at its discovery resync and can lag by a minute on a loaded machine.
    eventually("the Dataset's snapshots to be collected", Duration::from_secs(150), || async {
        snapshots.list(&selector).await.ok()?.items.is_empty().then_some(())
    })
    .await;
}

/// Issue #10 item 9: in a burst of new runs the operator creates their Jobs first; the status that records each
/// launch (and its AttemptStarted Event) follows once the burst has passed, at most a few seconds later, with the
/// attempt's start its Job's creation. Retries and outcomes are never held back (lifecycle unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn in_a_burst_of_new_runs_their_jobs_come_first_and_the_statuses_naming_them_follow() {
    const RUNS: usize = 12;
    let s = Scenario::new("burst").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    // Two launches a second make a burst here, so that a dozen runs are one on any machine.
    let op = s.operator_with_env("replica-a", &[("SILVERLINE_BURST_LAUNCHES_PER_SECOND", "2")]).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let jobs_seen = support::first_seen(jobs.clone(), |job: &Job| Some(job.name_any())).await;
    let recorded = |run: &EtlRun| run.status.as_ref().filter(|st| !st.attempts.is_empty()).map(|_| run.name_any());
    let recorded_seen = support::first_seen(runs.clone(), recorded).await;

    let names: Vec<String> = (0..RUNS).map(|i| format!("tx-burst-{i:02}")).collect();
    futures::future::join_all(names.iter().map(|name| create_run(&s.client, &s.ns.name, name, &input))).await;
    eventually("every run's status to name its Job", Duration::from_secs(60), || async {
        (recorded_seen.lock().ok()?.len() >= RUNS).then_some(())
    })
    .await;

    let jobs_seen = jobs_seen.lock().expect("jobs seen").clone();
    let recorded_seen = recorded_seen.lock().expect("runs recorded").clone();
    let mut held = 0;
    for name in &names {
        let job_name = format!("{name}-a1");
        let job =
            jobs.get(&job_name).await.unwrap_or_else(|e| panic!("Job {job_name}: {e}\n{}", s.diagnostics(&[&op])));
        let run = runs.get(name).await.expect("the run");
        let status = run.status.clone().unwrap_or_default();
        assert_eq!(status.attempts.first().map(|a| a.job_name.as_str()), Some(job_name.as_str()), "{name}");
        let (job_seen, status_seen) = (jobs_seen[&job_name], recorded_seen[name]);
        // Which write came first is the apiserver's order; the two watches' arrival instants only measure the wait
        // (two connections: a status written right after its Job may arrive first).
        assert!(
            status_seen.revision > job_seen.revision,
            "{name}: its status naming {job_name} was written (revision {}) before the Job was created ({})",
            status_seen.revision,
            job_seen.revision
        );
        let waited = status_seen.at.saturating_duration_since(job_seen.at);
        // Held at most 5 s after the Job's creation, then a recheck, the write and the watch on a loaded machine.
        assert!(waited < Duration::from_secs(15), "{name}: its launch was recorded {waited:?} after its Job");
        let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0).expect("the Job's creation time");
        let started = status.attempts[0].started_at.as_ref().map(|t| t.0).expect("the attempt's start");
        if waited >= Duration::from_millis(900) {
            held += 1;
            // Recorded by a later reconcile: the attempt started when its Job was created, not when recorded.
            assert_eq!(started, created, "{name}: the attempt's start is its Job's creation");
        }
    }
    for name in &names {
        let started_events = || async {
            let events = support::events(&s.client, &s.ns.name, name).await;
            events.iter().filter(|e| e.reason.as_deref() == Some("AttemptStarted")).count()
        };
        eventually(&format!("{name}'s AttemptStarted Event"), Duration::from_secs(20), || async {
            (started_events().await >= 1).then_some(())
        })
        .await;
        assert_eq!(started_events().await, 1, "{name}: one AttemptStarted Event");
    }
    assert!(held > 0, "no run's launch record waited for the burst to pass\n{}", s.diagnostics(&[&op]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_job_the_apiserver_refuses_is_said_in_status_and_events_and_launched_once_it_can_be() {
    let s = Scenario::new("job-refused").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let refusal = Refusal::create(&s, "batch", "jobs", "CREATE", "object.metadata.name != 'tx-nojob-a1'").await;
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let probe: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tx-nojob-a1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "probe"}]}}},
    }))
    .expect("job");
    refusal.until_refused(|| jobs.create(&DRY_RUN, &probe)).await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-nojob", &input).await;

    // Said in the run's status and condition, and in one Warning Event; no attempt is recorded for a Job that
    // does not exist.
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let status = eventually("a LaunchFailed condition on the run", RUN_TIMEOUT, || async {
        let status = runs.get("tx-nojob").await.ok()?.status?;
        let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing")?;
        (progressing.reason == "LaunchFailed").then_some(status)
    })
    .await;
    assert_eq!(status.phase, Some(EtlRunPhase::Pending), "{status:?}");
    assert!(status.attempts.is_empty() && status.run_id.is_none(), "{status:?}");
    let message = &status.conditions.iter().find(|c| c.type_ == "Progressing").expect("condition").message;
    assert!(
        message.starts_with("attempt 1 of 3 cannot be launched: creating Job tx-nojob-a1: ")
            && message.contains("refused here")
            && message.ends_with("(403 Forbidden)"),
        "{message}"
    );
    let warning = eventually("a LaunchFailed Event", RUN_TIMEOUT, || async {
        let events = support::events(&s.client, &s.ns.name, "tx-nojob").await;
        events.into_iter().find(|e| e.reason.as_deref() == Some("LaunchFailed"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(warning.message.as_deref(), Some(message.as_str()));
    assert!(jobs_of(&s, "tx-nojob").await.is_empty());

    // Allowed again: the attempt is launched by the operator's retry, and runs to the end.
    refusal.lift().await;
    let done = finished(&s.client, &s.ns.name, "tx-nojob", RUN_TIMEOUT).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 1, "the refusal cost no attempt: {:?}", status.attempts);
    assert_eq!(jobs_of(&s, "tx-nojob").await.len(), 1);
    let events = support::events(&s.client, &s.ns.name, "tx-nojob").await;
    let refused = events.iter().filter(|e| e.reason.as_deref() == Some("LaunchFailed")).count();
    assert_eq!(refused, 1, "said once: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_launch_whose_status_write_is_refused_is_adopted_under_its_run_id_never_duplicated() {
    let s = Scenario::new("status-refused").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-adopt", &input).await;
    // The Job is created before the status that names it: refuse that status write, so the launch is left
    // with a Job and no status, as an operator killed between the two would leave it.
    let refusal = Refusal::create(&s, "etl.silverline.dev", "etlruns/status", "UPDATE", "false").await;
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let touch = Patch::Merge(serde_json::json!({"status": {"phase": "Pending"}}));
    let dry_run = PatchParams::default().dry_run();
    refusal.until_refused(|| runs.patch_status("tx-adopt", &dry_run, &touch)).await;
    let op = s.operator("replica-a").await;

    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let job = eventually("the attempt's Job", RUN_TIMEOUT, || async { jobs.get_opt("tx-adopt-a1").await.ok()? }).await;
    let run_id = job.annotations().get(silverline_operator::job::ANNOTATION_RUN_ID).cloned().expect("run id");
    // Retried reconciles see a later clock (run ids carry the second) while the status stays unwritten.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs.get("tx-adopt").await.expect("run").status.map(|st| st.attempts.len()).unwrap_or(0), 0);
    refusal.lift().await;

    let done = finished(&s.client, &s.ns.name, "tx-adopt", RUN_TIMEOUT).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 1, "{:?}", status.attempts);
    assert_eq!(status.attempts[0].run_id, run_id, "recorded under the run id its Job runs with");
    assert_eq!(status.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(jobs_of(&s, "tx-adopt").await.len(), 1, "never a second Job");
    assert!(run_dir(&s.lake(), &run_id).join("_SUCCESS").exists());
    let events = support::events(&s.client, &s.ns.name, "tx-adopt").await;
    let started = events.iter().filter(|e| e.reason.as_deref() == Some("AttemptStarted")).count();
    assert_eq!(started, 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn every_attempts_events_say_that_attempt() {
    let s = Scenario::new("attevents").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    s.kubelet.inject("tx-again-a1", Fault::Exit(75));
    s.kubelet.inject("tx-again-a2", Fault::Exit(75));
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-again", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-again", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 3);
    let events = support::events(&s.client, &s.ns.name, "tx-again").await;
    let notes = |reason: &str| {
        let mut notes: Vec<String> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.message.clone().unwrap_or_default())
            .collect();
        notes.sort();
        notes
    };
    let started = notes("AttemptStarted");
    assert_eq!(started.len(), 3, "one Event per attempt, none folded into attempt 1's: {started:?}");
    for (n, note) in started.iter().enumerate() {
        assert!(note.starts_with(&format!("attempt {} of 3: Job tx-again-a{}", n + 1, n + 1)), "{started:?}");
    }
    let failed = notes("TransientFailure");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[0].starts_with("attempt 1 failed") && failed[1].starts_with("attempt 2 failed"), "{failed:?}");
    for event in events.iter().filter(|e| e.reason.as_deref() == Some("AttemptStarted")) {
        let job = event.related.as_ref().and_then(|r| r.name.clone()).unwrap_or_default();
        assert!(
            event.message.as_deref().is_some_and(|m| m.contains(&job)),
            "related names the attempt's Job: {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn schema_drift_fails_the_run_at_once_without_a_retry() {
    let s = Scenario::new("drift").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let drifted =
        "TransactionID,CustomerID,Amount,Currency,TransactionTimestamp\nTX1,C1,1.00,EUR,2024-01-01T00:00:00Z\n";
    let input = s.input("drifted.csv", drifted);
    create_run(&s.client, &s.ns.name, "tx-drift", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-drift", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Failed), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 1);
    let attempt = &status.attempts[0];
    assert_eq!(
        (attempt.exit_code, attempt.reason.as_deref(), attempt.retryable),
        (Some(3), Some("SchemaDrift"), Some(false))
    );
    let failed = status.conditions.iter().find(|c| c.type_ == "Succeeded").expect("condition");
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("False", "SchemaDrift"));
    assert!(failed.message.contains("exit code 3: schema drift"), "{}", failed.message);
    // The worker's own words, from its termination message: which column is missing.
    assert!(failed.message.contains("Amount") && failed.message.contains("TransactionAmount"), "{}", failed.message);
    assert!(attempt.message.as_deref().is_some_and(|m| m.contains("TransactionAmount")), "{attempt:?}");
    // The Job controller applied the pod failure policy: the Job failed at once on exit code 3.
    let jobs = jobs_of(&s, "tx-drift").await;
    let job_failed = jobs[0]
        .status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed").cloned());
    assert_eq!(job_failed.and_then(|c| c.reason).as_deref(), Some("PodFailurePolicy"));
    // Longer than a backoff: still no second attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(jobs_of(&s, "tx-drift").await.len(), 1);
    assert_eq!(
        op.metric(&s.series(r#"silverline_runs_total{dataset="transactions",result="failed"}"#)).await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_worker_killed_mid_run_is_retried_under_a_new_run_id() {
    let s = Scenario::new("killed").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    s.kubelet.inject("tx-killed-a1", Fault::KillAfterClaim { lake: s.lake() });
    let op = s.operator("replica-a").await;
    let input = s.input("big.csv", &big_input(300_000));
    create_run(&s.client, &s.ns.name, "tx-killed", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-killed", Duration::from_secs(180)).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    let [first, second] = status.attempts.as_slice() else { panic!("two attempts expected: {:?}", status.attempts) };
    assert_eq!((first.exit_code, first.reason.as_deref()), (Some(137), Some("Killed")), "{first:?}");
    assert!(first.message.as_deref().is_some_and(|m| m.contains("SIGKILL")));
    assert_ne!(first.run_id, second.run_id);
    // The killed attempt claimed its run id and never committed; the retry committed under its own.
    assert!(run_dir(&s.lake(), &first.run_id).join("_RUN.json").exists());
    assert!(!run_dir(&s.lake(), &first.run_id).join("_SUCCESS").exists());
    assert_eq!(read_report(&run_dir(&s.lake(), &second.run_id).join("_SUCCESS")).input_rows, 300_000);
    assert_eq!(status.result.expect("result").input_rows, 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_job_that_succeeds_without_a_success_marker_is_a_failed_attempt() {
    let s = Scenario::new("nomarker").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    s.kubelet.inject("tx-nomarker-a1", Fault::SucceedWithoutRunning);
    // A grace of several checks even when the operator sees the finished Job late.
    let env = [("SILVERLINE_LAKE_GRACE_SECONDS", "6"), ("SILVERLINE_LAKE_CHECK_INTERVAL_SECONDS", "1")];
    let op = s.operator_with_env("replica-a", &env).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-nomarker", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-nomarker", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    let [first, second] = status.attempts.as_slice() else { panic!("two attempts expected: {:?}", status.attempts) };
    assert_eq!((first.outcome, first.reason.as_deref()), (Some(AttemptOutcome::Failed), Some("SuccessMarkerMissing")));
    assert!(first.message.as_deref().is_some_and(|m| m.contains("_SUCCESS") && m.contains(&first.run_id)), "{first:?}");
    assert!(first.lake_checks >= 2, "the marker was looked for more than once: {first:?}");
    assert_eq!(second.outcome, Some(AttemptOutcome::Succeeded));
    // The Job itself did succeed: only the lake tells the attempt failed.
    let jobs = jobs_of(&s, "tx-nomarker").await;
    let first_job = jobs.iter().find(|j| j.name_any() == "tx-nomarker-a1").expect("first job");
    assert_eq!(first_job.status.as_ref().and_then(|st| st.succeeded), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn while_validating_the_lake_is_checked_at_the_configured_interval_without_a_hot_loop() {
    let s = Scenario::new("nospin").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 1)).await;
    s.kubelet.inject("tx-nospin-a1", Fault::SucceedWithoutRunning);
    // A grace of 15 s checked every second: about 16 reads, where a loop woken by its own writes made hundreds, an
    // interval not taken from the setting (3 s) about 5, and a look only when the grace is over 2.
    let env = [("SILVERLINE_LAKE_GRACE_SECONDS", "15"), ("SILVERLINE_LAKE_CHECK_INTERVAL_SECONDS", "1")];
    let op = s.operator_with_env("replica-a", &env).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-nospin", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-nospin", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Failed), "{status:?}\n{}", s.diagnostics(&[&op]));
    let first = &status.attempts[0];
    assert_eq!(first.reason.as_deref(), Some("SuccessMarkerMissing"), "{first:?}");
    let reads = op.metric(&s.series(r#"silverline_lake_checks_total{dataset="transactions"}"#)).await.unwrap_or(0.0);
    let reconciles = op.metric(r#"silverline_reconciles_total{controller="etlrun"}"#).await.unwrap_or(0.0);
    // A few fewer when the finished Job is seen late (the grace counts from its completion), a few more for the
    // Job's own updates; never hundreds.
    assert!((8.0..=24.0).contains(&reads), "15 s at 1 s intervals: {reads}");
    assert!(reconciles <= 50.0, "reconciles of one run over its whole life: {reconciles}");
    assert!(
        (8..=24).contains(&first.lake_checks),
        "the checks reach status when the attempt ends: {first:?} (reads {reads})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn an_operator_killed_mid_run_adopts_the_job_and_completes_the_status() {
    let s = Scenario::new("restart").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let release = Arc::new(tokio::sync::Notify::new());
    s.kubelet.inject("tx-restart-a1", Fault::Hold(release.clone()));
    let mut first = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-restart", &input).await;

    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually("attempt 1 running", Duration::from_secs(30), || async {
        let run = runs.get("tx-restart").await.ok()?;
        (run.phase() == Some(EtlRunPhase::Running) && !jobs_of(&s, "tx-restart").await.is_empty()).then_some(())
    })
    .await;
    first.kill().await;

    // The worker finishes while no operator runs.
    release.notify_one();
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually("the Job to complete with the operator down", Duration::from_secs(60), || async {
        let job = jobs.get("tx-restart-a1").await.ok()?;
        (job.status?.succeeded == Some(1)).then_some(())
    })
    .await;
    assert_eq!(runs.get("tx-restart").await.expect("run").phase(), Some(EtlRunPhase::Running));

    let second = s.operator("replica-b").await;
    let run = finished(&s.client, &s.ns.name, "tx-restart", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&first, &second]));
    assert_eq!(status.attempts.len(), 1, "the restarted operator adopted attempt 1: {:?}", status.attempts);
    assert_eq!(jobs_of(&s, "tx-restart").await.len(), 1, "never a second Job");
    assert_eq!(status.result.expect("result").input_rows, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn only_the_leader_of_two_replicas_acts() {
    let s = Scenario::new("leader").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let mut a = s.operator("replica-a").await;
    eventually("replica-a leads", Duration::from_secs(20), || async {
        (a.metric("silverline_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let b = s.operator("replica-b").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-one", &input).await;
    let run = finished(&s.client, &s.ns.name, "tx-one", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&a, &b]));

    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns.name);
    let lease = leases.get("silverline-operator").await.expect("lease");
    assert_eq!(lease.spec.and_then(|l| l.holder_identity).as_deref(), Some("replica-a"));
    assert_eq!(b.metric("silverline_leader").await, Some(0.0));
    assert_eq!(
        b.metric(r#"silverline_reconciles_total{controller="etlrun"}"#).await,
        Some(0.0),
        "the standby never reconciled"
    );
    assert!(a.metric(r#"silverline_reconciles_total{controller="etlrun"}"#).await.is_some_and(|n| n > 0.0));

    // The leader dies without giving the Lease up: the standby takes over once it expires.
    a.kill().await;
    eventually("replica-b takes over", Duration::from_secs(45), || async {
        (b.metric("silverline_leader").await == Some(1.0)).then_some(())
    })
    .await;
    // The new leader exports the last run's figures from its status, before any run of its own ends.
    let result = run.status.and_then(|st| st.result).expect("tx-one's result");
    let rows = &s.series(r#"silverline_last_run_input_rows{dataset="transactions"}"#);
    eventually("replica-b's last-run gauges", Duration::from_secs(15), || async {
        (b.metric(rows).await == Some(result.input_rows as f64)).then_some(())
    })
    .await;
    let gated = b.metric(&s.series(r#"silverline_last_gated_quarantine_rate{dataset="transactions"}"#)).await;
    assert_eq!(gated, result.gated_quarantine_rate, "the gated rate tx-one's status holds");
    assert!(gated.is_some(), "a new run's status holds its gated rate: {result:?}");
    assert!(b.metric(&s.series(r#"silverline_last_run_duration_seconds{dataset="transactions"}"#)).await.is_some());
    create_run(&s.client, &s.ns.name, "tx-two", &input).await;
    let run = finished(&s.client, &s.ns.name, "tx-two", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&b]));
    assert!(b.metric(r#"silverline_reconciles_total{controller="etlrun"}"#).await.is_some_and(|n| n > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_malformed_run_does_not_stop_the_controller_from_serving_the_others() {
    let s = Scenario::new("malformed").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    // Waits for a Dataset that does not exist yet; then its status is made unreadable for the operator:
    // an attempt number beyond u32 is valid for the schema (an integer ≥ 1) but not for the operator's types.
    create_run(&s.client, &s.ns.name, "tx-broken", &input).await;
    let broken =
        serde_json::json!({"status": {"attempts": [{"attempt": 99_999_999_999u64, "runId": "x", "jobName": "x"}]}});
    let guarded: Api<DeserializeGuard<EtlRun>> = Api::namespaced(s.client.clone(), &s.ns.name);
    let patched = guarded.patch_status("tx-broken", &PatchParams::default(), &Patch::Merge(&broken)).await;
    assert!(patched.expect("the apiserver accepts the status").0.is_err(), "the status no longer reads as an EtlRun");

    let op = s.operator("replica-a").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    create_run(&s.client, &s.ns.name, "tx-fine", &input).await;
    let run = finished(&s.client, &s.ns.name, "tx-fine", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    eventually("an InvalidResource Event for the malformed run", Duration::from_secs(20), || async {
        let events = support::events(&s.client, &s.ns.name, "tx-broken").await;
        events.iter().any(|e| e.reason.as_deref() == Some("InvalidResource")).then_some(())
    })
    .await;
    assert!(
        op.metric(r#"silverline_reconcile_errors_total{category="invalid_resource",controller="etlrun"}"#)
            .await
            .is_some_and(|n| n >= 1.0)
    );
    assert!(jobs_of(&s, "tx-broken").await.is_empty());

    // A Dataset that does not read as one (maxAttempts beyond u32: an integer ≥ 1 for the schema) says so in a
    // Warning Event too; it has no status the operator could write.
    let mut orders = transactions_dataset(&s.lake(), 3);
    orders.metadata.name = Some("orders".into());
    create_dataset(&s.client, &s.ns.name, &orders).await;
    let datasets: Api<DeserializeGuard<Dataset>> = Api::namespaced(s.client.clone(), &s.ns.name);
    let broken = serde_json::json!({"spec": {"maxAttempts": 99_999_999_999u64}});
    let patched = datasets.patch("orders", &PatchParams::default(), &Patch::Merge(&broken)).await;
    assert!(patched.expect("the apiserver accepts the spec").0.is_err(), "the Dataset no longer reads as one");
    eventually("an InvalidResource Warning for the malformed Dataset", Duration::from_secs(20), || async {
        let events = support::events(&s.client, &s.ns.name, "orders").await;
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidResource") && e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_quality_gate_failure_ends_the_run_with_the_reports_metrics() {
    let s = Scenario::new("quality").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let mut text = String::from("TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp\n");
    for i in 0..100 {
        let currency = if i % 4 == 0 { "XXX" } else { "EUR" };
        text.push_str(&format!("TX{i:04},C{i},10.00,{currency},2024-03-01T00:00:00Z\n"));
    }
    let input = s.input("poor.csv", &text);
    create_run(&s.client, &s.ns.name, "tx-poor", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-poor", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::QualityGateFailed), "{status:?}\n{}", s.diagnostics(&[&op]));
    assert_eq!(status.attempts.len(), 1);
    assert_eq!(
        (status.attempts[0].exit_code, status.attempts[0].outcome),
        (Some(5), Some(AttemptOutcome::QualityGateFailed))
    );
    let result = status.result.expect("the quality report's metrics");
    assert_eq!((result.input_rows, result.quarantined_rows), (100, 25));
    assert!(result.report_uri.ends_with("_QUALITY_REPORT.json"));
    // The metrics are recorded after the status write.
    let rate = &s.series(r#"silverline_last_quarantine_rate{dataset="transactions"}"#);
    eventually("the last quarantine rate", Duration::from_secs(10), || async {
        (op.metric(rate).await == Some(0.25)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn the_operator_needs_no_more_than_its_published_rbac() {
    let s = Scenario::new("rbac").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    s.kubelet.inject("tx-rbac-a1", Fault::Exit(75));
    let kubeconfig = s.operator_service_account().await;
    let op = support::Operator::start(support::OperatorOptions {
        namespace: &s.ns.name,
        identity: "replica-a",
        log_dir: s.dir.path(),
        kubeconfig: Some(&kubeconfig),
        env: vec![],
    })
    .await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-rbac", &input).await;

    // A retried run touches every kind of object: Lease, EtlRun status, ConfigMap, Jobs, pods, Events, Dataset.
    let run = finished(&s.client, &s.ns.name, "tx-rbac", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    assert_eq!(run.status.expect("status").attempts[0].exit_code, Some(75));
    // The Dataset's last success is written after the finish's Event: the Events are all out then.
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually("the Dataset's last success", Duration::from_secs(10), || async {
        datasets.get("transactions").await.ok()?.status?.last_successful_run_id
    })
    .await;
    let reasons: Vec<String> =
        support::events(&s.client, &s.ns.name, "tx-rbac").await.into_iter().filter_map(|e| e.reason).collect();
    assert!(
        reasons.contains(&"TransientFailure".to_owned()) && reasons.contains(&"Succeeded".to_owned()),
        "{reasons:?}"
    );
    let forbidden = op.logs().lines().filter(|l| l.contains("forbidden") || l.contains("Forbidden")).count();
    assert_eq!(forbidden, 0, "{}", op.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_run_waits_for_its_dataset_and_starts_when_it_appears() {
    let s = Scenario::new("waits").await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-early", &input).await;
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let waiting = eventually("the run to wait for its Dataset", Duration::from_secs(20), || async {
        let run = runs.get("tx-early").await.ok()?;
        let status = run.status?;
        let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing")?.clone();
        (progressing.reason == "DatasetNotFound").then_some((status.phase, progressing))
    })
    .await;
    assert_eq!(waiting.0, Some(EtlRunPhase::Pending));
    assert!(waiting.1.message.contains("Dataset transactions does not exist"), "{:?}", waiting.1);
    assert!(jobs_of(&s, "tx-early").await.is_empty());

    // The Dataset's arrival triggers the run (the periodic resync is minutes away).
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let run = finished(&s.client, &s.ns.name, "tx-early", Duration::from_secs(60)).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    let reasons: Vec<String> =
        support::events(&s.client, &s.ns.name, "tx-early").await.into_iter().filter_map(|e| e.reason).collect();
    assert_eq!(reasons.iter().filter(|r| *r == "DatasetNotFound").count(), 1, "one Event per change: {reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn an_attempt_past_its_deadline_is_stopped_and_retried() {
    let s = Scenario::new("deadline").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    // Attempt 1 hangs (its worker never starts) until the Job controller stops it at the deadline.
    s.kubelet.inject("tx-slow-a1", Fault::Hold(Arc::new(tokio::sync::Notify::new())));
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let mut run = EtlRun::new(
        "tx-slow",
        silverline_crds::EtlRunSpec {
            dataset: "transactions".into(),
            input: input.display().to_string(),
            resources: None,
            deadline_seconds: Some(10),
        },
    );
    run.metadata.namespace = Some(s.ns.name.clone());
    runs.create(&kube::api::PostParams::default(), &run).await.expect("create");

    let run = finished(&s.client, &s.ns.name, "tx-slow", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    let [first, second] = status.attempts.as_slice() else { panic!("two attempts expected: {:?}", status.attempts) };
    assert_eq!((first.reason.as_deref(), first.retryable), (Some("DeadlineExceeded"), Some(true)), "{first:?}");
    assert_eq!(second.outcome, Some(AttemptOutcome::Succeeded));
    let jobs = jobs_of(&s, "tx-slow").await;
    assert!(jobs.iter().all(|j| j.spec.as_ref().and_then(|sp| sp.active_deadline_seconds) == Some(10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn an_invalid_contract_is_reported_on_the_dataset_and_holds_its_runs_until_fixed() {
    let s = Scenario::new("contract").await;
    let op = s.operator("replica-a").await;
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.primary_key = vec!["Nope".into()]; // valid for the schema, not for the contract's own checks
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let valid = |want: &'static str| {
        let datasets = datasets.clone();
        async move {
            let ds = datasets.get("transactions").await.ok()?;
            let c = ds.status?.conditions.into_iter().find(|c| c.type_ == "Valid")?;
            (c.status == want).then_some(c)
        }
    };
    let invalid = eventually("Valid=False on the Dataset", Duration::from_secs(20), || valid("False")).await;
    assert_eq!(invalid.reason, "InvalidContract");
    assert!(invalid.message.contains("spec.primaryKey"), "{invalid:?}");

    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-held", &input).await;
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    support::run_waits(
        &runs,
        "tx-held",
        "InvalidDataset",
        Some(EtlRunPhase::Pending),
        "the run to wait for a valid contract",
        Duration::from_secs(20),
    )
    .await;
    assert!(jobs_of(&s, "tx-held").await.is_empty());

    let fix = serde_json::json!({"spec": {"primaryKey": ["TransactionID"]}});
    datasets.patch("transactions", &PatchParams::default(), &Patch::Merge(&fix)).await.expect("fix the contract");
    let run = finished(&s.client, &s.ns.name, "tx-held", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    eventually("Valid=True on the Dataset", Duration::from_secs(20), || valid("True")).await;
    // Its Event follows that status write.
    let (_, events) =
        support::event_appears(&s.client, &s.ns.name, "transactions", |e| e.reason.as_deref() == Some("ContractValid"))
            .await;
    let reasons: Vec<String> = events.into_iter().filter_map(|e| e.reason).collect();
    assert!(
        reasons.contains(&"InvalidContract".to_owned()) && reasons.contains(&"ContractValid".to_owned()),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_missing_credentials_secret_is_named_on_the_dataset_and_the_waiting_run() {
    use k8s_openapi::api::core::v1::Secret;
    let s = Scenario::new("nosecret").await;
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.storage.credentials_secret = Some(silverline_crds::SecretKeyRef { name: "lake-creds".into() });
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    // Once it can start, the pod runs but its worker waits for the test: the Dataset must say the Secret is found
    // while the run still runs, not only when it ends.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    s.kubelet.inject("tx-nosecret-a1", Fault::Hold(release.clone()));
    create_run(&s.client, &s.ns.name, "tx-nosecret", &input).await;

    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let waiting = support::run_waits(
        &runs,
        "tx-nosecret",
        "CredentialsSecretNotFound",
        None,
        "the run to say its Secret is missing",
        Duration::from_secs(30),
    )
    .await;
    assert!(waiting.contains("Secret lake-creds") && waiting.contains("tx-nosecret-a1"), "{waiting}");
    let datasets: Api<Dataset> = Api::namespaced(s.client.clone(), &s.ns.name);
    let missing = support::credentials_condition(&s.client, &s.ns.name, "transactions", "False", None).await;
    assert!(missing.reason == "SecretNotFound" && missing.message.contains("lake-creds"), "{missing:?}");
    let valid = datasets.get("transactions").await.expect("dataset").status.expect("status");
    assert!(valid.conditions.iter().any(|c| c.type_ == "Valid" && c.status == "True"), "Valid is kept: {valid:?}");
    assert!(support::warned(&s.client, &s.ns.name, "tx-nosecret", "CredentialsSecretNotFound").await);

    // The Secret appears without the secret key: the run and the Dataset name the key that is missing.
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns.name);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lake-creds"}, "stringData": {"AWS_ACCESS_KEY_ID": "x"}
    }))
    .expect("secret");
    secrets.create(&Default::default(), &secret).await.expect("create the Secret");
    let waiting = support::run_waits(
        &runs,
        "tx-nosecret",
        "CredentialsSecretKeyMissing",
        None,
        "the run to say which key is missing",
        Duration::from_secs(30),
    )
    .await;
    assert!(waiting.contains("Secret lake-creds") && waiting.contains("no key AWS_SECRET_ACCESS_KEY"), "{waiting}");
    let missing =
        support::credentials_condition(&s.client, &s.ns.name, "transactions", "False", Some("KeyMissing")).await;
    assert!(missing.message.contains("has no key AWS_SECRET_ACCESS_KEY"), "{missing:?}");
    let warned = support::warned(&s.client, &s.ns.name, "tx-nosecret", "CredentialsSecretKeyMissing").await;
    assert!(warned, "a Warning Event names the missing key");

    // The key is added: the pod starts, and while it runs the Dataset says the Secret is found; then the run
    // succeeds.
    let patch = serde_json::json!({"stringData": {"AWS_SECRET_ACCESS_KEY": "y"}});
    secrets.patch("lake-creds", &Default::default(), &kube::api::Patch::Merge(&patch)).await.expect("add the key");
    let found = support::credentials_condition(&s.client, &s.ns.name, "transactions", "True", None).await;
    assert!(found.message.contains("a worker pod of EtlRun tx-nosecret started"), "{found:?}");
    let running = runs.get("tx-nosecret").await.expect("run");
    assert!(!running.phase().is_some_and(|p| p.is_terminal()), "said before the run ended: {:?}", running.status);
    release.notify_one();
    let run = finished(&s.client, &s.ns.name, "tx-nosecret", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    assert_eq!(run.status.expect("status").attempts.len(), 1, "the same attempt, once its pod could start");
    support::credentials_condition(&s.client, &s.ns.name, "transactions", "True", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_job_whose_pods_cannot_be_created_is_reported_at_once_and_given_up_after_the_bound() {
    let s = Scenario::new("nosa").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    // With only its published RBAC: listing the Job's Events and deleting the Job are in it.
    let kubeconfig = s.operator_service_account().await;
    // A bound long enough that the Job controller's FailedCreate reaches the operator within it on a loaded machine
    // (the run says so while Running), short enough for a test.
    let env =
        [("SILVERLINE_WORKER_SERVICE_ACCOUNT", "missing-worker"), ("SILVERLINE_POD_CREATE_TIMEOUT_SECONDS", "30")];
    let op = support::Operator::start(support::OperatorOptions {
        namespace: &s.ns.name,
        identity: "replica-a",
        log_dir: s.dir.path(),
        kubeconfig: Some(&kubeconfig),
        env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    })
    .await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-nosa", &input).await;

    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let waiting = support::run_waits(
        &runs,
        "tx-nosa",
        "PodCreationFailed",
        Some(EtlRunPhase::Running),
        "the run to say no pod can be created",
        Duration::from_secs(40),
    )
    .await;
    assert!(waiting.contains("ServiceAccount missing-worker does not exist"), "{waiting}");
    assert!(support::warned(&s.client, &s.ns.name, "tx-nosa", "PodCreationFailed").await);

    let run = finished(&s.client, &s.ns.name, "tx-nosa", Duration::from_secs(90)).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Failed), "{status:?}\n{}", s.diagnostics(&[&op]));
    let [attempt] = status.attempts.as_slice() else { panic!("one attempt, not retried: {:?}", status.attempts) };
    assert_eq!((attempt.reason.as_deref(), attempt.retryable), (Some("PodCreationFailed"), Some(false)));
    assert!(attempt.message.as_deref().is_some_and(|m| m.contains("ServiceAccount missing-worker")), "{attempt:?}");
    eventually("the given-up Job to be deleted", Duration::from_secs(90), || async {
        jobs_of(&s, "tx-nosa").await.is_empty().then_some(())
    })
    .await;
}

/// An S3 endpoint that refuses every request with `403 AccessDenied`, as a store does to a wrong identity.
async fn refusing_s3() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let _ = stream.read(&mut buf).await;
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
                let response = format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_lake_that_cannot_be_read_is_said_in_status_and_events_and_ends_the_attempt_after_the_grace() {
    let s = Scenario::new("nolake").await;
    let port = refusing_s3().await;
    let mut dataset = transactions_dataset(&s.lake(), 1);
    dataset.spec.storage.lake_uri = "s3://refused-lake/tx".into();
    dataset.spec.storage.endpoint = Some(format!("http://127.0.0.1:{port}"));
    dataset.spec.storage.region = Some("us-east-1".into());
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    s.kubelet.inject("tx-nolake-a1", Fault::SucceedWithoutRunning);
    let (lakes, endpoints) = (format!("{}=s3://refused-lake", s.ns.name), format!("http://127.0.0.1:{port}"));
    let env = [
        ("AWS_ACCESS_KEY_ID", "operator-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "operator-secret-value"),
        ("SILVERLINE_ALLOWED_LAKES", lakes.as_str()),
        ("SILVERLINE_ALLOWED_ENDPOINTS", endpoints.as_str()),
        // A grace longer than the tests' 2 s: the wait is said only if the operator sees the finished Job within
        // it (counted from the Job's completion, to the second), which a loaded machine can delay.
        ("SILVERLINE_LAKE_GRACE_SECONDS", "10"),
        ("SILVERLINE_LAKE_CHECK_INTERVAL_SECONDS", "1"),
    ];
    let op = s.operator_with_env("replica-a", &env).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-nolake", &input).await;

    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let said = support::run_waits(
        &runs,
        "tx-nolake",
        "LakeUnreadable",
        None,
        "the run to say the lake cannot be read",
        Duration::from_secs(30),
    )
    .await;
    assert!(said.contains("s3://refused-lake/tx") && said.contains("_SUCCESS") && said.contains("access"), "{said}");
    assert!(said.contains("(AccessDenied: Access Denied)"), "what the store answered: {said}");
    assert!(!said.contains("operator-secret-value"), "no credentials: {said}");

    let run = finished(&s.client, &s.ns.name, "tx-nolake", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Failed), "{status:?}\n{}", s.diagnostics(&[&op]));
    let attempt = &status.attempts[0];
    assert_eq!(attempt.reason.as_deref(), Some("SuccessMarkerMissing"), "{attempt:?}");
    let message = attempt.message.clone().unwrap_or_default();
    assert!(
        message.contains("could not be read from the lake") && message.contains("s3://refused-lake/tx"),
        "{message}"
    );
    let warnings: Vec<_> = support::events(&s.client, &s.ns.name, "tx-nolake")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("LakeUnreadable"))
        .collect();
    assert!(
        warnings.iter().any(|e| e.type_.as_deref() == Some("Warning")
            && e.message.as_deref().is_some_and(|m| m.contains("s3://refused-lake/tx"))),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn an_evicted_worker_is_retried_under_a_new_run_id() {
    let s = Scenario::new("evicted").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let op = s.operator("replica-a").await;
    let input = s.input("big.csv", &big_input(300_000));
    create_run(&s.client, &s.ns.name, "tx-evict", &input).await;

    // Once the worker has claimed its run id, evict its pod through the Eviction API, as a drain would.
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let lake = s.lake();
    let run_id = eventually("attempt 1 to claim its run id", Duration::from_secs(60), || async {
        let run_id = runs.get("tx-evict").await.ok()?.status?.attempts.first()?.run_id.clone();
        run_dir(&lake, &run_id).join("_RUN.json").exists().then_some(run_id)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns.name);
    let pod = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=tx-evict-a1"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .next()
        .expect("the worker pod");
    pods.evict(&pod.name_any(), &EvictParams::default()).await.expect("evict");

    let run = finished(&s.client, &s.ns.name, "tx-evict", Duration::from_secs(180)).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    let [first, second] = status.attempts.as_slice() else { panic!("two attempts expected: {:?}", status.attempts) };
    assert_eq!(first.run_id, run_id);
    // The pod is gone by then (the Job controller released it); the operator remembers how it ended.
    assert_eq!(first.reason.as_deref(), Some("Evicted"), "{first:?}");
    assert!(first.message.as_deref().is_some_and(|m| m.contains("EvictionByEvictionAPI")), "{first:?}");
    assert_eq!(first.retryable, Some(true));
    assert_ne!(second.run_id, first.run_id);
    assert!(!run_dir(&s.lake(), &first.run_id).join("_SUCCESS").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn lake_credentials_reach_the_worker_by_reference_only() {
    let s = Scenario::new("creds").await;
    const SECRET_VALUE: &str = "s3cr3t-value-that-must-not-leak";
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.ns.name);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lake-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": SECRET_VALUE},
    }))
    .expect("secret");
    secrets.create(&kube::api::PostParams::default(), &secret).await.expect("create Secret");
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.storage.credentials_secret = Some(silverline_crds::SecretKeyRef { name: "lake-credentials".into() });
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-creds", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-creds", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    let jobs = jobs_of(&s, "tx-creds").await;
    let pod_spec = jobs[0].spec.clone().and_then(|j| j.template.spec).expect("pod spec");
    let container = &pod_spec.containers[0];
    assert!(container.env_from.is_none(), "never the whole Secret: {:?}", container.env_from);
    let from_secret: Vec<(String, String, String)> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            Some((e.name.clone(), r.name.clone(), r.key.clone()))
        })
        .collect();
    let by_key = |k: &str| (k.to_owned(), "lake-credentials".to_owned(), k.to_owned());
    assert_eq!(
        from_secret,
        [by_key("AWS_ACCESS_KEY_ID"), by_key("AWS_SECRET_ACCESS_KEY"), by_key("AWS_SESSION_TOKEN")]
    );
    // The value is nowhere but in the Secret: not in the run, its Job, its contract snapshot or the logs.
    let snapshots: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns.name);
    let snapshot_name = run.status.as_ref().and_then(|st| st.contract_snapshot.clone()).expect("snapshot name");
    let snapshot = snapshots.get(&snapshot_name).await.expect("snapshot");
    for (what, text) in [
        ("EtlRun", serde_json::to_string(&run).expect("json")),
        ("Job", serde_json::to_string(&jobs).expect("json")),
        ("ConfigMap", serde_json::to_string(&snapshot).expect("json")),
        ("operator log", op.logs()),
    ] {
        assert!(!text.contains(SECRET_VALUE), "the secret value leaked into the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_leader_stopped_gracefully_hands_the_lease_over_at_once() {
    let s = Scenario::new("handover").await;
    let mut a = s.operator("replica-a").await;
    eventually("replica-a leads", Duration::from_secs(20), || async {
        (a.metric("silverline_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let b = s.operator("replica-b").await;
    assert!(a.terminate().await, "the leader exits 0 on SIGTERM\n{}", s.diagnostics(&[&a]));
    // Released before exiting: nobody holds a Lease that would otherwise stay replica-a's for its duration.
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns.name);
    let holder = leases.get("silverline-operator").await.expect("lease").spec.and_then(|l| l.holder_identity);
    assert_ne!(holder.as_deref(), Some("replica-a"));
    eventually("replica-b takes over", Duration::from_secs(10), || async {
        (b.metric("silverline_leader").await == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_run_on_an_s3_lake_succeeds_with_a_read_only_operator() {
    let s = Scenario::new("s3").await;
    let s3 = support::S3Server::start().await;
    // The worker writes with the Dataset's credentials Secret; the operator only reads, with its own identity.
    let op = s.s3_dataset_and_read_only_operator(&s3).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-s3", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-s3", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    let result = status.result.expect("result");
    assert_eq!(result.input_rows, 3000);
    let run_id = status.run_id.expect("run id");
    assert_eq!(
        result.report_uri,
        format!("s3://lake/warehouse/silver/transactions/schema_v=v1/run_id={run_id}/_SUCCESS")
    );
    assert!(result.files.iter().all(|f| f.key.starts_with("s3://lake/warehouse/")), "{:?}", result.files);
}

/// `--worker-env` reaches the worker's process: with `HTTP_PROXY` naming a forward proxy (on loopback, as a
/// cluster's egress proxy would be), the worker's S3 requests go through it and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn the_workers_environment_from_the_operator_sends_its_lake_requests_through_an_egress_proxy() {
    let s = Scenario::new("proxy").await;
    let s3 = support::S3Server::start().await;
    let proxy = support::proxy::ForwardProxy::start().await;
    let worker_env = format!("HTTP_PROXY=http://{}\nTZ=UTC", proxy.addr);
    let op = s.s3_dataset_and_read_only_operator_with_env(&s3, &[("SILVERLINE_WORKER_ENV", &worker_env)]).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-proxy", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-proxy", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    let endpoint = s3.var("AWS_ENDPOINT_URL");
    let s3_host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let relayed = proxy.relayed();
    assert!(!relayed.is_empty(), "the worker's S3 requests did not go through the proxy");
    assert!(relayed.iter().all(|host| host == s3_host), "{relayed:?}");
    let jobs = jobs_of(&s, "tx-proxy").await;
    let container = &jobs[0].spec.clone().and_then(|j| j.template.spec).expect("pod spec").containers[0];
    let literal: Vec<(&str, Option<&str>)> = container
        .env
        .iter()
        .flatten()
        .filter(|e| e.value_from.is_none())
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    let proxy_url = format!("http://{}", proxy.addr);
    assert_eq!(
        literal,
        [("HTTP_PROXY", Some(proxy_url.as_str())), ("TZ", Some("UTC")), ("AWS_EC2_METADATA_DISABLED", Some("true"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_job_of_the_runs_name_that_is_not_its_own_is_said_on_the_run_until_it_is_removed() {
    use silverline_operator::job;
    let s = Scenario::new("foreign").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    // A Job under the name the run's first attempt takes, with the operator's label but not owned by the run
    // (made by hand, or left by a run of that name deleted and created again). Suspended: it starts no pod.
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let foreign: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tx-foreign-a1", "labels": {job::LABEL_MANAGED_BY: job::MANAGED_BY}},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}},
    }))
    .expect("a Job");
    jobs.create(&PostParams::default(), &foreign).await.expect("create the foreign Job");
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-foreign", &input).await;

    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    // Found in the operator's cache of Jobs: said as Blocked (a launch that meets it first says LaunchFailed, and
    // the next look, 30 s later, Blocked).
    let message = support::run_waits(
        &runs,
        "tx-foreign",
        "Blocked",
        None,
        "the run to say what is in its way",
        Duration::from_secs(45),
    )
    .await;
    assert!(
        message.contains("Job tx-foreign-a1") && message.contains("not owned"),
        "{message}\n{}",
        s.diagnostics(&[&op])
    );
    let (warned, events) = support::event_appears(&s.client, &s.ns.name, "tx-foreign", |e| {
        e.type_.as_deref() == Some("Warning") && e.message.as_deref().is_some_and(|n| n.contains("tx-foreign-a1"))
    })
    .await;
    assert!(warned, "a Warning Event names the Job: {events:?}");

    // Removed: the run launches its own Job and succeeds.
    jobs.delete("tx-foreign-a1", &kube::api::DeleteParams::background()).await.expect("delete the foreign Job");
    let run = finished(&s.client, &s.ns.name, "tx-foreign", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
}

/// The condition of a type on a run, as (status, reason, message).
async fn run_condition(s: &Scenario, run: &str, type_: &str) -> Option<(String, String, String)> {
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let status = runs.get(run).await.ok()?.status?;
    let c = status.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_refused_promotion_request_is_said_on_the_run_and_made_once_it_can_be() {
    use silverline_crds::{Promotion, PromotionSpec};
    let s = Scenario::new("request-refused").await;
    let mut dataset = transactions_dataset(&s.lake(), 3);
    dataset.spec.promotion.request_on_success = true;
    create_dataset(&s.client, &s.ns.name, &dataset).await;
    let refusal =
        Refusal::create(&s, "etl.silverline.dev", "promotions", "CREATE", "!object.metadata.name.startsWith('tx-req')")
            .await;
    let promotions: Api<Promotion> = Api::namespaced(s.client.clone(), &s.ns.name);
    let mut probe = Promotion::new(
        "tx-req-probe",
        PromotionSpec {
            dataset: "transactions".into(),
            run_ids: Some(vec!["20240101T000000Z-abc-a1".into()]),
            restore_version: None,
            mode: None,
            reason: "probe".into(),
        },
    );
    probe.metadata.namespace = Some(s.ns.name.clone());
    refusal.until_refused(|| promotions.create(&DRY_RUN, &probe)).await;
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-req", &input).await;

    // The run succeeded; its Promotion cannot be created: said on the run (condition, one Warning Event).
    let run = finished(&s.client, &s.ns.name, "tx-req", RUN_TIMEOUT).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    let (_, _, message) = eventually("the refusal on the run", RUN_TIMEOUT, || async {
        let found = run_condition(&s, "tx-req", "PromotionRequested").await?;
        (found.0 == "False" && found.1 == "RequestFailed").then_some(found)
    })
    .await;
    assert!(
        message.starts_with("cannot create Promotion tx-req-promo of run ") && message.contains("refused here"),
        "{message}"
    );
    assert!(promotions.get_opt("tx-req-promo").await.expect("get").is_none());

    // Allowed again: the operator's retry creates it, and the condition says so.
    refusal.lift().await;
    eventually("the Promotion after the refusal is lifted", Duration::from_secs(60), || async {
        let found = run_condition(&s, "tx-req", "PromotionRequested").await?;
        (found.0 == "True" && found.1 == "Requested").then_some(())
    })
    .await;
    let promotion = promotions.get("tx-req-promo").await.expect("the requested Promotion");
    assert_eq!(promotion.spec.run_ids, run.status.and_then(|s| s.run_id).map(|id| vec![id]));
    let events = support::events(&s.client, &s.ns.name, "tx-req").await;
    let count = |reason: &str| events.iter().filter(|e| e.reason.as_deref() == Some(reason)).count();
    assert_eq!((count("PromotionRequestFailed"), count("PromotionRequested")), (1, 1), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_given_up_job_whose_delete_is_refused_is_deleted_once_it_can_be() {
    let s = Scenario::new("nodelete").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let refusal =
        Refusal::create(&s, "batch", "jobs", "DELETE", "!oldObject.metadata.name.startsWith('tx-nodel')").await;
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    let probe: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tx-nodel-probe"},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "probe"}]}}},
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &probe).await.expect("probe job");
    let dry_delete = kube::api::DeleteParams { dry_run: true, ..Default::default() };
    refusal.until_refused(|| jobs.delete("tx-nodel-probe", &dry_delete)).await;
    // No pod of the run's Job can be created (its ServiceAccount is missing): the attempt is given up.
    let env = [("SILVERLINE_WORKER_SERVICE_ACCOUNT", "missing-worker"), ("SILVERLINE_POD_CREATE_TIMEOUT_SECONDS", "5")];
    let op = s.operator_with_env("replica-a", &env).await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-nodel", &input).await;

    let run = finished(&s.client, &s.ns.name, "tx-nodel", Duration::from_secs(90)).await;
    assert_eq!(run.phase(), Some(EtlRunPhase::Failed), "{}", s.diagnostics(&[&op]));
    let warned = eventually("a JobDeleteFailed Event", RUN_TIMEOUT, || async {
        let events = support::events(&s.client, &s.ns.name, "tx-nodel").await;
        events.into_iter().find(|e| e.reason.as_deref() == Some("JobDeleteFailed"))
    })
    .await;
    assert!(
        warned.message.as_deref().is_some_and(|m| m.contains("tx-nodel-a1") && m.contains("refused here")),
        "{warned:?}"
    );
    assert!(jobs.get_opt("tx-nodel-a1").await.expect("get").is_some(), "the delete was refused");

    // Allowed again: the finished run's reconcile deletes the Job it gave up.
    refusal.lift().await;
    eventually("the given-up Job to be deleted", Duration::from_secs(60), || async {
        let gone = jobs.get_opt("tx-nodel-a1").await.ok()?.is_none_or(|j| j.metadata.deletion_timestamp.is_some());
        gone.then_some(())
    })
    .await;
    jobs.delete("tx-nodel-probe", &Default::default()).await.expect("delete the probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_job_deleted_before_its_worker_wrote_anything_costs_its_attempt_and_is_not_relaunched() {
    let s = Scenario::new("vanished").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    // Attempt 1's worker never starts; its Job is deleted (as a TTL shorter than the operator's look would).
    s.kubelet.inject("tx-gone-a1", Fault::Hold(Arc::new(tokio::sync::Notify::new())));
    let op = s.operator("replica-a").await;
    let input = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-gone", &input).await;
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns.name);
    eventually("attempt 1's Job", Duration::from_secs(30), || async { jobs.get_opt("tx-gone-a1").await.ok()? }).await;
    jobs.delete("tx-gone-a1", &kube::api::DeleteParams::background()).await.expect("delete the Job");

    let run = finished(&s.client, &s.ns.name, "tx-gone", RUN_TIMEOUT).await;
    let status = run.status.expect("status");
    assert_eq!(status.phase, Some(EtlRunPhase::Succeeded), "{status:?}\n{}", s.diagnostics(&[&op]));
    let [first, second] = status.attempts.as_slice() else { panic!("two attempts expected: {:?}", status.attempts) };
    assert_eq!((first.reason.as_deref(), first.retryable), (Some("JobLost"), Some(true)), "{first:?}");
    assert!(first.message.as_deref().is_some_and(|m| m.contains("the lake holds nothing")), "{first:?}");
    assert_eq!((second.job_name.as_str(), second.outcome), ("tx-gone-a2", Some(AttemptOutcome::Succeeded)));
}

/// `--allowed-inputs`: once inputs are granted, a run whose input lies outside its namespace's grants waits
/// (`Pending`, `Progressing` reason `InputNotAllowed`, naming the input and the namespace's grants) with no Job,
/// while a run of a granted input goes on to succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane (KUBECONFIG): run ./scripts/test.sh"]
async fn a_run_whose_input_is_not_granted_to_its_namespace_waits_with_no_job() {
    let s = Scenario::new("input-policy").await;
    create_dataset(&s.client, &s.ns.name, &transactions_dataset(&s.lake(), 3)).await;
    let granted = s.dir.path().join("granted");
    std::fs::create_dir_all(&granted).expect("granted dir");
    let inputs = format!("{}={},other-team={}", s.ns.name, granted.display(), s.dir.path().display());
    let op = s.operator_with_env("replica-a", &[("SILVERLINE_ALLOWED_INPUTS", &inputs)]).await;
    let elsewhere = s.input("transactions.csv", support::TRANSACTIONS_CSV);
    create_run(&s.client, &s.ns.name, "tx-ungranted", &elsewhere).await;
    let inside = granted.join("transactions.csv");
    std::fs::write(&inside, support::TRANSACTIONS_CSV).expect("write the granted input");
    create_run(&s.client, &s.ns.name, "tx-granted", &inside).await;

    let done = finished(&s.client, &s.ns.name, "tx-granted", RUN_TIMEOUT).await;
    assert_eq!(done.phase(), Some(EtlRunPhase::Succeeded), "{}", s.diagnostics(&[&op]));
    let runs: Api<EtlRun> = Api::namespaced(s.client.clone(), &s.ns.name);
    let message = support::run_waits(
        &runs,
        "tx-ungranted",
        "InputNotAllowed",
        Some(EtlRunPhase::Pending),
        "the ungranted run to wait for its input",
        Duration::from_secs(30),
    )
    .await;
    let input = elsewhere.display().to_string();
    assert!(message.contains(&format!("input {input} ")) && message.contains(&s.ns.name), "{message}");
    assert!(message.contains(&granted.display().to_string()) && !message.contains("other-team"), "{message}");
    assert!(jobs_of(&s, "tx-ungranted").await.is_empty(), "no Job reads an input that is not granted");
}
