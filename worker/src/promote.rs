//! `silverline-worker promote` and `history`: the lake crate's promotion engine and history, driven from a
//! contract file on a laptop, in a script or in the operator's promote Job. The commit and the gate live in
//! `silverline_lake::promotion`; this module loads the contract, opens the lake, prints and maps errors to
//! exit codes.

use crate::{Error, Result};
use silverline_crds::{Dataset, PromotionMode};
use silverline_lake::history::History;
use silverline_lake::promotion::{Hooks, PromoteError, PromoteOutcome, PromoteRequest, Target};
use silverline_lake::{Lake, OpenOptions, PromotionRef, StorageErrorKind, StoreOptions};
use std::path::PathBuf;
use tokio::runtime::Handle;

/// Where the lake is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct LakeArgs {
    pub contract: PathBuf,
    pub lake: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// What `silverline-worker promote` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct PromoteArgs {
    pub lake: LakeArgs,
    pub run_ids: Vec<String>,
    pub mode: Option<PromotionMode>,
    pub restore_version: Option<u64>,
    pub approved_by: Option<String>,
    pub rejected_by: Option<String>,
    pub reason: String,
    pub promotion: Option<String>,
    /// Commit again although the audit log records this very request as committed (`--again`).
    pub again: bool,
}

/// What a `promote` invocation ended with.
#[derive(Debug)]
pub enum PromoteResult {
    Promoted { dataset: String, outcome: Box<PromoteOutcome> },
    Rejected { dataset: String, audit_key: String, version: Option<u64> },
}

/// Loads the Dataset manifest as applied to the cluster.
pub fn load_dataset(path: &std::path::Path) -> Result<Dataset> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::ContractRead { path: shown.clone(), source })?;
    Dataset::from_manifest(&text).map_err(|source| Error::Contract { path: shown, source })
}

/// The dataset's name, checked; a missing or invalid one is the contract file's error.
fn checked_name(dataset: &Dataset, path: &std::path::Path) -> Result<String> {
    let name = dataset.checked_name().map_err(|source| Error::Contract { path: path.display().to_string(), source })?;
    Ok(name.to_owned())
}

fn open(args: &LakeArgs, dataset: &Dataset) -> Result<Lake> {
    let storage = &dataset.spec.storage;
    let options = StoreOptions {
        endpoint: args.endpoint.clone().or_else(|| storage.endpoint.clone()),
        region: args.region.clone().or_else(|| storage.region.clone()),
    };
    let uri = args.lake.clone().unwrap_or_else(|| storage.lake_uri.clone());
    Ok(Lake::open(&uri, &options, OpenOptions::WRITER)?)
}

impl From<PromoteError> for Error {
    fn from(e: PromoteError) -> Error {
        match e {
            PromoteError::Usage(message) => Error::Usage(message),
            refused @ PromoteError::Refused { .. } => {
                Error::GateRefused { checks: refused.failed_checks().join(","), source: refused }
            }
            contention @ PromoteError::Contention { .. } => Error::PointerContention(contention),
            // Every key a promotion reads is the lake's own (manifests, runs' files): one that is gone is the
            // lake's inconsistency, not a missing input of the feed.
            PromoteError::Lake(silverline_lake::Error::Storage(e)) if e.kind == StorageErrorKind::NotFound => {
                Error::PromoteObjectMissing { source: e }
            }
            PromoteError::Lake(e) => Error::from(e),
        }
    }
}

/// Runs `promote`: a promotion, a rollback, or (with `rejected_by`) the record of a rejection.
pub fn promote(args: &PromoteArgs, handle: &Handle, hooks: &Hooks) -> Result<PromoteResult> {
    let dataset = load_dataset(&args.lake.contract)?;
    let name = checked_name(&dataset, &args.lake.contract)?;
    let lake = open(&args.lake, &dataset)?;
    let promotion = match &args.promotion {
        Some(text) => Some(
            PromotionRef::parse(text)
                .ok_or_else(|| Error::Usage(format!("--promotion {text:?}: expected NAMESPACE/NAME/UID")))?,
        ),
        None => None,
    };
    let target = match (args.restore_version, args.run_ids.is_empty()) {
        (Some(version), true) => Target::Restore { version },
        (None, false) => {
            Target::Runs { run_ids: args.run_ids.clone(), mode: args.mode.unwrap_or(dataset.spec.promotion.mode) }
        }
        (Some(_), false) => return Err(Error::Usage("give either --run-id or --restore-version, not both".into())),
        (None, true) => return Err(Error::Usage("give --run-id (one or more) or --restore-version".into())),
    };
    match (&args.approved_by, &args.rejected_by) {
        (Some(approved_by), None) => {
            let request = PromoteRequest {
                target,
                approved_by: approved_by.clone(),
                reason: args.reason.clone(),
                promotion,
                again: args.again,
            };
            let outcome = handle.block_on(silverline_lake::promote(&lake, &dataset, &request, hooks))?;
            Ok(PromoteResult::Promoted { dataset: name, outcome: Box::new(outcome) })
        }
        (None, Some(_)) if args.again => Err(Error::Usage("--again is for a promotion, not a rejection".into())),
        (None, Some(rejected_by)) => {
            let audit_key = handle.block_on(silverline_lake::promotion::reject(
                &lake,
                &dataset,
                &target,
                rejected_by,
                &args.reason,
                promotion,
            ))?;
            let version = handle.block_on(silverline_lake::read_latest(&lake, &name)).map_err(Error::from)?;
            Ok(PromoteResult::Rejected { dataset: name, audit_key, version: version.map(|(p, _)| p.version) })
        }
        _ => Err(Error::Usage("give exactly one of --approved-by or --rejected-by".into())),
    }
}

/// Reads the dataset's history.
pub fn history(args: &LakeArgs, handle: &Handle) -> Result<History> {
    let dataset = load_dataset(&args.contract)?;
    let name = checked_name(&dataset, &args.contract)?;
    let lake = open(args, &dataset)?;
    Ok(handle.block_on(silverline_lake::history::history(&lake, &name))?)
}

fn number(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn version(value: Option<u64>) -> String {
    value.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// The history as text tables, newest first.
pub fn history_table(history: &History) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pointer_unreadable = silverline_lake::DatasetLayout::new(&history.dataset)
        .is_ok_and(|layout| history.problems.iter().any(|p| p.key == layout.latest()));
    let current = match history.current_version {
        Some(v) => v.to_string(),
        None if pointer_unreadable => "unknown (_LATEST.json cannot be read: see PROBLEMS)".to_owned(),
        None => "none (nothing promoted yet)".to_owned(),
    };
    let _ = writeln!(out, "dataset {}: current version {current}", history.dataset);
    if !history.problems.is_empty() {
        let _ = writeln!(out, "\nPROBLEMS (objects that cannot be read, skipped below)");
        for p in &history.problems {
            let _ = writeln!(out, "{}: {}", p.key, p.error);
        }
    }
    let _ = writeln!(out, "\nVERSIONS (newest first)");
    let _ = writeln!(
        out,
        "{:>7}  {:<9}  {:<17}  {:>5}  {:>10}  {:<24}  {:<20}  {:<30}  reason",
        "version", "state", "mode", "files", "rows", "runs", "approved by", "promoted at"
    );
    for v in &history.versions {
        let state = if v.current {
            "current"
        } else if v.committed {
            "past"
        } else {
            "orphan"
        };
        let runs = match v.restored_version {
            Some(n) => format!("restores v{n}"),
            None => v.runs.join(","),
        };
        let _ = writeln!(
            out,
            "{:>7}  {:<9}  {:<17}  {:>5}  {:>10}  {:<24}  {:<20}  {:<30}  {}",
            v.version,
            state,
            v.mode.as_str(),
            v.files,
            v.rows,
            runs,
            v.approved_by.as_deref().unwrap_or("-"),
            v.promoted_at.as_deref().unwrap_or("-"),
            v.reason.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "\nRUNS (newest first)");
    let _ = writeln!(
        out,
        "{:<24}  {:<6}  {:<15}  {:>10}  {:>10}  {:>11}  {:>9}  {:>8}  {:<7}  started at",
        "run id", "schema", "state", "input", "valid", "quarantined", "condemned", "q. rate", "current"
    );
    for r in &history.runs {
        let _ = writeln!(
            out,
            "{:<24}  {:<6}  {:<15}  {:>10}  {:>10}  {:>11}  {:>9}  {:>8}  {:<7}  {}",
            r.run_id,
            r.schema_v,
            r.state,
            number(r.input_rows),
            number(r.valid_rows),
            number(r.quarantined_rows),
            number(r.condemned_rows),
            r.quarantine_rate.map_or_else(|| "-".to_owned(), |q| format!("{:.2}%", q * 100.0)),
            if r.in_current { "yes" } else { "no" },
            r.started_at.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "\nAUDIT (newest first)");
    if history.audit.is_empty() {
        let _ = writeln!(out, "(no promotion, rollback, rejection or refusal yet)");
    }
    for a in &history.audit {
        let who = a.approved_by.as_deref().or(a.rejected_by.as_deref()).unwrap_or("-");
        let checks: Vec<&str> = a.failed_checks.iter().map(|c| c.check.as_str()).collect();
        let what = match a.restore_version {
            Some(n) => format!("restore v{n}"),
            None => a.runs.join(","),
        };
        let _ = writeln!(
            out,
            "{}  {:<11}  by {:<20}  {:<24}  version {} → {}  {}{}",
            a.time,
            a.result.as_str(),
            who,
            what,
            version(a.version_before),
            version(a.version_after),
            a.reason,
            if checks.is_empty() { String::new() } else { format!("  [failed: {}]", checks.join(", ")) }
        );
    }
    out
}
