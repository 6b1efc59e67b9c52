//! `Dataset`: the data contract of one feed — its columns and rules, thresholds, schedule, storage and owners.

use crate::names::{self, InvalidName};
use crate::promotion::PromotionPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// CEL rule on the Dataset's name, which becomes a path segment in the lake: [`names::DNS_LABEL_PATTERN`].
pub const DATASET_NAME_RULE: &str = "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')";

/// The contract of one feed. The worker reads this same manifest from a file (`--contract`).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etl.silverline.dev",
    version = "v1alpha1",
    kind = "Dataset",
    doc = "The data contract of one feed: columns and rules, thresholds, storage and owners.",
    namespaced,
    shortname = "ds",
    status = "DatasetStatus",
    printcolumn = r#"{"name":"Schema","type":"string","jsonPath":".spec.schemaVersion"}"#,
    printcolumn = r#"{"name":"Team","type":"string","jsonPath":".spec.ownership.team"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Last Success","type":"string","jsonPath":".status.lastSuccessfulRunId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(DATASET_NAME_RULE).message("metadata.name must be a DNS label (it becomes a lake path)").field_path(".metadata.name")
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Version of the schema, e.g. `v1`; appears in lake paths as `schema_v=v1`.
    #[schemars(regex(pattern = r"^v[0-9]{1,6}$"))]
    pub schema_version: String,
    /// The columns of the feed, matched to the CSV header by name.
    #[schemars(length(min = 1))]
    pub columns: Vec<ColumnSpec>,
    /// Columns whose values together identify a row; a repeat is a DUPLICATE_KEY_ERROR.
    #[schemars(length(min = 1))]
    pub primary_key: Vec<String>,
    /// A required timestamp column; rows are partitioned by its UTC year and month.
    pub partition_column: String,
    /// The quality gate: a run quarantining more than `maxQuarantineRate` of its rows ends with exit 5, its data
    /// and quarantine kept for review and no `_SUCCESS` (so it can never be promoted).
    #[serde(default)]
    pub quality: QualitySpec,
    /// The circuit breaker: a run stops (exit 4, no `_SUCCESS`) as soon as more than `maxSameErrors` rows fail
    /// with the same error type, rather than quarantining a whole broken feed.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerSpec,
    /// How many times a row may be tried — its first run plus each quarantine replay — before it is condemned
    /// (`MAX_ATTEMPTS_REACHED`). The operator also gives each EtlRun of this dataset at most this many attempts
    /// (Jobs) when an attempt fails in a way worth retrying.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    pub storage: StorageSpec,
    pub ownership: OwnershipSpec,
    /// How promotions change the dataset's current set of files, and whether a successful run requests one.
    #[serde(default)]
    pub promotion: PromotionPolicy,
    /// A cron schedule (UTC) on which this feed is expected to arrive. Recorded for people and tooling only:
    /// the operator does not start runs on a schedule yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

fn default_max_attempts() -> u32 {
    3
}

/// One column of the contract.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ColumnSpec {
    /// Column name, as in the CSV header and in the Parquet output.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Total digits of a decimal (1–38).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u8>,
    /// Digits after the point of a decimal (0–precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u8>,
    /// An empty value in a required column is a NULL_VALUE_ERROR.
    #[serde(default)]
    pub required: bool,
    /// If set, the (trimmed) value must be exactly one of these, case-sensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_values: Option<Vec<String>>,
    /// If set, the (trimmed) value must match this regular expression (anchored by the author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// The logical type of a column.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Decimal,
    Timestamp,
    Date,
    Int64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QualitySpec {
    /// A run whose quarantined / input rows is above this fails the quality gate (exit 5).
    #[serde(default = "default_max_quarantine_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_quarantine_rate: f64,
}

fn default_max_quarantine_rate() -> f64 {
    0.01
}

impl Default for QualitySpec {
    fn default() -> Self {
        Self { max_quarantine_rate: default_max_quarantine_rate() }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// More than this many rows with the same error type stop the run (exit 4).
    #[serde(default = "default_max_same_errors")]
    pub max_same_errors: u64,
    /// Reserved for counting repeated failures of the same kind across runs, e.g. `1h`, `30m`: validated and
    /// kept, but nothing reads it yet. The circuit breaker counts within one worker run, over the whole run.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    pub window: String,
}

fn default_max_same_errors() -> u64 {
    100
}

fn default_window() -> String {
    "1h".to_owned()
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        Self { max_same_errors: default_max_same_errors(), window: default_window() }
    }
}

/// Where the lake lives. Worker CLI flags override each field.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The lake root: a local path, `file:///…` or `s3://bucket/prefix`.
    #[schemars(length(min = 1))]
    pub lake_uri: String,
    /// Custom S3 endpoint for S3-compatible stores (path-style addressing is used with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The S3 region, e.g. `eu-west-1`; unset: the pod's AWS environment decides (`AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]{1,20}(-[a-z0-9]{1,20}){0,5}$"))]
    pub region: Option<String>,
    /// Secret in the same namespace holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`
    /// for temporary credentials); workers get only these keys. Leave unset to use the pod's identity (IRSA / web
    /// identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRef>,
}

impl StorageSpec {
    /// The lake URI forms the worker accepts: `s3://bucket[/prefix]`, `file://…` or a path; a region and a bucket
    /// that cannot name another host, and an endpoint that is an `http://` or `https://` URL.
    pub fn validate(&self) -> Result<(), ContractError> {
        if let Some(region) = &self.region {
            crate::names::check_region(region).map_err(|e| ContractError::Storage {
                field: "region",
                value: region.clone(),
                message: e.to_string(),
            })?;
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ContractError::Storage {
                field: "endpoint",
                value: endpoint.clone(),
                message: "must be an http:// or https:// URL (lower-case scheme)".into(),
            });
        }
        let uri = &self.lake_uri;
        let fail = |message: &str| Err(ContractError::LakeUri { uri: uri.clone(), message: message.to_owned() });
        if let Some(rest) = uri.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            if bucket.is_empty() {
                return fail("names no bucket");
            }
            if let Err(e) = crate::names::check_bucket(bucket) {
                return fail(&e.to_string());
            }
            return Ok(());
        }
        if uri.starts_with("file://") {
            return Ok(());
        }
        if uri.contains("://") {
            return fail("only s3://, file:// and paths are supported");
        }
        if uri.trim().is_empty() {
            return fail("must not be empty");
        }
        Ok(())
    }
}

/// A reference to a Secret in the Dataset's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (in the Dataset's namespace). The operator never reads it; worker pods get its
    /// credential keys by reference (`secretKeyRef`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Who owns the data and whom to call.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OwnershipSpec {
    /// The team that owns the feed and answers for its data.
    #[schemars(length(min = 1))]
    pub team: String,
    /// The person who decides about the data's meaning and quality (e.g. who approves its promotions).
    #[schemars(length(min = 1))]
    pub steward: String,
    /// Escalation contact (pager, channel or e-mail).
    #[schemars(length(min = 1))]
    pub escalation: String,
}

/// Observed state of a Dataset, written by the operator.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// The generation of the spec the `Valid` condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`: whether the contract passes the checks the apiserver's schema cannot express (set by the operator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Run id of the last EtlRun that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_run_id: Option<String>,
    /// When that run's `_SUCCESS` was verified: the dataset's freshness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The names of the columns the worker's quarantine and condemned files hold beside the contract's own (their
/// meaning: README.md, "Layout of the lake"). They are a public interface — triage queries, replays and readers
/// name them — so they are spelled here once.
pub mod side_columns {
    /// The object the record was read from.
    pub const SOURCE_URI: &str = "source_uri";
    /// The record's 1-based number in its object, header excluded.
    pub const RECORD_NUMBER: &str = "record_number";
    /// The line the record starts on.
    pub const LINE_NUMBER: &str = "line_number";
    /// What was wrong (null for a condemned exact duplicate).
    pub const ERROR_TYPE: &str = "error_type";
    /// The contract column the error is about, if one.
    pub const ERROR_COLUMN: &str = "error_column";
    /// What was wrong and where, for a person.
    pub const ERROR_MESSAGE: &str = "error_message";
    /// How many runs have seen the record (replays count up).
    pub const ATTEMPT_COUNT: &str = "attempt_count";
    /// The record's stable hash (XXH3-128, kept across replays).
    pub const ROW_HASH: &str = "row_hash";
    /// The whole record as CSV text.
    pub const RAW_RECORD: &str = "raw_record";
    /// The record byte for byte when it holds bytes that are not UTF-8.
    pub const RAW_RECORD_BYTES: &str = "raw_record_bytes";
    /// Why a condemned row was condemned (condemned files only).
    pub const CONDEMNED_REASON: &str = "condemned_reason";
}

/// Column names the worker's quarantine and condemned files use for their own metadata: a contract column of
/// one of these names would collide with them, so the contract is refused here (and the worker never meets it).
pub const RESERVED_COLUMNS: [&str; 11] = [
    side_columns::SOURCE_URI,
    side_columns::RECORD_NUMBER,
    side_columns::LINE_NUMBER,
    side_columns::ERROR_TYPE,
    side_columns::ERROR_COLUMN,
    side_columns::ERROR_MESSAGE,
    side_columns::ATTEMPT_COUNT,
    side_columns::ROW_HASH,
    side_columns::RAW_RECORD,
    side_columns::RAW_RECORD_BYTES,
    side_columns::CONDEMNED_REASON,
];

/// What is wrong with a contract, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractError {
    #[error("the manifest is not valid YAML for a Dataset: {0}")]
    Parse(String),
    #[error("the manifest is a {found}, expected apiVersion etl.silverline.dev/v1alpha1, kind Dataset")]
    WrongKind { found: String },
    #[error("metadata.name is missing")]
    MissingName,
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error("spec.columns: column {0:?} is declared twice")]
    DuplicateColumn(String),
    #[error("spec.columns[{index}].name must not be empty or contain control characters")]
    BadColumnName { index: usize },
    #[error("spec.columns[{column}]: {message}")]
    Column { column: String, message: String },
    #[error("spec.primaryKey: {0}")]
    PrimaryKey(String),
    #[error("spec.partitionColumn: {0}")]
    PartitionColumn(String),
    #[error("spec.quality.maxQuarantineRate must be between 0 and 1, got {0}")]
    QuarantineRate(f64),
    #[error("spec.circuitBreaker.window {0:?} is not a duration such as 1h, 30m or 1h30m")]
    Window(String),
    #[error("spec.maxAttempts must be at least 1")]
    MaxAttempts,
    #[error("spec.columns[{0}]: the name is reserved for quarantine metadata; rename the column")]
    ReservedColumn(String),
    #[error("spec.storage.lakeUri {uri:?}: {message}")]
    LakeUri { uri: String, message: String },
    #[error("spec.storage.{field} {value:?}: {message}")]
    Storage { field: &'static str, value: String, message: String },
}

impl Dataset {
    /// Parses a Dataset manifest (YAML or JSON) and validates it.
    pub fn from_manifest(text: &str) -> Result<Dataset, ContractError> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ContractError::Parse(e.to_string()))?;
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        if api_version != "etl.silverline.dev/v1alpha1" || kind != "Dataset" {
            return Err(ContractError::WrongKind { found: format!("{kind:?} of apiVersion {api_version:?}") });
        }
        let dataset: Dataset = serde_yaml::from_value(value).map_err(|e| ContractError::Parse(e.to_string()))?;
        dataset.validate()?;
        Ok(dataset)
    }

    /// The dataset's name, checked to be safe as a path segment.
    pub fn checked_name(&self) -> Result<&str, ContractError> {
        let name = self.metadata.name.as_deref().ok_or(ContractError::MissingName)?;
        names::check_dataset_name(name)?;
        Ok(name)
    }

    /// Checks everything the apiserver's schema cannot express.
    pub fn validate(&self) -> Result<(), ContractError> {
        self.checked_name()?;
        self.spec.validate()
    }
}

impl DatasetSpec {
    pub fn validate(&self) -> Result<(), ContractError> {
        names::check_schema_version(&self.schema_version)?;
        let mut seen = HashSet::new();
        for (index, column) in self.columns.iter().enumerate() {
            if column.name.trim().is_empty() || column.name.chars().any(char::is_control) {
                return Err(ContractError::BadColumnName { index });
            }
            if !seen.insert(column.name.as_str()) {
                return Err(ContractError::DuplicateColumn(column.name.clone()));
            }
            if RESERVED_COLUMNS.contains(&column.name.as_str()) {
                return Err(ContractError::ReservedColumn(column.name.clone()));
            }
            column.validate()?;
        }
        if self.columns.is_empty() {
            return Err(ContractError::Column {
                column: "*".into(),
                message: "at least one column is required".into(),
            });
        }
        if self.primary_key.is_empty() {
            return Err(ContractError::PrimaryKey("at least one column is required".into()));
        }
        let mut key_seen = HashSet::new();
        for key in &self.primary_key {
            let column = self
                .column(key)
                .ok_or_else(|| ContractError::PrimaryKey(format!("{key:?} is not a declared column")))?;
            if !column.required {
                return Err(ContractError::PrimaryKey(format!("{key:?} must be a required column")));
            }
            if !key_seen.insert(key) {
                return Err(ContractError::PrimaryKey(format!("{key:?} is listed twice")));
            }
        }
        let partition = self.column(&self.partition_column).ok_or_else(|| {
            ContractError::PartitionColumn(format!("{:?} is not a declared column", self.partition_column))
        })?;
        if partition.column_type != ColumnType::Timestamp || !partition.required {
            return Err(ContractError::PartitionColumn(format!(
                "{:?} must be a required timestamp column",
                self.partition_column
            )));
        }
        let rate = self.quality.max_quarantine_rate;
        if !(0.0..=1.0).contains(&rate) {
            return Err(ContractError::QuarantineRate(rate));
        }
        parse_window(&self.circuit_breaker.window)?;
        if self.max_attempts == 0 {
            return Err(ContractError::MaxAttempts);
        }
        self.storage.validate()
    }

    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }
}

impl ColumnSpec {
    fn validate(&self) -> Result<(), ContractError> {
        let fail = |message: String| Err(ContractError::Column { column: self.name.clone(), message });
        match (self.column_type, self.precision, self.scale) {
            (ColumnType::Decimal, Some(p), Some(s)) => {
                if !(1..=38).contains(&p) {
                    return fail(format!("precision must be between 1 and 38, got {p}"));
                }
                if s > p {
                    return fail(format!("scale {s} must not exceed precision {p}"));
                }
            }
            (ColumnType::Decimal, _, _) => return fail("a decimal needs precision and scale".into()),
            (_, None, None) => {}
            (other, _, _) => return fail(format!("precision and scale apply only to decimals, not {other:?}")),
        }
        if let Some(pattern) = &self.pattern
            && let Err(e) = regex::Regex::new(pattern)
        {
            return fail(format!("pattern does not compile: {e}"));
        }
        if let Some(values) = &self.allowed_values
            && values.is_empty()
        {
            return fail("allowedValues must not be empty when set".into());
        }
        Ok(())
    }
}

/// Parses a window such as `1h`, `30m`, `45s` or `1h30m`.
pub fn parse_window(text: &str) -> Result<Duration, ContractError> {
    let bad = || ContractError::Window(text.to_owned());
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0u64;
    let mut number = String::new();
    let mut last_unit = 0u8;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let (rank, factor) = match c {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(bad()),
        };
        if number.is_empty() || rank <= last_unit {
            return Err(bad());
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = total.checked_add(n.checked_mul(factor).ok_or_else(bad)?).ok_or_else(bad)?;
        number.clear();
        last_unit = rank;
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/datasets/transactions.yaml");

    #[test]
    fn the_shipped_transactions_contract_is_valid() {
        let ds = Dataset::from_manifest(EXAMPLE).expect("example contract parses");
        assert_eq!(ds.checked_name(), Ok("transactions"));
        assert_eq!(ds.spec.columns.len(), 5);
        assert_eq!(ds.spec.primary_key, vec!["TransactionID".to_owned()]);
        assert_eq!(ds.spec.max_attempts, 3);
    }

    #[test]
    fn defaults_apply_when_thresholds_are_omitted() {
        let text = EXAMPLE
            .lines()
            .filter(|l| !l.contains("maxQuarantineRate") && !l.contains("maxSameErrors") && !l.contains("window:"))
            .collect::<Vec<_>>()
            .join("\n");
        let ds = Dataset::from_manifest(&text).expect("parses");
        assert_eq!(ds.spec.quality.max_quarantine_rate, 0.01);
        assert_eq!(ds.spec.circuit_breaker.max_same_errors, 100);
        assert_eq!(ds.spec.circuit_breaker.window, "1h");
    }

    fn mutated(f: impl FnOnce(&mut Dataset)) -> Result<(), ContractError> {
        let mut ds = Dataset::from_manifest(EXAMPLE).expect("parses");
        f(&mut ds);
        ds.validate()
    }

    #[test]
    fn invalid_contracts_are_rejected_with_the_field_named() {
        type Mutation = Box<dyn FnOnce(&mut Dataset)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|d| d.metadata.name = Some("../etc".into()))),
            ("schemaVersion", Box::new(|d| d.spec.schema_version = "1".into())),
            ("twice", Box::new(|d| d.spec.columns[1].name = "TransactionID".into())),
            ("primaryKey", Box::new(|d| d.spec.primary_key = vec!["Nope".into()])),
            ("partitionColumn", Box::new(|d| d.spec.partition_column = "Currency".into())),
            ("maxQuarantineRate", Box::new(|d| d.spec.quality.max_quarantine_rate = 1.5)),
            ("window", Box::new(|d| d.spec.circuit_breaker.window = "1d".into())),
            ("maxAttempts", Box::new(|d| d.spec.max_attempts = 0)),
            ("precision", Box::new(|d| d.spec.columns[2].precision = None)),
            ("pattern", Box::new(|d| d.spec.columns[0].pattern = Some("(".into()))),
            ("reserved", Box::new(|d| d.spec.columns[1].name = "error_type".into())),
            ("lakeUri", Box::new(|d| d.spec.storage.lake_uri = "gs://bucket/lake".into())),
            ("lakeUri", Box::new(|d| d.spec.storage.lake_uri = "s3:///lake".into())),
            // Names the S3 client puts into host names and URLs: never another host.
            ("lakeUri", Box::new(|d| d.spec.storage.lake_uri = "s3://evil.example#/x".into())),
            ("lakeUri", Box::new(|d| d.spec.storage.lake_uri = "s3://Lake_Bucket/x".into())),
            ("region", Box::new(|d| d.spec.storage.region = Some("attacker.example/".into()))),
            ("region", Box::new(|d| d.spec.storage.region = Some("eu-west-1.evil.com".into()))),
            ("endpoint", Box::new(|d| d.spec.storage.endpoint = Some("HTTP://minio:9000".into()))),
            ("endpoint", Box::new(|d| d.spec.storage.endpoint = Some("minio:9000".into()))),
        ];
        for (field, mutate) in cases {
            let err = mutated(mutate).expect_err(field);
            let text = err.to_string();
            let named = text.contains(field) || (field == "twice" && text.contains("declared twice"));
            assert!(named, "error for {field} should name it: {text}");
        }
    }

    #[test]
    fn every_reserved_column_name_is_refused_so_valid_never_meets_a_worker_exit_2() {
        for reserved in RESERVED_COLUMNS {
            let err = mutated(|d| d.spec.columns[1].name = reserved.into()).expect_err(reserved);
            assert_eq!(err, ContractError::ReservedColumn(reserved.into()));
        }
        for good in ["s3://lake", "s3://lake/prefix/", "file:///tmp/lake", "/tmp/lake", "lake"] {
            assert!(mutated(|d| d.spec.storage.lake_uri = good.into()).is_ok(), "{good}");
        }
        assert!(mutated(|d| d.spec.storage.region = Some("eu-west-1".into())).is_ok());
        assert!(mutated(|d| d.spec.storage.endpoint = Some("https://s3.example.com:9000".into())).is_ok());
    }

    #[test]
    fn a_manifest_of_another_kind_is_refused() {
        let other = EXAMPLE.replace("kind: Dataset", "kind: EtlRun");
        assert!(matches!(Dataset::from_manifest(&other), Err(ContractError::WrongKind { .. })));
    }

    #[test]
    fn the_cel_name_rule_uses_the_dns_label_pattern_and_rejects_dotted_names() {
        assert!(DATASET_NAME_RULE.contains(names::DNS_LABEL_PATTERN));
        let ds = Dataset::from_manifest(EXAMPLE).expect("parses");
        assert!(kube::core::cel::validate_cel(&ds).is_ok());
        let mut dotted = ds.clone();
        dotted.metadata.name = Some("tx.v2".into());
        let errors = kube::core::cel::validate_cel(&dotted).expect_err("a dotted name is refused");
        assert!(format!("{errors:?}").contains("metadata.name must be a DNS label"), "{errors:?}");
    }

    #[test]
    fn windows_parse_as_durations() {
        assert_eq!(parse_window("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_window("1h30m").ok(), Some(Duration::from_secs(5400)));
        assert_eq!(parse_window("45s").ok(), Some(Duration::from_secs(45)));
        for bad in ["", "h", "30m1h", "1x", "0s", "10"] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }
}
