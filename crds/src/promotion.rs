//! The vocabulary of promotion shared by the Dataset contract, the `Promotion` resource, the worker's
//! `promote` command and the lake's pointer: how a promotion changes the dataset's current set of files; and the
//! `Promotion` resource itself: verified runs become current only with a person's approval.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Who approved the promotion (its presence is the approval).
pub const ANNOTATION_APPROVED_BY: &str = "etl.silverline.dev/approved-by";
/// Why it was approved.
pub const ANNOTATION_APPROVAL_REASON: &str = "etl.silverline.dev/approval-reason";
/// Who rejected it (its presence is the rejection; it wins over an approval).
pub const ANNOTATION_REJECTED_BY: &str = "etl.silverline.dev/rejected-by";
/// Why it was rejected.
pub const ANNOTATION_REJECTION_REASON: &str = "etl.silverline.dev/rejection-reason";
/// Who asked for the promotion, set by its creator: free text, not checked. The authoritative creator is
/// [`ANNOTATION_CREATED_BY`]. On a Promotion the operator creates (`requestOnSuccess`) it is the EtlRun's creator
/// (its `created-by`), who may not approve it, or `silverline-operator` when the run's creator is not recorded.
pub const ANNOTATION_REQUESTED_BY: &str = "etl.silverline.dev/requested-by";
/// Who created the promotion (or the EtlRun), recorded by the apiserver at create time and immutable after, where
/// the chart's approval policy is installed (docs/approval.md): the creator the four-eyes rule compares the
/// approver with.
pub const ANNOTATION_CREATED_BY: &str = "etl.silverline.dev/created-by";

/// The longest Promotion name: the operator derives Job names (`{name}-p{attempt}`, `{name}-reject`) that must
/// stay DNS labels of at most 63 characters.
pub const MAX_PROMOTION_NAME: usize = 56;

/// CEL rule on the Promotion's name. The pattern is [`crate::names::DNS_LABEL_PATTERN`]; a unit test keeps them equal.
pub const PROMOTION_NAME_RULE: &str = "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$') && \
                                       size(self.metadata.name) <= 56";
/// CEL rule on `spec.runIds`: each a run id ([`crate::names::RUN_ID_PATTERN`]; a unit test keeps them equal).
pub const RUN_IDS_RULE: &str = "self.all(r, r.matches('^[A-Za-z0-9-][A-Za-z0-9._-]{0,63}$'))";
/// CEL rule on the spec: runs to promote, or a version to restore, never both.
pub const TARGET_RULE: &str = "has(self.runIds) != has(self.restoreVersion)";

/// Make verified runs of a Dataset current (or restore an old version), once a person approves.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etl.silverline.dev",
    version = "v1alpha1",
    kind = "Promotion",
    doc = "Verified runs of a Dataset become current only with a person's approval; or a rollback to a version.",
    namespaced,
    shortname = "promo",
    status = "PromotionStatus",
    printcolumn = r#"{"name":"Dataset","type":"string","jsonPath":".spec.dataset"}"#,
    printcolumn = r#"{"name":"Runs","type":"string","jsonPath":".spec.runIds"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Approved By","type":"string","jsonPath":".status.approvedBy"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(PROMOTION_NAME_RULE).message("metadata.name must be a DNS label of at most 56 characters").field_path(".metadata.name")
)]
#[x_kube(validation = Rule::new(crate::etlrun::IMMUTABLE_RULE).message("spec is immutable: create a new Promotion instead"))]
#[x_kube(validation = Rule::new(TARGET_RULE).message("name either runIds or restoreVersion, not both"))]
#[serde(rename_all = "camelCase")]
pub struct PromotionSpec {
    /// Name of the Dataset (in the same namespace) whose current set of files changes.
    #[x_kube(validation = Rule::new(crate::etlrun::DATASET_RULE).message("dataset must be a DNS label"))]
    #[schemars(length(min = 1, max = 63))]
    pub dataset: String,
    /// The runs to promote together, as one version (the lake is the source of truth: any run with a
    /// `_SUCCESS`, also of a deleted EtlRun or of the local worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RUN_IDS_RULE).message("each run id must match ^[A-Za-z0-9-][A-Za-z0-9._-]{0,63}$"))]
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 64)))]
    pub run_ids: Option<Vec<String>>,
    /// A rollback instead of runs: current becomes exactly the files of version N, as a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub restore_version: Option<u64>,
    /// How current changes; the Dataset's `spec.promotion.mode` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PromotionMode>,
    /// Why this promotion is asked for (shown to reviewers, kept in the pointer and the audit log).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

/// Where a promotion is. `Promoted`, `Rejected` and `Failed` never change again.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PromotionPhase {
    /// Waiting for the approval annotation; status shows what the reviewer needs.
    AwaitingApproval,
    /// Approved: the promote Job is writing the new version (one per dataset at a time).
    Promoting,
    /// `_LATEST.json` records this promotion.
    Promoted,
    /// A person rejected it: nothing moved.
    Rejected,
    /// The gate refused it (each failed check named), or the Job failed for good.
    Failed,
}

impl PromotionPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, PromotionPhase::Promoted | PromotionPhase::Rejected | PromotionPhase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PromotionPhase::AwaitingApproval => "AwaitingApproval",
            PromotionPhase::Promoting => "Promoting",
            PromotionPhase::Promoted => "Promoted",
            PromotionPhase::Rejected => "Rejected",
            PromotionPhase::Failed => "Failed",
        }
    }
}

impl fmt::Display for PromotionPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run as the reviewer sees it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionRun {
    /// The run id, as under `run_id=…` in the lake.
    pub run_id: String,
    /// What the lake holds for it: `committed`, `quality_failed`, `circuit_breaker`, `unfinished`, `missing`.
    pub state: String,
    /// Records the run read (from its report; unset while the lake holds none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_rows: Option<u64>,
    /// Rows written to silver: what becomes current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_rows: Option<u64>,
    /// Rows held in quarantine with their error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined_rows: Option<u64>,
    /// Exact duplicates and rows out of attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condemned_rows: Option<u64>,
    /// Quarantined rows / input rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_rate: Option<f64>,
    /// Quarantined rows by error type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_types: BTreeMap<String, u64>,
    /// How long the run's worker ran, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

/// What the promotion changes in current.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionChange {
    /// Partitions (`year=YYYY/month=MM`) current does not have yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions_added: Vec<String>,
    /// Partitions of current that get more files (`Append`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions_extended: Vec<String>,
    /// Partitions of current whose files are replaced by the runs' files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions_replaced: Vec<String>,
    /// Partitions that leave current (`ReplaceAll`, or a rollback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions_removed: Vec<String>,
    /// Data files in current before the promotion.
    pub files_before: u64,
    /// Data files in current after it.
    pub files_after: u64,
    /// Rows in current before the promotion.
    pub rows_before: u64,
    /// Rows in current after it.
    pub rows_after: u64,
}

/// A gate check that refused (or would refuse) the promotion, by its stable name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct FailedCheck {
    /// The check's stable name, e.g. `success_marker`, `quarantine_rate`, `key_collision`.
    pub name: String,
    /// What the check found, for the reviewer.
    pub message: String,
}

/// Observed state of a Promotion.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromotionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PromotionPhase>,
    /// The generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Approved`, `Ready` (the gate as previewed, or why it waits), `Promoted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Who created it: the `etl.silverline.dev/created-by` annotation the approval policy records (the
    /// authoritative creator), else the free-text `etl.silverline.dev/requested-by` its creator set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who approved it: the `etl.silverline.dev/approved-by` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Who rejected it: the `etl.silverline.dev/rejected-by` annotation (a rejection wins over an approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
    /// The mode in effect: the spec's, else the Dataset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PromotionMode>,
    /// Each run's metrics, as reviewed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<PromotionRun>,
    /// What changes (or changed) in current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<PromotionChange>,
    /// The version this promotion created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The version current was before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
    /// The gate's checks that refused the promotion (or, while it awaits approval, would refuse it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checks: Vec<FailedCheck>,
    /// The xxh3 hash (16 hex digits) of the contract manifest the Promotion's Jobs apply, frozen at its first
    /// launch: a ConfigMap `{promotion}-contract` that holds another manifest, or is not owned by the Promotion,
    /// is never mounted (the launch fails, `Ready` reason `LaunchFailed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_hash: Option<String>,
    /// The Job of the current (or last) promote attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Promote Jobs launched so far (a contended pointer or a transient failure launches another).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// When the next promote Job may start, after a retryable failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
    /// When the promotion reached `Promoted`, `Rejected` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Promotion {
    pub fn phase(&self) -> Option<PromotionPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// `(who, why)` from the approval annotations.
    pub fn approval(&self) -> Option<(&str, Option<&str>)> {
        Some((self.annotation(ANNOTATION_APPROVED_BY)?, self.annotation(ANNOTATION_APPROVAL_REASON)))
    }

    /// `(who, why)` from the rejection annotations.
    pub fn rejection(&self) -> Option<(&str, Option<&str>)> {
        Some((self.annotation(ANNOTATION_REJECTED_BY)?, self.annotation(ANNOTATION_REJECTION_REASON)))
    }

    pub fn requested_by(&self) -> Option<&str> {
        self.annotation(ANNOTATION_REQUESTED_BY)
    }

    /// The creator for `status.createdBy`: the apiserver's record (`created-by`) where the approval policy
    /// keeps one, else what the creator said (`requested-by`).
    pub fn creator(&self) -> Option<&str> {
        self.annotation(ANNOTATION_CREATED_BY).or_else(|| self.requested_by())
    }
}

/// How a promotion changes the current set of files.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PromotionMode {
    /// The runs' files join the current set (incremental feeds, replays of corrected quarantine rows).
    #[default]
    Append,
    /// For every year/month partition the runs cover, that partition's current files are replaced by the runs'.
    ReplacePartitions,
    /// Current becomes exactly the runs' files (full-snapshot feeds).
    ReplaceAll,
}

impl PromotionMode {
    pub const ALL: [PromotionMode; 3] =
        [PromotionMode::Append, PromotionMode::ReplacePartitions, PromotionMode::ReplaceAll];

    /// The name in manifests and `_LATEST.json`: `Append`, `ReplacePartitions`, `ReplaceAll`.
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionMode::Append => "Append",
            PromotionMode::ReplacePartitions => "ReplacePartitions",
            PromotionMode::ReplaceAll => "ReplaceAll",
        }
    }

    /// The name on the command line: `append`, `replace-partitions`, `replace-all`.
    pub fn cli_name(self) -> &'static str {
        match self {
            PromotionMode::Append => "append",
            PromotionMode::ReplacePartitions => "replace-partitions",
            PromotionMode::ReplaceAll => "replace-all",
        }
    }

    /// Parses either spelling.
    pub fn parse(text: &str) -> Option<PromotionMode> {
        PromotionMode::ALL.into_iter().find(|m| m.as_str() == text || m.cli_name() == text)
    }
}

impl std::fmt::Display for PromotionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Dataset's promotion policy (`spec.promotion`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionPolicy {
    /// How promotions of this dataset change current unless a Promotion says otherwise (default `Append`).
    #[serde(default)]
    pub mode: PromotionMode,
    /// When true, the operator creates a Promotion awaiting approval for every EtlRun of this dataset that
    /// succeeds, so reviewers only have to approve.
    #[serde(default)]
    pub request_on_success: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promotion(spec: serde_json::Value) -> Promotion {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "etl.silverline.dev/v1alpha1", "kind": "Promotion",
            "metadata": {"name": "tx-promo"}, "spec": spec,
        }))
        .expect("a Promotion")
    }

    #[test]
    fn the_cel_rules_use_the_shared_patterns() {
        assert!(PROMOTION_NAME_RULE.contains(crate::names::DNS_LABEL_PATTERN));
        assert!(RUN_IDS_RULE.contains(crate::names::RUN_ID_PATTERN));
    }

    #[test]
    fn a_promotion_names_runs_or_a_version_to_restore_but_not_both() {
        let runs =
            promotion(serde_json::json!({"dataset": "tx", "runIds": ["20240101T000000Z-abc-a1"], "reason": "r"}));
        assert!(kube::core::cel::validate_cel(&runs).is_ok());
        let restore = promotion(serde_json::json!({"dataset": "tx", "restoreVersion": 2, "reason": "r"}));
        assert!(kube::core::cel::validate_cel(&restore).is_ok());
        let both =
            promotion(serde_json::json!({"dataset": "tx", "runIds": ["r1"], "restoreVersion": 2, "reason": "r"}));
        let errors = kube::core::cel::validate_cel(&both).expect_err("both refused");
        assert!(format!("{errors:?}").contains("not both"), "{errors:?}");
        let neither = promotion(serde_json::json!({"dataset": "tx", "reason": "r"}));
        assert!(kube::core::cel::validate_cel(&neither).is_err());
        let bad_run = promotion(serde_json::json!({"dataset": "tx", "runIds": ["../etc"], "reason": "r"}));
        let errors = kube::core::cel::validate_cel(&bad_run).expect_err("bad run id refused");
        assert!(format!("{errors:?}").contains("each run id"), "{errors:?}");
    }

    #[test]
    fn approval_and_rejection_come_from_annotations_and_blank_ones_do_not_count() {
        let mut p = promotion(serde_json::json!({"dataset": "tx", "runIds": ["r1"], "reason": "r"}));
        assert_eq!((p.approval(), p.rejection(), p.requested_by()), (None, None, None));
        p.metadata.annotations = Some(BTreeMap::from([
            (ANNOTATION_APPROVED_BY.to_owned(), "jane".to_owned()),
            (ANNOTATION_APPROVAL_REASON.to_owned(), "looks right".to_owned()),
            (ANNOTATION_REJECTED_BY.to_owned(), " ".to_owned()),
            (ANNOTATION_REQUESTED_BY.to_owned(), "silverline-operator".to_owned()),
        ]));
        assert_eq!(p.approval(), Some(("jane", Some("looks right"))));
        assert_eq!(p.rejection(), None);
        assert_eq!(p.requested_by(), Some("silverline-operator"));
        // The creator is the apiserver's record where the approval policy keeps one, else requested-by.
        assert_eq!(p.creator(), Some("silverline-operator"));
        let recorded = "system:serviceaccount:etl:silverline-operator";
        p.metadata.annotations.get_or_insert_default().insert(ANNOTATION_CREATED_BY.to_owned(), recorded.to_owned());
        assert_eq!(p.creator(), Some(recorded));
    }

    #[test]
    fn modes_parse_from_both_spellings_and_round_trip() {
        for mode in PromotionMode::ALL {
            assert_eq!(PromotionMode::parse(mode.as_str()), Some(mode));
            assert_eq!(PromotionMode::parse(mode.cli_name()), Some(mode));
            let json = serde_json::to_string(&mode).expect("serialize");
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
        }
        assert_eq!(PromotionMode::parse("replace"), None);
        assert_eq!(PromotionMode::default(), PromotionMode::Append);
    }
}
