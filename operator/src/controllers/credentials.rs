//! The Dataset's `CredentialsSecret` condition, written once for both kinds of pods that mount the Dataset's
//! credentials: an `EtlRun`'s worker pods and a `Promotion`'s promote and reject pods. A pod that waits for the
//! Secret (or one of its keys) sets it False, naming the Secret, the key and whose pods wait. A worker pod that
//! started sets it True again whoever's wait it names; a Promotion's Job that completed sets True only a False
//! that names that Promotion (its pod started then, but the Secret may have gone since and a run's pod be waiting
//! for it now). Its own field manager: the Dataset controller owns `Valid` under its own, and server-side apply
//! merges the two conditions by type.

use super::Context;
use crate::lifecycle::PodBlocker;
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

/// Sets the condition on Dataset `dataset`: found or not, why. A failure is logged: the pods' own resource says
/// the same in its status and Events.
pub async fn set(ctx: &Context, namespace: &str, dataset: &str, found: bool, reason: &str, message: &str) {
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), namespace);
    let condition = serde_json::json!({
        "type": CONDITION,
        "status": if found { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
    });
    let patch = serde_json::json!({
        "apiVersion": <Dataset as kube::Resource>::api_version(&()),
        "kind": <Dataset as kube::Resource>::kind(&()),
        "metadata": { "name": dataset },
        "status": { "conditions": [condition] },
    });
    let params = PatchParams::apply(MANAGER).force();
    if let Err(e) = api.patch_status(dataset, &params, &Patch::Apply(&patch)).await {
        tracing::warn!(dataset, namespace, error = %e, "cannot set the dataset's CredentialsSecret condition");
    }
}

/// A pod (`started`: "a worker pod of EtlRun tx") started with the Secret: if `dataset` says it or one of its keys
/// was missing (with `naming`, in a False that names it), it is there now.
pub async fn found(ctx: &Context, namespace: &str, dataset: &Dataset, started: &str, naming: Option<&str>) {
    if said_missing(dataset, naming) {
        let name = kube::ResourceExt::name_any(dataset);
        set(ctx, namespace, &name, true, "SecretFound", &format!("{started} started with the Secret")).await;
    }
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
    }
}
