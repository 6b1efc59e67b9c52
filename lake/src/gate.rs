//! The gate: everything checked again at promotion time before the pointer may move. Each check has a stable
//! name used in messages, audit records and exit messages:
//!
//! | check | refuses |
//! |---|---|
//! | `success_marker` | a run without `_SUCCESS` (quality-failed, circuit breaker, unfinished, missing), or whose `_SUCCESS` is not a valid run report, is of another run or dataset, or names another schema version than the `schema_v=` directory it lies in |
//! | `file_location` | a silver file in `_SUCCESS` that lies outside that run's own prefix (a tampered `_SUCCESS` must not pull in other objects) |
//! | `file_integrity` | a listed silver file that is missing or whose size or SHA-256 differs (bytes streamed, never buffered whole) |
//! | `quarantine_rate` | a run whose quarantine rate is above the Dataset's `quality.maxQuarantineRate` |
//! | `schema_version` | a run written under another `schema_v` than the Dataset's `schemaVersion` |
//! | `already_current` | `Append` of a run whose files are already current |
//! | `key_collision` | rows whose primary key stays current in a file the promotion keeps (any partition: all current files for `Append`, those outside the replaced partitions for `ReplacePartitions`), or is repeated across the runs promoted together |
//! | `restore_version` | a rollback to a version that does not exist, is already current, or whose files are gone or altered |

use crate::audit::{FailedCheck, RunMetrics};
use crate::layout::{Area, DatasetLayout, is_part_name, is_partition_name};
use crate::manifest::ManifestFile;
use crate::parquet_io::LakeParquetReader;
use crate::runs::RunFinding;
use crate::store::Lake;
use crate::{Error, Result};
use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use sha2::{Digest, Sha256};
use silverline_crds::report::RunReport;
use silverline_crds::{Dataset, PromotionMode};
use std::collections::{BTreeSet, HashSet};

/// A gate check, by its stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    SuccessMarker,
    FileLocation,
    FileIntegrity,
    QuarantineRate,
    SchemaVersion,
    AlreadyCurrent,
    KeyCollision,
    RestoreVersion,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::SuccessMarker => "success_marker",
            Check::FileLocation => "file_location",
            Check::FileIntegrity => "file_integrity",
            Check::QuarantineRate => "quarantine_rate",
            Check::SchemaVersion => "schema_version",
            Check::AlreadyCurrent => "already_current",
            Check::KeyCollision => "key_collision",
            Check::RestoreVersion => "restore_version",
        }
    }
}

/// One failed check and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFailure {
    pub check: Check,
    pub message: String,
}

impl GateFailure {
    fn new(check: Check, message: impl Into<String>) -> GateFailure {
        GateFailure { check, message: message.into() }
    }

    pub fn to_record(&self) -> FailedCheck {
        FailedCheck { check: self.check.name().to_owned(), message: self.message.clone() }
    }
}

impl std::fmt::Display for GateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.check.name(), self.message)
    }
}

/// The parts of a Dataset the gate needs.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRules {
    pub dataset: String,
    pub schema_version: String,
    pub max_quarantine_rate: f64,
    pub primary_key: Vec<String>,
}

impl GateRules {
    pub fn of(dataset: &Dataset) -> Result<GateRules> {
        let name = dataset
            .checked_name()
            .map_err(|e| Error::Inconsistent { uri: "the Dataset".into(), message: e.to_string() })?;
        Ok(GateRules {
            dataset: name.to_owned(),
            schema_version: dataset.spec.schema_version.clone(),
            max_quarantine_rate: dataset.spec.quality.max_quarantine_rate,
            primary_key: dataset.spec.primary_key.clone(),
        })
    }
}

/// How deep the gate looks: `Full` at promotion time; `Quick` (no byte reads: no `file_integrity`, no
/// `key_collision`) for the operator's read-only preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Quick,
    Full,
}

/// What the gate found for a set of runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Review {
    pub metrics: Vec<RunMetrics>,
    /// The runs' silver files, from their `_SUCCESS`.
    pub files: Vec<ManifestFile>,
    pub failures: Vec<GateFailure>,
}

/// The checks on one run's `_SUCCESS` that need nothing but the report (pure).
pub fn check_report(rules: &GateRules, run_id: &str, report: &RunReport) -> Vec<GateFailure> {
    let mut failures = Vec::new();
    if report.run_id != run_id || report.dataset != rules.dataset || report.outcome != "success" {
        failures.push(GateFailure::new(
            Check::SuccessMarker,
            format!(
                "run {run_id}: _SUCCESS is of run {:?} of dataset {:?} with outcome {:?}",
                report.run_id, report.dataset, report.outcome
            ),
        ));
    }
    if report.schema_v != rules.schema_version {
        failures.push(GateFailure::new(
            Check::SchemaVersion,
            format!(
                "run {run_id} was written with schema {}, the dataset is at {}",
                report.schema_v, rules.schema_version
            ),
        ));
    }
    // _SUCCESS is what every other check trusts: its figures must at least agree with each other and with the
    // files it lists (whose bytes file_integrity checks, and whose row counts verify_file reads in their footers).
    let counted = report.valid_rows_count + report.quarantined_rows_count + report.condemned_rows_count;
    let plain = silverline_crds::report::rate(report.quarantined_rows_count, report.input_rows);
    let silver_rows: u64 = report.files.iter().filter(|f| f.area == Area::Silver.as_str()).map(|f| f.rows).sum();
    let gated_in_range =
        report.gated_quarantine_rate.is_none_or(|g| (0.0..=report.quarantine_rate + 1e-9).contains(&g));
    let inconsistent = [
        (counted != report.input_rows).then(|| {
            format!(
                "valid {} + quarantined {} + condemned {} rows is not its {} input rows",
                report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count, report.input_rows
            )
        }),
        ((report.quarantine_rate - plain).abs() > 1e-9 || !gated_in_range).then(|| {
            format!(
                "its quarantine rate {} (gated {:?}) is not its quarantined / input rows ({plain})",
                report.quarantine_rate, report.gated_quarantine_rate
            )
        }),
        (silver_rows != report.valid_rows_count).then(|| {
            format!("its silver files hold {silver_rows} rows, not its {} valid rows", report.valid_rows_count)
        }),
    ];
    for message in inconsistent.into_iter().flatten() {
        failures
            .push(GateFailure::new(Check::SuccessMarker, format!("run {run_id}: _SUCCESS does not add up: {message}")));
    }
    // The same number the worker's quality gate judged: for a replay, rows failing anew, not rows failing again.
    let rate = report.gated_rate();
    if rate.is_nan() || rate > rules.max_quarantine_rate {
        let what = if report.gated_quarantine_rate.is_some_and(|g| g != report.quarantine_rate) {
            "rate of rows failing anew"
        } else {
            "quarantine rate"
        };
        failures.push(GateFailure::new(
            Check::QuarantineRate,
            format!("run {run_id}: {what} {rate:.4} is above maxQuarantineRate {}", rules.max_quarantine_rate),
        ));
    }
    failures
}

/// The run's silver files as manifest entries, each checked to lie inside the run's own prefix (pure): the
/// directory `schema_v={schema_v}/run_id={run_id}` its `_SUCCESS` was found in, whatever schema the report names.
/// A `_SUCCESS` names files by URI; `lake_uris` are the roots it may be relative to (the one recorded in the
/// report, and the lake's URI today).
pub fn run_files(
    rules: &GateRules,
    run_id: &str,
    schema_v: &str,
    report: &RunReport,
    lake_uris: &[&str],
) -> Result<Vec<ManifestFile>, GateFailure> {
    let layout =
        DatasetLayout::new(&rules.dataset).map_err(|e| GateFailure::new(Check::FileLocation, e.to_string()))?;
    let prefix = layout
        .run_prefix(Area::Silver, schema_v, run_id)
        .map_err(|e| GateFailure::new(Check::FileLocation, format!("run {run_id}: {e}")))?;
    let outside = |key: &str| {
        GateFailure::new(Check::FileLocation, format!("run {run_id}: {key} lies outside the run's prefix {prefix}/"))
    };
    let mut files = Vec::new();
    for record in report.files.iter().filter(|f| f.area == Area::Silver.as_str()) {
        let relative = lake_uris
            .iter()
            .find_map(|root| record.key.strip_prefix(&format!("{}/", root.trim_end_matches('/'))))
            .ok_or_else(|| outside(&record.key))?;
        let rest = relative.strip_prefix(&format!("{prefix}/")).ok_or_else(|| outside(&record.key))?;
        let (partition, name) = rest.rsplit_once('/').ok_or_else(|| outside(&record.key))?;
        if !is_partition_name(partition) || !is_part_name(name) {
            return Err(outside(&record.key));
        }
        files.push(ManifestFile {
            partition: partition.to_owned(),
            key: relative.to_owned(),
            run_id: run_id.to_owned(),
            rows: record.rows,
            bytes: record.bytes,
            sha256: record.sha256.clone(),
        });
    }
    Ok(files)
}

/// `Append` of a run whose files are already current (pure).
pub fn check_already_current(current: &[ManifestFile], run_ids: &[String], mode: PromotionMode) -> Vec<GateFailure> {
    if mode != PromotionMode::Append {
        return Vec::new();
    }
    let current_runs: BTreeSet<&str> = current.iter().map(|f| f.run_id.as_str()).collect();
    run_ids
        .iter()
        .filter(|r| current_runs.contains(r.as_str()))
        .map(|r| GateFailure::new(Check::AlreadyCurrent, format!("run {r} is already part of current")))
        .collect()
}

/// Streams an object and compares its size and SHA-256 with what its manifest entry says.
pub async fn verify_file(lake: &Lake, file: &ManifestFile) -> Result<Option<GateFailure>> {
    let path = lake.path(&file.key);
    let uri = lake.uri_of(&path);
    let got = match lake.store.get(&path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => {
            return Ok(Some(GateFailure::new(Check::FileIntegrity, format!("{uri} is missing"))));
        }
        Err(e) => return Err(crate::StorageError::from_store(e, &uri).into()),
    };
    if got.meta.size != file.bytes {
        return Ok(Some(GateFailure::new(
            Check::FileIntegrity,
            format!("{uri} has {} bytes, _SUCCESS lists {}", got.meta.size, file.bytes),
        )));
    }
    let mut hasher = Sha256::new();
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.map_err(|e| crate::StorageError::from_store(e, &uri))?);
    }
    let sha = hex::encode(hasher.finalize());
    if sha != file.sha256 {
        return Ok(Some(GateFailure::new(
            Check::FileIntegrity,
            format!("{uri} has SHA-256 {sha}, _SUCCESS lists {}", file.sha256),
        )));
    }
    // The bytes are the ones _SUCCESS lists; so must its row count be (the manifest's totals are summed from it).
    let reader = LakeParquetReader::new(lake.store.clone(), path.clone(), file.bytes);
    let rows = match ParquetRecordBatchStreamBuilder::new(reader).await {
        Ok(builder) => builder.metadata().file_metadata().num_rows(),
        Err(e) => return Ok(Some(GateFailure::new(Check::FileIntegrity, format!("{uri} is not Parquet: {e}")))),
    };
    if u64::try_from(rows).ok() != Some(file.rows) {
        return Ok(Some(GateFailure::new(
            Check::FileIntegrity,
            format!("{uri} holds {rows} rows, _SUCCESS lists {}", file.rows),
        )));
    }
    Ok(None)
}

/// Verifies files four at a time; returns the failures. (Chunks joined rather than a buffered stream: a
/// stream of closures over borrowed files makes the caller's future not provably `Send`.)
pub async fn verify_files(lake: &Lake, files: &[ManifestFile]) -> Result<Vec<GateFailure>> {
    let mut failures = Vec::new();
    for chunk in files.chunks(4) {
        let found = futures::future::try_join_all(chunk.iter().map(|f| verify_file(lake, f))).await?;
        failures.extend(found.into_iter().flatten());
    }
    Ok(failures)
}

/// How many keys collide, with up to five examples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collisions {
    pub count: u64,
    pub examples: Vec<String>,
}

/// Reads the primary-key columns of some silver files (a projection: only those columns are fetched) and
/// hands each batch's key columns, cast to `types` when given, to `each`.
async fn for_each_key_batch(
    lake: &Lake,
    files: &[ManifestFile],
    key_columns: &[String],
    mut each: impl FnMut(&[ArrayRef]) -> Result<()>,
) -> Result<()> {
    for file in files {
        let path = lake.path(&file.key);
        let uri = lake.uri_of(&path);
        let broken = |message: String| Error::Inconsistent { uri: uri.clone(), message };
        let reader = LakeParquetReader::new(lake.store.clone(), path.clone(), file.bytes);
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|e| broken(e.to_string()))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), key_columns.iter().map(String::as_str));
        let mut stream = builder.with_projection(mask).build().map_err(|e| broken(e.to_string()))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| broken(e.to_string()))?;
            let columns = key_columns
                .iter()
                .map(|name| batch.column_by_name(name).cloned().ok_or_else(|| broken(format!("no key column {name}"))))
                .collect::<Result<Vec<_>>>()?;
            each(&columns)?;
        }
    }
    Ok(())
}

fn render_key(columns: &[ArrayRef], row: usize, names: &[String]) -> String {
    names
        .iter()
        .zip(columns)
        .map(|(name, column)| {
            let value = arrow::util::display::array_value_to_string(column.as_ref(), row).unwrap_or_default();
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Counts the incoming rows whose primary key is also in a file that stays current (`kept`, in any partition:
/// a key is unique across the dataset, as the worker's duplicate-key check is across a run), or repeats a key of
/// another incoming run. Only the incoming keys are held in memory; the kept files' keys are streamed.
pub async fn key_collisions(
    lake: &Lake,
    primary_key: &[String],
    kept: &[ManifestFile],
    incoming: &[ManifestFile],
) -> Result<Collisions> {
    let mut converter: Option<(RowConverter, Vec<DataType>)> = None;
    let mut encode = |columns: &[ArrayRef]| -> Result<arrow::row::Rows> {
        let broken =
            |e: arrow::error::ArrowError| Error::Inconsistent { uri: "key columns".into(), message: e.to_string() };
        if converter.is_none() {
            let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
            let fields = types.iter().cloned().map(SortField::new).collect();
            converter = Some((RowConverter::new(fields).map_err(broken)?, types));
        }
        let Some((converter, types)) = &converter else {
            return Err(Error::Inconsistent { uri: "key columns".into(), message: "no row converter".into() });
        };
        let cast = columns
            .iter()
            .zip(types)
            .map(|(c, t)| if c.data_type() == t { Ok(c.clone()) } else { arrow::compute::cast(c, t) })
            .collect::<Result<Vec<_>, _>>()
            .map_err(broken)?;
        converter.convert_columns(&cast).map_err(broken)
    };
    // The incoming runs' keys go first so that the converter takes their types.
    let mut seen_incoming: HashSet<Vec<u8>> = HashSet::new();
    let mut collisions = Collisions::default();
    for_each_key_batch(lake, incoming, primary_key, |columns| {
        let rows = encode(columns)?;
        for i in 0..rows.num_rows() {
            let key = rows.row(i).as_ref().to_vec();
            if !seen_incoming.insert(key.clone()) {
                collisions.count += 1;
                if collisions.examples.len() < 5 {
                    collisions.examples.push(render_key(columns, i, primary_key));
                }
            }
        }
        Ok(())
    })
    .await?;
    let mut current_keys: HashSet<Vec<u8>> = HashSet::new();
    for_each_key_batch(lake, kept, primary_key, |columns| {
        let rows = encode(columns)?;
        for i in 0..rows.num_rows() {
            let row = rows.row(i);
            let key = row.as_ref();
            if seen_incoming.contains(key) && current_keys.insert(key.to_vec()) {
                collisions.count += 1;
                if collisions.examples.len() < 5 {
                    collisions.examples.push(render_key(columns, i, primary_key));
                }
            }
        }
        Ok(())
    })
    .await?;
    Ok(collisions)
}

/// Reviews the runs of a promotion: markers, reports, file locations and, at `Full` depth, file bytes and
/// key collisions against `current`.
pub async fn review_runs(
    lake: &Lake,
    rules: &GateRules,
    run_ids: &[String],
    current: &[ManifestFile],
    mode: PromotionMode,
    depth: Depth,
) -> Result<Review> {
    let mut review = Review::default();
    let lake_uri = lake.uri.clone();
    for run_id in run_ids {
        let Located { schema, finding } = find_run_any_schema(lake, rules, run_id).await?;
        let finding = match finding {
            Ok(finding) => finding,
            Err(e) => {
                review.metrics.push(RunMetrics::of(run_id, "inconsistent", None));
                review.failures.push(GateFailure::new(Check::SuccessMarker, format!("run {run_id}: {e}")));
                continue;
            }
        };
        let report = match &finding {
            RunFinding::Success { report, .. } => Some(report.as_ref()),
            RunFinding::QualityReport { report, .. } => Some(report.as_ref()),
            _ => None,
        };
        review.metrics.push(RunMetrics::of(run_id, finding.state(), report));
        match &finding {
            RunFinding::Success { report, uri } => {
                review.failures.extend(check_report(rules, run_id, report));
                if report.schema_v != schema {
                    review.failures.push(GateFailure::new(
                        Check::SuccessMarker,
                        format!(
                            "run {run_id}: {uri} lies under schema_v={schema} but names schema {}",
                            report.schema_v
                        ),
                    ));
                }
                match run_files(rules, run_id, &schema, report, &[report.lake_uri.as_str(), lake_uri.as_str()]) {
                    Ok(files) => review.files.extend(files),
                    Err(failure) => review.failures.push(failure),
                }
            }
            RunFinding::QualityReport { uri, .. } => review.failures.push(GateFailure::new(
                Check::SuccessMarker,
                format!("run {run_id} failed its quality gate: the lake holds {uri}, no _SUCCESS"),
            )),
            RunFinding::CircuitBreaker { uri } => review.failures.push(GateFailure::new(
                Check::SuccessMarker,
                format!("run {run_id} stopped on its circuit breaker: the lake holds {uri}, no _SUCCESS"),
            )),
            RunFinding::Claimed => review.failures.push(GateFailure::new(
                Check::SuccessMarker,
                format!("run {run_id} is unfinished (or still running): the lake holds _RUN.json, no _SUCCESS"),
            )),
            RunFinding::Nothing => review.failures.push(GateFailure::new(
                Check::SuccessMarker,
                format!("run {run_id}: the lake holds nothing under that run id"),
            )),
        }
    }
    review.failures.extend(check_already_current(current, run_ids, mode));
    if depth == Depth::Full {
        review.failures.extend(verify_files(lake, &review.files).await?);
        let clean = review.failures.is_empty();
        if clean && !rules.primary_key.is_empty() {
            let kept = crate::plan::kept_files(current, &review.files, mode);
            let found = key_collisions(lake, &rules.primary_key, &kept, &review.files).await?;
            if found.count > 0 {
                review.failures.push(GateFailure::new(
                    Check::KeyCollision,
                    format!(
                        "{} row(s) have a primary key that stays current in another file of the dataset, in any \
                         partition (or is repeated across the runs), e.g. {}",
                        found.count,
                        found.examples.join("; ")
                    ),
                ));
            }
        }
    }
    Ok(review)
}

/// One run id as the gate found it: the `schema_v=` directory it lies in (the Dataset's when nothing was found),
/// and its markers — or, when one of them cannot be trusted (not a valid run report, or of another run id), why.
struct Located {
    schema: String,
    finding: Result<RunFinding>,
}

/// Looks for a run under the Dataset's schema version, then under any other one (so that a run of an older
/// schema is refused by `schema_version`, not reported missing). A marker that cannot be trusted is a finding for
/// the gate to refuse (`success_marker`), not an error of the promotion; a storage failure is.
async fn find_run_any_schema(lake: &Lake, rules: &GateRules, run_id: &str) -> Result<Located> {
    let find = |schema: String| async move {
        match lake.find_run(&rules.dataset, &schema, run_id).await {
            Ok(finding) => Ok(Located { schema, finding: Ok(finding) }),
            Err(e) if e.is_unreadable_document() => Ok(Located { schema, finding: Err(e) }),
            Err(e) => Err(e),
        }
    };
    let found = find(rules.schema_version.clone()).await?;
    if !matches!(found.finding, Ok(RunFinding::Nothing)) {
        return Ok(found);
    }
    let layout = DatasetLayout::new(&rules.dataset)?;
    let (dirs, _) = lake.list_dir(&lake.path(&layout.area(Area::Silver))).await?;
    for dir in dirs {
        let Some(schema) = dir.filename().and_then(|d| d.strip_prefix("schema_v=")).map(str::to_owned) else {
            continue;
        };
        if schema == rules.schema_version || silverline_crds::names::check_schema_version(&schema).is_err() {
            continue;
        }
        let other = find(schema).await?;
        if !matches!(other.finding, Ok(RunFinding::Nothing)) {
            return Ok(other);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use silverline_crds::report::FileRecord;

    fn rules() -> GateRules {
        GateRules {
            dataset: "tx".into(),
            schema_version: "v1".into(),
            max_quarantine_rate: 0.01,
            primary_key: vec!["id".into()],
        }
    }

    fn report(run_id: &str, files: &[&str]) -> RunReport {
        let value = serde_json::json!({
            "outcome": "success", "run_id": run_id, "dataset": "tx", "schema_v": "v1", "lake_uri": "file:///lake",
            "input_uri": "/in.csv", "input_checksum": "00", "inputs": [], "worker_version": "0.1.0", "git_sha": "x",
            "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:01Z", "duration_seconds": 1.0,
            "input_rows": 100, "valid_rows_count": 100, "quarantined_rows_count": 0, "condemned_rows_count": 0,
            "quarantine_rate": 0.0, "error_type_distribution": {}, "condemned_reason_distribution": {},
            "avg_attempt_count": 0.0, "duplicate_detection_rate": 0.0, "auto_condemnation_rate": 0.0, "files": []
        });
        let mut report: RunReport = serde_json::from_value(value).expect("report");
        report.files = files
            .iter()
            .map(|key| FileRecord { key: (*key).into(), area: "silver".into(), rows: 1, bytes: 2, sha256: "s".into() })
            .collect();
        report
    }

    /// A consistent report: `valid` rows in one silver file, `quarantined` more in input.
    fn counted(valid: u64, quarantined: u64) -> RunReport {
        let mut r =
            report("r1", &["file:///lake/silver/tx/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet"]);
        r.files[0].rows = valid;
        r.input_rows = valid + quarantined;
        r.valid_rows_count = valid;
        r.quarantined_rows_count = quarantined;
        r.quarantine_rate = quarantined as f64 / (valid + quarantined) as f64;
        r
    }

    #[test]
    fn report_checks_name_what_failed() {
        type Case = (&'static str, fn() -> RunReport, Vec<Check>);
        let cases: [Case; 11] = [
            ("clean", || counted(100, 0), vec![]),
            ("over the threshold", || counted(98, 2), vec![Check::QuarantineRate]),
            (
                "a replay judged by its rows failing anew",
                || RunReport { gated_quarantine_rate: Some(0.0), ..counted(50, 50) },
                vec![],
            ),
            (
                "a replay with too many rows failing anew",
                || RunReport { gated_quarantine_rate: Some(0.02), ..counted(98, 2) },
                vec![Check::QuarantineRate],
            ),
            ("another schema", || RunReport { schema_v: "v2".into(), ..counted(100, 0) }, vec![Check::SchemaVersion]),
            ("another run", || RunReport { run_id: "r2".into(), ..counted(100, 0) }, vec![Check::SuccessMarker]),
            (
                "not a success",
                || RunReport { outcome: "quality_gate_failed".into(), ..counted(100, 0) },
                vec![Check::SuccessMarker],
            ),
            // _SUCCESS edited by hand, or by anything but the worker: its figures do not agree.
            (
                "counts that do not add up",
                || RunReport { input_rows: 150, ..counted(100, 0) },
                vec![Check::SuccessMarker],
            ),
            (
                "a rate that is not the counts'",
                || RunReport { quarantine_rate: -1.0, ..counted(100, 0) },
                vec![Check::SuccessMarker],
            ),
            (
                "a gated rate above the plain one",
                || RunReport { gated_quarantine_rate: Some(0.5), ..counted(98, 2) },
                vec![Check::SuccessMarker, Check::QuarantineRate],
            ),
            (
                "files holding other rows than the valid ones",
                || {
                    let mut r = counted(100, 0);
                    r.files[0].rows = 5000;
                    r
                },
                vec![Check::SuccessMarker],
            ),
        ];
        for (name, made, expected) in cases {
            let got: Vec<Check> = check_report(&rules(), "r1", &made()).into_iter().map(|f| f.check).collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn only_files_inside_the_runs_own_prefix_are_accepted() {
        let run = "file:///lake/silver/tx/schema_v=v1/run_id=r1";
        let good = format!("{run}/year=2024/month=01/part-00000.parquet");
        let files = run_files(&rules(), "r1", "v1", &report("r1", &[&good]), &["file:///lake"]).expect("inside");
        assert_eq!(files[0].key, "silver/tx/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet");
        assert_eq!(files[0].partition, "year=2024/month=01");
        let moved = run_files(&rules(), "r1", "v1", &report("r1", &[&good]), &["file:///elsewhere", "file:///lake/"]);
        assert!(moved.is_ok(), "the lake's URI today is accepted too");
        for bad in [
            "file:///lake/silver/tx/schema_v=v1/run_id=r2/year=2024/month=01/part-00000.parquet",
            "file:///lake/silver/tx/schema_v=v1/run_id=r1/../run_id=r2/year=2024/month=01/part-00000.parquet",
            "file:///lake/silver/tx/schema_v=v1/run_id=r1/year=2024/month=01/../../../../other/part-00000.parquet",
            "file:///lake/silver/tx/schema_v=v1/run_id=r1/_SUCCESS",
            "file:///lake/silver/tx/current/year=2024/month=01/r2-part-00000.parquet",
            "file:///other/silver/tx/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet",
            "s3://bucket/silver/tx/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet",
            "file:///lake/silver/tx/schema_v=v1/run_id=r1/year=2024/month=01/sub/part-00000.parquet",
        ] {
            let got = run_files(&rules(), "r1", "v1", &report("r1", &[bad]), &["file:///lake"]);
            assert_eq!(got.map_err(|f| f.check), Err(Check::FileLocation), "{bad}");
        }
        // The prefix is the directory the _SUCCESS lies in, not the schema it names: one found under schema_v=v2
        // that names v1 cannot pull in the files of run r1 under schema_v=v1.
        let got = run_files(&rules(), "r1", "v2", &report("r1", &[&good]), &["file:///lake"]);
        assert_eq!(got.map_err(|f| f.check), Err(Check::FileLocation));
    }

    #[test]
    fn a_run_already_current_cannot_be_appended_again() {
        let current = vec![ManifestFile {
            partition: "year=2024/month=01".into(),
            key: "k".into(),
            run_id: "r1".into(),
            rows: 1,
            bytes: 1,
            sha256: "s".into(),
        }];
        let runs = vec!["r1".to_owned(), "r2".to_owned()];
        let failures = check_already_current(&current, &runs, PromotionMode::Append);
        assert_eq!(failures.len(), 1);
        assert!(failures[0].message.contains("r1"));
        assert!(check_already_current(&current, &runs, PromotionMode::ReplacePartitions).is_empty());
        assert!(check_already_current(&current, &runs, PromotionMode::ReplaceAll).is_empty());
    }
}
