//! The controllers, one module each (`etlrun`, `dataset`, `promotion`), and what they share, written once: the
//! `Context`, the status writer (server-side apply conditional on the observed resourceVersion), Events,
//! condition updates and the error policy.

pub mod credentials;
pub mod dataset;
pub mod etlrun;
pub mod promotion;

use crate::job::JobSettings;
use crate::lake::Lakes;
use crate::lifecycle::LifecycleSettings;
use crate::metrics::Metrics;
use crate::{Error, Result, Retry};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// The one field manager of everything the operator writes with server-side apply.
pub const FIELD_MANAGER: &str = "silverline-operator";

/// What every reconcile of every controller shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub jobs: JobSettings,
    pub lifecycle: LifecycleSettings,
    pub promotion: promotion::PromotionSettings,
    /// Serializes the start of promotions per dataset.
    pub promotion_locks: promotion::DatasetLocks,
    pub pod_ends: etlrun::PodEnds,
    pub lake_checks: etlrun::LakeChecks,
    pub lakes: Lakes,
    /// How many EtlRuns are reconciled at once (`--reconcile-concurrency`; see `Config`).
    pub reconcile_concurrency: u16,
    /// Launches per second that make a burst (`--burst-launches-per-second`; see `Config`).
    pub burst_launches_per_second: u32,
    /// The operator's own username as the apiserver authenticates it (see [`Context::username`]).
    pub username: tokio::sync::OnceCell<String>,
    /// Consecutive failed reconciles of each object, for the error policy's backoff.
    pub failures: Failures,
}

/// Consecutive failed reconciles by controller and object (`{controller}/{namespace}/{name}`, and the object's uid,
/// so that one deleted and created again starts afresh): how many, when the first of them failed and when the
/// last. The error policy waits as long as the failures have lasted (`requeue`); a reconcile that ends well
/// forgets the object (`drain`), and so does a failure that waits for a change or for another object (the time
/// spent waiting is not time spent failing). Objects deleted while failing are forgotten an hour after their last
/// failure.
#[derive(Default)]
pub struct Failures(std::sync::Mutex<std::collections::HashMap<String, (Option<String>, Streak)>>);

/// The object whose reconcile failed, as [`Failures`] keeps it.
#[derive(Clone, Copy, Debug)]
pub struct FailedObject<'a> {
    pub controller: ControllerName,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    /// Its uid: one deleted and created again under the same name starts a streak of its own.
    pub uid: Option<&'a str>,
}

/// Failed reconciles of one object in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streak {
    /// How many, counting the one just failed (from 1).
    pub failures: u32,
    first: std::time::Instant,
    last: std::time::Instant,
}

impl Streak {
    /// The first failure, at `now`.
    fn first(now: std::time::Instant) -> Streak {
        Streak { failures: 1, first: now, last: now }
    }

    /// How long since the first of them failed, as of the last.
    pub fn lasted(&self) -> Duration {
        self.last.saturating_duration_since(self.first)
    }

    /// The streak after one more failure at `now`. A failure more than twice the longest wait after the last one
    /// starts a streak of its own: the object was left alone meanwhile (an error that waits for a change), not
    /// failing all along.
    fn failed_again(self, now: std::time::Instant) -> Streak {
        if now.saturating_duration_since(self.last) > 2 * MAX_ERROR_BACKOFF {
            return Streak::first(now);
        }
        Streak { failures: self.failures.saturating_add(1), first: self.first, last: now }
    }
}

impl Failures {
    const FORGET_AFTER: Duration = Duration::from_secs(3600);

    fn key(controller: ControllerName, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{}/{name}", controller.label(), namespace.unwrap_or_default())
    }

    /// A failure of `object` at `now` that is retried by `retry`: one more in its streak, or, for one that waits
    /// for a change or for another object, the end of its streak — waiting is not failing, so a failure after it
    /// starts afresh. Returns the streak the failure's wait is decided by.
    pub fn record_at(&self, retry: Retry, object: FailedObject<'_>, now: std::time::Instant) -> Streak {
        match retry {
            Retry::Soon | Retry::Transient => self.failed_at(object, now),
            Retry::Blocked | Retry::OnChange => {
                self.succeeded(object.controller, object.namespace, object.name);
                Streak::first(now)
            }
        }
    }

    fn failed_at(&self, object: FailedObject<'_>, now: std::time::Instant) -> Streak {
        let Ok(mut failures) = self.0.lock() else { return Streak::first(now) };
        if failures.len() >= 4096 {
            failures.retain(|_, (_, streak)| now.saturating_duration_since(streak.last) < Self::FORGET_AFTER);
        }
        let (key, uid) = (Self::key(object.controller, object.namespace, object.name), object.uid);
        let streak = match failures.get(&key) {
            Some((of, streak)) if of.as_deref() == uid => streak.failed_again(now),
            _ => Streak::first(now),
        };
        failures.insert(key, (uid.map(str::to_owned), streak));
        streak
    }

    /// The object's reconcile ended well: its next failure waits the least again.
    pub fn succeeded(&self, controller: ControllerName, namespace: Option<&str>, name: &str) {
        if let Ok(mut failures) = self.0.lock()
            && !failures.is_empty()
        {
            failures.remove(&Self::key(controller, namespace, name));
        }
    }
}

impl Context {
    /// The operator's own username as the apiserver authenticates it (a SelfSubjectReview, which every
    /// authenticated user may create; asked again until it answers), recorded as `created-by` on the Promotions
    /// it requests: an approval policy installed without its mutating half (before Kubernetes 1.36, or from
    /// `operator/deploy/`) requires every creator to name themselves there.
    pub async fn username(&self) -> Option<String> {
        use k8s_openapi::api::authentication::v1::SelfSubjectReview;
        let ask = || async {
            let api: kube::Api<SelfSubjectReview> = kube::Api::all(self.client.clone());
            let review = api.create(&kube::api::PostParams::default(), &SelfSubjectReview::default()).await?;
            review
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .ok_or_else(|| kube::Error::Service("the SelfSubjectReview named no username".into()))
        };
        match self.username.get_or_try_init(ask).await {
            Ok(name) => Some(name.clone()),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot learn this operator's username (SelfSubjectReview): a Promotion it requests now does not \
                     name its creator, which an approval policy without its mutating half refuses"
                );
                None
            }
        }
    }
}

/// The controllers, as named in metric labels and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerName {
    EtlRun,
    Dataset,
    Promotion,
}

impl ControllerName {
    pub const ALL: [ControllerName; 3] = [ControllerName::EtlRun, ControllerName::Dataset, ControllerName::Promotion];

    pub fn label(self) -> &'static str {
        match self {
            ControllerName::EtlRun => "etlrun",
            ControllerName::Dataset => "dataset",
            ControllerName::Promotion => "promotion",
        }
    }
}

pub(crate) fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Runs every controller until a termination signal. Malformed resources reach `reconcile` as errors of their
/// own (`DeserializeGuard`) instead of breaking the watch of all the others.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let ns = namespace.as_deref();
    // Worker pods are watched by the EtlRun controller (it remembers how they ended, for promotions too).
    futures::join!(etlrun::run(ctx.clone(), ns), dataset::run(ctx.clone(), ns), promotion::run(ctx.clone(), ns));
}

/// Drains a controller's stream: a reconcile that ended well resets its object's error backoff; errors are
/// already counted and logged by the error policy.
pub(crate) async fn drain<K, E: std::fmt::Display>(
    stream: impl futures::Stream<Item = std::result::Result<(ObjectRef<K>, Action), E>>,
    controller: ControllerName,
    ctx: &Context,
) where
    K: Resource,
{
    stream
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => ctx.failures.succeeded(controller, object.namespace.as_deref(), &object.name),
                Err(e) => tracing::debug!(controller = controller.label(), error = %e, "reconcile ended with an error"),
            }
        })
        .await;
}

/// The Event reference of an object of kind `K`: apiVersion and kind from the type, never formatted by hand.
pub fn object_reference<K: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: None,
        field_path: None,
    }
}

/// The longest Event note the API accepts (1 KiB), cut on a character boundary.
pub const MAX_NOTE: usize = 1024;

pub fn truncate_note(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    note
}

/// Publishes one Event about an object of kind `K`. Callers publish on a change of state only (a transition
/// planned once), so a resync does not repeat it.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    meta: &ObjectMeta,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_related::<K>(ctx, meta, None, type_, reason, action, note).await;
}

/// A resource that cannot be read as its kind (a field of the wrong type, an unknown enum value): said in a
/// Warning Event `InvalidResource` on it, since the user must fix it; the error is for the error policy, which
/// waits for a change of the resource.
pub async fn unreadable<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    kind: &'static str,
    invalid: &kube::core::error_boundary::InvalidObject,
) -> Error {
    let message = invalid.error.clone();
    publish::<K>(ctx, &invalid.metadata, EventType::Warning, "InvalidResource", "Read", message.clone()).await;
    let name = invalid.metadata.name.clone().unwrap_or_default();
    Error::InvalidResource { kind, name, message }
}

/// Publishes one Event about an object of kind `K` that concerns another object too (`related`, e.g. an
/// attempt's Job). The Recorder folds Events of one object with the same type, reason and action into a series
/// of the first one — whose note then speaks for all — unless their `related` object differs: so each attempt's
/// Events name that attempt's Job.
pub async fn publish_related<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    meta: &ObjectMeta,
    related: Option<ObjectReference>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate_note(note)),
        action: action.to_owned(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object_reference::<K>(meta)).await {
        tracing::warn!(error = %e, reason, kind = %K::kind(&()), "cannot publish an Event");
    }
}

/// Writes `status` of an object with server-side apply under the operator's field manager, on the condition
/// that the object has not changed since it was read (its resourceVersion): a stale view never overwrites a
/// newer decision. A conflict is `Error::Conflict`, retried at once with a fresh view.
pub async fn write_status<K, S>(ctx: &Context, object: &K, status: &S) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let kind = static_kind::<K>();
    let meta = object.meta();
    let name = meta.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let namespace = meta.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name, "resourceVersion": meta.resource_version },
        "status": status,
    });
    match api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict { kind, name }),
        Err(e) => Err(Error::kube(format!("writing the status of {kind} {name}"))(e)),
    }
}

/// The kind of `K` as a `'static` name for error messages (Silverline's kinds and the built-ins it touches).
pub fn static_kind<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "EtlRun" => "EtlRun",
        "Dataset" => "Dataset",
        "Promotion" => "Promotion",
        "Job" => "Job",
        "ConfigMap" => "ConfigMap",
        _ => "object",
    }
}

/// A condition's status, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { ConditionStatus::True } else { ConditionStatus::False }
    }
}

/// One condition to set.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionUpdate<'a> {
    pub type_: &'a str,
    pub status: ConditionStatus,
    pub reason: &'a str,
    pub message: &'a str,
}

/// Sets one condition of a list-map by type: its transition time changes only when its status does; the list
/// stays sorted by type, so an unchanged decision is an unchanged status (nothing to write).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = update.status.as_str();
    let transition_time = conditions
        .iter()
        .find(|c| c.type_ == update.type_ && c.status == status)
        .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != update.type_);
    conditions.push(Condition {
        type_: update.type_.to_owned(),
        status: status.to_owned(),
        reason: update.reason.to_owned(),
        message: update.message.to_owned(),
        last_transition_time: transition_time,
        observed_generation: generation,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The error policy of every controller: counted by controller and category, logged, and requeued by the
/// error's type (`Error::retry`).
pub fn error_policy<K>(controller: ControllerName, guard: &DeserializeGuard<K>, error: &Error, ctx: &Context) -> Action
where
    K: Resource<DynamicType = ()>,
{
    ctx.metrics.reconcile_failed(controller.label(), error.category());
    let meta = guard.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let now = std::time::Instant::now();
    let streak = ctx.failures.record_at(
        error.retry(),
        FailedObject { controller, namespace: meta.namespace.as_deref(), name, uid: meta.uid.as_deref() },
        now,
    );
    let action = requeue(error.retry(), &streak);
    tracing::warn!(
        controller = controller.label(),
        kind = %K::kind(&()),
        name,
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        category = error.category(),
        failures = streak.failures,
        failing_for_s = streak.lasted().as_secs(),
        error = %error,
        "reconcile failed"
    );
    action
}

/// How often an object whose reconcile is blocked by another object is looked at again.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(30);

/// The longest wait after failed reconciles of one object.
pub const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(300);

/// How long a failure waits before the next reconcile of its object: as long as its failures in a row have lasted
/// (`streak`), at least a base by the kind of failure, at most [`MAX_ERROR_BACKOFF`]. Reconciles that only the
/// backoff starts so wait twice as long each (5, 5, 10, 20, 40 s…), and an apiserver or a quota refusing a
/// thousand objects is asked less and less often, not every few seconds forever; yet a recovery is seen within
/// as long again as the outage lasted, however many events on the object failed meanwhile (a Job's pods change it
/// several times a second; counting those failures would have reached minutes of waiting within seconds).
/// An object in the way (`Retry::Blocked`) is looked at again every 30 s: a person removes it, and nothing is
/// hammered meanwhile.
pub fn requeue(retry: Retry, streak: &Streak) -> Action {
    let base = match retry {
        Retry::Soon => Duration::from_millis(200),
        Retry::Transient => Duration::from_secs(5),
        Retry::Blocked => return Action::requeue(BLOCKED_RECHECK),
        Retry::OnChange => return Action::await_change(),
    };
    Action::requeue(streak.lasted().clamp(base, MAX_ERROR_BACKOFF.max(base)))
}

/// Deletes a Job of the operator's (an attempt given up, a promote Job rejected); one already gone counts as deleted.
pub async fn delete_job(
    ctx: &Context,
    namespace: &str,
    job_name: &str,
    params: &kube::api::DeleteParams,
) -> Result<()> {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(ctx.client.clone(), namespace);
    match jobs.delete(job_name, params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting Job {job_name}"))(e)),
    }
}

/// The pods of a Job (worker pods of an attempt, or of a promote Job), by the Job controller's label.
pub async fn pods_of_job(
    ctx: &Context,
    namespace: &str,
    job_name: &str,
) -> Result<Vec<k8s_openapi::api::core::v1::Pod>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("batch.kubernetes.io/job-name={job_name}");
    let list = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("listing the pods of Job {job_name}")))?;
    Ok(list.items)
}

/// The newest of a Job's pods.
pub fn newest_pod(pods: &[k8s_openapi::api::core::v1::Pod]) -> Option<&k8s_openapi::api::core::v1::Pod> {
    pods.iter().max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Whether `meta` names `uid` among its owners.
pub fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use silverline_crds::{Dataset, EtlRun};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid")
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let mut conditions = Vec::new();
        let up = |status: bool, reason| ConditionUpdate { type_: "Valid", status: status.into(), reason, message: "m" };
        set_condition(&mut conditions, up(true, "Ok"), Some(1), at(0));
        set_condition(&mut conditions, up(true, "StillOk"), Some(2), at(10));
        assert_eq!(conditions.len(), 1);
        assert_eq!((conditions[0].reason.as_str(), &conditions[0].last_transition_time), ("StillOk", &Time(at(0))));
        set_condition(&mut conditions, up(false, "Broken"), Some(3), at(20));
        assert_eq!((conditions[0].status.as_str(), &conditions[0].last_transition_time), ("False", &Time(at(20))));
        set_condition(&mut conditions, ConditionUpdate { type_: "Approved", ..up(true, "Ok") }, None, at(30));
        assert_eq!(conditions.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Approved", "Valid"]);
    }

    #[test]
    fn event_references_take_api_version_and_kind_from_the_type() {
        let meta = ObjectMeta { name: Some("tx".into()), namespace: Some("etl".into()), ..ObjectMeta::default() };
        let r = object_reference::<EtlRun>(&meta);
        assert_eq!(
            (r.api_version.as_deref(), r.kind.as_deref()),
            (Some("etl.silverline.dev/v1alpha1"), Some("EtlRun"))
        );
        assert_eq!(object_reference::<Dataset>(&meta).kind.as_deref(), Some("Dataset"));
        assert_eq!(static_kind::<silverline_crds::Promotion>(), "Promotion");
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_character_boundary() {
        let long = "é".repeat(MAX_NOTE);
        let cut = truncate_note(long);
        assert!(cut.len() <= MAX_NOTE && cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_note("short".into()), "short");
    }

    #[test]
    fn errors_requeue_by_their_type() {
        let conflict = Error::Conflict { kind: "Promotion", name: "p".into() };
        assert_eq!(conflict.retry(), Retry::Soon);
        assert!(conflict.to_string().starts_with("Promotion p changed"));
        let invalid = Error::InvalidResource { kind: "Dataset", name: "d".into(), message: "bad".into() };
        let first = Streak::first(std::time::Instant::now());
        assert_eq!((invalid.retry(), requeue(invalid.retry(), &first)), (Retry::OnChange, Action::await_change()));
        let lake = Error::Lake { uri: "s3://l".into(), message: "timeout".into() };
        assert_eq!(requeue(lake.retry(), &first), Action::requeue(Duration::from_secs(5)));
    }

    #[test]
    fn failures_wait_as_long_as_they_have_lasted_up_to_the_bound_and_a_success_resets_them() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let lasted = |s: u64| Streak { failures: 1, first: t0, last: t0 + Duration::from_secs(s) };
        let waits = |retry, seconds: &[u64]| seconds.iter().map(|&s| requeue(retry, &lasted(s))).collect::<Vec<_>>();
        let secs = |s: &[u64]| s.iter().map(|&s| Action::requeue(Duration::from_secs(s))).collect::<Vec<_>>();
        assert_eq!(waits(Retry::Transient, &[0, 3, 5, 10, 20, 299, 600]), secs(&[5, 5, 5, 10, 20, 299, 300]));
        assert_eq!(
            waits(Retry::Blocked, &[0, 100, 900]),
            secs(&[30; 3]),
            "an object in the way is looked for every 30 s"
        );
        assert_eq!(requeue(Retry::Soon, &lasted(0)), Action::requeue(Duration::from_millis(200)));
        assert_eq!(requeue(Retry::Soon, &lasted(1)), Action::requeue(Duration::from_secs(1)));
        assert_eq!(requeue(Retry::Soon, &lasted(365 * 86_400)), Action::requeue(MAX_ERROR_BACKOFF));
        assert_eq!(requeue(Retry::OnChange, &lasted(9)), Action::await_change());

        let failures = Failures::default();
        let object = |controller, uid| FailedObject { controller, namespace: Some("ns"), name: "a", uid: Some(uid) };
        let (run, other) = (object(ControllerName::EtlRun, "uid-1"), object(ControllerName::Promotion, "uid-1"));
        let forget = |o: FailedObject| failures.succeeded(o.controller, o.namespace, o.name);
        let fail = |o: FailedObject, s| {
            let streak = failures.failed_at(o, at(s));
            (streak.failures, streak.lasted().as_secs())
        };
        // Only the backoff starting reconciles, each when the wait before it ended: each wait twice the one before.
        let schedule = [0, 5, 10, 20, 40, 80, 160];
        let backoff: Vec<_> =
            schedule.iter().map(|&s| requeue(Retry::Transient, &failures.failed_at(run, at(s)))).collect();
        assert_eq!(backoff, secs(&[5, 5, 10, 20, 40, 80, 160]));
        forget(run);
        // A burst of events failing fifty reconciles in three seconds waits three seconds' worth, not minutes.
        let burst: Vec<_> = (0..50).map(|n| fail(run, 1000 + n / 17)).collect();
        assert_eq!(burst.last(), Some(&(50, 2)));
        assert_eq!(requeue(Retry::Transient, &failures.failed_at(run, at(1003))), secs(&[5])[0]);
        assert_eq!(requeue(Retry::Transient, &failures.failed_at(run, at(1012))), secs(&[12])[0]);
        assert_eq!(fail(other, 1003), (1, 0), "counted per controller and object");
        forget(run);
        assert_eq!(fail(run, 1004), (1, 0), "a success starts again");
        assert_eq!(fail(other, 1010), (2, 7));
        assert_eq!(fail(other, 1010 + 600), (3, 607), "waited the longest wait twice over: still failing");
        assert_eq!(fail(other, 1610 + 601), (1, 0), "left alone longer than twice the longest wait: a new streak");
        assert_eq!(fail(other, 2212), (2, 1));
        let recreated = object(ControllerName::Promotion, "uid-2");
        assert_eq!(fail(recreated, 2213), (1, 0), "deleted and created again: afresh");

        // Four minutes of an invalid object (waiting for a change), then an apiserver error: 5 s, not 240.
        let record = |retry, s| failures.record_at(retry, run, at(s));
        record(Retry::Transient, 3000);
        record(Retry::OnChange, 3001);
        record(Retry::OnChange, 3240);
        assert_eq!(requeue(Retry::Transient, &record(Retry::Transient, 3241)), secs(&[5])[0]);
        assert_eq!(requeue(Retry::Transient, &record(Retry::Transient, 3246)), secs(&[5])[0]);
        assert_eq!(requeue(Retry::Blocked, &record(Retry::Blocked, 3300)), secs(&[30])[0]);
        assert_eq!(record(Retry::Transient, 3330).failures, 1, "after waiting for another object: afresh");
    }
}
