//! Prometheus metrics. Labels are of low cardinality only: a dataset's namespace and name, result, reason, error
//! category — never run ids or the names of runs and Promotions. The alert rules that read them are `charts/silverline/files/prometheus-rules.yaml`
//! (what each alert means and who acts: docs/runbook.md).
//!
//! Besides counters of what happened, the operator exports what the alerts compare against, per dataset, from
//! the Dataset itself: its owners (`silverline_dataset_info`, so that an alert on a dataset routes to the team the
//! Dataset's `ownership` names), its quality threshold and its expected interval (from `schedule`). Gauges kept
//! from full counts (datasets, unfinished runs, promotions awaiting approval) are set per watch scope and
//! merged, so that one watch per namespace never zeroes another namespace's series.

mod schedule;

use crate::controllers::ControllerName;
use crate::failure::FailureReason;
use crate::lifecycle::Transition;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramTimer, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use silverline_crds::{AttemptOutcome, Dataset, EtlRun, EtlRunPhase, Promotion, PromotionPhase, RunResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

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
    lake_checks: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub leader: IntGauge,
    pub promotions: IntCounterVec,
    promotions_awaiting: ScopedGauge,
    promotion_oldest_awaiting: ScopedGauge,
    pub last_promotion: GaugeVec,
    /// `silverline_dataset_info{namespace, dataset, owner_team, steward, escalation}` = 1: the Dataset's
    /// `ownership`, for routing an alert on the dataset to its owners.
    dataset_info: ScopedGauge,
    dataset_max_quarantine_rate: ScopedGauge,
    dataset_expected_interval: ScopedGauge,
    /// The quarantine rate the last finished run's quality gate judged (for a replay, rows failing anew).
    pub last_gated_quarantine_rate: GaugeVec,
    pub last_avg_attempt_count: GaugeVec,
    pub last_auto_condemnation_rate: GaugeVec,
    pub last_run_duration: GaugeVec,
    pub last_run_input_rows: GaugeVec,
    pub run_input_rows: IntCounterVec,
    /// Per dataset and state (`waiting`, `running`, `validating`): how long the unfinished run that changed
    /// longest ago has gone without a change of its status.
    run_oldest_unchanged: ScopedGauge,
    /// Expected intervals by schedule text: a schedule is read once, not on every export.
    intervals: Mutex<HashMap<String, Option<f64>>>,
    /// Per dataset, when the runs whose figures the last-run gauges hold finished (see [`LastRuns`]).
    last_runs: Mutex<HashMap<DatasetKey, LastRuns>>,
}

/// A dataset as its series are labelled: `namespace` (of the resources that name it) and `dataset` (its name).
/// One name in two namespaces is two datasets, each with series of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetSeries<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A [`DatasetSeries`] as a map key: `(namespace, name)`.
type DatasetKey = (String, String);

impl<'a> DatasetSeries<'a> {
    pub fn new(namespace: &'a str, name: &'a str) -> DatasetSeries<'a> {
        DatasetSeries { namespace, name }
    }

    /// The dataset an EtlRun or a Promotion belongs to: its `spec.dataset` in its own namespace.
    pub fn of<K: kube::Resource>(resource: &'a K, dataset: &'a str) -> DatasetSeries<'a> {
        DatasetSeries::new(resource.meta().namespace.as_deref().unwrap_or_default(), dataset)
    }

    fn key(self) -> DatasetKey {
        (self.namespace.to_owned(), self.name.to_owned())
    }

    fn from_key(key: &'a DatasetKey) -> DatasetSeries<'a> {
        DatasetSeries::new(&key.0, &key.1)
    }

    /// The label values of one of the dataset's series: its namespace and name, then `rest`.
    fn labels(self, rest: &[&'a str]) -> Vec<&'a str> {
        [self.namespace, self.name].into_iter().chain(rest.iter().copied()).collect()
    }
}

/// When the runs a dataset's last-run gauges describe finished, in seconds since the epoch: the last run that
/// finished with a report (succeeded or stopped by its quality gate: the quarantine, gated, attempt and
/// auto-condemnation gauges) and the last that succeeded (duration and input rows).
#[derive(Debug, Clone, Copy, PartialEq)]
struct LastRuns {
    reported: f64,
    succeeded: f64,
}

impl Default for LastRuns {
    fn default() -> Self {
        LastRuns { reported: f64::NEG_INFINITY, succeeded: f64::NEG_INFINITY }
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("silverline".into()), None)?;
        let runs = IntCounterVec::new(
            Opts::new("runs_total", "EtlRuns finished, by result (succeeded, failed, quality_gate_failed)"),
            &["namespace", "dataset", "result"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new("attempts_total", "Attempts ended, by result and reason"),
            &["namespace", "dataset", "result", "reason"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("retries_total", "Attempts scheduled after a transient failure, by its reason"),
            &["namespace", "dataset", "reason"],
        )?;
        let run_duration = HistogramVec::new(
            HistogramOpts::new("run_duration_seconds", "From the first attempt's start to the run's end")
                .buckets(vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0]),
            &["namespace", "dataset", "result"],
        )?;
        let rows = IntCounterVec::new(
            Opts::new("rows_total", "Rows of finished runs, by kind (valid, quarantined, condemned)"),
            &["namespace", "dataset", "kind"],
        )?;
        let last_quarantine_rate = GaugeVec::new(
            Opts::new("last_quarantine_rate", "Quarantine rate of the dataset's last finished run"),
            &["namespace", "dataset"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new("last_success_timestamp_seconds", "When the dataset's last run succeeded (freshness)"),
            &["namespace", "dataset"],
        )?;
        let reconciles =
            IntCounterVec::new(Opts::new("reconciles_total", "Reconciles, by controller"), &["controller"])?;
        let lake_checks = IntCounterVec::new(
            Opts::new("lake_checks_total", "Reads of a run's markers in the lake (_SUCCESS, reports), by dataset"),
            &["namespace", "dataset"],
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
            &["namespace", "dataset", "result"],
        )?;
        let promotions_awaiting = GaugeVec::new(
            Opts::new("promotions_awaiting_approval", "Promotions waiting for a reviewer's approval"),
            &["namespace", "dataset"],
        )?;
        let promotion_oldest_awaiting = GaugeVec::new(
            Opts::new("promotion_oldest_awaiting_seconds", "Age of the oldest Promotion awaiting approval"),
            &["namespace", "dataset"],
        )?;
        let dataset_info = GaugeVec::new(
            Opts::new("dataset_info", "1 per Dataset, labelled with the owners its spec.ownership names"),
            &["namespace", "dataset", "owner_team", "steward", "escalation"],
        )?;
        let dataset_max_quarantine_rate = GaugeVec::new(
            Opts::new("dataset_max_quarantine_rate", "The Dataset's quality gate: spec.quality.maxQuarantineRate"),
            &["namespace", "dataset"],
        )?;
        let dataset_expected_interval = GaugeVec::new(
            Opts::new(
                "dataset_expected_interval_seconds",
                "Longest gap between two times of the Dataset's spec.schedule (absent without a schedule)",
            ),
            &["namespace", "dataset"],
        )?;
        let last_gated_quarantine_rate = GaugeVec::new(
            Opts::new(
                "last_gated_quarantine_rate",
                "Quarantine rate the quality gate judged in the dataset's last finished run (a replay: rows failing anew)",
            ),
            &["namespace", "dataset"],
        )?;
        let last_avg_attempt_count = GaugeVec::new(
            Opts::new("last_avg_attempts", "Mean attempt count of the quarantined rows of the last finished run"),
            &["namespace", "dataset"],
        )?;
        let last_auto_condemnation_rate = GaugeVec::new(
            Opts::new(
                "last_auto_condemnation_rate",
                "Rows condemned for reaching maxAttempts per input row, in the last finished run",
            ),
            &["namespace", "dataset"],
        )?;
        let last_run_duration = GaugeVec::new(
            Opts::new("last_run_duration_seconds", "Duration of the dataset's last succeeded run"),
            &["namespace", "dataset"],
        )?;
        let last_run_input_rows = GaugeVec::new(
            Opts::new("last_run_input_rows", "Input rows of the dataset's last succeeded run"),
            &["namespace", "dataset"],
        )?;
        let run_input_rows = IntCounterVec::new(
            Opts::new("run_input_rows_total", "Input rows of succeeded runs"),
            &["namespace", "dataset"],
        )?;
        let run_oldest_unchanged = GaugeVec::new(
            Opts::new(
                "run_oldest_unchanged_seconds",
                "Longest time an unfinished run of the dataset has gone without a status change, by state",
            ),
            &["namespace", "dataset", "state"],
        )?;
        let last_promotion = GaugeVec::new(
            Opts::new("last_promotion_timestamp_seconds", "When the dataset's current version was last promoted"),
            &["namespace", "dataset"],
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
        for collector in [
            &dataset_info,
            &dataset_max_quarantine_rate,
            &dataset_expected_interval,
            &last_gated_quarantine_rate,
            &last_avg_attempt_count,
            &last_auto_condemnation_rate,
            &last_run_duration,
            &last_run_input_rows,
            &run_oldest_unchanged,
        ] {
            registry.register(Box::new(collector.clone()))?;
        }
        registry.register(Box::new(run_input_rows.clone()))?;
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
            promotions_awaiting: ScopedGauge::new(promotions_awaiting, Gone::Zero),
            promotion_oldest_awaiting: ScopedGauge::new(promotion_oldest_awaiting, Gone::Zero),
            last_promotion,
            dataset_info: ScopedGauge::new(dataset_info, Gone::Remove),
            dataset_max_quarantine_rate: ScopedGauge::new(dataset_max_quarantine_rate, Gone::Remove),
            dataset_expected_interval: ScopedGauge::new(dataset_expected_interval, Gone::Remove),
            last_gated_quarantine_rate,
            last_avg_attempt_count,
            last_auto_condemnation_rate,
            last_run_duration,
            last_run_input_rows,
            run_input_rows,
            run_oldest_unchanged: ScopedGauge::new(run_oldest_unchanged, Gone::Remove),
            intervals: Mutex::default(),
            last_runs: Mutex::default(),
        })
    }

    /// Creates a dataset's series at zero, so that `increase()` and `rate()` see their first change (a series that
    /// appears at 1 has no increase to show).
    pub fn init_dataset(&self, dataset: DatasetSeries) {
        for result in ["succeeded", "failed", "quality_gate_failed"] {
            self.runs.with_label_values(&dataset.labels(&[result]));
        }
        for kind in ROW_KINDS {
            self.rows.with_label_values(&dataset.labels(&[kind]));
        }
        for result in ["promoted", "rejected", "failed"] {
            self.promotions.with_label_values(&dataset.labels(&[result]));
        }
        self.lake_checks.with_label_values(&dataset.labels(&[]));
        self.run_input_rows.with_label_values(&dataset.labels(&[]));
        // The circuit-breaker alert counts the increase of this series.
        self.attempts.with_label_values(&dataset.labels(&["failed", FailureReason::CircuitBreaker.label()]));
    }

    /// Counts a reconcile of `controller` and measures it until the returned timer is dropped.
    pub fn reconcile_started(&self, controller: &str) -> HistogramTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        self.reconcile_duration.with_label_values(&[controller]).start_timer()
    }

    /// Counts a read of a run's markers in the lake.
    pub fn lake_check(&self, dataset: DatasetSeries) {
        self.lake_checks.with_label_values(&dataset.labels(&[])).inc();
    }

    pub fn reconcile_failed(&self, controller: &str, category: &str) {
        self.reconcile_errors.with_label_values(&[controller, category]).inc();
    }

    /// Records a change of an EtlRun, once it is written.
    pub fn record(&self, dataset: DatasetSeries, transition: &Transition, now_seconds: f64) {
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
                self.attempts.with_label_values(&dataset.labels(&[result, reason])).inc();
                if retry_after.is_some() {
                    self.retries.with_label_values(&dataset.labels(&[reason])).inc();
                }
            }
            Transition::Finished { phase, result, seconds, .. } => {
                let label = phase_label(*phase);
                self.runs.with_label_values(&dataset.labels(&[label])).inc();
                if let Some(seconds) = seconds {
                    self.run_duration.with_label_values(&dataset.labels(&[label])).observe(*seconds);
                }
                if let Some(result) = result {
                    // A quality-gate failure's parsed rows are not valid output: the gate held them back.
                    let parsed = if *phase == EtlRunPhase::Succeeded { "valid" } else { "held_by_gate" };
                    self.rows.with_label_values(&dataset.labels(&[parsed])).inc_by(result.valid_rows);
                    self.rows.with_label_values(&dataset.labels(&["quarantined"])).inc_by(result.quarantined_rows);
                    self.rows.with_label_values(&dataset.labels(&["condemned"])).inc_by(result.condemned_rows);
                    self.last_quarantine_rate.with_label_values(&dataset.labels(&[])).set(result.quarantine_rate);
                    if matches!(phase, EtlRunPhase::Succeeded | EtlRunPhase::QualityGateFailed) {
                        self.set_reported(dataset, result);
                    }
                    self.stamp(dataset, |last| last.reported = last.reported.max(now_seconds));
                }
                if *phase == EtlRunPhase::Succeeded {
                    self.stamp(dataset, |last| last.succeeded = last.succeeded.max(now_seconds));
                    self.last_success.with_label_values(&dataset.labels(&[])).set(now_seconds);
                    self.set_succeeded(dataset, *seconds, result.as_ref());
                    if let Some(result) = result {
                        self.run_input_rows.with_label_values(&dataset.labels(&[])).inc_by(result.input_rows);
                    }
                }
            }
        }
    }

    /// Records a finished Promotion, once it is written.
    pub fn record_promotion(&self, dataset: DatasetSeries, phase: PromotionPhase, now_seconds: f64) {
        let result = match phase {
            PromotionPhase::Promoted => "promoted",
            PromotionPhase::Rejected => "rejected",
            PromotionPhase::Failed => "failed",
            PromotionPhase::AwaitingApproval | PromotionPhase::Promoting => return,
        };
        self.promotions.with_label_values(&dataset.labels(&[result])).inc();
        if phase == PromotionPhase::Promoted {
            self.last_promotion.with_label_values(&dataset.labels(&[])).set(now_seconds);
        }
    }

    /// Raises `last_promotion_timestamp_seconds` of each dataset to the latest `finishedAt` of its `Promoted`
    /// Promotions, so that after a restart or a change of leader it is known at once, not only after the next
    /// promotion.
    pub fn restore_last_promotions(&self, promotions: &[&Promotion]) {
        for promotion in promotions.iter().filter(|p| p.phase() == Some(PromotionPhase::Promoted)) {
            let Some(finished) = promotion.status.as_ref().and_then(|s| s.finished_at.as_ref()) else { continue };
            raise_to(&self.last_promotion, DatasetSeries::of(*promotion, &promotion.spec.dataset), finished);
        }
    }

    /// Sets the awaiting-approval gauges of one watch scope (`""` for all namespaces) from a full count:
    /// `(count, oldest age in seconds)` per dataset (`(namespace, name)`). A dataset with none left reads 0.
    pub fn set_awaiting_approval(&self, scope: &str, awaiting: &BTreeMap<(String, String), (i64, f64)>) {
        let series = |pick: fn(&(i64, f64)) -> f64| -> BTreeMap<Vec<String>, f64> {
            awaiting
                .iter()
                .map(|((namespace, name), counts)| (vec![namespace.clone(), name.clone()], pick(counts)))
                .collect()
        };
        self.promotions_awaiting.set(scope, series(|(count, _)| *count as f64));
        self.promotion_oldest_awaiting.set(scope, series(|(_, oldest)| *oldest));
    }

    /// Sets the per-dataset series of one watch scope from all its Datasets: owners, quality threshold, expected
    /// interval; and raises `last_success_timestamp_seconds` to the Dataset's `status.lastSuccessTime`, so that
    /// freshness is known at once after an operator restart or a change of leader, not only after the next run.
    /// The series of a Dataset that is gone are removed.
    pub fn set_datasets(&self, scope: &str, datasets: &[&Dataset]) {
        let mut info = BTreeMap::new();
        let mut max_rate = BTreeMap::new();
        let mut interval = BTreeMap::new();
        for dataset in datasets {
            let Some(name) = dataset.metadata.name.as_deref() else { continue };
            let series = DatasetSeries::new(dataset.metadata.namespace.as_deref().unwrap_or_default(), name);
            let owners = &dataset.spec.ownership;
            let labels =
                |rest: &[&str]| -> Vec<String> { series.labels(rest).into_iter().map(str::to_owned).collect() };
            info.insert(labels(&[&owners.team, &owners.steward, &owners.escalation]), 1.0);
            max_rate.insert(labels(&[]), dataset.spec.quality.max_quarantine_rate);
            if let Some(seconds) = dataset.spec.schedule.as_deref().and_then(|s| self.expected_interval(s)) {
                interval.insert(labels(&[]), seconds);
            }
            let last_success = dataset.status.as_ref().and_then(|s| s.last_success_time.as_ref());
            if let Some(time) = last_success {
                raise_to(&self.last_success, series, time);
            }
        }
        self.dataset_info.set(scope, info);
        self.dataset_max_quarantine_rate.set(scope, max_rate);
        self.dataset_expected_interval.set(scope, interval);
    }

    fn expected_interval(&self, schedule: &str) -> Option<f64> {
        let Ok(mut known) = self.intervals.lock() else { return schedule::expected_interval_seconds(schedule) };
        *known.entry(schedule.to_owned()).or_insert_with(|| schedule::expected_interval_seconds(schedule))
    }

    /// Sets `run_oldest_unchanged_seconds` of one watch scope from all its EtlRuns (see [`oldest_unchanged`]).
    /// Also restores the last-run gauges from the runs' statuses (see `Metrics::restore_last_runs`).
    pub fn set_runs(&self, scope: &str, runs: &[&EtlRun], now: Timestamp) {
        let series = oldest_unchanged(runs, now)
            .into_iter()
            .map(|(((namespace, name), state), seconds)| (vec![namespace, name, state.to_owned()], seconds))
            .collect();
        self.run_oldest_unchanged.set(scope, series);
        self.restore_last_runs(runs);
    }

    /// The gauges only a finished run's report (`_SUCCESS` or `_QUALITY_REPORT.json`) gives, as its `result`
    /// holds them: the rate its quality gate judged, the mean attempt count of its quarantined rows and its
    /// auto-condemnation rate. A result from before they were kept sets none of them.
    fn set_reported(&self, dataset: DatasetSeries, result: &RunResult) {
        let gauges = [
            (&self.last_gated_quarantine_rate, result.gated_quarantine_rate),
            (&self.last_avg_attempt_count, result.avg_attempt_count),
            (&self.last_auto_condemnation_rate, result.auto_condemnation_rate),
        ];
        for (gauge, value) in gauges {
            if let Some(value) = value {
                gauge.with_label_values(&dataset.labels(&[])).set(value);
            }
        }
    }

    /// The gauges of the last succeeded run: its duration and its input rows.
    fn set_succeeded(&self, dataset: DatasetSeries, seconds: Option<f64>, result: Option<&RunResult>) {
        if let Some(seconds) = seconds {
            self.last_run_duration.with_label_values(&dataset.labels(&[])).set(seconds);
        }
        if let Some(result) = result {
            self.last_run_input_rows.with_label_values(&dataset.labels(&[])).set(result.input_rows as f64);
        }
    }

    fn stamp(&self, dataset: DatasetSeries, update: impl FnOnce(&mut LastRuns)) {
        if let Ok(mut last) = self.last_runs.lock() {
            update(last.entry(dataset.key()).or_default());
        }
    }

    /// Sets each dataset's last-run gauges from the statuses of its latest finished runs, unless this process
    /// has recorded a finish as late: after an operator restart or a change of leader the gauges (and the alerts
    /// on them: quarantine rate, attempts, auto-condemnation, duration and volume) hold the last runs' figures at
    /// once, instead of being absent — and the alerts resolved — until the next run ends. A status written
    /// before `result` carried the gated rate, attempts and auto-condemnation leaves those three unset.
    fn restore_last_runs(&self, runs: &[&EtlRun]) {
        let Ok(mut stamps) = self.last_runs.lock() else { return };
        for (key, latest) in latest_finished(runs) {
            let dataset = DatasetSeries::from_key(&key);
            let stamp = stamps.entry(key.clone()).or_default();
            if let Some((at, result)) = latest.reported
                && at > stamp.reported
            {
                stamp.reported = at;
                self.last_quarantine_rate.with_label_values(&dataset.labels(&[])).set(result.quarantine_rate);
                self.set_reported(dataset, result);
            }
            if let Some((at, seconds, result)) = latest.succeeded
                && at > stamp.succeeded
            {
                stamp.succeeded = at;
                self.set_succeeded(dataset, seconds, result);
            }
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

/// A time as a gauge holds it: seconds since the epoch.
pub fn epoch_seconds(time: Timestamp) -> f64 {
    time.as_millisecond() as f64 / 1000.0
}

/// Raises a dataset's timestamp gauge to a time a status records, never lowering it: a later time this process
/// recorded itself stands.
fn raise_to(gauge: &GaugeVec, dataset: DatasetSeries, time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) {
    let gauge = gauge.with_label_values(&dataset.labels(&[]));
    gauge.set(gauge.get().max(epoch_seconds(time.0)));
}

/// How often the gauges kept from full counts are refreshed.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Calls `export` with every well-formed object of a controller's cache, once the cache holds its first full
/// list and then every [`EXPORT_INTERVAL`], for the gauges kept from full counts.
pub async fn export_from<K>(store: Store<DeserializeGuard<K>>, export: impl Fn(&[&K]))
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    if store.wait_until_ready().await.is_err() {
        // The cache's writer is gone with its controller: nothing to export, and nothing to end early.
        return std::future::pending().await;
    }
    let mut ticker = tokio::time::interval(EXPORT_INTERVAL);
    loop {
        ticker.tick().await;
        let state = store.state();
        let objects: Vec<&K> = state.iter().filter_map(|guard| guard.0.as_ref().ok()).collect();
        export(&objects);
    }
}

/// The states of an unfinished run for `run_oldest_unchanged_seconds`: `running` (its attempt's Job runs:
/// condition `Progressing` reason `AttemptRunning`), `validating` (looking for the run's report in the lake:
/// `AwaitingReport`), or `waiting` for anything else (a missing or invalid Dataset, a missing credentials Secret,
/// a pod that cannot be created, an unreadable lake, the next attempt's backoff).
pub const RUN_STATES: [&str; 3] = ["waiting", "running", "validating"];

/// Per dataset (`(namespace, name)`) and state, the longest time one of the unfinished runs has gone without a
/// change of its status: since the latest of its creation, its conditions' transitions and its attempts' starts
/// and ends.
pub fn oldest_unchanged(runs: &[&EtlRun], now: Timestamp) -> BTreeMap<(DatasetKey, &'static str), f64> {
    let mut oldest: BTreeMap<(DatasetKey, &'static str), f64> = BTreeMap::new();
    for run in runs {
        let status = run.status.clone().unwrap_or_default();
        if status.phase.is_some_and(EtlRunPhase::is_terminal) {
            continue;
        }
        let progressing = status.conditions.iter().find(|c| c.type_ == crate::lifecycle::CONDITION_PROGRESSING);
        let state = match (status.phase, progressing.map(|c| c.reason.as_str())) {
            (Some(EtlRunPhase::Running), Some("AttemptRunning")) => "running",
            (Some(EtlRunPhase::Validating), Some("AwaitingReport")) => "validating",
            _ => "waiting",
        };
        let changes = run.metadata.creation_timestamp.iter().map(|t| t.0);
        let conditions = status.conditions.iter().map(|c| c.last_transition_time.0);
        let attempts =
            status.attempts.iter().flat_map(|a| [a.started_at.as_ref(), a.finished_at.as_ref()]).flatten().map(|t| t.0);
        let Some(last_change) = changes.chain(conditions).chain(attempts).max() else { continue };
        let seconds = now.duration_since(last_change).as_secs_f64().max(0.0);
        let entry = oldest.entry((DatasetSeries::of(*run, &run.spec.dataset).key(), state)).or_default();
        *entry = entry.max(seconds);
    }
    oldest
}

/// A dataset's latest finished runs, as [`latest_finished`] finds them: when each finished (seconds since the
/// epoch), the result of the last one with a report, and the duration and result of the last that succeeded.
#[derive(Debug, Default, PartialEq)]
struct LatestFinished<'a> {
    reported: Option<(f64, &'a RunResult)>,
    succeeded: Option<(f64, Option<f64>, Option<&'a RunResult>)>,
}

/// Per dataset, its latest run that finished with a report (`Succeeded` or `QualityGateFailed`, with a
/// `result`) and its latest `Succeeded` run, by `finishedAt`; the duration is the run's, from its first
/// attempt's start to its finish, as the operator measured it when the run ended.
fn latest_finished<'a>(runs: &[&'a EtlRun]) -> BTreeMap<DatasetKey, LatestFinished<'a>> {
    let mut latest: BTreeMap<DatasetKey, LatestFinished<'a>> = BTreeMap::new();
    for run in runs {
        let Some(status) = run.status.as_ref() else { continue };
        let Some(finished) = status.finished_at.as_ref() else { continue };
        let at = epoch_seconds(finished.0);
        let entry = latest.entry(DatasetSeries::of(*run, &run.spec.dataset).key()).or_default();
        let reported = matches!(status.phase, Some(EtlRunPhase::Succeeded | EtlRunPhase::QualityGateFailed));
        if let Some(result) = status.result.as_ref().filter(|_| reported)
            && entry.reported.is_none_or(|(known, _)| at > known)
        {
            entry.reported = Some((at, result));
        }
        if status.phase == Some(EtlRunPhase::Succeeded) && entry.succeeded.is_none_or(|(known, ..)| at > known) {
            let seconds = status.started_at.as_ref().map(|s| finished.0.duration_since(s.0).as_secs_f64().max(0.0));
            entry.succeeded = Some((at, seconds, status.result.as_ref()));
        }
    }
    latest
}

/// What happens to a series of a [`ScopedGauge`] that no scope names any more.
#[derive(Clone, Copy)]
enum Gone {
    /// It is removed (the thing it described is gone).
    Remove,
    /// It reads 0 (a count that dropped to none).
    Zero,
}

/// A gauge family set from full counts, one per watch scope (all namespaces, or each watched namespace): its
/// series are the union of the scopes' latest counts (the larger value where two scopes name the same series).
struct ScopedGauge {
    gauge: GaugeVec,
    gone: Gone,
    scopes: Mutex<BTreeMap<String, BTreeMap<Vec<String>, f64>>>,
}

impl ScopedGauge {
    fn new(gauge: GaugeVec, gone: Gone) -> ScopedGauge {
        ScopedGauge { gauge, gone, scopes: Mutex::default() }
    }

    fn set(&self, scope: &str, series: BTreeMap<Vec<String>, f64>) {
        let Ok(mut scopes) = self.scopes.lock() else { return };
        let before = Self::union(&scopes);
        scopes.insert(scope.to_owned(), series);
        let after = Self::union(&scopes);
        for labels in before.keys().filter(|labels| !after.contains_key(*labels)) {
            let values: Vec<&str> = labels.iter().map(String::as_str).collect();
            match self.gone {
                // An error only says the series was not there.
                Gone::Remove => drop(self.gauge.remove_label_values(&values)),
                Gone::Zero => self.gauge.with_label_values(&values).set(0.0),
            }
        }
        for (labels, value) in after {
            let values: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.gauge.with_label_values(&values).set(value);
        }
    }

    fn union(scopes: &BTreeMap<String, BTreeMap<Vec<String>, f64>>) -> BTreeMap<Vec<String>, f64> {
        let mut all: BTreeMap<Vec<String>, f64> = BTreeMap::new();
        for (labels, value) in scopes.values().flatten() {
            let entry = all.entry(labels.clone()).or_insert(*value);
            *entry = entry.max(*value);
        }
        all
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
    use silverline_crds::report::RunReport;
    use silverline_crds::{AttemptStatus, RunResult};
    use std::time::Duration;

    const TX: DatasetSeries = DatasetSeries { namespace: "etl", name: "tx" };

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
        m.record(TX, &Transition::AttemptEnded { attempt: failed, retry_after: Some(Duration::from_secs(30)) }, 0.0);
        let ok = attempt(AttemptOutcome::Succeeded, "SuccessVerified");
        m.record(TX, &Transition::AttemptEnded { attempt: ok, retry_after: None }, 0.0);
        let result = RunResult {
            valid_rows: 7,
            quarantined_rows: 2,
            condemned_rows: 1,
            quarantine_rate: 0.2,
            ..RunResult::default()
        };
        m.record(
            TX,
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
            r#"silverline_attempts_total{dataset="tx",namespace="etl",reason="transient_failure",result="failed"} 1"#,
            r#"silverline_attempts_total{dataset="tx",namespace="etl",reason="none",result="succeeded"} 1"#,
            r#"silverline_retries_total{dataset="tx",namespace="etl",reason="transient_failure"} 1"#,
            r#"silverline_runs_total{dataset="tx",namespace="etl",result="succeeded"} 1"#,
            r#"silverline_rows_total{dataset="tx",kind="valid",namespace="etl"} 7"#,
            r#"silverline_rows_total{dataset="tx",kind="quarantined",namespace="etl"} 2"#,
            r#"silverline_last_quarantine_rate{dataset="tx",namespace="etl"} 0.2"#,
            r#"silverline_last_success_timestamp_seconds{dataset="tx",namespace="etl"} 1700000000"#,
            r#"silverline_run_duration_seconds_count{dataset="tx",namespace="etl",result="succeeded"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("20240101T000000Z"), "run ids never become labels");
    }

    #[test]
    fn a_quality_gate_failures_rows_are_not_counted_as_valid_and_a_datasets_series_start_at_zero() {
        let m = Metrics::new().expect("metrics");
        m.init_dataset(TX);
        let zero = m.render();
        for line in [
            r#"silverline_runs_total{dataset="tx",namespace="etl",result="succeeded"} 0"#,
            r#"silverline_runs_total{dataset="tx",namespace="etl",result="failed"} 0"#,
            r#"silverline_runs_total{dataset="tx",namespace="etl",result="quality_gate_failed"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="valid",namespace="etl"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="quarantined",namespace="etl"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="condemned",namespace="etl"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="held_by_gate",namespace="etl"} 0"#,
            r#"silverline_promotions_total{dataset="tx",namespace="etl",result="promoted"} 0"#,
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
        m.record(TX, &finished, 0.0);
        let text = m.render();
        for line in [
            r#"silverline_rows_total{dataset="tx",kind="valid",namespace="etl"} 0"#,
            r#"silverline_rows_total{dataset="tx",kind="held_by_gate",namespace="etl"} 60"#,
            r#"silverline_rows_total{dataset="tx",kind="quarantined",namespace="etl"} 39"#,
            r#"silverline_runs_total{dataset="tx",namespace="etl",result="quality_gate_failed"} 1"#,
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
        m.record_promotion(TX, PromotionPhase::Promoted, 1_700_000_000.0);
        m.record_promotion(TX, PromotionPhase::Failed, 0.0);
        m.set_awaiting_approval("", &[(("etl".to_owned(), "tx".to_owned()), (2, 90.0))].into());
        let text = m.render();
        for line in [
            r#"silverline_promotions_total{dataset="tx",namespace="etl",result="promoted"} 1"#,
            r#"silverline_promotions_total{dataset="tx",namespace="etl",result="failed"} 1"#,
            r#"silverline_last_promotion_timestamp_seconds{dataset="tx",namespace="etl"} 1700000000"#,
            r#"silverline_promotions_awaiting_approval{dataset="tx",namespace="etl"} 2"#,
            r#"silverline_promotion_oldest_awaiting_seconds{dataset="tx",namespace="etl"} 90"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.set_awaiting_approval("", &Default::default());
        assert!(m.render().contains(r#"silverline_promotions_awaiting_approval{dataset="tx",namespace="etl"} 0"#));
    }

    #[test]
    fn after_a_restart_the_last_promotion_time_comes_from_the_promoted_promotions() {
        let promotion = |dataset: &str, phase: &str, finished: &str| -> Promotion {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "etl.silverline.dev/v1alpha1", "kind": "Promotion",
                "metadata": {"name": "p", "namespace": "etl"},
                "spec": {"dataset": dataset, "reason": "weekly load"},
                "status": {"phase": phase, "finishedAt": finished},
            }))
            .expect("a Promotion")
        };
        let promotions = [
            promotion("tx", "Promoted", "2023-11-14T22:13:20Z"),
            promotion("tx", "Promoted", "2023-11-14T22:13:30Z"),
            promotion("tx", "Rejected", "2023-11-14T23:00:00Z"),
            promotion("orders", "Failed", "2023-11-14T23:00:00Z"),
        ];
        let refs: Vec<&Promotion> = promotions.iter().collect();
        let m = Metrics::new().expect("metrics");
        m.restore_last_promotions(&refs);
        let text = m.render();
        assert!(
            text.contains(r#"silverline_last_promotion_timestamp_seconds{dataset="tx",namespace="etl"} 1700000010"#),
            "{text}"
        );
        assert!(!text.contains(r#"silverline_last_promotion_timestamp_seconds{dataset="orders","#), "{text}");
        // A later promotion this process recorded stays.
        m.record_promotion(TX, PromotionPhase::Promoted, 1_800_000_000.0);
        m.restore_last_promotions(&refs);
        assert!(
            m.render()
                .contains(r#"silverline_last_promotion_timestamp_seconds{dataset="tx",namespace="etl"} 1800000000"#)
        );
    }

    fn finished(phase: EtlRunPhase, result: RunResult, seconds: f64) -> Transition {
        Transition::Finished {
            phase,
            reason: String::new(),
            message: String::new(),
            result: Some(result),
            seconds: Some(seconds),
        }
    }

    fn report(gated: Option<f64>, avg_attempt_count: f64, auto_condemnation_rate: f64) -> Box<RunReport> {
        let mut report: RunReport = serde_json::from_value(serde_json::json!({
            "outcome": "success", "run_id": "20240101T000000Z-abc-a1", "dataset": "tx", "schema_v": "v1",
            "lake_uri": "file:///lake", "input_uri": "in.csv",
            "input_checksum": "", "inputs": [], "worker_version": "", "git_sha": "", "started_at": "",
            "finished_at": "", "duration_seconds": 1.0, "input_rows": 100, "valid_rows_count": 90,
            "quarantined_rows_count": 9, "condemned_rows_count": 1, "quarantine_rate": 0.09,
            "error_type_distribution": {}, "condemned_reason_distribution": {}, "avg_attempt_count": 0.0,
            "duplicate_detection_rate": 0.0, "auto_condemnation_rate": 0.0, "files": []
        }))
        .expect("a report");
        report.gated_quarantine_rate = gated;
        report.avg_attempt_count = avg_attempt_count;
        report.auto_condemnation_rate = auto_condemnation_rate;
        Box::new(report)
    }

    #[test]
    fn a_finished_runs_report_sets_the_quality_gauges_and_a_succeeded_run_its_duration_and_volume() {
        let m = Metrics::new().expect("metrics");
        m.init_dataset(TX);
        assert!(m.render().contains(
            r#"silverline_attempts_total{dataset="tx",namespace="etl",reason="circuit_breaker",result="failed"} 0"#
        ));
        // A finished run's result is its report's (as the lifecycle builds it from `_SUCCESS`).
        let result = RunResult::from_report(&report(Some(0.02), 1.75, 0.006), "s3://l/_SUCCESS");
        let succeeded = finished(EtlRunPhase::Succeeded, result, 42.0);
        m.record(TX, &succeeded, 0.0);
        let text = m.render();
        for line in [
            r#"silverline_last_gated_quarantine_rate{dataset="tx",namespace="etl"} 0.02"#,
            r#"silverline_last_avg_attempts{dataset="tx",namespace="etl"} 1.75"#,
            r#"silverline_last_auto_condemnation_rate{dataset="tx",namespace="etl"} 0.006"#,
            r#"silverline_last_run_duration_seconds{dataset="tx",namespace="etl"} 42"#,
            r#"silverline_last_run_input_rows{dataset="tx",namespace="etl"} 100"#,
            r#"silverline_run_input_rows_total{dataset="tx",namespace="etl"} 100"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }

        // A quality-gate failure: its report's rates count (without a gated rate, the plain one), its duration
        // and volume do not (they describe succeeded runs).
        let gate =
            finished(EtlRunPhase::QualityGateFailed, RunResult::from_report(&report(None, 1.0, 0.0), "s3://l/_Q"), 7.0);
        m.record(TX, &gate, 0.0);
        let text = m.render();
        for line in [
            r#"silverline_last_gated_quarantine_rate{dataset="tx",namespace="etl"} 0.09"#,
            r#"silverline_last_avg_attempts{dataset="tx",namespace="etl"} 1"#,
            r#"silverline_last_auto_condemnation_rate{dataset="tx",namespace="etl"} 0"#,
            r#"silverline_last_run_duration_seconds{dataset="tx",namespace="etl"} 42"#,
            r#"silverline_run_input_rows_total{dataset="tx",namespace="etl"} 100"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }

        // A failed run (whatever result it carried) or another change sets none of the report's gauges.
        let other = RunResult::from_report(&report(Some(0.5), 3.0, 0.5), "");
        m.record(TX, &finished(EtlRunPhase::Failed, other, 1.0), 0.0);
        m.record(TX, &Transition::Waiting { reason: String::new(), message: String::new() }, 0.0);
        let text = m.render();
        assert!(text.contains(r#"silverline_last_avg_attempts{dataset="tx",namespace="etl"} 1"#), "{text}");
        assert!(text.contains(r#"silverline_last_gated_quarantine_rate{dataset="tx",namespace="etl"} 0.09"#), "{text}");
    }

    fn dataset(namespace: &str, name: &str, schedule: Option<&str>, last_success: Option<&str>) -> Dataset {
        let mut dataset =
            Dataset::from_manifest(include_str!("../../examples/datasets/transactions.yaml")).expect("example");
        dataset.metadata.name = Some(name.into());
        dataset.metadata.namespace = Some(namespace.into());
        dataset.spec.schedule = schedule.map(str::to_owned);
        dataset.status = last_success.map(|t| silverline_crds::dataset::DatasetStatus {
            last_success_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.parse().expect("time"))),
            ..Default::default()
        });
        dataset
    }

    #[test]
    fn datasets_export_their_owners_threshold_and_expected_interval_until_they_are_gone() {
        let m = Metrics::new().expect("metrics");
        let tx = dataset("etl", "transactions", Some("0 * * * *"), Some("2023-11-14T22:13:20Z"));
        let mut orders = dataset("sales", "orders", None, None);
        orders.spec.quality.max_quarantine_rate = 0.1;
        orders.spec.ownership.team = "sales-data".into();
        // The same name in another namespace is another dataset: its own owners, threshold and schedule.
        let mut same_name = dataset("zzz", "transactions", Some("@daily"), None);
        same_name.spec.quality.max_quarantine_rate = 0.2;
        same_name.spec.ownership.team = "zzz-data".into();
        m.set_datasets("", &[&tx, &orders, &same_name]);
        let text = m.render();
        for line in [
            r##"silverline_dataset_info{dataset="transactions",escalation="#payments-data-oncall",namespace="etl",owner_team="payments-data",steward="jane.doe@example.com"} 1"##,
            r##"silverline_dataset_info{dataset="orders",escalation="#payments-data-oncall",namespace="sales",owner_team="sales-data",steward="jane.doe@example.com"} 1"##,
            r##"silverline_dataset_info{dataset="transactions",escalation="#payments-data-oncall",namespace="zzz",owner_team="zzz-data",steward="jane.doe@example.com"} 1"##,
            r#"silverline_dataset_max_quarantine_rate{dataset="transactions",namespace="etl"} 0.01"#,
            r#"silverline_dataset_max_quarantine_rate{dataset="orders",namespace="sales"} 0.1"#,
            r#"silverline_dataset_max_quarantine_rate{dataset="transactions",namespace="zzz"} 0.2"#,
            r#"silverline_dataset_expected_interval_seconds{dataset="transactions",namespace="etl"} 3600"#,
            r#"silverline_dataset_expected_interval_seconds{dataset="transactions",namespace="zzz"} 86400"#,
            r#"silverline_last_success_timestamp_seconds{dataset="transactions",namespace="etl"} 1700000000"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(text.matches("silverline_dataset_info{").count(), 3, "one owner series per dataset:\n{text}");
        assert!(!text.contains(r#"silverline_last_success_timestamp_seconds{dataset="transactions",namespace="zzz""#));
        assert!(!text.contains(r#"silverline_dataset_expected_interval_seconds{dataset="orders","#), "no schedule");

        // A newer success from a run is kept; an older status time never lowers it.
        m.last_success.with_label_values(&["etl", "transactions"]).set(1_800_000_000.0);
        m.set_datasets("", &[&tx, &orders]);
        assert!(m.render().contains(
            r#"silverline_last_success_timestamp_seconds{dataset="transactions",namespace="etl"} 1800000000"#
        ));

        // orders is deleted: its series go; transactions' stay.
        m.set_datasets("", &[&tx]);
        let text = m.render();
        assert!(!text.contains(r#"dataset="orders""#), "orders is gone:\n{text}");
        assert!(
            text.contains(r#"silverline_dataset_max_quarantine_rate{dataset="transactions",namespace="etl"} 0.01"#)
        );
    }

    #[test]
    fn a_watch_scope_never_erases_another_scopes_series() {
        let m = Metrics::new().expect("metrics");
        m.set_awaiting_approval("etl", &[(("etl".to_owned(), "tx".to_owned()), (2, 90.0))].into());
        m.set_awaiting_approval("sales", &[(("sales".to_owned(), "orders".to_owned()), (1, 30.0))].into());
        m.set_awaiting_approval("sales", &Default::default());
        let text = m.render();
        assert!(text.contains(r#"silverline_promotions_awaiting_approval{dataset="tx",namespace="etl"} 2"#), "{text}");
        assert!(
            text.contains(r#"silverline_promotions_awaiting_approval{dataset="orders",namespace="sales"} 0"#),
            "{text}"
        );
        let tx = dataset("etl", "transactions", None, None);
        let orders = dataset("sales", "orders", None, None);
        m.set_datasets("etl", &[&tx]);
        m.set_datasets("sales", &[&orders]);
        m.set_datasets("sales", &[]);
        let text = m.render();
        assert!(
            text.contains(r#"silverline_dataset_max_quarantine_rate{dataset="transactions",namespace="etl"} 0.01"#),
            "{text}"
        );
        assert!(!text.contains(r#"silverline_dataset_max_quarantine_rate{dataset="orders","#), "{text}");
    }

    fn run(dataset: &str, status: serde_json::Value) -> EtlRun {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "etl.silverline.dev/v1alpha1", "kind": "EtlRun",
            "metadata": {"name": "r", "namespace": "etl", "creationTimestamp": "2023-11-14T22:00:00Z"},
            "spec": {"dataset": dataset, "input": "s3://b/in/"},
            "status": status,
        }))
        .expect("an EtlRun")
    }

    fn progressing(reason: &str, at: &str) -> serde_json::Value {
        serde_json::json!([{"type": "Progressing", "status": "True", "reason": reason, "message": "",
            "lastTransitionTime": at}])
    }

    #[test]
    fn unfinished_runs_are_aged_by_their_last_status_change_per_dataset_and_state() {
        let now: Timestamp = "2023-11-14T23:00:00Z".parse().expect("time");
        let runs = [
            // No status yet: waiting since its creation (1 h).
            run("tx", serde_json::json!({})),
            // Waiting for a Secret for 20 min, while its attempt started 40 min ago.
            run(
                "tx",
                serde_json::json!({"phase": "Running",
                "conditions": progressing("CredentialsSecretNotFound", "2023-11-14T22:40:00Z"),
                "attempts": [{"attempt": 1, "runId": "x-a1", "jobName": "r-a1", "startedAt": "2023-11-14T22:20:00Z"}]}),
            ),
            // Running for 30 min; an older run's attempt ended 50 min ago and the next started 30 min ago.
            run(
                "tx",
                serde_json::json!({"phase": "Running",
                "conditions": progressing("AttemptRunning", "2023-11-14T22:10:00Z"),
                "attempts": [
                    {"attempt": 1, "runId": "x-a1", "jobName": "r-a1", "startedAt": "2023-11-14T22:05:00Z", "finishedAt": "2023-11-14T22:10:00Z", "outcome": "Failed"},
                    {"attempt": 2, "runId": "x-a2", "jobName": "r-a2", "startedAt": "2023-11-14T22:30:00Z"}]}),
            ),
            run(
                "orders",
                serde_json::json!({"phase": "Validating",
                "conditions": progressing("AwaitingReport", "2023-11-14T22:55:00Z")}),
            ),
            // Finished runs are not aged, however old.
            run(
                "orders",
                serde_json::json!({"phase": "Succeeded",
                "conditions": progressing("Finished", "2023-11-14T22:01:00Z")}),
            ),
        ];
        let refs: Vec<&EtlRun> = runs.iter().collect();
        let oldest = oldest_unchanged(&refs, now);
        let key = |name: &str| ("etl".to_owned(), name.to_owned());
        let expected: BTreeMap<(DatasetKey, &str), f64> = [
            ((key("tx"), "waiting"), 3600.0),
            ((key("tx"), "running"), 1800.0),
            ((key("orders"), "validating"), 300.0),
        ]
        .into();
        assert_eq!(oldest, expected);

        let m = Metrics::new().expect("metrics");
        m.set_runs("", &refs, now);
        assert!(
            m.render().contains(
                r#"silverline_run_oldest_unchanged_seconds{dataset="tx",namespace="etl",state="waiting"} 3600"#
            )
        );
        m.set_runs("", &[], now);
        assert!(!m.render().contains("silverline_run_oldest_unchanged_seconds{"), "no unfinished run, no series");
    }

    fn finished_run(dataset: &str, phase: &str, started: &str, finished: &str, result: serde_json::Value) -> EtlRun {
        run(
            dataset,
            serde_json::json!({"phase": phase, "startedAt": started, "finishedAt": finished, "result": result}),
        )
    }

    fn result_json(input_rows: u64, rate: f64, gated: Option<f64>) -> serde_json::Value {
        let mut result = serde_json::json!({"reportUri": "s3://l/_SUCCESS", "inputRows": input_rows, "validRows": 0,
            "quarantinedRows": 0, "condemnedRows": 0, "quarantineRate": rate, "durationSeconds": 1.0});
        if let Some(gated) = gated {
            result["gatedQuarantineRate"] = gated.into();
            result["avgAttemptCount"] = 1.5.into();
            result["autoCondemnationRate"] = 0.25.into();
        }
        result
    }

    #[test]
    fn after_a_restart_the_last_run_gauges_come_from_the_latest_finished_runs_statuses() {
        let runs = [
            finished_run(
                "tx",
                "Succeeded",
                "2023-11-14T22:00:00Z",
                "2023-11-14T22:01:00Z",
                result_json(10, 0.1, Some(0.1)),
            ),
            finished_run(
                "tx",
                "Succeeded",
                "2023-11-14T23:00:00Z",
                "2023-11-14T23:00:30Z",
                result_json(20, 0.0, Some(0.0)),
            ),
            // The latest report: a quality-gate failure (no success: duration and volume stay the success's).
            finished_run(
                "tx",
                "QualityGateFailed",
                "2023-11-15T00:00:00Z",
                "2023-11-15T00:02:00Z",
                result_json(30, 0.4, Some(0.35)),
            ),
            finished_run("tx", "Failed", "2023-11-15T01:00:00Z", "2023-11-15T01:00:10Z", serde_json::Value::Null),
            // A status from before the result carried the gated rate: the quarantine rate only.
            finished_run(
                "orders",
                "Succeeded",
                "2023-11-14T22:00:00Z",
                "2023-11-14T22:00:05Z",
                result_json(5, 0.2, None),
            ),
            run("orders", serde_json::json!({"phase": "Running", "startedAt": "2023-11-15T02:00:00Z"})),
        ];
        let refs: Vec<&EtlRun> = runs.iter().collect();
        let m = Metrics::new().expect("metrics");
        m.set_runs("", &refs, Timestamp::now());
        let text = m.render();
        for line in [
            r#"silverline_last_quarantine_rate{dataset="tx",namespace="etl"} 0.4"#,
            r#"silverline_last_gated_quarantine_rate{dataset="tx",namespace="etl"} 0.35"#,
            r#"silverline_last_avg_attempts{dataset="tx",namespace="etl"} 1.5"#,
            r#"silverline_last_auto_condemnation_rate{dataset="tx",namespace="etl"} 0.25"#,
            r#"silverline_last_run_duration_seconds{dataset="tx",namespace="etl"} 30"#,
            r#"silverline_last_run_input_rows{dataset="tx",namespace="etl"} 20"#,
            r#"silverline_last_quarantine_rate{dataset="orders",namespace="etl"} 0.2"#,
            r#"silverline_last_run_duration_seconds{dataset="orders",namespace="etl"} 5"#,
            r#"silverline_last_run_input_rows{dataset="orders",namespace="etl"} 5"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains(r#"silverline_last_gated_quarantine_rate{dataset="orders","#), "{text}");

        // A finish this process records is not overwritten by older statuses; a later status overwrites it.
        let result = RunResult { input_rows: 99, quarantine_rate: 0.01, ..RunResult::default() };
        let now = Timestamp::now().as_millisecond() as f64 / 1000.0;
        m.record(TX, &finished(EtlRunPhase::Succeeded, result, 7.0), now);
        m.set_runs("", &refs, Timestamp::now());
        let text = m.render();
        assert!(text.contains(r#"silverline_last_run_input_rows{dataset="tx",namespace="etl"} 99"#), "{text}");
        assert!(text.contains(r#"silverline_last_quarantine_rate{dataset="tx",namespace="etl"} 0.01"#), "{text}");
        let later = finished_run(
            "tx",
            "Succeeded",
            "2999-01-01T00:00:00Z",
            "2999-01-01T00:00:09Z",
            result_json(42, 0.0, Some(0.0)),
        );
        m.set_runs("", &[&later], Timestamp::now());
        let text = m.render();
        assert!(text.contains(r#"silverline_last_run_input_rows{dataset="tx",namespace="etl"} 42"#), "{text}");
        assert!(text.contains(r#"silverline_last_run_duration_seconds{dataset="tx",namespace="etl"} 9"#), "{text}");
    }

    #[test]
    fn one_dataset_name_in_two_namespaces_is_two_datasets_with_series_of_their_own() {
        let m = Metrics::new().expect("metrics");
        let other = DatasetSeries::new("other", "tx");
        m.init_dataset(TX);
        m.init_dataset(other);
        let result = RunResult { input_rows: 10, quarantine_rate: 0.1, ..RunResult::default() };
        m.record(TX, &finished(EtlRunPhase::Succeeded, result, 5.0), 1_700_000_000.0);
        m.record_promotion(other, PromotionPhase::Promoted, 1_700_000_100.0);
        // A run of `other` finished later, restored from its status: it never overwrites TX's gauges.
        let mut later = finished_run(
            "tx",
            "Succeeded",
            "2999-01-01T00:00:00Z",
            "2999-01-01T00:00:09Z",
            result_json(42, 0.5, Some(0.5)),
        );
        later.metadata.namespace = Some("other".into());
        m.set_runs("", &[&later], Timestamp::now());
        let text = m.render();
        for line in [
            r#"silverline_runs_total{dataset="tx",namespace="etl",result="succeeded"} 1"#,
            r#"silverline_runs_total{dataset="tx",namespace="other",result="succeeded"} 0"#,
            r#"silverline_last_success_timestamp_seconds{dataset="tx",namespace="etl"} 1700000000"#,
            r#"silverline_last_run_input_rows{dataset="tx",namespace="etl"} 10"#,
            r#"silverline_last_quarantine_rate{dataset="tx",namespace="etl"} 0.1"#,
            r#"silverline_last_run_input_rows{dataset="tx",namespace="other"} 42"#,
            r#"silverline_last_quarantine_rate{dataset="tx",namespace="other"} 0.5"#,
            r#"silverline_promotions_total{dataset="tx",namespace="etl",result="promoted"} 0"#,
            r#"silverline_promotions_total{dataset="tx",namespace="other",result="promoted"} 1"#,
            r#"silverline_last_promotion_timestamp_seconds{dataset="tx",namespace="other"} 1700000100"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"silverline_last_promotion_timestamp_seconds{dataset="tx",namespace="etl""#),
            "{text}"
        );
        assert!(
            !text.contains(r#"silverline_last_success_timestamp_seconds{dataset="tx",namespace="other""#),
            "{text}"
        );
    }

    /// `promtool check metrics` (the linter Prometheus ships) on everything the operator exports, every family
    /// with a series. promtool is built by scripts/test.sh (tests/tools/promtool), which sets SILVERLINE_PROMTOOL.
    #[test]
    #[ignore = "needs promtool (SILVERLINE_PROMTOOL): run ./scripts/test.sh"]
    fn promtool_check_metrics_finds_nothing_to_lint_in_what_the_operator_exports() {
        use std::io::Write;
        let promtool = std::env::var("SILVERLINE_PROMTOOL").expect("SILVERLINE_PROMTOOL names the promtool binary");
        let m = Metrics::new().expect("metrics");
        m.init_dataset(TX);
        let succeeded = finished(EtlRunPhase::Succeeded, RunResult::from_report(&report(None, 1.0, 0.0), ""), 3.0);
        m.record(TX, &succeeded, 1.0);
        m.record(
            TX,
            &Transition::AttemptEnded {
                attempt: attempt(AttemptOutcome::Failed, "TransientFailure"),
                retry_after: Some(Duration::from_secs(1)),
            },
            0.0,
        );
        m.record_promotion(TX, PromotionPhase::Promoted, 1.0);
        m.set_awaiting_approval("", &[(("etl".to_owned(), "tx".to_owned()), (1, 5.0))].into());
        m.set_datasets("", &[&dataset("etl", "tx", Some("@hourly"), None)]);
        m.set_runs("", &[&run("tx", serde_json::json!({}))], Timestamp::now());
        drop(m.reconcile_started("etlrun"));
        m.reconcile_failed("etlrun", "kube_api");
        m.lake_check(TX);
        m.leader.set(1);
        let text = m.render();
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {promtool}: {e}"));
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write the metrics to promtool");
        let out = child.wait_with_output().expect("promtool's output");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\non\n{text}");
        let families = text.lines().filter(|l| l.starts_with("# TYPE silverline_")).count();
        assert_eq!(families, 26, "every silverline family has a series here:\n{text}");
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
