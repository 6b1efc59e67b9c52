//! The Silverline operator: turns each `EtlRun` into one Job of the worker per attempt, retries transient
//! failures with backoff, verifies `_SUCCESS` in the lake and reports the run in status, Events and metrics.
//!
//! Decisions are pure functions (`lifecycle`, `failure`, `retry`, `job`); I/O lives at the edges (`controller`,
//! `lake`, `leader`, `http`).

pub mod config;
pub mod contract;
pub mod controller;
pub mod failure;
pub mod http;
pub mod job;
pub mod lake;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod retry;

/// Everything that can make a reconcile fail, each saying what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {action}: {source}")]
    Kube { action: String, source: kube::Error },
    #[error("EtlRun {name} changed while it was reconciled; will retry")]
    Conflict { name: String },
    #[error("{kind} {name} exists but is not owned by this EtlRun (uid {uid}); waiting for it to be removed")]
    NotOwned { kind: &'static str, name: String, uid: String },
    #[error("EtlRun {name} cannot be read: {message}")]
    InvalidResource { name: String, message: String },
    #[error("the object has no {0}")]
    MissingField(&'static str),
    #[error("contract snapshot {name}: {message}")]
    Snapshot { name: String, message: String },
    #[error("lake {uri}: {message}")]
    Lake { uri: String, message: String },
    #[error("cannot serialize {what}: {message}")]
    Serialize { what: &'static str, message: String },
    #[error("lost the leader Lease {lease}: {message}")]
    LeadershipLost { lease: String, message: String },
}

impl Error {
    /// A stable, low-cardinality name for metric labels, logs and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Conflict { .. } => "conflict",
            Error::NotOwned { .. } => "not_owned",
            Error::InvalidResource { .. } => "invalid_resource",
            Error::MissingField(_) => "missing_field",
            Error::Snapshot { .. } => "contract_snapshot",
            Error::Lake { .. } => "lake",
            Error::Serialize { .. } => "serialize",
            Error::LeadershipLost { .. } => "leadership_lost",
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
