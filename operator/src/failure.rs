//! Why an attempt failed, and whether it is worth another attempt. The worker's exit codes are its contract:
//! 2, 3, 4 and 5 are permanent (bad configuration, schema drift, circuit breaker, quality gate); 75 and 1 are
//! transient, as are evictions, node loss, deadlines and kills.

use std::fmt;

/// A stable reason for a failed attempt: PascalCase in status and Events, snake_case in metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// Exit 2: usage or configuration error, access denied, missing bucket, or a run id already used.
    ConfigurationError,
    /// Exit 3: the input's header does not match the contract, or the input is unreadable.
    SchemaDrift,
    /// Exit 4: too many rows with the same error.
    CircuitBreaker,
    /// Exit 5: quarantine rate above the contract's maximum.
    QualityGate,
    /// Exit 75: transient I/O failure, or the worker was stopped by SIGTERM/SIGINT.
    TransientFailure,
    /// Exit 1: an unexpected worker error.
    WorkerError,
    /// Killed by a signal (exit code above 128), e.g. SIGKILL.
    Killed,
    /// The container ran out of memory: it would again with the same limits.
    OutOfMemory,
    /// The pod was evicted or preempted.
    Evicted,
    /// The pod's node was lost.
    NodeLost,
    /// The attempt ran longer than its deadline.
    DeadlineExceeded,
    /// Any other exit code.
    UnexpectedExit,
    /// The Job failed and its pod is gone, so no exit code is known.
    PodLost,
    /// The Job disappeared after the worker had claimed its run id, without a report in the lake.
    JobLost,
    /// The Job completed but the run's `_SUCCESS` is not in the lake.
    SuccessMarkerMissing,
    /// The worker exited 5 but its `_QUALITY_REPORT.json` is not in the lake.
    QualityReportMissing,
    /// No pod of the Job could be created (`FailedCreate`, e.g. a missing ServiceAccount) within the bound.
    PodCreationFailed,
}

impl FailureReason {
    pub const ALL: [FailureReason; 17] = [
        FailureReason::ConfigurationError,
        FailureReason::SchemaDrift,
        FailureReason::CircuitBreaker,
        FailureReason::QualityGate,
        FailureReason::TransientFailure,
        FailureReason::WorkerError,
        FailureReason::Killed,
        FailureReason::OutOfMemory,
        FailureReason::Evicted,
        FailureReason::NodeLost,
        FailureReason::DeadlineExceeded,
        FailureReason::UnexpectedExit,
        FailureReason::PodLost,
        FailureReason::JobLost,
        FailureReason::SuccessMarkerMissing,
        FailureReason::QualityReportMissing,
        FailureReason::PodCreationFailed,
    ];

    /// Whether another attempt, under a new run id, may succeed.
    pub fn is_retryable(self) -> bool {
        match self {
            FailureReason::ConfigurationError
            | FailureReason::SchemaDrift
            | FailureReason::CircuitBreaker
            | FailureReason::QualityGate
            | FailureReason::OutOfMemory
            | FailureReason::QualityReportMissing
            | FailureReason::PodCreationFailed => false,
            FailureReason::TransientFailure
            | FailureReason::WorkerError
            | FailureReason::Killed
            | FailureReason::Evicted
            | FailureReason::NodeLost
            | FailureReason::DeadlineExceeded
            | FailureReason::UnexpectedExit
            | FailureReason::PodLost
            | FailureReason::JobLost
            | FailureReason::SuccessMarkerMissing => true,
        }
    }

    /// PascalCase, for status, conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ConfigurationError => "ConfigurationError",
            FailureReason::SchemaDrift => "SchemaDrift",
            FailureReason::CircuitBreaker => "CircuitBreaker",
            FailureReason::QualityGate => "QualityGate",
            FailureReason::TransientFailure => "TransientFailure",
            FailureReason::WorkerError => "WorkerError",
            FailureReason::Killed => "Killed",
            FailureReason::OutOfMemory => "OutOfMemory",
            FailureReason::Evicted => "Evicted",
            FailureReason::NodeLost => "NodeLost",
            FailureReason::DeadlineExceeded => "DeadlineExceeded",
            FailureReason::UnexpectedExit => "UnexpectedExit",
            FailureReason::PodLost => "PodLost",
            FailureReason::JobLost => "JobLost",
            FailureReason::SuccessMarkerMissing => "SuccessMarkerMissing",
            FailureReason::QualityReportMissing => "QualityReportMissing",
            FailureReason::PodCreationFailed => "PodCreationFailed",
        }
    }

    /// snake_case, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::ConfigurationError => "configuration_error",
            FailureReason::SchemaDrift => "schema_drift",
            FailureReason::CircuitBreaker => "circuit_breaker",
            FailureReason::QualityGate => "quality_gate",
            FailureReason::TransientFailure => "transient_failure",
            FailureReason::WorkerError => "worker_error",
            FailureReason::Killed => "killed",
            FailureReason::OutOfMemory => "out_of_memory",
            FailureReason::Evicted => "evicted",
            FailureReason::NodeLost => "node_lost",
            FailureReason::DeadlineExceeded => "deadline_exceeded",
            FailureReason::UnexpectedExit => "unexpected_exit",
            FailureReason::PodLost => "pod_lost",
            FailureReason::JobLost => "job_lost",
            FailureReason::SuccessMarkerMissing => "success_marker_missing",
            FailureReason::QualityReportMissing => "quality_report_missing",
            FailureReason::PodCreationFailed => "pod_creation_failed",
        }
    }

    pub fn parse(text: &str) -> Option<FailureReason> {
        FailureReason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the Job and its pod say about a failed attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFailure {
    /// The reason of the Job's `Failed` condition: `BackoffLimitExceeded`, `DeadlineExceeded`, `PodFailurePolicy`…
    pub job_reason: Option<String>,
    pub job_message: Option<String>,
    /// The worker pod's end, when the pod still exists.
    pub pod: Option<PodEnd>,
}

/// How the worker pod ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodEnd {
    pub exit_code: Option<i32>,
    /// The container's terminated reason: `Error`, `OOMKilled`, `Completed`…
    pub container_reason: Option<String>,
    /// The pod's status reason: `Evicted`, `DeadlineExceeded`, `NodeLost`…
    pub pod_reason: Option<String>,
    /// The reason of the pod's `DisruptionTarget` condition, if it was disrupted.
    pub disruption: Option<String>,
    pub message: Option<String>,
}

/// A failed attempt, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub reason: FailureReason,
    pub exit_code: Option<i32>,
    pub message: String,
}

/// The meaning of one of the worker's exit codes.
pub fn exit_code_meaning(code: i32) -> (FailureReason, String) {
    match code {
        2 => (
            FailureReason::ConfigurationError,
            "usage or configuration error, access denied, missing bucket or run id already used".into(),
        ),
        3 => (FailureReason::SchemaDrift, "schema drift or unreadable input".into()),
        4 => (FailureReason::CircuitBreaker, "circuit breaker: too many rows with the same error".into()),
        5 => (FailureReason::QualityGate, "quality gate: quarantine rate above the contract's maximum".into()),
        75 => (FailureReason::TransientFailure, "transient I/O failure or stopped by a signal".into()),
        1 => (FailureReason::WorkerError, "unexpected worker error".into()),
        c if c > 128 => (FailureReason::Killed, format!("killed by {}", signal_name(c - 128))),
        _ => (FailureReason::UnexpectedExit, "an exit code the worker does not document".into()),
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        9 => "SIGKILL".into(),
        15 => "SIGTERM".into(),
        6 => "SIGABRT".into(),
        11 => "SIGSEGV".into(),
        n => format!("signal {n}"),
    }
}

/// How much of the worker's own words goes into status, conditions and Events.
pub const WORKER_MESSAGE_LIMIT: usize = 512;

/// The worker's final error from its container's termination message: the `error` of the JSON line the worker
/// writes there, or else (a log tail, with `FallbackToLogsOnError`) the last line that says something; bounded.
pub fn worker_said(message: &str) -> Option<String> {
    let from_json = |line: &str| -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        value.get("error")?.as_str().map(str::to_owned)
    };
    let text = match message.lines().rev().find_map(from_json) {
        Some(error) => error,
        None => message.lines().rev().map(str::trim).find(|l| !l.is_empty())?.to_owned(),
    };
    let text = text.trim().trim_start_matches("silverline-worker: ").to_owned();
    if text.is_empty() {
        return None;
    }
    if text.len() <= WORKER_MESSAGE_LIMIT {
        return Some(text);
    }
    let mut cut = WORKER_MESSAGE_LIMIT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(format!("{}…", &text[..cut]))
}

/// Classifies a failed Job: deadline, disruption and memory first (they explain a kill), then the exit code.
pub fn classify(failure: &JobFailure) -> Classified {
    let pod = failure.pod.as_ref();
    let exit_code = pod.and_then(|p| p.exit_code);
    let job_says = || match (&failure.job_reason, &failure.job_message) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => "no reason given".into(),
    };
    let with_exit = |text: String| match exit_code {
        Some(code) => format!("{text} (exit code {code})"),
        None => text,
    };
    if failure.job_reason.as_deref() == Some("DeadlineExceeded")
        || pod.and_then(|p| p.pod_reason.as_deref()) == Some("DeadlineExceeded")
    {
        return Classified {
            reason: FailureReason::DeadlineExceeded,
            exit_code,
            message: with_exit(format!("the attempt ran past its deadline: {}", job_says())),
        };
    }
    if let Some(pod) = pod {
        let lost = pod.disruption.as_deref() == Some("DeletionByTaintManager")
            || pod.pod_reason.as_deref() == Some("NodeLost");
        if lost {
            return Classified {
                reason: FailureReason::NodeLost,
                exit_code,
                message: with_exit("the pod's node was lost".into()),
            };
        }
        if pod.disruption.is_some() || pod.pod_reason.as_deref() == Some("Evicted") {
            let why = pod.disruption.clone().or_else(|| pod.message.clone()).unwrap_or_else(|| "Evicted".into());
            return Classified {
                reason: FailureReason::Evicted,
                exit_code,
                message: with_exit(format!("the pod was evicted ({why})")),
            };
        }
        if pod.container_reason.as_deref() == Some("OOMKilled") {
            return Classified {
                reason: FailureReason::OutOfMemory,
                exit_code,
                message: with_exit(
                    "the worker ran out of memory (OOMKilled); raise spec.resources.limits.memory".into(),
                ),
            };
        }
        if let Some(code) = pod.exit_code {
            let (reason, meaning) = match code {
                0 => (FailureReason::UnexpectedExit, "the Job failed although the worker exited 0".into()),
                _ => exit_code_meaning(code),
            };
            let message = match pod.message.as_deref().and_then(worker_said) {
                Some(said) => format!("exit code {code}: {meaning}: {said}"),
                None => format!("exit code {code}: {meaning}"),
            };
            return Classified { reason, exit_code: Some(code), message };
        }
    }
    Classified {
        reason: FailureReason::PodLost,
        exit_code: None,
        message: format!("the Job failed and the worker's exit is unknown: {}", job_says()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_own_error_is_read_from_its_termination_message_and_bounded() {
        let json = r#"{"error":"schema drift in file:///in.csv: missing column(s) [\"Amount\"]","category":"schema_drift","exit_code":3}"#;
        assert_eq!(
            worker_said(json).as_deref(),
            Some(r#"schema drift in file:///in.csv: missing column(s) ["Amount"]"#)
        );
        let tail = "{\"level\":\"INFO\"}\nsilverline-worker: lake s3://b: access denied\n\n";
        assert_eq!(worker_said(tail).as_deref(), Some("lake s3://b: access denied"));
        assert_eq!(worker_said("  \n "), None);
        let long = worker_said(&"é".repeat(1000)).expect("said");
        assert!(long.len() <= WORKER_MESSAGE_LIMIT + '…'.len_utf8() && long.ends_with('…'), "{}", long.len());
        let mut pod = PodEnd { exit_code: Some(3), ..PodEnd::default() };
        pod.message = Some(json.to_owned());
        let failure = JobFailure { job_reason: Some("PodFailurePolicy".into()), job_message: None, pod: Some(pod) };
        let c = classify(&failure);
        assert!(
            c.message.starts_with("exit code 3: schema drift or unreadable input: schema drift in"),
            "{}",
            c.message
        );
    }

    fn exited(code: i32) -> JobFailure {
        JobFailure {
            job_reason: Some("BackoffLimitExceeded".into()),
            job_message: None,
            pod: Some(PodEnd { exit_code: Some(code), container_reason: Some("Error".into()), ..PodEnd::default() }),
        }
    }

    #[test]
    fn exit_codes_map_to_reasons_and_retryability() {
        use FailureReason::*;
        let cases = [
            (2, ConfigurationError, false),
            (3, SchemaDrift, false),
            (4, CircuitBreaker, false),
            (5, QualityGate, false),
            (75, TransientFailure, true),
            (1, WorkerError, true),
            (137, Killed, true),
            (143, Killed, true),
            (42, UnexpectedExit, true),
            (0, UnexpectedExit, true),
        ];
        for (code, reason, retryable) in cases {
            let c = classify(&exited(code));
            assert_eq!((c.reason, c.exit_code, c.reason.is_retryable()), (reason, Some(code), retryable), "{code}");
            assert!(c.message.contains(&format!("exit code {code}")), "{}", c.message);
        }
        assert!(classify(&exited(137)).message.contains("SIGKILL"));
    }

    #[test]
    fn pod_reasons_explain_a_kill_before_the_exit_code() {
        use FailureReason::*;
        let pod = |f: fn(&mut PodEnd)| {
            let mut p = PodEnd { exit_code: Some(137), ..PodEnd::default() };
            f(&mut p);
            JobFailure { job_reason: Some("BackoffLimitExceeded".into()), job_message: None, pod: Some(p) }
        };
        let cases = [
            (pod(|p| p.container_reason = Some("OOMKilled".into())), OutOfMemory, false),
            (pod(|p| p.disruption = Some("EvictionByEvictionAPI".into())), Evicted, true),
            (pod(|p| p.pod_reason = Some("Evicted".into())), Evicted, true),
            (pod(|p| p.disruption = Some("DeletionByTaintManager".into())), NodeLost, true),
            (pod(|p| p.pod_reason = Some("DeadlineExceeded".into())), DeadlineExceeded, true),
            (
                JobFailure { job_reason: Some("DeadlineExceeded".into()), job_message: None, pod: None },
                DeadlineExceeded,
                true,
            ),
            (
                JobFailure { job_reason: Some("BackoffLimitExceeded".into()), job_message: None, pod: None },
                PodLost,
                true,
            ),
        ];
        for (failure, reason, retryable) in cases {
            let c = classify(&failure);
            assert_eq!((c.reason, c.reason.is_retryable()), (reason, retryable), "{failure:?}");
        }
    }

    #[test]
    fn reasons_round_trip_and_labels_are_snake_case() {
        for reason in FailureReason::ALL {
            assert_eq!(FailureReason::parse(reason.as_str()), Some(reason));
            assert!(reason.label().chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{reason}");
        }
    }
}
