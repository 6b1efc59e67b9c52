//! The Silverline worker: one run of the history-safe CSV → Parquet transform.
//!
//! The pipeline, from input to lake:
//! `tokenize` (CSV bytes → chunks of raw records) → `check` (per chunk, in parallel: rules and typed columns) →
//! `ledger` (in input order: exact duplicates, keys, attempts, circuit breaker) → `sink` (Parquet part files) →
//! `report` (`_SUCCESS` written last).

pub mod check;
pub mod contract;
pub mod layout;
pub mod ledger;
pub mod location;
pub mod replay;
pub mod report;
pub mod run;
pub mod sink;
pub mod tokenize;
pub mod values;

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
    Transient = 75,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Everything that can end a run early, each saying what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("usage: {0}")]
    Usage(String),
    #[error("contract {path}: {source}")]
    Contract { path: String, source: silverline_crds::ContractError },
    #[error("contract {path}: cannot read it: {source}")]
    ContractRead { path: String, source: std::io::Error },
    #[error("contract: {0}")]
    ContractUnsupported(String),
    #[error("run id {run_id} is already used: {key} exists; a run id is never reused, choose another")]
    RunIdReused { run_id: String, key: String },
    #[error("access to {key} was refused: {message}")]
    AccessDenied { key: String, message: String },
    #[error("schema drift in {source_uri}: {message}")]
    SchemaDrift { source_uri: String, message: String },
    #[error("cannot read input {source_uri}: {message}")]
    UnreadableInput { source_uri: String, message: String },
    #[error(
        "circuit breaker: more than {max_same_errors} rows with {error_type} (last at {source_uri} record {record}); \
         the run stopped without _SUCCESS"
    )]
    CircuitBreaker { error_type: &'static str, max_same_errors: u64, source_uri: String, record: u64 },
    #[error(
        "quality gate: quarantine rate {rate:.4} is above maxQuarantineRate {max}; data and quarantine are kept for \
         review under {report_key}, no _SUCCESS"
    )]
    QualityGate { rate: f64, max: f64, report_key: String },
    #[error("transient I/O failure at {key}: {message}")]
    Transient { key: String, message: String },
    #[error("run stopped by {signal}: uploads aborted, no _SUCCESS")]
    Interrupted { signal: &'static str },
    #[error("{context}: {message}")]
    Internal { context: String, message: String },
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_)
            | Error::Contract { .. }
            | Error::ContractRead { .. }
            | Error::ContractUnsupported(_)
            | Error::RunIdReused { .. }
            | Error::AccessDenied { .. } => ExitCode::Usage,
            Error::SchemaDrift { .. } | Error::UnreadableInput { .. } => ExitCode::SchemaDrift,
            Error::CircuitBreaker { .. } => ExitCode::CircuitBreaker,
            Error::QualityGate { .. } => ExitCode::QualityGate,
            Error::Transient { .. } | Error::Interrupted { .. } => ExitCode::Transient,
            Error::Internal { .. } => ExitCode::Other,
        }
    }

    /// A stable, low-cardinality name for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::Contract { .. } | Error::ContractRead { .. } | Error::ContractUnsupported(_) => "contract",
            Error::RunIdReused { .. } => "run_id_reused",
            Error::AccessDenied { .. } => "access_denied",
            Error::SchemaDrift { .. } => "schema_drift",
            Error::UnreadableInput { .. } => "unreadable_input",
            Error::CircuitBreaker { .. } => "circuit_breaker",
            Error::QualityGate { .. } => "quality_gate",
            Error::Transient { .. } => "transient_io",
            Error::Interrupted { .. } => "interrupted",
            Error::Internal { .. } => "internal",
        }
    }

    pub(crate) fn internal(context: impl fmt::Display, err: impl fmt::Display) -> Error {
        Error::Internal { context: context.to_string(), message: err.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
