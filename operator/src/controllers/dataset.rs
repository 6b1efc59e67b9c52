//! The Dataset controller: its pure `plan` (the `Valid` condition from the contract's own checks, the same
//! `Dataset::validate` the worker applies, so `Valid=True` never meets a worker's exit 2) and its reconcile.

use super::{
    ConditionUpdate, Context, ControllerName, drain, error_policy as shared_error_policy, publish, scoped, unreadable,
};
use crate::metrics::DatasetSeries;
use crate::{Error, Result};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use silverline_crds::Dataset;
use silverline_crds::dataset::DatasetStatus;
use std::sync::Arc;

pub const CONDITION_VALID: &str = "Valid";

/// Why a Dataset is not valid: its contract fails a check, or its lake or endpoint is not one the operator allows
/// in its namespace (`--allowed-lakes`, `--allowed-endpoints`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Contract(String),
    LakeNotAllowed(String),
}

impl Invalid {
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::Contract(_) => "InvalidContract",
            Invalid::LakeNotAllowed(_) => "LakeNotAllowed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Invalid::Contract(message) | Invalid::LakeNotAllowed(message) => message,
        }
    }
}

/// The status the Dataset should have, given the result of its validation. Only `observedGeneration` and the
/// `Valid` condition are decided here; everything else is kept.
pub fn plan(
    current: &DatasetStatus,
    generation: Option<i64>,
    validation: Result<(), Invalid>,
    now: Timestamp,
) -> DatasetStatus {
    let (status, reason, message) = match &validation {
        Ok(()) => (true, "ContractValid", "the contract passes every check"),
        Err(invalid) => (false, invalid.reason(), invalid.message()),
    };
    let mut next = current.clone();
    next.observed_generation = generation;
    super::set_condition(
        &mut next.conditions,
        ConditionUpdate { type_: CONDITION_VALID, status: status.into(), reason, message },
        generation,
        now,
    );
    next
}

pub(crate) async fn run(ctx: Arc<Context>, ns: Option<&str>) {
    let datasets: Api<DeserializeGuard<Dataset>> = scoped(ctx.client.clone(), ns);
    let controller = Controller::new(datasets, watcher::Config::default());
    let store = controller.store();
    let stream = controller.shutdown_on_signal().run(reconcile, error_policy, ctx.clone());
    let (metrics, scope) = (ctx.metrics.clone(), ns.unwrap_or_default());
    tokio::select! {
        () = drain(stream, ControllerName::Dataset, &ctx) => {}
        () = crate::metrics::export_from(store, |datasets| metrics.set_datasets(scope, datasets)) => {}
    }
}

/// One reconcile of one Dataset: its `Valid` condition, and an Event when validity changes.
pub async fn reconcile(guard: Arc<DeserializeGuard<Dataset>>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(ControllerName::Dataset.label());
    let dataset = match &guard.0 {
        Ok(dataset) => dataset,
        // Said in a Warning Event on it, as for EtlRuns and Promotions: no status can be written to it.
        Err(invalid) => return Err(unreadable::<Dataset>(&ctx, "Dataset", invalid).await),
    };
    let name = dataset.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let namespace = dataset.metadata.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
    ctx.metrics.init_dataset(DatasetSeries::new(&namespace, &name));
    let current = dataset.status.clone().unwrap_or_default();
    let validation = dataset
        .validate()
        .map_err(|e| Invalid::Contract(e.to_string()))
        .and_then(|()| ctx.lakes.allowed(&namespace, &dataset.spec.storage).map_err(Invalid::LakeNotAllowed));
    let next = plan(&current, dataset.metadata.generation, validation.clone(), Timestamp::now());
    if next == current {
        return Ok(Action::await_change());
    }
    // Only the fields this controller decides: the EtlRun controller merges the freshness fields.
    let status = serde_json::json!({ "observedGeneration": next.observed_generation, "conditions": next.conditions });
    super::write_status(&ctx, dataset, &status).await?;
    let was = current.conditions.iter().find(|c| c.type_ == CONDITION_VALID);
    let was_valid = was.map(|c| c.status == "True");
    match validation {
        // Said when it becomes invalid, and again when the reason changes (a fixed contract, but a lake that is
        // not allowed).
        Err(invalid) if was.is_none_or(|c| c.status != "False" || c.reason != invalid.reason()) => {
            let message = invalid.message().to_owned();
            tracing::warn!(dataset = %name, namespace = %namespace, reason = invalid.reason(), "not valid: {message}");
            publish::<Dataset>(&ctx, &dataset.metadata, EventType::Warning, invalid.reason(), "Validate", message)
                .await;
        }
        Ok(()) if was_valid == Some(false) => {
            tracing::info!(dataset = %name, namespace = %namespace, "the contract is valid again");
            let note = "the contract passes every check".to_owned();
            publish::<Dataset>(&ctx, &dataset.metadata, EventType::Normal, "ContractValid", "Validate", note).await;
        }
        _ => {}
    }
    Ok(Action::await_change())
}

fn error_policy(guard: Arc<DeserializeGuard<Dataset>>, error: &Error, ctx: Arc<Context>) -> Action {
    shared_error_policy(ControllerName::Dataset, &guard, error, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid")
    }

    #[test]
    fn the_valid_condition_follows_the_contract_and_keeps_its_transition_time() {
        let empty = DatasetStatus::default();
        let valid = plan(&empty, Some(1), Ok(()), at(0));
        let c = &valid.conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str(), c.reason.as_str()), ("Valid", "True", "ContractValid"));
        assert_eq!(c.last_transition_time, Time(at(0)));
        assert_eq!(valid.observed_generation, Some(1));

        let again = plan(&valid, Some(1), Ok(()), at(60));
        assert_eq!(again, valid, "no change, nothing to write");

        let message = "spec.primaryKey: \"Nope\" is not a declared column";
        let broken = plan(&valid, Some(2), Err(Invalid::Contract(message.into())), at(90));
        let c = &broken.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidContract"));
        assert!(c.message.contains("spec.primaryKey"));
        assert_eq!(c.last_transition_time, Time(at(90)));
        assert_eq!(broken.conditions.len(), 1);

        let refused = Invalid::LakeNotAllowed("lake s3://x is not one the operator allows".into());
        let elsewhere = plan(&broken, Some(3), Err(refused), at(120));
        let c = &elsewhere.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "LakeNotAllowed"));
        assert!(c.message.contains("s3://x"), "{}", c.message);
    }

    #[test]
    fn a_reserved_column_name_makes_the_dataset_invalid_before_any_worker_sees_it() {
        let mut dataset =
            Dataset::from_manifest(include_str!("../../../examples/datasets/transactions.yaml")).expect("example");
        dataset.spec.columns[1].name = silverline_crds::RESERVED_COLUMNS[3].into();
        let validation = dataset.validate().map_err(|e| Invalid::Contract(e.to_string()));
        let status = plan(&DatasetStatus::default(), Some(1), validation, at(0));
        let c = &status.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidContract"));
        assert!(c.message.contains("error_type") && c.message.contains("reserved"), "{}", c.message);
    }

    #[test]
    fn other_status_fields_are_kept() {
        let current = DatasetStatus { last_successful_run_id: Some("r1".into()), ..DatasetStatus::default() };
        let next = plan(&current, Some(3), Ok(()), at(0));
        assert_eq!(next.last_successful_run_id.as_deref(), Some("r1"));
    }
}
