//! Turning a run's counts into the `_SUCCESS` / `_QUALITY_REPORT.json` document (pure), and writing markers.

use crate::input::storage_error;
use crate::ledger::{CondemnReason, Counts};
use crate::values::ErrorType;
use crate::{Error, Result};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use silverline_crds::report::rate;
pub use silverline_crds::report::{FileRecord, InputRecord, RunReport};
use silverline_lake::Lake as Location;
use std::collections::BTreeMap;
use tokio::runtime::Handle;

pub const WORKER_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_SHA: &str = env!("SILVERLINE_GIT_SHA");

/// The checksum of the whole input: that of the object itself, or for several objects the SHA-256 of their
/// `sha256sum`-style lines.
pub fn input_checksum(inputs: &[InputRecord]) -> String {
    use sha2::{Digest, Sha256};
    if let [single] = inputs {
        return single.sha256.clone();
    }
    let mut hasher = Sha256::new();
    for input in inputs {
        hasher.update(format!("{}  {}\n", input.sha256, input.uri));
    }
    hex::encode(hasher.finalize())
}

/// Everything about a run that is not a count.
pub struct RunFacts {
    pub run_id: String,
    pub dataset: String,
    pub schema_v: String,
    pub lake_uri: String,
    pub input_uri: String,
    pub inputs: Vec<InputRecord>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub files: Vec<FileRecord>,
}

pub fn build_report(outcome: &str, facts: RunFacts, counts: &Counts) -> RunReport {
    let error_type_distribution: BTreeMap<String, u64> = ErrorType::ALL
        .iter()
        .filter(|t| counts.by_error[t.index()] > 0)
        .map(|t| (t.as_str().to_owned(), counts.by_error[t.index()]))
        .collect();
    let mut condemned_reason_distribution = BTreeMap::new();
    for (reason, n) in [
        (CondemnReason::ExactDuplicate, counts.exact_duplicates),
        (CondemnReason::MaxAttemptsReached, counts.max_attempts_condemned),
    ] {
        if n > 0 {
            condemned_reason_distribution.insert(reason.as_str().to_owned(), n);
        }
    }
    let duration = (facts.finished_at - facts.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
    RunReport {
        outcome: outcome.to_owned(),
        input_checksum: input_checksum(&facts.inputs),
        run_id: facts.run_id,
        dataset: facts.dataset,
        schema_v: facts.schema_v,
        lake_uri: facts.lake_uri,
        input_uri: facts.input_uri,
        inputs: facts.inputs,
        worker_version: WORKER_VERSION.to_owned(),
        git_sha: GIT_SHA.to_owned(),
        started_at: facts.started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: facts.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        duration_seconds: duration,
        input_rows: counts.input_rows,
        valid_rows_count: counts.valid,
        quarantined_rows_count: counts.quarantined,
        condemned_rows_count: counts.condemned,
        quarantine_rate: rate(counts.quarantined, counts.input_rows),
        gated_quarantine_rate: Some(counts.gated_rate()),
        error_type_distribution,
        condemned_reason_distribution,
        avg_attempt_count: rate(counts.quarantined_attempts, counts.quarantined),
        duplicate_detection_rate: rate(counts.exact_duplicates, counts.input_rows),
        auto_condemnation_rate: rate(counts.max_attempts_condemned, counts.input_rows),
        files: facts.files,
    }
}

/// How [`put_json`] writes a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put<'a> {
    /// Replaces whatever is there (the failure reports).
    Replace,
    /// Creates the marker of run `run_id` (its claim, its `_SUCCESS`): one that exists means that run id was used
    /// before, and the write fails with [`Error::RunIdReused`] naming it.
    OnceFor(&'a str),
}

/// Writes a small JSON object, as `put` says.
pub fn put_json(
    location: &Location,
    key: &Path,
    value: &impl serde::Serialize,
    put: Put<'_>,
    handle: &Handle,
) -> Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| Error::internal("serialising a marker", e))?;
    let mode = match put {
        Put::Replace => PutMode::Overwrite,
        Put::OnceFor(_) => PutMode::Create,
    };
    let options = PutOptions { mode, ..PutOptions::default() };
    let body = bytes::Bytes::from(body);
    let written = handle.block_on(location.store.put_opts(key, PutPayload::from(body.clone()), options));
    let Err(e) = written else { return Ok(()) };
    let error = match (e, put) {
        (object_store::Error::AlreadyExists { .. }, Put::OnceFor(run_id)) => {
            Error::RunIdReused { run_id: run_id.to_owned(), key: location.uri_of(key) }
        }
        (other, _) => storage_error(other, &location.uri_of(key)),
    };
    // A create whose answer was lost may have been written all the same: a timeout after the store committed it,
    // or a 5xx after it had, retried by the client into "already exists". The marker is this run's if it holds
    // exactly these bytes (a claim holds its run's start to the nanosecond and a nonce; `_SUCCESS` is written
    // only by the run that holds the claim).
    let ambiguous = matches!(&error, Error::RunIdReused { .. })
        || matches!(&error, Error::Storage(e) if e.is(silverline_lake::StorageErrorKind::Transient));
    if matches!(put, Put::OnceFor(_)) && ambiguous {
        let stored = handle.block_on(async { location.store.get(key).await?.bytes().await });
        if stored.is_ok_and(|stored| stored == body) {
            return Ok(());
        }
    }
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_zero_for_an_empty_run() {
        let now = chrono::Utc::now();
        let facts = RunFacts {
            run_id: "r".into(),
            dataset: "d".into(),
            schema_v: "v1".into(),
            lake_uri: "file:///l".into(),
            input_uri: "in.csv".into(),
            inputs: vec![InputRecord { uri: "in.csv".into(), bytes: 10, sha256: "ab".into() }],
            started_at: now,
            finished_at: now,
            files: vec![],
        };
        let report = build_report("success", facts, &Counts::default());
        assert_eq!(report.quarantine_rate, 0.0);
        assert_eq!(report.avg_attempt_count, 0.0);
        assert_eq!(report.input_checksum, "ab");
    }

    #[test]
    fn a_second_marker_of_a_run_names_the_reused_run_id_and_the_key() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let lake = Location::open(
            dir.path().to_str().expect("UTF-8"),
            &silverline_lake::StoreOptions::default(),
            silverline_lake::OpenOptions::WRITER,
        )
        .expect("a local lake");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let key = Path::from("silver/d/schema_v=v1/run_id=r7/_RUN.json");
        put_json(&lake, &key, &serde_json::json!({"n": 1}), Put::OnceFor("r7"), runtime.handle()).expect("first");
        match put_json(&lake, &key, &serde_json::json!({"n": 2}), Put::OnceFor("r7"), runtime.handle()) {
            Err(Error::RunIdReused { run_id, key: shown }) => {
                assert_eq!(run_id, "r7");
                assert_eq!(shown, lake.uri_of(&key));
            }
            other => panic!("expected RunIdReused, got {other:?}"),
        }
        let kept: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(key.as_ref())).expect("the marker")).expect("JSON");
        assert_eq!(kept["n"], 1, "the first marker stays");
        // The same bytes again are this run's own write whose answer was lost (a retried create): done, not reused.
        put_json(&lake, &key, &serde_json::json!({"n": 1}), Put::OnceFor("r7"), runtime.handle()).expect("its own");
        // A report that replaces is not a claim: writing it twice is fine.
        let report = Path::from("silver/d/schema_v=v1/run_id=r7/_QUALITY_REPORT.json");
        for n in [1, 2] {
            put_json(&lake, &report, &serde_json::json!({"n": n}), Put::Replace, runtime.handle()).expect("replace");
        }
    }

    #[test]
    fn the_checksum_of_several_inputs_covers_each() {
        let a = InputRecord { uri: "a".into(), bytes: 1, sha256: "11".into() };
        let b = InputRecord { uri: "b".into(), bytes: 1, sha256: "22".into() };
        let both = input_checksum(&[a.clone(), b.clone()]);
        assert_ne!(both, input_checksum(&[b, a]));
        assert_eq!(both.len(), 64);
    }
}
