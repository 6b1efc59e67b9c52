//! The Silverline worker: one run of the history-safe CSV → Parquet transform.
//!
//! The pipeline, from input to lake:
//! `tokenize` (CSV bytes → chunks of raw records) → `check` (per chunk, in parallel: rules and typed columns) →
//! `ledger` (in input order: exact duplicates, keys, attempts, circuit breaker) → `sink` (Parquet part files) →
//! `report` (`_SUCCESS` written last).

pub mod check;
pub mod contract;
pub mod input;
pub mod ledger;
pub mod log;
pub mod promote;
pub mod quarantine;
pub mod replay;
pub mod report;
pub mod run;
pub mod sink;
pub mod summary;
pub mod tokenize;
pub mod upload;
pub mod values;

pub use silverline_lake::layout;
use silverline_lake::{StorageError, StorageErrorKind};

use std::fmt;

/// The worker's exit codes: the operator relies on them, so they are part of the product's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    Other = 1,
    Usage = 2,
    SchemaDrift = 3,
    CircuitBreaker = 4,
    QualityGate = 5,
    /// `promote`: the gate refused; the message names each failed check.
    GateRefused = 6,
    /// `promote`: `_LATEST.json` kept changing concurrently, after retries.
    PointerContention = 7,
    Transient = 75,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// The underlying error of a variant that keeps it (a decoder's, an encoder's, the system's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can end a run early, each saying what failed and where. A variant built from another error
/// keeps it as its `source` (its message repeats the source's, so the one line a person reads is complete).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("usage: {0}")]
    Usage(String),
    /// A run id, dataset or other name from the command line that is not valid.
    #[error("usage: {0}")]
    InvalidName(#[from] silverline_crds::names::InvalidName),
    #[error("contract {path}: {source}")]
    Contract { path: String, source: silverline_crds::ContractError },
    #[error("contract {path}: cannot read it: {source}")]
    ContractRead { path: String, source: std::io::Error },
    #[error("contract: {0}")]
    ContractUnsupported(String),
    #[error("run id {run_id} is already used: {key} exists; a run id is never reused, choose another")]
    RunIdReused { run_id: String, key: String },
    #[error("schema drift in {source_uri}: {message}")]
    SchemaDrift { source_uri: String, message: String },
    /// An input that is not what it should be, in words (e.g. a header that is not UTF-8).
    #[error("cannot read input {source_uri}: {message}")]
    UnreadableInput { source_uri: String, message: String },
    /// An input (or a quarantine file) whose decoder failed: what failed (or what the input should have been), and
    /// the decoder's error.
    #[error("cannot read input {source_uri}: {context}: {source}")]
    UndecodableInput {
        source_uri: String,
        context: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "circuit breaker: more than {max_same_errors} rows with {error_type} (last at {source_uri} record {record}, \
         line {line}); the run stopped without _SUCCESS"
    )]
    CircuitBreaker { error_type: &'static str, max_same_errors: u64, source_uri: String, record: u64, line: u64 },
    #[error(
        "quality gate: quarantine rate {rate:.4} (rows failing anew; in a replay, rows failing as before are not \
         counted) is above maxQuarantineRate {max}; data and quarantine are kept for review under {report_key}, no \
         _SUCCESS"
    )]
    QualityGate { rate: f64, max: f64, report_key: String },
    #[error("transient I/O failure at {key}: {message}")]
    Transient { key: String, message: String },
    /// A failed call to the lake's or the input's object store, classified by kind.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A lake document that is unreadable or inconsistent (pointer, manifest, report).
    #[error("lake: {0}")]
    Lake(#[source] silverline_lake::Error),
    #[error("promotion refused by the gate ({checks}): {source}")]
    GateRefused {
        checks: String,
        #[source]
        source: silverline_lake::PromoteError,
    },
    /// `_LATEST.json` kept changing under the promoter (the lake's `PromoteError::Contention`).
    #[error("{0}")]
    PointerContention(#[source] silverline_lake::PromoteError),
    /// `promote`: an object the promotion copies or reads is gone from the lake — not a feed's fault (exit 3),
    /// the lake's: a run's file deleted or moved after the run was written.
    #[error("promote: a file of the version being made current is missing from the lake: {source}")]
    PromoteObjectMissing { source: StorageError },
    #[error("run stopped by {signal}: uploads aborted, no _SUCCESS")]
    Interrupted { signal: &'static str },
    #[error("{context}: {source}")]
    Internal {
        context: String,
        #[source]
        source: BoxError,
    },
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_)
            | Error::InvalidName(_)
            | Error::Contract { .. }
            | Error::ContractRead { .. }
            | Error::ContractUnsupported(_)
            | Error::RunIdReused { .. } => ExitCode::Usage,
            Error::SchemaDrift { .. } | Error::UnreadableInput { .. } | Error::UndecodableInput { .. } => {
                ExitCode::SchemaDrift
            }
            Error::CircuitBreaker { .. } => ExitCode::CircuitBreaker,
            Error::QualityGate { .. } => ExitCode::QualityGate,
            Error::Transient { .. } | Error::Interrupted { .. } => ExitCode::Transient,
            Error::Internal { .. } | Error::Lake(_) | Error::PromoteObjectMissing { .. } => ExitCode::Other,
            Error::GateRefused { .. } => ExitCode::GateRefused,
            Error::PointerContention(_) => ExitCode::PointerContention,
            Error::Storage(e) => match e.kind {
                StorageErrorKind::AccessDenied | StorageErrorKind::Usage | StorageErrorKind::AlreadyExists => {
                    ExitCode::Usage
                }
                // A missing object is a missing input: the lake's own objects are never read before written.
                StorageErrorKind::NotFound => ExitCode::SchemaDrift,
                StorageErrorKind::Transient => ExitCode::Transient,
                StorageErrorKind::Precondition => ExitCode::Other,
            },
        }
    }

    /// A stable, low-cardinality name for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Usage(_) | Error::InvalidName(_) => "usage",
            Error::Contract { .. } | Error::ContractRead { .. } | Error::ContractUnsupported(_) => "contract",
            Error::RunIdReused { .. } => "run_id_reused",
            Error::SchemaDrift { .. } => "schema_drift",
            Error::UnreadableInput { .. } | Error::UndecodableInput { .. } => "unreadable_input",
            Error::CircuitBreaker { .. } => "circuit_breaker",
            Error::QualityGate { .. } => "quality_gate",
            Error::Transient { .. } => "transient_io",
            Error::Interrupted { .. } => "interrupted",
            Error::Internal { .. } => "internal",
            Error::Lake(_) | Error::PromoteObjectMissing { .. } => "lake",
            Error::GateRefused { .. } => "gate_refused",
            Error::PointerContention(_) => "pointer_contention",
            Error::Storage(e) => match e.kind {
                StorageErrorKind::NotFound => "unreadable_input",
                kind => kind.as_str(),
            },
        }
    }

    /// An unexpected failure while doing `context`, keeping the error (or a description of what went wrong).
    pub(crate) fn internal(context: impl fmt::Display, err: impl Into<BoxError>) -> Error {
        Error::Internal { context: context.to_string(), source: err.into() }
    }

    /// An input whose decoder failed, keeping the decoder's error.
    pub(crate) fn undecodable(source_uri: &str, context: impl Into<String>, err: impl Into<BoxError>) -> Error {
        Error::UndecodableInput { source_uri: source_uri.to_owned(), context: context.into(), source: err.into() }
    }
}

impl From<silverline_lake::Error> for Error {
    fn from(e: silverline_lake::Error) -> Error {
        match e {
            silverline_lake::Error::Storage(e) => Error::Storage(e),
            silverline_lake::Error::InvalidName(e) => Error::InvalidName(e),
            other => Error::Lake(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_error_built_from_another_keeps_it_as_its_source_and_says_it_too() {
        let io = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad frame header");
        /// What the source must be.
        type SourceIs = fn(&(dyn std::error::Error + 'static)) -> bool;
        let cases: [(Error, &str, SourceIs); 3] = [
            (
                Error::internal("starting an encoder thread", io()),
                "starting an encoder thread: bad frame header",
                |s| s.downcast_ref::<std::io::Error>().is_some(),
            ),
            (
                Error::undecodable("s3://b/in.csv.zst", "zstd", io()),
                "cannot read input s3://b/in.csv.zst: zstd: bad frame header",
                |s| s.downcast_ref::<std::io::Error>().is_some(),
            ),
            (Error::from(silverline_crds::names::check_run_id("no/slash").expect_err("invalid")), "usage: ", |s| {
                s.is::<silverline_crds::names::InvalidName>()
            }),
        ];
        for (e, message, source_is) in cases {
            assert!(e.to_string().starts_with(message), "{e}");
            let source = e.source().unwrap_or_else(|| panic!("{e} has no source"));
            assert!(source_is(source), "{e}: {source:?}");
        }
        let invalid = Error::from(silverline_crds::names::check_run_id("no/slash").expect_err("invalid"));
        assert_eq!((invalid.exit_code(), invalid.category()), (ExitCode::Usage, "usage"));
        let undecodable = Error::undecodable("in.csv", "zstd", io());
        assert_eq!((undecodable.exit_code(), undecodable.category()), (ExitCode::SchemaDrift, "unreadable_input"));
    }
}
