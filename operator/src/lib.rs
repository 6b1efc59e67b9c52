//! The Silverline operator: turns each `EtlRun` into one Job of the worker per attempt, retries transient
//! failures with backoff, verifies `_SUCCESS` in the lake and reports the run in status, Events and metrics.
//!
//! Decisions are pure functions (`lifecycle`, `failure`, `retry`, `job`); I/O lives at the edges (`controllers`,
//! `lake`, `leader`, `http`). One module per controller under `controllers/`, sharing one `Context`, status
//! writer, Event publisher, condition update and error policy.

pub mod apiserver;
pub mod config;
pub mod controllers;
pub mod failure;
pub mod http;
pub mod job;
pub mod lake;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod retry;

/// Everything that can make a reconcile fail, each saying what failed and where. Messages name the kind of
/// the resource: every controller shares these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name} changed while it was reconciled; will retry")]
    Conflict { kind: &'static str, name: String },
    #[error("{kind} {name} exists but is not owned by {owner} (uid {uid}); waiting for it to be removed")]
    NotOwned { kind: &'static str, name: String, owner: String, uid: String },
    #[error("{kind} {name} cannot be read: {message}")]
    InvalidResource { kind: &'static str, name: String, message: String },
    #[error("the object has no {0}")]
    MissingField(&'static str),
    #[error("contract snapshot {name}: {message}")]
    Snapshot { name: String, message: String },
    /// A ConfigMap under a snapshot's name holds another manifest than the one the name stands for: no Job may
    /// mount it.
    #[error(
        "contract snapshot {name}: a ConfigMap of that name exists and holds another manifest than the one its name \
         stands for; delete it and the run is launched again with its own"
    )]
    SnapshotConflict { name: String },
    #[error("lake {uri}: {message}")]
    Lake { uri: String, message: String },
    /// The lake (or its endpoint) is not one the operator allows in the namespace (`--allowed-lakes`): never
    /// opened.
    #[error("lake {uri}: {message}")]
    LakeNotAllowed { uri: String, message: String },
    #[error("lake: reading {what}: {source}")]
    LakeRead {
        what: &'static str,
        #[source]
        source: silverline_lake::Error,
    },
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("lost the leader Lease {lease}: {message}")]
    LeadershipLost { lease: String, message: String },
}

/// How a failed reconcile is retried: by the error's type, never by its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Another writer was faster: look again at once.
    Soon,
    /// The API server or the lake may answer next time.
    Transient,
    /// Someone must remove or fix another object first.
    Blocked,
    /// The resource is wrong as it is: wait for a change of it.
    OnChange,
}

impl Error {
    /// The error for a person reading an Event or a condition: what failed and the apiserver's own message,
    /// without the client's debug dump of the response.
    pub fn for_people(&self) -> String {
        match self {
            Error::Kube { action, source: kube::Error::Api(status) } => {
                format!("{action}: {} ({} {})", status.message, status.code, status.reason)
            }
            other => other.to_string(),
        }
    }

    /// A stable, low-cardinality name for metric labels, logs and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Conflict { .. } => "conflict",
            Error::NotOwned { .. } => "not_owned",
            Error::InvalidResource { .. } => "invalid_resource",
            Error::MissingField(_) => "missing_field",
            Error::Snapshot { .. } | Error::SnapshotConflict { .. } => "contract_snapshot",
            Error::Lake { .. } | Error::LakeRead { .. } => "lake",
            Error::LakeNotAllowed { .. } => "lake_not_allowed",
            Error::Serialize { .. } => "serialize",
            Error::LeadershipLost { .. } => "leadership_lost",
        }
    }

    pub fn retry(&self) -> Retry {
        match self {
            Error::Conflict { .. } => Retry::Soon,
            Error::Kube { .. } | Error::Lake { .. } | Error::LakeRead { .. } => Retry::Transient,
            Error::NotOwned { .. }
            | Error::Snapshot { .. }
            | Error::SnapshotConflict { .. }
            | Error::LakeNotAllowed { .. }
            | Error::Serialize { .. } => Retry::Blocked,
            Error::InvalidResource { .. } | Error::MissingField(_) | Error::LeadershipLost { .. } => Retry::OnChange,
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
