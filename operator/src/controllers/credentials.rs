//! The Dataset's `CredentialsSecret` condition, written once for both kinds of pods that mount the Dataset's
//! credentials: an `EtlRun`'s worker pods and a `Promotion`'s promote and reject pods. A pod that waits for the
//! Secret (or one of its keys) sets it False, naming the Secret, the key and whose pods wait — checked on every
//! reconcile while it waits, so a refused write is made good by the next. A False belongs to the waiting pods it
//! names: they keep it current (another key missing now), and other waiting pods leave it alone, so two of them
//! never overwrite each other. A run's worker container seen running sets it True if the False names that run's
//! pods (on every reconcile while the attempt runs); a worker pod that ran (its attempt ended with an exit code, or
//! the run succeeded) sets it True again whoever's wait it names; a Promotion's Job whose pod ran sets True only a
//! False that names that Promotion (its pod started then, but the Secret may have gone since and a run's pod be
//! waiting for it now). `lastTransitionTime` moves with the status. Its own
//! field manager: the Dataset controller owns `Valid` under its own, and server-side apply merges the two
//! conditions by type.

use super::Context;
use crate::lifecycle::PodBlocker;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use silverline_crds::Dataset;

/// The condition's type.
pub const CONDITION: &str = "CredentialsSecret";

/// Its field manager.
const MANAGER: &str = "silverline-operator-credentials";

/// What the condition says of pods (`whose`: "the worker pods of EtlRun tx") that wait for the credentials Secret
/// (`blocker`): its reason and message; `None` for pods held back by anything else.
pub fn problem(blocker: &PodBlocker, namespace: &str, whose: &str) -> Option<(&'static str, String)> {
    match blocker {
        PodBlocker::SecretNotFound { name } => Some((
            "SecretNotFound",
            format!(
                "Secret {name} (storage.credentialsSecret) does not exist in namespace {namespace}: {whose} cannot start"
            ),
        )),
        PodBlocker::SecretKeyMissing { name, key } => Some((
            "KeyMissing",
            format!(
                "Secret {name} (storage.credentialsSecret) in namespace {namespace} has no key {key}: {whose} cannot start"
            ),
        )),
        _ => None,
    }
}

/// Whether the Dataset says its Secret or one of its keys is missing; with `naming`, only if that False names it.
pub fn said_missing(dataset: &Dataset, naming: Option<&str>) -> bool {
    dataset.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == CONDITION && c.status == "False" && naming.is_none_or(|name| c.message.contains(name)))
    })
}

/// The condition as the Dataset has it now.
fn current(dataset: &Dataset) -> Option<&Condition> {
    dataset.status.as_ref()?.conditions.iter().find(|c| c.type_ == CONDITION)
}

fn status_of(found: bool) -> &'static str {
    if found { "True" } else { "False" }
}

/// Whether writing found-or-not with `message`, for pods `whose`, changes what the Dataset says: a new status
/// does; a False does again only if it is these pods' own (it names them) and says something else now.
pub fn would_change(dataset: &Dataset, found: bool, message: &str, whose: &str) -> bool {
    match current(dataset) {
        None => true,
        Some(c) if c.status != status_of(found) => true,
        Some(_) if found => false,
        Some(c) => waits_for(&c.message, whose) && c.message != message,
    }
}

/// Whether a False's message (see [`problem`]) names pods `whose` as the ones waiting: its end, so that EtlRun `a`
/// is not taken for EtlRun `ab`.
fn waits_for(message: &str, whose: &str) -> bool {
    message.strip_suffix(" cannot start").and_then(|m| m.strip_suffix(whose)).is_some_and(|m| m.ends_with(": "))
}

/// When the condition last changed status: kept while the status stays what it was, `now` when it changes.
fn transition_time(dataset: &Dataset, found: bool, now: Timestamp) -> Time {
    match current(dataset) {
        Some(c) if c.status == status_of(found) => c.last_transition_time.clone(),
        _ => Time(now),
    }
}

/// Sets the condition on Dataset `current` (as the caller last saw it) for pods `whose`: found or not, why —
/// unless that changes nothing (see [`would_change`]). A failure is logged: for a waiting pod the next reconcile
/// writes it again; a True is not retried (the pods' own resources say the same in their status and Events).
pub async fn set(ctx: &Context, current: &Dataset, whose: &str, found: bool, reason: &str, message: &str) {
    if !would_change(current, found, message, whose) {
        return;
    }
    let Some(namespace) = current.metadata.namespace.as_deref() else { return };
    let dataset = kube::ResourceExt::name_any(current);
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), namespace);
    let condition = serde_json::json!({
        "type": CONDITION,
        "status": status_of(found),
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition_time(current, found, Timestamp::now()),
    });
    let patch = serde_json::json!({
        "apiVersion": <Dataset as kube::Resource>::api_version(&()),
        "kind": <Dataset as kube::Resource>::kind(&()),
        "metadata": { "name": dataset },
        "status": { "conditions": [condition] },
    });
    let params = PatchParams::apply(MANAGER).force();
    if let Err(e) = api.patch_status(&dataset, &params, &Patch::Apply(&patch)).await {
        tracing::warn!(dataset, namespace, error = %e, "cannot set the dataset's CredentialsSecret condition");
    }
}

/// A pod (`started`: "a worker pod of EtlRun tx") started with the Secret: if `dataset` says it or one of its keys
/// was missing (with `naming`, in a False that names it), it is there now.
pub async fn found(ctx: &Context, dataset: &Dataset, started: &str, naming: Option<&str>) {
    if said_missing(dataset, naming) {
        let message = format!("{started} started with the Secret");
        set(ctx, dataset, started, true, "SecretFound", &message).await;
    }
}

/// A pod of the ones `whose` ("the worker pods of EtlRun tx") started (`started`: "a worker pod of EtlRun tx"): if
/// `dataset` says the Secret or a key was missing in a False that names those pods as waiting, it is there now. A
/// False naming other pods is theirs to keep.
pub async fn found_for(ctx: &Context, dataset: &Dataset, whose: &str, started: &str) {
    if said_missing_for(dataset, whose) {
        let message = format!("{started} started with the Secret");
        set(ctx, dataset, started, true, "SecretFound", &message).await;
    }
}

/// Whether the Dataset's condition is a False that names pods `whose` as the ones waiting.
fn said_missing_for(dataset: &Dataset, whose: &str) -> bool {
    current(dataset).is_some_and(|c| c.status == "False" && waits_for(&c.message, whose))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_is_told_which_secret_or_key_is_missing_and_whose_pods_wait() {
        let gone = PodBlocker::SecretNotFound { name: "lake-creds".into() };
        let (reason, note) = problem(&gone, "etl", "the worker pods of EtlRun tx").expect("said");
        assert_eq!(reason, "SecretNotFound");
        assert_eq!(
            note,
            "Secret lake-creds (storage.credentialsSecret) does not exist in namespace etl: the worker pods of \
             EtlRun tx cannot start"
        );
        let key = PodBlocker::SecretKeyMissing { name: "lake-creds".into(), key: "AWS_SECRET_ACCESS_KEY".into() };
        let (reason, note) = problem(&key, "etl", "the promote pod of Promotion p").expect("said");
        assert_eq!(reason, "KeyMissing");
        assert_eq!(
            note,
            "Secret lake-creds (storage.credentialsSecret) in namespace etl has no key AWS_SECRET_ACCESS_KEY: the \
             promote pod of Promotion p cannot start"
        );
        let other = PodBlocker::ContainerConfig { message: "Secret x: no".into() };
        assert_eq!(problem(&other, "etl", "the worker pods of EtlRun tx"), None);
    }

    #[test]
    fn a_false_is_kept_current_by_the_pods_it_names_and_left_alone_by_others() {
        let with = |status: &str, message: &str| -> Dataset {
            let mut d =
                Dataset::from_manifest(include_str!("../../../examples/datasets/transactions.yaml")).expect("example");
            d.status = Some(
                serde_json::from_value(serde_json::json!({"conditions": [{
                    "type": CONDITION, "status": status, "reason": "R", "message": message,
                    "lastTransitionTime": "2026-12-01T00:00:00Z",
                }]}))
                .expect("status"),
            );
            d
        };
        let (a, b) = ("the worker pods of EtlRun a", "the worker pods of EtlRun b");
        let key = |k: &str, whose: &str| format!("Secret s has no key {k}: {whose} cannot start");
        let missing = with("False", &key("AWS_ACCESS_KEY_ID", a));
        // Its own pods: the same words change nothing; another key missing now is written.
        assert!(!would_change(&missing, false, &key("AWS_ACCESS_KEY_ID", a), a));
        assert!(would_change(&missing, false, &key("AWS_SECRET_ACCESS_KEY", a), a));
        // Other waiting pods leave it alone, whatever they say — EtlRun `a`'s pods too, if it names `ab`'s.
        assert!(!would_change(&missing, false, &key("AWS_SECRET_ACCESS_KEY", b), b));
        let ab = "the worker pods of EtlRun ab";
        assert!(!would_change(
            &with("False", &key("AWS_ACCESS_KEY_ID", ab)),
            false,
            &key("AWS_SECRET_ACCESS_KEY", a),
            a
        ));
        // Found is written over any False, once.
        assert!(would_change(&missing, true, "started", b));
        assert!(!would_change(&with("True", "a pod started"), true, "another pod started", b));
        // A True or no condition at all: a waiting pod's False is written.
        assert!(would_change(&with("True", "a pod started"), false, &key("AWS_ACCESS_KEY_ID", b), b));
        let mut none = missing.clone();
        none.status = None;
        assert!(would_change(&none, false, &key("AWS_ACCESS_KEY_ID", b), b));
        // The time of the last change of status: kept from one key to another, new from missing to found.
        let now: Timestamp = "2026-12-01T01:00:00Z".parse().expect("time");
        let then: Timestamp = "2026-12-01T00:00:00Z".parse().expect("time");
        assert_eq!(transition_time(&missing, false, now), Time(then));
        assert_eq!(transition_time(&missing, true, now), Time(now));
        assert_eq!(transition_time(&none, false, now), Time(now));
    }

    #[test]
    fn only_a_false_condition_says_missing() {
        let with = |conditions: serde_json::Value| -> Dataset {
            let mut d =
                Dataset::from_manifest(include_str!("../../../examples/datasets/transactions.yaml")).expect("example");
            d.status = Some(serde_json::from_value(serde_json::json!({"conditions": conditions})).expect("status"));
            d
        };
        let condition = |type_: &str, status: &str, message: &str| {
            serde_json::json!({
                "type": type_, "status": status, "reason": "R", "message": message,
                "lastTransitionTime": "2026-12-01T00:00:00Z",
            })
        };
        let waits = "Secret s ...: the pod of Job p-p1 (Promotion p) cannot start";
        let missing = with(serde_json::json!([condition(CONDITION, "False", waits)]));
        assert!(said_missing(&missing, None));
        assert!(said_missing(&missing, Some("(Promotion p)")), "a False that names the Promotion");
        assert!(!said_missing(&missing, Some("(Promotion q)")), "not another Promotion's");
        assert!(!said_missing(&with(serde_json::json!([condition(CONDITION, "True", waits)])), None));
        assert!(!said_missing(&with(serde_json::json!([condition("Valid", "False", waits)])), None));
        assert!(!said_missing(&with(serde_json::json!([])), None));

        // A run's pods: only a False that names them as the ones waiting (EtlRun `a` is not `ab`, nor `xa`).
        let run = |name: &str| {
            format!(
                "Secret s (storage.credentialsSecret) does not exist in namespace etl: the worker pods of EtlRun {name} cannot start"
            )
        };
        let a = "the worker pods of EtlRun a";
        assert!(said_missing_for(&with(serde_json::json!([condition(CONDITION, "False", &run("a"))])), a));
        for other in ["ab", "xa", "b"] {
            let theirs = with(serde_json::json!([condition(CONDITION, "False", &run(other))]));
            assert!(!said_missing_for(&theirs, a), "{other}");
        }
        assert!(!said_missing_for(&with(serde_json::json!([condition(CONDITION, "True", &run("a"))])), a));
        assert!(!said_missing_for(&with(serde_json::json!([condition(CONDITION, "False", waits)])), a));
    }
}
