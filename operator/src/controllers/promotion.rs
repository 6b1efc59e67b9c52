//! The Promotion controller: verified runs become current only with a person's approval.
//!
//! ```text
//! (new) ──▶ AwaitingApproval ──approved, no other promotion of the dataset in progress──▶ Promoting ──▶ Promoted
//!               │   (status: each run's metrics and what would change)                       │
//!               └──rejected──▶ Rejected (a Job records the rejection in the audit log)       ├──gate refused (exit 6)──▶ Failed
//!                                                                                             └──contended (7), transient──▶ retry
//! ```
//!
//! A rejection (or the approval withdrawn) while `Promoting` still wins as long as nothing is committed: no promote
//! Job runs and the lake records nothing of the Promotion (`Builder::withdraw`). An approval by the Promotion's
//! creator is refused here too, behind the apiserver's approval policy.
//!
//! The operator stays read-only on the lake: it previews (`silverline_lake::promotion::preview_target`), reads
//! `_LATEST.json` and the audit log; the write is a Job of the worker (`silverline-worker promote`) with the
//! Dataset's credentials. Decisions are the pure `plan`, table-tested below.

use super::{
    ConditionStatus, ConditionUpdate, Context, ControllerName, FIELD_MANAGER, credentials, drain,
    error_policy as shared_error_policy, owned_by, publish, scoped, set_condition, unreadable, write_status,
};
use crate::job::{self, JobSettings};
use crate::lifecycle::PodBlocker;
use crate::metrics::DatasetSeries;
use crate::retry::{self, RetryPolicy};
use crate::{Error, Result};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use silverline_crds::promotion::{ANNOTATION_CREATED_BY, ANNOTATION_REQUESTED_BY, MAX_PROMOTION_NAME};
use silverline_crds::{
    Dataset, FailedCheck, Promotion, PromotionChange, PromotionMode, PromotionPhase, PromotionRun, PromotionSpec,
    PromotionStatus,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const CONDITION_APPROVED: &str = "Approved";
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROMOTED: &str = "Promoted";

/// The worker's exit codes of `promote` that the controller tells apart.
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_GATE_REFUSED: i32 = 6;

/// Label on the Jobs and ConfigMaps of a Promotion.
pub const LABEL_PROMOTION: &str = "etl.silverline.dev/promotion";
/// Who the operator records as the requester of the Promotions it creates.
pub const OPERATOR_REQUESTER: &str = "silverline-operator";

/// Tunables of the Promotion controller.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionSettings {
    /// Backoff between promote Jobs after a retryable failure (pointer contention, transient I/O).
    pub retry: RetryPolicy,
    /// Promote Jobs per Promotion before it fails.
    pub max_attempts: u32,
    /// How often a Promotion awaiting approval refreshes its preview.
    pub resync: Duration,
    /// How often an approved Promotion waiting for another one of its dataset looks again.
    pub wait_poll: Duration,
}

impl Default for PromotionSettings {
    fn default() -> Self {
        PromotionSettings {
            retry: RetryPolicy::default(),
            max_attempts: 5,
            resync: Duration::from_secs(60),
            wait_poll: Duration::from_secs(2),
        }
    }
}

/// The Job of promote attempt `attempt`, and the Job that records a rejection.
pub fn job_name(promotion: &str, attempt: u32) -> String {
    format!("{promotion}-p{attempt}")
}

pub fn reject_job_name(promotion: &str) -> String {
    format!("{promotion}-reject")
}

/// The Job of attempt `attempt` to record a rejection: the first is [`reject_job_name`], the next ones
/// `{promotion}-r{attempt}` (as short as a promote Job's name, so a DNS label for the longest names).
pub fn reject_attempt_job_name(promotion: &str, attempt: u32) -> String {
    if attempt <= 1 { reject_job_name(promotion) } else { format!("{promotion}-r{attempt}") }
}

/// Which attempt to record a rejection a Job of [`reject_attempt_job_name`] is (1 for any other name).
pub fn reject_attempt_of(promotion: &str, job_name: &str) -> u32 {
    job_name
        .strip_prefix(promotion)
        .and_then(|rest| rest.strip_prefix("-r"))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 2)
        .unwrap_or(1)
}

pub fn contract_name(promotion: &str) -> String {
    format!("{promotion}-contract")
}

/// The Promotion the operator creates for a succeeded EtlRun when its Dataset asks for it.
pub fn requested_name(etlrun: &str) -> String {
    format!("{etlrun}-promo")
}

/// What the annotations say.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Pending,
    Approved {
        by: String,
        reason: Option<String>,
    },
    /// Wins over an approval set at the same time.
    Rejected {
        by: String,
        reason: Option<String>,
    },
}

impl Decision {
    pub fn of(promotion: &Promotion) -> Decision {
        let owned = |(by, why): (&str, Option<&str>)| (by.to_owned(), why.map(str::to_owned));
        if let Some((by, reason)) = promotion.rejection().map(owned) {
            return Decision::Rejected { by, reason };
        }
        if let Some((by, reason)) = promotion.approval().map(owned) {
            return Decision::Approved { by, reason };
        }
        Decision::Pending
    }
}

/// What a reviewer needs, as previewed from the lake (read-only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreviewFacts {
    pub version_before: Option<u64>,
    pub runs: Vec<PromotionRun>,
    pub change: PromotionChange,
    /// Checks that would refuse the promotion already now.
    pub failures: Vec<FailedCheck>,
}

/// The state of the Job named in status.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Missing,
    Active,
    Complete,
    Failed { exit_code: Option<i32>, message: String },
}

/// What the lake records about this Promotion (by its uid): the pointer first, then the audit log.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Promoted { version: u64, previous_version: Option<u64> },
    Refused { failed_checks: Vec<FailedCheck> },
    Rejected,
}

/// Everything one decision needs.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub now: Timestamp,
    pub name: &'a str,
    pub uid: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a PromotionSpec,
    pub decision: Decision,
    /// The creator ([`Promotion::creator`]).
    pub created_by: Option<&'a str>,
    /// Who the Promotion says asked for it (`requested-by`, free text): under GitOps the person whose change an
    /// applier created it for, whose own approval is not four eyes either.
    pub requested_by: Option<&'a str>,
    pub status: &'a PromotionStatus,
    /// The Dataset's default mode, or why the Dataset cannot be used (`reason`, `message`).
    pub dataset: Result<PromotionMode, (&'static str, String)>,
    /// Read while the Promotion awaits approval.
    pub preview: Option<Result<PreviewFacts, String>>,
    /// Another Promotion of the same dataset that is `Promoting`.
    pub blocked_by: Option<String>,
    pub job: Option<JobState>,
    /// Why the pod of the active Job cannot start, as its kubelet or the Job controller says.
    pub blocker: Option<PodBlocker>,
    pub recorded: Option<Recorded>,
    /// Why the lake could not be read for what it records of this Promotion.
    pub lake_error: Option<String>,
    /// That lake is not one the operator allows in the namespace (then `lake_error` says why): never read.
    pub lake_refused: bool,
    /// The hash of the Dataset's contract manifest now ([`job::contract_hash`]), to freeze at the first launch.
    pub contract_hash: Option<String>,
    /// Why the Job the plan launches could not be created (the apiserver's answer, a ConfigMap that is not the
    /// Promotion's contract): planned again with it, the plan says so instead of launching.
    pub launch_error: Option<String>,
    /// Why the Job the plan launches can never be launched: its frozen contract is gone and cannot be made again
    /// (the ConfigMap is missing and the Dataset has changed since). Planned again with it, the plan ends.
    pub contract_lost: Option<String>,
}

/// What the Job of a launch does.
#[derive(Debug, Clone, PartialEq)]
pub enum JobAction {
    Promote { approved_by: String, reason: String },
    Reject { rejected_by: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub job_name: String,
    pub action: JobAction,
    pub mode: PromotionMode,
}

/// A change worth an Event, a log line and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    AwaitingApproval {
        message: String,
    },
    Waiting {
        reason: String,
        message: String,
    },
    Started {
        job_name: String,
        attempt: u32,
    },
    Retrying {
        attempt: u32,
        message: String,
        after: Duration,
    },
    /// The Job recording a rejection failed in a way worth another try.
    RejectRetrying {
        attempt: u32,
        message: String,
    },
    Finished {
        phase: PromotionPhase,
        reason: String,
        message: String,
    },
    RejectionNotRecorded {
        message: String,
    },
    /// The approval was withdrawn before anything was committed: back to awaiting approval.
    ApprovalWithdrawn {
        message: String,
    },
    /// The approver is the creator: refused, the Promotion waits for another approver.
    SelfApprovalRefused {
        message: String,
    },
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: PromotionStatus,
    /// Make sure this Job exists (after the status naming it is written).
    pub launch: Option<Launch>,
    /// Delete this promote Job (its pods first): a rejection or a withdrawn approval came while its pod had not
    /// started.
    pub delete_job: Option<String>,
    pub requeue_after: Option<Duration>,
    pub transitions: Vec<Transition>,
}

/// Whether the rejection's audit record is still being written (the only work left on a terminal Promotion).
pub fn rejection_pending(status: &PromotionStatus) -> bool {
    status.phase == Some(PromotionPhase::Rejected)
        && status.conditions.iter().any(|c| c.type_ == CONDITION_PROMOTED && c.reason == REJECTION_PENDING)
}

const REJECTION_PENDING: &str = "RejectionPending";

struct Builder<'a> {
    o: &'a Observed<'a>,
    settings: &'a PromotionSettings,
    status: PromotionStatus,
    launch: Option<Launch>,
    delete_job: Option<String>,
    requeue_after: Option<Duration>,
    transitions: Vec<Transition>,
}

/// Decides what comes next for one Promotion.
pub fn plan(observed: &Observed, settings: &PromotionSettings) -> Plan {
    let mut status = observed.status.clone();
    status.observed_generation = observed.generation;
    if status.created_by.is_none() {
        status.created_by = observed.created_by.map(str::to_owned);
    }
    if let Ok(dataset_mode) = &observed.dataset
        && status.mode.is_none()
    {
        status.mode = Some(observed.spec.mode.unwrap_or(*dataset_mode));
    }
    let mut b = Builder {
        o: observed,
        settings,
        status,
        launch: None,
        delete_job: None,
        requeue_after: None,
        transitions: Vec::new(),
    };
    match b.status.phase {
        Some(PromotionPhase::Rejected) if rejection_pending(&b.status) => b.follow_rejection(),
        Some(phase) if phase.is_terminal() => {}
        Some(PromotionPhase::Promoting) => {
            if !b.withdraw() {
                b.follow_promotion();
            }
        }
        None | Some(PromotionPhase::AwaitingApproval) => b.decide(),
        Some(_) => {}
    }
    if b.launch.is_some() && observed.status.job_name.is_none() && b.status.contract_hash.is_none() {
        // The first launch freezes the contract its Jobs apply (`launch_job` checks the ConfigMap against it).
        b.status.contract_hash = observed.contract_hash.clone();
    }
    if let Some(lost) = &observed.contract_lost
        && let Some(launch) = b.launch.take()
    {
        b.transitions.retain(|t| !matches!(t, Transition::Started { .. }));
        b.requeue_after = None;
        match launch.action {
            JobAction::Promote { .. } => {
                let message = format!("the promote Job {} can never be launched: {lost}", launch.job_name);
                b.finish(PromotionPhase::Failed, REASON_CONTRACT_LOST, message);
            }
            JobAction::Reject { .. } => {
                let note = format!("the rejection could not be recorded in the audit log: {lost}");
                b.condition(CONDITION_PROMOTED, ConditionStatus::False, "RejectionNotRecorded", &note);
                b.status.next_attempt_at = None;
                b.transitions.push(Transition::RejectionNotRecorded { message: note });
            }
        }
    }
    if let Some(error) = &observed.launch_error
        && let Some(launch) = b.launch.take()
    {
        let what = match launch.action {
            JobAction::Promote { .. } => "promote",
            JobAction::Reject { .. } => "reject",
        };
        b.transitions.retain(|t| !matches!(t, Transition::Started { .. }));
        b.wait_for(REASON_LAUNCH_FAILED, format!("the {what} Job {} cannot be launched: {error}", launch.job_name));
        b.requeue_after = Some(settings.resync);
    }
    Plan {
        status: b.status,
        launch: b.launch,
        delete_job: b.delete_job,
        requeue_after: b.requeue_after,
        transitions: b.transitions,
    }
}

/// How often a Promotion looks at its active Job (and at what keeps its pod from starting).
const ACTIVE_JOB_POLL: Duration = Duration::from_secs(10);

/// `Ready` while a Job cannot be launched: the apiserver refused it or its contract ConfigMap (a quota, an
/// admission policy, RBAC), or a ConfigMap under the contract's name is not the Promotion's.
pub const REASON_LAUNCH_FAILED: &str = "LaunchFailed";
/// `Ready` while the lake cannot be read for what it records of the Promotion.
pub const REASON_LAKE_UNREADABLE: &str = "LakeUnreadable";
/// `Promoted` (and the phase `Failed`) when the contract frozen at the first launch is gone and cannot be made
/// again: no Job of the Promotion can ever run.
pub const REASON_CONTRACT_LOST: &str = "ContractLost";
/// `Ready` while a rejection or a withdrawn approval waits for the promote Job to be gone (deleted, when its pod
/// never started; else left to finish, as it may be committing).
pub const REASON_WITHDRAWAL_PENDING: &str = "WithdrawalPending";
/// `Approved` and `Ready` when the approval is withdrawn while promoting, before anything was committed.
pub const REASON_APPROVAL_WITHDRAWN: &str = "ApprovalWithdrawn";
/// `Approved` while the only approval is the creator's own.
pub const REASON_SELF_APPROVAL_REFUSED: &str = "SelfApprovalRefused";
pub const REASON_LAKE_NOT_ALLOWED: &str = "LakeNotAllowed";

impl Builder<'_> {
    fn condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: &str) {
        let update = ConditionUpdate { type_, status, reason, message };
        set_condition(&mut self.status.conditions, update, self.o.generation, self.o.now);
    }

    fn mode(&self) -> PromotionMode {
        self.status.mode.or(self.o.spec.mode).unwrap_or_default()
    }

    fn finish(&mut self, phase: PromotionPhase, reason: &str, message: String) {
        self.status.phase = Some(phase);
        self.status.next_attempt_at = None;
        self.status.finished_at = Some(Time(self.o.now));
        let promoted = phase == PromotionPhase::Promoted;
        self.condition(CONDITION_PROMOTED, promoted.into(), reason, &message);
        self.condition(CONDITION_READY, ConditionStatus::False, "Finished", &message);
        self.transitions.push(Transition::Finished { phase, reason: reason.to_owned(), message });
    }

    /// The reason of a wait for the lake: not allowed (`--allowed-lakes`), or not readable.
    fn lake_reason(&self) -> &'static str {
        if self.o.lake_refused { REASON_LAKE_NOT_ALLOWED } else { REASON_LAKE_UNREADABLE }
    }

    /// Not yet promoting: wait for a decision, show the preview, or start.
    fn decide(&mut self) {
        match self.o.decision.clone() {
            Decision::Rejected { by, reason } => self.reject(by, reason, None),
            Decision::Pending => self.await_approval(),
            Decision::Approved { by, .. } if self.self_approval(&by) => self.refuse_self_approval(by),
            Decision::Approved { by, reason } => self.approved(by, reason),
        }
    }

    /// Whether `approver` is the Promotion's creator (as first recorded in status, or as the annotations say
    /// now) or the person it says asked for it (`requested-by`): four eyes, checked here too, behind the
    /// apiserver's approval policy (which may be in Warn or Audit mode, or not installed).
    fn self_approval(&self, approver: &str) -> bool {
        [self.status.created_by.as_deref(), self.o.status.created_by.as_deref(), self.o.created_by, self.o.requested_by]
            .into_iter()
            .flatten()
            .any(|creator| creator == approver)
    }

    /// The approver created the Promotion: not an approval. It waits for another approver, and says so once.
    fn refuse_self_approval(&mut self, by: String) {
        self.await_approval();
        let message = format!(
            "refused the approval by {by}, who created or requested this Promotion (for one the operator requested: \
             created the EtlRun it publishes): another person must approve it (four eyes); waiting for {}",
            silverline_crds::promotion::ANNOTATION_APPROVED_BY
        );
        let said =
            self.o.status.conditions.iter().any(|c| {
                c.type_ == CONDITION_APPROVED && c.reason == REASON_SELF_APPROVAL_REFUSED && c.message == message
            });
        self.status.approved_by = None;
        self.condition(CONDITION_APPROVED, ConditionStatus::False, REASON_SELF_APPROVAL_REFUSED, &message);
        if !said {
            self.transitions.push(Transition::SelfApprovalRefused { message });
        }
    }

    fn show_preview(&mut self) {
        if let Some((status, reason, message)) = self.take_preview() {
            self.ready_from_preview(status, reason, message);
        }
    }

    /// Keeps the preview's facts in status and returns what `Ready` says of them (not yet set: an approved
    /// Promotion that waits says that instead, so a steady wait changes nothing).
    fn take_preview(&mut self) -> Option<(ConditionStatus, &'static str, String)> {
        match &self.o.preview {
            Some(Ok(preview)) => {
                self.status.runs = preview.runs.clone();
                self.status.change = Some(preview.change.clone());
                self.status.previous_version = preview.version_before;
                self.status.failed_checks = preview.failures.clone();
                Some(if preview.failures.is_empty() {
                    let message = "the gate's checks pass as previewed (file integrity and key collisions are \
                                   checked at promotion time)";
                    (ConditionStatus::True, "GatePreviewPassed", message.to_owned())
                } else {
                    let message = format!("the gate would refuse: {}", describe(&preview.failures));
                    (ConditionStatus::False, "GateWouldRefuse", message)
                })
            }
            Some(Err(message)) => Some((
                ConditionStatus::Unknown,
                "PreviewUnavailable",
                format!("the lake cannot be previewed: {message}"),
            )),
            None => None,
        }
    }

    fn ready_from_preview(&mut self, status: ConditionStatus, reason: &str, message: String) {
        if status == ConditionStatus::False {
            self.wait_for(reason, message);
        } else {
            self.condition(CONDITION_READY, status, reason, &message);
        }
    }

    /// What `Ready` says while promote Job `job_name` of attempt `attempt` is on its way.
    fn promoting(&self, job_name: &str, attempt: u32) -> String {
        format!("promote Job {job_name} (attempt {attempt} of {})", self.settings.max_attempts)
    }

    /// `Ready` is False for `reason`; a new reason or message is also said once as a `Transition::Waiting` (an
    /// Event: a Warning, but for `WaitingForPromotion`), not on every resync.
    fn wait_for(&mut self, reason: &str, message: String) {
        let changed = !self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_READY && c.reason == reason && c.message == message);
        self.condition(CONDITION_READY, ConditionStatus::False, reason, &message);
        if changed {
            self.transitions.push(Transition::Waiting { reason: reason.to_owned(), message });
        }
    }

    /// The Job is active: say what keeps its pod from starting, if anything, else that it runs (after a
    /// launch failure or a blocker, `Ready` says the Job runs again).
    fn job_active(&mut self, job_name: &str, what: &str) {
        match &self.o.blocker {
            Some(blocker) => {
                let message = blocker.message_for(&format!("the {what} Job {job_name}"));
                self.wait_for(blocker.reason(), message);
            }
            None if self.status.phase == Some(PromotionPhase::Promoting) => {
                let waiting = self
                    .status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == CONDITION_READY && c.status == ConditionStatus::False.as_str());
                if waiting {
                    let message = self.promoting(job_name, self.status.attempts.max(1));
                    self.condition(CONDITION_READY, ConditionStatus::True, "Promoting", &message);
                }
            }
            None => {}
        }
        // Nothing of the Job changes when its pod cannot start (a missing Secret): looked at again soon, to say
        // so — and when it can.
        self.requeue_after = Some(ACTIVE_JOB_POLL.min(self.settings.resync));
    }

    fn dataset_problem(&mut self) -> bool {
        let Err((reason, message)) = &self.o.dataset else { return false };
        let changed = !self.status.conditions.iter().any(|c| c.type_ == CONDITION_READY && c.reason == *reason);
        self.condition(CONDITION_READY, ConditionStatus::False, reason, message);
        if changed {
            self.transitions.push(Transition::Waiting { reason: (*reason).to_owned(), message: message.clone() });
        }
        self.requeue_after = Some(self.settings.resync);
        true
    }

    fn await_approval(&mut self) {
        let first = self.status.phase != Some(PromotionPhase::AwaitingApproval);
        self.status.phase = Some(PromotionPhase::AwaitingApproval);
        let message = format!(
            "waiting for the annotation {} (and {}) from a reviewer",
            silverline_crds::promotion::ANNOTATION_APPROVED_BY,
            silverline_crds::promotion::ANNOTATION_APPROVAL_REASON
        );
        self.condition(CONDITION_APPROVED, ConditionStatus::False, "AwaitingApproval", &message);
        if !self.dataset_problem() {
            self.show_preview();
        }
        if first {
            self.transitions.push(Transition::AwaitingApproval { message });
        }
        self.requeue_after = Some(self.settings.resync);
    }

    /// Ends it `Rejected` (`context`: what was under way, said in the message) and records the rejection.
    fn reject(&mut self, by: String, reason: Option<String>, context: Option<String>) {
        self.status.phase = Some(PromotionPhase::Rejected);
        self.status.rejected_by = Some(by.clone());
        self.status.finished_at = Some(Time(self.o.now));
        self.status.next_attempt_at = None;
        let why = reason.clone().unwrap_or_else(|| "no reason given".into());
        let context = context.map(|c| format!(" ({c})")).unwrap_or_default();
        let message = format!("rejected by {by}: {why}; the runs stay isolated, nothing moved{context}");
        self.condition(CONDITION_APPROVED, ConditionStatus::False, "Rejected", &message);
        self.condition(CONDITION_READY, ConditionStatus::False, "Finished", &message);
        if self.o.dataset.is_ok() {
            // The audit log records the rejection: written by a Job, as every write to the lake.
            let job_name = reject_job_name(self.o.name);
            self.status.job_name = Some(job_name.clone());
            let pending = "recording the rejection in the lake's audit log";
            self.condition(CONDITION_PROMOTED, ConditionStatus::False, REJECTION_PENDING, pending);
            self.launch = Some(Launch {
                job_name,
                action: JobAction::Reject { rejected_by: by, reason: why },
                mode: self.mode(),
            });
        } else {
            let note = "rejected; not recorded in the audit log: the Dataset cannot be read";
            self.condition(CONDITION_PROMOTED, ConditionStatus::False, "Rejected", note);
        }
        self.transitions.push(Transition::Finished {
            phase: PromotionPhase::Rejected,
            reason: "Rejected".into(),
            message,
        });
    }

    fn follow_rejection(&mut self) {
        let message = self.status.conditions.iter().find(|c| c.type_ == CONDITION_APPROVED).map(|c| c.message.clone());
        let message = message.unwrap_or_default();
        if matches!(self.o.job, Some(JobState::Active)) {
            let job_name = self.status.job_name.clone().unwrap_or_default();
            return self.job_active(&job_name, "reject");
        }
        if let Err((_, why)) = &self.o.dataset {
            // As a rejection decided without a readable Dataset: it stands, unrecorded (no lake to record it in).
            let note = format!("rejected; not recorded in the audit log: {why}");
            self.condition(CONDITION_PROMOTED, ConditionStatus::False, "Rejected", &note);
            self.condition(CONDITION_READY, ConditionStatus::False, "Finished", &message);
            return;
        }
        if let Some(error) = &self.o.lake_error {
            self.wait_for(self.lake_reason(), format!("the lake cannot be read for this rejection's record: {error}"));
            self.requeue_after = Some(self.settings.resync);
            return;
        }
        match (&self.o.job, &self.o.recorded) {
            (_, Some(Recorded::Rejected)) | (Some(JobState::Complete), _) => {
                self.condition(CONDITION_PROMOTED, ConditionStatus::False, "Rejected", &message);
                // Whatever Ready said while the Job could not start or the lake could not be read.
                self.condition(CONDITION_READY, ConditionStatus::False, "Finished", &message);
            }
            (Some(JobState::Failed { exit_code, message: failure }), _) => {
                let exit_code = *exit_code;
                let failure = failure.clone();
                self.reject_job_failed(exit_code, &failure, &message);
            }
            (None | Some(JobState::Missing), _) => {
                // Not created yet, or removed before it was seen to finish: create it (a rejection recorded
                // twice is harmless; the audit log is append-only).
                let job_name = self.status.job_name.clone().unwrap_or_else(|| reject_job_name(self.o.name));
                self.launch_reject(job_name);
            }
            _ => self.requeue_after = Some(self.settings.resync),
        }
    }

    /// Launches the Job `job_name` that records the rejection in the audit log.
    fn launch_reject(&mut self, job_name: String) {
        self.status.job_name = Some(job_name.clone());
        let by = self.status.rejected_by.clone().unwrap_or_default();
        let why = match &self.o.decision {
            Decision::Rejected { reason: Some(why), .. } => why.clone(),
            _ => "no reason given".into(),
        };
        let action = JobAction::Reject { rejected_by: by, reason: why };
        self.launch = Some(Launch { job_name, action, mode: self.mode() });
        self.requeue_after = Some(self.settings.resync);
    }

    /// The Job recording the rejection failed: a transient failure (exit 75, 1, or none: a lost pod) is tried
    /// again by a new Job with the promote Jobs' bounded backoff; anything else, or the last attempt, ends it
    /// unrecorded.
    fn reject_job_failed(&mut self, exit_code: Option<i32>, failure: &str, rejected: &str) {
        let job_name = self.status.job_name.clone().unwrap_or_else(|| reject_job_name(self.o.name));
        let attempt = reject_attempt_of(self.o.name, &job_name);
        let retryable = matches!(exit_code, None | Some(1) | Some(75));
        if retryable && attempt < self.settings.max_attempts {
            match self.status.next_attempt_at.as_ref().map(|t| t.0) {
                Some(at) if at > self.o.now => self.requeue_after = Some(until(self.o.now, at)),
                Some(_) => {
                    self.status.next_attempt_at = None;
                    self.launch_reject(reject_attempt_job_name(self.o.name, attempt + 1));
                }
                None => {
                    let what = exit_code.map_or_else(|| "no exit code".to_owned(), |code| format!("exit {code}"));
                    let delay = self.settings.retry.delay(attempt, retry::jitter(self.o.uid, attempt));
                    self.status.next_attempt_at = Some(Time(after(self.o.now, delay)));
                    let message = format!(
                        "the Job {job_name} recording the rejection failed ({what}: {failure}); attempt {} of {} in \
                         {}s",
                        attempt + 1,
                        self.settings.max_attempts,
                        delay.as_secs()
                    );
                    self.condition(CONDITION_PROMOTED, ConditionStatus::False, REJECTION_PENDING, &message);
                    self.transitions.push(Transition::RejectRetrying { attempt, message });
                    self.requeue_after = Some(delay.max(Duration::from_millis(100)));
                }
            }
            return;
        }
        let tries = if retryable { format!(" in each of {attempt} Jobs") } else { String::new() };
        let note = format!("the rejection could not be recorded in the audit log{tries}: {failure}");
        self.status.next_attempt_at = None;
        self.condition(CONDITION_PROMOTED, ConditionStatus::False, "RejectionNotRecorded", &note);
        self.condition(CONDITION_READY, ConditionStatus::False, "Finished", rejected);
        self.transitions.push(Transition::RejectionNotRecorded { message: note });
    }

    /// A rejection, or the approval withdrawn (or turned into the creator's own), while `Promoting`: it wins as
    /// long as nothing is committed — the lake records nothing of this Promotion and no promote Job runs. A Job
    /// whose pod never started (a missing Secret, a pod that cannot be created) is deleted, its pods first, and
    /// the verdict waits until it is gone; a Job whose pod runs may be committing, so it is left to finish and
    /// the lake decides after it — but no new attempt is started meanwhile. Once the lake records the promotion
    /// (the pointer names it, or the gate refused it), the rejection comes too late and the promotion's own
    /// outcome stands. Returns whether it decided (else the promotion is followed as usual).
    fn withdraw(&mut self) -> bool {
        let rejection = match &self.o.decision {
            Decision::Approved { by, .. } if !self.self_approval(by) => return false,
            Decision::Approved { .. } | Decision::Pending => None,
            Decision::Rejected { by, reason } => Some((by.clone(), reason.clone())),
        };
        let who = match &rejection {
            Some((by, _)) => format!("rejected by {by}"),
            None => "the approval was withdrawn".to_owned(),
        };
        let then = if rejection.is_some() { "it is rejected" } else { "it awaits approval again" };
        let job_name = self.status.job_name.clone().unwrap_or_default();
        if matches!(self.o.job, Some(JobState::Active)) {
            let message = if self.o.blocker.is_some() {
                self.delete_job = Some(job_name.clone());
                format!("{who}: deleting the promote Job {job_name}, whose pod never started; then {then}")
            } else {
                format!(
                    "{who} while the promote Job {job_name} runs: it may be committing, so it is left to finish and \
                     no new attempt is started; if it commits nothing, {then}"
                )
            };
            self.wait_for(REASON_WITHDRAWAL_PENDING, message);
            self.requeue_after = Some(ACTIVE_JOB_POLL.min(self.settings.resync));
            return true;
        }
        // Without the Dataset or its lake nothing is known of what is committed: held as `follow_promotion` holds
        // (it launches nothing then).
        if self.o.dataset.is_err() || self.o.lake_error.is_some() {
            return false;
        }
        if matches!(self.o.recorded, Some(Recorded::Promoted { .. } | Recorded::Refused { .. })) {
            return false;
        }
        let state = match &self.o.job {
            None | Some(JobState::Missing) => "no promote Job ran".to_owned(),
            Some(JobState::Failed { .. }) => format!("promote Job {job_name} failed"),
            _ => format!("promote Job {job_name} ended"),
        };
        let context = format!("while promoting, before anything was committed: {state}");
        match rejection {
            Some((by, reason)) => self.reject(by, reason, Some(context)),
            None => {
                self.status.phase = Some(PromotionPhase::AwaitingApproval);
                self.status.approved_by = None;
                self.status.next_attempt_at = None;
                let message = format!("{who} {context}; nothing moved, and it awaits approval again");
                self.condition(CONDITION_APPROVED, ConditionStatus::False, REASON_APPROVAL_WITHDRAWN, &message);
                self.condition(CONDITION_READY, ConditionStatus::False, REASON_APPROVAL_WITHDRAWN, &message);
                self.transitions.push(Transition::ApprovalWithdrawn { message });
                self.requeue_after = Some(Duration::from_secs(1));
            }
        }
        true
    }

    fn approved(&mut self, by: String, reason: Option<String>) {
        self.status.approved_by = Some(by.clone());
        let why = reason.clone().unwrap_or_else(|| "no reason given".into());
        self.condition(CONDITION_APPROVED, ConditionStatus::True, "Approved", &format!("approved by {by}: {why}"));
        if self.status.phase.is_none() {
            self.status.phase = Some(PromotionPhase::AwaitingApproval);
        }
        if self.dataset_problem() {
            return;
        }
        let preview = self.take_preview();
        if let Some(other) = &self.o.blocked_by {
            let message = format!(
                "waits for Promotion {other} of dataset {}: promotions of one dataset run one at a time",
                self.o.spec.dataset
            );
            self.wait_for("WaitingForPromotion", message);
            self.requeue_after = Some(self.settings.wait_poll);
            return;
        }
        if let Some((status, reason, message)) = preview {
            self.ready_from_preview(status, reason, message);
        }
        // After a withdrawn approval the earlier attempts' Jobs keep their names: a new one.
        self.start_attempt(self.status.attempts + 1);
    }

    fn promote_action(&self) -> JobAction {
        let by = self.status.approved_by.clone().unwrap_or_default();
        let reason = match &self.o.decision {
            Decision::Approved { reason: Some(why), .. } => format!("{} (approved: {why})", self.o.spec.reason),
            _ => self.o.spec.reason.clone(),
        };
        JobAction::Promote { approved_by: by, reason }
    }

    fn start_attempt(&mut self, attempt: u32) {
        let job_name = job_name(self.o.name, attempt);
        self.status.phase = Some(PromotionPhase::Promoting);
        self.status.attempts = attempt;
        self.status.job_name = Some(job_name.clone());
        self.status.next_attempt_at = None;
        let message = self.promoting(&job_name, attempt);
        self.condition(CONDITION_READY, ConditionStatus::True, "Promoting", &message);
        self.launch = Some(Launch { job_name: job_name.clone(), action: self.promote_action(), mode: self.mode() });
        self.transitions.push(Transition::Started { job_name, attempt });
        self.requeue_after = Some(self.settings.resync);
    }

    fn follow_promotion(&mut self) {
        if !matches!(self.o.job, Some(JobState::Active)) {
            // What the lake records, or the next Job, needs the Dataset and its lake: without them nothing can
            // be decided — a Job that completed is not taken for unrecorded, and no launch waits unsaid.
            if self.dataset_problem() {
                return;
            }
            if let Some(error) = &self.o.lake_error {
                let message = if self.o.lake_refused {
                    format!(
                        "the lake of the contract this Promotion froze at its first launch may not be used: {error}"
                    )
                } else {
                    format!("the lake cannot be read for what it records of this Promotion: {error}")
                };
                self.wait_for(self.lake_reason(), message);
                self.requeue_after = Some(self.settings.resync);
                return;
            }
        }
        match &self.o.recorded {
            // Final only once a promote Job of it completed: a Job that died after the pointer write left
            // `current/` and the audit record behind, and the next Job (a repeat of this Promotion) catches up.
            Some(Recorded::Promoted { version, previous_version })
                if matches!(self.o.job, Some(JobState::Complete)) =>
            {
                self.status.version = Some(*version);
                self.status.previous_version = *previous_version;
                self.status.failed_checks.clear();
                let message = format!(
                    "version {version} is current (previous {}), approved by {}",
                    previous_version.map_or_else(|| "none".to_owned(), |v| v.to_string()),
                    self.status.approved_by.as_deref().unwrap_or("?")
                );
                return self.finish(PromotionPhase::Promoted, "Promoted", message);
            }
            Some(Recorded::Refused { failed_checks }) if !matches!(self.o.job, Some(JobState::Active)) => {
                self.status.failed_checks = failed_checks.clone();
                let message = format!("the gate refused: {}", describe(failed_checks));
                return self.finish(PromotionPhase::Failed, "GateRefused", message);
            }
            _ => {}
        }
        if let Some(at) = self.status.next_attempt_at.as_ref().map(|t| t.0) {
            if at > self.o.now {
                self.requeue_after = Some(until(self.o.now, at));
            } else {
                self.start_attempt(self.status.attempts + 1);
            }
            return;
        }
        let Some(job_name) = self.status.job_name.clone() else {
            return self.start_attempt(self.status.attempts.max(1));
        };
        match self.o.job.clone() {
            None | Some(JobState::Missing) => {
                // Not created yet (the status was written first), or removed: create it; a repeat of this
                // promotion only catches up (`--promotion` carries the uid).
                self.launch = Some(Launch { job_name, action: self.promote_action(), mode: self.mode() });
                self.requeue_after = Some(self.settings.resync);
            }
            Some(JobState::Active) => self.job_active(&job_name, "promote"),
            Some(JobState::Complete) => {
                let message = format!(
                    "the promote Job {job_name} completed, but neither _LATEST.json nor the audit log records this \
                     Promotion"
                );
                self.finish(PromotionPhase::Failed, "NotRecorded", message);
            }
            Some(JobState::Failed { exit_code: Some(EXIT_GATE_REFUSED), message }) => {
                self.status.failed_checks = checks_from_message(&message);
                let message = format!("the gate refused: {}", describe(&self.status.failed_checks));
                self.finish(PromotionPhase::Failed, "GateRefused", message);
            }
            Some(JobState::Failed { exit_code: Some(EXIT_USAGE), message }) => {
                self.finish(PromotionPhase::Failed, "ConfigurationError", format!("exit 2: {message}"));
            }
            Some(JobState::Failed { exit_code, message }) => {
                let what = match exit_code {
                    Some(7) => "the pointer kept changing (exit 7)".to_owned(),
                    Some(75) => "a transient failure (exit 75)".to_owned(),
                    Some(code) => format!("exit {code}"),
                    None => "no exit code".to_owned(),
                };
                let attempt = self.status.attempts.max(1);
                if attempt >= self.settings.max_attempts {
                    if let Some(Recorded::Promoted { version, previous_version }) = &self.o.recorded {
                        // The pointer names this Promotion: its version is current, whatever the Jobs did after.
                        // Saying Failed would be false; say what lags instead (a Warning: someone should look).
                        self.status.version = Some(*version);
                        self.status.previous_version = *previous_version;
                        let message = format!(
                            "version {version} is current (_LATEST.json names this Promotion), but {what} in each of \
                             {attempt} promote Jobs after the pointer moved, so current/ and the audit record may lag \
                             until the next promotion of this dataset catches them up; last: {message}"
                        );
                        return self.finish(PromotionPhase::Promoted, "PromotedCatchUpPending", message);
                    }
                    let message = format!("{what} in each of {attempt} promote Jobs; last: {message}");
                    return self.finish(PromotionPhase::Failed, "AttemptsExhausted", message);
                }
                let delay = self.settings.retry.delay(attempt, retry::jitter(self.o.uid, attempt));
                let at = after(self.o.now, delay);
                self.status.next_attempt_at = Some(Time(at));
                let message = format!("promote Job {job_name}: {what}: {message}; retrying in {}s", delay.as_secs());
                self.condition(CONDITION_READY, ConditionStatus::False, "Retrying", &message);
                self.transitions.push(Transition::Retrying { attempt, message, after: delay });
                self.requeue_after = Some(delay.max(Duration::from_millis(100)));
            }
        }
    }
}

fn until(now: Timestamp, later: Timestamp) -> Duration {
    let d = later.duration_since(now);
    Duration::try_from(d).unwrap_or_default().max(Duration::from_millis(100))
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO)).unwrap_or(t)
}

/// `name: message; …` of failed checks.
pub fn describe(checks: &[FailedCheck]) -> String {
    checks.iter().map(|c| format!("{}: {}", c.name, c.message)).collect::<Vec<_>>().join("; ")
}

/// Failed checks from a worker's error message (`the gate refused: check: message; check: message`), when the
/// audit record cannot be read.
pub fn checks_from_message(message: &str) -> Vec<FailedCheck> {
    let text = message.rsplit_once("the gate refused:").map_or(message, |(_, rest)| rest);
    let checks: Vec<FailedCheck> = text
        .split("; ")
        .filter_map(|part| {
            let (name, message) = part.split_once(": ")?;
            let name = name.trim();
            let plausible = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            plausible.then(|| FailedCheck {
                name: name.to_owned(),
                message: message.trim().trim_end_matches("\"}").to_owned(),
            })
        })
        .collect();
    if checks.is_empty() {
        vec![FailedCheck { name: "gate".into(), message: message.trim().to_owned() }]
    } else {
        checks
    }
}

// ---------------------------------------------------------------------------------------------------------
// I/O: the reconcile, reading the lake, the Jobs.

/// One lock per dataset: the decision to start promoting is taken under it, after a fresh list of the
/// dataset's Promotions, so two approved Promotions of one dataset never start together (one leader reconciles).
#[derive(Default)]
pub struct DatasetLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl DatasetLocks {
    fn of(&self, namespace: &str, dataset: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{namespace}/{dataset}");
        match self.0.lock() {
            Ok(mut locks) => locks.entry(key).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

pub(crate) async fn run(ctx: Arc<Context>, ns: Option<&str>) {
    let promotions: Api<DeserializeGuard<Promotion>> = scoped(ctx.client.clone(), ns);
    let jobs: Api<Job> = scoped(ctx.client.clone(), ns);
    let selector = format!("{}={}", job::LABEL_MANAGED_BY, job::MANAGED_BY);
    let datasets: Api<DeserializeGuard<Dataset>> = scoped(ctx.client.clone(), ns);
    let controller = Controller::new(promotions, watcher::Config::default());
    let store = controller.store();
    let open = store.clone();
    let stream = controller
        .owns(jobs, watcher::Config::default().labels(&selector))
        .watches(datasets, watcher::Config::default(), move |dataset| {
            // A Dataset that appears or changes may unblock (or change the preview of) its open Promotions.
            let (name, namespace) = (dataset.name_any(), dataset.namespace());
            open.state()
                .into_iter()
                .filter(|p| match &p.0 {
                    Ok(p) => {
                        p.spec.dataset == name
                            && p.namespace() == namespace
                            && !p.phase().is_some_and(PromotionPhase::is_terminal)
                    }
                    Err(_) => false,
                })
                .map(|p| kube::runtime::reflector::ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone());
    tokio::select! {
        () = drain(stream, ControllerName::Promotion, &ctx) => {}
        () = export_awaiting(ctx.clone(), ns.unwrap_or_default(), store) => {}
    }
}

/// Keeps the gauges of Promotions awaiting approval (count and oldest age, per dataset) up to date, and the last
/// promotion's time known from the Promotions' statuses.
async fn export_awaiting(ctx: Arc<Context>, scope: &str, store: Store<DeserializeGuard<Promotion>>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticker.tick().await;
        let now = Timestamp::now();
        let mut awaiting: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
        let state = store.state();
        let promotions: Vec<&Promotion> = state.iter().filter_map(|guard| guard.0.as_ref().ok()).collect();
        ctx.metrics.restore_last_promotions(&promotions);
        for promotion in promotions {
            if promotion.phase() != Some(PromotionPhase::AwaitingApproval) {
                continue;
            }
            let age = promotion
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0.0, |t| now.duration_since(t.0).as_secs_f64().max(0.0));
            let namespace = promotion.metadata.namespace.clone().unwrap_or_default();
            let entry = awaiting.entry((namespace, promotion.spec.dataset.clone())).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(age);
        }
        ctx.metrics.set_awaiting_approval(scope, &awaiting);
    }
}

fn error_policy(guard: Arc<DeserializeGuard<Promotion>>, error: &Error, ctx: Arc<Context>) -> Action {
    shared_error_policy(ControllerName::Promotion, &guard, error, &ctx)
}

fn lake_error(what: &'static str) -> impl FnOnce(silverline_lake::Error) -> Error {
    move |source| Error::LakeRead { what, source }
}

/// One reconcile of one Promotion.
pub async fn reconcile(guard: Arc<DeserializeGuard<Promotion>>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(ControllerName::Promotion.label());
    let promotion = match &guard.0 {
        Ok(promotion) => promotion,
        Err(invalid) => return Err(unreadable::<Promotion>(&ctx, "Promotion", invalid).await),
    };
    let status = promotion.status.clone().unwrap_or_default();
    if status.phase.is_some_and(PromotionPhase::is_terminal) && !rejection_pending(&status) {
        return Ok(Action::await_change());
    }
    let name = promotion.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let namespace = promotion.metadata.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = promotion.metadata.uid.clone().ok_or(Error::MissingField("metadata.uid"))?;
    if name.len() > MAX_PROMOTION_NAME {
        return Err(Error::InvalidResource {
            kind: "Promotion",
            name,
            message: format!("the name must be at most {MAX_PROMOTION_NAME} characters"),
        });
    }
    let dataset = load_dataset(&ctx, &namespace, &promotion.spec.dataset).await?;
    let decision = Decision::of(promotion);
    let awaiting = matches!(status.phase, None | Some(PromotionPhase::AwaitingApproval));
    let target = target_of(&promotion.spec, status.mode.or(promotion.spec.mode), dataset.as_ref().ok());
    let preview = match (&dataset, awaiting, &decision) {
        (Ok(dataset), true, Decision::Pending | Decision::Approved { .. }) => {
            Some(preview(&ctx, &namespace, dataset, &target).await)
        }
        _ => None,
    };
    // Starting is decided under the dataset's lock, after a fresh look at the dataset's other Promotions.
    let lock = ctx.promotion_locks.of(&namespace, &promotion.spec.dataset);
    let serialized =
        if awaiting && matches!(decision, Decision::Approved { .. }) { Some(lock.lock().await) } else { None };
    let blocked_by = if serialized.is_some() {
        promoting_other(&ctx, &namespace, &promotion.spec.dataset, &name).await?
    } else {
        None
    };
    let (job, blocker) = match &status.job_name {
        Some(job_name) => {
            let (job, blocker) = observe_job(&ctx, &namespace, job_name, &uid).await?;
            (Some(job), blocker)
        }
        None => (None, None),
    };
    let (recorded, lake_error, lake_refused) = match (&dataset, status.phase, &job) {
        (Ok(dataset), Some(PromotionPhase::Promoting | PromotionPhase::Rejected), job)
            if !matches!(job, Some(JobState::Active)) =>
        {
            // The lake its Jobs write: the one of the contract frozen at the first launch, not the Dataset's now.
            let frozen = frozen_contract(&ctx, &namespace, &name, &uid, status.contract_hash.as_deref()).await?;
            match read_recorded(&ctx, &namespace, frozen.as_ref().unwrap_or(dataset), &uid).await {
                Ok(recorded) => (recorded, None, false),
                // Said on the Promotion (`Ready` LakeUnreadable, or LakeNotAllowed) and looked at again; nothing is
                // decided meanwhile.
                Err(e @ (Error::Lake { .. } | Error::LakeRead { .. })) => (None, Some(e.for_people()), false),
                Err(e @ Error::LakeNotAllowed { .. }) => (None, Some(e.for_people()), true),
                Err(e) => return Err(e),
            }
        }
        _ => (None, None, false),
    };
    // Only a first launch freezes it (see `plan`): not serialized and hashed on every reconcile.
    let contract_hash = match &dataset {
        Ok(dataset) if status.job_name.is_none() && status.contract_hash.is_none() => {
            Some(job::contract_hash(&job::contract_manifest(dataset)?))
        }
        _ => None,
    };
    // The promote and reject Jobs mount the Dataset's credentials, as worker pods do: a pod that waits for them
    // is said on the Dataset too, by its `CredentialsSecret` condition.
    let whose = status.job_name.as_ref().map(|job| format!("the pod of Job {job} (Promotion {name})"));
    let missing_credentials = blocker.as_ref().zip(whose.as_ref()).and_then(|(blocker, whose)| {
        let (reason, message) = credentials::problem(blocker, &namespace, whose)?;
        Some(MissingCredentials { reason, message })
    });
    // A Job that completed, or failed with its container's exit code, had a pod that started.
    let pod_ran = matches!(job, Some(JobState::Complete | JobState::Failed { exit_code: Some(_), .. }));
    let observed = Observed {
        now: Timestamp::now(),
        name: &name,
        uid: &uid,
        generation: promotion.metadata.generation,
        spec: &promotion.spec,
        decision,
        created_by: promotion.creator(),
        requested_by: promotion.requested_by(),
        status: &status,
        dataset: dataset.as_ref().map(|d| d.spec.promotion.mode).map_err(Clone::clone),
        preview,
        blocked_by,
        job,
        blocker,
        recorded,
        lake_error,
        lake_refused,
        contract_hash,
        launch_error: None,
        contract_lost: None,
    };
    let mut plan = plan(&observed, &ctx.promotion);
    if plan.status != status {
        write_status(&ctx, promotion, &plan.status).await?;
    }
    drop(serialized);
    if let Some(job_name) = &plan.delete_job {
        // Its pods first (foreground): it is gone only once no pod of it can run.
        tracing::info!(namespace = %namespace, job = %job_name, "deleting the promote Job (rejected or withdrawn)");
        super::delete_job(&ctx, &namespace, job_name, &kube::api::DeleteParams::foreground()).await?;
    }
    let mut launch_failed = None;
    if let (Some(launch), Ok(dataset)) = (&plan.launch, &dataset) {
        let frozen = plan.status.contract_hash.as_deref();
        let again = match launch_job(&ctx, promotion, &uid, dataset, launch, frozen).await {
            Ok(Launched::Yes) => None,
            // No Job of this Promotion can ever run: the plan ends it.
            Ok(Launched::ContractLost(why)) => Some(Observed { contract_lost: Some(why), ..observed }),
            Err(e) => {
                // What the user may have to act on (a quota, an admission policy, RBAC, a ConfigMap that is not
                // the Promotion's contract) is said on the Promotion — `Ready` LaunchFailed and a Warning Event —
                // and the launch is tried again.
                let refused = Observed { launch_error: Some(e.for_people()), ..observed };
                launch_failed = Some(e);
                Some(refused)
            }
        };
        if let Some(again) = again {
            let first = std::mem::replace(&mut plan, self::plan(&again, &ctx.promotion));
            if plan.status != first.status {
                // The first write changed the resourceVersion: written again on the fresh one (a second write
                // on the one read would be refused as a conflict, and the first plan's Events never said).
                let wrote = match written_since(&ctx, promotion).await {
                    Ok(fresh) => write_status(&ctx, &fresh, &plan.status).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = wrote {
                    // The first write stands: what it decided is said (not the Job that was not created).
                    for transition in first.transitions.iter().filter(|t| !matches!(t, Transition::Started { .. })) {
                        report(&ctx, promotion, &first.status, transition).await;
                    }
                    return Err(e);
                }
            }
        }
    }
    for transition in &plan.transitions {
        report(&ctx, promotion, &plan.status, transition).await;
    }
    match (credentials_note(missing_credentials.as_ref(), &plan.transitions, pod_ran), &dataset, &whose) {
        // A Dataset not found or not valid: nothing to compare with, nothing written; the Promotion says it.
        (Some(CredentialsNote::Missing { reason, message }), Ok(current), Some(whose)) => {
            credentials::set(&ctx, current, whose, false, reason, message).await;
        }
        (Some(CredentialsNote::Found), Ok(dataset), Some(whose)) => {
            let naming = format!("(Promotion {name})");
            credentials::found(&ctx, dataset, whose, Some(&naming)).await;
        }
        _ => {}
    }
    if let Some(e) = launch_failed {
        return Err(e);
    }
    Ok(plan.requeue_after.map_or_else(Action::await_change, Action::requeue))
}

/// The pod of a Promotion's Job waits for the Dataset's credentials Secret or a key of it: the Dataset's
/// `CredentialsSecret` reason and message.
struct MissingCredentials {
    reason: &'static str,
    message: String,
}

/// What a reconcile says on the Dataset's `CredentialsSecret` condition (see `controllers::credentials`).
#[derive(Debug, PartialEq)]
enum CredentialsNote<'a> {
    /// False: the Job's pod waits for the Secret or a key of it.
    Missing { reason: &'static str, message: &'a str },
    /// True, if a False names this Promotion: its Job's pod ran (or it ended Promoted), so it started.
    Found,
}

/// The Dataset hears of a waiting pod on every reconcile while it waits (written only when it does not say so
/// already: `credentials::set`), and of a pod that started when its Job's pod ran to an end or the Promotion ended
/// Promoted.
fn credentials_note<'a>(
    missing: Option<&'a MissingCredentials>,
    transitions: &[Transition],
    pod_ran: bool,
) -> Option<CredentialsNote<'a>> {
    if let Some(m) = missing {
        return Some(CredentialsNote::Missing { reason: m.reason, message: &m.message });
    }
    let promoted =
        transitions.iter().any(|t| matches!(t, Transition::Finished { phase: PromotionPhase::Promoted, .. }));
    (pod_ran || promoted).then_some(CredentialsNote::Found)
}

/// The Promotion as it is after this reconcile's own status write, to write status again on its resourceVersion;
/// a conflict if anything but its status changed meanwhile (a new annotation is decided by a fresh reconcile).
async fn written_since(ctx: &Context, promotion: &Promotion) -> Result<Promotion> {
    let name = promotion.name_any();
    let namespace = promotion.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Promotion> = Api::namespaced(ctx.client.clone(), &namespace);
    // A list by name: the operator's RBAC grants `list` on Promotions, not `get`.
    let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
    let list = api.list(&by_name).await.map_err(Error::kube(format!("reading Promotion {name}")))?;
    let Some(fresh) = list.items.into_iter().next() else {
        return Err(Error::Conflict { kind: "Promotion", name });
    };
    let same = fresh.metadata.uid == promotion.metadata.uid
        && fresh.metadata.generation == promotion.metadata.generation
        && fresh.metadata.annotations == promotion.metadata.annotations;
    if same { Ok(fresh) } else { Err(Error::Conflict { kind: "Promotion", name }) }
}

/// The Promotion's Dataset, valid and with a lake the operator allows in its namespace, or why not (reason,
/// message).
async fn load_dataset(ctx: &Context, namespace: &str, name: &str) -> Result<Result<Dataset, (&'static str, String)>> {
    let api: Api<DeserializeGuard<Dataset>> = Api::namespaced(ctx.client.clone(), namespace);
    let found = api.get_opt(name).await.map_err(Error::kube(format!("reading Dataset {name}")))?;
    Ok(match found {
        None => Err(("DatasetNotFound", format!("Dataset {name} does not exist in this namespace"))),
        Some(DeserializeGuard(Err(invalid))) => {
            Err(("InvalidDataset", format!("Dataset {name} is not valid: {}", invalid.error)))
        }
        Some(DeserializeGuard(Ok(dataset))) => match dataset.validate() {
            Ok(()) => match ctx.lakes.allowed(namespace, &dataset.spec.storage) {
                Ok(()) => Ok(dataset),
                Err(message) => Err(("LakeNotAllowed", format!("Dataset {name}: {message}"))),
            },
            Err(e) => Err(("InvalidDataset", format!("Dataset {name} is not valid: {e}"))),
        },
    })
}

fn target_of(spec: &PromotionSpec, mode: Option<PromotionMode>, dataset: Option<&Dataset>) -> silverline_lake::Target {
    match (spec.restore_version, &spec.run_ids) {
        (Some(version), _) => silverline_lake::Target::Restore { version },
        (None, run_ids) => silverline_lake::Target::Runs {
            run_ids: run_ids.clone().unwrap_or_default(),
            mode: mode.or_else(|| dataset.map(|d| d.spec.promotion.mode)).unwrap_or_default(),
        },
    }
}

async fn preview(
    ctx: &Context,
    namespace: &str,
    dataset: &Dataset,
    target: &silverline_lake::Target,
) -> Result<PreviewFacts, String> {
    let lake = ctx.lakes.open(namespace, &dataset.spec.storage).map_err(|e| e.to_string())?;
    let Some(lake) = lake.lake() else { return Err("the lake does not exist yet".into()) };
    let preview = silverline_lake::promotion::preview_target(lake, dataset, target).await.map_err(|e| e.to_string())?;
    Ok(PreviewFacts {
        version_before: preview.version_before,
        runs: preview
            .metrics
            .iter()
            .map(|m| PromotionRun {
                run_id: m.run_id.clone(),
                state: m.state.clone(),
                input_rows: m.input_rows,
                valid_rows: m.valid_rows,
                quarantined_rows: m.quarantined_rows,
                condemned_rows: m.condemned_rows,
                quarantine_rate: m.quarantine_rate,
                error_types: m.error_types.clone(),
                duration_seconds: m.duration_seconds,
            })
            .collect(),
        change: change_of(&preview.change),
        failures: preview
            .failures
            .iter()
            .map(|f| {
                let record = f.to_record();
                FailedCheck { name: record.check, message: record.message }
            })
            .collect(),
    })
}

fn change_of(change: &silverline_lake::plan::Change) -> PromotionChange {
    PromotionChange {
        partitions_added: change.partitions_added.clone(),
        partitions_extended: change.partitions_extended.clone(),
        partitions_replaced: change.partitions_replaced.clone(),
        partitions_removed: change.partitions_removed.clone(),
        files_before: change.before.files,
        files_after: change.after.files,
        rows_before: change.before.rows,
        rows_after: change.after.rows,
    }
}

/// Another Promotion of the dataset that is `Promoting`, read fresh from the API (not from a cache).
async fn promoting_other(ctx: &Context, namespace: &str, dataset: &str, name: &str) -> Result<Option<String>> {
    let api: Api<DeserializeGuard<Promotion>> = Api::namespaced(ctx.client.clone(), namespace);
    let list = api.list(&ListParams::default()).await.map_err(Error::kube("listing Promotions"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|guard| guard.0.ok())
        .filter(|p| p.spec.dataset == dataset && p.name_any() != name)
        .filter(|p| p.phase() == Some(PromotionPhase::Promoting))
        .map(|p| p.name_any())
        .min())
}

/// The Job's state, and while it is active, what keeps its pod from starting (the kubelet's
/// `CreateContainerConfigError`, e.g. a missing credentials Secret; the Job controller's `FailedCreate`, e.g. a
/// missing ServiceAccount), as the EtlRun controller's watches of pods and Events remember it.
async fn observe_job(
    ctx: &Context,
    namespace: &str,
    job_name: &str,
    uid: &str,
) -> Result<(JobState, Option<PodBlocker>)> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(found) = jobs.get_opt(job_name).await.map_err(Error::kube(format!("reading Job {job_name}")))? else {
        return Ok((JobState::Missing, None));
    };
    if !owned_by(&found.metadata, uid) {
        return Err(Error::NotOwned {
            kind: "Job",
            name: job_name.to_owned(),
            owner: "this Promotion".into(),
            uid: uid.to_owned(),
        });
    }
    let condition = |type_: &str| {
        found
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == "True"))
            .cloned()
    };
    if condition("Complete").is_some() {
        return Ok((JobState::Complete, None));
    }
    if let Some(failed) = condition("Failed") {
        let pods = super::pods_of_job(ctx, namespace, job_name).await?;
        let job_uid = found.metadata.uid.as_deref().unwrap_or_default();
        let end = super::newest_pod(&pods)
            .map(super::etlrun::pod_end)
            .or_else(|| ctx.pod_ends.get(namespace, job_name, job_uid));
        // The worker's own error from its termination message (a JSON line), not the whole line.
        let message = end
            .as_ref()
            .and_then(|e| e.message.as_deref().and_then(crate::failure::worker_said))
            .or(failed.message)
            .unwrap_or_else(|| failed.reason.unwrap_or_default());
        return Ok((JobState::Failed { exit_code: end.and_then(|e| e.exit_code), message }, None));
    }
    let job_uid = found.metadata.uid.as_deref().unwrap_or_default();
    let (blocker, _) = ctx.pod_ends.why_not_started(namespace, job_name, job_uid, false);
    Ok((JobState::Active, blocker))
}

/// The contract this Promotion's Jobs apply, as frozen at its first launch (its ConfigMap `{promotion}-contract`,
/// owned by it and holding the manifest of `status.contractHash`); `None` before a launch, or when that ConfigMap is
/// gone or not the one frozen (the launch says so). A Dataset edited meanwhile (its lake moved) must not make the
/// operator look for the promotion's outcome where its Job did not write.
async fn frozen_contract(
    ctx: &Context,
    namespace: &str,
    promotion: &str,
    uid: &str,
    frozen: Option<&str>,
) -> Result<Option<Dataset>> {
    let Some(frozen) = frozen else { return Ok(None) };
    let name = contract_name(promotion);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let found = config_maps.get_opt(&name).await.map_err(Error::kube(format!("reading ConfigMap {name}")))?;
    let Some(text) = found
        .filter(|cm| owned_by(&cm.metadata, uid))
        .and_then(|cm| cm.data.and_then(|mut d| d.remove(job::CONTRACT_KEY)))
        .filter(|text| job::contract_hash(text) == frozen)
    else {
        return Ok(None);
    };
    Dataset::from_manifest(&text).map(Some).map_err(|e| Error::Snapshot { name, message: e.to_string() })
}

/// What the lake records about this Promotion: `_LATEST.json` first (it names the Promotion that moved it),
/// then the audit log (a later promotion may have moved the pointer again; a refusal or rejection).
async fn read_recorded(ctx: &Context, namespace: &str, dataset: &Dataset, uid: &str) -> Result<Option<Recorded>> {
    let lake = ctx.lakes.open(namespace, &dataset.spec.storage)?;
    let Some(lake) = lake.lake() else { return Ok(None) };
    let name =
        dataset.checked_name().map_err(|e| Error::Snapshot { name: "Dataset".into(), message: e.to_string() })?;
    let latest = silverline_lake::read_latest(lake, name).await.map_err(lake_error("_LATEST.json"))?;
    if let Some((pointer, _)) = latest
        && pointer.promotion.as_ref().is_some_and(|p| p.uid == uid)
    {
        return Ok(Some(Recorded::Promoted { version: pointer.version, previous_version: pointer.previous_version }));
    }
    let records = silverline_lake::audit::list(lake, name).await.map_err(lake_error("the audit log"))?;
    use silverline_lake::audit::AuditResult;
    for record in records.into_iter().filter(|r| r.promotion.as_ref().is_some_and(|p| p.uid == uid)) {
        return Ok(Some(match record.result {
            AuditResult::Promoted | AuditResult::RolledBack => match record.version_after {
                Some(version) => Recorded::Promoted { version, previous_version: record.version_before },
                None => continue,
            },
            AuditResult::Refused => Recorded::Refused {
                failed_checks: record
                    .failed_checks
                    .into_iter()
                    .map(|c| FailedCheck { name: c.check, message: c.message })
                    .collect(),
            },
            AuditResult::Rejected => Recorded::Rejected,
        }));
    }
    Ok(None)
}

/// The arguments of `silverline-worker promote` for a launch. Values from the Promotion go as `--flag=value`: a
/// reason such as "-5 % rows, accepted" or a run id starting with '-' is then a value, never taken for a flag.
pub fn promote_args(promotion: &Promotion, uid: &str, launch: &Launch) -> Vec<String> {
    let namespace = promotion.metadata.namespace.clone().unwrap_or_default();
    let name = promotion.metadata.name.clone().unwrap_or_default();
    let mut args =
        vec!["promote".into(), "--contract".into(), format!("{}/{}", job::CONTRACT_MOUNT, job::CONTRACT_KEY)];
    match (promotion.spec.restore_version, &promotion.spec.run_ids) {
        (Some(version), _) => args.extend(["--restore-version".into(), version.to_string()]),
        (None, run_ids) => {
            for run_id in run_ids.iter().flatten() {
                args.push(format!("--run-id={run_id}"));
            }
            args.extend(["--mode".into(), launch.mode.cli_name().into()]);
        }
    }
    match &launch.action {
        JobAction::Promote { approved_by, reason } => {
            args.extend([format!("--approved-by={approved_by}"), format!("--reason={reason}")]);
        }
        JobAction::Reject { rejected_by, reason } => {
            args.extend([format!("--rejected-by={rejected_by}"), format!("--reason={reason}")]);
        }
    }
    args.extend(["--promotion".into(), format!("{namespace}/{name}/{uid}")]);
    args
}

/// The promote (or reject) Job: one pod, no retries inside the Job (the controller retries under a new Job
/// name), the worker's restricted pod with the Dataset's credentials by reference and the frozen contract.
pub fn promote_job(
    promotion: &Promotion,
    uid: &str,
    dataset: &Dataset,
    launch: &Launch,
    settings: &JobSettings,
) -> Result<Job> {
    let name = promotion.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let owner = promotion.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let labels = promotion_labels(&name, &promotion.spec.dataset);
    let args = promote_args(promotion, uid, launch);
    let pod = job::worker_pod(args, dataset, &contract_name(&name), settings.default_resources.clone(), settings);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(launch.job_name.clone()),
            namespace: promotion.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(settings.default_deadline_seconds),
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

fn promotion_labels(name: &str, dataset: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (job::LABEL_MANAGED_BY.to_owned(), job::MANAGED_BY.to_owned()),
        ("app.kubernetes.io/name".to_owned(), "silverline-worker".to_owned()),
        (LABEL_PROMOTION.to_owned(), name.to_owned()),
        (job::LABEL_DATASET.to_owned(), dataset.to_owned()),
    ])
}

/// The contract the promote Job applies, owned by the Promotion; frozen at the first launch.
pub fn contract_config_map(promotion: &Promotion, dataset: &Dataset) -> Result<ConfigMap> {
    let name = promotion.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let owner = promotion.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(contract_name(&name)),
            namespace: promotion.metadata.namespace.clone(),
            labels: Some(promotion_labels(&name, &promotion.spec.dataset)),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        immutable: Some(true),
        data: Some(BTreeMap::from([(job::CONTRACT_KEY.to_owned(), job::contract_manifest(dataset)?)])),
        ..ConfigMap::default()
    })
}

/// Whether [`launch_job`] launched (or found) the Job.
enum Launched {
    Yes,
    /// The contract frozen at the first launch is gone and cannot be made again (why): no Job of the Promotion
    /// can ever run.
    ContractLost(String),
}

/// Makes sure the contract and the Job exist; a Job of that name that exists is adopted if it is ours. The
/// contract ConfigMap must be the Promotion's own, holding the manifest its first launch froze (`frozen`, the
/// manifest's [`job::contract_hash`]; a Promotion launched before the hash was kept: any the Promotion owns): the
/// name is predictable, so one made by anyone else is never mounted.
async fn launch_job(
    ctx: &Context,
    promotion: &Promotion,
    uid: &str,
    dataset: &Dataset,
    launch: &Launch,
    frozen: Option<&str>,
) -> Result<Launched> {
    let namespace = promotion.metadata.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let contract = contract_config_map(promotion, dataset)?;
    let name = contract.name_any();
    let manifest = |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get(job::CONTRACT_KEY)).cloned();
    let now = manifest(&contract).map(|text| job::contract_hash(&text));
    // A Dataset changed since the first launch gives no contract of this Promotion: only the frozen one is used.
    let create = frozen.is_none_or(|frozen| now.as_deref() == Some(frozen));
    let created = if create {
        match config_maps.create(&params, &contract).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 409 => false,
            Err(e) => return Err(Error::kube(format!("creating ConfigMap {name}"))(e)),
        }
    } else {
        false
    };
    if !created {
        let found = config_maps.get_opt(&name).await.map_err(Error::kube(format!("reading ConfigMap {name}")))?;
        let Some(found) = found else {
            return Ok(Launched::ContractLost(format!(
                "its contract ConfigMap {name} is missing and Dataset {} has changed since the Promotion's first \
                 launch (status.contractHash {}), so the contract it was approved with is lost; create a new \
                 Promotion",
                promotion.spec.dataset,
                frozen.unwrap_or_default()
            )));
        };
        if !owned_by(&found.metadata, uid) {
            return Err(Error::NotOwned {
                kind: "ConfigMap",
                name,
                owner: format!("Promotion {}", promotion.name_any()),
                uid: uid.to_owned(),
            });
        }
        let held = manifest(&found).map(|text| job::contract_hash(&text));
        // The Job writes the lake of the contract it mounts, frozen at the first launch: that lake must still be
        // one the operator allows (a grant withdrawn since, or a Dataset moved to an allowed lake meanwhile).
        if let Some(text) = manifest(&found) {
            let mounted = Dataset::from_manifest(&text)
                .map_err(|e| Error::Snapshot { name: name.clone(), message: e.to_string() })?;
            ctx.lakes
                .allowed(&namespace, &mounted.spec.storage)
                .map_err(|message| Error::LakeNotAllowed { uri: mounted.spec.storage.lake_uri.clone(), message })?;
        }
        if let Some(frozen) = frozen
            && held.as_deref() != Some(frozen)
        {
            return Err(Error::Snapshot {
                name,
                message: format!(
                    "it holds another manifest than the one this Promotion froze at its first launch (hash \
                     {frozen}); it is never mounted: delete it"
                ),
            });
        }
    }
    let job = promote_job(promotion, uid, dataset, launch, &ctx.jobs)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    match jobs.create(&params, &job).await {
        Ok(_) => {
            tracing::info!(promotion = %promotion.name_any(), namespace = %namespace, dataset = %promotion.spec.dataset,
                job = %launch.job_name, "created the promote Job");
            Ok(Launched::Yes)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing =
                jobs.get(&launch.job_name).await.map_err(Error::kube(format!("reading Job {}", launch.job_name)))?;
            if owned_by(&existing.metadata, uid) {
                Ok(Launched::Yes)
            } else {
                Err(Error::NotOwned {
                    kind: "Job",
                    name: launch.job_name.clone(),
                    owner: format!("Promotion {}", promotion.name_any()),
                    uid: uid.to_owned(),
                })
            }
        }
        Err(e) => Err(Error::kube(format!("creating Job {}", launch.job_name))(e)),
    }
}

/// Publishes one change (already written to status): an Event, a log line, metrics. Every failure a person
/// must act on is a Warning Event besides the status condition.
async fn report(ctx: &Context, promotion: &Promotion, status: &PromotionStatus, transition: &Transition) {
    let name = promotion.name_any();
    let namespace = promotion.namespace().unwrap_or_default();
    let dataset = promotion.spec.dataset.as_str();
    let meta = &promotion.metadata;
    match transition {
        Transition::AwaitingApproval { message } => {
            tracing::info!(promotion = %name, namespace = %namespace, dataset, "{message}");
            publish::<Promotion>(ctx, meta, EventType::Normal, "AwaitingApproval", "Review", message.clone()).await;
        }
        Transition::Waiting { reason, message } => {
            tracing::info!(promotion = %name, namespace = %namespace, dataset, reason = %reason, "{message}");
            let type_ = if reason == "WaitingForPromotion" { EventType::Normal } else { EventType::Warning };
            publish::<Promotion>(ctx, meta, type_, reason, "Wait", message.clone()).await;
        }
        Transition::Started { job_name, attempt } => {
            let note = format!(
                "promote Job {job_name} (attempt {attempt}), approved by {}",
                status.approved_by.as_deref().unwrap_or("?")
            );
            tracing::info!(promotion = %name, namespace = %namespace, dataset, job = %job_name, attempt, "{note}");
            publish::<Promotion>(ctx, meta, EventType::Normal, "Promoting", "Launch", note).await;
        }
        Transition::Retrying { attempt, message, .. } => {
            tracing::warn!(promotion = %name, namespace = %namespace, dataset, attempt, "{message}");
            publish::<Promotion>(ctx, meta, EventType::Warning, "PromoteRetrying", "Retry", message.clone()).await;
        }
        Transition::Finished { phase, reason, message } => {
            let now = crate::metrics::epoch_seconds(Timestamp::now());
            ctx.metrics.record_promotion(DatasetSeries::new(&namespace, dataset), *phase, now);
            let lagging = reason == "PromotedCatchUpPending";
            let type_ =
                if *phase == PromotionPhase::Failed || lagging { EventType::Warning } else { EventType::Normal };
            tracing::info!(promotion = %name, namespace = %namespace, dataset, phase = %phase, reason = %reason, "{message}");
            publish::<Promotion>(ctx, meta, type_, reason, "Finish", format!("{phase}: {message}")).await;
        }
        Transition::RejectionNotRecorded { message } => {
            tracing::warn!(promotion = %name, namespace = %namespace, dataset, "{message}");
            publish::<Promotion>(ctx, meta, EventType::Warning, "RejectionNotRecorded", "Audit", message.clone()).await;
        }
        Transition::RejectRetrying { attempt, message } => {
            tracing::warn!(promotion = %name, namespace = %namespace, dataset, attempt, "{message}");
            publish::<Promotion>(ctx, meta, EventType::Warning, "RejectRetrying", "Audit", message.clone()).await;
        }
        Transition::ApprovalWithdrawn { message } => {
            tracing::info!(promotion = %name, namespace = %namespace, dataset, "{message}");
            let reason = REASON_APPROVAL_WITHDRAWN;
            publish::<Promotion>(ctx, meta, EventType::Normal, reason, "Review", message.clone()).await;
        }
        Transition::SelfApprovalRefused { message } => {
            tracing::warn!(promotion = %name, namespace = %namespace, dataset, "{message}");
            let reason = REASON_SELF_APPROVAL_REFUSED;
            publish::<Promotion>(ctx, meta, EventType::Warning, reason, "Review", message.clone()).await;
        }
    }
}

/// Creates the Promotion a succeeded EtlRun asks for when its Dataset says `spec.promotion.requestOnSuccess`:
/// named `{etlrun}-promo`, awaiting approval, not owned by the EtlRun (deleting a run must not delete the
/// review). One that exists already is left as it is. `run_creator` (the EtlRun's `created-by`, where the approval
/// policy records it) is named as `requested-by`: whoever ran the data may not also approve its publication.
pub async fn request_for_run(
    ctx: &Context,
    namespace: &str,
    etlrun: &str,
    run_creator: Option<&str>,
    dataset: &Dataset,
    run_id: &str,
) -> Result<Option<String>> {
    if !dataset.spec.promotion.request_on_success {
        return Ok(None);
    }
    let dataset_name = dataset.metadata.name.clone().ok_or(Error::MissingField("Dataset metadata.name"))?;
    let name = requested_name(etlrun);
    let mut promotion = Promotion::new(
        &name,
        PromotionSpec {
            dataset: dataset_name,
            run_ids: Some(vec![run_id.to_owned()]),
            restore_version: None,
            mode: Some(dataset.spec.promotion.mode),
            reason: format!("EtlRun {etlrun} succeeded (run {run_id})"),
        },
    );
    promotion.metadata.namespace = Some(namespace.to_owned());
    let requester = run_creator.map(str::trim).filter(|c| !c.is_empty()).unwrap_or(OPERATOR_REQUESTER);
    let mut annotations = BTreeMap::from([(ANNOTATION_REQUESTED_BY.to_owned(), requester.to_owned())]);
    // The creator names itself, as the approval policy's validating half requires of every creator (its mutating
    // half, where installed, records the same name).
    if let Some(username) = ctx.username().await {
        annotations.insert(ANNOTATION_CREATED_BY.to_owned(), username);
    }
    promotion.metadata.annotations = Some(annotations);
    promotion.metadata.labels = Some(BTreeMap::from([(job::LABEL_ETLRUN.to_owned(), etlrun.to_owned())]));
    let api: Api<Promotion> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match api.create(&params, &promotion).await {
        Ok(_) => Ok(Some(name)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(Error::kube(format!("creating Promotion {name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_hears_of_a_waiting_pod_while_it_waits_and_of_a_pod_that_ran() {
        let missing = MissingCredentials {
            reason: "SecretNotFound",
            message: "Secret lake-creds ...: the pod of Job p-p1 (Promotion p) cannot start".into(),
        };
        let waiting = |reason: &str| Transition::Waiting { reason: reason.into(), message: "m".into() };
        let promoted =
            Transition::Finished { phase: PromotionPhase::Promoted, reason: "Promoted".into(), message: "m".into() };
        // On every reconcile while the pod waits, transition or not (`credentials::set` writes only a change).
        let said = Some(CredentialsNote::Missing { reason: "SecretNotFound", message: &missing.message });
        assert_eq!(
            credentials_note(Some(&missing), &[waiting(crate::lifecycle::REASON_SECRET_NOT_FOUND)], false),
            said
        );
        assert_eq!(credentials_note(Some(&missing), &[], false), said);
        // Another blocker (a ServiceAccount, a quota) says nothing of the Secret.
        assert_eq!(credentials_note(None, &[waiting("PodCreationFailed")], false), None);
        // A pod that ran, or a promotion that ended Promoted: found.
        assert_eq!(credentials_note(None, &[], true), Some(CredentialsNote::Found));
        assert_eq!(credentials_note(None, &[promoted], false), Some(CredentialsNote::Found));
        assert_eq!(credentials_note(None, &[], false), None);
    }

    const UID: &str = "0f3a9c12-aaaa-bbbb-cccc-000000000000";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid")
    }

    fn spec() -> PromotionSpec {
        PromotionSpec {
            dataset: "tx".into(),
            run_ids: Some(vec!["20240101T000000Z-abc-a1".into()]),
            restore_version: None,
            mode: None,
            reason: "January".into(),
        }
    }

    fn settings() -> PromotionSettings {
        PromotionSettings {
            retry: RetryPolicy { jitter_ratio: 0.0, base: Duration::from_secs(1), ..RetryPolicy::default() },
            max_attempts: 3,
            ..PromotionSettings::default()
        }
    }

    fn preview(failures: Vec<FailedCheck>) -> Option<Result<PreviewFacts, String>> {
        Some(Ok(PreviewFacts {
            version_before: Some(2),
            runs: vec![PromotionRun {
                run_id: "20240101T000000Z-abc-a1".into(),
                state: "committed".into(),
                valid_rows: Some(8),
                ..PromotionRun::default()
            }],
            change: PromotionChange {
                files_before: 1,
                files_after: 2,
                rows_before: 10,
                rows_after: 18,
                ..Default::default()
            },
            failures,
        }))
    }

    fn approved() -> Decision {
        Decision::Approved { by: "jane".into(), reason: Some("checked".into()) }
    }

    struct Case {
        decision: Decision,
        status: PromotionStatus,
        dataset: Result<PromotionMode, (&'static str, String)>,
        blocked_by: Option<&'static str>,
        job: Option<JobState>,
        blocker: Option<PodBlocker>,
        recorded: Option<Recorded>,
        lake_error: Option<&'static str>,
        launch_error: Option<&'static str>,
        contract_lost: Option<&'static str>,
        requested_by: Option<&'static str>,
        now: i64,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                decision: Decision::Pending,
                status: PromotionStatus::default(),
                dataset: Ok(PromotionMode::ReplacePartitions),
                blocked_by: None,
                job: None,
                blocker: None,
                recorded: None,
                lake_error: None,
                launch_error: None,
                contract_lost: None,
                requested_by: None,
                now: 0,
            }
        }
    }

    fn run(case: Case) -> Plan {
        let spec = spec();
        let observed = Observed {
            now: at(case.now),
            name: "tx-promo",
            uid: UID,
            generation: Some(1),
            spec: &spec,
            decision: case.decision,
            created_by: Some("alice"),
            requested_by: case.requested_by,
            status: &case.status,
            dataset: case.dataset,
            preview: preview(vec![]),
            blocked_by: case.blocked_by.map(str::to_owned),
            job: case.job,
            blocker: case.blocker,
            recorded: case.recorded,
            lake_error: case.lake_error.map(str::to_owned),
            lake_refused: false,
            contract_hash: Some(CONTRACT_HASH.into()),
            launch_error: case.launch_error.map(str::to_owned),
            contract_lost: case.contract_lost.map(str::to_owned),
        };
        plan(&observed, &settings())
    }

    fn condition<'a>(status: &'a PromotionStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        (c.status.as_str(), c.reason.as_str())
    }

    fn promoting(attempt: u32) -> PromotionStatus {
        let p = run(Case { decision: approved(), ..Case::default() });
        assert_eq!(p.status.attempts, 1);
        PromotionStatus { attempts: attempt, job_name: Some(job_name("tx-promo", attempt)), ..p.status }
    }

    #[test]
    fn without_approval_it_waits_with_the_preview_and_launches_nothing() {
        let p = run(Case::default());
        assert_eq!(p.status.phase, Some(PromotionPhase::AwaitingApproval));
        assert!(p.launch.is_none());
        assert_eq!(p.status.runs[0].valid_rows, Some(8));
        assert_eq!(p.status.change.as_ref().map(|c| (c.files_before, c.files_after)), Some((1, 2)));
        assert_eq!(p.status.previous_version, Some(2));
        assert_eq!(p.status.mode, Some(PromotionMode::ReplacePartitions), "the Dataset's mode");
        assert_eq!(p.status.created_by.as_deref(), Some("alice"));
        assert_eq!(condition(&p.status, CONDITION_APPROVED), ("False", "AwaitingApproval"));
        assert_eq!(condition(&p.status, CONDITION_READY), ("True", "GatePreviewPassed"));
        assert!(matches!(p.transitions.as_slice(), [Transition::AwaitingApproval { .. }]));
        let again = run(Case { status: p.status.clone(), now: 30, ..Case::default() });
        assert_eq!(again.status, p.status, "an unchanged observation writes nothing");
        assert!(again.transitions.is_empty(), "the Event is published once");
    }

    #[test]
    fn a_preview_the_gate_would_refuse_is_a_condition_and_one_warning() {
        let spec = spec();
        let failures = vec![FailedCheck { name: "success_marker".into(), message: "no _SUCCESS".into() }];
        let observe = |status: &PromotionStatus| {
            let observed = Observed {
                now: at(0),
                name: "tx-promo",
                uid: UID,
                generation: Some(1),
                spec: &spec,
                decision: Decision::Pending,
                created_by: None,
                requested_by: None,
                status,
                dataset: Ok(PromotionMode::Append),
                preview: preview(failures.clone()),
                blocked_by: None,
                job: None,
                blocker: None,
                recorded: None,
                lake_error: None,
                lake_refused: false,
                contract_hash: None,
                launch_error: None,
                contract_lost: None,
            };
            plan(&observed, &settings())
        };
        let p = observe(&PromotionStatus::default());
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", "GateWouldRefuse"));
        assert_eq!(p.status.failed_checks[0].name, "success_marker");
        let warned = |plan: &Plan| {
            plan.transitions
                .iter()
                .any(|t| matches!(t, Transition::Waiting { reason, .. } if reason == "GateWouldRefuse"))
        };
        assert!(warned(&p));
        assert!(!warned(&observe(&p.status)), "warned once");
    }

    #[test]
    fn approval_starts_a_promote_job_named_in_status_first() {
        let p = run(Case { decision: approved(), ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::Promoting));
        assert_eq!(p.status.approved_by.as_deref(), Some("jane"));
        assert_eq!(p.status.job_name.as_deref(), Some("tx-promo-p1"));
        let launch = p.launch.expect("launch");
        assert_eq!(launch.job_name, "tx-promo-p1");
        assert_eq!(
            launch.action,
            JobAction::Promote { approved_by: "jane".into(), reason: "January (approved: checked)".into() }
        );
        assert_eq!(condition(&p.status, CONDITION_APPROVED), ("True", "Approved"));
    }

    #[test]
    fn an_approved_promotion_waits_while_another_of_its_dataset_is_promoting() {
        let p = run(Case { decision: approved(), blocked_by: Some("tx-other"), ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::AwaitingApproval));
        assert!(p.launch.is_none());
        let c = p.status.conditions.iter().find(|c| c.type_ == CONDITION_READY).expect("ready");
        assert_eq!((c.reason.as_str(), c.message.contains("tx-other")), ("WaitingForPromotion", true));
        assert_eq!(p.requeue_after, Some(settings().wait_poll));
    }

    #[test]
    fn a_rejection_ends_it_and_records_the_rejection_by_a_job() {
        let rejected = Decision::Rejected { by: "bob".into(), reason: Some("wrong month".into()) };
        let p = run(Case { decision: rejected, ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::Rejected));
        assert_eq!(p.status.rejected_by.as_deref(), Some("bob"));
        let launch = p.launch.expect("a Job records the rejection");
        assert_eq!(launch.job_name, "tx-promo-reject");
        assert!(matches!(launch.action, JobAction::Reject { ref rejected_by, .. } if rejected_by == "bob"));
        assert!(rejection_pending(&p.status));
        let done = run(Case { status: p.status.clone(), job: Some(JobState::Complete), ..Case::default() });
        assert!(!rejection_pending(&done.status));
        assert!(done.launch.is_none());
    }

    #[test]
    fn the_pointer_naming_this_promotion_makes_it_promoted() {
        let p = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Complete),
            recorded: Some(Recorded::Promoted { version: 3, previous_version: Some(2) }),
            ..Case::default()
        });
        assert_eq!(p.status.phase, Some(PromotionPhase::Promoted));
        assert_eq!((p.status.version, p.status.previous_version), (Some(3), Some(2)));
        assert_eq!(condition(&p.status, CONDITION_PROMOTED), ("True", "Promoted"));
        assert!(matches!(p.transitions.as_slice(), [Transition::Finished { phase: PromotionPhase::Promoted, .. }]));

        // The Job died after the pointer write (current/ and the audit record lag): a new Job catches up.
        let crashed = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Failed { exit_code: Some(134), message: "aborted".into() }),
            recorded: Some(Recorded::Promoted { version: 3, previous_version: Some(2) }),
            ..Case::default()
        });
        assert_eq!(crashed.status.phase, Some(PromotionPhase::Promoting));
        assert!(crashed.status.next_attempt_at.is_some());
        let missing = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Missing),
            recorded: Some(Recorded::Promoted { version: 3, previous_version: Some(2) }),
            ..Case::default()
        });
        assert_eq!(missing.launch.map(|l| l.job_name), Some("tx-promo-p1".into()));
    }

    #[test]
    fn the_job_follows_exit_codes_refused_fails_contended_retries_bounded() {
        let refused = Recorded::Refused {
            failed_checks: vec![FailedCheck { name: "run_committed".into(), message: "no _SUCCESS".into() }],
        };
        let failed = |code: i32| Some(JobState::Failed { exit_code: Some(code), message: "m".into() });
        let p = run(Case {
            decision: approved(),
            status: promoting(1),
            job: failed(6),
            recorded: Some(refused),
            ..Case::default()
        });
        assert_eq!(p.status.phase, Some(PromotionPhase::Failed));
        assert_eq!(p.status.failed_checks[0].name, "run_committed");
        assert_eq!(condition(&p.status, CONDITION_PROMOTED), ("False", "GateRefused"));

        let from_message = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Failed {
                exit_code: Some(6),
                message: "the gate refused: quarantine_rate: 0.3 > 0.1; schema_version: v2 is not v1".into(),
            }),
            ..Case::default()
        });
        let names: Vec<&str> = from_message.status.failed_checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["quarantine_rate", "schema_version"]);

        for code in [7, 75, 1] {
            let p = run(Case { decision: approved(), status: promoting(1), job: failed(code), ..Case::default() });
            assert_eq!(p.status.phase, Some(PromotionPhase::Promoting), "exit {code}");
            assert!(p.status.next_attempt_at.is_some());
            assert!(p.launch.is_none());
            let next = run(Case {
                decision: approved(),
                status: p.status.clone(),
                job: failed(code),
                now: 10,
                ..Case::default()
            });
            assert_eq!(next.status.job_name.as_deref(), Some("tx-promo-p2"), "a new Job after the backoff");
            assert!(next.launch.is_some());
        }
        let last = run(Case { decision: approved(), status: promoting(3), job: failed(7), ..Case::default() });
        assert_eq!(last.status.phase, Some(PromotionPhase::Failed));
        assert_eq!(condition(&last.status, CONDITION_PROMOTED), ("False", "AttemptsExhausted"));
        // Every Job died after the pointer write: the version is current, so the Promotion is not Failed.
        let recorded = Some(Recorded::Promoted { version: 4, previous_version: Some(3) });
        let lagging =
            run(Case { decision: approved(), status: promoting(3), job: failed(1), recorded, ..Case::default() });
        assert_eq!(lagging.status.phase, Some(PromotionPhase::Promoted));
        assert_eq!(lagging.status.version, Some(4));
        assert_eq!(condition(&lagging.status, CONDITION_PROMOTED), ("True", "PromotedCatchUpPending"));

        let usage = run(Case { decision: approved(), status: promoting(1), job: failed(2), ..Case::default() });
        assert_eq!(condition(&usage.status, CONDITION_PROMOTED), ("False", "ConfigurationError"));
    }

    #[test]
    fn a_missing_job_is_created_again_and_an_active_one_is_awaited() {
        let p =
            run(Case { decision: approved(), status: promoting(1), job: Some(JobState::Missing), ..Case::default() });
        assert_eq!(p.launch.map(|l| l.job_name), Some("tx-promo-p1".into()));
        let active =
            run(Case { decision: approved(), status: promoting(1), job: Some(JobState::Active), ..Case::default() });
        assert!(active.launch.is_none());
        assert_eq!(active.status, promoting(1));
    }

    #[test]
    fn a_missing_dataset_holds_an_approved_promotion_and_says_so_once() {
        let missing = || Err(("DatasetNotFound", "Dataset tx does not exist in this namespace".to_owned()));
        let p = run(Case { decision: approved(), dataset: missing(), ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::AwaitingApproval));
        assert!(p.launch.is_none());
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", "DatasetNotFound"));
        assert!(matches!(p.transitions.as_slice(), [Transition::Waiting { .. }]));
        let again = run(Case { decision: approved(), dataset: missing(), status: p.status.clone(), ..Case::default() });
        assert!(again.transitions.is_empty());
    }

    const CONTRACT_HASH: &str = "00c0ffee00c0ffee";

    #[test]
    fn the_first_launch_freezes_the_contract_and_later_ones_keep_it() {
        let p = run(Case { decision: approved(), ..Case::default() });
        assert_eq!(p.status.contract_hash.as_deref(), Some(CONTRACT_HASH));
        // A retry (the Dataset's manifest may have changed since): the frozen hash stays.
        let status = PromotionStatus { contract_hash: Some("1111222233334444".into()), ..promoting(1) };
        let again = run(Case { decision: approved(), status, job: Some(JobState::Missing), ..Case::default() });
        assert!(again.launch.is_some());
        assert_eq!(again.status.contract_hash.as_deref(), Some("1111222233334444"));
        // A Promotion launched before the hash was kept gets none later (its ConfigMap is checked by owner only).
        let status = PromotionStatus { contract_hash: None, ..promoting(1) };
        let legacy = run(Case { decision: approved(), status, job: Some(JobState::Missing), ..Case::default() });
        assert_eq!(legacy.status.contract_hash, None);
        // A rejection's Job freezes it too.
        let rejected = Decision::Rejected { by: "bob".into(), reason: None };
        assert_eq!(
            run(Case { decision: rejected, ..Case::default() }).status.contract_hash.as_deref(),
            Some(CONTRACT_HASH)
        );
    }

    #[test]
    fn a_job_that_cannot_be_launched_is_said_once_and_tried_again() {
        let error = "creating Job tx-promo-p1: exceeded quota: jobs (403 Forbidden)";
        let p = run(Case { decision: approved(), launch_error: Some(error), ..Case::default() });
        assert!(p.launch.is_none());
        assert_eq!(p.status.phase, Some(PromotionPhase::Promoting));
        assert_eq!(p.status.job_name.as_deref(), Some("tx-promo-p1"));
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", REASON_LAUNCH_FAILED));
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_READY).expect("Ready").message;
        assert_eq!(message, &format!("the promote Job tx-promo-p1 cannot be launched: {error}"));
        // No "Promoting" Event for a Job that was not created; one Warning, not one per retry.
        assert!(
            matches!(p.transitions.as_slice(), [Transition::Waiting { reason, .. }] if reason == REASON_LAUNCH_FAILED)
        );
        assert_eq!(p.requeue_after, Some(settings().resync));
        let again = run(Case {
            decision: approved(),
            status: p.status.clone(),
            job: Some(JobState::Missing),
            launch_error: Some(error),
            ..Case::default()
        });
        assert!(again.transitions.is_empty() && again.launch.is_none());
        // Launched at last: the Job runs, and Ready says so again.
        let ran =
            run(Case { decision: approved(), status: again.status, job: Some(JobState::Active), ..Case::default() });
        assert_eq!(condition(&ran.status, CONDITION_READY), ("True", "Promoting"));
        // A rejection's Job likewise.
        let rejected = Decision::Rejected { by: "bob".into(), reason: None };
        let r = run(Case { decision: rejected, launch_error: Some(error), ..Case::default() });
        assert_eq!(r.status.phase, Some(PromotionPhase::Rejected));
        assert!(r.launch.is_none());
        assert_eq!(condition(&r.status, CONDITION_READY), ("False", REASON_LAUNCH_FAILED));
        // Its Job launched and done at last: Ready no longer says it cannot be launched.
        let done = run(Case { status: r.status, job: Some(JobState::Complete), ..Case::default() });
        assert_eq!(condition(&done.status, CONDITION_READY), ("False", "Finished"));
        assert!(!rejection_pending(&done.status));
    }

    #[test]
    fn a_pod_that_cannot_start_is_said_until_it_starts() {
        let blocker = PodBlocker::SecretNotFound { name: "lake-creds".into() };
        let p = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Active),
            blocker: Some(blocker.clone()),
            ..Case::default()
        });
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", blocker.reason()));
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_READY).expect("Ready").message;
        assert!(message.contains("Secret lake-creds") && message.contains("the promote Job tx-promo-p1"), "{message}");
        assert_eq!(p.transitions.len(), 1);
        let again = run(Case {
            decision: approved(),
            status: p.status.clone(),
            job: Some(JobState::Active),
            blocker: Some(blocker),
            ..Case::default()
        });
        assert!(again.transitions.is_empty());
        let started =
            run(Case { decision: approved(), status: again.status, job: Some(JobState::Active), ..Case::default() });
        assert_eq!(condition(&started.status, CONDITION_READY), ("True", "Promoting"));
        let refused = PodBlocker::CannotCreate { message: "serviceaccount \"silverline-worker\" not found".into() };
        let p = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Active),
            blocker: Some(refused),
            ..Case::default()
        });
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_READY).expect("Ready").message;
        assert!(message.contains("ServiceAccount silverline-worker does not exist"), "{message}");
    }

    #[test]
    fn a_secret_missing_a_key_is_said_for_each_key_it_misses() {
        let missing = |key: &str| PodBlocker::SecretKeyMissing { name: "lake-creds".into(), key: key.into() };
        let case = |status: PromotionStatus, blocker: PodBlocker| Case {
            decision: approved(),
            status,
            job: Some(JobState::Active),
            blocker: Some(blocker),
            ..Case::default()
        };
        let p = run(case(promoting(1), missing("AWS_ACCESS_KEY_ID")));
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", "CredentialsSecretKeyMissing"));
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_READY).expect("Ready").message;
        assert!(message.contains("no key AWS_ACCESS_KEY_ID") && message.contains("tx-promo-p1"), "{message}");
        assert_eq!(p.transitions.len(), 1);
        let next = run(case(p.status.clone(), missing("AWS_SECRET_ACCESS_KEY")));
        assert!(
            matches!(next.transitions.as_slice(), [Transition::Waiting { message, .. }] if message.contains("no key AWS_SECRET_ACCESS_KEY")),
            "{:?}",
            next.transitions
        );
    }

    #[test]
    fn an_unreadable_lake_or_a_lost_dataset_holds_a_promoting_promotion_without_a_verdict() {
        // The Job completed but the lake cannot be read: not taken for "not recorded".
        let p = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Complete),
            lake_error: Some("lake: reading _LATEST.json: connection refused"),
            ..Case::default()
        });
        assert_eq!(p.status.phase, Some(PromotionPhase::Promoting));
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", REASON_LAKE_UNREADABLE));
        assert_eq!(p.transitions.len(), 1);
        assert!(p.launch.is_none());
        // The Dataset is gone: no launch waits unsaid, no verdict.
        let missing = Err(("DatasetNotFound", "Dataset tx does not exist in this namespace".to_owned()));
        let p = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Missing),
            dataset: missing.clone(),
            ..Case::default()
        });
        assert!(p.launch.is_none());
        assert_eq!(p.status.phase, Some(PromotionPhase::Promoting));
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", "DatasetNotFound"));
        assert_eq!(p.transitions.len(), 1);
        // While its Job runs, the Job is awaited.
        let active = run(Case {
            decision: approved(),
            status: promoting(1),
            job: Some(JobState::Active),
            dataset: missing,
            ..Case::default()
        });
        assert_eq!(active.status, promoting(1));
        // A pending rejection whose Dataset is gone stands, unrecorded, as one decided without a Dataset.
        let rejecting =
            run(Case { decision: Decision::Rejected { by: "bob".into(), reason: None }, ..Case::default() });
        assert!(rejection_pending(&rejecting.status));
        let lost = Err(("DatasetNotFound", "Dataset tx does not exist in this namespace".to_owned()));
        let r = run(Case { status: rejecting.status, job: Some(JobState::Missing), dataset: lost, ..Case::default() });
        assert!(r.launch.is_none());
        assert!(!rejection_pending(&r.status), "no longer waits for a lake it cannot reach");
        assert_eq!(condition(&r.status, CONDITION_PROMOTED), ("False", "Rejected"));
        assert_eq!(condition(&r.status, CONDITION_READY), ("False", "Finished"));
    }

    #[test]
    fn terminal_promotions_are_left_alone() {
        for phase in [PromotionPhase::Promoted, PromotionPhase::Failed] {
            let status = PromotionStatus { phase: Some(phase), ..PromotionStatus::default() };
            let p = run(Case { decision: approved(), status: status.clone(), ..Case::default() });
            assert_eq!((p.status.phase, p.launch, p.transitions.len()), (Some(phase), None, 0));
        }
    }

    #[test]
    fn the_promote_command_names_runs_mode_approver_and_the_promotion() {
        let mut promotion = Promotion::new("tx-promo", spec());
        promotion.metadata.namespace = Some("etl".into());
        let launch = Launch {
            job_name: "tx-promo-p1".into(),
            action: JobAction::Promote { approved_by: "jane".into(), reason: "ok".into() },
            mode: PromotionMode::ReplacePartitions,
        };
        assert_eq!(
            promote_args(&promotion, UID, &launch).join(" "),
            format!(
                "promote --contract /etc/silverline/contract/dataset.yaml --run-id=20240101T000000Z-abc-a1 \
                 --mode replace-partitions --approved-by=jane --reason=ok --promotion etl/tx-promo/{UID}"
            )
        );
        promotion.spec.run_ids = None;
        promotion.spec.restore_version = Some(2);
        let reject = Launch { action: JobAction::Reject { rejected_by: "bob".into(), reason: "no".into() }, ..launch };
        let args = promote_args(&promotion, UID, &reject).join(" ");
        assert!(args.contains("--restore-version 2 --rejected-by=bob --reason=no"), "{args}");
    }

    #[test]
    fn values_that_start_with_a_dash_reach_the_promoter_as_values() {
        let mut promotion = Promotion::new("tx-promo", spec());
        promotion.metadata.namespace = Some("etl".into());
        promotion.spec.run_ids = Some(vec!["-r1".into()]);
        let reason = "-5 % rows quarantined, --accepted";
        let launch = Launch {
            job_name: "tx-promo-p1".into(),
            action: JobAction::Promote { approved_by: "-jane".into(), reason: reason.into() },
            mode: PromotionMode::Append,
        };
        // Each a single `--flag=value` argument (worker/tests/promote.rs runs the worker with such values).
        let args = promote_args(&promotion, UID, &launch);
        for expected in ["--run-id=-r1", "--approved-by=-jane", &format!("--reason={reason}")] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
    }

    #[test]
    fn a_rejection_or_withdrawal_while_promoting_wins_until_something_is_committed() {
        let rejected = || Decision::Rejected { by: "bob".into(), reason: Some("wrong month".into()) };
        let failed = |code: i32| Some(JobState::Failed { exit_code: Some(code), message: "m".into() });
        // No Job ran (a launch failed, or it is not created yet): rejected, recorded by the reject Job.
        let p =
            run(Case { decision: rejected(), status: promoting(1), job: Some(JobState::Missing), ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::Rejected));
        assert_eq!(p.launch.as_ref().map(|l| l.job_name.as_str()), Some("tx-promo-reject"));
        assert!(rejection_pending(&p.status));
        assert!(matches!(p.transitions.as_slice(), [Transition::Finished { phase: PromotionPhase::Rejected, .. }]));
        // In the backoff after a transient failure: no new attempt, rejected.
        let backoff = run(Case { decision: approved(), status: promoting(1), job: failed(75), ..Case::default() });
        assert!(backoff.status.next_attempt_at.is_some());
        let p = run(Case { decision: rejected(), status: backoff.status, job: failed(75), now: 10, ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::Rejected));
        assert_eq!(p.status.next_attempt_at, None);
        assert!(matches!(p.launch.map(|l| l.action), Some(JobAction::Reject { .. })));
        // A Job whose pod never started is deleted; the verdict waits until it is gone.
        let blocker = Some(PodBlocker::SecretNotFound { name: "lake-creds".into() });
        let p = run(Case {
            decision: rejected(),
            status: promoting(1),
            job: Some(JobState::Active),
            blocker,
            ..Case::default()
        });
        assert_eq!(
            (p.status.phase, p.launch, p.delete_job.as_deref()),
            (Some(PromotionPhase::Promoting), None, Some("tx-promo-p1"))
        );
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", REASON_WITHDRAWAL_PENDING));
        assert_eq!(p.transitions.len(), 1);
        // A running Job may be committing: left to finish, nothing launched.
        let p =
            run(Case { decision: rejected(), status: promoting(1), job: Some(JobState::Active), ..Case::default() });
        assert_eq!((p.status.phase, p.launch, p.delete_job), (Some(PromotionPhase::Promoting), None, None));
        assert_eq!(condition(&p.status, CONDITION_READY), ("False", REASON_WITHDRAWAL_PENDING));
        // The pointer names it already: too late, the promotion goes on (a catch-up Job).
        let recorded = Some(Recorded::Promoted { version: 3, previous_version: Some(2) });
        let p = run(Case { decision: rejected(), status: promoting(1), job: failed(1), recorded, ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::Promoting));
        assert!(p.status.next_attempt_at.is_some());
        // The lake cannot be read: nothing decided, nothing launched.
        let p = run(Case {
            decision: rejected(),
            status: promoting(1),
            job: Some(JobState::Missing),
            lake_error: Some("connection refused"),
            ..Case::default()
        });
        assert_eq!((p.status.phase, p.launch), (Some(PromotionPhase::Promoting), None));

        // The approval withdrawn: back to awaiting approval; approved again, the next attempt's Job.
        let p = run(Case { status: promoting(1), job: Some(JobState::Missing), ..Case::default() });
        assert_eq!((p.status.phase, p.launch.is_none()), (Some(PromotionPhase::AwaitingApproval), true));
        assert_eq!(p.status.approved_by, None);
        assert_eq!(condition(&p.status, CONDITION_APPROVED), ("False", REASON_APPROVAL_WITHDRAWN));
        assert!(matches!(p.transitions.as_slice(), [Transition::ApprovalWithdrawn { .. }]));
        let again =
            run(Case { decision: approved(), status: p.status, job: Some(JobState::Missing), ..Case::default() });
        assert_eq!(again.status.phase, Some(PromotionPhase::Promoting));
        assert_eq!(again.launch.map(|l| l.job_name), Some("tx-promo-p2".into()));
    }

    #[test]
    fn an_approval_by_the_creator_is_refused_and_said_once() {
        // Under GitOps the creator is the applier; the person the Promotion names as its requester is not a
        // second pair of eyes either.
        let requester = Decision::Approved { by: "jane".into(), reason: None };
        let by_requester = run(Case { decision: requester, requested_by: Some("jane"), ..Case::default() });
        assert_eq!(condition(&by_requester.status, CONDITION_APPROVED), ("False", REASON_SELF_APPROVAL_REFUSED));
        assert_eq!(by_requester.launch, None);
        let own = || Decision::Approved { by: "alice".into(), reason: None };
        let p = run(Case { decision: own(), ..Case::default() });
        assert_eq!((p.status.phase, p.launch), (Some(PromotionPhase::AwaitingApproval), None));
        assert_eq!(p.status.approved_by, None);
        assert_eq!(condition(&p.status, CONDITION_APPROVED), ("False", REASON_SELF_APPROVAL_REFUSED));
        assert!(p.transitions.iter().any(|t| matches!(t, Transition::SelfApprovalRefused { .. })));
        let again = run(Case { decision: own(), status: p.status.clone(), now: 30, ..Case::default() });
        assert_eq!(again.status, p.status);
        assert!(again.transitions.is_empty(), "said once");
        // Another person approves: it starts.
        let jane = run(Case { decision: approved(), status: p.status, ..Case::default() });
        assert_eq!(jane.launch.map(|l| l.job_name), Some("tx-promo-p1".into()));
        // Turned into the creator's own while promoting: as withdrawn.
        let p = run(Case { decision: own(), status: promoting(1), job: Some(JobState::Missing), ..Case::default() });
        assert_eq!(p.status.phase, Some(PromotionPhase::AwaitingApproval));
    }

    #[test]
    fn a_failed_reject_job_is_retried_when_transient_and_bounded() {
        let rejected = Decision::Rejected { by: "bob".into(), reason: None };
        let pending = run(Case { decision: rejected.clone(), ..Case::default() }).status;
        let failed = |code: Option<i32>| Some(JobState::Failed { exit_code: code, message: "m".into() });
        for code in [Some(75), Some(1), None] {
            let p =
                run(Case { decision: rejected.clone(), status: pending.clone(), job: failed(code), ..Case::default() });
            assert!(rejection_pending(&p.status), "{code:?}");
            assert!(p.status.next_attempt_at.is_some() && p.launch.is_none());
            assert!(matches!(p.transitions.as_slice(), [Transition::RejectRetrying { attempt: 1, .. }]));
            let next = run(Case {
                decision: rejected.clone(),
                status: p.status,
                job: failed(code),
                now: 10,
                ..Case::default()
            });
            assert_eq!(next.launch.map(|l| l.job_name), Some("tx-promo-r2".into()));
            assert_eq!(next.status.job_name.as_deref(), Some("tx-promo-r2"));
        }
        let last = PromotionStatus { job_name: Some(reject_attempt_job_name("tx-promo", 3)), ..pending.clone() };
        let p = run(Case { decision: rejected.clone(), status: last, job: failed(Some(75)), ..Case::default() });
        assert_eq!(condition(&p.status, CONDITION_PROMOTED), ("False", "RejectionNotRecorded"));
        let usage = run(Case { decision: rejected, status: pending, job: failed(Some(2)), ..Case::default() });
        assert_eq!(condition(&usage.status, CONDITION_PROMOTED), ("False", "RejectionNotRecorded"));
        assert_eq!(
            (reject_attempt_of("tx-promo", "tx-promo-reject"), reject_attempt_of("tx-promo", "tx-promo-r4")),
            (1, 4)
        );
    }

    #[test]
    fn a_lost_contract_ends_the_promotion_failed() {
        let lost = "its contract ConfigMap tx-promo-contract is missing and Dataset tx has changed";
        let p = run(Case {
            decision: approved(),
            status: promoting(2),
            job: Some(JobState::Missing),
            contract_lost: Some(lost),
            ..Case::default()
        });
        assert_eq!((p.status.phase, p.launch), (Some(PromotionPhase::Failed), None));
        assert_eq!(condition(&p.status, CONDITION_PROMOTED), ("False", REASON_CONTRACT_LOST));
        assert!(matches!(p.transitions.as_slice(), [Transition::Finished { phase: PromotionPhase::Failed, .. }]));
    }

    #[test]
    fn an_approved_promotion_waiting_for_another_changes_nothing_while_it_waits() {
        let p = run(Case { decision: approved(), blocked_by: Some("tx-other"), ..Case::default() });
        assert_eq!(p.transitions.len(), 1);
        let again = run(Case {
            decision: approved(),
            blocked_by: Some("tx-other"),
            status: p.status.clone(),
            now: 2,
            ..Case::default()
        });
        assert_eq!(again.status, p.status, "nothing to write");
        assert!(again.transitions.is_empty(), "no Event");
    }

    #[test]
    fn derived_names_stay_dns_labels_for_the_longest_names() {
        let longest = "a".repeat(MAX_PROMOTION_NAME);
        for name in [job_name(&longest, 99), reject_job_name(&longest), reject_attempt_job_name(&longest, 99)] {
            assert!(name.len() <= 63, "{name}");
        }
        let run = "a".repeat(silverline_crds::etlrun::MAX_ETLRUN_NAME);
        assert!(requested_name(&run).len() <= MAX_PROMOTION_NAME);
    }
}
