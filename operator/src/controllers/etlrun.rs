//! The EtlRun controller: observe (contract, Job, pod, lake), decide (`lifecycle::plan`, its pure plan), then
//! act — a new attempt's Job (and contract snapshot) first, then the status naming it, then what waits for the
//! status (a Job given up, a missing snapshot) — and report what changed as Events, logs and metrics.

use super::{
    ConditionStatus, ConditionUpdate, Context, ControllerName, FIELD_MANAGER, credentials, delete_job, drain,
    error_policy as shared_error_policy, owned_by, publish, publish_related, scoped, set_condition, unreadable,
    write_status,
};
use crate::failure::{JobFailure, PodEnd};
use crate::job::{self, AttemptPlan, RunIdentity};
use crate::lake::LakeFinding;
use crate::lifecycle::{self, ContractFacts, ContractProblem, JobState, Observed, PodBlocker, Transition};
use crate::metrics::DatasetSeries;
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use silverline_crds::{AttemptOutcome, AttemptStatus, Dataset, EtlRun, EtlRunPhase, EtlRunStatus};
use std::sync::Arc;
use std::time::Duration;

/// What the watches of worker pods and of the Job controller's `FailedCreate` Events last said, by
/// `{namespace}/{job}`, so that a reconcile of a running attempt sends no request:
/// - how worker pods ended: an evicted or failed pod is often removed (the Job controller releases it) before its
///   Job's failure is reconciled; this keeps its exit code and disruption reason for a while. Memory only: after a
///   restart such a failure is reported as `PodLost`;
/// - why a Job's pod cannot start (`pod_blocker`), and which Jobs have had a pod at all;
/// - why no pod of a Job can be created (the Job controller's `FailedCreate` Event, with the Job's uid: an Event
///   of an earlier Job of the same name says nothing of this one).
///
/// After a restart the watches' first lists fill it again.
#[derive(Clone, Default)]
pub struct PodEnds(Arc<std::sync::Mutex<PodMemory>>);

/// Each entry holds the uid of the Job its pod belongs to (the pod's `batch.kubernetes.io/controller-uid`): a Job
/// of the same name made later (a run deleted and created again under its name) is another Job, and what its
/// predecessor's pod said is not said of it.
#[derive(Default)]
struct PodMemory {
    ends: std::collections::HashMap<String, (String, PodEnd, std::time::Instant)>,
    blockers: std::collections::HashMap<String, (String, PodBlocker)>,
    /// Jobs seen with a pod, and when last.
    with_pod: std::collections::HashMap<String, (String, std::time::Instant)>,
    /// Jobs whose worker container was seen created (running or ended: past its Secret and keys), and when.
    started: std::collections::HashMap<String, (String, std::time::Instant)>,
    /// The newest `FailedCreate` message of each Job: (the Job's uid, the message, when seen).
    cannot_create: std::collections::HashMap<String, (String, String, std::time::Instant)>,
}

impl PodMemory {
    fn forget_old(&mut self) {
        self.ends.retain(|_, (_, _, seen)| seen.elapsed() < PodEnds::KEEP);
        self.with_pod.retain(|_, (_, seen)| seen.elapsed() < PodEnds::KEEP);
        self.started.retain(|_, (_, seen)| seen.elapsed() < PodEnds::KEEP);
        self.cannot_create.retain(|_, (_, _, seen)| seen.elapsed() < PodEnds::KEEP);
    }
}

impl PodEnds {
    const KEEP: Duration = Duration::from_secs(3600);

    fn key(namespace: &str, job: &str) -> String {
        format!("{namespace}/{job}")
    }

    /// Remembers that the pod's Job has a pod, how the pod ended if it has ended, why it cannot start if it
    /// cannot, and whether its worker container started. Whether the pod's run should look again: its pod cannot
    /// start, or could not until now (the Job's status changes with neither).
    pub fn observe(&self, pod: &Pod) -> bool {
        let (Some(namespace), Some(job)) =
            (pod.metadata.namespace.as_deref(), pod.labels().get("batch.kubernetes.io/job-name"))
        else {
            return false;
        };
        let key = Self::key(namespace, job);
        let job_uid = Self::job_uid(pod);
        let Ok(mut memory) = self.0.lock() else { return false };
        let now = std::time::Instant::now();
        if memory.with_pod.len() > 1024 && !memory.with_pod.contains_key(&key) {
            memory.forget_old();
        }
        memory.with_pod.insert(key.clone(), (job_uid.clone(), now));
        // The first sight of its worker container started wakes the run too (a state between blocked and running,
        // or an operator that restarted, would otherwise leave it to the resync).
        let newly_started = worker_started(pod)
            && memory.started.insert(key.clone(), (job_uid.clone(), now)).is_none_or(|(of, _)| of != job_uid);
        let wake = newly_started
            | match pod_blocker(pod) {
                Some(blocker) => {
                    memory.blockers.insert(key.clone(), (job_uid.clone(), blocker));
                    true
                }
                None => memory.blockers.remove(&key).is_some(),
            };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Failed" | "Succeeded")) {
            memory.forget_old();
            memory.ends.insert(key, (job_uid, pod_end(pod), now));
        }
        wake
    }

    /// Whether the worker container of the Job with this uid was seen created (so past its Secret and keys).
    pub fn started(&self, namespace: &str, job: &str, uid: &str) -> bool {
        self.0.lock().is_ok_and(|m| m.started.get(&Self::key(namespace, job)).is_some_and(|(of, _)| of == uid))
    }

    /// Remembers a `FailedCreate` Event of a Job (why none of its pods can be created).
    pub fn observe_failed_create(&self, event: &k8s_openapi::api::core::v1::Event) {
        let object = &event.involved_object;
        let (Some(namespace), Some(job), Some(uid), Some(message)) = (
            object.namespace.as_deref().or(event.metadata.namespace.as_deref()),
            object.name.as_deref(),
            object.uid.as_deref(),
            event.message.as_deref(),
        ) else {
            return;
        };
        if let Ok(mut memory) = self.0.lock() {
            memory.forget_old();
            let seen = std::time::Instant::now();
            memory.cannot_create.insert(Self::key(namespace, job), (uid.to_owned(), message.to_owned(), seen));
        }
    }

    /// The uid of the Job a pod belongs to: its Job controller's label, else its controller owner.
    fn job_uid(pod: &Pod) -> String {
        pod.labels()
            .get("batch.kubernetes.io/controller-uid")
            .cloned()
            .or_else(|| pod.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| o.uid.clone()))
            .unwrap_or_default()
    }

    /// How the pod of the Job with this uid ended, as the watch last saw it.
    pub fn get(&self, namespace: &str, job: &str, uid: &str) -> Option<PodEnd> {
        let memory = self.0.lock().ok()?;
        let (of, end, _) = memory.ends.get(&Self::key(namespace, job))?;
        (of == uid).then(|| end.clone())
    }

    /// Why the pod of the Job with this uid cannot start, as the watch last saw it.
    pub fn blocker(&self, namespace: &str, job: &str, uid: &str) -> Option<PodBlocker> {
        let memory = self.0.lock().ok()?;
        let (of, blocker) = memory.blockers.get(&Self::key(namespace, job))?;
        (of == uid).then(|| blocker.clone())
    }

    /// Whether the pod watch has seen a pod of the Job with this uid.
    pub fn has_pod(&self, namespace: &str, job: &str, uid: &str) -> bool {
        self.0.lock().is_ok_and(|m| m.with_pod.get(&Self::key(namespace, job)).is_some_and(|(of, _)| of == uid))
    }

    /// Why no pod of the Job with this uid can be created, as its newest `FailedCreate` Event says.
    pub fn cannot_create(&self, namespace: &str, job: &str, uid: &str) -> Option<String> {
        let memory = self.0.lock().ok()?;
        let (of, message, _) = memory.cannot_create.get(&Self::key(namespace, job))?;
        (of == uid).then(|| message.clone())
    }

    /// Why the pod of an active Job (with this uid) cannot start, if it cannot, and whether the Job has a pod at
    /// all (`listed_pod`: a read of its pods found one): with a pod, its kubelet says why; without one, the Job
    /// controller's `FailedCreate` Event does.
    pub fn why_not_started(
        &self,
        namespace: &str,
        job: &str,
        uid: &str,
        listed_pod: bool,
    ) -> (Option<PodBlocker>, bool) {
        if let Some(blocker) = self.blocker(namespace, job, uid) {
            return (Some(blocker), true);
        }
        if listed_pod || self.has_pod(namespace, job, uid) {
            return (None, true);
        }
        (self.cannot_create(namespace, job, uid).map(|message| PodBlocker::CannotCreate { message }), false)
    }
}

/// How often the lake was read for each attempt in flight, by run id (unique: it holds the EtlRun's uid). Kept
/// in memory rather than in status so that a check changes nothing in the object: a status write per check would
/// wake the controller again at once and bypass the check interval. The count reaches status when the attempt
/// ends; after an operator restart it starts again from the count in status.
#[derive(Clone, Default)]
pub struct LakeChecks(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

impl LakeChecks {
    /// Counts one more check of `run_id`'s markers and returns how many there were, `recorded` being the count
    /// already in status.
    pub fn count(&self, run_id: &str, recorded: u32) -> u32 {
        let Ok(mut checks) = self.0.lock() else { return recorded.saturating_add(1) };
        let n = checks.entry(run_id.to_owned()).or_insert(recorded);
        *n = (*n).max(recorded).saturating_add(1);
        *n
    }

    /// Forgets an attempt that has ended.
    pub fn forget(&self, run_id: &str) {
        if let Ok(mut checks) = self.0.lock() {
            checks.remove(run_id);
        }
    }
}

/// What the EtlRun controller of one scope (every namespace, or one watched namespace) reads instead of asking
/// the apiserver: the attempts' Jobs and the Datasets, from reflector stores fed by the very watches that trigger
/// its reconciles (a store is updated before the reconcile its event triggers), and the contract snapshots it
/// has created or read. A reconcile of a running attempt then sends no request at all; a store that does not
/// (yet) hold an object is confirmed with one GET, so a lagging store never decides anything.
pub struct Scope {
    pub ctx: Arc<Context>,
    jobs: Store<Job>,
    pace: LaunchPace,
    datasets: Store<DeserializeGuard<Dataset>>,
    snapshots: Snapshots,
    known_snapshots: KnownSnapshots,
    created: CreatedJobs,
    written: WrittenViews,
}

impl Scope {
    /// A Job as the Job store has it, else as this operator created it a moment ago (no request).
    fn known_job(&self, namespace: &str, name: &str) -> Option<Arc<Job>> {
        let stored = self.jobs.get(&ObjectRef::new(name).within(namespace));
        self.created.get(namespace, name, stored.is_some()).or(stored)
    }
}

/// The instants of this operator's launches in the last second, to tell a burst of launches
/// (`Context::burst_launches_per_second`).
#[derive(Default)]
struct LaunchPace(std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>);

impl LaunchPace {
    const WINDOW: Duration = Duration::from_secs(1);

    fn launched(&self, at: std::time::Instant) {
        if let Ok(mut recent) = self.0.lock() {
            recent.push_back(at);
        }
    }

    /// Whether `limit` launches or more happened in the second before `now`; never for a limit of 0.
    fn in_burst(&self, now: std::time::Instant, limit: u32) -> bool {
        let Ok(mut recent) = self.0.lock() else { return false };
        while recent.front().is_some_and(|at| now.saturating_duration_since(*at) > Self::WINDOW) {
            recent.pop_front();
        }
        limit > 0 && recent.len() >= limit as usize
    }
}

/// How often a run whose launch record waits for a burst to pass looks again.
const LAUNCH_RECORD_RECHECK: Duration = Duration::from_secs(1);

/// The views of runs this operator has written a status from (uid → the resourceVersion it read), until a newer
/// view arrives. A reconcile woken before the watch brought its own write back (e.g. by the watch event of the
/// Job it just created) would plan from the stale view and its write would conflict: it waits for the fresh one
/// instead. Kept for [`WRITTEN_VIEW_MEMORY`] at most.
#[derive(Clone, Default)]
struct WrittenViews(Arc<std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>>);

const WRITTEN_VIEW_MEMORY: Duration = Duration::from_secs(30);
/// When a run seen stale is looked at again if its own write's watch event has not woken it by then.
const STALE_VIEW_RECHECK: Duration = Duration::from_secs(2);

impl WrittenViews {
    fn wrote_from(&self, uid: &str, resource_version: &str) {
        if let Ok(mut views) = self.0.lock() {
            views.retain(|_, (_, at)| at.elapsed() < WRITTEN_VIEW_MEMORY);
            views.insert(uid.to_owned(), (resource_version.to_owned(), std::time::Instant::now()));
        }
    }

    /// Whether this view is one a status was already written from (so the store has not caught up yet).
    fn is_stale(&self, uid: &str, resource_version: &str) -> bool {
        let Ok(mut views) = self.0.lock() else { return false };
        match views.get(uid) {
            Some((rv, at)) if rv == resource_version && at.elapsed() < WRITTEN_VIEW_MEMORY => true,
            Some(_) => {
                views.remove(uid);
                false
            }
            None => false,
        }
    }
}

/// The Jobs this operator created a moment ago, as the create returned them, until the Job store has them: a
/// reconcile between a Job's create and its watch event (the run's own status write wakes one) then needs no GET.
/// Kept for [`CREATED_JOB_MEMORY`] at most, so a Job deleted before the watch saw it is soon read again.
#[derive(Clone, Default)]
struct CreatedJobs(Arc<std::sync::Mutex<std::collections::HashMap<String, CreatedJob>>>);

/// A Job as its create returned it, and when.
type CreatedJob = (Arc<Job>, std::time::Instant);

const CREATED_JOB_MEMORY: Duration = Duration::from_secs(10);

impl CreatedJobs {
    fn key(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    fn insert(&self, namespace: &str, job: Job) {
        let Some(name) = job.metadata.name.clone() else { return };
        if let Ok(mut created) = self.0.lock() {
            created.retain(|_, (_, at)| at.elapsed() < CREATED_JOB_MEMORY);
            created.insert(Self::key(namespace, &name), (Arc::new(job), std::time::Instant::now()));
        }
    }

    /// The Job if it was created a moment ago; forgotten once `in_store` (the store has it from now on).
    fn get(&self, namespace: &str, name: &str, in_store: bool) -> Option<Arc<Job>> {
        let mut created = self.0.lock().ok()?;
        let key = Self::key(namespace, name);
        if in_store {
            created.remove(&key);
            return None;
        }
        created.get(&key).filter(|(_, at)| at.elapsed() < CREATED_JOB_MEMORY).map(|(job, _)| job.clone())
    }
}

/// The contract snapshots of unfinished runs, parsed, by the EtlRun's uid. A snapshot never changes (an
/// immutable ConfigMap named by its manifest), so this copy is always right; it is dropped when the run ends or is
/// gone. Runs whose snapshots hold the same text (every run of one Dataset manifest) share one parsed contract.
#[derive(Clone, Default)]
struct Snapshots(Arc<std::sync::Mutex<SnapshotMemory>>);

#[derive(Default)]
struct SnapshotMemory {
    runs: std::collections::HashMap<String, Arc<Dataset>>,
    /// The contract parsed from each snapshot text that a remembered run still holds.
    texts: std::collections::HashMap<String, std::sync::Weak<Dataset>>,
}

impl Snapshots {
    fn get(&self, uid: &str) -> Option<Arc<Dataset>> {
        self.0.lock().ok()?.runs.get(uid).cloned()
    }

    fn insert(&self, uid: &str, dataset: Arc<Dataset>) {
        if let Ok(mut memory) = self.0.lock() {
            memory.runs.insert(uid.to_owned(), dataset);
        }
    }

    /// A snapshot's text parsed — or the contract another run's snapshot of the same text was parsed into.
    fn parse(&self, text: &str) -> std::result::Result<Arc<Dataset>, silverline_crds::ContractError> {
        let shared = self.0.lock().ok().and_then(|memory| memory.texts.get(text).and_then(std::sync::Weak::upgrade));
        if let Some(shared) = shared {
            return Ok(shared);
        }
        let parsed = Arc::new(Dataset::from_manifest(text)?);
        if let Ok(mut memory) = self.0.lock() {
            memory.texts.insert(text.to_owned(), Arc::downgrade(&parsed));
        }
        Ok(parsed)
    }

    fn forget(&self, uid: &str) {
        if let Ok(mut memory) = self.0.lock() {
            memory.runs.remove(uid);
        }
    }

    /// Keeps only the snapshots of runs that still exist, and the texts that one of them holds.
    fn retain(&self, live: &std::collections::HashSet<String>) {
        if let Ok(mut memory) = self.0.lock() {
            memory.runs.retain(|uid, _| live.contains(uid));
            memory.texts.retain(|_, parsed| parsed.strong_count() > 0);
        }
    }
}

/// How often the snapshots of runs deleted before they finished are dropped.
const SNAPSHOT_SWEEP: Duration = Duration::from_secs(60);

/// The contract snapshot ConfigMaps (`namespace/name`) this operator created, or found holding the manifest it
/// meant to store, lately: a launch whose snapshot is known sends no request for it, so a burst of runs of one
/// Dataset creates its snapshot once. Known for [`SNAPSHOT_MEMORY`]; the first launch after that creates it
/// again (a conflict when it exists), so a snapshot deleted by hand is back within that time. The lock is held
/// across the create, so runs launched together wait for one create instead of each sending theirs, then go on
/// to their Jobs (a launch makes its snapshot before its Job: `launch`).
#[derive(Default)]
struct KnownSnapshots(tokio::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

/// How long a snapshot this operator created or read is taken to exist without a request.
const SNAPSHOT_MEMORY: Duration = Duration::from_secs(60);

/// A run's contract snapshot, once it has one: the ConfigMap's name and whether it is missing (not in memory and
/// not found by a read).
#[derive(Debug, Clone)]
struct RunSnapshot {
    name: String,
    missing: bool,
}

/// What the operator keeps of a Job: its identity, owners, annotations, labels and status. The pod template
/// and managed fields (most of a Job's bytes) are dropped before the store, to keep the operator's memory flat
/// with thousands of runs.
fn slim_job(job: &mut Job) {
    job.metadata.managed_fields = None;
    job.spec = None;
}

/// An EtlRun as the operator keeps it: without its managed fields, which nothing here reads and which, parsed,
/// were the larger part of a run's memory in the store (two field managers' field sets as JSON values).
fn slim_run(run: &mut DeserializeGuard<EtlRun>) {
    match &mut run.0 {
        Ok(run) => run.metadata.managed_fields = None,
        Err(invalid) => invalid.metadata.managed_fields = None,
    }
}

/// What of a Job can change a run's plan: which Job it is, whether it is being deleted, its conditions, whether
/// it has an active pod, and its pod counts. The Job controller also updates `startTime`, `ready`, `terminating`
/// and `uncountedTerminatedPods` as a Job's pod comes and goes; none of those changes anything for the run.
fn job_progress(job: &Job) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    job.metadata.uid.hash(&mut hasher);
    job.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    if let Some(status) = &job.status {
        (status.active.unwrap_or(0) > 0, status.succeeded, status.failed).hash(&mut hasher);
        for condition in status.conditions.iter().flatten() {
            (&condition.type_, &condition.status, &condition.reason).hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// The Job events that wake a run: every new or deleted Job, and a changed Job only when what
/// [`job_progress`] hashes changed. The store behind the filter still sees every event.
fn job_progress_filter()
-> impl FnMut(watcher::Result<watcher::Event<Job>>) -> std::future::Ready<Option<watcher::Result<Job>>> {
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    move |event| {
        let woken = match event {
            Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                let key = job.metadata.uid.clone().unwrap_or_default();
                let progress = job_progress(&job);
                (seen.insert(key, progress) != Some(progress)).then_some(Ok(job))
            }
            Ok(watcher::Event::Delete(job)) => {
                seen.remove(job.metadata.uid.as_deref().unwrap_or_default());
                Some(Ok(job))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        std::future::ready(woken)
    }
}

/// Runs the EtlRun controller: it owns the attempts' Jobs and looks again at the runs of a Dataset that appears
/// or changes, at the run of a worker pod that cannot start and at the run of a Job whose pods cannot be created.
pub(crate) async fn run(ctx: Arc<Context>, ns: Option<&str>) {
    let runs: Api<DeserializeGuard<EtlRun>> = scoped(ctx.client.clone(), ns);
    let jobs_api: Api<Job> = scoped(ctx.client.clone(), ns);
    let datasets_api: Api<DeserializeGuard<Dataset>> = scoped(ctx.client.clone(), ns);
    let pods: Api<Pod> = scoped(ctx.client.clone(), ns);
    let events: Api<k8s_openapi::api::core::v1::Event> = scoped(ctx.client.clone(), ns);
    let (jobs, jobs_writer) = reflector::store();
    let (datasets, datasets_writer) = reflector::store();
    let job_stream = watcher(jobs_api, watcher::Config::default().labels(&managed_selector()))
        .default_backoff()
        .modify(slim_job)
        .reflect(jobs_writer)
        .filter_map(job_progress_filter());
    let dataset_stream =
        watcher(datasets_api, watcher::Config::default()).default_backoff().reflect(datasets_writer).touched_objects();
    let scope = Arc::new(Scope {
        ctx: ctx.clone(),
        jobs: jobs.clone(),
        pace: LaunchPace::default(),
        datasets,
        snapshots: Snapshots::default(),
        known_snapshots: KnownSnapshots::default(),
        created: CreatedJobs::default(),
        written: WrittenViews::default(),
    });
    let (pod_ends, failed_creates) = (ctx.pod_ends.clone(), ctx.pod_ends.clone());
    let (runs_store, runs_writer) = reflector::store();
    let run_stream = watcher(runs, watcher::Config::default())
        .default_backoff()
        .modify(slim_run)
        .reflect(runs_writer)
        .applied_objects();
    // Bounded, not kube-runtime's unbounded default: see `Context::reconcile_concurrency`.
    let controller = Controller::for_stream(run_stream, runs_store)
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.reconcile_concurrency));
    let store = controller.store();
    let exported = store.clone();
    let swept = store.clone();
    let runs = controller
        .owns_stream(job_stream)
        .watches_stream(dataset_stream, move |dataset| {
            // A Dataset that appears or changes may unblock the runs waiting for it.
            let (name, namespace) = (dataset.name_any(), dataset.namespace());
            store
                .state()
                .into_iter()
                .filter(|run| match &run.0 {
                    Ok(run) => run.spec.dataset == name && run.namespace() == namespace,
                    Err(_) => false,
                })
                .map(|run| ObjectRef::from_obj(&*run))
                .collect::<Vec<_>>()
        })
        .watches(pods, watcher::Config::default().labels(&managed_selector()), move |pod| {
            // Remembers how worker pods end (the Job controller may remove them before their failure is
            // reconciled), and wakes the run of a pod that cannot start, or now can: the Job's status does not
            // change then.
            let wake = pod_ends.observe(&pod);
            let run = pod.labels().get(job::LABEL_ETLRUN).filter(|_| wake);
            run.map(|name| ObjectRef::new(name).within(pod.namespace().as_deref().unwrap_or_default()))
        })
        .watches(events, watcher::Config::default().fields(FAILED_CREATE_EVENTS), move |event| {
            // Why no pod of a Job can be created (e.g. a missing ServiceAccount) changes nothing of the Job: the
            // Job controller's Event is the only news of it. It wakes the Job's run at once.
            failed_creates.observe_failed_create(&event);
            // The Job may not be in the store yet (the Event can come first): then its name says the run.
            let (namespace, name) = (event.involved_object.namespace.clone()?, event.involved_object.name.clone()?);
            let run = match jobs.get(&ObjectRef::new(&name).within(&namespace)) {
                Some(job) => job.labels().get(job::LABEL_ETLRUN)?.clone(),
                None => job::run_of_job(&name)?.to_owned(),
            };
            Some(ObjectRef::new(&run).within(&namespace))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, scope.clone());
    let (metrics, label) = (ctx.metrics.clone(), ns.unwrap_or_default());
    tokio::select! {
        () = drain(runs, ControllerName::EtlRun, &ctx) => {}
        () = crate::metrics::export_from(exported, |runs| metrics.set_runs(label, runs, Timestamp::now())) => {}
        () = sweep_snapshots(swept, scope.snapshots.clone()) => {}
    }
}

/// The Job controller's Events that say a Job's pods cannot be created.
const FAILED_CREATE_EVENTS: &str = "involvedObject.kind=Job,reason=FailedCreate";

/// Drops the snapshots of runs that are gone (deleted before they finished), now and then.
async fn sweep_snapshots(runs: Store<DeserializeGuard<EtlRun>>, snapshots: Snapshots) {
    let mut ticker = tokio::time::interval(SNAPSHOT_SWEEP);
    loop {
        ticker.tick().await;
        let live = runs.state().iter().filter_map(|run| run.meta().uid.clone()).collect();
        snapshots.retain(&live);
    }
}

fn managed_selector() -> String {
    format!("{}={}", job::LABEL_MANAGED_BY, job::MANAGED_BY)
}

/// One reconcile of one EtlRun.
pub async fn reconcile(guard: Arc<DeserializeGuard<EtlRun>>, scope: Arc<Scope>) -> Result<Action> {
    let ctx = &scope.ctx;
    let _timer = ctx.metrics.reconcile_started(ControllerName::EtlRun.label());
    let run = match &guard.0 {
        Ok(run) => run,
        Err(invalid) => return Err(unreadable::<EtlRun>(ctx, "EtlRun", invalid).await),
    };
    if run.phase().is_some_and(EtlRunPhase::is_terminal) {
        let settled = settle_finished(&scope, run).await;
        if let Some(uid) = &run.metadata.uid {
            scope.snapshots.forget(uid);
        }
        return settled.map(|()| Action::await_change());
    }
    let identity = RunIdentity::of(run)?;
    let view = run.metadata.resource_version.clone().unwrap_or_default();
    if scope.written.is_stale(&identity.uid, &view) {
        return Ok(Action::requeue(STALE_VIEW_RECHECK));
    }
    let status = run.status.clone().unwrap_or_default();
    // An object in the way (a Job or ConfigMap of the run's names that is not its own, a contract snapshot that
    // does not hold its manifest) stops the reconcile before any decision: said on the run, not only logged.
    let blocked = |e| say_blocked(&scope, run, &identity, &view, &status, e);
    let launched = match launched_job(&scope, &identity, &status) {
        Ok(launched) => launched,
        Err(e) => return Err(blocked(e).await),
    };
    let (contract, snapshot) = match load_contract(&scope, run, &identity, &status, launched.as_ref()).await {
        Ok(loaded) => loaded,
        Err(e) => return Err(blocked(e).await),
    };
    // The run's own contract (its snapshot's, once launched) is checked, not the Dataset as it is now: that is the
    // lake its Jobs write and the operator reads. Refused, a run waits and an attempt in flight is not followed.
    let contract = contract.and_then(|dataset| match ctx.lakes.allowed(&identity.namespace, &dataset.spec.storage) {
        Ok(()) => Ok(dataset),
        Err(message) => Err(ContractProblem::LakeNotAllowed { name: run.spec.dataset.clone(), message }),
    });
    // And its input, which its worker reads (`--allowed-inputs`; not restricted without grants).
    let contract = contract.and_then(|dataset| match ctx.lakes.input_allowed(&identity.namespace, &run.spec.input) {
        Ok(()) => Ok(dataset),
        Err(message) => Err(ContractProblem::InputNotAllowed { message }),
    });
    let current = lifecycle::current_attempt(&status).map(|i| status.attempts[i].clone());
    let mut lake_error = None;
    let (job_state, lake, lake_checks, mut blocker, job_has_pod, pod_started) = match (&current, &contract) {
        (Some(attempt), Ok(dataset)) => {
            let (job_state, pods) = match observe_job(&scope, &identity, attempt).await {
                Ok(observed) => observed,
                Err(e) => return Err(blocked(e).await),
            };
            let (blocker, job_has_pod, pod_started) = match job_state {
                JobState::Active => observe_blocker(ctx, &identity, &attempt.job_name, pods),
                _ => (None, None, false),
            };
            let (lake, checks) = match job_state {
                JobState::Active => (None, attempt.lake_checks),
                _ => {
                    ctx.metrics.lake_check(DatasetSeries::of(run, &run.spec.dataset));
                    let checks = ctx.lake_checks.count(&attempt.run_id, attempt.lake_checks);
                    match read_lake(ctx, &identity.namespace, dataset, &attempt.run_id).await {
                        Ok(found) => (Some(found), checks),
                        // The run says so (condition, Event) and the plan bounds it by the lake grace period.
                        Err(e @ (Error::Lake { .. } | Error::LakeRead { .. } | Error::LakeNotAllowed { .. })) => {
                            ctx.metrics.reconcile_failed(ControllerName::EtlRun.label(), e.category());
                            tracing::warn!(etlrun = %identity.name, namespace = %identity.namespace, run_id = %attempt.run_id, error = %e, "cannot read the lake");
                            lake_error = Some(e.to_string());
                            (None, checks)
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            (Some(job_state), lake, checks, blocker, job_has_pod, pod_started)
        }
        _ => (None, None, 0, None, None, false),
    };
    // An attempt whose Job is active but whose contract snapshot is missing (its create was refused and the Job
    // launched all the same, or it was deleted) gets it now, from the Dataset, if the Dataset still holds the
    // manifest the snapshot's name stands for: until then its pod cannot start, so no worker has read another
    // contract. A refusal is what the pod waits for, said by the plan like any other blocker of an active Job. A
    // Job to be launched again gets its snapshot first (`launch`).
    let mut snapshot_refused = None;
    if let (Some(RunSnapshot { name, missing: true }), Some(JobState::Active), Ok(dataset)) =
        (&snapshot, &job_state, &contract)
    {
        tracing::warn!(
            etlrun = %identity.name, namespace = %identity.namespace, configmap = %name,
            "the attempt's contract snapshot is missing: creating it"
        );
        let repaired = match job::ContractSnapshot::of(dataset) {
            Ok(made) => ensure_snapshot(&scope, &identity, name, &made, true).await,
            Err(e) => Err(e),
        };
        if let Err(e) = repaired {
            blocker = Some(PodBlocker::SnapshotRefused { configmap: name.clone(), message: e.for_people() });
            snapshot_refused = Some(e);
        }
    }
    let observed = Observed {
        now: Timestamp::now(),
        name: &identity.name,
        uid: &identity.uid,
        generation: run.metadata.generation,
        status: &status,
        contract: contract
            .as_ref()
            .map(|d| ContractFacts {
                max_attempts: d.spec.max_attempts,
                request_promotion: d.spec.promotion.request_on_success,
            })
            .map_err(Clone::clone),
        job: job_state,
        lake,
        lake_checks,
        blocker,
        job_has_pod,
        lake_error,
        launched: launched.as_ref().map(|found| found.run_id.clone()),
        launched_at: launched.as_ref().and_then(|found| found.created),
        launch_error: None,
    };
    let mut plan = lifecycle::plan(&observed, &ctx.lifecycle);
    // The Job first, the status that names it after: a new run's Job is one round trip away (two for the first
    // run of a manifest, whose snapshot is made first). A launch whose status write does not land leaves a Job the
    // next reconcile finds and adopts (`launched_job`).
    let mut launch_failed = None;
    let mut snapshot_failed = None;
    if let (Some(attempt), Ok(dataset)) = (&plan.launch, &contract) {
        // A run's first launch takes the snapshot of the Dataset's manifest; later ones the run's own.
        let made = job::ContractSnapshot::of(dataset)?;
        let name = snapshot.as_ref().map_or_else(|| made.name.clone(), |known| known.name.clone());
        let (job, created) = launch(&scope, run, &identity, dataset, attempt, &name, &made).await;
        snapshot_failed = created.err();
        match job {
            Ok(()) => {
                plan.status.contract_snapshot.get_or_insert(name);
                scope.pace.launched(std::time::Instant::now());
            }
            // A Job of this attempt under another run id (another reconcile's launch): adopted by the next one.
            Err(e @ Error::Conflict { .. }) => return Err(e),
            Err(e) => {
                let refused = Observed { launch_error: Some(e.for_people()), ..observed.clone() };
                plan = lifecycle::plan(&refused, &ctx.lifecycle);
                launch_failed = Some(e);
            }
        }
    }
    // A Job found without the status naming it (adopted by this plan) says its snapshot; a run launched by an
    // operator from before shared snapshots has its own (`load_contract`): the status names either from now on.
    if !plan.status.attempts.is_empty() {
        let found = launched.and_then(|found| found.snapshot).or_else(|| snapshot.map(|s| s.name));
        if let (None, Some(name)) = (&plan.status.contract_snapshot, found) {
            plan.status.contract_snapshot = Some(name);
        }
    }
    // In a burst of launches, the status write that only records a new run's launch waits (see
    // `Config::burst_launches_per_second`): the next reconcile finds the Job and records it (`launched_job`). A
    // launch that went wrong in any way is said at once.
    if launch_failed.is_none()
        && snapshot_failed.is_none()
        && snapshot_refused.is_none()
        && scope.pace.in_burst(std::time::Instant::now(), ctx.burst_launches_per_second)
        && lifecycle::may_defer_launch_record(&plan, &observed)
    {
        return Ok(Action::requeue(LAUNCH_RECORD_RECHECK));
    }
    if let Some(ended) = &current
        && lifecycle::current_attempt(&plan.status).is_none_or(|i| plan.status.attempts[i].run_id != ended.run_id)
    {
        ctx.lake_checks.forget(&ended.run_id);
    }
    if plan.status != status {
        write_status(ctx, run, &plan.status).await?;
        scope.written.wrote_from(&identity.uid, &view);
    }
    // The Events last: an Event is not on the way from a new run to its Job. A failed create or delete is
    // returned once the Events are out; a Job that could not be created is already said by the plan (its
    // condition and one Warning Event).
    let said = launch_failed.is_some() || snapshot_refused.is_some();
    let acted = match (launch_failed, snapshot_failed.or(snapshot_refused)) {
        (Some(e), _) | (None, Some(e)) => Err(e),
        (None, None) => act(&scope, &identity, &plan).await,
    };
    // A run's Promotion (`requestOnSuccess`) is created by the reconcile of the finished run that this status
    // write wakes (`settle_finished`).
    for transition in &plan.transitions {
        report(&scope, run, &plan.status, transition).await;
    }
    if let Some(blocker) = observed.blocker.as_ref() {
        say_credentials_missing(&scope, run, blocker).await;
    } else if pod_started {
        say_credentials_found(&scope, run).await;
    }
    if let (Err(e), false) = (&acted, said) {
        // What the user may have to act on (a quota, an admission policy, RBAC) is said on the run, not only
        // logged; the Recorder folds the repeats of one message into a series.
        let reason = if plan.delete_job.is_some() && plan.launch.is_none() {
            "JobDeleteFailed"
        } else {
            lifecycle::REASON_LAUNCH_FAILED
        };
        publish::<EtlRun>(ctx, &run.metadata, EventType::Warning, reason, "Launch", e.for_people()).await;
    }
    acted?;
    Ok(plan.requeue_after.map_or_else(Action::await_change, Action::requeue))
}

/// `Progressing` while an object in the run's way must be removed or fixed by a person (`Error::retry` is
/// `Blocked`: a Job or ConfigMap of the run's names that is not its own, a contract snapshot that cannot be
/// read as its manifest): the condition names it and says what to do, with one Warning Event per new message;
/// the error goes on to the error policy (looked at again every 30 s). Other errors are returned as they are.
async fn say_blocked(
    scope: &Scope,
    run: &EtlRun,
    identity: &RunIdentity,
    view: &str,
    status: &EtlRunStatus,
    error: Error,
) -> Error {
    if error.retry() != crate::Retry::Blocked {
        return error;
    }
    let message = error.for_people();
    let said = status
        .conditions
        .iter()
        .any(|c| c.type_ == lifecycle::CONDITION_PROGRESSING && c.reason == REASON_BLOCKED && c.message == message);
    if said {
        return error;
    }
    let mut next = status.clone();
    let update = ConditionUpdate {
        type_: lifecycle::CONDITION_PROGRESSING,
        status: ConditionStatus::True,
        reason: REASON_BLOCKED,
        message: &message,
    };
    set_condition(&mut next.conditions, update, run.metadata.generation, Timestamp::now());
    match write_status(&scope.ctx, run, &next).await {
        Ok(()) => scope.written.wrote_from(&identity.uid, view),
        Err(e) => tracing::warn!(etlrun = %identity.name, namespace = %identity.namespace, error = %e,
            "cannot say on the run what blocks it"),
    }
    publish::<EtlRun>(&scope.ctx, &run.metadata, EventType::Warning, REASON_BLOCKED, "Reconcile", message).await;
    error
}

/// `Progressing` reason while an object in the run's way must be removed or fixed (see `say_blocked`).
pub const REASON_BLOCKED: &str = "Blocked";

/// After the status is written: deletes the Job the plan gives up.
async fn act(scope: &Scope, identity: &RunIdentity, plan: &lifecycle::Plan) -> Result<()> {
    if let Some(job_name) = &plan.delete_job {
        delete_job(&scope.ctx, &identity.namespace, job_name, &DeleteParams::background()).await?;
    }
    Ok(())
}

fn error_policy(guard: Arc<DeserializeGuard<EtlRun>>, error: &Error, scope: Arc<Scope>) -> Action {
    shared_error_policy(ControllerName::EtlRun, &guard, error, &scope.ctx)
}

/// The run's contract: its snapshot once an attempt was launched (named in status, or by the Job `launched`
/// found; a run launched by an operator from before shared snapshots has its own, `{run}-contract`), else the
/// Dataset as it is now. A run with neither needs no look for a snapshot: a launched first attempt has a Job,
/// which the Job store or the memory of created Jobs would hold. The snapshot comes from memory
/// once created or read; the Dataset from the controller's store, confirmed with a GET when missing there. Also
/// says the run's snapshot, and whether it is missing.
async fn load_contract(
    scope: &Scope,
    run: &EtlRun,
    identity: &RunIdentity,
    status: &EtlRunStatus,
    launched: Option<&LaunchedJob>,
) -> Result<(Result<Arc<Dataset>, ContractProblem>, Option<RunSnapshot>)> {
    let ctx = &scope.ctx;
    let legacy = || job::legacy_contract_name(&identity.name);
    let recorded = match (&status.contract_snapshot, launched) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(found)) => Some(found.snapshot.clone().unwrap_or_else(legacy)),
        (None, None) => (!status.attempts.is_empty()).then(legacy),
    };
    if let Some(name) = &recorded {
        if let Some(dataset) = scope.snapshots.get(&identity.uid) {
            return Ok((Ok(dataset), Some(RunSnapshot { name: name.clone(), missing: false })));
        }
        let snapshots: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &identity.namespace);
        let found = snapshots.get_opt(name).await.map_err(Error::kube(format!("reading ConfigMap {name}")))?;
        if let Some(snapshot) = found {
            let ours = if *name == legacy() {
                owned_by(&snapshot.metadata, &identity.uid)
            } else {
                snapshot.labels().get(job::LABEL_MANAGED_BY).is_some_and(|v| v == job::MANAGED_BY)
                    && snapshot.labels().get(job::LABEL_DATASET) == Some(&run.spec.dataset)
            };
            if !ours {
                return Err(not_owned("ConfigMap", name.clone(), identity));
            }
            let text = snapshot.data.as_ref().and_then(|d| d.get(job::CONTRACT_KEY)).ok_or_else(|| {
                Error::Snapshot { name: name.clone(), message: format!("it has no key {}", job::CONTRACT_KEY) }
            })?;
            if *name != legacy() && job::ContractSnapshot::name_of(&run.spec.dataset, text) != *name {
                return Err(Error::SnapshotConflict { name: name.clone() });
            }
            let dataset = scope
                .snapshots
                .parse(text)
                .map_err(|e| Error::Snapshot { name: name.clone(), message: e.to_string() })?;
            scope.snapshots.insert(&identity.uid, dataset.clone());
            return Ok((Ok(dataset), Some(RunSnapshot { name: name.clone(), missing: false })));
        }
    }
    let dataset_name = run.spec.dataset.clone();
    let found = stored_or_read(&scope.datasets, &ctx.client, &identity.namespace, &dataset_name).await?;
    let contract = match found.as_deref() {
        None => Err(ContractProblem::DatasetNotFound { name: dataset_name }),
        Some(DeserializeGuard(Err(invalid))) => {
            Err(ContractProblem::InvalidDataset { name: dataset_name, message: invalid.error.clone() })
        }
        Some(DeserializeGuard(Ok(dataset))) => match dataset.validate() {
            Ok(()) => Ok(Arc::new(dataset.clone())),
            Err(e) => Err(ContractProblem::InvalidDataset { name: dataset_name, message: e.to_string() }),
        },
    };
    Ok((contract, recorded.map(|name| RunSnapshot { name, missing: true })))
}

fn condition_time(job: &Job, type_: &str) -> Option<(Timestamp, Option<String>, Option<String>)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == type_ && c.status == "True")?;
    let at = c.last_transition_time.as_ref().map_or_else(Timestamp::now, |t| t.0);
    Some((at, c.reason.clone(), c.message.clone()))
}

/// What a Job's status says of its pods, so that a reconcile lists pods or Events only when it must.
#[derive(Debug, Clone, Default)]
struct JobPods {
    /// Pods the Job controller counts as active (pending or running).
    active: i32,
    /// The Job's uid (its `FailedCreate` Events name it).
    uid: String,
}

/// The state of the attempt's Job, and what it says of its pods; for a failed Job, also how its pod ended. The
/// Job comes from the controller's store or the memory of Jobs just created; one missing in both is confirmed
/// with a GET (created a moment ago and not yet seen by the watch, or gone).
async fn observe_job(scope: &Scope, identity: &RunIdentity, attempt: &AttemptStatus) -> Result<(JobState, JobPods)> {
    let name = &attempt.job_name;
    let found = match scope.known_job(&identity.namespace, name) {
        Some(known) => Some(known),
        None => {
            let jobs: Api<Job> = Api::namespaced(scope.ctx.client.clone(), &identity.namespace);
            jobs.get_opt(name).await.map_err(Error::kube(format!("reading Job {name}")))?.map(Arc::new)
        }
    };
    let Some(found) = found else {
        return Ok((JobState::Missing, JobPods::default()));
    };
    if !owned_by(&found.metadata, &identity.uid) {
        return Err(not_owned("Job", name.clone(), identity));
    }
    let pods = JobPods {
        active: found.status.as_ref().and_then(|s| s.active).unwrap_or(0),
        uid: found.metadata.uid.clone().unwrap_or_default(),
    };
    if let Some((at, _, _)) = condition_time(&found, "Complete") {
        let finished_at = found.status.as_ref().and_then(|s| s.completion_time.as_ref()).map_or(at, |t| t.0);
        return Ok((JobState::Complete { finished_at: Some(finished_at) }, pods));
    }
    if let Some((at, reason, message)) = condition_time(&found, "Failed") {
        let pod = last_pod(&scope.ctx, identity, name, &pods.uid).await?;
        let failure = JobFailure { job_reason: reason, job_message: message, pod };
        return Ok((JobState::Failed { failure, finished_at: Some(at) }, pods));
    }
    Ok((JobState::Active, pods))
}

/// An object from a controller's store; one missing there is read with a GET (absent, or created a moment ago
/// and not seen by the watch yet), so a lagging store never decides that an object does not exist.
async fn stored_or_read<K>(
    store: &Store<K>,
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<K>>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if let Some(found) = store.get(&ObjectRef::new(name).within(namespace)) {
        return Ok(Some(found));
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = super::static_kind::<K>();
    Ok(api.get_opt(name).await.map_err(Error::kube(format!("reading {kind} {name}")))?.map(Arc::new))
}

/// Why the attempt's pod cannot start, if it cannot, and whether the Job has a pod at all, as the watches last
/// saw them (no request): with a pod, its kubelet says why (the pod watch); without one, the Job controller's
/// `FailedCreate` Event does (e.g. a missing ServiceAccount; the Event watch).
fn observe_blocker(
    ctx: &Context,
    identity: &RunIdentity,
    job_name: &str,
    job_pods: JobPods,
) -> (Option<PodBlocker>, Option<bool>, bool) {
    let (blocker, has_pod) =
        ctx.pod_ends.why_not_started(&identity.namespace, job_name, &job_pods.uid, job_pods.active > 0);
    let started = ctx.pod_ends.started(&identity.namespace, job_name, &job_pods.uid);
    (blocker, Some(has_pod), started)
}

/// Whether the pod's worker container was created and started — running, or ended after it started — which the
/// kubelet does only once the Secret and the keys its environment names are there. Not a `terminated` state the
/// kubelet makes up for a container it never created when it stops the pod (`ContainerStatusUnknown`, with no
/// start time and no container id).
fn worker_started(pod: &Pod) -> bool {
    let state = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|c| c.name == job::WORKER_CONTAINER))
        .and_then(|c| c.state.as_ref());
    state.is_some_and(|state| {
        state.running.is_some()
            || state.terminated.as_ref().is_some_and(|t| t.started_at.is_some() || t.container_id.is_some())
    })
}

/// Why a pod's worker container cannot start, from its waiting state. The operator does not read Secrets (its
/// RBAC has no access to them): a missing credentials Secret is known from the kubelet's
/// `CreateContainerConfigError`, whose message names it.
pub fn pod_blocker(pod: &Pod) -> Option<PodBlocker> {
    let waiting = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == job::WORKER_CONTAINER)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    if waiting.reason.as_deref() != Some("CreateContainerConfigError") {
        return None;
    }
    let message = waiting.message.clone().unwrap_or_default();
    let secret = message
        .strip_prefix("secret \"")
        .and_then(|rest| rest.split_once("\" not found"))
        .map(|(name, _)| name.to_owned());
    // The kubelet's words for a `secretKeyRef` to a key the Secret lacks: `couldn't find key K in Secret NS/NAME`.
    let key = message
        .strip_prefix("couldn't find key ")
        .and_then(|rest| rest.split_once(" in Secret "))
        .and_then(|(key, secret)| Some((key, secret.rsplit_once('/')?.1)));
    Some(match (secret, key) {
        (Some(name), _) => PodBlocker::SecretNotFound { name },
        (None, Some((key, name))) => PodBlocker::SecretKeyMissing { name: name.to_owned(), key: key.to_owned() },
        (None, None) => PodBlocker::ContainerConfig { message },
    })
}

/// How the Job's newest pod ended, if a pod is left; else as the pod watch saw the end of the pod of the Job
/// with this uid.
async fn last_pod(ctx: &Context, identity: &RunIdentity, job_name: &str, job_uid: &str) -> Result<Option<PodEnd>> {
    let pods = super::pods_of_job(ctx, &identity.namespace, job_name).await?;
    Ok(super::newest_pod(&pods).map(pod_end).or_else(|| ctx.pod_ends.get(&identity.namespace, job_name, job_uid)))
}

/// Reads a pod's end from its status, as a kubelet reports it.
pub fn pod_end(pod: &Pod) -> PodEnd {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == job::WORKER_CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let disruption = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget" && c.status == "True"))
        .map(|c| c.reason.clone().unwrap_or_else(|| "DisruptionTarget".into()));
    PodEnd {
        exit_code: terminated.map(|t| t.exit_code),
        container_reason: terminated.and_then(|t| t.reason.clone()),
        pod_reason: status.and_then(|s| s.reason.clone()),
        disruption,
        message: terminated.and_then(|t| t.message.clone()).or_else(|| status.and_then(|s| s.message.clone())),
    }
}

async fn read_lake(ctx: &Context, namespace: &str, dataset: &Dataset, run_id: &str) -> Result<LakeFinding> {
    let name =
        dataset.checked_name().map_err(|e| Error::Snapshot { name: "contract".into(), message: e.to_string() })?;
    let lake = ctx.lakes.open(namespace, &dataset.spec.storage)?;
    lake.find(name, &dataset.spec.schema_version, run_id).await
}

fn not_owned(kind: &'static str, name: String, identity: &RunIdentity) -> Error {
    Error::NotOwned { kind, name, owner: format!("EtlRun {}", identity.name), uid: identity.uid.clone() }
}

/// Makes sure the attempt's contract snapshot (`snapshot`) and Job exist, the snapshot first: one this operator
/// knows costs no request, and the first launch of a manifest creates (or checks) it before its Job, so that no
/// Job ever mounts a ConfigMap of that name holding another manifest — that fails the launch before its Job
/// (`Error::SnapshotConflict`). A snapshot the apiserver refuses, or one that is lost, does not hold the Job back:
/// its pod waits for the snapshot, which the next reconciles create once they can (`reconcile`), and a lost one
/// ends the attempt at the pod-create bound. Names are deterministic, so a Job that already exists (a restart, a
/// stale view) is adopted, never duplicated.
/// Returns what became of the Job and of the snapshot.
async fn launch(
    scope: &Scope,
    run: &EtlRun,
    identity: &RunIdentity,
    dataset: &Dataset,
    attempt: &AttemptStatus,
    snapshot: &str,
    made: &job::ContractSnapshot,
) -> (Result<()>, Result<()>) {
    let created = ensure_snapshot(scope, identity, snapshot, made, false).await;
    if let Err(e @ Error::SnapshotConflict { .. }) = created {
        return (Err(e), Ok(()));
    }
    (ensure_job(scope, run, identity, dataset, attempt, snapshot).await, created)
}

/// The next attempt's Job, found before the status names it (its launch's status write did not land).
#[derive(Debug, Clone)]
struct LaunchedJob {
    run_id: String,
    /// The contract snapshot its pod mounts (none on a Job of an operator from before shared snapshots).
    snapshot: Option<String>,
    /// When it was created (whole seconds).
    created: Option<Timestamp>,
}

/// The next attempt's Job when no attempt is in flight and that Job exists already (its launch's status write
/// did not land), from the Job store or the memory of Jobs just created; no request. A Job the store does not
/// have yet is found by its create, which then conflicts (`ensure_job`).
fn launched_job(scope: &Scope, identity: &RunIdentity, status: &EtlRunStatus) -> Result<Option<LaunchedJob>> {
    if lifecycle::current_attempt(status).is_some() {
        return Ok(None);
    }
    let name = job::job_name(&identity.name, status.attempts.len() as u32 + 1);
    let Some(found) = scope.known_job(&identity.namespace, &name) else {
        return Ok(None);
    };
    let annotation = |key| found.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    match annotation(job::ANNOTATION_RUN_ID) {
        Some(run_id) if owned_by(&found.metadata, &identity.uid) => Ok(Some(LaunchedJob {
            run_id,
            snapshot: annotation(job::ANNOTATION_CONTRACT_SNAPSHOT),
            created: found.metadata.creation_timestamp.as_ref().map(|t| t.0),
        })),
        _ => Err(not_owned("Job", name, identity)),
    }
}

/// Creates the contract snapshot `name` holding `fresh` (the manifest of the run's contract, with the name that
/// manifest gives) unless it is known to exist, and remembers it as the run's contract. A snapshot of the
/// Dataset's manifest is owned by the Dataset (the one in the store, else the one `fresh` was made from; the run,
/// when that is gone); a legacy run's own, by the run. One found existing must hold this very manifest; a
/// missing snapshot whose name stands for another manifest than the Dataset's now cannot be made again.
async fn ensure_snapshot(
    scope: &Scope,
    identity: &RunIdentity,
    name: &str,
    fresh: &job::ContractSnapshot,
    found_missing: bool,
) -> Result<()> {
    let ctx = &scope.ctx;
    let dataset_name = fresh.dataset.as_str();
    let legacy = name == job::legacy_contract_name(&identity.name);
    if !legacy && fresh.name != name {
        return Err(Error::Snapshot {
            name: name.to_owned(),
            message: format!(
                "it is missing and Dataset {dataset_name} has changed since the run's first attempt \
                 (its manifest is now snapshot {}): the run's contract is lost",
                fresh.name
            ),
        });
    }
    let remember = |text: &str| {
        if let Ok(parsed) = scope.snapshots.parse(text) {
            scope.snapshots.insert(&identity.uid, parsed);
        }
    };
    let key = format!("{}/{name}", identity.namespace);
    let mut known = scope.known_snapshots.0.lock().await;
    if found_missing {
        known.remove(&key);
    }
    if known.get(&key).is_some_and(|at| at.elapsed() < SNAPSHOT_MEMORY) {
        remember(&fresh.manifest);
        return Ok(());
    }
    // The Dataset as the store holds it, or as the run's contract was read from the apiserver when the store has
    // not seen it yet (a run created right after its Dataset, an operator just started): a snapshot shared by the
    // Dataset's runs must not go with the first run to be deleted.
    let owner = match scope.datasets.get(&ObjectRef::new(dataset_name).within(&identity.namespace)) {
        _ if legacy => None,
        Some(stored) => stored.controller_owner_ref(&()),
        None => fresh.owner.clone(),
    };
    let owner = owner.unwrap_or_else(|| identity.owner.clone());
    let snapshot = job::contract_config_map(&identity.namespace, dataset_name, name, &fresh.manifest, owner);
    let snapshots: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &identity.namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match snapshots.create(&params, &snapshot).await {
        Ok(_) => {}
        // Created by another run's launch (or an earlier reconcile): it must hold this manifest.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = snapshots.get(name).await.map_err(Error::kube(format!("reading ConfigMap {name}")))?;
            let text = existing.data.as_ref().and_then(|d| d.get(job::CONTRACT_KEY));
            if !legacy && text != Some(&fresh.manifest) {
                return Err(Error::SnapshotConflict { name: name.to_owned() });
            }
        }
        Err(e) => return Err(Error::kube(format!("creating ConfigMap {name}"))(e)),
    }
    known.insert(key, std::time::Instant::now());
    known.retain(|_, at| at.elapsed() < SNAPSHOT_MEMORY);
    remember(&fresh.manifest);
    Ok(())
}

/// Creates the attempt's Job, or adopts it when it exists and is this attempt's.
async fn ensure_job(
    scope: &Scope,
    run: &EtlRun,
    identity: &RunIdentity,
    dataset: &Dataset,
    attempt: &AttemptStatus,
    snapshot: &str,
) -> Result<()> {
    let ctx = &scope.ctx;
    let plan = AttemptPlan { attempt: attempt.attempt, run_id: &attempt.run_id, job_name: &attempt.job_name, snapshot };
    let job = job::worker_job(run, identity, dataset, &plan, &ctx.jobs)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &identity.namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    match jobs.create(&params, &job).await {
        Ok(mut created) => {
            slim_job(&mut created);
            scope.created.insert(&identity.namespace, created);
            tracing::info!(
                etlrun = %identity.name, namespace = %identity.namespace, dataset = %run.spec.dataset,
                attempt = attempt.attempt, run_id = %attempt.run_id, job = %attempt.job_name, "created the attempt's Job"
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let mut existing =
                jobs.get(&attempt.job_name).await.map_err(Error::kube(format!("reading Job {}", attempt.job_name)))?;
            let run_id = existing.metadata.annotations.as_ref().and_then(|a| a.get(job::ANNOTATION_RUN_ID));
            if !owned_by(&existing.metadata, &identity.uid) || run_id.is_none() {
                return Err(not_owned("Job", attempt.job_name.clone(), identity));
            }
            if run_id != Some(&attempt.run_id) {
                // Launched by an earlier reconcile whose status write did not land: the next reconcile adopts
                // it under its own run id (`launched_job` finds it here until the store has it).
                tracing::info!(
                    etlrun = %identity.name, namespace = %identity.namespace, job = %attempt.job_name,
                    "the attempt's Job exists under another run id: adopting it"
                );
                slim_job(&mut existing);
                scope.created.insert(&identity.namespace, existing);
                return Err(Error::Conflict { kind: "Job", name: attempt.job_name.clone() });
            }
            tracing::info!(
                etlrun = %identity.name, namespace = %identity.namespace, dataset = %run.spec.dataset,
                attempt = attempt.attempt, run_id = %attempt.run_id, job = %attempt.job_name, "adopted the attempt's existing Job"
            );
            Ok(())
        }
        Err(e) => Err(Error::kube(format!("creating Job {}", attempt.job_name))(e)),
    }
}

/// Publishes one change (it is already written to status): an Event, a log line, metrics.
async fn report(scope: &Scope, run: &EtlRun, status: &EtlRunStatus, transition: &Transition) {
    let ctx = &scope.ctx;
    let name = run.name_any();
    let namespace = run.namespace().unwrap_or_default();
    let dataset = run.spec.dataset.as_str();
    let now = Timestamp::now();
    ctx.metrics.record(DatasetSeries::new(&namespace, dataset), transition, crate::metrics::epoch_seconds(now));
    match transition {
        Transition::AttemptStarted { attempt, max_attempts } => {
            let note = format!(
                "attempt {} of {max_attempts}: Job {} with run id {}",
                attempt.attempt, attempt.job_name, attempt.run_id
            );
            tracing::info!(etlrun = %name, namespace = %namespace, dataset, attempt = attempt.attempt, run_id = %attempt.run_id, "{note}");
            let job = Some(attempt_job(&namespace, &attempt.job_name));
            publish_related::<EtlRun>(ctx, &run.metadata, job, EventType::Normal, "AttemptStarted", "Launch", note)
                .await;
        }
        Transition::AttemptEnded { attempt, retry_after } => {
            if attempt.exit_code.is_some() {
                // Its pod ran, so it started with the Secret and its keys, whatever the attempt's end.
                clear_credentials_condition(scope, run).await;
            }
            if attempt.outcome != Some(AttemptOutcome::Failed) {
                return;
            }
            let reason = attempt.reason.clone().unwrap_or_else(|| "Failed".into());
            let message = attempt.message.clone().unwrap_or_default();
            let note = match retry_after {
                Some(delay) => {
                    format!("attempt {} failed: {message}; retrying in {}s", attempt.attempt, delay.as_secs())
                }
                None => format!("attempt {} failed: {message}", attempt.attempt),
            };
            tracing::warn!(
                etlrun = %name, namespace = %namespace, dataset, attempt = attempt.attempt, run_id = %attempt.run_id,
                reason = %reason, exit_code = attempt.exit_code, retryable = attempt.retryable, "{note}"
            );
            let action = if retry_after.is_some() { "Retry" } else { "Fail" };
            let job = Some(attempt_job(&namespace, &attempt.job_name));
            publish_related::<EtlRun>(ctx, &run.metadata, job, EventType::Warning, &reason, action, note).await;
        }
        Transition::Finished { phase, reason, message, .. } => {
            let run_id = status.run_id.clone().unwrap_or_default();
            let attempt = status.attempts.len();
            let (type_, event_reason) = match phase {
                EtlRunPhase::Succeeded => (EventType::Normal, "Succeeded"),
                EtlRunPhase::QualityGateFailed => (EventType::Warning, "QualityGateFailed"),
                _ => (EventType::Warning, reason.as_str()),
            };
            tracing::info!(etlrun = %name, namespace = %namespace, dataset, attempt, run_id = %run_id, phase = %phase, reason = %reason, "{message}");
            let job = status.attempts.last().map(|a| attempt_job(&namespace, &a.job_name));
            let note = format!("{phase}: {message}");
            publish_related::<EtlRun>(ctx, &run.metadata, job, type_, event_reason, "Finish", note).await;
            if *phase == EtlRunPhase::Succeeded {
                record_freshness(ctx, run, &namespace, &run_id, now).await;
                clear_credentials_condition(scope, run).await;
            }
        }
        Transition::Waiting { reason, message } => {
            tracing::warn!(etlrun = %name, namespace = %namespace, dataset, reason = %reason, "{message}");
            publish::<EtlRun>(ctx, &run.metadata, EventType::Warning, reason, "Wait", message.clone()).await;
        }
    }
}

/// A reference to an attempt's Job, the `related` object of that attempt's Events.
fn attempt_job(namespace: &str, job_name: &str) -> k8s_openapi::api::core::v1::ObjectReference {
    let meta = kube::api::ObjectMeta {
        name: Some(job_name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    super::object_reference::<Job>(&meta)
}

/// What a finished run still owes, done by every reconcile of it until done, so that neither an operator killed
/// after the status write that finished the run nor one refused request loses it:
/// - a Job of one of its attempts still active (an attempt given up while its pod could not start, whose delete
///   after that status write failed or never came) is deleted: it must not start later and write under a run id
///   the status says has ended;
/// - the Promotion its contract asks for (`requestOnSuccess`; the condition `PromotionRequested` is not `True`)
///   is created, and the condition says so.
///
/// The Jobs come from the controller's store (no request for a run that owes nothing).
async fn settle_finished(scope: &Scope, run: &EtlRun) -> Result<()> {
    let Some(status) = &run.status else { return Ok(()) };
    let identity = RunIdentity::of(run)?;
    for attempt in &status.attempts {
        let Some(found) = scope.known_job(&identity.namespace, &attempt.job_name) else { continue };
        let ended = ["Complete", "Failed"].iter().any(|type_| condition_time(&found, type_).is_some());
        if ended || found.metadata.deletion_timestamp.is_some() || !owned_by(&found.metadata, &identity.uid) {
            continue;
        }
        tracing::info!(etlrun = %identity.name, namespace = %identity.namespace, job = %attempt.job_name, "deleting the active Job of a finished run");
        if let Err(e) =
            delete_job(&scope.ctx, &identity.namespace, &attempt.job_name, &DeleteParams::background()).await
        {
            let note = format!("cannot delete Job {} of the finished run: {}", attempt.job_name, e.for_people());
            publish::<EtlRun>(&scope.ctx, &run.metadata, EventType::Warning, "JobDeleteFailed", "Delete", note).await;
            return Err(e);
        }
    }
    let pending = status.phase == Some(EtlRunPhase::Succeeded)
        && status.conditions.iter().any(|c| c.type_ == lifecycle::CONDITION_PROMOTION_REQUESTED && c.status != "True");
    if pending {
        request_promotion(scope, run, &identity, status).await?;
    }
    Ok(())
}

/// Creates the Promotion the run's contract asks for (`spec.promotion.requestOnSuccess`), awaiting approval, and
/// says so in the condition `PromotionRequested` and an Event. A refused create is said there too (`False`,
/// `RequestFailed`, a Warning Event) and returned, so that the error policy tries again after its backoff; it
/// never fails the run.
async fn request_promotion(scope: &Scope, run: &EtlRun, identity: &RunIdentity, status: &EtlRunStatus) -> Result<()> {
    let ctx = &scope.ctx;
    let Some(run_id) = status.run_id.as_deref() else { return Ok(()) };
    // The contract the run ran under (its snapshot), else the Dataset as it is now.
    let requested = match load_contract(scope, run, identity, status, None).await {
        Ok((Ok(dataset), _)) => {
            let creator = run.annotations().get(silverline_crds::promotion::ANNOTATION_CREATED_BY).map(String::as_str);
            super::promotion::request_for_run(ctx, &identity.namespace, &identity.name, creator, &dataset, run_id).await
        }
        Ok((Err(problem), _)) => Err(Error::Snapshot { name: run.spec.dataset.clone(), message: problem.message() }),
        Err(e) => Err(e),
    };
    let name = super::promotion::requested_name(&identity.name);
    let (condition, outcome) = match requested {
        Ok(created) => {
            let message = format!("Promotion {name} of run {run_id} awaits approval");
            if created.is_some() {
                tracing::info!(etlrun = %identity.name, namespace = %identity.namespace, run_id, "{message}");
                publish::<EtlRun>(
                    ctx,
                    &run.metadata,
                    EventType::Normal,
                    "PromotionRequested",
                    "Request",
                    message.clone(),
                )
                .await;
            }
            ((ConditionStatus::True, "Requested", message), Ok(()))
        }
        Err(e) => {
            tracing::warn!(etlrun = %identity.name, namespace = %identity.namespace, error = %e, "cannot request the promotion");
            let message = format!("cannot create Promotion {name} of run {run_id}: {}", e.for_people());
            let said = status.conditions.iter().any(|c| {
                c.type_ == lifecycle::CONDITION_PROMOTION_REQUESTED && c.status == "False" && c.message == message
            });
            if !said {
                let note = message.clone();
                publish::<EtlRun>(ctx, &run.metadata, EventType::Warning, "PromotionRequestFailed", "Request", note)
                    .await;
            }
            ((ConditionStatus::False, "RequestFailed", message), Err(e))
        }
    };
    let mut next = status.clone();
    let (condition_status, reason, message) = condition;
    let update = ConditionUpdate {
        type_: lifecycle::CONDITION_PROMOTION_REQUESTED,
        status: condition_status,
        reason,
        message: &message,
    };
    set_condition(&mut next.conditions, update, run.metadata.generation, Timestamp::now());
    if next != *status {
        write_status(ctx, run, &next).await?;
    }
    outcome
}

/// The run's Dataset as the store has it: `None` when not known (yet); its `Err` when not valid.
fn run_dataset(scope: &Scope, run: &EtlRun) -> Option<Arc<DeserializeGuard<Dataset>>> {
    let namespace = run.namespace().unwrap_or_default();
    scope.datasets.get(&ObjectRef::new(&run.spec.dataset).within(&namespace))
}

/// Whose pods the Dataset's `CredentialsSecret` condition names for a run: "the worker pods of EtlRun tx", and the
/// one that started: "a worker pod of EtlRun tx".
fn worker_pods(run: &EtlRun) -> (String, String) {
    let name = run.name_any();
    (format!("the worker pods of EtlRun {name}"), format!("a worker pod of EtlRun {name}"))
}

/// The attempt's pod waits (`blocker`): if for the Dataset's credentials Secret or a key of it, the Dataset says so
/// too, by its `CredentialsSecret` condition — on every reconcile while the pod waits, written only when the
/// Dataset does not say it already (see `credentials::set`), so that one refused write is made good by the next.
async fn say_credentials_missing(scope: &Scope, run: &EtlRun, blocker: &PodBlocker) {
    let namespace = run.namespace().unwrap_or_default();
    let (whose, _) = worker_pods(run);
    let Some((reason, message)) = credentials::problem(blocker, &namespace, &whose) else { return };
    // Not known (yet) or not valid: nothing to compare with, nothing written; the run says it all the same.
    if let Some(Ok(current)) = run_dataset(scope, run).as_deref().map(|d| d.0.as_ref()) {
        credentials::set(&scope.ctx, current, &whose, false, reason, &message).await;
    }
}

/// The attempt's worker container started, so its pod found the Secret and keys: if the Dataset says they were
/// missing for this run's pods (a False naming them; another run's pods may be waiting since), they are there now —
/// on every reconcile while the attempt runs, so that the Dataset does not say so until the attempt ends, and a
/// refused write is made good by the next (no request while nothing is to be said).
async fn say_credentials_found(scope: &Scope, run: &EtlRun) {
    if let Some(Ok(dataset)) = run_dataset(scope, run).as_deref().map(|d| d.0.as_ref()) {
        let (whose, started) = worker_pods(run);
        credentials::found_for(&scope.ctx, dataset, &whose, &started).await;
    }
}

/// A worker pod of the run started (its attempt ended with an exit code, or the run succeeded): if its Dataset says
/// its Secret or one of its keys was missing, it is there now.
async fn clear_credentials_condition(scope: &Scope, run: &EtlRun) {
    if let Some(Ok(dataset)) = run_dataset(scope, run).as_deref().map(|d| d.0.as_ref()) {
        let (_, started) = worker_pods(run);
        credentials::found(&scope.ctx, dataset, &started, None).await;
    }
}

/// Notes the dataset's last successful run in its status: its freshness, for people and dashboards. A merge
/// patch, so that it never takes the `Valid` condition that the Dataset controller applies.
async fn record_freshness(ctx: &Context, run: &EtlRun, namespace: &str, run_id: &str, now: Timestamp) {
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "status": { "lastSuccessfulRunId": run_id, "lastSuccessTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now) },
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    if let Err(e) = api.patch_status(&run.spec.dataset, &params, &Patch::Merge(&patch)).await {
        tracing::warn!(dataset = %run.spec.dataset, error = %e, "cannot record the dataset's last success");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status})).expect("pod")
    }

    #[test]
    fn a_pods_end_is_read_from_its_worker_container_and_conditions() {
        let terminated = |code: i32, reason: &str| {
            serde_json::json!({"phase": "Failed", "containerStatuses": [{
                "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "reason": reason}}
            }]})
        };
        let end = pod_end(&pod(terminated(3, "Error")));
        assert_eq!((end.exit_code, end.container_reason.as_deref(), end.disruption), (Some(3), Some("Error"), None));
        assert_eq!(pod_end(&pod(terminated(137, "OOMKilled"))).container_reason.as_deref(), Some("OOMKilled"));

        let mut evicted = terminated(143, "Error");
        evicted["reason"] = "Evicted".into();
        evicted["conditions"] =
            serde_json::json!([{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]);
        let end = pod_end(&pod(evicted));
        assert_eq!(
            (end.pod_reason.as_deref(), end.disruption.as_deref()),
            (Some("Evicted"), Some("EvictionByEvictionAPI"))
        );

        let never_ran = pod_end(&pod(serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded"})));
        assert_eq!((never_ran.exit_code, never_ran.pod_reason.as_deref()), (None, Some("DeadlineExceeded")));
    }

    #[test]
    fn a_pod_wakes_its_run_while_it_cannot_start_and_once_when_it_can_and_its_start_is_remembered() {
        let memory = PodEnds::default();
        let with_state = |phase: &str, state: serde_json::Value| {
            let mut p = pod(serde_json::json!({"phase": phase, "containerStatuses": [{
                "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0, "state": state
            }]}));
            p.metadata.namespace = Some("etl".into());
            p.metadata.labels = Some(
                [
                    ("batch.kubernetes.io/job-name".to_owned(), "tx-a1".to_owned()),
                    ("batch.kubernetes.io/controller-uid".to_owned(), "uid-1".to_owned()),
                ]
                .into(),
            );
            p
        };
        let pending = with_state("Pending", serde_json::json!({"waiting": {"reason": "ContainerCreating"}}));
        let blocked = with_state(
            "Pending",
            serde_json::json!({"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"gone\" not found"}}),
        );
        let running = with_state("Running", serde_json::json!({"running": {"startedAt": "2026-12-01T00:00:00Z"}}));
        assert!(!memory.observe(&pending), "a pod on its way wakes nothing");
        assert!(!memory.started("etl", "tx-a1", "uid-1"));
        assert!(memory.observe(&blocked), "a pod that cannot start");
        assert!(memory.observe(&blocked), "and again at each change of it");
        assert!(!memory.started("etl", "tx-a1", "uid-1"));
        assert!(memory.observe(&running), "the pod that could not start now can");
        assert!(memory.started("etl", "tx-a1", "uid-1"));
        assert!(!memory.started("etl", "tx-a1", "uid-2"), "a later Job of the same name");
        assert!(!memory.observe(&running), "once");
        let ended = with_state(
            "Failed",
            serde_json::json!({"terminated": {"exitCode": 3, "startedAt": "2026-12-01T00:00:00Z", "containerID": "c://1"}}),
        );
        assert!(!memory.observe(&ended));
        assert!(memory.started("etl", "tx-a1", "uid-1"));

        // A pod stopped while it could not start: the kubelet makes up a terminated state for the container it
        // never created. Not a start.
        let memory = PodEnds::default();
        assert!(memory.observe(&blocked));
        let never = with_state(
            "Failed",
            serde_json::json!({"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the pod was terminated"}}),
        );
        memory.observe(&never);
        assert!(!memory.started("etl", "tx-a1", "uid-1"));
        // A start seen first in a state between blocked and running (or after a restart, with nothing blocked
        // before) wakes the run, once.
        let memory = PodEnds::default();
        assert!(!memory.observe(&pending));
        assert!(memory.observe(&running), "the first sight of it started");
        assert!(!memory.observe(&running));
        assert!(memory.started("etl", "tx-a1", "uid-1"));
    }

    #[test]
    fn what_a_pod_said_is_said_of_its_own_job_only_not_of_a_later_job_of_the_same_name() {
        let memory = PodEnds::default();
        let waiting = pod(serde_json::json!({"phase": "Pending", "containerStatuses": [{
            "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"gone\" not found"}}
        }]}));
        let mut old = waiting.clone();
        old.metadata.namespace = Some("etl".into());
        old.metadata.labels = Some(
            [
                ("batch.kubernetes.io/job-name".to_owned(), "tx-a1".to_owned()),
                ("batch.kubernetes.io/controller-uid".to_owned(), "uid-old".to_owned()),
            ]
            .into(),
        );
        memory.observe(&old);
        let (blocker, has_pod) = memory.why_not_started("etl", "tx-a1", "uid-old", false);
        assert_eq!((blocker, has_pod), (Some(PodBlocker::SecretNotFound { name: "gone".into() }), true));
        // The run was deleted and made again: its Job tx-a1 is another one, with no pod yet.
        assert_eq!(memory.why_not_started("etl", "tx-a1", "uid-new", false), (None, false));
        let mut ended = old.clone();
        ended.status = Some(serde_json::from_value(serde_json::json!({"phase": "Failed"})).expect("status"));
        memory.observe(&ended);
        assert!(memory.get("etl", "tx-a1", "uid-old").is_some());
        assert!(memory.get("etl", "tx-a1", "uid-new").is_none());
    }

    #[test]
    fn a_pod_that_cannot_start_names_what_it_misses() {
        let waiting = |reason: &str, message: &str| {
            pod(serde_json::json!({"phase": "Pending", "containerStatuses": [{
                "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}}
            }]}))
        };
        let cases = [
            (
                waiting("CreateContainerConfigError", "secret \"lake-creds\" not found"),
                Some(PodBlocker::SecretNotFound { name: "lake-creds".into() }),
            ),
            (
                waiting(
                    "CreateContainerConfigError",
                    "couldn't find key AWS_SECRET_ACCESS_KEY in Secret etl/lake-creds",
                ),
                Some(PodBlocker::SecretKeyMissing { name: "lake-creds".into(), key: "AWS_SECRET_ACCESS_KEY".into() }),
            ),
            (
                waiting("CreateContainerConfigError", "configmap \"x\" not found"),
                Some(PodBlocker::ContainerConfig { message: "configmap \"x\" not found".into() }),
            ),
            (waiting("ContainerCreating", ""), None),
            (pod(serde_json::json!({"phase": "Running"})), None),
        ];
        for (p, expected) in cases {
            assert_eq!(pod_blocker(&p), expected, "{:?}", p.status);
        }
    }

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "tx-a1", "uid": "u1"}, "status": status}))
            .expect("job")
    }

    #[test]
    fn a_view_a_status_was_written_from_is_stale_until_a_newer_one_is_seen() {
        let written = WrittenViews::default();
        assert!(!written.is_stale("u1", "10"), "nothing written yet");
        written.wrote_from("u1", "10");
        assert!(written.is_stale("u1", "10"));
        assert!(!written.is_stale("u2", "10"), "another run");
        assert!(!written.is_stale("u1", "11"), "the write came back");
        assert!(!written.is_stale("u1", "10"), "forgotten once a newer view was seen");
    }

    #[test]
    fn runs_whose_snapshots_hold_the_same_text_share_one_parsed_contract() {
        let example = include_str!("../../../examples/datasets/transactions.yaml");
        let dataset = |lake: &str| example.replace("lakeUri: s3://silverline-lake", &format!("lakeUri: {lake}"));
        let (one, other) = (dataset("/lake"), dataset("/other-lake"));
        let snapshots = Snapshots::default();
        for (uid, text) in [("a", &one), ("b", &one), ("c", &other)] {
            snapshots.insert(uid, snapshots.parse(text).expect("a contract"));
        }
        let (a, b, c) =
            (snapshots.get("a").expect("a"), snapshots.get("b").expect("b"), snapshots.get("c").expect("c"));
        assert!(Arc::ptr_eq(&a, &b), "one text, one parsed contract");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.spec.storage.lake_uri, "/other-lake");
        assert!(snapshots.parse("kind: Secret").is_err(), "a text that is no contract is an error, as before");
        drop((a, b, c));
        // Runs a and b gone: their text is forgotten with them; c's stays.
        snapshots.retain(&std::collections::HashSet::from(["c".to_owned()]));
        let memory = snapshots.0.lock().expect("memory");
        assert_eq!((memory.runs.len(), memory.texts.len()), (1, 1));
        assert!(memory.texts.contains_key(&other));
    }

    #[test]
    fn a_run_is_kept_without_its_managed_fields_valid_or_not() {
        let managed = serde_json::json!([
            {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}},
            {"manager": "silverline-operator", "operation": "Apply", "subresource": "status",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}}
        ]);
        let valid: DeserializeGuard<EtlRun> = serde_json::from_value(serde_json::json!({
            "apiVersion": "etl.silverline.dev/v1alpha1", "kind": "EtlRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u", "managedFields": managed},
            "spec": {"dataset": "transactions", "input": "/data/in/r.csv"},
            "status": {"phase": "Running"}
        }))
        .expect("an EtlRun");
        let invalid: DeserializeGuard<EtlRun> = serde_json::from_value(serde_json::json!({
            "apiVersion": "etl.silverline.dev/v1alpha1", "kind": "EtlRun",
            "metadata": {"name": "bad", "namespace": "ns", "managedFields": managed},
            "spec": {"dataset": 7}
        }))
        .expect("an invalid EtlRun, kept by its metadata");
        for mut run in [valid, invalid] {
            let meta = |run: &DeserializeGuard<EtlRun>| match &run.0 {
                Ok(run) => run.metadata.clone(),
                Err(invalid) => invalid.metadata.clone(),
            };
            assert_eq!(meta(&run).managed_fields.map(|m| m.len()), Some(2));
            slim_run(&mut run);
            let slimmed = meta(&run);
            assert_eq!(slimmed.managed_fields, None);
            assert!(slimmed.name.is_some() && slimmed.namespace.as_deref() == Some("ns"), "the rest is kept");
        }
    }

    #[test]
    fn a_created_job_is_remembered_until_the_store_has_it() {
        let created = CreatedJobs::default();
        created.insert("etl", job(serde_json::json!({})));
        assert!(created.get("etl", "tx-a1", false).is_some(), "not in the store yet: remembered");
        assert!(created.get("other", "tx-a1", false).is_none(), "by namespace");
        assert!(created.get("etl", "tx-a1", true).is_none(), "the store has it: the store answers");
        assert!(created.get("etl", "tx-a1", false).is_none(), "and it is forgotten");
    }

    #[test]
    fn a_job_wakes_its_run_only_when_what_the_plan_reads_changes() {
        let mut filter = job_progress_filter();
        let mut woken =
            |event: watcher::Event<Job>| futures::executor::block_on(filter(Ok(event))).is_some_and(|r| r.is_ok());
        let created = job(serde_json::json!({}));
        assert!(woken(watcher::Event::Apply(created.clone())), "a new Job");
        assert!(!woken(watcher::Event::Apply(created)), "the same again");
        assert!(!woken(watcher::Event::Apply(job(serde_json::json!({"startTime": "2026-01-01T00:00:00Z"})))));
        assert!(woken(watcher::Event::Apply(job(serde_json::json!({"active": 1, "ready": 0})))), "a pod");
        assert!(!woken(watcher::Event::Apply(job(serde_json::json!({"active": 1, "ready": 1, "terminating": 0})))));
        let done = serde_json::json!({"active": 0, "succeeded": 1,
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]});
        assert!(woken(watcher::Event::Apply(job(done))), "a condition");
        let complete = serde_json::json!({"active": 0, "succeeded": 1, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]});
        assert!(woken(watcher::Event::Apply(job(complete.clone()))), "another condition");
        assert!(woken(watcher::Event::Delete(job(complete.clone()))), "a deleted Job, whatever its status");
        assert!(woken(watcher::Event::InitApply(job(complete))), "seen again after a deletion: new");
        assert!(!woken(watcher::Event::Init) && !woken(watcher::Event::InitDone));
    }

    #[test]
    fn only_ended_pods_are_remembered_by_namespace_and_job() {
        let of_job = |phase: &str| {
            let mut p = pod(serde_json::json!({"phase": phase}));
            p.metadata.namespace = Some("etl".into());
            p.metadata.labels = Some(
                [
                    ("batch.kubernetes.io/job-name".to_owned(), "tx-a1".to_owned()),
                    ("batch.kubernetes.io/controller-uid".to_owned(), "u1".to_owned()),
                ]
                .into(),
            );
            p
        };
        let ends = PodEnds::default();
        ends.observe(&of_job("Running"));
        assert!(ends.get("etl", "tx-a1", "u1").is_none());
        let mut failed = of_job("Failed");
        if let Some(status) = failed.status.as_mut() {
            status.reason = Some("Evicted".into());
        }
        ends.observe(&failed);
        assert_eq!(ends.get("etl", "tx-a1", "u1").and_then(|e| e.pod_reason), Some("Evicted".into()));
        assert!(ends.get("other", "tx-a1", "u1").is_none());
    }
}
