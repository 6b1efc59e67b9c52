//! The objects an attempt needs, built without touching the API: the run's contract snapshot (a ConfigMap the
//! worker reads with `--contract`, shared by the runs launched with the same Dataset manifest) and one Job per
//! attempt.

use crate::{Error, Result};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::ObjectMeta;
use silverline_crds::etlrun::MAX_ETLRUN_NAME;
use silverline_crds::{Dataset, EtlRun};
use silverline_lake::store::METADATA_DISABLED;
use std::collections::BTreeMap;

/// The worker container's name; the pod failure policy refers to it.
pub const WORKER_CONTAINER: &str = "worker";
/// The worker's executable in its image.
pub const WORKER_COMMAND: &str = "silverline-worker";
/// Where the contract snapshot is mounted in the worker container.
pub const CONTRACT_MOUNT: &str = "/etc/silverline/contract";
/// The key (file name) of the Dataset manifest in the contract snapshot.
pub const CONTRACT_KEY: &str = "dataset.yaml";
/// Where a run's worker keeps part files bound for S3 until they are uploaded (`--spill-dir`): an `emptyDir`,
/// since the root file system is read-only.
pub const SPILL_MOUNT: &str = "/var/spill";

pub const LABEL_ETLRUN: &str = "etl.silverline.dev/etlrun";
pub const LABEL_DATASET: &str = "etl.silverline.dev/dataset";
pub const LABEL_ATTEMPT: &str = "etl.silverline.dev/attempt";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "silverline-operator";
pub const ANNOTATION_RUN_ID: &str = "etl.silverline.dev/run-id";
/// On an attempt's Job: the contract snapshot ConfigMap its pod mounts (so that a Job found without the status
/// naming it tells its run's snapshot too).
pub const ANNOTATION_CONTRACT_SNAPSHOT: &str = "etl.silverline.dev/contract-snapshot";
/// The `app.kubernetes.io/component` of a contract snapshot ConfigMap.
pub const COMPONENT_CONTRACT_SNAPSHOT: &str = "contract-snapshot";

/// The worker's permanent exit codes: the Job fails at once, the operator does not retry.
pub const PERMANENT_EXIT_CODES: [i32; 4] = [2, 3, 4, 5];

/// How worker Jobs are built: from the operator's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub service_account: String,
    /// The uid the worker runs as (non-root).
    pub run_as_user: i64,
    /// `activeDeadlineSeconds` of an attempt unless the EtlRun sets `deadlineSeconds`.
    pub default_deadline_seconds: i64,
    /// How long a finished Job (and its pod, with the logs) is kept.
    pub ttl_seconds_after_finished: i32,
    /// Worker resources unless the EtlRun sets `resources`.
    pub default_resources: Option<ResourceRequirements>,
    /// `sizeLimit` of the run's spill volume (`--spill-dir`).
    pub spill_size_limit: String,
    /// Whether workers may fall back to the node's instance-metadata credentials (else
    /// `AWS_EC2_METADATA_DISABLED=true`; `--worker-instance-metadata-credentials`).
    pub instance_metadata_credentials: bool,
    /// Variables set in every worker's environment (`--worker-env`), e.g. an egress proxy.
    pub env: WorkerEnv,
}

/// Variables the operator sets in every worker's and promote pod's environment (`--worker-env`): one `NAME=VALUE`
/// per line, e.g. `HTTPS_PROXY=http://proxy.corp:3128` and `NO_PROXY=.svc,.cluster.local` for a lake reached
/// through an egress proxy. `NAME` is a C identifier, each once; the value is all after the first `=`, as
/// written, without control characters; blank lines are skipped. Not `AWS_*`: those set
/// the lake client — credentials, endpoint, region — which the Dataset's contract, its credentials Secret and the
/// operator's grants decide (an `AWS_ENDPOINT_URL` here would pass `--allowed-endpoints` by), and not
/// `SILVERLINE_*`, the worker's own settings, which its flags and the operator decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerEnv(pub Vec<(String, String)>);

/// Prefixes of the variables `--worker-env` cannot set (see [`WorkerEnv`]).
pub const RESERVED_ENV_PREFIXES: [&str; 2] = ["AWS_", "SILVERLINE_"];

impl WorkerEnv {
    /// These variables and then `more`'s; a name set by both is refused.
    pub fn merged(mut self, more: &WorkerEnv) -> Result<WorkerEnv, String> {
        for (name, value) in &more.0 {
            if self.0.iter().any(|(seen, _)| seen == name) {
                return Err(format!("--worker-env sets {name} twice"));
            }
            self.0.push((name.clone(), value.clone()));
        }
        Ok(self)
    }
}

impl std::str::FromStr for WorkerEnv {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut env = WorkerEnv::default();
        for (n, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
            let line = line.trim_end_matches('\r');
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!("--worker-env line {}: {line:?} is not NAME=VALUE", n + 1));
            };
            let name = name.trim();
            let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !identifier {
                return Err(format!(
                    "--worker-env line {}: {name:?} is not a variable name (letters, digits and _, not starting \
                     with a digit)",
                    n + 1
                ));
            }
            if let Some(prefix) = RESERVED_ENV_PREFIXES.iter().find(|p| name.to_ascii_uppercase().starts_with(*p)) {
                return Err(format!(
                    "--worker-env line {}: {name} is not for --worker-env: {prefix}* variables are set by the \
                     Dataset's contract and credentials Secret and by the operator",
                    n + 1
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(format!("--worker-env line {}: the value of {name} has a control character", n + 1));
            }
            env = env.merged(&WorkerEnv(vec![(name.to_owned(), value.to_owned())]))?;
        }
        Ok(env)
    }
}

/// The Job of attempt `attempt` of EtlRun `run`.
pub fn job_name(run: &str, attempt: u32) -> String {
    format!("{run}-a{attempt}")
}

/// The EtlRun whose attempt Job is named `job` (the inverse of [`job_name`]), when the name has that shape.
pub fn run_of_job(job: &str) -> Option<&str> {
    let (run, attempt) = job.rsplit_once("-a")?;
    (!run.is_empty() && !attempt.is_empty() && attempt.bytes().all(|b| b.is_ascii_digit())).then_some(run)
}

/// The per-run snapshot ConfigMap of runs launched by operators before snapshots were shared
/// (`status.contractSnapshot` unset): read, and created again if missing, under this name, owned by the run.
pub fn legacy_contract_name(run: &str) -> String {
    format!("{run}-contract")
}

/// A contract snapshot: the Dataset manifest the worker reads, and the name of the ConfigMap holding it,
/// `{dataset}-contract-{xxh3 of the manifest, 16 hex digits}`. The name follows from the text alone, so every run
/// launched with the same manifest mounts the same immutable ConfigMap, and a changed Dataset gives a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractSnapshot {
    pub name: String,
    pub manifest: String,
    /// The Dataset's name.
    pub dataset: String,
    /// The Dataset as an owner, when made from the Dataset as the apiserver holds it (one parsed back from a
    /// snapshot has no uid): its snapshots go with it.
    pub owner: Option<OwnerReference>,
}

impl ContractSnapshot {
    pub fn of(dataset: &Dataset) -> Result<ContractSnapshot> {
        let dataset_name = dataset.metadata.name.as_deref().ok_or(Error::MissingField("Dataset metadata.name"))?;
        let manifest = contract_manifest(dataset)?;
        Ok(ContractSnapshot {
            name: Self::name_of(dataset_name, &manifest),
            manifest,
            dataset: dataset_name.to_owned(),
            owner: dataset.controller_owner_ref(&()),
        })
    }

    /// The name of Dataset `dataset`'s snapshot holding `manifest` (so a snapshot read back is checked against
    /// its name: a ConfigMap under that name holding anything else is not the run's contract).
    pub fn name_of(dataset: &str, manifest: &str) -> String {
        format!("{dataset}-contract-{}", contract_hash(manifest))
    }
}

/// The hash that names a contract manifest — in a snapshot's name, and a Promotion's `status.contractHash`:
/// xxh3, 16 hex digits.
pub fn contract_hash(manifest: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(manifest.as_bytes()))
}

/// A run id: the attempt's UTC start time, the first 8 characters of the EtlRun's uid (two runs started in the
/// same second differ) and the attempt number, e.g. `20240131T235959Z-0f3a9c12-a2`.
pub fn run_id(started: Timestamp, uid: &str, attempt: u32) -> String {
    let stamp = started.strftime("%Y%m%dT%H%M%SZ");
    let short: String = uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("{stamp}-{short}-a{attempt}")
}

/// The name, namespace and uid of an EtlRun, checked to be usable for the names derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub owner: OwnerReference,
}

impl RunIdentity {
    pub fn of(run: &EtlRun) -> Result<RunIdentity> {
        let name = run.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
        let namespace = run.metadata.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
        let uid = run.metadata.uid.clone().ok_or(Error::MissingField("metadata.uid"))?;
        if name.len() > MAX_ETLRUN_NAME || silverline_crds::names::check_dataset_name(&name).is_err() {
            return Err(Error::InvalidResource {
                kind: "EtlRun",
                name,
                message: format!("the name must be a DNS label of at most {MAX_ETLRUN_NAME} characters"),
            });
        }
        let owner = run.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
        Ok(RunIdentity { name, namespace, uid, owner })
    }
}

fn labels(run: &RunIdentity, dataset: &str, attempt: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        ("app.kubernetes.io/name".to_owned(), "silverline-worker".to_owned()),
        (LABEL_ETLRUN.to_owned(), run.name.clone()),
        (LABEL_DATASET.to_owned(), dataset.to_owned()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
    ])
}

/// The Dataset manifest the worker reads: apiVersion, kind, name and spec only.
pub fn contract_manifest(dataset: &Dataset) -> Result<String> {
    let name = dataset.metadata.name.clone().ok_or(Error::MissingField("Dataset metadata.name"))?;
    let snapshot = Dataset::new(&name, dataset.spec.clone());
    serde_yaml::to_string(&snapshot).map_err(|e| Error::Serialize { what: "the Dataset", source: Box::new(e) })
}

/// The immutable ConfigMap of a contract snapshot under `name` (the snapshot's own, or a legacy run's), owned by
/// `owner`: the Dataset (its snapshots go with it), or the run when the Dataset is gone or the name is a legacy
/// run's. Every attempt of a run applies the same contract.
pub fn contract_config_map(
    namespace: &str,
    dataset: &str,
    name: &str,
    manifest: &str,
    owner: OwnerReference,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
                ("app.kubernetes.io/component".to_owned(), COMPONENT_CONTRACT_SNAPSHOT.to_owned()),
                (LABEL_DATASET.to_owned(), dataset.to_owned()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        immutable: Some(true),
        data: Some(BTreeMap::from([(CONTRACT_KEY.to_owned(), manifest.to_owned())])),
        ..ConfigMap::default()
    }
}

/// What one attempt runs.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptPlan<'a> {
    pub attempt: u32,
    pub run_id: &'a str,
    pub job_name: &'a str,
    /// The contract snapshot ConfigMap the pod mounts.
    pub snapshot: &'a str,
}

/// The Job of one attempt: no retries inside the Job (the operator retries under a new run id), a deadline, a
/// TTL, a pod failure policy that fails at once on the worker's permanent exit codes, and a restricted pod.
pub fn worker_job(
    run: &EtlRun,
    identity: &RunIdentity,
    dataset: &Dataset,
    attempt: &AttemptPlan,
    settings: &JobSettings,
) -> Result<Job> {
    let dataset_name = dataset.metadata.name.clone().ok_or(Error::MissingField("Dataset metadata.name"))?;
    let labels = labels(identity, &dataset_name, attempt.attempt);
    // Values from a manifest go as `--flag=value`: a value starting with '-' is then a value, never a flag.
    let args = vec![
        "run".into(),
        "--contract".into(),
        format!("{CONTRACT_MOUNT}/{CONTRACT_KEY}"),
        format!("--input={}", run.spec.input),
        format!("--run-id={}", attempt.run_id),
        "--progress".into(),
        "json".into(),
        "--spill-dir".into(),
        SPILL_MOUNT.into(),
    ];
    let resources = run.spec.resources.clone().or_else(|| settings.default_resources.clone());
    let mut pod = worker_pod(args, dataset, attempt.snapshot, resources, settings);
    add_spill_volume(&mut pod, &settings.spill_size_limit);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(attempt.job_name.to_owned()),
            namespace: Some(identity.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_RUN_ID.to_owned(), attempt.run_id.to_owned()),
                (ANNOTATION_CONTRACT_SNAPSHOT.to_owned(), attempt.snapshot.to_owned()),
            ])),
            owner_references: Some(vec![identity.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(run.spec.deadline_seconds.unwrap_or(settings.default_deadline_seconds)),
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: Some(WORKER_CONTAINER.into()),
                        operator: "In".into(),
                        values: PERMANENT_EXIT_CODES.to_vec(),
                    }),
                    on_pod_conditions: None,
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(ANNOTATION_RUN_ID.to_owned(), attempt.run_id.to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// How long a worker pod may take to stop after SIGTERM: the store's retry budget and 30 s more. A worker told to
/// stop in the middle of a store call that is being retried (throttling) lets the call end, aborts (or, at the end
/// of a run, completes) its uploads and exits 75 without `_SUCCESS`; at Kubernetes' default of 30 s it would be
/// killed first, its uploads left open and its exit 137.
pub const WORKER_TERMINATION_GRACE_SECONDS: i64 = silverline_lake::store::DEFAULT_IO_RETRY_SECONDS as i64 + 30;

/// The variables a worker takes from the Dataset's credentials Secret, each from the Secret's key of the same name,
/// and whether the key must be there. Only these: a Secret cannot set anything else in the worker's environment
/// (an `AWS_ENDPOINT_URL` past the operator's endpoint grants, a container-credentials URL, the metadata fallback).
pub const CREDENTIAL_KEYS: [(&str, bool); 3] =
    [("AWS_ACCESS_KEY_ID", true), ("AWS_SECRET_ACCESS_KEY", true), ("AWS_SESSION_TOKEN", false)];

/// The restricted pod of a worker: non-root, read-only root file system, all capabilities dropped, seccomp
/// `RuntimeDefault`, no service-account token; the contract snapshot mounted read-only; the Dataset's lake
/// credentials by reference to the Secret's keys only ([`CREDENTIAL_KEYS`]).
pub fn worker_pod(
    args: Vec<String>,
    dataset: &Dataset,
    contract_config_map: &str,
    resources: Option<ResourceRequirements>,
    settings: &JobSettings,
) -> PodSpec {
    let mut env: Vec<EnvVar> = settings
        .env
        .0
        .iter()
        .map(|(name, value)| EnvVar { name: name.clone(), value: Some(value.clone()), ..EnvVar::default() })
        .collect();
    if let Some(secret) = &dataset.spec.storage.credentials_secret {
        env.extend(CREDENTIAL_KEYS.iter().map(|&(key, required)| EnvVar {
            name: key.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: key.to_owned(),
                    optional: Some(!required),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }));
    }
    if !settings.instance_metadata_credentials {
        env.push(EnvVar { name: METADATA_DISABLED.to_owned(), value: Some("true".into()), ..EnvVar::default() });
    }
    let env = (!env.is_empty()).then_some(env);
    let container = Container {
        name: WORKER_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec![WORKER_COMMAND.to_owned()]),
        args: Some(args),
        env,
        resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "contract".into(),
            mount_path: CONTRACT_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    PodSpec {
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(WORKER_TERMINATION_GRACE_SECONDS),
        service_account_name: Some(settings.service_account.clone()),
        // The worker talks to the lake, never to the Kubernetes API.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.run_as_user),
            run_as_group: Some(settings.run_as_user),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "contract".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: contract_config_map.to_owned(),
                default_mode: Some(0o444),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

/// Mounts an `emptyDir` of at most `size_limit` at [`SPILL_MOUNT`] in the worker container, for `--spill-dir`.
/// The worker spills at most 5 MiB per open partition (a `year=/month=` of the run's rows, plus quarantine and
/// condemned); on the node's disk, not in memory.
fn add_spill_volume(pod: &mut PodSpec, size_limit: &str) {
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "spill".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size_limit.to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    for container in &mut pod.containers {
        container.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
            name: "spill".into(),
            mount_path: SPILL_MOUNT.into(),
            ..VolumeMount::default()
        });
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silverline_crds::EtlRunSpec;

    const CONTRACT: &str = include_str!("../../examples/datasets/transactions.yaml");

    fn settings() -> JobSettings {
        JobSettings {
            image: "ghcr.io/silverline-dev/worker:0.1.0".into(),
            image_pull_policy: None,
            service_account: "silverline-worker".into(),
            run_as_user: 65532,
            default_deadline_seconds: 3600,
            ttl_seconds_after_finished: 86400,
            default_resources: None,
            spill_size_limit: "2Gi".into(),
            instance_metadata_credentials: false,
            env: WorkerEnv::default(),
        }
    }

    fn run() -> EtlRun {
        let mut run = EtlRun::new(
            "tx-2024-01",
            EtlRunSpec {
                dataset: "transactions".into(),
                input: "s3://bronze/tx/2024-01.csv".into(),
                resources: None,
                deadline_seconds: None,
            },
        );
        run.metadata.namespace = Some("etl".into());
        run.metadata.uid = Some("0f3a9c12-aaaa-bbbb-cccc-000000000000".into());
        run
    }

    fn dataset() -> Dataset {
        Dataset::from_manifest(CONTRACT).expect("example contract")
    }

    fn build(run: &EtlRun, dataset: &Dataset) -> Job {
        let identity = RunIdentity::of(run).expect("identity");
        let plan = AttemptPlan {
            attempt: 2,
            run_id: "20240131T235959Z-0f3a9c12-a2",
            job_name: "tx-2024-01-a2",
            snapshot: "transactions-contract-0123456789abcdef",
        };
        worker_job(run, &identity, dataset, &plan, &settings()).expect("job")
    }

    #[test]
    fn the_run_of_an_attempt_job_is_its_name_without_the_attempt() {
        assert_eq!(run_of_job(&job_name("tx-2024-01-a7", 12)), Some("tx-2024-01-a7"));
        assert_eq!(run_of_job("tx-a"), None);
        assert_eq!(run_of_job("tx-a1b"), None);
        assert_eq!(run_of_job("-a1"), None);
        assert_eq!(run_of_job("tx"), None);
    }

    #[test]
    fn run_ids_are_valid_lake_segments_and_differ_per_attempt_and_run() {
        let at: Timestamp = "2024-01-31T23:59:59.5Z".parse().expect("time");
        let id = run_id(at, "0f3a9c12-aaaa", 2);
        assert_eq!(id, "20240131T235959Z-0f3a9c12-a2");
        assert!(silverline_crds::names::check_run_id(&id).is_ok());
        assert_ne!(run_id(at, "0f3a9c12-aaaa", 3), id);
        assert_ne!(run_id(at, "11111111-aaaa", 2), id);
    }

    #[test]
    fn derived_names_stay_dns_labels_for_the_longest_run_name() {
        let longest = "a".repeat(MAX_ETLRUN_NAME);
        for name in [job_name(&longest, 999_999_999), legacy_contract_name(&longest)] {
            assert!(name.len() <= 63, "{name}");
            assert!(silverline_crds::names::check_dataset_name(&name).is_ok(), "{name}");
        }
        // A snapshot's name is a DNS-1123 subdomain (a ConfigMap's rule: at most 253 characters of lowercase
        // letters, digits, '-' and '.', alphanumeric at both ends) for the longest Dataset name.
        let mut dataset = dataset();
        dataset.metadata.name = Some("d".repeat(63));
        let snapshot = ContractSnapshot::of(&dataset).expect("snapshot").name;
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        assert!(snapshot.len() <= 253 && snapshot.chars().all(allowed), "{snapshot}");
        assert!(ends(snapshot.chars().next()) && ends(snapshot.chars().last()), "{snapshot}");
    }

    #[test]
    fn the_job_never_retries_inside_itself_and_fails_at_once_on_permanent_exit_codes() {
        let job = build(&run(), &dataset());
        let spec = job.spec.expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(3600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(86400));
        let rule = &spec.pod_failure_policy.expect("policy").rules[0];
        assert_eq!(rule.action, "FailJob");
        let codes = rule.on_exit_codes.as_ref().expect("exit codes");
        assert_eq!((codes.operator.as_str(), codes.values.as_slice()), ("In", &[2, 3, 4, 5][..]));
        assert_eq!(codes.container_name.as_deref(), Some(WORKER_CONTAINER));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn the_job_is_owned_by_the_run_and_named_by_attempt() {
        let job = build(&run(), &dataset());
        assert_eq!(job.metadata.name.as_deref(), Some("tx-2024-01-a2"));
        let owner = &job.metadata.owner_references.expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("EtlRun", "tx-2024-01", Some(true)));
        let labels = job.metadata.labels.expect("labels");
        assert_eq!(labels.get(LABEL_ATTEMPT).map(String::as_str), Some("2"));
        assert_eq!(labels.get(LABEL_DATASET).map(String::as_str), Some("transactions"));
        let annotations = job.metadata.annotations.expect("annotations");
        assert_eq!(annotations.get(ANNOTATION_RUN_ID).map(String::as_str), Some("20240131T235959Z-0f3a9c12-a2"));
        assert_eq!(
            annotations.get(ANNOTATION_CONTRACT_SNAPSHOT).map(String::as_str),
            Some("transactions-contract-0123456789abcdef")
        );
    }

    #[test]
    fn the_worker_runs_restricted_with_the_contract_snapshot_and_its_run_id() {
        let job = build(&run(), &dataset());
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.service_account_name.as_deref(), Some("silverline-worker"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        // Time for a store call being retried to end after SIGTERM: the retry budget and 30 s.
        assert_eq!(pod.termination_grace_period_seconds, Some(210));
        let pod_security = pod.security_context.expect("pod security");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.seccomp_profile.map(|s| s.type_), Some("RuntimeDefault".into()));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("ghcr.io/silverline-dev/worker:0.1.0"));
        assert_eq!(c.command.as_deref(), Some(&[WORKER_COMMAND.to_owned()][..]));
        let sc = c.security_context.as_ref().expect("security");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_owned()]));
        let args = c.args.clone().expect("args").join(" ");
        assert_eq!(
            args,
            "run --contract /etc/silverline/contract/dataset.yaml --input=s3://bronze/tx/2024-01.csv \
             --run-id=20240131T235959Z-0f3a9c12-a2 --progress json --spill-dir /var/spill"
        );
        let mounts: Vec<_> =
            c.volume_mounts.iter().flatten().map(|m| (m.name.as_str(), m.mount_path.as_str())).collect();
        assert_eq!(mounts, [("contract", "/etc/silverline/contract"), ("spill", "/var/spill")]);
        let volumes = pod.volumes.expect("volumes");
        assert_eq!(
            volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
            Some("transactions-contract-0123456789abcdef")
        );
        assert_eq!(volumes[1].name, "spill");
        let spill = volumes[1].empty_dir.as_ref().expect("the spill volume is an emptyDir");
        assert_eq!(spill.medium, None, "on the node's disk, not in memory");
        assert_eq!(spill.size_limit, Some(Quantity("2Gi".into())));
    }

    #[test]
    fn credentials_are_referenced_never_copied() {
        let job = build(&run(), &dataset());
        let c = &job.spec.and_then(|s| s.template.spec).expect("pod").containers[0];
        assert!(c.env_from.is_none(), "never the whole Secret: it could set any variable of the worker");
        // (name, literal value, (Secret, key, optional)) of each variable.
        type Variable<'a> = (&'a str, Option<&'a str>, Option<(&'a str, &'a str, Option<bool>)>);
        let env: Vec<Variable> = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let from = e.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref());
                (e.name.as_str(), e.value.as_deref(), from.map(|r| (r.name.as_str(), r.key.as_str(), r.optional)))
            })
            .collect();
        let secret = "silverline-lake-credentials";
        assert_eq!(
            env,
            [
                ("AWS_ACCESS_KEY_ID", None, Some((secret, "AWS_ACCESS_KEY_ID", Some(false)))),
                ("AWS_SECRET_ACCESS_KEY", None, Some((secret, "AWS_SECRET_ACCESS_KEY", Some(false)))),
                ("AWS_SESSION_TOKEN", None, Some((secret, "AWS_SESSION_TOKEN", Some(true)))),
                // Listed after the Secret's keys and never one of them: no instance-metadata fallback.
                ("AWS_EC2_METADATA_DISABLED", Some("true"), None),
            ]
        );

        let mut anonymous = dataset();
        anonymous.spec.storage.credentials_secret = None;
        let c = &build(&run(), &anonymous).spec.and_then(|s| s.template.spec).expect("pod").containers[0];
        assert!(c.env_from.is_none());
        let names: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["AWS_EC2_METADATA_DISABLED"], "the fallback is off without a Secret too");
    }

    #[test]
    fn the_operators_worker_env_comes_first_and_cannot_touch_the_lake_client() {
        let env: WorkerEnv =
            "HTTPS_PROXY=http://proxy.corp:3128\n\n NO_PROXY=.svc,10.0.0.0/8,a=b\n".parse().expect("env");
        assert_eq!(
            env.0,
            [
                ("HTTPS_PROXY".to_owned(), "http://proxy.corp:3128".to_owned()),
                ("NO_PROXY".to_owned(), ".svc,10.0.0.0/8,a=b".to_owned())
            ],
            "one per line, commas and = kept in the value, blank lines skipped"
        );
        let settings = JobSettings { env, ..settings() };
        let identity = RunIdentity::of(&run()).expect("identity");
        let plan = AttemptPlan { attempt: 1, run_id: "r-a1", job_name: "tx-2024-01-a1", snapshot: "s" };
        let job = worker_job(&run(), &identity, &dataset(), &plan, &settings).expect("job");
        let c = &job.spec.and_then(|s| s.template.spec).expect("pod").containers[0];
        let names: Vec<(&str, Option<&str>)> =
            c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref())).collect();
        assert_eq!(
            names,
            [
                ("HTTPS_PROXY", Some("http://proxy.corp:3128")),
                ("NO_PROXY", Some(".svc,10.0.0.0/8,a=b")),
                ("AWS_ACCESS_KEY_ID", None),
                ("AWS_SECRET_ACCESS_KEY", None),
                ("AWS_SESSION_TOKEN", None),
                ("AWS_EC2_METADATA_DISABLED", Some("true")),
            ]
        );

        for (bad, says) in [
            ("AWS_ENDPOINT_URL=http://elsewhere", "AWS_* variables are set by the Dataset"),
            ("aws_access_key_id=x", "AWS_* variables"),
            ("SILVERLINE_IO_RETRY_SECONDS=1", "SILVERLINE_* variables"),
            ("HTTPS_PROXY", "line 1: \"HTTPS_PROXY\" is not NAME=VALUE"),
            ("ok=1\n1X=2", "line 2: \"1X\" is not a variable name"),
            ("A-B=1", "\"A-B\" is not a variable name"),
            ("=1", "\"\" is not a variable name"),
            ("TZ=UTC\nTZ=CET", "--worker-env sets TZ twice"),
            ("TZ=UTC\u{1b}[0m", "the value of TZ has a control character"),
        ] {
            let refused = bad.parse::<WorkerEnv>().expect_err(bad);
            assert!(refused.contains(says), "{bad:?}: {refused}");
        }
        let windows: WorkerEnv = "TZ=UTC\r\nLANG=C.UTF-8\r".parse().expect("CRLF lines");
        assert_eq!(windows.0, [("TZ".to_owned(), "UTC".to_owned()), ("LANG".to_owned(), "C.UTF-8".to_owned())]);
        let twice = WorkerEnv(vec![("TZ".into(), "UTC".into())]).merged(&"TZ=CET".parse().expect("env"));
        assert_eq!(twice, Err("--worker-env sets TZ twice".to_owned()), "across repeated flags too");
    }

    #[test]
    fn the_instance_metadata_fallback_is_on_only_where_the_operator_allows_it() {
        let identity = RunIdentity::of(&run()).expect("identity");
        let plan = AttemptPlan { attempt: 1, run_id: "r-a1", job_name: "tx-2024-01-a1", snapshot: "s" };
        let allowed = JobSettings { instance_metadata_credentials: true, ..settings() };
        let job = worker_job(&run(), &identity, &dataset(), &plan, &allowed).expect("job");
        let env = job.spec.and_then(|s| s.template.spec).expect("pod").containers[0].env.clone().unwrap_or_default();
        assert!(env.iter().all(|e| e.name != METADATA_DISABLED), "{env:?}");
    }

    #[test]
    fn overrides_in_the_run_win_over_the_defaults() {
        let mut run = run();
        run.spec.deadline_seconds = Some(120);
        run.spec.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into()),
            )])),
            ..ResourceRequirements::default()
        });
        let spec = build(&run, &dataset()).spec.expect("spec");
        assert_eq!(spec.active_deadline_seconds, Some(120));
        assert!(spec.template.spec.expect("pod").containers[0].resources.is_some());
    }

    #[test]
    fn the_contract_snapshot_is_an_immutable_dataset_manifest_the_worker_accepts() {
        let identity = RunIdentity::of(&run()).expect("identity");
        let snapshot = ContractSnapshot::of(&dataset()).expect("snapshot");
        let cm = contract_config_map("etl", "transactions", &snapshot.name, &snapshot.manifest, identity.owner);
        assert_eq!(cm.immutable, Some(true));
        assert_eq!(cm.metadata.name.as_deref(), Some(snapshot.name.as_str()));
        let text = cm.data.and_then(|d| d.get(CONTRACT_KEY).cloned()).expect("manifest");
        let parsed = Dataset::from_manifest(&text).expect("the worker's parser accepts it");
        assert_eq!(parsed.spec, dataset().spec);
        assert!(parsed.status.is_none());
        // The manifest read back gives the same snapshot: a run's recorded snapshot is found again from it.
        assert_eq!(ContractSnapshot::of(&parsed).expect("again"), snapshot);
        assert_eq!(ContractSnapshot::name_of("transactions", &text), snapshot.name);
        assert_ne!(ContractSnapshot::name_of("transactions", &format!("{text}# changed\n")), snapshot.name);
    }

    #[test]
    fn a_snapshot_is_named_by_its_manifest_alone() {
        let first = ContractSnapshot::of(&dataset()).expect("snapshot");
        assert!(
            first.name.starts_with("transactions-contract-") && first.name.len() == "transactions-contract-".len() + 16
        );
        // The same manifest (another run, another generation of an unchanged spec): the same snapshot.
        let mut same = dataset();
        same.metadata.generation = Some(7);
        same.metadata.uid = Some("other".into());
        let again = ContractSnapshot::of(&same).expect("same");
        assert_eq!((&again.name, &again.manifest), (&first.name, &first.manifest));
        // Owned by the Dataset it was made from when that is the apiserver's (with a uid); not one read back.
        assert_eq!(
            again.owner.map(|o| (o.kind, o.name, o.uid)),
            Some(("Dataset".into(), "transactions".into(), "other".into()))
        );
        assert_eq!(first.owner, None, "a manifest has no uid");
        // A changed contract: another snapshot.
        let mut changed = dataset();
        changed.spec.max_attempts += 1;
        assert_ne!(ContractSnapshot::of(&changed).expect("changed").name, first.name);
    }

    #[test]
    fn a_run_name_too_long_for_its_jobs_is_refused() {
        let mut run = run();
        run.metadata.name = Some("a".repeat(MAX_ETLRUN_NAME + 1));
        assert!(matches!(RunIdentity::of(&run), Err(Error::InvalidResource { .. })));
    }
}
