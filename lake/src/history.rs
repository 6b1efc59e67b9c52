//! A dataset's history as one read: its runs (from the markers each left, and whether each is part of current),
//! its versions (from `_manifests/` and the audit log: who promoted what, how, why and when) and the current
//! version. Newest first. Read-only. An object that cannot be read as what it should be (an audit record, a
//! manifest, a run's marker, `_LATEST.json`) is skipped and listed in `problems` with its key: one damaged object
//! must not hide the rest of the history from the person looking for what went wrong.

use crate::audit::{self, AuditRecord, AuditResult};
use crate::layout::{Area, DatasetLayout, RUN_CLAIM};
use crate::manifest::Manifest;
use crate::pointer::{PromotionRef, read_latest};
use crate::runs::RunFinding;
use crate::store::Lake;
use crate::{Problem, Result};
use serde::Serialize;
use silverline_crds::PromotionMode;
use std::collections::BTreeSet;

/// One run of the dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEntry {
    pub run_id: String,
    pub schema_v: String,
    /// `committed`, `quality_failed`, `circuit_breaker`, `unfinished`.
    pub state: String,
    pub started_at: Option<String>,
    pub input_rows: Option<u64>,
    pub valid_rows: Option<u64>,
    pub quarantined_rows: Option<u64>,
    pub condemned_rows: Option<u64>,
    pub quarantine_rate: Option<f64>,
    /// Whether files of the run are part of the current version.
    pub in_current: bool,
}

/// One version of current.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionEntry {
    pub version: u64,
    pub previous_version: Option<u64>,
    pub mode: PromotionMode,
    pub runs: Vec<String>,
    pub restored_version: Option<u64>,
    pub created_at: String,
    pub files: u64,
    pub rows: u64,
    /// False for an orphan manifest (a promoter stopped before moving the pointer): never current.
    pub committed: bool,
    pub current: bool,
    pub approved_by: Option<String>,
    pub reason: Option<String>,
    pub promoted_at: Option<String>,
    pub promotion: Option<PromotionRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    pub dataset: String,
    pub current_version: Option<u64>,
    pub runs: Vec<RunEntry>,
    pub versions: Vec<VersionEntry>,
    /// Every audit record, newest first (including rejections and refusals).
    pub audit: Vec<AuditRecord>,
    /// Objects skipped because they cannot be read (key and error), each also logged as a warning.
    pub problems: Vec<Problem>,
}

async fn runs(
    lake: &Lake,
    layout: &DatasetLayout,
    current_runs: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) -> Result<Vec<RunEntry>> {
    let mut entries = Vec::new();
    let (schemas, _) = lake.list_dir(&lake.path(&layout.area(Area::Silver))).await?;
    for schema_dir in schemas {
        let Some(schema) = schema_dir.filename().and_then(|d| d.strip_prefix("schema_v=")).map(str::to_owned) else {
            continue;
        };
        if silverline_crds::names::check_schema_version(&schema).is_err() {
            continue;
        }
        let (run_dirs, _) = lake.list_dir(&schema_dir).await?;
        for run_dir in run_dirs {
            let Some(run_id) = run_dir.filename().and_then(|d| d.strip_prefix("run_id=")).map(str::to_owned) else {
                continue;
            };
            if silverline_crds::names::check_run_id(&run_id).is_err() {
                continue;
            }
            let found = match lake.find_run(layout.dataset(), &schema, &run_id).await {
                Ok(found) => found,
                // A marker that is not valid JSON of a run report, or is of another run id.
                Err(e) if e.is_unreadable_document() => {
                    let key = layout.run_prefix(Area::Silver, &schema, &run_id)?;
                    problems.push(Problem::skipped(key, &e, "a run's marker"));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let report = match &found {
                RunFinding::Success { report, .. } | RunFinding::QualityReport { report, .. } => Some(report.as_ref()),
                _ => None,
            };
            let started_at = match report {
                Some(r) => Some(r.started_at.clone()),
                None => lake
                    .read_json::<serde_json::Value>(&run_dir.clone().join(RUN_CLAIM), "run claim")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| v.get("started_at").and_then(|s| s.as_str()).map(str::to_owned)),
            };
            entries.push(RunEntry {
                in_current: current_runs.contains(&run_id),
                run_id,
                schema_v: schema.clone(),
                state: found.state().to_owned(),
                started_at,
                input_rows: report.map(|r| r.input_rows),
                valid_rows: report.map(|r| r.valid_rows_count),
                quarantined_rows: report.map(|r| r.quarantined_rows_count),
                condemned_rows: report.map(|r| r.condemned_rows_count),
                quarantine_rate: report.map(|r| r.quarantine_rate),
            });
        }
    }
    // Newest first: by start time (RFC 3339 sorts as text once normalised to UTC), then run id.
    let key = |e: &RunEntry| {
        let at = e.started_at.as_deref().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        (at.map(|t| t.timestamp_micros()), e.run_id.clone())
    };
    entries.sort_by_key(|e| std::cmp::Reverse(key(e)));
    Ok(entries)
}

/// Reads the dataset's history.
pub async fn history(lake: &Lake, dataset: &str) -> Result<History> {
    let layout = DatasetLayout::new(dataset)?;
    let mut problems = Vec::new();
    let latest = match read_latest(lake, dataset).await {
        Ok(latest) => latest.map(|(p, _)| p),
        Err(e) if e.is_unreadable_document() => {
            problems.push(Problem::skipped(layout.latest(), &e, "the promotion pointer"));
            None
        }
        Err(e) => return Err(e),
    };
    let audit_log = audit::read_log(lake, dataset).await?;
    problems.extend(audit_log.problems);
    let audit = audit_log.records;
    let mut manifests = Vec::new();
    for meta in lake.list(&lake.path(&layout.manifests())).await? {
        let Some(name) = meta.location.filename() else { continue };
        let Some(version) = name.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()) else { continue };
        match lake.read_json::<Manifest>(&meta.location, "manifest").await {
            Ok(Some(manifest)) if manifest.version == version => manifests.push(manifest),
            Ok(_) => {}
            Err(e) if e.is_unreadable_document() => {
                problems.push(Problem::skipped(layout.manifest(version), &e, "a manifest"));
            }
            Err(e) => return Err(e),
        }
    }
    manifests.sort_by_key(|m| std::cmp::Reverse(m.version));
    let current_version = latest.as_ref().map(|p| p.version);
    let current_runs: BTreeSet<String> = manifests
        .iter()
        .find(|m| Some(m.version) == current_version)
        .map(|m| m.files.iter().map(|f| f.run_id.clone()).collect())
        .unwrap_or_default();
    let versions = manifests
        .into_iter()
        .map(|m| {
            let record = audit.iter().find(|r| {
                r.version_after == Some(m.version)
                    && matches!(r.result, AuditResult::Promoted | AuditResult::RolledBack)
            });
            let pointer = latest.as_ref().filter(|p| p.version == m.version);
            let current = pointer.is_some();
            VersionEntry {
                version: m.version,
                previous_version: m.previous_version,
                mode: m.mode,
                runs: m.runs,
                restored_version: m.restored_version,
                created_at: m.created_at,
                files: m.totals.files,
                rows: m.totals.rows,
                committed: current
                    || record.is_some()
                    || current_version.is_some_and(|c| m.version < c && record.is_some()),
                current,
                approved_by: pointer
                    .map(|p| p.approved_by.clone())
                    .or_else(|| record.and_then(|r| r.approved_by.clone())),
                reason: pointer.map(|p| p.reason.clone()).or_else(|| record.map(|r| r.reason.clone())),
                promoted_at: pointer.map(|p| p.promoted_at.clone()).or_else(|| record.map(|r| r.time.clone())),
                promotion: pointer
                    .and_then(|p| p.promotion.clone())
                    .or_else(|| record.and_then(|r| r.promotion.clone())),
            }
        })
        .collect();
    let runs = runs(lake, &layout, &current_runs, &mut problems).await?;
    Ok(History { dataset: dataset.to_owned(), current_version, runs, versions, audit, problems })
}
