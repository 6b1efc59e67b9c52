//! Silverline's lake, shared by the worker (which writes it) and the operator (which reads it): lake URIs,
//! the object-store client, [`LakeLayout`] and every marker name, classified storage errors, conditional puts,
//! and promotion — the pointer `_LATEST.json`, immutable manifests, `current/` and the audit log.
//!
//! The formats are documented in `docs/lake.md`; `_SUCCESS` is [`RunReport`], which lives in
//! `silverline-crds` because the `EtlRun` status embeds it.

pub mod audit;
pub mod error;
pub mod gate;
pub mod history;
pub mod layout;
pub mod manifest;
pub mod parquet_io;
pub mod plan;
pub mod pointer;
pub mod promotion;
pub mod runs;
pub mod store;
pub mod uri;

pub use error::{StorageError, StorageErrorKind};
pub use layout::{Area, DatasetLayout, LakeLayout};
pub use pointer::{LatestPointer, PromotionRef, read_latest};
pub use promotion::{PromoteError, PromoteOutcome, PromoteRequest, Target, preview, promote};
pub use runs::RunFinding;
pub use silverline_crds::report::{FileRecord, InputRecord, RunReport};
pub use store::{Lake, ObjectVersion, OpenOptions, StoreOptions};
pub use uri::{LakeUri, RelativePaths};

/// What reading or writing the lake's documents can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    InvalidName(#[from] silverline_crds::names::InvalidName),
    #[error("{uri} is not a valid {what}: {source}")]
    Format {
        uri: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{uri}: {message}")]
    Inconsistent { uri: String, message: String },
}

impl Error {
    /// Whether the object was read but is not what it should be (not valid JSON of its kind, or inconsistent with
    /// where it lies): a reader of many objects can skip it and report it. A storage failure is not: a store that
    /// did not answer says nothing about the object.
    pub fn is_unreadable_document(&self) -> bool {
        matches!(self, Error::Format { .. } | Error::Inconsistent { .. })
    }

    /// The storage kind, when the error came from the store.
    pub fn storage_kind(&self) -> Option<StorageErrorKind> {
        match self {
            Error::Storage(e) => Some(e.kind),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An object a reader of many objects (the audit log, `history`) skipped because it cannot be read as what it
/// should be: its lake-relative key and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub key: String,
    pub error: String,
}

impl Problem {
    /// Logs the problem (a warning naming the key and `what` it is) and returns it.
    pub fn skipped(key: impl Into<String>, error: &Error, what: &str) -> Problem {
        let key = key.into();
        tracing::warn!(key = %key, error = %error, "{what} cannot be read; skipped");
        Problem { key, error: error.to_string() }
    }
}

/// Now, as RFC 3339 UTC with microseconds: the time format of every promotion document.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
