//! Reads back what an attempt left in the lake: `_SUCCESS` (the commit), `_QUALITY_REPORT.json`,
//! `_CIRCUIT_BREAKER.json` and the run-id claim `_RUN.json`. A thin adaptor over `silverline-lake`, which owns
//! the URI rules, the S3 client, the layout and the marker names; here only the caching of opened lakes and the
//! mapping into the operator's `Error`.
//!
//! The operator reads the lake with its own identity (for S3: the usual AWS environment, IRSA or web identity);
//! it never reads the Dataset's credentials Secret. Local lakes must be absolute paths.

use crate::{Error, Result};
use silverline_crds::StorageSpec;
pub use silverline_lake::layout::{CIRCUIT_BREAKER_REPORT, QUALITY_REPORT, RUN_CLAIM, SUCCESS};
use silverline_lake::{LakeUri, OpenOptions, RelativePaths, StoreOptions};
use std::sync::Arc;

/// What the lake says about one run id.
pub type LakeFinding = silverline_lake::RunFinding;

/// Opened lakes, by storage settings: one object-store client (and its connection pool) per lake, not one per
/// reconcile.
#[derive(Default)]
pub struct Lakes(std::sync::Mutex<std::collections::HashMap<String, Arc<Lake>>>);

impl Lakes {
    pub fn open(&self, storage: &StorageSpec) -> Result<Arc<Lake>> {
        let key = format!("{}|{:?}|{:?}", storage.lake_uri, storage.endpoint, storage.region);
        if let Some(lake) = self.0.lock().ok().and_then(|lakes| lakes.get(&key).cloned()) {
            return Ok(lake);
        }
        let lake = Arc::new(Lake::open(storage)?);
        // A local lake that does not exist yet is opened again next time, once the worker has created it.
        if lake.inner.is_some()
            && let Ok(mut lakes) = self.0.lock()
        {
            lakes.insert(key, lake.clone());
        }
        Ok(lake)
    }
}

/// A lake root opened for reading; a local lake that does not exist yet holds nothing.
pub struct Lake {
    inner: Option<silverline_lake::Lake>,
}

impl Lake {
    /// Opens the lake of a Dataset. A local lake that does not exist yet holds nothing.
    pub fn open(storage: &StorageSpec) -> Result<Lake> {
        let uri = &storage.lake_uri;
        let fail = |e: silverline_lake::StorageError| Error::Lake { uri: uri.clone(), message: e.to_string() };
        if let LakeUri::Local(dir) = LakeUri::parse(uri, RelativePaths::Reject).map_err(fail)?
            && !dir.exists()
        {
            return Ok(Lake { inner: None });
        }
        let lake = silverline_lake::Lake::open(uri, &StoreOptions::from_storage(storage), OpenOptions::READER)
            .map_err(fail)?;
        Ok(Lake { inner: Some(lake) })
    }

    /// The lake itself, for the promotion reads (`None` for a local lake that does not exist yet).
    pub fn lake(&self) -> Option<&silverline_lake::Lake> {
        self.inner.as_ref()
    }

    /// What the lake holds for one run id, the commit marker first.
    pub async fn find(&self, dataset: &str, schema_version: &str, run_id: &str) -> Result<LakeFinding> {
        let Some(lake) = &self.inner else {
            // Names are still checked, so that an unsafe name is an error whether or not the lake exists.
            silverline_lake::DatasetLayout::new(dataset)
                .and_then(|l| l.run_prefix(silverline_lake::Area::Silver, schema_version, run_id))
                .map_err(|e| Error::Lake { uri: "(lake not created yet)".into(), message: e.to_string() })?;
            return Ok(LakeFinding::Nothing);
        };
        lake.find_run(dataset, schema_version, run_id)
            .await
            .map_err(|e| Error::Lake { uri: lake.uri.clone(), message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(uri: &str) -> StorageSpec {
        StorageSpec { lake_uri: uri.into(), endpoint: None, region: None, credentials_secret: None }
    }

    fn report(run_id: &str, outcome: &str) -> String {
        serde_json::json!({
            "outcome": outcome, "run_id": run_id, "dataset": "tx", "schema_v": "v1", "lake_uri": "file:///x",
            "input_uri": "/in.csv", "input_checksum": "00", "inputs": [], "worker_version": "0.1.0", "git_sha": "x",
            "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:01Z", "duration_seconds": 1.0,
            "input_rows": 10, "valid_rows_count": 8, "quarantined_rows_count": 1, "condemned_rows_count": 1,
            "quarantine_rate": 0.1, "error_type_distribution": {}, "condemned_reason_distribution": {},
            "avg_attempt_count": 1.0, "duplicate_detection_rate": 0.0, "auto_condemnation_rate": 0.0,
            "files": [{"key": "file:///x/silver/part-00000.parquet", "area": "silver", "rows": 8, "bytes": 100, "sha256": "ab"}]
        })
        .to_string()
    }

    fn write(root: &std::path::Path, run_id: &str, file: &str, text: &str) {
        let dir = root.join(format!("silver/tx/schema_v=v1/run_id={run_id}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(file), text).expect("write");
    }

    #[tokio::test]
    async fn findings_follow_the_markers_a_run_left() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "r-ok", SUCCESS, &report("r-ok", "success"));
        write(root.path(), "r-ok", RUN_CLAIM, "{}");
        write(root.path(), "r-qg", QUALITY_REPORT, &report("r-qg", "quality_gate_failed"));
        write(root.path(), "r-cb", CIRCUIT_BREAKER_REPORT, "{}");
        write(root.path(), "r-claim", RUN_CLAIM, "{}");
        let lake = Lake::open(&storage(&format!("file://{}", root.path().display()))).expect("open");
        let find = |id: &'static str| {
            let lake = &lake;
            async move { lake.find("tx", "v1", id).await.expect("find") }
        };
        match find("r-ok").await {
            LakeFinding::Success { report, uri } => {
                assert_eq!(report.valid_rows_count, 8);
                assert!(uri.ends_with("/silver/tx/schema_v=v1/run_id=r-ok/_SUCCESS"), "{uri}");
            }
            other => panic!("expected success, got {other:?}"),
        }
        assert!(matches!(find("r-qg").await, LakeFinding::QualityReport { .. }));
        assert!(matches!(find("r-cb").await, LakeFinding::CircuitBreaker { .. }));
        assert_eq!(find("r-claim").await, LakeFinding::Claimed);
        assert_eq!(find("r-none").await, LakeFinding::Nothing);
    }

    #[tokio::test]
    async fn a_lake_that_does_not_exist_yet_holds_nothing() {
        let lake = Lake::open(&storage("/nonexistent/silverline/lake")).expect("open");
        assert_eq!(lake.find("tx", "v1", "r1").await.expect("find"), LakeFinding::Nothing);
    }

    #[tokio::test]
    async fn lakes_are_opened_once_but_a_missing_local_lake_is_looked_for_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let lakes = Lakes::default();
        let missing = storage(&format!("{}/lake", root.path().display()));
        let first = lakes.open(&missing).expect("open");
        assert!(!Arc::ptr_eq(&first, &lakes.open(&missing).expect("open")), "not cached while missing");
        write(&root.path().join("lake"), "r1", SUCCESS, &report("r1", "success"));
        let found = lakes.open(&missing).expect("open");
        assert!(Arc::ptr_eq(&found, &lakes.open(&missing).expect("open")), "cached once it exists");
        assert!(matches!(found.find("tx", "v1", "r1").await.expect("find"), LakeFinding::Success { .. }));
    }

    #[tokio::test]
    async fn a_report_of_another_run_or_unsafe_names_are_errors() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "r1", SUCCESS, &report("r2", "success"));
        let lake = Lake::open(&storage(root.path().to_str().expect("utf-8"))).expect("open");
        assert!(lake.find("tx", "v1", "r1").await.is_err());
        assert!(lake.find("../tx", "v1", "r1").await.is_err());
        assert!(lake.find("tx", "v1", "../r1").await.is_err());
        assert!(Lake::open(&storage("relative/lake")).is_err());
    }
}
