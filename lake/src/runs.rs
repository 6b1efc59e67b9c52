//! What the lake holds for one run id, read from the markers it left: `_SUCCESS` (the commit),
//! `_QUALITY_REPORT.json`, `_CIRCUIT_BREAKER.json` and the run-id claim `_RUN.json`.

use crate::layout::{Area, CIRCUIT_BREAKER_REPORT, DatasetLayout, QUALITY_REPORT, RUN_CLAIM, SUCCESS};
use crate::store::Lake;
use crate::{Error, Result};
use object_store::path::Path;
use silverline_crds::report::RunReport;

/// What the lake says about one run id.
#[derive(Debug, Clone, PartialEq)]
pub enum RunFinding {
    /// `_SUCCESS` exists: the run committed.
    Success { report: Box<RunReport>, uri: String },
    /// `_QUALITY_REPORT.json` exists: the run failed its quality gate.
    QualityReport { report: Box<RunReport>, uri: String },
    /// `_CIRCUIT_BREAKER.json` exists: the run stopped on repeated errors.
    CircuitBreaker { uri: String },
    /// Only the run-id claim exists: a worker started and did not finish (or is still running).
    Claimed,
    /// Nothing under the run id.
    Nothing,
}

impl RunFinding {
    /// A stable name for what the lake holds: `committed`, `quality_failed`, `circuit_breaker`, `unfinished`,
    /// `missing`.
    pub fn state(&self) -> &'static str {
        match self {
            RunFinding::Success { .. } => "committed",
            RunFinding::QualityReport { .. } => "quality_failed",
            RunFinding::CircuitBreaker { .. } => "circuit_breaker",
            RunFinding::Claimed => "unfinished",
            RunFinding::Nothing => "missing",
        }
    }
}

impl Lake {
    /// Reads and parses a JSON object, or `None` when there is none.
    pub async fn read_json<T: serde::de::DeserializeOwned>(&self, key: &Path, what: &'static str) -> Result<Option<T>> {
        let Some(bytes) = self.get(key).await? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| Error::Format { uri: self.uri_of(key), what, source })
    }

    async fn report(&self, key: &Path, run_id: &str) -> Result<Option<Box<RunReport>>> {
        let Some(report) = self.read_json::<RunReport>(key, "run report").await? else { return Ok(None) };
        if report.run_id != run_id {
            return Err(Error::Inconsistent {
                uri: self.uri_of(key),
                message: format!("the report is of run id {:?}, expected {run_id:?}", report.run_id),
            });
        }
        Ok(Some(Box::new(report)))
    }

    /// What the lake holds for one run id, the commit marker first.
    pub async fn find_run(&self, dataset: &str, schema_version: &str, run_id: &str) -> Result<RunFinding> {
        let prefix = DatasetLayout::new(dataset)?.run_prefix(Area::Silver, schema_version, run_id)?;
        let key = |name: &str| self.path(&format!("{prefix}/{name}"));
        let success = key(SUCCESS);
        if let Some(report) = self.report(&success, run_id).await? {
            return Ok(RunFinding::Success { report, uri: self.uri_of(&success) });
        }
        let quality = key(QUALITY_REPORT);
        if let Some(report) = self.report(&quality, run_id).await? {
            return Ok(RunFinding::QualityReport { report, uri: self.uri_of(&quality) });
        }
        let breaker = key(CIRCUIT_BREAKER_REPORT);
        if self.head(&breaker).await?.is_some() {
            return Ok(RunFinding::CircuitBreaker { uri: self.uri_of(&breaker) });
        }
        if self.head(&key(RUN_CLAIM)).await?.is_some() {
            return Ok(RunFinding::Claimed);
        }
        Ok(RunFinding::Nothing)
    }
}
