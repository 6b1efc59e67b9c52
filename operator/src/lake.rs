//! Reads back what an attempt left in the lake: `_SUCCESS` (the commit), `_QUALITY_REPORT.json`,
//! `_CIRCUIT_BREAKER.json` and the run-id claim `_RUN.json`. Paths follow the worker's `LakeLayout`.
//!
//! The operator reads the lake with its own identity (for S3: the usual AWS environment, IRSA or web identity);
//! it never reads the Dataset's credentials Secret.

use crate::{Error, Result};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use silverline_crds::StorageSpec;
use silverline_crds::names;
use silverline_crds::report::RunReport;
use std::sync::Arc;

pub const SUCCESS: &str = "_SUCCESS";
pub const QUALITY_REPORT: &str = "_QUALITY_REPORT.json";
pub const CIRCUIT_BREAKER_REPORT: &str = "_CIRCUIT_BREAKER.json";
pub const RUN_CLAIM: &str = "_RUN.json";

/// What the lake says about one run id.
#[derive(Debug, Clone, PartialEq)]
pub enum LakeFinding {
    /// `_SUCCESS` exists: the run committed.
    Success { report: Box<RunReport>, uri: String },
    /// `_QUALITY_REPORT.json` exists: the run failed its quality gate.
    QualityReport { report: Box<RunReport>, uri: String },
    /// `_CIRCUIT_BREAKER.json` exists: the run stopped on repeated errors.
    CircuitBreaker { uri: String },
    /// Only the run-id claim exists: a worker started and did not finish.
    Claimed,
    /// Nothing under the run id.
    Nothing,
}

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
        if lake.store.is_some() {
            if let Ok(mut lakes) = self.0.lock() {
                lakes.insert(key, lake.clone());
            }
        }
        Ok(lake)
    }
}

/// A lake root opened for reading.
pub struct Lake {
    store: Option<Arc<dyn ObjectStore>>,
    prefix: Path,
    uri: String,
}

impl Lake {
    /// Opens the lake of a Dataset. A local lake that does not exist yet holds nothing.
    pub fn open(storage: &StorageSpec) -> Result<Lake> {
        let uri = storage.lake_uri.clone();
        let fail = |message: String| Error::Lake { uri: uri.clone(), message };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(fail("the URI names no bucket".into()));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(region) = &storage.region {
                builder = builder.with_region(region);
            }
            let endpoint = storage.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
            if let Some(endpoint) = endpoint {
                builder = builder
                    .with_endpoint(&endpoint)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            let store = builder.build().map_err(|e| fail(e.to_string()))?;
            return Ok(Lake {
                store: Some(Arc::new(store)),
                prefix: Path::from(prefix.trim_matches('/')),
                uri: format!("s3://{bucket}/{}", prefix.trim_matches('/')),
            });
        }
        let local = match uri.strip_prefix("file://") {
            Some(rest) => rest.to_owned(),
            None if uri.starts_with('/') => uri.clone(),
            None => return Err(fail("the lake must be s3://, file:// or an absolute path".into())),
        };
        let dir = std::path::Path::new(&local);
        if !dir.exists() {
            return Ok(Lake { store: None, prefix: Path::default(), uri: format!("file://{local}") });
        }
        let dir = dir.canonicalize().map_err(|e| fail(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| fail(e.to_string()))?;
        Ok(Lake { store: Some(Arc::new(store)), prefix: Path::default(), uri: format!("file://{}", dir.display()) })
    }

    /// `silver/{dataset}/schema_v={v}/run_id={id}`, from checked names only.
    fn run_prefix(&self, dataset: &str, schema_version: &str, run_id: &str) -> Result<Path> {
        for check in [
            names::check_dataset_name(dataset),
            names::check_schema_version(schema_version),
            names::check_run_id(run_id),
        ] {
            check.map_err(|e| Error::Lake { uri: self.uri.clone(), message: e.to_string() })?;
        }
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend([
            "silver".to_owned(),
            dataset.to_owned(),
            format!("schema_v={schema_version}"),
            format!("run_id={run_id}"),
        ]);
        Ok(Path::from_iter(parts))
    }

    fn uri_of(&self, path: &Path) -> String {
        let relative: Vec<String> =
            path.parts().skip(self.prefix.parts().count()).map(|p| p.as_ref().to_owned()).collect();
        format!("{}/{}", self.uri.trim_end_matches('/'), relative.join("/"))
    }

    async fn read(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let Some(store) = &self.store else { return Ok(None) };
        match store.get(path).await {
            Ok(got) => match got.bytes().await {
                Ok(bytes) => Ok(Some(bytes.to_vec())),
                Err(e) => Err(Error::Lake { uri: self.uri_of(path), message: e.to_string() }),
            },
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Lake { uri: self.uri_of(path), message: e.to_string() }),
        }
    }

    async fn report(&self, path: &Path, run_id: &str) -> Result<Option<Box<RunReport>>> {
        let Some(bytes) = self.read(path).await? else { return Ok(None) };
        let report: RunReport = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Lake { uri: self.uri_of(path), message: format!("not a run report: {e}") })?;
        if report.run_id != run_id {
            return Err(Error::Lake {
                uri: self.uri_of(path),
                message: format!("the report is of run id {:?}, expected {run_id:?}", report.run_id),
            });
        }
        Ok(Some(Box::new(report)))
    }

    /// What the lake holds for one run id, the commit marker first.
    pub async fn find(&self, dataset: &str, schema_version: &str, run_id: &str) -> Result<LakeFinding> {
        let prefix = self.run_prefix(dataset, schema_version, run_id)?;
        let success = prefix.clone().join(SUCCESS);
        if let Some(report) = self.report(&success, run_id).await? {
            return Ok(LakeFinding::Success { report, uri: self.uri_of(&success) });
        }
        let quality = prefix.clone().join(QUALITY_REPORT);
        if let Some(report) = self.report(&quality, run_id).await? {
            return Ok(LakeFinding::QualityReport { report, uri: self.uri_of(&quality) });
        }
        let breaker = prefix.clone().join(CIRCUIT_BREAKER_REPORT);
        if self.read(&breaker).await?.is_some() {
            return Ok(LakeFinding::CircuitBreaker { uri: self.uri_of(&breaker) });
        }
        if self.read(&prefix.join(RUN_CLAIM)).await?.is_some() {
            return Ok(LakeFinding::Claimed);
        }
        Ok(LakeFinding::Nothing)
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
