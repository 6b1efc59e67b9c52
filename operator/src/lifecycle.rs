//! The life of an EtlRun as a pure function: from what was observed (status, contract, the current attempt's Job,
//! the lake) to the next status, whether to launch an attempt, when to look again, and what changed.
//!
//! ```text
//! Pending ──launch──▶ Running ──Job complete──▶ Validating ──_SUCCESS──▶ Succeeded
//!    ▲                   │                          │
//!    └──transient, ◀─────┤ Job failed               └──no _SUCCESS in time──▶ (failed attempt)
//!       attempts left    ├──permanent or no attempts left──▶ Failed
//!                        └──exit 5 + _QUALITY_REPORT.json──▶ QualityGateFailed
//! ```

use crate::controllers::{ConditionStatus, ConditionUpdate, set_condition};
use crate::failure::{self, Classified, FailureReason, JobFailure};
use crate::job;
use crate::lake::LakeFinding;
use crate::retry::{self, RetryPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use silverline_crds::report::RunReport;
use silverline_crds::{AttemptOutcome, AttemptStatus, EtlRunPhase, EtlRunStatus, RunResult};
use std::time::Duration;

pub const CONDITION_PROGRESSING: &str = "Progressing";
/// The reason of a launch the apiserver refused (the Job, or its contract snapshot).
pub const REASON_LAUNCH_FAILED: &str = "LaunchFailed";
pub const CONDITION_SUCCEEDED: &str = "Succeeded";
/// Whether the Promotion a succeeded run's contract asks for (`spec.promotion.requestOnSuccess`) exists: `Unknown`
/// (reason [`REASON_REQUEST_PENDING`]) from the status write that says the run succeeded until the operator has
/// created it (a reconcile of the finished run does, so neither a crash after that write nor a refused create
/// loses it), `True` once created (or found), `False` while its create is refused (retried with a backoff).
pub const CONDITION_PROMOTION_REQUESTED: &str = "PromotionRequested";
pub const REASON_REQUEST_PENDING: &str = "Pending";

/// What the contract of the run says, once it is known.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractFacts {
    pub max_attempts: u32,
    /// The contract asks for a Promotion of each run that succeeds (`spec.promotion.requestOnSuccess`).
    pub request_promotion: bool,
}

/// Why the run cannot start (or go on) yet. Each waits for a change of the Dataset (or of the operator's grants).
#[derive(Debug, Clone, PartialEq)]
pub enum ContractProblem {
    DatasetNotFound {
        name: String,
    },
    InvalidDataset {
        name: String,
        message: String,
    },
    /// The contract's lake or endpoint is not one the operator allows in the run's namespace.
    LakeNotAllowed {
        name: String,
        message: String,
    },
    /// The run's input is not one the operator allows in its namespace (`--allowed-inputs`).
    InputNotAllowed {
        message: String,
    },
}

impl ContractProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            ContractProblem::DatasetNotFound { .. } => "DatasetNotFound",
            ContractProblem::InvalidDataset { .. } => "InvalidDataset",
            ContractProblem::LakeNotAllowed { .. } => "LakeNotAllowed",
            ContractProblem::InputNotAllowed { .. } => "InputNotAllowed",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ContractProblem::DatasetNotFound { name } => format!("Dataset {name} does not exist in this namespace"),
            ContractProblem::InvalidDataset { name, message } => format!("Dataset {name} is not valid: {message}"),
            ContractProblem::LakeNotAllowed { name, message } => format!("Dataset {name}: {message}"),
            ContractProblem::InputNotAllowed { message } => message.clone(),
        }
    }
}

pub const REASON_LAKE_UNREADABLE: &str = "LakeUnreadable";
pub const REASON_SECRET_NOT_FOUND: &str = "CredentialsSecretNotFound";
pub const REASON_SECRET_KEY_MISSING: &str = "CredentialsSecretKeyMissing";
pub const REASON_CONTAINER_CONFIG: &str = "ContainerConfigError";
pub const REASON_SNAPSHOT_REFUSED: &str = "ContractSnapshotRefused";

/// Why the attempt's pod cannot start, as its kubelet says.
#[derive(Debug, Clone, PartialEq)]
pub enum PodBlocker {
    /// The Dataset's `storage.credentialsSecret` does not exist (`CreateContainerConfigError`).
    SecretNotFound { name: String },
    /// The credentials Secret exists but lacks a key the worker needs (`CreateContainerConfigError`).
    SecretKeyMissing { name: String, key: String },
    /// Another `CreateContainerConfigError`.
    ContainerConfig { message: String },
    /// No pod of the Job exists and the Job controller reports `FailedCreate` with this message.
    CannotCreate { message: String },
    /// The attempt's contract snapshot (`configmap`, a volume of its pod) is missing and the apiserver refuses to
    /// create it (`message`: what it answered, e.g. a quota or an admission policy), so the pod cannot start.
    SnapshotRefused { configmap: String, message: String },
}

/// The object a `FailedCreate` message says is missing, e.g. `serviceaccount "x" not found` → `ServiceAccount x`.
pub fn missing_object(message: &str) -> Option<String> {
    let end = message.find("\" not found")?;
    let start = message[..end].rfind('"')?;
    let name = &message[start + 1..end];
    let kind = message[..start].trim_end().rsplit([' ', ':']).next()?;
    let kind = match kind {
        "serviceaccount" => "ServiceAccount".to_owned(),
        "secret" => "Secret".to_owned(),
        "configmap" => "ConfigMap".to_owned(),
        "persistentvolumeclaim" => "PersistentVolumeClaim".to_owned(),
        other => other.to_owned(),
    };
    Some(format!("{kind} {name}"))
}

impl PodBlocker {
    pub fn reason(&self) -> &'static str {
        match self {
            PodBlocker::SecretNotFound { .. } => REASON_SECRET_NOT_FOUND,
            PodBlocker::SecretKeyMissing { .. } => REASON_SECRET_KEY_MISSING,
            PodBlocker::ContainerConfig { .. } => REASON_CONTAINER_CONFIG,
            PodBlocker::CannotCreate { .. } => FailureReason::PodCreationFailed.as_str(),
            PodBlocker::SnapshotRefused { .. } => REASON_SNAPSHOT_REFUSED,
        }
    }

    /// Whether the operator stops waiting after `pod_create_timeout`: nothing in the pod's spec is wrong, the
    /// cluster refuses what the pod needs (a Secret or a config the user fixes are waited for, as the kubelet does).
    fn gives_up(&self) -> bool {
        matches!(self, PodBlocker::CannotCreate { .. } | PodBlocker::SnapshotRefused { .. })
    }

    pub fn message(&self, attempt: &AttemptStatus) -> String {
        self.message_for(&format!("attempt {} (Job {})", attempt.attempt, attempt.job_name))
    }

    /// What keeps the pod of `what` (e.g. "attempt 2 (Job tx-a2)", "the promote Job p-promote-1") from starting.
    pub fn message_for(&self, what: &str) -> String {
        match self {
            PodBlocker::SecretNotFound { name } => format!(
                "Secret {name} (the Dataset's storage.credentialsSecret) does not exist in this namespace: the pod \
                 of {what} cannot start until it is created"
            ),
            PodBlocker::SecretKeyMissing { name, key } => format!(
                "Secret {name} (the Dataset's storage.credentialsSecret) has no key {key}: the pod of {what} cannot \
                 start until it is added (workers take AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from it, and \
                 AWS_SESSION_TOKEN if it holds one)"
            ),
            PodBlocker::ContainerConfig { message } => format!("the pod of {what} cannot start: {message}"),
            PodBlocker::CannotCreate { message } => {
                let missing = missing_object(message).map_or_else(String::new, |o| format!("{o} does not exist: "));
                format!("no pod of {what} can be created: {missing}{message}")
            }
            PodBlocker::SnapshotRefused { configmap, message } => format!(
                "the pod of {what} cannot start: its contract snapshot ConfigMap {configmap} is missing and cannot \
                 be created: {message}"
            ),
        }
    }
}

/// The current attempt's Job, as read from the API.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// No Job of that name: not created yet, or deleted (TTL, a person, the garbage collector).
    Missing,
    Active,
    Complete {
        finished_at: Option<Timestamp>,
    },
    Failed {
        failure: JobFailure,
        finished_at: Option<Timestamp>,
    },
}

/// Tunables of the lifecycle, from the operator's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSettings {
    pub retry: RetryPolicy,
    /// How long after a Job finished the operator keeps looking for its `_SUCCESS` (or quality report) before
    /// it counts the attempt as failed: object stores may show a new object late.
    pub lake_grace: Duration,
    /// How often it looks in that time.
    pub lake_check_interval: Duration,
    /// How often a run that is waiting on something else is looked at anyway.
    pub resync: Duration,
    /// How long an attempt may go without any pod being created before it fails (`PodCreationFailed`).
    pub pod_create_timeout: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            retry: RetryPolicy::default(),
            lake_grace: Duration::from_secs(30),
            lake_check_interval: Duration::from_secs(3),
            resync: Duration::from_secs(300),
            pod_create_timeout: Duration::from_secs(120),
        }
    }
}

/// How often a Job whose pods cannot be created is looked at, to keep the bound of `pod_create_timeout`.
const NO_POD_RECHECK: Duration = Duration::from_secs(5);
/// How often a Job without any pod yet (and no `FailedCreate` seen) is looked at. The watch of the Job
/// controller's `FailedCreate` Events wakes its run at once, so this only covers an Event the watch missed; a
/// short interval here would wake every new run again and again while a busy Job controller creates pods (a
/// burst of 1,000 runs took ~8 extra reconciles per run at 5 s).
const NO_POD_SAFETY_NET: Duration = Duration::from_secs(60);

/// Everything one decision needs.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub now: Timestamp,
    pub name: &'a str,
    pub uid: &'a str,
    pub generation: Option<i64>,
    pub status: &'a EtlRunStatus,
    pub contract: Result<ContractFacts, ContractProblem>,
    /// The Job of the attempt in flight; `None` when no attempt is in flight.
    pub job: Option<JobState>,
    /// The lake's markers for the attempt in flight, read when its Job is not active.
    pub lake: Option<LakeFinding>,
    /// How often the lake has been read for the attempt in flight, this read included. Not written to status
    /// while the operator keeps looking (see `await_marker`).
    pub lake_checks: u32,
    /// Why the active Job's pod cannot start, if it cannot.
    pub blocker: Option<PodBlocker>,
    /// Whether the active Job has a pod (`None` when not looked at).
    pub job_has_pod: Option<bool>,
    /// Why the lake could not be read, when it was to be read (its URI, the key, what the store answered).
    pub lake_error: Option<String>,
    /// The run id of the next attempt's Job, found already created when no attempt is in flight: a launch whose
    /// status write did not land (a conflict, a restart). The attempt is recorded under that run id.
    pub launched: Option<String>,
    /// When that Job was created: the attempt's start.
    pub launched_at: Option<Timestamp>,
    /// Why the Job the previous plan launched could not be created (what the apiserver answered); the plan then
    /// says so instead of recording the attempt.
    pub launch_error: Option<String>,
}

/// A change worth an Event, a log line and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    AttemptStarted { attempt: AttemptStatus, max_attempts: u32 },
    AttemptEnded { attempt: AttemptStatus, retry_after: Option<Duration> },
    Finished { phase: EtlRunPhase, reason: String, message: String, result: Option<RunResult>, seconds: Option<f64> },
    Waiting { reason: String, message: String },
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: EtlRunStatus,
    /// Make sure this attempt's Job exists, before the status naming it is written: the Job's name is the
    /// attempt's, so a Job created by a launch whose status write did not land is found and adopted (`launched`).
    pub launch: Option<AttemptStatus>,
    /// When to look again; `None` waits for a change.
    pub requeue_after: Option<Duration>,
    pub transitions: Vec<Transition>,
    /// Delete this Job (after the status is written): an attempt given up while its Job still waits for a pod.
    pub delete_job: Option<String>,
}

struct Builder<'a> {
    observed: &'a Observed<'a>,
    settings: &'a LifecycleSettings,
    status: EtlRunStatus,
    launch: Option<AttemptStatus>,
    requeue_after: Option<Duration>,
    transitions: Vec<Transition>,
    delete_job: Option<String>,
}

/// The longest the status write recording a new run's launch (the status naming its Job) waits for a burst of
/// launches to pass.
pub const LAUNCH_RECORD_MAX_DELAY: Duration = Duration::from_secs(5);

/// Whether this plan's status write may wait while launches come in a burst (`Config::burst_launches_per_second`):
/// only a plan that records nothing but a run's first launch, whose Job was created less than
/// [`LAUNCH_RECORD_MAX_DELAY`] before `observed.now` (a Job this reconcile creates: now). Anything else — a retry,
/// a refused launch, a wait, a finish, a Job to delete — is written at once.
pub fn may_defer_launch_record(plan: &Plan, observed: &Observed) -> bool {
    let job_age = observed.launched_at.map_or(Duration::ZERO, |at| until(at, observed.now));
    job_age < LAUNCH_RECORD_MAX_DELAY
        && plan.delete_job.is_none()
        && matches!(plan.transitions.as_slice(), [Transition::AttemptStarted { attempt, .. }] if attempt.attempt == 1)
}

/// Decides what comes next for one EtlRun.
pub fn plan(observed: &Observed, settings: &LifecycleSettings) -> Plan {
    let mut b = Builder {
        observed,
        settings,
        status: observed.status.clone(),
        launch: None,
        requeue_after: Some(settings.resync),
        transitions: Vec::new(),
        delete_job: None,
    };
    if observed.status.phase.is_some_and(EtlRunPhase::is_terminal) {
        return Plan { status: b.status, launch: None, requeue_after: None, transitions: Vec::new(), delete_job: None };
    }
    b.status.observed_generation = observed.generation;
    match &observed.contract {
        Err(problem) => b.wait(problem.reason(), problem.message()),
        Ok(facts) => match current_attempt(&b.status) {
            None => b.next_attempt(facts),
            Some(index) => b.follow_attempt(index, facts),
        },
    }
    Plan {
        status: b.status,
        launch: b.launch,
        requeue_after: b.requeue_after,
        transitions: b.transitions,
        delete_job: b.delete_job,
    }
}

/// The reason of the run's `Progressing` condition, if it has one.
fn progressing_reason(status: &EtlRunStatus) -> Option<&str> {
    progressing(status).map(|(reason, _)| reason)
}

/// The reason and message of the run's `Progressing` condition.
fn progressing(status: &EtlRunStatus) -> Option<(&str, &str)> {
    status.conditions.iter().find(|c| c.type_ == CONDITION_PROGRESSING).map(|c| (c.reason.as_str(), c.message.as_str()))
}

/// The attempt in flight: the last one, if it has not ended.
pub fn current_attempt(status: &EtlRunStatus) -> Option<usize> {
    let last = status.attempts.len().checked_sub(1)?;
    status.attempts[last].outcome.is_none().then_some(last)
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn until(now: Timestamp, later: Timestamp) -> Duration {
    let gap = later.duration_since(now);
    if gap.is_negative() { Duration::ZERO } else { gap.unsigned_abs() }
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

impl Builder<'_> {
    fn now(&self) -> Timestamp {
        self.observed.now
    }

    /// Sets the phase and the two conditions that describe it.
    fn set_phase(&mut self, phase: EtlRunPhase, reason: &str, message: &str) {
        self.status.phase = Some(phase);
        let (progressing, succeeded, succeeded_reason) = match phase {
            EtlRunPhase::Pending | EtlRunPhase::Running | EtlRunPhase::Validating => {
                (ConditionStatus::True, ConditionStatus::Unknown, "InProgress")
            }
            EtlRunPhase::Succeeded => (ConditionStatus::False, ConditionStatus::True, reason),
            EtlRunPhase::Failed | EtlRunPhase::QualityGateFailed => {
                (ConditionStatus::False, ConditionStatus::False, reason)
            }
        };
        let progress_reason = if phase.is_terminal() { "Finished" } else { reason };
        let succeeded_message = if phase.is_terminal() { message } else { "the run has not finished" };
        self.set_condition(CONDITION_PROGRESSING, progressing, progress_reason, message);
        self.set_condition(CONDITION_SUCCEEDED, succeeded, succeeded_reason, succeeded_message);
    }

    fn set_condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: &str) {
        let update = ConditionUpdate { type_, status, reason, message };
        let (generation, now) = (self.observed.generation, self.now());
        set_condition(&mut self.status.conditions, update, generation, now);
    }

    fn wait(&mut self, reason: &str, message: String) {
        let changed = progressing_reason(self.observed.status) != Some(reason);
        if current_attempt(&self.status).is_none() {
            self.set_phase(EtlRunPhase::Pending, reason, &message);
        } else {
            // An attempt is in flight: its phase stands, the condition says why the operator cannot follow it.
            self.set_condition(CONDITION_PROGRESSING, ConditionStatus::True, reason, &message);
        }
        if changed {
            self.transitions.push(Transition::Waiting { reason: reason.to_owned(), message });
        }
        self.requeue_after = Some(self.settings.resync);
    }

    fn next_attempt(&mut self, facts: &ContractFacts) {
        let number = self.status.attempts.len() as u32 + 1;
        if let Some(run_id) = self.observed.launched.clone() {
            // Its Job exists: the attempt was launched, only its status is missing.
            let started = self.observed.launched_at.unwrap_or(self.now());
            return self.record_attempt(number, run_id, started, facts, false);
        }
        if number > facts.max_attempts {
            let message = format!("all {} attempts have ended without success", facts.max_attempts);
            return self.finish(EtlRunPhase::Failed, "AttemptsExhausted", message, None);
        }
        if let Some(at) = self.status.next_attempt_at.as_ref().map(|t| t.0)
            && at > self.now()
        {
            let message = format!("attempt {number} of {} starts at {at}", facts.max_attempts);
            self.set_phase(EtlRunPhase::Pending, "BackingOff", &message);
            self.requeue_after = Some(until(self.now(), at).max(Duration::from_millis(100)));
            return;
        }
        if let Some(error) = &self.observed.launch_error {
            let message = format!("attempt {number} of {} cannot be launched: {error}", facts.max_attempts);
            return self.wait(REASON_LAUNCH_FAILED, message);
        }
        let run_id = job::run_id(self.now(), self.observed.uid, number);
        self.record_attempt(number, run_id, self.now(), facts, true);
    }

    /// Records attempt `number` under `run_id` as running since `started`, and launches its Job unless it exists.
    fn record_attempt(&mut self, number: u32, run_id: String, started: Timestamp, facts: &ContractFacts, launch: bool) {
        let attempt = AttemptStatus {
            attempt: number,
            run_id: run_id.clone(),
            job_name: job::job_name(self.observed.name, number),
            started_at: Some(time(started)),
            finished_at: None,
            outcome: None,
            exit_code: None,
            reason: None,
            message: None,
            retryable: None,
            lake_checks: 0,
        };
        let message =
            format!("attempt {number} of {} runs as Job {} with run id {run_id}", facts.max_attempts, attempt.job_name);
        self.status.attempts.push(attempt.clone());
        self.status.run_id = Some(run_id);
        self.status.next_attempt_at = None;
        if self.status.started_at.is_none() {
            self.status.started_at = Some(time(started));
        }
        self.set_phase(EtlRunPhase::Running, "AttemptRunning", &message);
        self.transitions
            .push(Transition::AttemptStarted { attempt: attempt.clone(), max_attempts: facts.max_attempts });
        self.launch = launch.then_some(attempt);
    }

    fn follow_attempt(&mut self, index: usize, facts: &ContractFacts) {
        let attempt = self.status.attempts[index].clone();
        let lake = self.observed.lake.clone().unwrap_or(LakeFinding::Nothing);
        // `_SUCCESS` is the commit of a run: whatever the Job says, a committed run succeeded.
        if let (LakeFinding::Success { report, uri }, false) = (&lake, self.observed.job == Some(JobState::Active)) {
            return self.succeed(index, report, uri);
        }
        match self.observed.job.clone().unwrap_or(JobState::Missing) {
            JobState::Active => match self.observed.blocker.clone() {
                Some(blocker) if blocker.gives_up() => {
                    let (reason, message) = (blocker.reason(), blocker.message(&attempt));
                    let since = attempt.started_at.as_ref().map_or(self.now(), |t| t.0);
                    let give_up = after(since, self.settings.pod_create_timeout);
                    if self.now() >= give_up {
                        let message =
                            format!("{message} (for {}s, the bound)", self.settings.pod_create_timeout.as_secs());
                        self.delete_job = Some(attempt.job_name.clone());
                        let classified =
                            Classified { reason: FailureReason::PodCreationFailed, exit_code: None, message };
                        return self.end_attempt(index, facts, classified);
                    }
                    self.set_phase(EtlRunPhase::Running, reason, &message);
                    if progressing_reason(self.observed.status) != Some(reason) {
                        self.transitions.push(Transition::Waiting { reason: reason.to_owned(), message });
                    }
                    self.requeue_after =
                        Some(NO_POD_RECHECK.min(until(self.now(), give_up)).max(Duration::from_millis(100)));
                }
                Some(blocker) => {
                    // Said again when the message changes too: the kubelet names one missing key at a time, so a
                    // Secret lacking two keys moves from one to the other under the same reason.
                    let (reason, message) = (blocker.reason(), blocker.message(&attempt));
                    let said = progressing(self.observed.status) == Some((reason, message.as_str()));
                    self.set_phase(EtlRunPhase::Running, reason, &message);
                    if !said {
                        self.transitions.push(Transition::Waiting { reason: reason.to_owned(), message });
                    }
                }
                None => {
                    let message = format!(
                        "attempt {} of {} runs as Job {} with run id {}",
                        attempt.attempt, facts.max_attempts, attempt.job_name, attempt.run_id
                    );
                    self.set_phase(EtlRunPhase::Running, "AttemptRunning", &message);
                    if self.observed.job_has_pod == Some(false) {
                        self.requeue_after = Some(NO_POD_SAFETY_NET);
                    }
                }
            },
            JobState::Missing if self.observed.lake_error.is_some() => {
                // The lake alone can tell what became of a vanished Job: say why it cannot, and look again.
                let error = self.observed.lake_error.clone().unwrap_or_default();
                let message = format!("Job {} is gone and the lake cannot be read: {error}", attempt.job_name);
                self.say_lake_unreadable(message);
                self.requeue_after = Some(self.settings.lake_check_interval);
            }
            JobState::Missing => match lake {
                LakeFinding::QualityReport { report, uri } => self.quality_gate_failed(index, &report, &uri),
                LakeFinding::CircuitBreaker { uri } => {
                    let (reason, meaning) = failure::exit_code_meaning(4);
                    let message = format!("the Job is gone; the lake holds {uri}: {meaning}");
                    self.end_attempt(index, facts, Classified { reason, exit_code: None, message });
                }
                LakeFinding::Claimed => {
                    let message = format!(
                        "Job {} disappeared after the worker claimed run id {}, and the lake holds no report",
                        attempt.job_name, attempt.run_id
                    );
                    self.end_attempt(
                        index,
                        facts,
                        Classified { reason: FailureReason::JobLost, exit_code: None, message },
                    );
                }
                LakeFinding::Nothing | LakeFinding::Success { .. } => {
                    // An attempt is recorded only once its Job exists (the Job first, the status after): gone
                    // without a trace in the lake, it was deleted before its worker wrote anything — by a person,
                    // or by its TTL before the operator saw how it ended. A failed attempt, so that a worker that
                    // fails at once under a short TTL is retried a bounded number of times, not relaunched forever.
                    let message = format!(
                        "Job {} disappeared and the lake holds nothing for run id {}: deleted before its worker \
                         wrote anything (by a person, or by its TTL before the operator saw it end)",
                        attempt.job_name, attempt.run_id
                    );
                    self.end_attempt(
                        index,
                        facts,
                        Classified { reason: FailureReason::JobLost, exit_code: None, message },
                    );
                }
            },
            JobState::Complete { finished_at } if self.observed.lake_error.is_some() => {
                self.await_readable_lake(index, facts, finished_at, Some(0));
            }
            JobState::Complete { finished_at } => match lake {
                LakeFinding::QualityReport { report, uri } => self.quality_gate_failed(index, &report, &uri),
                _ => self.await_marker(index, facts, finished_at, FailureReason::SuccessMarkerMissing, Some(0)),
            },
            JobState::Failed { failure, finished_at } => {
                let classified = failure::classify(&failure);
                if classified.reason != FailureReason::QualityGate {
                    return self.end_attempt(index, facts, classified);
                }
                match lake {
                    LakeFinding::QualityReport { report, uri } => self.quality_gate_failed(index, &report, &uri),
                    _ if self.observed.lake_error.is_some() => {
                        self.await_readable_lake(index, facts, finished_at, Some(5));
                    }
                    _ => self.await_marker(index, facts, finished_at, FailureReason::QualityReportMissing, Some(5)),
                }
            }
        }
    }

    /// The Job finished but its report is not in the lake yet: look again until the grace period is over.
    fn await_marker(
        &mut self,
        index: usize,
        facts: &ContractFacts,
        finished_at: Option<Timestamp>,
        missing: FailureReason,
        exit_code: Option<i32>,
    ) {
        let attempt = &self.status.attempts[index];
        let run_id = attempt.run_id.clone();
        let since = finished_at.or(attempt.started_at.as_ref().map(|t| t.0)).unwrap_or(self.observed.now);
        let deadline = after(since, self.settings.lake_grace);
        let marker = if missing == FailureReason::SuccessMarkerMissing { "_SUCCESS" } else { "_QUALITY_REPORT.json" };
        if self.now() < deadline {
            // The status says nothing that changes per check: a write would wake the controller again at once.
            let message = format!("the Job finished; looking for run {run_id}'s {marker} in the lake until {deadline}");
            self.set_phase(EtlRunPhase::Validating, "AwaitingReport", &message);
            self.requeue_after = Some(self.settings.lake_check_interval.min(until(self.now(), deadline)));
            return;
        }
        let attempt = &mut self.status.attempts[index];
        attempt.lake_checks = attempt.lake_checks.max(self.observed.lake_checks);
        let checks = attempt.lake_checks;
        let message = format!(
            "the Job finished (exit code {}) but run {run_id}'s {marker} is not in the lake after {checks} checks over {}s",
            exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
            self.settings.lake_grace.as_secs()
        );
        self.end_attempt(index, facts, Classified { reason: missing, exit_code, message });
    }

    /// Says once that the lake cannot be read: the first error's message stands while it lasts, so that a check
    /// writes nothing (a write per check would wake the controller at once).
    fn say_lake_unreadable(&mut self, message: String) {
        if progressing_reason(self.observed.status) == Some(REASON_LAKE_UNREADABLE) {
            return;
        }
        let phase = self.status.phase.unwrap_or(EtlRunPhase::Validating);
        self.set_phase(phase, REASON_LAKE_UNREADABLE, &message);
        self.transitions.push(Transition::Waiting { reason: REASON_LAKE_UNREADABLE.to_owned(), message });
    }

    /// The Job finished but the lake cannot be read: keep looking at the check interval for the lake grace
    /// period, then end the attempt as one whose report is missing (retried, as a missing `_SUCCESS` is).
    fn await_readable_lake(
        &mut self,
        index: usize,
        facts: &ContractFacts,
        finished_at: Option<Timestamp>,
        exit_code: Option<i32>,
    ) {
        let error = self.observed.lake_error.clone().unwrap_or_default();
        let attempt = &self.status.attempts[index];
        let run_id = attempt.run_id.clone();
        let since = finished_at.or(attempt.started_at.as_ref().map(|t| t.0)).unwrap_or(self.observed.now);
        let deadline = after(since, self.settings.lake_grace);
        let (missing, marker) = if exit_code == Some(5) {
            (FailureReason::QualityReportMissing, "_QUALITY_REPORT.json")
        } else {
            (FailureReason::SuccessMarkerMissing, "_SUCCESS")
        };
        if self.now() < deadline {
            self.status.phase = Some(EtlRunPhase::Validating);
            let message = format!(
                "the Job finished but run {run_id}'s {marker} cannot be read from the lake: {error}; looking again until {deadline}"
            );
            self.say_lake_unreadable(message);
            self.requeue_after = Some(self.settings.lake_check_interval.min(until(self.now(), deadline)));
            return;
        }
        let attempt = &mut self.status.attempts[index];
        attempt.lake_checks = attempt.lake_checks.max(self.observed.lake_checks);
        let message = format!(
            "the Job finished (exit code {}) but run {run_id}'s {marker} could not be read from the lake in {} checks over {}s: {error}",
            exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
            attempt.lake_checks,
            self.settings.lake_grace.as_secs()
        );
        self.end_attempt(index, facts, Classified { reason: missing, exit_code, message });
    }

    fn close_attempt(
        &mut self,
        index: usize,
        outcome: AttemptOutcome,
        exit_code: Option<i32>,
        reason: &str,
        message: &str,
    ) {
        let now = self.now();
        let attempt = &mut self.status.attempts[index];
        attempt.outcome = Some(outcome);
        attempt.finished_at = Some(time(now));
        attempt.exit_code = exit_code.or(attempt.exit_code);
        attempt.reason = Some(reason.to_owned());
        attempt.message = Some(message.to_owned());
    }

    fn end_attempt(&mut self, index: usize, facts: &ContractFacts, failure: Classified) {
        let retryable = failure.reason.is_retryable();
        self.close_attempt(index, AttemptOutcome::Failed, failure.exit_code, failure.reason.as_str(), &failure.message);
        self.status.attempts[index].retryable = Some(retryable);
        let attempt = self.status.attempts[index].clone();
        if retryable && attempt.attempt < facts.max_attempts {
            let delay = self.settings.retry.delay(attempt.attempt, retry::jitter(self.observed.uid, attempt.attempt));
            let at = after(self.now(), delay);
            self.status.next_attempt_at = Some(time(at));
            let message = format!(
                "attempt {} of {} failed ({}: {}); attempt {} starts at {at}",
                attempt.attempt,
                facts.max_attempts,
                failure.reason,
                failure.message,
                attempt.attempt + 1
            );
            self.set_phase(EtlRunPhase::Pending, "BackingOff", &message);
            self.requeue_after = Some(delay.max(Duration::from_millis(100)));
            self.transitions.push(Transition::AttemptEnded { attempt, retry_after: Some(delay) });
            return;
        }
        let why = if retryable {
            format!("attempt {} of {} failed, none left", attempt.attempt, facts.max_attempts)
        } else {
            format!("attempt {} failed permanently", attempt.attempt)
        };
        let message = format!("{why}: {}", failure.message);
        self.transitions.push(Transition::AttemptEnded { attempt, retry_after: None });
        self.finish(EtlRunPhase::Failed, failure.reason.as_str(), message, None);
    }

    fn succeed(&mut self, index: usize, report: &RunReport, uri: &str) {
        let result = RunResult::from_report(report, uri);
        let message = format!(
            "{} rows: {} valid, {} quarantined, {} condemned; {uri}",
            report.input_rows, report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count
        );
        self.close_attempt(index, AttemptOutcome::Succeeded, Some(0), "SuccessVerified", &message);
        let attempt = self.status.attempts[index].clone();
        self.transitions.push(Transition::AttemptEnded { attempt, retry_after: None });
        self.finish(EtlRunPhase::Succeeded, "SuccessVerified", message, Some(result));
        if self.observed.contract.as_ref().is_ok_and(|facts| facts.request_promotion) {
            let run_id = self.status.attempts[index].run_id.clone();
            let message = format!("the Promotion of run {run_id} is to be created");
            self.set_condition(
                CONDITION_PROMOTION_REQUESTED,
                ConditionStatus::Unknown,
                REASON_REQUEST_PENDING,
                &message,
            );
        }
    }

    fn quality_gate_failed(&mut self, index: usize, report: &RunReport, uri: &str) {
        let result = RunResult::from_report(report, uri);
        let message = format!(
            "quarantine rate {:.4} is above the contract's maximum: {} of {} rows quarantined; data and quarantine \
             kept for review, report at {uri}",
            report.quarantine_rate, report.quarantined_rows_count, report.input_rows
        );
        self.close_attempt(
            index,
            AttemptOutcome::QualityGateFailed,
            Some(5),
            FailureReason::QualityGate.as_str(),
            &message,
        );
        self.status.attempts[index].retryable = Some(false);
        let attempt = self.status.attempts[index].clone();
        self.transitions.push(Transition::AttemptEnded { attempt, retry_after: None });
        self.finish(EtlRunPhase::QualityGateFailed, FailureReason::QualityGate.as_str(), message, Some(result));
    }

    fn finish(&mut self, phase: EtlRunPhase, reason: &str, message: String, result: Option<RunResult>) {
        let now = self.now();
        self.status.finished_at = Some(time(now));
        self.status.next_attempt_at = None;
        self.status.result = result.clone();
        self.set_phase(phase, reason, &message);
        let seconds = self.status.started_at.as_ref().map(|s| now.duration_since(s.0).as_secs_f64().max(0.0));
        self.transitions.push(Transition::Finished { phase, reason: reason.to_owned(), message, result, seconds });
        self.requeue_after = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::PodEnd;

    const UID: &str = "0f3a9c12-0000-0000-0000-000000000000";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid")
    }

    fn settings() -> LifecycleSettings {
        LifecycleSettings {
            retry: RetryPolicy { jitter_ratio: 0.0, ..RetryPolicy::default() },
            lake_grace: Duration::from_secs(10),
            lake_check_interval: Duration::from_secs(2),
            resync: Duration::from_secs(300),
            pod_create_timeout: Duration::from_secs(60),
        }
    }

    fn observe<'a>(
        status: &'a EtlRunStatus,
        now: i64,
        job: Option<JobState>,
        lake: Option<LakeFinding>,
    ) -> Observed<'a> {
        Observed {
            now: at(now),
            name: "tx",
            uid: UID,
            generation: Some(1),
            status,
            contract: Ok(ContractFacts { max_attempts: 3, request_promotion: false }),
            job,
            lake,
            lake_checks: 1,
            blocker: None,
            job_has_pod: None,
            lake_error: None,
            launched: None,
            launched_at: None,
            launch_error: None,
        }
    }

    fn report(run_id: &str, quarantined: u64) -> Box<RunReport> {
        let text = serde_json::json!({
            "outcome": "success", "run_id": run_id, "dataset": "tx", "schema_v": "v1", "lake_uri": "file:///l",
            "input_uri": "/in.csv", "input_checksum": "00", "inputs": [], "worker_version": "0.1.0", "git_sha": "x",
            "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:01Z", "duration_seconds": 1.0,
            "input_rows": 100, "valid_rows_count": 100 - quarantined - 1, "quarantined_rows_count": quarantined,
            "condemned_rows_count": 1, "quarantine_rate": quarantined as f64 / 100.0,
            "error_type_distribution": {}, "condemned_reason_distribution": {}, "avg_attempt_count": 1.0,
            "duplicate_detection_rate": 0.01, "auto_condemnation_rate": 0.0, "files": []
        });
        Box::new(serde_json::from_value(text).expect("report"))
    }

    fn failed_with(code: i32) -> JobState {
        JobState::Failed {
            failure: JobFailure {
                job_reason: Some("BackoffLimitExceeded".into()),
                job_message: None,
                pod: Some(PodEnd {
                    exit_code: Some(code),
                    container_reason: Some("Error".into()),
                    ..PodEnd::default()
                }),
            },
            finished_at: Some(at(20)),
        }
    }

    /// Starts attempt 1 at t=0 and returns the status.
    fn started() -> EtlRunStatus {
        let empty = EtlRunStatus::default();
        plan(&observe(&empty, 0, None, None), &settings()).status
    }

    fn condition<'a>(status: &'a EtlRunStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_new_run_launches_attempt_one_with_a_run_id_and_a_job_name() {
        let empty = EtlRunStatus::default();
        let p = plan(&observe(&empty, 0, None, None), &settings());
        let launched = p.launch.expect("launch");
        assert_eq!((launched.attempt, launched.job_name.as_str()), (1, "tx-a1"));
        assert_eq!(launched.run_id, job::run_id(at(0), UID, 1));
        assert_eq!(p.status.phase, Some(EtlRunPhase::Running));
        assert_eq!(p.status.run_id.as_deref(), Some(launched.run_id.as_str()));
        assert_eq!(p.status.observed_generation, Some(1));
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", "AttemptRunning"));
        assert_eq!(condition(&p.status, CONDITION_SUCCEEDED), ("Unknown", "InProgress"));
        assert!(matches!(p.transitions.as_slice(), [Transition::AttemptStarted { max_attempts: 3, .. }]));
    }

    #[test]
    fn the_next_phase_follows_the_job_and_the_lake() {
        use EtlRunPhase::*;
        let s = started();
        let run_id = s.attempts[0].run_id.clone();
        let success = || Some(LakeFinding::Success { report: report(&run_id, 1), uri: "file:///l/_SUCCESS".into() });
        let quality = || Some(LakeFinding::QualityReport { report: report(&run_id, 30), uri: "file:///l/_Q".into() });
        let complete = || Some(JobState::Complete { finished_at: Some(at(20)) });
        type Case<'a> = (&'a str, Option<JobState>, Option<LakeFinding>, i64, EtlRunPhase, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("job running", Some(JobState::Active), None, 10, Running, None),
            ("complete with _SUCCESS", complete(), success(), 21, Succeeded, Some("SuccessVerified")),
            ("complete, marker not yet visible", complete(), Some(LakeFinding::Nothing), 22, Validating, None),
            ("complete, grace over", complete(), Some(LakeFinding::Nothing), 31, Pending, Some("SuccessMarkerMissing")),
            ("exit 3", Some(failed_with(3)), Some(LakeFinding::Claimed), 21, Failed, Some("SchemaDrift")),
            ("exit 2", Some(failed_with(2)), Some(LakeFinding::Nothing), 21, Failed, Some("ConfigurationError")),
            ("exit 4", Some(failed_with(4)), Some(LakeFinding::Claimed), 21, Failed, Some("CircuitBreaker")),
            ("exit 5 with report", Some(failed_with(5)), quality(), 21, QualityGateFailed, Some("QualityGate")),
            ("exit 5, report late", Some(failed_with(5)), Some(LakeFinding::Nothing), 21, Validating, None),
            (
                "exit 5, no report",
                Some(failed_with(5)),
                Some(LakeFinding::Nothing),
                31,
                Failed,
                Some("QualityReportMissing"),
            ),
            ("exit 75", Some(failed_with(75)), Some(LakeFinding::Claimed), 21, Pending, Some("TransientFailure")),
            ("exit 1", Some(failed_with(1)), Some(LakeFinding::Claimed), 21, Pending, Some("WorkerError")),
            ("killed", Some(failed_with(137)), Some(LakeFinding::Claimed), 21, Pending, Some("Killed")),
            ("failed after commit", Some(failed_with(137)), success(), 21, Succeeded, Some("SuccessVerified")),
            ("job gone, committed", Some(JobState::Missing), success(), 21, Succeeded, Some("SuccessVerified")),
            ("job gone after claim", Some(JobState::Missing), Some(LakeFinding::Claimed), 21, Pending, Some("JobLost")),
            (
                "job gone, nothing written",
                Some(JobState::Missing),
                Some(LakeFinding::Nothing),
                21,
                Pending,
                Some("JobLost"),
            ),
        ];
        for (case, job, lake, now, phase, reason) in cases {
            let p = plan(&observe(&s, now, job, lake), &settings());
            assert_eq!(p.status.phase, Some(phase), "{case}");
            assert_eq!(p.status.attempts[0].reason.as_deref(), reason, "{case}");
            assert_eq!(p.status.attempts.len(), 1, "{case}: no attempt is added by following one");
        }
    }

    #[test]
    fn success_copies_the_reports_counts_into_status() {
        let s = started();
        let run_id = s.attempts[0].run_id.clone();
        let lake = LakeFinding::Success { report: report(&run_id, 2), uri: "file:///l/_SUCCESS".into() };
        let p = plan(&observe(&s, 30, Some(JobState::Complete { finished_at: Some(at(29)) }), Some(lake)), &settings());
        let result = p.status.result.clone().expect("result");
        assert_eq!(
            (result.input_rows, result.valid_rows, result.quarantined_rows, result.condemned_rows),
            (100, 97, 2, 1)
        );
        assert_eq!(result.report_uri, "file:///l/_SUCCESS");
        assert_eq!(p.status.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
        assert_eq!(condition(&p.status, CONDITION_SUCCEEDED), ("True", "SuccessVerified"));
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("False", "Finished"));
        assert_eq!(p.requeue_after, None);
        match p.transitions.last() {
            Some(Transition::Finished { phase: EtlRunPhase::Succeeded, seconds: Some(s), .. }) => assert_eq!(*s, 30.0),
            other => panic!("expected Finished, got {other:?}"),
        }
    }

    #[test]
    fn a_job_found_before_its_status_is_recorded_under_its_own_run_id_and_not_launched_again() {
        let empty = EtlRunStatus::default();
        // Launched at t=0 by a reconcile whose status write did not land; seen again at t=7.
        let run_id = job::run_id(at(0), UID, 1);
        let found = Observed { launched: Some(run_id.clone()), ..observe(&empty, 7, None, None) };
        let p = plan(&found, &settings());
        assert!(p.launch.is_none(), "its Job exists");
        assert_eq!(p.status.attempts.len(), 1);
        assert_eq!(
            (p.status.attempts[0].run_id.as_str(), p.status.attempts[0].job_name.as_str()),
            (run_id.as_str(), "tx-a1")
        );
        assert_eq!(p.status.run_id.as_deref(), Some(run_id.as_str()));
        assert_eq!(p.status.phase, Some(EtlRunPhase::Running));
        assert!(matches!(p.transitions.as_slice(), [Transition::AttemptStarted { .. }]), "{:?}", p.transitions);
        // Without its Job's creation time the attempt starts when it is recorded; with it, when the Job was made.
        assert_eq!(p.status.attempts[0].started_at.as_ref().map(|t| t.0), Some(at(7)));
        let dated = Observed { launched_at: Some(at(2)), ..found.clone() };
        let p = plan(&dated, &settings());
        assert_eq!(p.status.attempts[0].started_at.as_ref().map(|t| t.0), Some(at(2)));
        assert_eq!(p.status.started_at.as_ref().map(|t| t.0), Some(at(2)));

        // A retry launched during its backoff's last instant (as seen by a stale view) is adopted too.
        let s = started();
        let failed = plan(&observe(&s, 20, Some(failed_with(75)), Some(LakeFinding::Claimed)), &settings());
        let second = job::run_id(at(50), UID, 2);
        let early = Observed { launched: Some(second.clone()), ..observe(&failed.status, 40, None, None) };
        let p = plan(&early, &settings());
        assert_eq!(p.status.attempts.len(), 2);
        assert_eq!(p.status.attempts[1].run_id, second);
        assert_eq!(p.status.next_attempt_at, None);
        assert!(p.launch.is_none());
    }

    #[test]
    fn only_the_record_of_a_new_runs_launch_may_wait_and_not_for_long() {
        let empty = EtlRunStatus::default();
        // A new run's launch, and the same launch found by the next reconcile: both may wait, up to the bound.
        let new = observe(&empty, 0, None, None);
        let launched = plan(&new, &settings());
        assert!(launched.launch.is_some());
        assert!(may_defer_launch_record(&launched, &new));
        let run_id = job::run_id(at(0), UID, 1);
        let found = |now| Observed {
            launched: Some(run_id.clone()),
            launched_at: Some(at(0)),
            ..observe(&empty, now, None, None)
        };
        assert!(may_defer_launch_record(&plan(&found(4), &settings()), &found(4)));
        assert!(!may_defer_launch_record(&plan(&found(5), &settings()), &found(5)), "5 s after its Job");
        // A refused launch, a retry's launch, a run that waits for its Dataset and a failure are said at once.
        let refused = Observed { launch_error: Some("forbidden".into()), ..observe(&empty, 0, None, None) };
        assert!(!may_defer_launch_record(&plan(&refused, &settings()), &refused));
        let running = started();
        let ended = observe(&running, 20, Some(failed_with(75)), Some(LakeFinding::Claimed));
        let failed = plan(&ended, &settings());
        assert!(!may_defer_launch_record(&failed, &ended));
        let later = observe(&failed.status, 500, None, None);
        let retry = plan(&later, &settings());
        assert!(retry.launch.as_ref().is_some_and(|a| a.attempt == 2), "{:?}", retry.launch);
        assert!(!may_defer_launch_record(&retry, &later));
        let waiting = Observed {
            contract: Err(ContractProblem::DatasetNotFound { name: "transactions".into() }),
            ..observe(&empty, 0, None, None)
        };
        assert!(!may_defer_launch_record(&plan(&waiting, &settings()), &waiting));
    }

    #[test]
    fn a_refused_job_is_said_in_status_once_and_no_attempt_is_recorded() {
        let empty = EtlRunStatus::default();
        let error = "creating Job tx-a1: exceeded quota: jobs, requested: count/jobs.batch=1 (403 Forbidden)";
        let refused = Observed { launch_error: Some(error.into()), ..observe(&empty, 0, None, None) };
        let p = plan(&refused, &settings());
        assert!(p.launch.is_none());
        assert!(p.status.attempts.is_empty(), "nothing was launched");
        assert_eq!(p.status.run_id, None);
        assert_eq!(p.status.phase, Some(EtlRunPhase::Pending));
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", REASON_LAUNCH_FAILED));
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_PROGRESSING).expect("c").message;
        assert_eq!(message, &format!("attempt 1 of 3 cannot be launched: {error}"));
        assert!(
            matches!(p.transitions.as_slice(), [Transition::Waiting { reason, .. }] if reason == REASON_LAUNCH_FAILED),
            "{:?}",
            p.transitions
        );
        // Refused again: the status stands, no second Event.
        let again =
            plan(&Observed { launch_error: Some(error.into()), ..observe(&p.status, 5, None, None) }, &settings());
        assert!(again.transitions.is_empty(), "{:?}", again.transitions);
        // Allowed: the attempt starts and the condition says so.
        let allowed = plan(&observe(&p.status, 9, None, None), &settings());
        assert_eq!(allowed.launch.as_ref().map(|a| a.attempt), Some(1));
        assert_eq!(condition(&allowed.status, CONDITION_PROGRESSING), ("True", "AttemptRunning"));

        // The Job of an attempt in flight vanished before its worker wrote anything: that attempt failed (it is
        // not launched again under its run id, which a TTL shorter than the operator's look would repeat forever).
        let s = started();
        let p = plan(&observe(&s, 9, Some(JobState::Missing), Some(LakeFinding::Nothing)), &settings());
        assert!(p.launch.is_none());
        assert_eq!((p.status.phase, p.status.attempts.len()), (Some(EtlRunPhase::Pending), 1));
        assert_eq!(p.status.attempts[0].reason.as_deref(), Some("JobLost"));
        assert_eq!(p.status.attempts[0].retryable, Some(true));
        let message = p.status.attempts[0].message.clone().unwrap_or_default();
        assert!(message.starts_with("Job tx-a1 disappeared and the lake holds nothing for run id "), "{message}");
    }

    #[test]
    fn a_success_whose_contract_asks_for_review_marks_its_promotion_request_pending() {
        let s = started();
        let run_id = s.attempts[0].run_id.clone();
        let lake = || Some(LakeFinding::Success { report: report(&run_id, 1), uri: "file:///l/_SUCCESS".into() });
        let complete = || Some(JobState::Complete { finished_at: Some(at(20)) });
        let asks = Observed {
            contract: Ok(ContractFacts { max_attempts: 3, request_promotion: true }),
            ..observe(&s, 21, complete(), lake())
        };
        let p = plan(&asks, &settings());
        assert_eq!(p.status.phase, Some(EtlRunPhase::Succeeded));
        assert_eq!(condition(&p.status, CONDITION_PROMOTION_REQUESTED), ("Unknown", REASON_REQUEST_PENDING));
        let quiet = plan(&observe(&s, 21, complete(), lake()), &settings());
        assert!(!quiet.status.conditions.iter().any(|c| c.type_ == CONDITION_PROMOTION_REQUESTED));
    }

    #[test]
    fn a_transient_failure_backs_off_then_launches_a_new_attempt_under_a_new_run_id() {
        let s = started();
        let failed = plan(&observe(&s, 20, Some(failed_with(75)), Some(LakeFinding::Claimed)), &settings());
        assert_eq!(failed.status.next_attempt_at.as_ref().map(|t| t.0), Some(at(50)), "base 30s after attempt 1");
        assert_eq!(failed.requeue_after, Some(Duration::from_secs(30)));
        assert!(failed.launch.is_none());
        assert_eq!(failed.status.attempts[0].retryable, Some(true));
        assert_eq!(failed.status.attempts[0].exit_code, Some(75));

        let early = plan(&observe(&failed.status, 40, None, None), &settings());
        assert!(early.launch.is_none());
        assert_eq!(early.status.phase, Some(EtlRunPhase::Pending));
        assert_eq!(early.requeue_after, Some(Duration::from_secs(10)));
        assert!(early.transitions.is_empty(), "waiting out the backoff is not a new event");

        let retried = plan(&observe(&failed.status, 50, None, None), &settings());
        let second = retried.launch.expect("attempt 2");
        assert_eq!((second.attempt, second.job_name.as_str()), (2, "tx-a2"));
        assert_ne!(second.run_id, s.attempts[0].run_id);
        assert_eq!(retried.status.attempts.len(), 2);
        assert_eq!(retried.status.next_attempt_at, None);
    }

    #[test]
    fn backoff_grows_per_attempt_and_the_last_attempt_fails_the_run() {
        let mut status = started();
        let mut delays = Vec::new();
        let mut now = 0;
        for _ in 0..3 {
            now += 20;
            let p = plan(&observe(&status, now, Some(failed_with(75)), Some(LakeFinding::Claimed)), &settings());
            delays.push(p.status.next_attempt_at.as_ref().map(|t| t.0.duration_since(at(now)).as_secs()));
            status = p.status;
            if status.phase == Some(EtlRunPhase::Failed) {
                break;
            }
            now += 1000;
            status = plan(&observe(&status, now, None, None), &settings()).status;
        }
        assert_eq!(delays, [Some(30), Some(60), None]);
        assert_eq!(status.phase, Some(EtlRunPhase::Failed));
        assert_eq!(status.attempts.len(), 3);
        assert_eq!(condition(&status, CONDITION_SUCCEEDED), ("False", "TransientFailure"));
        let message = &status.conditions.iter().find(|c| c.type_ == CONDITION_SUCCEEDED).expect("c").message;
        assert!(message.contains("attempt 3 of 3 failed, none left") && message.contains("exit code 75"), "{message}");
    }

    #[test]
    fn terminal_runs_are_left_alone() {
        let s = started();
        let done = plan(&observe(&s, 20, Some(failed_with(3)), Some(LakeFinding::Nothing)), &settings()).status;
        let p = plan(&observe(&done, 5000, Some(JobState::Missing), Some(LakeFinding::Nothing)), &settings());
        assert_eq!(p.status, done);
        assert!(p.launch.is_none() && p.transitions.is_empty() && p.requeue_after.is_none());
    }

    #[test]
    fn a_missing_dataset_waits_and_reports_it_once() {
        let empty = EtlRunStatus::default();
        let mut o = observe(&empty, 0, None, None);
        o.contract = Err(ContractProblem::DatasetNotFound { name: "tx".into() });
        let p = plan(&o, &settings());
        assert_eq!(p.status.phase, Some(EtlRunPhase::Pending));
        assert!(p.launch.is_none());
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", "DatasetNotFound"));
        assert_eq!(p.transitions.len(), 1);
        let mut again = observe(&p.status, 10, None, None);
        again.contract = Err(ContractProblem::DatasetNotFound { name: "tx".into() });
        let p2 = plan(&again, &settings());
        assert!(p2.transitions.is_empty());
        assert_eq!(p2.status, p.status, "nothing changes, so nothing is written");
    }

    #[test]
    fn checking_the_lake_again_changes_nothing_in_status_until_the_grace_period_ends() {
        let s = started();
        let complete = || Some(JobState::Complete { finished_at: Some(at(20)) });
        let mut first = observe(&s, 21, complete(), Some(LakeFinding::Nothing));
        first.lake_checks = 1;
        let validating = plan(&first, &settings());
        assert_eq!(validating.status.phase, Some(EtlRunPhase::Validating));
        for (now, checks) in [(22, 2), (23, 3), (29, 9)] {
            let mut again = observe(&validating.status, now, complete(), Some(LakeFinding::Nothing));
            again.lake_checks = checks;
            let p = plan(&again, &settings());
            assert_eq!(
                p.status, validating.status,
                "check {checks}: nothing to write, so nothing wakes the controller"
            );
            assert!(p.transitions.is_empty(), "check {checks}");
            assert_eq!(p.requeue_after, Some(Duration::from_secs(2).min(until(at(now), at(30)))), "the interval");
        }
        let mut last = observe(&validating.status, 31, complete(), Some(LakeFinding::Nothing));
        last.lake_checks = 10;
        let ended = plan(&last, &settings());
        assert_eq!(ended.status.attempts[0].lake_checks, 10, "the count reaches status when the attempt ends");
        let message = ended.status.attempts[0].message.clone().unwrap_or_default();
        assert!(message.contains("after 10 checks over 10s"), "{message}");
    }

    #[test]
    fn a_pod_blocked_by_a_missing_secret_is_said_once_and_cleared_when_it_starts() {
        let s = started();
        let mut blocked = observe(&s, 5, Some(JobState::Active), None);
        blocked.blocker = Some(PodBlocker::SecretNotFound { name: "lake-creds".into() });
        let p = plan(&blocked, &settings());
        assert_eq!(p.status.phase, Some(EtlRunPhase::Running));
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", REASON_SECRET_NOT_FOUND));
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_PROGRESSING).expect("c").message;
        assert!(message.starts_with("Secret lake-creds ") && message.contains("tx-a1"), "{message}");
        assert!(
            matches!(p.transitions.as_slice(), [Transition::Waiting { reason, .. }] if reason == REASON_SECRET_NOT_FOUND)
        );
        let mut again = observe(&p.status, 6, Some(JobState::Active), None);
        again.blocker = blocked.blocker.clone();
        let p2 = plan(&again, &settings());
        assert!(p2.transitions.is_empty() && p2.status == p.status, "said once");
        let started_now = plan(&observe(&p.status, 7, Some(JobState::Active), None), &settings());
        assert_eq!(condition(&started_now.status, CONDITION_PROGRESSING), ("True", "AttemptRunning"));
    }

    #[test]
    fn a_secret_missing_one_key_then_another_is_said_for_each_key() {
        let s = started();
        let missing = |key: &str| PodBlocker::SecretKeyMissing { name: "lake-creds".into(), key: key.into() };
        let mut first = observe(&s, 5, Some(JobState::Active), None);
        first.blocker = Some(missing("AWS_ACCESS_KEY_ID"));
        let p = plan(&first, &settings());
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", REASON_SECRET_KEY_MISSING));
        assert!(
            matches!(p.transitions.as_slice(), [Transition::Waiting { message, .. }] if message.contains("no key AWS_ACCESS_KEY_ID"))
        );
        let mut same = observe(&p.status, 6, Some(JobState::Active), None);
        same.blocker = first.blocker.clone();
        assert!(plan(&same, &settings()).transitions.is_empty(), "said once per key");
        // The first key added, the kubelet names the next one: the same reason, said again for that key.
        let mut next = observe(&p.status, 7, Some(JobState::Active), None);
        next.blocker = Some(missing("AWS_SECRET_ACCESS_KEY"));
        let p2 = plan(&next, &settings());
        assert!(
            matches!(p2.transitions.as_slice(), [Transition::Waiting { reason, message }]
                if reason == REASON_SECRET_KEY_MISSING && message.contains("no key AWS_SECRET_ACCESS_KEY")),
            "{:?}",
            p2.transitions
        );
    }

    #[test]
    fn a_job_without_pods_says_what_is_missing_at_once_and_fails_for_good_after_the_bound() {
        let s = started();
        let message = "Error creating: pods \"tx-a1-x\" is forbidden: error looking up service account etl/silverline-worker: serviceaccount \"silverline-worker\" not found";
        let blocked = |status: &EtlRunStatus, now: i64| {
            let mut o = observe(status, now, Some(JobState::Active), None);
            o.blocker = Some(PodBlocker::CannotCreate { message: message.into() });
            o.job_has_pod = Some(false);
            plan(&o, &settings())
        };
        let p = blocked(&s, 2);
        assert_eq!(p.status.phase, Some(EtlRunPhase::Running));
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", "PodCreationFailed"));
        assert!(
            matches!(p.transitions.as_slice(), [Transition::Waiting { message, .. }] if message.contains("ServiceAccount silverline-worker does not exist"))
        );
        assert_eq!(p.requeue_after, Some(NO_POD_RECHECK), "looks again within the bound");
        assert!(p.delete_job.is_none());
        let still = blocked(&p.status, 30);
        assert!(still.transitions.is_empty() && still.status == p.status, "said once");
        let ended = blocked(&p.status, 60);
        assert_eq!(ended.status.phase, Some(EtlRunPhase::Failed), "permanent: not retried");
        assert_eq!(ended.status.attempts[0].reason.as_deref(), Some("PodCreationFailed"));
        assert_eq!(ended.delete_job.as_deref(), Some("tx-a1"), "the Job would otherwise run once the object appears");
        let no_pod_yet = {
            let mut o = observe(&s, 1, Some(JobState::Active), None);
            o.job_has_pod = Some(false);
            plan(&o, &settings())
        };
        assert_eq!(no_pod_yet.requeue_after, Some(NO_POD_SAFETY_NET), "only a safety net: the Event watch wakes it");
    }

    #[test]
    fn a_refused_contract_snapshot_is_said_at_once_and_fails_the_attempt_for_good_after_the_bound() {
        let s = started();
        let refused = |status: &EtlRunStatus, now: i64| {
            let mut o = observe(status, now, Some(JobState::Active), None);
            o.blocker = Some(PodBlocker::SnapshotRefused {
                configmap: "tx-contract".into(),
                message: "creating ConfigMap tx-contract: exceeded quota: cm, requested: configmaps=1 (403 Forbidden)"
                    .into(),
            });
            plan(&o, &settings())
        };
        let p = refused(&s, 2);
        assert_eq!(p.status.phase, Some(EtlRunPhase::Running), "the pod waits; nothing ran");
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", REASON_SNAPSHOT_REFUSED));
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_PROGRESSING).expect("c").message;
        assert!(
            message.contains("attempt 1 (Job tx-a1)")
                && message.contains("ConfigMap tx-contract is missing")
                && message.ends_with("exceeded quota: cm, requested: configmaps=1 (403 Forbidden)"),
            "{message}"
        );
        assert!(
            matches!(p.transitions.as_slice(), [Transition::Waiting { reason, .. }] if reason == REASON_SNAPSHOT_REFUSED)
        );
        assert!(p.delete_job.is_none());
        let still = refused(&p.status, 30);
        assert!(still.transitions.is_empty() && still.status == p.status, "said once");
        let ended = refused(&p.status, 60);
        assert_eq!(ended.status.phase, Some(EtlRunPhase::Failed), "permanent: not retried");
        assert_eq!(ended.status.attempts[0].reason.as_deref(), Some("PodCreationFailed"));
        let message = ended.status.attempts[0].message.clone().unwrap_or_default();
        assert!(message.contains("ConfigMap tx-contract") && message.contains("the bound"), "{message}");
        assert_eq!(ended.delete_job.as_deref(), Some("tx-a1"));
        // Created after all: the attempt runs on.
        let created = plan(&observe(&p.status, 31, Some(JobState::Active), None), &settings());
        assert_eq!(condition(&created.status, CONDITION_PROGRESSING), ("True", "AttemptRunning"));
    }

    #[test]
    fn the_missing_object_is_read_from_a_failed_create_message() {
        let cases = [
            ("error looking up service account etl/sa: serviceaccount \"sa\" not found", Some("ServiceAccount sa")),
            ("secret \"creds\" not found", Some("Secret creds")),
            ("exceeded quota: compute-resources", None),
        ];
        for (message, expected) in cases {
            assert_eq!(missing_object(message).as_deref(), expected, "{message}");
        }
    }

    #[test]
    fn an_unreadable_lake_is_said_once_and_ends_the_attempt_after_the_grace_period() {
        let s = started();
        let error = "lake s3://lake: access to s3://lake/silver/tx/schema_v=v1/run_id=r/_SUCCESS was refused: access denied by the object store";
        let complete = || Some(JobState::Complete { finished_at: Some(at(20)) });
        let unreadable = |status: &EtlRunStatus, now: i64, error: &str| {
            let mut o = observe(status, now, complete(), None);
            o.lake_error = Some(error.into());
            plan(&o, &settings())
        };
        let p = unreadable(&s, 21, error);
        assert_eq!(p.status.phase, Some(EtlRunPhase::Validating));
        assert_eq!(condition(&p.status, CONDITION_PROGRESSING), ("True", REASON_LAKE_UNREADABLE));
        let message = &p.status.conditions.iter().find(|c| c.type_ == CONDITION_PROGRESSING).expect("c").message;
        assert!(message.contains(error) && message.contains("_SUCCESS"), "{message}");
        assert!(
            matches!(p.transitions.as_slice(), [Transition::Waiting { reason, .. }] if reason == REASON_LAKE_UNREADABLE)
        );
        assert_eq!(p.requeue_after, Some(Duration::from_secs(2)), "the check interval");
        let again = unreadable(&p.status, 23, "another text of the same failure");
        assert!(again.transitions.is_empty() && again.status == p.status, "said once; nothing to write per check");
        let ended = unreadable(&p.status, 31, error);
        assert_eq!(ended.status.attempts[0].reason.as_deref(), Some("SuccessMarkerMissing"));
        assert_eq!(ended.status.phase, Some(EtlRunPhase::Pending), "retried, as the README promises");
        let message = ended.status.attempts[0].message.clone().unwrap_or_default();
        assert!(message.contains("could not be read from the lake") && message.contains(error), "{message}");
    }

    #[test]
    fn an_unchanged_observation_plans_an_unchanged_status() {
        let s = started();
        let p = plan(&observe(&s, 10, Some(JobState::Active), None), &settings());
        assert_eq!(p.status, s);
        assert!(p.transitions.is_empty() && p.launch.is_none());
    }
}
