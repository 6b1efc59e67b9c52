//! `audit/{dataset}/{YYYYMMDDTHHMMSS.ffffffZ}-{result}-{unique}.json`: one immutable record per promotion,
//! rollback, rejection and refused gate. Written create-only and never overwritten; the names sort by time, so
//! the log reads newest first by listing.

use crate::layout::DatasetLayout;
use crate::plan::Change;
use crate::pointer::PromotionRef;
use crate::store::Lake;
use crate::{Problem, Result, StorageErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use silverline_crds::PromotionMode;
use silverline_crds::report::RunReport;
use std::collections::BTreeMap;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    Promoted,
    RolledBack,
    Rejected,
    Refused,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Promoted => "promoted",
            AuditResult::RolledBack => "rolled_back",
            AuditResult::Rejected => "rejected",
            AuditResult::Refused => "refused",
        }
    }
}

/// The metrics a reviewer saw for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    pub run_id: String,
    /// What the lake holds: `committed`, `quality_failed`, `circuit_breaker`, `unfinished`, `missing`, or
    /// `inconsistent` (a marker that is not a valid run report, or is of another run id).
    pub state: String,
    pub input_rows: Option<u64>,
    pub valid_rows: Option<u64>,
    pub quarantined_rows: Option<u64>,
    pub condemned_rows: Option<u64>,
    pub quarantine_rate: Option<f64>,
    #[serde(default)]
    pub error_types: BTreeMap<String, u64>,
    pub duration_seconds: Option<f64>,
}

impl RunMetrics {
    pub fn of(run_id: &str, state: &str, report: Option<&RunReport>) -> RunMetrics {
        RunMetrics {
            run_id: run_id.to_owned(),
            state: state.to_owned(),
            input_rows: report.map(|r| r.input_rows),
            valid_rows: report.map(|r| r.valid_rows_count),
            quarantined_rows: report.map(|r| r.quarantined_rows_count),
            condemned_rows: report.map(|r| r.condemned_rows_count),
            quarantine_rate: report.map(|r| r.quarantine_rate),
            error_types: report.map(|r| r.error_type_distribution.clone()).unwrap_or_default(),
            duration_seconds: report.map(|r| r.duration_seconds),
        }
    }
}

/// A gate check that failed, by its stable name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCheck {
    pub check: String,
    pub message: String,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub format: u32,
    pub dataset: String,
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    pub result: AuditResult,
    pub approved_by: Option<String>,
    pub rejected_by: Option<String>,
    pub reason: String,
    pub runs: Vec<String>,
    pub mode: Option<PromotionMode>,
    pub restore_version: Option<u64>,
    pub version_before: Option<u64>,
    pub version_after: Option<u64>,
    pub metrics: Vec<RunMetrics>,
    /// For `refused`: every failed check.
    #[serde(default)]
    pub failed_checks: Vec<FailedCheck>,
    pub change: Option<Change>,
    pub promotion: Option<PromotionRef>,
    /// Lake-relative key of this record (filled in when read back; not stored).
    #[serde(default, skip_serializing)]
    pub key: String,
}

fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:08x}", hasher.finish() as u32)
}

/// The key of a record written at its `time` with `unique` last.
fn key_of(record: &AuditRecord, unique: &str) -> Result<String> {
    let layout = DatasetLayout::new(&record.dataset)?;
    let time = chrono::DateTime::parse_from_rfc3339(&record.time)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    Ok(format!("{}/{}-{}-{unique}.json", layout.audit(), time.format("%Y%m%dT%H%M%S%.6fZ"), record.result.as_str()))
}

/// Writes the record of committed version `version` (`promoted` or `rolled_back`) create-only under a name that
/// follows from the version and its commit time (the record's `time`, the pointer's `promoted_at`), so that every
/// promoter that writes it — the one that moved the pointer, another that found it missing (a promoter killed
/// before its audit record, or still writing it) — writes the same object: a version has one record. Returns
/// its key, also when the record was already there.
pub async fn write_committed(lake: &Lake, record: &AuditRecord, version: u64) -> Result<String> {
    let key = key_of(record, &format!("v{version}"))?;
    let body = Bytes::from(serde_json::to_vec_pretty(record).unwrap_or_default());
    match lake.put_if_absent(&lake.path(&key), body).await {
        Ok(()) => Ok(key),
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => Ok(key),
        Err(e) => Err(e.into()),
    }
}

/// Writes a record create-only under a fresh name; returns its lake-relative key.
pub async fn write(lake: &Lake, record: &AuditRecord) -> Result<String> {
    let body = Bytes::from(serde_json::to_vec_pretty(record).unwrap_or_default());
    let mut attempts = 0;
    loop {
        let key = key_of(record, &unique_suffix())?;
        match lake.put_if_absent(&lake.path(&key), body.clone()).await {
            Ok(()) => return Ok(key),
            Err(e) if e.kind == StorageErrorKind::AlreadyExists && attempts < 3 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The audit log as read: the records, newest first, and the ones that could not be parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditLog {
    pub records: Vec<AuditRecord>,
    /// Records skipped because they are not valid audit records (each logged as a warning with its key).
    pub problems: Vec<Problem>,
}

/// Reads every audit record of a dataset, newest first. One that is not a valid audit record (edited by hand, a
/// write cut short by a store without atomic puts) is skipped and reported, not allowed to stop every reader of
/// the log; a storage failure still fails the read (a record that was not read could be the one looked for).
pub async fn read_log(lake: &Lake, dataset: &str) -> Result<AuditLog> {
    let layout = DatasetLayout::new(dataset)?;
    let mut keys: Vec<String> = lake
        .list(&lake.path(&layout.audit()))
        .await?
        .into_iter()
        .filter_map(|meta| lake.relative(&meta.location))
        .filter(|key| key.ends_with(".json") && !key.rsplit('/').next().unwrap_or("").starts_with('.'))
        .collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    let mut log = AuditLog { records: Vec::with_capacity(keys.len()), problems: Vec::new() };
    for key in keys {
        match lake.read_json::<AuditRecord>(&lake.path(&key), "audit record").await {
            Ok(Some(mut record)) => {
                record.key = key;
                log.records.push(record);
            }
            Ok(None) => {}
            Err(e) if e.is_unreadable_document() => log.problems.push(Problem::skipped(key, &e, "an audit record")),
            Err(e) => return Err(e),
        }
    }
    Ok(log)
}

/// Every valid audit record of a dataset, newest first; records that cannot be parsed are skipped (and logged
/// as warnings with their keys; [`read_log`] returns them).
pub async fn list(lake: &Lake, dataset: &str) -> Result<Vec<AuditRecord>> {
    Ok(read_log(lake, dataset).await?.records)
}

/// A record with the fields every result shares; the caller fills in the rest.
pub fn record(dataset: &str, result: AuditResult, reason: &str, runs: &[String]) -> AuditRecord {
    AuditRecord {
        format: crate::manifest::FORMAT,
        dataset: dataset.to_owned(),
        time: crate::now_rfc3339(),
        result,
        approved_by: None,
        rejected_by: None,
        reason: reason.to_owned(),
        runs: runs.to_vec(),
        mode: None,
        restore_version: None,
        version_before: None,
        version_after: None,
        metrics: Vec::new(),
        failed_checks: Vec::new(),
        change: None,
        promotion: None,
        key: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OpenOptions, StoreOptions};

    #[tokio::test]
    async fn records_are_never_overwritten_and_list_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(dir.path().to_str().expect("utf-8"), &StoreOptions::default(), OpenOptions::WRITER)
            .expect("open");
        let mut first = record("tx", AuditResult::Refused, "too many errors", &["r1".into()]);
        first.time = "2024-01-01T00:00:00.000001Z".into();
        first.failed_checks.push(FailedCheck { check: "quarantine_rate".into(), message: "0.2 > 0.01".into() });
        let mut second = record("tx", AuditResult::Promoted, "ok", &["r2".into()]);
        second.time = "2024-01-02T00:00:00Z".into();
        let k1 = write(&lake, &first).await.expect("write");
        let k2 = write(&lake, &second).await.expect("write");
        let k3 = write(&lake, &second).await.expect("the same record again gets its own name");
        assert_ne!(k2, k3);
        assert!(k1.starts_with("audit/tx/20240101T000000.000001Z-refused-"), "{k1}");
        let listed = list(&lake, "tx").await.expect("list");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[2].key, k1);
        assert_eq!(listed[2].failed_checks[0].check, "quarantine_rate");
        assert_eq!(listed[0].result, AuditResult::Promoted);
        let again = lake.put_if_absent(&lake.path(&k1), Bytes::from_static(b"{}")).await;
        assert_eq!(again.map_err(|e| e.kind), Err(StorageErrorKind::AlreadyExists));
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_parsed_is_skipped_and_reported_by_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(dir.path().to_str().expect("utf-8"), &StoreOptions::default(), OpenOptions::WRITER)
            .expect("open");
        let mut good = record("tx", AuditResult::Promoted, "ok", &["r1".into()]);
        good.time = "2024-01-01T00:00:00Z".into();
        let good_key = write(&lake, &good).await.expect("write");
        for (name, body) in [
            ("20240102T000000.000000Z-promoted-cut.json", &b"{\"format\": 1, \"dat"[..]),
            ("20240103T000000.000000Z-promoted-edited.json", &b"{\"format\": 1, \"dataset\": \"tx\"}"[..]),
        ] {
            let key = lake.path(&format!("audit/tx/{name}"));
            lake.put_if_absent(&key, Bytes::copy_from_slice(body)).await.expect("put");
        }
        let listed = list(&lake, "tx").await.expect("one bad record does not stop the log");
        assert_eq!(listed.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), [good_key.as_str()]);
        let log = read_log(&lake, "tx").await.expect("read");
        let problems: Vec<&str> = log.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            problems,
            [
                "audit/tx/20240103T000000.000000Z-promoted-edited.json",
                "audit/tx/20240102T000000.000000Z-promoted-cut.json"
            ]
        );
        assert!(log.problems[0].error.contains("is not a valid audit record"), "{:?}", log.problems);
    }
}
