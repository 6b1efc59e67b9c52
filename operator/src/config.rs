//! The operator's configuration: flags, each also read from an environment variable.

use crate::job::JobSettings;
use crate::leader::LeaseSettings;
use crate::lifecycle::LifecycleSettings;
use crate::retry::RetryPolicy;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "silverline-operator", version, about = "Runs Silverline EtlRuns as Jobs of the worker")]
pub struct Config {
    /// Watch only these namespaces (repeat the flag, or separate them with commas; default: all namespaces).
    /// The operator then needs its rules in each of them only (Roles instead of a ClusterRole).
    #[arg(long = "namespace", env = "SILVERLINE_NAMESPACE", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Where each namespace's Datasets may keep their lake: `NAMESPACE=LAKE` (repeat the flag, or separate them
    /// with commas), `NAMESPACE` a namespace or `*` for all, `LAKE` a root that holds the Dataset's lake by whole
    /// segments (`s3://bucket[/prefix]`, an absolute path) or `*` for any. None given: no lake is allowed, and every
    /// Dataset says so in its `Valid` condition (`LakeNotAllowed`).
    #[arg(long = "allowed-lakes", env = "SILVERLINE_ALLOWED_LAKES")]
    pub allowed_lakes: Vec<crate::lake::LakeGrants>,
    /// The custom S3 endpoints (`spec.storage.endpoint`) Datasets may name: `http(s)://HOST[:PORT]` (repeat, or
    /// separate with commas) or `*` for any. None given: a Dataset with an endpoint is not allowed.
    #[arg(long = "allowed-endpoints", env = "SILVERLINE_ALLOWED_ENDPOINTS")]
    pub allowed_endpoints: Vec<crate::lake::EndpointGrants>,
    /// Where each namespace's EtlRuns may read their input (`spec.input`): `NAMESPACE=ROOT` grants as for
    /// `--allowed-lakes`. None given: inputs are not restricted (the workers read them with the Dataset's
    /// identity); give them where namespaces share one worker identity. Refused, a run waits (`InputNotAllowed`).
    #[arg(long = "allowed-inputs", env = "SILVERLINE_ALLOWED_INPUTS")]
    pub allowed_inputs: Vec<crate::lake::LakeGrants>,
    /// The worker's container image.
    #[arg(long, env = "SILVERLINE_WORKER_IMAGE")]
    pub worker_image: String,
    /// imagePullPolicy of the worker container.
    #[arg(long, env = "SILVERLINE_WORKER_IMAGE_PULL_POLICY")]
    pub worker_image_pull_policy: Option<String>,
    /// The ServiceAccount worker pods run as (e.g. one bound to an IAM role for the lake).
    #[arg(long, env = "SILVERLINE_WORKER_SERVICE_ACCOUNT", default_value = "silverline-worker")]
    pub worker_service_account: String,
    /// The non-root uid (and gid) of the worker.
    #[arg(long, env = "SILVERLINE_WORKER_UID", default_value_t = 65532)]
    pub worker_uid: i64,
    /// CPU request and limit of the worker unless the EtlRun sets resources (e.g. `2`).
    #[arg(long, env = "SILVERLINE_WORKER_CPU")]
    pub worker_cpu: Option<String>,
    /// Memory request and limit of the worker unless the EtlRun sets resources (e.g. `2Gi`).
    #[arg(long, env = "SILVERLINE_WORKER_MEMORY")]
    pub worker_memory: Option<String>,
    /// activeDeadlineSeconds of an attempt unless the EtlRun sets deadlineSeconds.
    #[arg(long, env = "SILVERLINE_ATTEMPT_DEADLINE_SECONDS", default_value_t = 6 * 3600)]
    pub attempt_deadline_seconds: i64,
    /// ttlSecondsAfterFinished of worker Jobs.
    #[arg(long, env = "SILVERLINE_JOB_TTL_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub job_ttl_seconds: i32,
    /// sizeLimit of a run's spill volume, where part files bound for S3 wait for their upload: at most 5 MiB per
    /// open partition (a month of the run's rows), so the default holds a run spanning ~400 months at once.
    #[arg(long, env = "SILVERLINE_WORKER_SPILL_SIZE_LIMIT", default_value = "2Gi", value_parser = parse_quantity)]
    pub worker_spill_size_limit: String,
    /// Let worker pods take lake credentials from the node's instance metadata (`169.254.169.254`) when nothing
    /// else gives them any. Off by default: a Dataset without a credentials Secret, run by a worker ServiceAccount
    /// without IRSA or pod identity, would otherwise act with the node's IAM role; worker pods get
    /// `AWS_EC2_METADATA_DISABLED=true` and such a run fails saying it has no credentials (exit 2).
    #[arg(long, env = "SILVERLINE_WORKER_INSTANCE_METADATA_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub worker_instance_metadata_credentials: bool,
    /// Variables set in every worker's environment: `NAME=VALUE` (repeat the flag, or put one per line), e.g.
    /// `HTTPS_PROXY=http://proxy.corp:3128` and `NO_PROXY=...` for a lake reached through an egress proxy. Not
    /// `AWS_*` (the Dataset's contract and credentials Secret set the lake client) nor `SILVERLINE_*`.
    #[arg(long = "worker-env", env = "SILVERLINE_WORKER_ENV")]
    pub worker_env: Vec<crate::job::WorkerEnv>,
    /// Wait after the first failed attempt, in seconds; doubles per attempt (see --retry-factor).
    #[arg(long, env = "SILVERLINE_RETRY_BASE_SECONDS", default_value_t = 30.0)]
    pub retry_base_seconds: f64,
    #[arg(long, env = "SILVERLINE_RETRY_FACTOR", default_value_t = 2.0)]
    pub retry_factor: f64,
    /// The longest wait between attempts, in seconds.
    #[arg(long, env = "SILVERLINE_RETRY_CAP_SECONDS", default_value_t = 600.0)]
    pub retry_cap_seconds: f64,
    /// How long after a Job finished the operator keeps looking for the run's report in the lake, in seconds.
    #[arg(long, env = "SILVERLINE_LAKE_GRACE_SECONDS", default_value_t = 30.0)]
    pub lake_grace_seconds: f64,
    /// How often it looks in that time, in seconds.
    #[arg(long, env = "SILVERLINE_LAKE_CHECK_INTERVAL_SECONDS", default_value_t = 3.0, value_parser = positive_seconds)]
    pub lake_check_interval_seconds: f64,
    /// How long an attempt may go without any pod being created (the Job's `FailedCreate`, e.g. a missing
    /// ServiceAccount) before it fails for good, in seconds.
    #[arg(long, env = "SILVERLINE_POD_CREATE_TIMEOUT_SECONDS", default_value_t = 120.0)]
    pub pod_create_timeout_seconds: f64,
    /// How many EtlRuns are reconciled at once. Most reconciles read only the controller's stores and send no
    /// request; a new run's sends its contract snapshot (once per Dataset manifest), then its Job, its status and
    /// its Event, so the bound must let enough of them wait on the apiserver at once to keep pace with a burst of
    /// creates (16 did not: p99 32 s at 1,000 runs; 128 and 256 kept pace alike, README.md "Load"), without an
    /// unbounded number of connections, each of which costs memory (with no bound and 22 requests per run a burst
    /// of 1,000 runs made the apiserver time out).
    /// kube-rs has no client-side QPS limit: this bound is the operator's only one. 0 means no limit.
    #[arg(long, env = "SILVERLINE_RECONCILE_CONCURRENCY", default_value_t = 128)]
    pub reconcile_concurrency: u16,
    /// Launches per second from which the operator treats new runs as a burst: while its launches come this
    /// fast, the status write that records a new run's launch (the status naming its Job, and its
    /// AttemptStarted Event) waits until the burst has passed, at most 5 s after the Job was created, so that
    /// the apiserver's capacity goes to creating the burst's Jobs first (a custom resource's status update costs
    /// the apiserver about twice what creating a Job does; README.md "Load"). A run's Job, retries, failures and
    /// finishes are never held back. 0: every status is written at once.
    #[arg(long, env = "SILVERLINE_BURST_LAUNCHES_PER_SECOND", default_value_t = 20)]
    pub burst_launches_per_second: u32,
    /// How long a request to the Kubernetes API may wait for its answer, in seconds, before it is given up and
    /// retried like any transient API error. The default is the apiserver's own request timeout; a request sent on
    /// a connection the network dropped silently (a load balancer's idle cut, an apiserver restarted mid-request)
    /// would otherwise hold its reconcile, and the resource it reconciles, until the operator restarts.
    #[arg(long, env = "SILVERLINE_API_TIMEOUT_SECONDS", default_value_t = 60.0, value_parser = positive_seconds)]
    pub api_timeout_seconds: f64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SILVERLINE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Namespace of the leader-election Lease (default: the first watched namespace, else `default`).
    #[arg(long, env = "SILVERLINE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    #[arg(long, env = "SILVERLINE_LEASE_NAME", default_value = "silverline-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name from POD_NAME, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[arg(long, env = "SILVERLINE_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..))]
    pub lease_duration_seconds: u32,
    #[arg(long, env = "SILVERLINE_LEASE_RENEW_SECONDS", default_value_t = 5.0, value_parser = positive_seconds)]
    pub lease_renew_seconds: f64,
}

/// A Kubernetes quantity of bytes (`2Gi`, `500M`, `1073741824`), refused at start rather than by the apiserver at
/// every Job.
fn parse_quantity(value: &str) -> Result<String, String> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &value[digits.len()..];
    let known = ["", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let number = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    if number && digits.parse::<f64>().is_ok_and(|n| n > 0.0) && known.contains(&suffix) {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?} is not a quantity of bytes such as 2Gi, 500Mi or 1G"))
    }
}

/// An interval in seconds that something is done at: above zero (zero would be a loop that never waits) and
/// finite, refused at start.
fn positive_seconds(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(format!("{value:?} is not a number of seconds above zero")),
    }
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

impl Config {
    /// How the operator shapes worker Jobs; refused when `--worker-env` sets one variable twice.
    pub fn job_settings(&self) -> Result<JobSettings, String> {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut amounts = std::collections::BTreeMap::new();
        if let Some(cpu) = &self.worker_cpu {
            amounts.insert("cpu".to_owned(), Quantity(cpu.clone()));
        }
        if let Some(memory) = &self.worker_memory {
            amounts.insert("memory".to_owned(), Quantity(memory.clone()));
        }
        let default_resources = (!amounts.is_empty()).then(|| ResourceRequirements {
            requests: Some(amounts.clone()),
            limits: Some(amounts),
            ..ResourceRequirements::default()
        });
        let env = self.worker_env.iter().try_fold(crate::job::WorkerEnv::default(), |env, more| env.merged(more))?;
        Ok(JobSettings {
            image: self.worker_image.clone(),
            image_pull_policy: self.worker_image_pull_policy.clone(),
            service_account: self.worker_service_account.clone(),
            run_as_user: self.worker_uid,
            default_deadline_seconds: self.attempt_deadline_seconds,
            ttl_seconds_after_finished: self.job_ttl_seconds,
            default_resources,
            spill_size_limit: self.worker_spill_size_limit.clone(),
            instance_metadata_credentials: self.worker_instance_metadata_credentials,
            env,
        })
    }

    pub fn lifecycle_settings(&self) -> LifecycleSettings {
        LifecycleSettings {
            retry: RetryPolicy {
                base: seconds(self.retry_base_seconds),
                factor: self.retry_factor,
                cap: seconds(self.retry_cap_seconds),
                ..RetryPolicy::default()
            },
            lake_grace: seconds(self.lake_grace_seconds),
            lake_check_interval: seconds(self.lake_check_interval_seconds),
            pod_create_timeout: seconds(self.pod_create_timeout_seconds),
            ..LifecycleSettings::default()
        }
    }

    /// Promote Jobs retry with the same backoff as attempts of a run.
    pub fn promotion_settings(&self) -> crate::controllers::promotion::PromotionSettings {
        crate::controllers::promotion::PromotionSettings {
            retry: self.lifecycle_settings().retry,
            ..Default::default()
        }
    }

    /// Which lakes and endpoints the Datasets of each namespace may name.
    pub fn lake_policy(&self) -> crate::lake::LakePolicy {
        crate::lake::LakePolicy {
            lakes: self.allowed_lakes.iter().flat_map(|g| g.0.iter().cloned()).collect(),
            endpoints: self.allowed_endpoints.iter().flat_map(|g| g.0.iter().cloned()).collect(),
            inputs: self.allowed_inputs.iter().flat_map(|g| g.0.iter().cloned()).collect(),
        }
    }

    /// The namespaces to watch, each once, in the order given; `None` for all namespaces.
    pub fn watched_namespaces(&self) -> Option<Vec<String>> {
        let mut namespaces: Vec<String> = Vec::new();
        for namespace in self.namespaces.iter().map(|ns| ns.trim()).filter(|ns| !ns.is_empty()) {
            if !namespaces.iter().any(|seen| seen == namespace) {
                namespaces.push(namespace.to_owned());
            }
        }
        (!namespaces.is_empty()).then_some(namespaces)
    }

    /// How long a request to the Kubernetes API may wait for its answer.
    pub fn api_timeout(&self) -> Duration {
        seconds(self.api_timeout_seconds)
    }

    pub fn lease_settings(&self) -> LeaseSettings {
        let identity = self.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "silverline-operator".into());
            format!("{host}-{}", std::process::id())
        });
        LeaseSettings {
            name: self.lease_name.clone(),
            namespace: self
                .lease_namespace
                .clone()
                .or_else(|| self.watched_namespaces().and_then(|namespaces| namespaces.into_iter().next()))
                .unwrap_or_else(|| "default".into()),
            identity,
            duration: Duration::from_secs(u64::from(self.lease_duration_seconds.max(1))),
            renew_every: seconds(self.lease_renew_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::try_parse_from(["silverline-operator", "--worker-image", "w:1"]).expect("parses");
        let jobs = config.job_settings().expect("settings");
        assert_eq!((jobs.image.as_str(), jobs.service_account.as_str()), ("w:1", "silverline-worker"));
        assert_eq!((jobs.default_deadline_seconds, jobs.ttl_seconds_after_finished), (21600, 604800));
        assert!(jobs.default_resources.is_none());
        assert_eq!(jobs.spill_size_limit, "2Gi");
        assert!(jobs.env.0.is_empty());
        let lifecycle = config.lifecycle_settings();
        assert_eq!(lifecycle.retry, RetryPolicy::default());
        assert_eq!(
            (lifecycle.lake_grace, lifecycle.lake_check_interval),
            (Duration::from_secs(30), Duration::from_secs(3))
        );
        let lease = config.lease_settings();
        assert_eq!((lease.namespace.as_str(), lease.duration), ("default", Duration::from_secs(15)));
    }

    #[test]
    fn the_spill_size_limit_is_a_quantity_of_bytes() {
        let parse = |limit: &str| {
            Config::try_parse_from(["silverline-operator", "--worker-image", "w", "--worker-spill-size-limit", limit])
                .map(|c| c.job_settings().expect("settings").spill_size_limit)
        };
        for good in ["2Gi", "500Mi", "1G", "1073741824", "1.5Gi"] {
            assert_eq!(parse(good).ok().as_deref(), Some(good));
        }
        for bad in ["", "Gi", "2 Gi", "-1Gi", "0", "2GB", "lots"] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn intervals_that_would_never_wait_are_refused_at_start() {
        let parse = |flag: &str, value: &str| {
            Config::try_parse_from(["silverline-operator", "--worker-image", "w", flag, value]).map(|_| ())
        };
        for flag in ["--lake-check-interval-seconds", "--lease-renew-seconds"] {
            for bad in ["0", "-1", "0.0", "NaN", "inf", "soon"] {
                assert!(parse(flag, bad).is_err(), "{flag} {bad} was accepted");
            }
            assert!(parse(flag, "0.25").is_ok(), "{flag}");
        }
        assert!(parse("--lease-duration-seconds", "0").is_err());
        assert!(parse("--lease-duration-seconds", "1").is_ok());
    }

    #[test]
    fn worker_resources_and_the_lease_namespace_follow_the_flags() {
        let config = Config::try_parse_from([
            "silverline-operator",
            "--worker-image",
            "w",
            "--worker-memory",
            "2Gi",
            "--namespace",
            "etl",
            "--retry-base-seconds",
            "0.5",
        ])
        .expect("parses");
        let resources = config.job_settings().expect("settings").default_resources.expect("resources");
        assert_eq!(resources.limits.and_then(|l| l.get("memory").cloned()).map(|q| q.0), Some("2Gi".into()));
        assert_eq!(config.lease_settings().namespace, "etl");
        assert_eq!(config.lifecycle_settings().retry.base, Duration::from_millis(500));
        assert_eq!(config.watched_namespaces(), Some(vec!["etl".to_owned()]));
    }

    #[test]
    fn worker_env_comes_repeated_or_one_per_line_and_a_name_set_twice_is_refused() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["silverline-operator", "--worker-image", "w"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).map_err(|e| e.to_string())?.job_settings().map(|jobs| jobs.env.0)
        };
        let pair = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        assert_eq!(
            parse(&["--worker-env", "HTTPS_PROXY=http://p:3128", "--worker-env", "NO_PROXY=.svc,.local"]),
            Ok(vec![pair("HTTPS_PROXY", "http://p:3128"), pair("NO_PROXY", ".svc,.local")])
        );
        assert_eq!(
            parse(&["--worker-env", "HTTPS_PROXY=http://p:3128\nNO_PROXY=.svc"]),
            Ok(vec![pair("HTTPS_PROXY", "http://p:3128"), pair("NO_PROXY", ".svc")])
        );
        let twice = parse(&["--worker-env", "TZ=UTC", "--worker-env", "TZ=CET"]).expect_err("refused");
        assert!(twice.contains("TZ twice"), "{twice}");
        let reserved = parse(&["--worker-env", "AWS_REGION=eu-west-1"]).expect_err("refused");
        assert!(reserved.contains("AWS_REGION is not for --worker-env"), "{reserved}");
    }

    #[test]
    fn namespaces_to_watch_come_repeated_or_comma_separated_and_none_means_all() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["silverline-operator", "--worker-image", "w"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).expect("parses").watched_namespaces()
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&["--namespace", "etl-a,etl-b"]), Some(vec!["etl-a".to_owned(), "etl-b".to_owned()]));
        assert_eq!(
            parse(&["--namespace", "etl-b", "--namespace", "etl-a", "--namespace", "etl-b"]),
            Some(vec!["etl-b".to_owned(), "etl-a".to_owned()])
        );
        assert_eq!(parse(&["--namespace", ""]), None);
        let config = Config::try_parse_from(["silverline-operator", "--worker-image", "w", "--namespace", "b,a"])
            .expect("parses");
        assert_eq!(config.lease_settings().namespace, "b", "the Lease lives in the first watched namespace");
    }
}
