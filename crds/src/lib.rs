//! Silverline's API: the custom resources of group `etl.silverline.dev`.
//!
//! `Dataset` is the data contract; `EtlRun` is one run of it over one input, driven by the operator; `Promotion` makes verified runs current once a person approves. The worker reads the very same manifest from a file, so these types are
//! shared by the operator and the worker and own every rule about what a valid contract or name is.

pub mod dataset;
pub mod etlrun;
pub mod generated;
pub mod names;
pub mod promotion;
pub mod report;

pub use dataset::{
    CircuitBreakerSpec, ColumnSpec, ColumnType, ContractError, Dataset, DatasetSpec, OwnershipSpec, QualitySpec,
    RESERVED_COLUMNS, SecretKeyRef, StorageSpec, side_columns,
};
pub use etlrun::{
    AttemptOutcome, AttemptStatus, DataFile, EtlRun, EtlRunPhase, EtlRunSpec, EtlRunStatus, MAX_LISTED_FILES, RunResult,
};
pub use promotion::{
    FailedCheck, Promotion, PromotionChange, PromotionMode, PromotionPhase, PromotionPolicy, PromotionRun,
    PromotionSpec, PromotionStatus,
};

/// The API group of every Silverline resource.
pub const GROUP: &str = "etl.silverline.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
