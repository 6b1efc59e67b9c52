//! The Dataset's own status: whether its contract passes the checks the apiserver's schema cannot express
//! (columns named in keys, decimal precision, patterns that compile…), as a `Valid` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use silverline_crds::dataset::DatasetStatus;

pub const CONDITION_VALID: &str = "Valid";

/// The status the Dataset should have, given the result of its validation. Only `observedGeneration` and the
/// `Valid` condition are decided here; everything else is kept.
pub fn dataset_status(
    current: &DatasetStatus,
    generation: Option<i64>,
    validation: Result<(), String>,
    now: Timestamp,
) -> DatasetStatus {
    let (status, reason, message) = match validation {
        Ok(()) => ("True", "ContractValid", "the contract passes every check".to_owned()),
        Err(message) => ("False", "InvalidContract", message),
    };
    let transition_time = current
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_VALID && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    let mut next = current.clone();
    next.observed_generation = generation;
    next.conditions.retain(|c| c.type_ != CONDITION_VALID);
    next.conditions.push(Condition {
        type_: CONDITION_VALID.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: transition_time,
        observed_generation: generation,
    });
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid")
    }

    #[test]
    fn the_valid_condition_follows_the_contract_and_keeps_its_transition_time() {
        let empty = DatasetStatus::default();
        let valid = dataset_status(&empty, Some(1), Ok(()), at(0));
        let c = &valid.conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str(), c.reason.as_str()), ("Valid", "True", "ContractValid"));
        assert_eq!(valid.observed_generation, Some(1));

        let again = dataset_status(&valid, Some(1), Ok(()), at(60));
        assert_eq!(again, valid, "no change, nothing to write");

        let broken =
            dataset_status(&valid, Some(2), Err("spec.primaryKey: \"Nope\" is not a declared column".into()), at(90));
        let c = &broken.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidContract"));
        assert!(c.message.contains("spec.primaryKey"));
        assert_eq!(c.last_transition_time, Time(at(90)));
        assert_eq!(broken.conditions.len(), 1);
    }

    #[test]
    fn other_status_fields_are_kept() {
        let current = DatasetStatus { last_successful_run_id: Some("r1".into()), ..DatasetStatus::default() };
        let next = dataset_status(&current, Some(3), Ok(()), at(0));
        assert_eq!(next.last_successful_run_id.as_deref(), Some("r1"));
    }
}
