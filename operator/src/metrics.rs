//! Prometheus metrics. Labels are of low cardinality only: dataset, result, reason, error category — never run
//! ids or object names.

use crate::controllers::ControllerName;
use crate::failure::FailureReason;
use crate::lifecycle::Transition;
use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramTimer, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use silverline_crds::{AttemptOutcome, EtlRunPhase, PromotionPhase};

pub struct Metrics {
    pub registry: Registry,
    /// The standard `process_*` metrics (CPU, resident memory, open file descriptors …), unprefixed as every
    /// exporter names them; Linux only.
    pub process: Registry,
    pub runs: IntCounterVec,
    pub attempts: IntCounterVec,
    pub retries: IntCounterVec,
    pub run_duration: HistogramVec,
    pub rows: IntCounterVec,
    pub last_quarantine_rate: GaugeVec,
    pub last_success: GaugeVec,
    pub reconciles: IntCounterVec,
    pub lake_checks: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub leader: IntGauge,
    pub promotions: IntCounterVec,
    pub promotions_awaiting: GaugeVec,
    pub promotion_oldest_awaiting: GaugeVec,
    pub last_promotion: GaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("silverline".into()), None)?;
        let runs = IntCounterVec::new(
            Opts::new("runs_total", "EtlRuns finished, by result (succeeded, failed, quality_gate_failed)"),
            &["dataset", "result"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new("attempts_total", "Attempts ended, by result and reason"),
            &["dataset", "result", "reason"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("retries_total", "Attempts scheduled after a transient failure, by its reason"),
            &["dataset", "reason"],
        )?;
        let run_duration = HistogramVec::new(
            HistogramOpts::new("run_duration_seconds", "From the first attempt's start to the run's end")
                .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0]),
            &["dataset", "result"],
        )?;
        let rows = IntCounterVec::new(
            Opts::new("rows_total", "Rows of finished runs, by kind (valid, quarantined, condemned)"),
            &["dataset", "kind"],
        )?;
        let last_quarantine_rate = GaugeVec::new(
            Opts::new("last_quarantine_rate", "Quarantine rate of the dataset's last finished run"),
            &["dataset"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new("last_success_timestamp_seconds", "When the dataset's last run succeeded (freshness)"),
            &["dataset"],
        )?;
        let reconciles =
            IntCounterVec::new(Opts::new("reconciles_total", "Reconciles, by controller"), &["controller"])?;
        let lake_checks = IntCounterVec::new(
            Opts::new("lake_checks_total", "Reads of a run's markers in the lake (_SUCCESS, reports), by dataset"),
            &["dataset"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Failed reconciles, by controller and error category"),
            &["controller", "category"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Duration of one reconcile, by controller")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["controller"],
        )?;
        // Every controller's series exist from the start (0 on a standby replica).
        for controller in ControllerName::ALL {
            reconciles.with_label_values(&[controller.label()]);
            reconcile_duration.with_label_values(&[controller.label()]);
        }
        let leader = IntGauge::new("leader", "1 while this replica holds the leader Lease")?;
        let promotions = IntCounterVec::new(
            Opts::new("promotions_total", "Promotions finished, by result (promoted, rejected, failed)"),
            &["dataset", "result"],
        )?;
        let promotions_awaiting = GaugeVec::new(
            Opts::new("promotions_awaiting_approval", "Promotions waiting for a reviewer's approval"),
            &["dataset"],
        )?;
        let promotion_oldest_awaiting = GaugeVec::new(
            Opts::new("promotion_oldest_awaiting_seconds", "Age of the oldest Promotion awaiting approval"),
            &["dataset"],
        )?;
        let last_promotion = GaugeVec::new(
            Opts::new("last_promotion_timestamp_seconds", "When the dataset's current version was last promoted"),
            &["dataset"],
        )?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(run_duration.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(last_quarantine_rate.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(lake_checks.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(promotions.clone()))?;
        registry.register(Box::new(promotions_awaiting.clone()))?;
        registry.register(Box::new(promotion_oldest_awaiting.clone()))?;
        registry.register(Box::new(last_promotion.clone()))?;
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            registry,
            process,
            runs,
            attempts,
            retries,
            run_duration,
            rows,
            last_quarantine_rate,
            last_success,
            reconciles,
            lake_checks,
            reconcile_errors,
            reconcile_duration,
            leader,
            promotions,
            promotions_awaiting,
            promotion_oldest_awaiting,
            last_promotion,
        })
    }

    /// Creates a dataset's series at zero, so that `increase()` and `rate()` see their first change (a series that
    /// appears at 1 has no increase to show).
    pub fn init_dataset(&self, dataset: &str) {
        for result in ["succeeded", "failed", "quality_gate_failed"] {
            self.runs.with_label_values(&[dataset, result]);
        }
        for kind in ROW_KINDS {
            self.rows.with_label_values(&[dataset, kind]);
        }
        for result in ["promoted", "rejected", "failed"] {
            self.promotions.with_label_values(&[dataset, result]);
        }
        self.lake_checks.with_label_values(&[dataset]);
    }

    /// Counts a reconcile of `controller` and measures it until the returned timer is dropped.
    pub fn reconcile_started(&self, controller: &str) -> HistogramTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        self.reconcile_duration.with_label_values(&[controller]).start_timer()
    }

    pub fn reconcile_failed(&self, controller: &str, category: &str) {
        self.reconcile_errors.with_label_values(&[controller, category]).inc();
    }

    /// Records a change of an EtlRun, once it is written.
    pub fn record(&self, dataset: &str, transition: &Transition, now_seconds: f64) {
        match transition {
            Transition::AttemptStarted { .. } | Transition::Waiting { .. } => {}
            Transition::AttemptEnded { attempt, retry_after } => {
                let result = match attempt.outcome {
                    Some(AttemptOutcome::Succeeded) => "succeeded",
                    Some(AttemptOutcome::QualityGateFailed) => "quality_gate_failed",
                    Some(AttemptOutcome::Failed) | None => "failed",
                };
                let reason =
                    attempt.reason.as_deref().and_then(FailureReason::parse).map_or("none", FailureReason::label);
                self.attempts.with_label_values(&[dataset, result, reason]).inc();
                if retry_after.is_some() {
                    self.retries.with_label_values(&[dataset, reason]).inc();
                }
            }
            Transition::Finished { phase, result, seconds, .. } => {
                let label = phase_label(*phase);
                self.runs.with_label_values(&[dataset, label]).inc();
                if let Some(seconds) = seconds {
                    self.run_duration.with_label_values(&[dataset, label]).observe(*seconds);
                }
                if let Some(result) = result {
                    // A quality-gate failure's parsed rows are not valid output: the gate held them back.
                    let parsed = if *phase == EtlRunPhase::Succeeded { "valid" } else { "held_by_gate" };
                    self.rows.with_label_values(&[dataset, parsed]).inc_by(result.valid_rows);
                    self.rows.with_label_values(&[dataset, "quarantined"]).inc_by(result.quarantined_rows);
                    self.rows.with_label_values(&[dataset, "condemned"]).inc_by(result.condemned_rows);
                    self.last_quarantine_rate.with_label_values(&[dataset]).set(result.quarantine_rate);
                }
                if *phase == EtlRunPhase::Succeeded {
                    self.last_success.with_label_values(&[dataset]).set(now_seconds);
                }
            }
        }
    }

    /// Records a finished Promotion, once it is written.
    pub fn record_promotion(&self, dataset: &str, phase: PromotionPhase, now_seconds: f64) {
        let result = match phase {
            PromotionPhase::Promoted => "promoted",
            PromotionPhase::Rejected => "rejected",
            PromotionPhase::Failed => "failed",
            PromotionPhase::AwaitingApproval | PromotionPhase::Promoting => return,
        };
        self.promotions.with_label_values(&[dataset, result]).inc();
        if phase == PromotionPhase::Promoted {
            self.last_promotion.with_label_values(&[dataset]).set(now_seconds);
        }
    }

    /// Sets the awaiting-approval gauges from a full count: `(count, oldest age in seconds)` per dataset. A dataset
    /// with none left reads 0.
    pub fn set_awaiting_approval(&self, awaiting: &std::collections::BTreeMap<String, (i64, f64)>) {
        let gathered = self.promotions_awaiting.collect();
        let known: Vec<String> = gathered
            .iter()
            .flat_map(|family| family.get_metric())
            .filter_map(|m| m.get_label().iter().find(|l| l.name() == "dataset").map(|l| l.value().to_owned()))
            .collect();
        for dataset in known {
            if !awaiting.contains_key(&dataset) {
                self.promotions_awaiting.with_label_values(&[&dataset]).set(0.0);
                self.promotion_oldest_awaiting.with_label_values(&[&dataset]).set(0.0);
            }
        }
        for (dataset, (count, oldest)) in awaiting {
            self.promotions_awaiting.with_label_values(&[dataset]).set(*count as f64);
            self.promotion_oldest_awaiting.with_label_values(&[dataset]).set(*oldest);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = TextEncoder::new().encode(&families, &mut buffer) {
            return format!("# metrics could not be encoded: {e}\n");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The kinds of `silverline_rows_total`: `valid`, `quarantined` and `condemned` rows of finished runs, and the
/// rows a quality gate held back (`held_by_gate`: parsed, but the run failed its gate).
pub const ROW_KINDS: [&str; 4] = ["valid", "quarantined", "condemned", "held_by_gate"];

fn phase_label(phase: EtlRunPhase) -> &'static str {
    match phase {
        EtlRunPhase::Succeeded => "succeeded",
        EtlRunPhase::QualityGateFailed => "quality_gate_failed",
        EtlRunPhase::Failed => "failed",
        EtlRunPhase::Pending => "pending",
        EtlRunPhase::Running => "running",
        EtlRunPhase::Validating => "validating",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silverline_crds::{AttemptStatus, RunResult};
    use std::time::Duration;

    fn attempt(outcome: AttemptOutcome, reason: &str) -> AttemptStatus {
        AttemptStatus {
            attempt: 1,
            run_id: "20240101T000000Z-abc-a1".into(),
            job_name: "tx-a1".into(),
            started_at: None,
            finished_at: None,
            outcome: Some(outcome),
            exit_code: None,
            reason: Some(reason.into()),
            message: None,
            retryable: None,
            lake_checks: 0,
        }
    }

    #[test]
    fn transitions_count_with_low_cardinality_labels_only() {
        let m = Metrics::new().expect("metrics");
        let failed = attempt(AttemptOutcome::Failed, "TransientFailure");
        m.record("tx", &Transition::AttemptEnded { attempt: failed, retry_after: Some(Duration::from_secs(30)) }, 0.0);
        let ok = attempt(AttemptOutcome::Succeeded, "SuccessVerified");
        m.record("tx", &Transition::AttemptEnded { attempt: ok, retry_after: None }, 0.0);
        let result = RunResult {
            valid_rows: 7,
            quarantined_rows: 2,
            condemned_rows: 1,
            quarantine_rate: 0.2,
            ..RunResult::default()
        };
        m.record(
            "tx",
            &Transition::Finished {
                phase: EtlRunPhase::Succeeded,
                reason: "SuccessVerified".into(),
                message: String::new(),
                result: Some(result),
                seconds: Some(12.0),
            },
            1_700_000_000.0,
        );
        let text = m.render();
        for line in [
            r#"silverline_attempts_total{dataset="tx",reason="transient_failure",result="failed"} 1"#,
            r#"silverline_attempts_total{dataset="tx",reason="none",result="succeeded"} 1"#,
            r#"silverline_retries_total{dataset="tx",reason="transient_failure"} 1"#,
            r#"silverline_runs_total{dataset="tx",result="succeeded"} 1"#,
            r#"silverline_rows_total{dataset="tx",kind="valid"} 7"#,
            r#"silverline_rows_total{dataset="tx",kind="quarantined"} 2"#,
            r#"silverline_last_quarantine_rate{dataset="tx"} 0.2"#,
            r#"silverline_last_success_timestamp_seconds{dataset="tx"} 1700000000"#,
            r#"silverline_run_duration_seconds_count{dataset="tx",result="succeeded"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("20240101T000000Z"), "run ids never become labels");
    }

    #[test]
    fn a_quality_gate_failures_rows_are_not_counted_as_valid_and_a_datasets_series_start_at_zero() {
        let m = Metrics::new().expect("metrics");
        m.init_dataset("tx");
        let zero = m.render();
        for line in [
            r#"silverline_runs_total{dataset="tx",result="succeeded"} 0"#,
            r#"silverline_runs_total{dataset="tx",result="failed"} 0"#,
            r#"silverline_runs_total{dataset="tx",result="quality_gate_failed"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="valid"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="quarantined"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="condemned"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="held_by_gate"} 0"#,
            r#"silverline_promotions_total{dataset="tx",result="promoted"} 0"#,
        ] {
            assert!(zero.contains(line), "missing {line} in\n{zero}");
        }
        let result = RunResult { valid_rows: 60, quarantined_rows: 39, condemned_rows: 1, ..RunResult::default() };
        let finished = Transition::Finished {
            phase: EtlRunPhase::QualityGateFailed,
            reason: "QualityGate".into(),
            message: String::new(),
            result: Some(result),
            seconds: Some(1.0),
        };
        m.record("tx", &finished, 0.0);
        let text = m.render();
        for line in [
            r#"silverline_rows_total{dataset="tx",kind="valid"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="held_by_gate"} 60"#,
            r#"silverline_rows_total{dataset="tx",kind="quarantined"} 39"#,
            r#"silverline_runs_total{dataset="tx",result="quality_gate_failed"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_process_metrics_are_exported_unprefixed() {
        let text = Metrics::new().expect("metrics").render();
        for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"] {
            assert!(text.lines().any(|l| l.starts_with(name)), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn promotions_count_by_result_and_awaiting_gauges_drop_to_zero_when_none_is_left() {
        let m = Metrics::new().expect("metrics");
        m.record_promotion("tx", PromotionPhase::Promoted, 1_700_000_000.0);
        m.record_promotion("tx", PromotionPhase::Failed, 0.0);
        m.set_awaiting_approval(&[("tx".to_owned(), (2, 90.0))].into());
        let text = m.render();
        for line in [
            r#"silverline_promotions_total{dataset="tx",result="promoted"} 1"#,
            r#"silverline_promotions_total{dataset="tx",result="failed"} 1"#,
            r#"silverline_last_promotion_timestamp_seconds{dataset="tx"} 1700000000"#,
            r#"silverline_promotions_awaiting_approval{dataset="tx"} 2"#,
            r#"silverline_promotion_oldest_awaiting_seconds{dataset="tx"} 90"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.set_awaiting_approval(&Default::default());
        assert!(m.render().contains(r#"silverline_promotions_awaiting_approval{dataset="tx"} 0"#));
    }

    #[test]
    fn reconciles_are_counted_per_controller_and_every_controller_starts_at_zero() {
        let m = Metrics::new().expect("metrics");
        drop(m.reconcile_started("etlrun"));
        m.reconcile_failed("promotion", "conflict");
        let text = m.render();
        for line in [
            r#"silverline_reconciles_total{controller="etlrun"} 1"#,
            r#"silverline_reconciles_total{controller="dataset"} 0"#,
            r#"silverline_reconciles_total{controller="promotion"} 0"#,
            r#"silverline_reconcile_errors_total{category="conflict",controller="promotion"} 1"#,
            r#"silverline_reconcile_duration_seconds_count{controller="etlrun"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
