//! `EtlRun`: one run of a Dataset's transform over one input. The operator turns it into one Job per attempt,
//! retries what is worth retrying, verifies `_SUCCESS` in the lake and reports the run's metrics in status.

use crate::report::{FileRecord, RunReport};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest EtlRun name: the operator derives Job and ConfigMap names (`{name}-a{attempt}`, `{name}-contract`)
/// that must stay DNS labels of at most 63 characters.
pub const MAX_ETLRUN_NAME: usize = 50;

/// CEL rule on the EtlRun's name. The pattern is [`crate::names::DNS_LABEL_PATTERN`]; a unit test keeps them equal.
pub const NAME_RULE: &str = "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$') && \
                             size(self.metadata.name) <= 50";
/// CEL rule on `spec.dataset`, a name that becomes a path segment in the lake.
pub const DATASET_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')";
/// CEL rule on `spec.input`: a local path, `file://` or `s3://` URI, without whitespace or `..` segments.
pub const INPUT_RULE: &str = "self.matches('^(/|file:///|s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/|$))') && \
                              !self.matches('\\\\s') && !self.matches('(^|/)\\\\.\\\\.(/|$)')";
/// CEL rule making the whole spec immutable: a changed run is a new EtlRun.
pub const IMMUTABLE_RULE: &str = "self == oldSelf";

/// Run the transform of a Dataset over one input, with retries and a verified `_SUCCESS`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etl.silverline.dev",
    version = "v1alpha1",
    kind = "EtlRun",
    doc = "One run of a Dataset's transform over one input: one Job per attempt, then a verified _SUCCESS.",
    namespaced,
    shortname = "etl",
    status = "EtlRunStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Dataset","type":"string","jsonPath":".spec.dataset"}"#,
    printcolumn = r#"{"name":"Run ID","type":"string","jsonPath":".status.runId"}"#,
    printcolumn = r#"{"name":"Valid","type":"integer","jsonPath":".status.result.validRows"}"#,
    printcolumn = r#"{"name":"Quarantined","type":"integer","jsonPath":".status.result.quarantinedRows"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(NAME_RULE).message("metadata.name must be a DNS label of at most 50 characters").field_path(".metadata.name")
)]
#[x_kube(validation = Rule::new(IMMUTABLE_RULE).message("spec is immutable: create a new EtlRun instead"))]
#[serde(rename_all = "camelCase")]
pub struct EtlRunSpec {
    /// Name of the Dataset (in the same namespace) whose contract the run applies.
    #[x_kube(validation = Rule::new(DATASET_RULE).message("dataset must be a DNS label (it becomes a lake path)"))]
    #[schemars(length(min = 1, max = 63))]
    pub dataset: String,
    /// The input: a CSV object or a prefix of them (`s3://bucket/key`, `file:///path` or `/path`), or a quarantine
    /// run path to replay.
    #[x_kube(validation = Rule::new(INPUT_RULE).message(
        "input must be an absolute path, file:/// or s3://bucket/… URI, without whitespace or '..' segments"
    ))]
    #[schemars(length(min = 1, max = 1024))]
    pub input: String,
    /// Compute resources of the worker container; the operator's defaults apply when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Seconds one attempt may run before it is stopped and counted as a transient failure
    /// (the Job's `activeDeadlineSeconds`); the operator's default applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 604800))]
    pub deadline_seconds: Option<i64>,
}

/// Where a run is in its life. Terminal phases never change again.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum EtlRunPhase {
    /// Waiting to launch an attempt: for the Dataset, or for the backoff after a failed attempt.
    Pending,
    /// An attempt's Job exists and has not finished.
    Running,
    /// The Job finished; the operator is reading `_SUCCESS` from the lake.
    Validating,
    /// `_SUCCESS` was verified and its metrics copied into status.
    Succeeded,
    /// A permanent failure, or transient failures until `maxAttempts` was reached.
    Failed,
    /// The worker kept data and quarantine for review and wrote `_QUALITY_REPORT.json` (exit 5).
    QualityGateFailed,
}

impl EtlRunPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, EtlRunPhase::Succeeded | EtlRunPhase::Failed | EtlRunPhase::QualityGateFailed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EtlRunPhase::Pending => "Pending",
            EtlRunPhase::Running => "Running",
            EtlRunPhase::Validating => "Validating",
            EtlRunPhase::Succeeded => "Succeeded",
            EtlRunPhase::Failed => "Failed",
            EtlRunPhase::QualityGateFailed => "QualityGateFailed",
        }
    }
}

impl fmt::Display for EtlRunPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    QualityGateFailed,
}

/// Observed state of an EtlRun.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EtlRunStatus {
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<EtlRunPhase>,
    /// `Progressing` and `Succeeded`, each with a reason and a message naming the cause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The run id of the latest attempt: its data is under `run_id={runId}` in the lake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Every attempt, oldest first; never rewritten once it has ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptStatus>,
    /// The ConfigMap holding the contract every attempt of this run applies: the Dataset manifest as it was when
    /// the first attempt was launched, `{dataset}-contract-{hash of the manifest}`, immutable, owned by the
    /// Dataset and shared by every run launched with that same manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_snapshot: Option<String>,
    /// When the next attempt may start, after a transient failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
    /// When the operator started the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run reached its terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The metrics of the attempt that ended the run, from its `_SUCCESS` or `_QUALITY_REPORT.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
}

/// One attempt: one Job, one run id.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptStatus {
    /// 1 for the first attempt.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// The run id this attempt's worker writes under (`run_id=…` in the lake); never reused by another attempt.
    pub run_id: String,
    /// The attempt's Job, `{etlrun}-a{attempt}`, owned by the EtlRun.
    pub job_name: String,
    /// When the operator decided to start the attempt (written before its Job is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the attempt ended: its Job finished, or it was given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Unset while the attempt runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// The worker container's exit code, when it ran to an exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A stable reason such as `SchemaDrift`, `TransientFailure`, `Evicted` or `SuccessMarkerMissing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for a person: the exit code's meaning and the worker's own error, or what the operator saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether this failure was worth another attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// How many times the operator looked for the run's `_SUCCESS` after the Job completed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lake_checks: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The metrics of a finished run, copied from the worker's report in the lake.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// The report it was read from: the run's `_SUCCESS` or `_QUALITY_REPORT.json`.
    pub report_uri: String,
    /// Records read from the input (the header excluded).
    pub input_rows: u64,
    /// Rows that passed every check and were written to silver.
    pub valid_rows: u64,
    /// Rows that failed a check, kept in quarantine with their error.
    pub quarantined_rows: u64,
    /// Exact duplicates and rows out of attempts, kept in condemned.
    pub condemned_rows: u64,
    /// Quarantined rows / input rows (what the quality gate compares, for a CSV run).
    pub quarantine_rate: f64,
    /// How long the worker ran, in seconds.
    pub duration_seconds: f64,
    /// The quarantine rate the quality gate judged: `quarantineRate`, or for a replay the rows failing anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gated_quarantine_rate: Option<f64>,
    /// Mean attempt count of the quarantined rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_attempt_count: Option<f64>,
    /// Rows condemned for running out of attempts / input rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_condemnation_rate: Option<f64>,
    /// How many data files the run wrote (silver, quarantine, condemned).
    #[serde(default)]
    pub file_count: u64,
    /// Their bytes together.
    #[serde(default)]
    pub file_bytes: u64,
    /// The first data files the run wrote, at most 20 (an object must stay far below the API's size limit
    /// whatever the run wrote): the full list is the `files` of the report at `reportUri`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<DataFile>,
}

/// How many data files `status.result.files` lists at most.
pub const MAX_LISTED_FILES: usize = 20;

/// One Parquet file of a run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataFile {
    /// The file's object key under the lake root.
    pub key: String,
    /// `silver`, `quarantine` or `condemned`.
    pub area: String,
    /// Rows in the file.
    pub rows: u64,
    /// The file's size in bytes.
    pub bytes: u64,
}

impl RunResult {
    pub fn from_report(report: &RunReport, report_uri: &str) -> RunResult {
        RunResult {
            report_uri: report_uri.to_owned(),
            input_rows: report.input_rows,
            valid_rows: report.valid_rows_count,
            quarantined_rows: report.quarantined_rows_count,
            condemned_rows: report.condemned_rows_count,
            quarantine_rate: report.quarantine_rate,
            duration_seconds: report.duration_seconds,
            gated_quarantine_rate: Some(report.gated_rate()),
            avg_attempt_count: Some(report.avg_attempt_count),
            auto_condemnation_rate: Some(report.auto_condemnation_rate),
            file_count: report.files.len() as u64,
            file_bytes: report.files.iter().map(|f| f.bytes).sum(),
            files: report.files.iter().take(MAX_LISTED_FILES).map(DataFile::from).collect(),
        }
    }
}

impl From<&FileRecord> for DataFile {
    fn from(file: &FileRecord) -> DataFile {
        DataFile { key: file.key.clone(), area: file.area.clone(), rows: file.rows, bytes: file.bytes }
    }
}

impl EtlRun {
    pub fn phase(&self) -> Option<EtlRunPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;

    #[test]
    fn status_lists_the_first_files_and_counts_them_all() {
        let file = |i: usize| serde_json::json!({"key": format!("s3://l/silver/part-{i:05}.parquet"), "area": "silver", "rows": 10, "bytes": 100, "sha256": "ab"});
        for (files, listed) in [(0, 0), (3, 3), (20, 20), (5000, MAX_LISTED_FILES)] {
            let report: RunReport = serde_json::from_value(serde_json::json!({
                "outcome": "success", "run_id": "r", "dataset": "tx", "schema_v": "v1", "lake_uri": "s3://l",
                "input_uri": "/in.csv", "input_checksum": "00", "inputs": [], "worker_version": "0.1.0", "git_sha": "x",
                "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:01Z", "duration_seconds": 1.0,
                "input_rows": 10, "valid_rows_count": 10, "quarantined_rows_count": 0, "condemned_rows_count": 0,
                "quarantine_rate": 0.0, "error_type_distribution": {}, "condemned_reason_distribution": {},
                "avg_attempt_count": 1.0, "duplicate_detection_rate": 0.0, "auto_condemnation_rate": 0.0,
                "files": (0..files).map(file).collect::<Vec<_>>()
            }))
            .expect("report");
            let result = RunResult::from_report(&report, "s3://l/_SUCCESS");
            assert_eq!(result.files.len(), listed, "{files} files");
            assert_eq!((result.file_count, result.file_bytes), (files as u64, 100 * files as u64), "{files} files");
            assert_eq!(result.files.first().map(|f| f.key.as_str()), report.files.first().map(|f| f.key.as_str()));
        }
    }
    use kube::CustomResourceExt;
    use kube::core::ObjectMeta;
    use kube::core::cel::validate_cel;
    use kube::core::cel::validate_cel_update;

    fn run(name: &str, dataset: &str, input: &str) -> EtlRun {
        EtlRun {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            spec: EtlRunSpec { dataset: dataset.into(), input: input.into(), resources: None, deadline_seconds: None },
            status: None,
        }
    }

    #[test]
    fn the_cel_name_rules_use_the_patterns_of_the_names_module() {
        assert!(NAME_RULE.contains(names::DNS_LABEL_PATTERN));
        assert!(DATASET_RULE.contains(names::DNS_LABEL_PATTERN));
        assert!(NAME_RULE.contains(&format!("<= {MAX_ETLRUN_NAME}")));
    }

    #[test]
    fn valid_runs_pass_the_cel_rules() {
        for input in ["s3://bucket/bronze/tx/", "file:///data/in.csv", "/data/in.csv", "s3://my.bucket"] {
            let r = run("tx-2024-01", "transactions", input);
            assert!(validate_cel(&r).is_ok(), "{input}: {:?}", validate_cel(&r));
        }
        assert!(validate_cel(&run(&"a".repeat(50), "transactions", "/in.csv")).is_ok());
    }

    #[test]
    fn names_and_inputs_that_could_escape_a_path_fail_the_cel_rules() {
        let cases = [
            ("Tx", "transactions", "/in.csv", "metadata.name"),
            (&"a".repeat(51), "transactions", "/in.csv", "metadata.name"),
            ("tx", "../etc", "/in.csv", "dataset"),
            ("tx", "Transactions", "/in.csv", "dataset"),
            ("tx", "transactions", "relative/in.csv", "input"),
            ("tx", "transactions", "/data/../etc/passwd", "input"),
            ("tx", "transactions", "s3://bucket/a b.csv", "input"),
            ("tx", "transactions", "http://example.com/in.csv", "input"),
            ("tx", "transactions", "s3://Bucket/in.csv", "input"),
        ];
        for (name, dataset, input, what) in cases {
            let errors = validate_cel(&run(name, dataset, input)).expect_err(what);
            assert!(format!("{errors:?}").contains(what), "the error for {what} should name it: {errors:?}");
        }
    }

    #[test]
    fn the_spec_cannot_change_after_creation() {
        let old = run("tx", "transactions", "/in.csv");
        let mut new = old.clone();
        new.spec.input = "/other.csv".into();
        let errors = validate_cel_update(&new, &old).expect_err("a changed spec is rejected");
        assert!(format!("{errors:?}").contains("immutable"), "{errors:?}");
        assert!(validate_cel_update(&old.clone(), &old).is_ok());
    }

    #[test]
    fn the_crd_has_a_status_subresource_short_name_and_condition_list_map() {
        let crd = serde_json::to_value(EtlRun::crd()).expect("serializes");
        let version = &crd["spec"]["versions"][0];
        assert!(version["subresources"]["status"].is_object());
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "etl");
        let conditions = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
        let columns: Vec<_> =
            version["additionalPrinterColumns"].as_array().into_iter().flatten().map(|c| c["name"].clone()).collect();
        assert_eq!(columns, ["Phase", "Dataset", "Run ID", "Valid", "Quarantined", "Age"]);
    }

    #[test]
    fn terminal_phases_are_exactly_the_three_ends() {
        use EtlRunPhase::*;
        for (phase, terminal) in [
            (Pending, false),
            (Running, false),
            (Validating, false),
            (Succeeded, true),
            (Failed, true),
            (QualityGateFailed, true),
        ] {
            assert_eq!(phase.is_terminal(), terminal, "{phase}");
            assert_eq!(serde_json::to_value(phase).ok(), Some(serde_json::Value::from(phase.as_str())));
        }
    }
}
