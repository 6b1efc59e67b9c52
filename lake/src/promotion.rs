//! Promotion: a set of verified runs (or an old version) becomes current, as one new version, with a named
//! person's approval. The commit, in this order:
//!
//! 1. read `_LATEST.json` and the version it was read at; finish a promotion that this request already made
//!    (same `Promotion` identity; without one, the same target, approver and reason), or answer "already
//!    promoted" when the audit log records it as committed (unless `again`), and bring `current/` up to the
//!    pointer if it lags;
//! 2. the gate ([`crate::gate`]); a refusal writes a `refused` audit record and moves nothing;
//! 3. plan the next file set ([`crate::plan`]) and write manifest `N` create-only (if `N.json` exists — an
//!    orphan of a promoter that crashed before step 4 — it is reused when it describes the same change,
//!    otherwise the next free `N` is taken; orphans are harmless, nothing points at them);
//! 4. replace `_LATEST.json` conditionally on the version read in 1 (create-if-absent for the first): the
//!    commit point. If someone moved it meanwhile, go back to 1 (re-read, re-plan, re-check), up to
//!    [`MAX_ATTEMPTS`] times, then give up with [`PromoteError::Contention`] — nothing is lost either way;
//! 5. copy the files into `current/`, write `current/_MANIFEST.json` (equal to manifest `N`) after them,
//!    then delete the files of the previous version that are no longer current;
//! 6. write the `promoted` (or `rolled_back`) audit record.
//!
//! Killed at any step, the lake holds the old version (before 4) or the new one (from 4) as current: the
//! pointer and the manifests are never half-written, and a repeat finishes 5 and 6 exactly once.

use crate::audit::{self, AuditRecord, AuditResult, RunMetrics};
use crate::gate::{self, Check, Depth, GateFailure, GateRules, Review};
use crate::layout::DatasetLayout;
use crate::manifest::{self, Manifest, ManifestFile, Totals};
use crate::plan::{self, Change};
use crate::pointer::{LatestPointer, PromotionRef, read_latest};
use crate::store::{Lake, ObjectVersion};
use crate::{Error, Result, StorageErrorKind};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use silverline_crds::{Dataset, PromotionMode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How many times the pointer is re-read and the promotion re-planned when someone else moved it.
pub const MAX_ATTEMPTS: u32 = 5;

/// What to make current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These runs, together, as one version.
    Runs { run_ids: Vec<String>, mode: PromotionMode },
    /// A rollback: a new version whose files are exactly those of version `version`.
    Restore { version: u64 },
}

/// A promotion someone approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteRequest {
    pub target: Target,
    pub approved_by: String,
    pub reason: String,
    /// The Kubernetes `Promotion` this is, so a repeat is recognised (`--promotion NAMESPACE/NAME/UID`).
    pub promotion: Option<PromotionRef>,
    /// Without `promotion` only: commit again although the audit log records this very request (same target,
    /// approver and reason) as committed (`--again`). Without it, such a request is answered "already promoted".
    pub again: bool,
}

/// A step of the commit, for test hooks that stop the process there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Manifest `N` written; the pointer not yet moved.
    Manifest,
    /// About to replace the pointer (after reading it, gating and writing the manifest).
    BeforePointer,
    /// The pointer moved; `current/` not yet updated.
    Pointer,
    /// Files copied into `current/`; `current/_MANIFEST.json` not yet written.
    Copies,
    /// `current/_MANIFEST.json` written; the files no longer current not yet deleted.
    CurrentManifest,
    /// `current/` shows the new version (its `_MANIFEST.json` written); the audit record not yet written.
    Current,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Manifest => "manifest",
            Step::BeforePointer => "before_pointer",
            Step::Pointer => "pointer",
            Step::Copies => "copies",
            Step::CurrentManifest => "current_manifest",
            Step::Current => "current",
        }
    }
}

type StepHook = Arc<dyn Fn(Step) + Send + Sync>;
type LogHook = Arc<dyn Fn(&str, serde_json::Value) + Send + Sync>;

/// Callbacks of the caller: `after_step` (tests stop the process there; the library never exits), `log` (one
/// event per retry and repair, besides `tracing`).
#[derive(Clone, Default)]
pub struct Hooks {
    pub after_step: Option<StepHook>,
    pub log: Option<LogHook>,
}

impl Hooks {
    fn step(&self, step: Step) {
        if let Some(hook) = &self.after_step {
            hook(step);
        }
    }

    fn log(&self, message: &str, fields: serde_json::Value) {
        tracing::info!(%fields, "{message}");
        if let Some(log) = &self.log {
            log(message, fields);
        }
    }
}

/// What a promotion did.
#[derive(Debug, Clone, PartialEq)]
pub struct PromoteOutcome {
    /// True when this request had already been promoted; only `current/` and the audit record were caught up.
    pub already_promoted: bool,
    pub result: AuditResult,
    pub version_before: Option<u64>,
    pub version_after: u64,
    pub change: Change,
    pub metrics: Vec<RunMetrics>,
    /// How many times the pointer had moved under us before the commit.
    pub retries: u32,
    pub audit_key: Option<String>,
}

/// Why a promotion did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("the gate refused: {}", .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused { failures: Vec<GateFailure>, audit_key: Option<String> },
    #[error(
        "_LATEST.json of dataset {dataset} kept changing under the promoter ({attempts} attempts); nothing was lost, try again"
    )]
    Contention { dataset: String, attempts: u32 },
    #[error(transparent)]
    Lake(#[from] Error),
}

impl From<crate::StorageError> for PromoteError {
    fn from(e: crate::StorageError) -> PromoteError {
        PromoteError::Lake(e.into())
    }
}

impl PromoteError {
    /// The names of the failed checks, for a refusal.
    pub fn failed_checks(&self) -> Vec<&'static str> {
        match self {
            PromoteError::Refused { failures, .. } => {
                failures.iter().map(|f| f.check.name()).collect::<BTreeSet<_>>().into_iter().collect()
            }
            _ => Vec::new(),
        }
    }
}

fn validate(request: &PromoteRequest) -> Result<(), PromoteError> {
    if request.approved_by.trim().is_empty() {
        return Err(PromoteError::Usage("a promotion needs the approver's name".into()));
    }
    if request.reason.trim().is_empty() {
        return Err(PromoteError::Usage("a promotion needs a reason".into()));
    }
    if let Target::Runs { run_ids, .. } = &request.target {
        if run_ids.is_empty() {
            return Err(PromoteError::Usage("name at least one run id".into()));
        }
        let mut seen = BTreeSet::new();
        for run_id in run_ids {
            silverline_crds::names::check_run_id(run_id).map_err(|e| PromoteError::Usage(e.to_string()))?;
            if !seen.insert(run_id) {
                return Err(PromoteError::Usage(format!("run id {run_id} is named twice")));
            }
        }
    }
    if let Target::Restore { version: 0 } = request.target {
        return Err(PromoteError::Usage("versions start at 1".into()));
    }
    if request.again && request.promotion.is_some() {
        return Err(PromoteError::Usage(
            "--again is for a promotion without --promotion: a Kubernetes Promotion is committed once".into(),
        ));
    }
    Ok(())
}

/// A version's manifest as stored, checked against what the pointer says about it.
async fn load_manifest(lake: &Lake, layout: &DatasetLayout, pointer: &LatestPointer) -> Result<(Manifest, Bytes)> {
    let expected = layout.manifest(pointer.version);
    let key = lake.path(&expected);
    let uri = lake.uri_of(&key);
    if pointer.manifest != expected {
        return Err(Error::Inconsistent { uri, message: format!("the pointer names manifest {}", pointer.manifest) });
    }
    let bytes = lake.get(&key).await?.ok_or_else(|| Error::Inconsistent {
        uri: uri.clone(),
        message: "the current version's manifest is missing".into(),
    })?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != pointer.manifest_sha256 {
        return Err(Error::Inconsistent {
            uri,
            message: format!("SHA-256 {sha}, the pointer records {}", pointer.manifest_sha256),
        });
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|source| Error::Format {
        uri: uri.clone(),
        what: "manifest",
        source,
    })?;
    check_manifest(&manifest, layout, pointer.version, &uri)?;
    Ok((manifest, bytes))
}

/// Reads a version's manifest by number (`None` when there is none).
pub async fn read_manifest(lake: &Lake, dataset: &str, version: u64) -> Result<Option<Manifest>> {
    let layout = DatasetLayout::new(dataset)?;
    let key = lake.path(&layout.manifest(version));
    let manifest: Option<Manifest> = lake.read_json(&key, "manifest").await?;
    if let Some(manifest) = &manifest {
        check_manifest(manifest, &layout, version, &lake.uri_of(&key))?;
    }
    Ok(manifest)
}

/// A manifest read back is the one of this dataset and version, and lists only files of this dataset's runs
/// where the worker writes them (pure): its keys are read, copied into `current/` and restored, so one edited
/// to name another dataset's files, quarantine or anything else in the lake is refused, not followed.
fn check_manifest(manifest: &Manifest, layout: &DatasetLayout, version: u64, uri: &str) -> Result<()> {
    let inconsistent = |message: String| Err(Error::Inconsistent { uri: uri.to_owned(), message });
    if manifest.dataset != layout.dataset() || manifest.version != version {
        return inconsistent(format!(
            "it is the manifest of {} version {}, not of {} version {version}",
            manifest.dataset,
            manifest.version,
            layout.dataset()
        ));
    }
    match manifest.files.iter().find(|f| !layout.is_run_file(&f.key, &f.run_id, &f.partition)) {
        Some(f) => inconsistent(format!(
            "it lists {}, which is not a silver file of run {} in {} of dataset {}",
            f.key,
            f.run_id,
            f.partition,
            layout.dataset()
        )),
        None => Ok(()),
    }
}

/// Brings `current/` to the pointer's version: copies what is missing, writes `current/_MANIFEST.json` after
/// the copies (conditionally, so a slower promoter of an older version cannot overwrite a newer one), then
/// deletes what is no longer current.
///
/// The delete is what two syncs at once can get wrong: a sync of version N must not delete the fresh copies of a
/// sync of N+1 that has copied but not yet written its `_MANIFEST.json`. So it lists `current/` first, then
/// checks that `current/_MANIFEST.json` still holds its bytes and `_LATEST.json` still names its version — a
/// newer version's sync moved the pointer before copying anything, so its copies are either not in the listing
/// or the check sees its pointer — and deletes nothing otherwise (the newer sync cleans up). What the checks
/// cannot rule out on S3 (no conditional delete: a newer sync re-copying, between the check and the delete, a
/// name the listing held) `current_is_up_to_date` detects: the next `promote` or `repair_current` copies it
/// again.
pub async fn sync_current(
    lake: &Lake,
    layout: &DatasetLayout,
    manifest: &Manifest,
    manifest_bytes: &Bytes,
    hooks: &Hooks,
) -> Result<()> {
    let manifest_key = lake.path(&layout.current_manifest());
    for _ in 0..MAX_ATTEMPTS {
        let existing = lake.get_versioned(&manifest_key).await?;
        if let Some((bytes, _)) = &existing
            && let Ok(there) = serde_json::from_slice::<Manifest>(bytes)
            && there.version > manifest.version
        {
            return Ok(()); // a newer version is already there: never go back
        }
        // What current/ holds, by its own manifest: a copy there stands for the file it was copied from. A name
        // can stand for another file (one run id under two schema versions), so a copy is kept only when
        // current/_MANIFEST.json says it is of this very file.
        let there: Option<Manifest> = existing.as_ref().and_then(|(b, _)| serde_json::from_slice(b).ok());
        let held = there.as_ref().map(|there| current_copies(layout, there)).unwrap_or_default();
        let mut copies = Vec::new();
        for file in &manifest.files {
            let target = layout.current_file(&file.partition, &file.run_id, file.file_name())?;
            let kept = held.get(&target) == Some(&(file.key.as_str(), file.sha256.as_str()));
            copies.push((file, target, kept));
        }
        for chunk in copies.chunks(4) {
            let copied = chunk.iter().map(|(file, target, kept)| copy_into_current(lake, file, target, *kept));
            futures::future::try_join_all(copied).await?;
        }
        hooks.step(Step::Copies);
        let written = match &existing {
            Some((bytes, _)) if bytes == manifest_bytes => Ok(()),
            Some((_, version)) => lake.replace_if_unchanged(&manifest_key, manifest_bytes.clone(), version).await,
            None => lake.put_conditional(&manifest_key, manifest_bytes.clone(), None).await,
        };
        match written {
            Ok(()) => {}
            Err(e) if matches!(e.kind, StorageErrorKind::Precondition | StorageErrorKind::AlreadyExists) => {
                hooks.log(
                    "current/_MANIFEST.json changed while syncing; again",
                    serde_json::json!({"dataset": layout.dataset(), "version": manifest.version}),
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        hooks.step(Step::CurrentManifest);
        return delete_stale_copies(lake, layout, manifest, manifest_bytes, hooks).await;
    }
    Err(Error::Inconsistent {
        uri: lake.uri_of(&manifest_key),
        message: "current/_MANIFEST.json kept changing while current/ was being updated".into(),
    })
}

/// The delete phase of [`sync_current`] (see there), once `current/_MANIFEST.json` holds `manifest`.
async fn delete_stale_copies(
    lake: &Lake,
    layout: &DatasetLayout,
    manifest: &Manifest,
    manifest_bytes: &Bytes,
    hooks: &Hooks,
) -> Result<()> {
    let current_prefix = lake.path(&layout.current());
    // Staging files of copies killed midway (local lake): engines reading the folder would read them.
    let swept = lake.remove_local_staging_leftovers(&current_prefix).await?;
    if !swept.is_empty() {
        hooks.log(
            "removed staging files left in current/ by interrupted writes",
            serde_json::json!({"dataset": layout.dataset(), "files": swept}),
        );
    }
    // Listed before the checks below: a newer version's copies made after them cannot be in the listing.
    let listed = lake.list(&current_prefix).await?;
    let ours = lake.get(&lake.path(&layout.current_manifest())).await?.is_some_and(|b| b == manifest_bytes);
    let pointer = read_latest(lake, layout.dataset()).await?.map(|(p, _)| p.version);
    if !ours || pointer != Some(manifest.version) {
        hooks.log(
            "a newer version is being made current; leaving the cleanup of current/ to its promoter",
            serde_json::json!({"dataset": layout.dataset(), "version": manifest.version, "pointer": pointer}),
        );
        return Ok(());
    }
    let targets = current_copies(layout, manifest);
    for meta in listed {
        let Some(key) = lake.relative(&meta.location) else { continue };
        if is_current_object(layout, &key) && !targets.contains_key(&key) {
            lake.delete(&meta.location).await?;
        }
    }
    Ok(())
}

/// Whether a key under `current/` is a copy or anything else a reader of the folder sees: not
/// `_MANIFEST.json`, not a hidden file (locks, staging).
fn is_current_object(layout: &DatasetLayout, key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or("");
    key != layout.current_manifest() && !name.starts_with('.')
}

/// Each copy in `current/` that a `current/_MANIFEST.json` lists: its key, and the source key and SHA-256 of the
/// file it is a copy of.
fn current_copies<'a>(layout: &DatasetLayout, manifest: &'a Manifest) -> BTreeMap<String, (&'a str, &'a str)> {
    manifest
        .files
        .iter()
        .filter_map(|f| {
            let target = layout.current_file(&f.partition, &f.run_id, f.file_name()).ok()?;
            Some((target, (f.key.as_str(), f.sha256.as_str())))
        })
        .collect()
}

/// Copies one file into `current/`, unless `current/_MANIFEST.json` lists the copy there as one of this very
/// file (`kept`) and it has the file's size (files never change once committed: the gate verified their SHA-256).
async fn copy_into_current(lake: &Lake, file: &ManifestFile, target: &str, kept: bool) -> Result<()> {
    let (from, to) = (lake.path(&file.key), lake.path(target));
    if kept && lake.head(&to).await?.is_some_and(|meta| meta.size == file.bytes) {
        return Ok(());
    }
    Ok(lake.copy(&from, &to).await?)
}

/// Whether `current/` already shows the pointer's version: `current/_MANIFEST.json` is the pointer's manifest,
/// and a listing of `current/` holds exactly its copies, each of its file's size — a copy deleted by a sync that
/// raced a newer one, or left by an older one, makes `current/` lag. On a local lake it must also hold no
/// staging file that an interrupted copy left where engines reading the folder would read it. Costs one listing
/// of `current/` (one request per 1000 objects on S3), no reads of the copies.
async fn current_is_up_to_date(lake: &Lake, layout: &DatasetLayout, pointer: &LatestPointer) -> Result<bool> {
    let key = lake.path(&layout.current_manifest());
    let Some(bytes) = lake.get(&key).await? else { return Ok(false) };
    if hex::encode(Sha256::digest(&bytes)) != pointer.manifest_sha256 {
        return Ok(false);
    }
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else { return Ok(false) };
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for file in &manifest.files {
        expected.insert(layout.current_file(&file.partition, &file.run_id, file.file_name())?, file.bytes);
    }
    let current_prefix = lake.path(&layout.current());
    let mut found: BTreeMap<String, u64> = BTreeMap::new();
    for meta in lake.list(&current_prefix).await? {
        if let Some(key) = lake.relative(&meta.location)
            && is_current_object(layout, &key)
        {
            found.insert(key, meta.size);
        }
    }
    Ok(found == expected && lake.local_staging_leftovers(&current_prefix).await?.is_empty())
}

/// Brings `current/` up to `_LATEST.json` if it lags (e.g. after a promoter was killed after the pointer moved).
pub async fn repair_current(lake: &Lake, dataset: &str, hooks: &Hooks) -> Result<Option<u64>> {
    let layout = DatasetLayout::new(dataset)?;
    let Some((pointer, _)) = read_latest(lake, dataset).await? else { return Ok(None) };
    if !current_is_up_to_date(lake, &layout, &pointer).await? {
        hooks.log(
            "current/ lags _LATEST.json; repairing",
            serde_json::json!({"dataset": dataset, "version": pointer.version}),
        );
        let (manifest, bytes) = load_manifest(lake, &layout, &pointer).await?;
        sync_current(lake, &layout, &manifest, &bytes, hooks).await?;
    }
    Ok(Some(pointer.version))
}

#[cfg(test)]
mod current_tests;

fn target_runs(target: &Target) -> Vec<String> {
    match target {
        Target::Runs { run_ids, .. } => run_ids.clone(),
        Target::Restore { .. } => Vec::new(),
    }
}

/// Whether a pointer records this very request: by `Promotion` identity when there is one; otherwise by the
/// same runs, mode, approver and reason (the local command repeated after a crash).
fn pointer_is_this_request(pointer: &LatestPointer, request: &PromoteRequest) -> bool {
    if let Some(id) = &request.promotion {
        return pointer.promotion.as_ref() == Some(id);
    }
    let same_target = match &request.target {
        Target::Runs { run_ids, mode } => {
            &pointer.runs == run_ids && pointer.mode == *mode && pointer.restored_version.is_none()
        }
        Target::Restore { version } => pointer.restored_version == Some(*version),
    };
    pointer.promotion.is_none()
        && same_target
        && pointer.approved_by == request.approved_by
        && pointer.reason == request.reason
}

/// Whether an audit record is the commit of this very request: by `Promotion` identity when there is one;
/// otherwise a record without identity of the same target (runs and mode, or restored version), approver and
/// reason — the local command repeated after its promoter was killed once the pointer had moved (its record
/// written by itself or by the next promotion, which may have moved the pointer on since).
fn record_is_this_request(record: &AuditRecord, request: &PromoteRequest) -> bool {
    if !matches!(record.result, AuditResult::Promoted | AuditResult::RolledBack) {
        return false;
    }
    if let Some(id) = &request.promotion {
        return record.promotion.as_ref() == Some(id);
    }
    let same_target = match &request.target {
        Target::Runs { run_ids, mode } => {
            record.result == AuditResult::Promoted
                && &record.runs == run_ids
                && record.mode == Some(*mode)
                && record.restore_version.is_none()
        }
        Target::Restore { version } => {
            record.result == AuditResult::RolledBack && record.restore_version == Some(*version)
        }
    };
    record.promotion.is_none()
        && same_target
        && record.approved_by.as_deref() == Some(request.approved_by.as_str())
        && record.reason == request.reason
}

async fn metrics_of(lake: &Lake, rules: &GateRules, run_ids: &[String]) -> Result<Vec<RunMetrics>> {
    let mut metrics = Vec::new();
    for run_id in run_ids {
        let found = match lake.find_run(&rules.dataset, &rules.schema_version, run_id).await {
            Ok(found) => found,
            // A marker that is not a valid run report (or is of another run id) has no metrics to show; the gate
            // refuses such a run, and a rejection of it is still recorded.
            Err(e) if e.is_unreadable_document() => {
                tracing::warn!(run_id = %run_id, error = %e, "a run's marker cannot be read; no metrics");
                metrics.push(RunMetrics::of(run_id, "inconsistent", None));
                continue;
            }
            Err(e) => return Err(e),
        };
        let report = match &found {
            crate::RunFinding::Success { report, .. } | crate::RunFinding::QualityReport { report, .. } => {
                Some(report.as_ref())
            }
            _ => None,
        };
        metrics.push(RunMetrics::of(run_id, found.state(), report));
    }
    Ok(metrics)
}

fn runs_of(files: &[ManifestFile]) -> Vec<String> {
    files.iter().map(|f| f.run_id.clone()).collect::<BTreeSet<_>>().into_iter().collect()
}

/// What committed version `pointer` changed (against the version before it) and its runs' metrics.
async fn committed_facts(
    lake: &Lake,
    rules: &GateRules,
    pointer: &LatestPointer,
    manifest: &Manifest,
) -> Result<(Change, Vec<RunMetrics>)> {
    let before = match pointer.previous_version {
        Some(v) => read_manifest(lake, &rules.dataset, v).await?.map(|m| m.files).unwrap_or_default(),
        None => Vec::new(),
    };
    let metric_runs = if pointer.runs.is_empty() { runs_of(&manifest.files) } else { pointer.runs.clone() };
    Ok((plan::change(&before, &manifest.files), metrics_of(lake, rules, &metric_runs).await?))
}

/// Makes sure a committed version has its audit record (a promoter killed after moving the pointer, or after
/// `current/`, did not write it): returns the record's key, and the version's change and runs' metrics when it
/// had to write the record (read for it, so a caller that reports them need not read them again).
async fn ensure_audited(
    lake: &Lake,
    rules: &GateRules,
    pointer: &LatestPointer,
    manifest: &Manifest,
    promotion: Option<PromotionRef>,
    hooks: &Hooks,
) -> Result<(String, Option<(Change, Vec<RunMetrics>)>)> {
    let result = if pointer.restored_version.is_some() { AuditResult::RolledBack } else { AuditResult::Promoted };
    let audited = audit::list(lake, &rules.dataset)
        .await?
        .into_iter()
        .find(|r| r.result == result && r.version_after == Some(pointer.version));
    if let Some(record) = audited {
        return Ok((record.key, None));
    }
    hooks.log(
        "writing the audit record of a committed promotion",
        serde_json::json!({"dataset": rules.dataset, "version": pointer.version}),
    );
    let (change, metrics) = committed_facts(lake, rules, pointer, manifest).await?;
    let record = committed_record(rules, pointer, promotion, &metrics, &change);
    let key = audit::write_committed(lake, &record, pointer.version).await?;
    Ok((key, Some((change, metrics))))
}

/// Finishes a promotion this request already committed: `current/` and the audit record catch up.
async fn finish_committed(
    lake: &Lake,
    rules: &GateRules,
    layout: &DatasetLayout,
    pointer: &LatestPointer,
    request: &PromoteRequest,
    hooks: &Hooks,
) -> Result<PromoteOutcome> {
    let (manifest, bytes) = load_manifest(lake, layout, pointer).await?;
    sync_current(lake, layout, &manifest, &bytes, hooks).await?;
    let promotion = request.promotion.clone().or_else(|| pointer.promotion.clone());
    let (audit_key, facts) = ensure_audited(lake, rules, pointer, &manifest, promotion, hooks).await?;
    let (change, metrics) = match facts {
        Some(facts) => facts,
        None => committed_facts(lake, rules, pointer, &manifest).await?,
    };
    Ok(PromoteOutcome {
        already_promoted: true,
        result: if pointer.restored_version.is_some() { AuditResult::RolledBack } else { AuditResult::Promoted },
        version_before: pointer.previous_version,
        version_after: pointer.version,
        change,
        metrics,
        retries: 0,
        audit_key: Some(audit_key),
    })
}

fn committed_record(
    rules: &GateRules,
    pointer: &LatestPointer,
    promotion: Option<PromotionRef>,
    metrics: &[RunMetrics],
    change: &Change,
) -> AuditRecord {
    let result = if pointer.restored_version.is_some() { AuditResult::RolledBack } else { AuditResult::Promoted };
    let mut record = audit::record(
        &rules.dataset,
        result,
        &pointer.reason,
        &metrics.iter().map(|m| m.run_id.clone()).collect::<Vec<_>>(),
    );
    // The commit's time: every promoter that writes this version's record writes the same one (`write_committed`).
    record.time = pointer.promoted_at.clone();
    record.approved_by = Some(pointer.approved_by.clone());
    record.mode = Some(pointer.mode);
    record.restore_version = pointer.restored_version;
    record.version_before = pointer.previous_version;
    record.version_after = Some(pointer.version);
    record.metrics = metrics.to_vec();
    record.change = Some(change.clone());
    record.promotion = promotion;
    record
}

/// The files and metrics a restore brings back, with its checks.
async fn review_restore(
    lake: &Lake,
    rules: &GateRules,
    version: u64,
    current_version: Option<u64>,
    depth: Depth,
) -> Result<Review> {
    let mut review = Review::default();
    let fail = |message: String| GateFailure { check: Check::RestoreVersion, message };
    if current_version == Some(version) {
        review.failures.push(fail(format!("version {version} is already current")));
        return Ok(review);
    }
    if current_version.is_none_or(|current| version > current) {
        review.failures.push(fail(format!(
            "version {version} was never current (the current version is {})",
            current_version.map_or("none".into(), |v| v.to_string())
        )));
        return Ok(review);
    }
    // Current once means on the chain of versions from the current one back (each names its predecessor): a
    // manifest a promoter wrote but never committed (killed, or beaten to the pointer) is not on it.
    let mut at = current_version;
    while let Some(v) = at.filter(|v| *v > version) {
        at = read_manifest(lake, &rules.dataset, v).await?.and_then(|m| m.previous_version);
    }
    if at != Some(version) {
        review.failures.push(fail(format!(
            "version {version} was never current: no version from the current one back names it as its predecessor \
             (a manifest written by a promotion that did not commit)"
        )));
        return Ok(review);
    }
    let Some(manifest) = read_manifest(lake, &rules.dataset, version).await? else {
        review.failures.push(fail(format!("manifest {version} does not exist")));
        return Ok(review);
    };
    review.metrics = metrics_of(lake, rules, &runs_of(&manifest.files)).await?;
    if depth == Depth::Full {
        for failure in gate::verify_files(lake, &manifest.files).await? {
            review.failures.push(fail(format!("version {version}: {}", failure.message)));
        }
    }
    review.files = manifest.files;
    Ok(review)
}

/// Writes manifest `N` create-only, reusing an orphan that describes the same change or taking the next
/// free number.
async fn write_manifest(lake: &Lake, layout: &DatasetLayout, mut manifest: Manifest) -> Result<(Manifest, Bytes)> {
    for _ in 0..1000 {
        let key = lake.path(&layout.manifest(manifest.version));
        let bytes = Bytes::from(manifest.to_bytes());
        match lake.put_if_absent(&key, bytes.clone()).await {
            Ok(()) => return Ok((manifest, bytes)),
            Err(e) if e.kind == StorageErrorKind::AlreadyExists => {
                let existing = lake.get(&key).await?.unwrap_or_default();
                if let Ok(orphan) = serde_json::from_slice::<Manifest>(&existing)
                    && orphan.same_change(&manifest)
                {
                    return Ok((orphan, existing));
                }
                manifest.version += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Inconsistent {
        uri: lake.uri_of(&lake.path(&layout.manifests())),
        message: "no free manifest number".into(),
    })
}

/// Writes a `refused` audit record for a gate refusal.
async fn record_refusal(
    lake: &Lake,
    rules: &GateRules,
    request: &PromoteRequest,
    mode: PromotionMode,
    version_before: Option<u64>,
    review: &Review,
) -> Result<String> {
    let mut record =
        audit::record(&rules.dataset, AuditResult::Refused, &request.reason, &target_runs(&request.target));
    record.approved_by = Some(request.approved_by.clone());
    record.mode = Some(mode);
    record.restore_version = match request.target {
        Target::Restore { version } => Some(version),
        Target::Runs { .. } => None,
    };
    record.version_before = version_before;
    record.metrics = review.metrics.clone();
    record.failed_checks = review.failures.iter().map(GateFailure::to_record).collect();
    record.promotion = request.promotion.clone();
    audit::write(lake, &record).await
}

/// Promotes (or restores) with the commit described in the module's documentation.
pub async fn promote(
    lake: &Lake,
    dataset: &Dataset,
    request: &PromoteRequest,
    hooks: &Hooks,
) -> Result<PromoteOutcome, PromoteError> {
    validate(request)?;
    let rules = GateRules::of(dataset)?;
    let layout = DatasetLayout::new(&rules.dataset).map_err(Error::from)?;
    let mut retries = 0;
    for attempt in 1..=MAX_ATTEMPTS {
        let latest = read_latest(lake, &rules.dataset).await?;
        let (pointer, read_version): (Option<&LatestPointer>, Option<&ObjectVersion>) =
            (latest.as_ref().map(|(p, _)| p), latest.as_ref().map(|(_, v)| v));
        // The audit log, read once per attempt for the three questions below.
        let audited = audit::list(lake, &rules.dataset).await?;
        // 1. Already done by this request? Then only catch up.
        if let Some(pointer) = pointer
            && pointer_is_this_request(pointer, request)
        {
            let has_record = audited.iter().any(|r| {
                r.version_after == Some(pointer.version)
                    && matches!(r.result, AuditResult::Promoted | AuditResult::RolledBack)
            });
            // Without an identity, a pointer that already has its audit record is a finished promotion of an
            // identical request: the audit log answers for it below (or, with `again`, it is promoted again).
            if request.promotion.is_some() || !has_record {
                return Ok(finish_committed(lake, &rules, &layout, pointer, request, hooks).await?);
            }
        }
        // Already committed by this request (its Promotion identity; without one, an identical request) and
        // recorded? Then say so instead of committing it again — however many promotions came since.
        if !request.again
            && let Some(record) = audited.iter().find(|r| record_is_this_request(r, request))
        {
            repair_current(lake, &rules.dataset, hooks).await?;
            return Ok(PromoteOutcome {
                already_promoted: true,
                result: record.result,
                version_before: record.version_before,
                version_after: record.version_after.unwrap_or_default(),
                change: record.change.clone().unwrap_or_default(),
                metrics: record.metrics.clone(),
                retries,
                audit_key: Some(record.key.clone()),
            });
        }
        // Repair current/ first if a killed promoter left it behind the pointer.
        let current = match pointer {
            // No pointer, but a version was committed (`current/` shows one, or the audit log records one):
            // `_LATEST.json` was lost (deleted by hand, a bad restore of the bucket). Starting again from nothing
            // would drop every current file and skip the key checks against them. (A manifest alone proves
            // nothing: a first promotion killed, or still on its way, before its pointer write leaves one.)
            None if lake.get(&lake.path(&layout.current_manifest())).await?.is_some()
                || audited.iter().any(|r| matches!(r.result, AuditResult::Promoted | AuditResult::RolledBack)) =>
            {
                return Err(Error::Inconsistent {
                    uri: lake.uri_of(&lake.path(&layout.latest())),
                    message: "is missing although a version was committed (current/_MANIFEST.json, promoted audit \
                              records): nothing is promoted until it is restored from the last committed manifest \
                              (`history` lists the versions)"
                        .into(),
                }
                .into());
            }
            Some(pointer) => {
                let (manifest, bytes) = load_manifest(lake, &layout, pointer).await?;
                if !current_is_up_to_date(lake, &layout, pointer).await? {
                    hooks.log(
                        "current/ lags _LATEST.json; repairing",
                        serde_json::json!({"dataset": rules.dataset, "version": pointer.version}),
                    );
                    sync_current(lake, &layout, &manifest, &bytes, hooks).await?;
                }
                // Whatever state current/ is in: a promoter killed after current/ but before its audit record
                // leaves the version unrecorded, and a version moved past without its record would lose it — and
                // a repeat of that Promotion would no longer know it committed.
                ensure_audited(lake, &rules, pointer, &manifest, pointer.promotion.clone(), hooks).await?;
                Some(manifest)
            }
            None => None,
        };
        let current_files = current.as_ref().map(|m| m.files.as_slice()).unwrap_or_default();
        let version_before = pointer.map(|p| p.version);
        // 2. The gate.
        let (review, mode, restored) = match &request.target {
            Target::Runs { run_ids, mode } => {
                (gate::review_runs(lake, &rules, run_ids, current_files, *mode, Depth::Full).await?, *mode, None)
            }
            Target::Restore { version } => (
                review_restore(lake, &rules, *version, version_before, Depth::Full).await?,
                PromotionMode::ReplaceAll,
                Some(*version),
            ),
        };
        if !review.failures.is_empty() {
            let audit_key = record_refusal(lake, &rules, request, mode, version_before, &review).await?;
            return Err(PromoteError::Refused { failures: review.failures, audit_key: Some(audit_key) });
        }
        // 3. Plan and write the manifest.
        let files = match restored {
            Some(_) => review.files.clone(),
            None => plan::next_files(current_files, &review.files, mode),
        };
        let change = plan::change(current_files, &files);
        let now = crate::now_rfc3339();
        let runs = target_runs(&request.target);
        let draft = Manifest {
            format: manifest::FORMAT,
            dataset: rules.dataset.clone(),
            schema_v: rules.schema_version.clone(),
            version: version_before.unwrap_or(0) + 1,
            previous_version: version_before,
            mode,
            runs: runs.clone(),
            restored_version: restored,
            created_at: now.clone(),
            totals: Totals::of(&files),
            files,
        };
        let (manifest, manifest_bytes) = write_manifest(lake, &layout, draft).await?;
        hooks.step(Step::Manifest);
        // 4. Move the pointer, conditionally on what was read.
        let next = LatestPointer {
            format: manifest::FORMAT,
            dataset: rules.dataset.clone(),
            version: manifest.version,
            manifest: layout.manifest(manifest.version),
            manifest_sha256: hex::encode(Sha256::digest(&manifest_bytes)),
            mode,
            runs: runs.clone(),
            restored_version: restored,
            previous_version: version_before,
            promoted_at: now,
            approved_by: request.approved_by.clone(),
            reason: request.reason.clone(),
            promotion: request.promotion.clone(),
        };
        hooks.step(Step::BeforePointer);
        let body = Bytes::from(serde_json::to_vec_pretty(&next).unwrap_or_default());
        match lake.put_conditional(&lake.path(&layout.latest()), body, read_version).await {
            Ok(()) => {}
            Err(e) if matches!(e.kind, StorageErrorKind::Precondition | StorageErrorKind::AlreadyExists) => {
                retries += 1;
                hooks.log(
                    "_LATEST.json moved since it was read; re-reading, re-planning and re-checking",
                    serde_json::json!({"dataset": rules.dataset, "attempt": attempt, "read_version": version_before}),
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        hooks.step(Step::Pointer);
        // 5. current/
        sync_current(lake, &layout, &manifest, &manifest_bytes, hooks).await?;
        hooks.step(Step::Current);
        // 6. audit
        let metrics = review.metrics.clone();
        let record = committed_record(&rules, &next, request.promotion.clone(), &metrics, &change);
        let audit_key = audit::write_committed(lake, &record, next.version).await?;
        return Ok(PromoteOutcome {
            already_promoted: false,
            result: record.result,
            version_before,
            version_after: next.version,
            change,
            metrics,
            retries,
            audit_key: Some(audit_key),
        });
    }
    Err(PromoteError::Contention { dataset: rules.dataset, attempts: MAX_ATTEMPTS })
}

/// Records a rejection: a `rejected` audit record with the metrics reviewed; nothing moves.
pub async fn reject(
    lake: &Lake,
    dataset: &Dataset,
    target: &Target,
    rejected_by: &str,
    reason: &str,
    promotion: Option<PromotionRef>,
) -> Result<String, PromoteError> {
    if rejected_by.trim().is_empty() || reason.trim().is_empty() {
        return Err(PromoteError::Usage("a rejection needs who rejected and why".into()));
    }
    let rules = GateRules::of(dataset)?;
    let latest = read_latest(lake, &rules.dataset).await?;
    let version_before = latest.as_ref().map(|(p, _)| p.version);
    let (metrics, mode, restore) = match target {
        Target::Runs { run_ids, mode } => {
            for run_id in run_ids {
                silverline_crds::names::check_run_id(run_id).map_err(|e| PromoteError::Usage(e.to_string()))?;
            }
            (metrics_of(lake, &rules, run_ids).await?, *mode, None)
        }
        Target::Restore { version } => (Vec::new(), PromotionMode::ReplaceAll, Some(*version)),
    };
    let mut record = audit::record(&rules.dataset, AuditResult::Rejected, reason, &target_runs(target));
    record.rejected_by = Some(rejected_by.to_owned());
    record.mode = Some(mode);
    record.restore_version = restore;
    record.version_before = version_before;
    record.version_after = version_before;
    record.metrics = metrics;
    record.promotion = promotion;
    Ok(audit::write(lake, &record).await?)
}

/// What a promotion would do, for reviewers: read-only, no byte reads (`file_integrity` and `key_collision`
/// are only checked at promotion time).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub version_before: Option<u64>,
    pub metrics: Vec<RunMetrics>,
    pub change: Change,
    /// Checks that would refuse the promotion already now.
    pub failures: Vec<GateFailure>,
}

/// Previews promoting `run_ids` in `mode` (read-only).
pub async fn preview(lake: &Lake, dataset: &Dataset, run_ids: &[String], mode: PromotionMode) -> Result<Preview> {
    preview_target(lake, dataset, &Target::Runs { run_ids: run_ids.to_vec(), mode }).await
}

/// Previews a promotion or a rollback (read-only).
pub async fn preview_target(lake: &Lake, dataset: &Dataset, target: &Target) -> Result<Preview> {
    let rules = GateRules::of(dataset)?;
    let layout = DatasetLayout::new(&rules.dataset)?;
    let latest = read_latest(lake, &rules.dataset).await?;
    let current = match &latest {
        Some((pointer, _)) => Some(load_manifest(lake, &layout, pointer).await?.0),
        None => None,
    };
    let current_files = current.as_ref().map(|m| m.files.as_slice()).unwrap_or_default();
    let version_before = latest.as_ref().map(|(p, _)| p.version);
    let (review, files) = match target {
        Target::Runs { run_ids, mode } => {
            let review = gate::review_runs(lake, &rules, run_ids, current_files, *mode, Depth::Quick).await?;
            let files = plan::next_files(current_files, &review.files, *mode);
            (review, files)
        }
        Target::Restore { version } => {
            let review = review_restore(lake, &rules, *version, version_before, Depth::Quick).await?;
            let files = review.files.clone();
            (review, files)
        }
    };
    Ok(Preview {
        version_before,
        metrics: review.metrics,
        change: plan::change(current_files, &files),
        failures: review.failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The operator awaits these inside its controllers, whose futures must be `Send`.
    #[test]
    fn the_promotion_futures_are_send() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(
            dir.path().to_str().expect("utf-8"),
            &crate::StoreOptions::default(),
            crate::OpenOptions::WRITER,
        )
        .expect("open");
        let dataset =
            Dataset::from_manifest(include_str!("../../examples/datasets/transactions.yaml")).expect("parses");
        let target = Target::Restore { version: 1 };
        assert_send(&preview_target(&lake, &dataset, &target));
        assert_send(&preview(&lake, &dataset, &[], PromotionMode::Append));
        let request =
            PromoteRequest { target, approved_by: "a".into(), reason: "r".into(), promotion: None, again: false };
        let hooks = Hooks::default();
        assert_send(&promote(&lake, &dataset, &request, &hooks));
        assert_send(&crate::history::history(&lake, "transactions"));
        assert_send(&crate::audit::list(&lake, "transactions"));
    }
}
