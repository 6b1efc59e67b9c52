//! Reads back what an attempt left in the lake: `_SUCCESS` (the commit), `_QUALITY_REPORT.json`,
//! `_CIRCUIT_BREAKER.json` and the run-id claim `_RUN.json`. A thin adaptor over `silverline-lake`, which owns
//! the URI rules, the S3 client, the layout and the marker names; here only the caching of opened lakes and the
//! mapping into the operator's `Error`.
//!
//! The operator reads the lake with its own identity (for S3: the usual AWS environment, IRSA or web identity);
//! it never reads the Dataset's credentials Secret. Local lakes must be absolute paths. Which lakes and S3
//! endpoints a namespace's Datasets may name at all is the operator's [`LakePolicy`]: a lake it does not allow is
//! neither read nor given to a Job.

use crate::{Error, Result};
use silverline_crds::StorageSpec;
pub use silverline_lake::layout::{CIRCUIT_BREAKER_REPORT, QUALITY_REPORT, RUN_CLAIM, SUCCESS};
use silverline_lake::{LakeUri, OpenOptions, RelativePaths, StoreOptions};
use std::sync::Arc;

/// Where the Datasets of a namespace may keep their lake: `NAMESPACE=LAKE` (`--allowed-lakes`), `NAMESPACE` a
/// namespace's name or `*` for every namespace, `LAKE` a lake root (`s3://bucket[/prefix]`, an absolute path or
/// `file:///…`) that holds the Dataset's lake by whole segments, or `*` for any lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeGrant {
    /// `None`: every namespace.
    namespace: Option<String>,
    /// `None`: any lake.
    root: Option<LakeUri>,
    /// The root as written (`*` too), for messages.
    shown: String,
}

impl std::str::FromStr for LakeGrant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage =
            |detail: String| format!("allowed lake {text:?}: {detail} (write NAMESPACE=LAKE, e.g. etl=s3://lake/etl)");
        let (namespace, lake) = text.split_once('=').ok_or_else(|| usage("no `=`".into()))?;
        let namespace = match namespace {
            "*" => None,
            name if silverline_crds::names::check_namespace(name).is_ok() => Some(name.to_owned()),
            name => return Err(usage(format!("{name:?} is neither a namespace's name nor *"))),
        };
        let root = match lake {
            "*" => None,
            lake => {
                let root = LakeUri::parse(lake, RelativePaths::Reject).map_err(|e| usage(e.to_string()))?;
                // A root with a `.` or `..` segment would hold nothing (`LakeUri::is_within`): refused, not ignored.
                if !root.is_within(&root) {
                    return Err(usage(format!("{lake:?} has a . or .. segment")));
                }
                Some(root)
            }
        };
        Ok(LakeGrant { namespace, root, shown: lake.to_owned() })
    }
}

/// One value of `--allowed-lakes`: grants separated by commas; blank entries (an empty variable, a trailing comma)
/// grant nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LakeGrants(pub Vec<LakeGrant>);

impl std::str::FromStr for LakeGrants {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        comma_separated(text).map(LakeGrants)
    }
}

/// The entries of a flag's value separated by commas, each parsed; blank ones skipped.
fn comma_separated<T: std::str::FromStr<Err = String>>(text: &str) -> Result<Vec<T>, String> {
    text.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(str::parse).collect()
}

/// One value of `--allowed-endpoints`: endpoints separated by commas; blank entries allow nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointGrants(pub Vec<EndpointGrant>);

impl std::str::FromStr for EndpointGrants {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        comma_separated(text).map(EndpointGrants)
    }
}

/// An S3 endpoint a Dataset may name (`--allowed-endpoints`): `*` for any, or a URL compared with the Dataset's
/// after lower-casing its scheme and host and dropping a trailing `/` (no other rewriting: list each spelling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointGrant(Option<String>);

impl std::str::FromStr for EndpointGrant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(EndpointGrant(None));
        }
        normalized_endpoint(text).map(|e| EndpointGrant(Some(e))).ok_or_else(|| {
            format!("allowed endpoint {text:?}: write http://HOST[:PORT] or https://HOST[:PORT], or * for any")
        })
    }
}

/// `http(s)://host[:port][/path]` with scheme and host lower-cased and no trailing `/`; `None` for anything else
/// (another scheme, no host, a user name or password in it).
fn normalized_endpoint(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() || authority.contains('@') || text.chars().any(|c| c.is_whitespace()) {
        return None;
    }
    let path = path.trim_end_matches('/');
    let authority = authority.to_ascii_lowercase();
    Some(if path.is_empty() { format!("{scheme}://{authority}") } else { format!("{scheme}://{authority}/{path}") })
}

/// Which lakes and S3 endpoints each namespace's Datasets may name. With no grant nothing is allowed: an operator
/// reads lakes with its own identity and starts Jobs that write them, so a namespace's users must not be able to
/// point it at another team's bucket, or at any host as an "S3 endpoint". A Dataset without an endpoint (AWS's
/// own; the operator's `AWS_ENDPOINT_URL` reaches only its own reads, never a worker) needs no endpoint grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LakePolicy {
    pub lakes: Vec<LakeGrant>,
    pub endpoints: Vec<EndpointGrant>,
    /// Where a namespace's EtlRuns may read their input (`--allowed-inputs`, the same `NAMESPACE=ROOT` grants);
    /// empty: not restricted. The worker, not the operator, reads the input, with the Dataset's identity (its
    /// credentials Secret or the workers' ServiceAccount); where namespaces share one worker identity (one IAM role
    /// for every namespace's ServiceAccount), these grants keep a namespace from reading another's feeds.
    pub inputs: Vec<LakeGrant>,
}

/// The grants of `namespace` (its own and those for every namespace) that hold `uri`, or why none does.
fn granted(grants: &[LakeGrant], namespace: &str, uri: &LakeUri) -> Result<(), String> {
    let own: Vec<&LakeGrant> =
        grants.iter().filter(|g| g.namespace.as_deref().is_none_or(|n| n == namespace)).collect();
    if own.iter().any(|g| g.root.as_ref().is_none_or(|root| uri.is_within(root))) {
        return Ok(());
    }
    let roots: Vec<&str> = own.iter().map(|g| g.shown.as_str()).collect();
    Err(if roots.is_empty() { "none".to_owned() } else { roots.join(", ") })
}

impl LakePolicy {
    /// Whether an EtlRun of `namespace` may read `input`; if not, why (its own namespace's grants only).
    pub fn check_input(&self, namespace: &str, input: &str) -> Result<(), String> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        let uri = LakeUri::parse(input, RelativePaths::Reject).map_err(|e| e.to_string())?;
        granted(&self.inputs, namespace, &uri).map_err(|held| {
            format!(
                "input {input} is not one the operator allows in namespace {namespace} (allowed: {held}); the \
                 operator's administrators grant inputs with --allowed-inputs (Helm value operator.allowedInputs)"
            )
        })
    }

    /// Whether the Datasets of `namespace` may use `storage`; if not, why, said for the Dataset's users (the grants
    /// of their own namespace, never another's).
    pub fn check(&self, namespace: &str, storage: &StorageSpec) -> Result<(), String> {
        // A contract read back from a snapshot is held to the same rules as a Dataset (region, bucket, endpoint).
        storage.validate().map_err(|e| e.to_string())?;
        let uri = &storage.lake_uri;
        let lake = LakeUri::parse(uri, RelativePaths::Reject).map_err(|e| e.to_string())?;
        if let Err(held) = granted(&self.lakes, namespace, &lake) {
            return Err(format!(
                "lake {uri} is not one the operator allows in namespace {namespace} (allowed: {held}); the \
                 operator's administrators grant lakes with --allowed-lakes (Helm value operator.allowedLakes)"
            ));
        }
        if let Some(endpoint) = &storage.endpoint {
            let allowed = normalized_endpoint(endpoint).is_some_and(|endpoint| {
                self.endpoints.iter().any(|g| g.0.as_ref().is_none_or(|allowed| *allowed == endpoint))
            });
            if !allowed {
                return Err(format!(
                    "S3 endpoint {endpoint} is not one the operator allows; its administrators grant endpoints \
                     with --allowed-endpoints (Helm value operator.allowedEndpoints)"
                ));
            }
        }
        Ok(())
    }
}

/// What the lake says about one run id.
pub type LakeFinding = silverline_lake::RunFinding;

/// Opened lakes, by storage settings: one object-store client (and its connection pool) per lake, not one per
/// reconcile; and the policy every lake is checked against before it is opened.
#[derive(Default)]
pub struct Lakes {
    policy: LakePolicy,
    opened: std::sync::Mutex<std::collections::HashMap<String, Arc<Lake>>>,
}

impl Lakes {
    pub fn new(policy: LakePolicy) -> Lakes {
        Lakes { policy, opened: Default::default() }
    }

    /// Whether the Datasets of `namespace` may use `storage` (see [`LakePolicy::check`]).
    pub fn allowed(&self, namespace: &str, storage: &StorageSpec) -> Result<(), String> {
        self.policy.check(namespace, storage)
    }

    /// Whether the EtlRuns of `namespace` may read `input` (see [`LakePolicy::check_input`]).
    pub fn input_allowed(&self, namespace: &str, input: &str) -> Result<(), String> {
        self.policy.check_input(namespace, input)
    }

    /// The lake of a Dataset of `namespace`, if the policy allows it.
    pub fn open(&self, namespace: &str, storage: &StorageSpec) -> Result<Arc<Lake>> {
        self.allowed(namespace, storage)
            .map_err(|message| Error::LakeNotAllowed { uri: storage.lake_uri.clone(), message })?;
        let key = format!("{}|{:?}|{:?}", storage.lake_uri, storage.endpoint, storage.region);
        if let Some(lake) = self.opened.lock().ok().and_then(|lakes| lakes.get(&key).cloned()) {
            return Ok(lake);
        }
        let lake = Arc::new(Lake::open(storage)?);
        // A local lake that does not exist yet is opened again next time, once the worker has created it.
        if lake.inner.is_some()
            && let Ok(mut lakes) = self.opened.lock()
        {
            lakes.insert(key, lake.clone());
        }
        Ok(lake)
    }
}

/// A lake root opened for reading; a local lake that does not exist yet holds nothing.
pub struct Lake {
    inner: Option<silverline_lake::Lake>,
}

impl Lake {
    /// Opens the lake of a Dataset. A local lake that does not exist yet holds nothing.
    pub fn open(storage: &StorageSpec) -> Result<Lake> {
        let uri = &storage.lake_uri;
        let fail = |e: silverline_lake::StorageError| Error::Lake { uri: uri.clone(), message: e.to_string() };
        if let LakeUri::Local(dir) = LakeUri::parse(uri, RelativePaths::Reject).map_err(fail)?
            && !dir.exists()
        {
            return Ok(Lake { inner: None });
        }
        let lake = silverline_lake::Lake::open(uri, &StoreOptions::from_storage(storage), OpenOptions::READER)
            .map_err(fail)?;
        Ok(Lake { inner: Some(lake) })
    }

    /// The lake itself, for the promotion reads (`None` for a local lake that does not exist yet).
    pub fn lake(&self) -> Option<&silverline_lake::Lake> {
        self.inner.as_ref()
    }

    /// What the lake holds for one run id, the commit marker first.
    pub async fn find(&self, dataset: &str, schema_version: &str, run_id: &str) -> Result<LakeFinding> {
        let Some(lake) = &self.inner else {
            // Names are still checked, so that an unsafe name is an error whether or not the lake exists.
            silverline_lake::DatasetLayout::new(dataset)
                .and_then(|l| l.run_prefix(silverline_lake::Area::Silver, schema_version, run_id))
                .map_err(|e| Error::Lake { uri: "(lake not created yet)".into(), message: e.to_string() })?;
            return Ok(LakeFinding::Nothing);
        };
        lake.find_run(dataset, schema_version, run_id)
            .await
            .map_err(|e| Error::Lake { uri: lake.uri.clone(), message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(uri: &str) -> StorageSpec {
        StorageSpec { lake_uri: uri.into(), endpoint: None, region: None, credentials_secret: None }
    }

    fn report(run_id: &str, outcome: &str) -> String {
        serde_json::json!({
            "outcome": outcome, "run_id": run_id, "dataset": "tx", "schema_v": "v1", "lake_uri": "file:///x",
            "input_uri": "/in.csv", "input_checksum": "00", "inputs": [], "worker_version": "0.1.0", "git_sha": "x",
            "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:01Z", "duration_seconds": 1.0,
            "input_rows": 10, "valid_rows_count": 8, "quarantined_rows_count": 1, "condemned_rows_count": 1,
            "quarantine_rate": 0.1, "error_type_distribution": {}, "condemned_reason_distribution": {},
            "avg_attempt_count": 1.0, "duplicate_detection_rate": 0.0, "auto_condemnation_rate": 0.0,
            "files": [{"key": "file:///x/silver/part-00000.parquet", "area": "silver", "rows": 8, "bytes": 100, "sha256": "ab"}]
        })
        .to_string()
    }

    fn write(root: &std::path::Path, run_id: &str, file: &str, text: &str) {
        let dir = root.join(format!("silver/tx/schema_v=v1/run_id={run_id}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(file), text).expect("write");
    }

    #[tokio::test]
    async fn findings_follow_the_markers_a_run_left() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "r-ok", SUCCESS, &report("r-ok", "success"));
        write(root.path(), "r-ok", RUN_CLAIM, "{}");
        write(root.path(), "r-qg", QUALITY_REPORT, &report("r-qg", "quality_gate_failed"));
        write(root.path(), "r-cb", CIRCUIT_BREAKER_REPORT, "{}");
        write(root.path(), "r-claim", RUN_CLAIM, "{}");
        let lake = Lake::open(&storage(&format!("file://{}", root.path().display()))).expect("open");
        let find = |id: &'static str| {
            let lake = &lake;
            async move { lake.find("tx", "v1", id).await.expect("find") }
        };
        match find("r-ok").await {
            LakeFinding::Success { report, uri } => {
                assert_eq!(report.valid_rows_count, 8);
                assert!(uri.ends_with("/silver/tx/schema_v=v1/run_id=r-ok/_SUCCESS"), "{uri}");
            }
            other => panic!("expected success, got {other:?}"),
        }
        assert!(matches!(find("r-qg").await, LakeFinding::QualityReport { .. }));
        assert!(matches!(find("r-cb").await, LakeFinding::CircuitBreaker { .. }));
        assert_eq!(find("r-claim").await, LakeFinding::Claimed);
        assert_eq!(find("r-none").await, LakeFinding::Nothing);
    }

    #[tokio::test]
    async fn a_lake_that_does_not_exist_yet_holds_nothing() {
        let lake = Lake::open(&storage("/nonexistent/silverline/lake")).expect("open");
        assert_eq!(lake.find("tx", "v1", "r1").await.expect("find"), LakeFinding::Nothing);
    }

    #[tokio::test]
    async fn lakes_are_opened_once_but_a_missing_local_lake_is_looked_for_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let lakes = Lakes::new(policy(&[&format!("etl={}", root.path().display())], &[]));
        let missing = storage(&format!("{}/lake", root.path().display()));
        let first = lakes.open("etl", &missing).expect("open");
        assert!(!Arc::ptr_eq(&first, &lakes.open("etl", &missing).expect("open")), "not cached while missing");
        write(&root.path().join("lake"), "r1", SUCCESS, &report("r1", "success"));
        let found = lakes.open("etl", &missing).expect("open");
        assert!(Arc::ptr_eq(&found, &lakes.open("etl", &missing).expect("open")), "cached once it exists");
        assert!(matches!(found.find("tx", "v1", "r1").await.expect("find"), LakeFinding::Success { .. }));
    }

    #[tokio::test]
    async fn a_report_of_another_run_or_unsafe_names_are_errors() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "r1", SUCCESS, &report("r2", "success"));
        let lake = Lake::open(&storage(root.path().to_str().expect("utf-8"))).expect("open");
        assert!(lake.find("tx", "v1", "r1").await.is_err());
        assert!(lake.find("../tx", "v1", "r1").await.is_err());
        assert!(lake.find("tx", "v1", "../r1").await.is_err());
        assert!(Lake::open(&storage("relative/lake")).is_err());
    }

    fn policy(lakes: &[&str], endpoints: &[&str]) -> LakePolicy {
        LakePolicy {
            lakes: lakes.iter().map(|g| g.parse().expect("grant")).collect(),
            endpoints: endpoints.iter().map(|g| g.parse().expect("endpoint grant")).collect(),
            inputs: Vec::new(),
        }
    }

    fn on(uri: &str, endpoint: Option<&str>) -> StorageSpec {
        StorageSpec { endpoint: endpoint.map(str::to_owned), ..storage(uri) }
    }

    #[test]
    fn a_lake_is_allowed_only_under_a_root_granted_to_its_namespace_or_to_all() {
        let granted = policy(&["etl=s3://lake/etl", "*=s3://shared", "ops=/data/lakes", "lab=*"], &[]);
        let cases = [
            ("etl", "s3://lake/etl", true),
            ("etl", "s3://lake/etl/orders", true),
            ("etl", "s3://lake/etl-b", false),
            ("etl", "s3://lake/other", false),
            ("etl", "s3://lake/etl/../other", false),
            ("team-b", "s3://lake/etl", false),
            ("team-b", "s3://shared/b", true),
            ("ops", "/data/lakes/x", true),
            ("ops", "file:///data/lakes/x", true),
            ("ops", "/data/lakes/../../etc", false),
            ("etl", "/data/lakes/x", false),
            ("lab", "s3://anything/at/all", true),
            ("lab", "relative/lake", false),
        ];
        for (namespace, uri, expected) in cases {
            let verdict = granted.check(namespace, &on(uri, None));
            assert_eq!(verdict.is_ok(), expected, "{uri} in {namespace}: {verdict:?}");
        }
        let refused = granted.check("team-b", &on("s3://lake/etl", None)).expect_err("refused");
        assert!(refused.contains("lake s3://lake/etl") && refused.contains("namespace team-b"), "{refused}");
        assert!(
            refused.contains("(allowed: s3://shared)") && !refused.contains("etl="),
            "only its own grants: {refused}"
        );
        let nothing = LakePolicy::default().check("etl", &on("s3://lake/etl", None)).expect_err("no grant, no lake");
        assert!(nothing.contains("(allowed: none)") && nothing.contains("--allowed-lakes"), "{nothing}");
    }

    #[test]
    fn a_datasets_s3_endpoint_must_be_granted_as_written_apart_from_case_and_a_trailing_slash() {
        let granted = policy(&["*=*"], &["http://MinIO.storage:9000", "https://s3.example.com/"]);
        let cases = [
            (None, true),
            (Some("http://minio.storage:9000"), true),
            (Some("http://minio.STORAGE:9000/"), true),
            (Some("HTTP://minio.storage:9000"), false),
            (Some("https://s3.example.com"), true),
            (Some("http://minio.storage:9001"), false),
            (Some("https://minio.storage:9000"), false),
            (Some("http://169.254.169.254"), false),
            (Some("http://user@minio.storage:9000"), false),
            (Some("https://s3.example.com:443"), false),
            (Some("minio.storage:9000"), false),
        ];
        for (endpoint, expected) in cases {
            let verdict = granted.check("etl", &on("s3://lake/x", endpoint));
            assert_eq!(verdict.is_ok(), expected, "{endpoint:?}: {verdict:?}");
        }
        let refused = policy(&["*=*"], &[]).check("etl", &on("s3://lake/x", Some("http://10.0.0.1:80")));
        assert!(refused.expect_err("no endpoint grant").contains("S3 endpoint http://10.0.0.1:80"));
        assert!(policy(&["*=*"], &["*"]).check("etl", &on("s3://lake/x", Some("http://any:1"))).is_ok());
    }

    #[test]
    fn a_flags_value_holds_grants_separated_by_commas_and_blank_ones_grant_nothing() {
        let lakes: LakeGrants = " etl=s3://lake/etl , *=/data/lakes,".parse().expect("grants");
        assert_eq!(lakes.0, vec!["etl=s3://lake/etl".parse().expect("a"), "*=/data/lakes".parse().expect("b")]);
        assert_eq!("".parse::<LakeGrants>(), Ok(LakeGrants(vec![])));
        assert!("etl=s3://lake,etl".parse::<LakeGrants>().is_err(), "one bad grant refuses the value");
        let endpoints: EndpointGrants = "http://a:9000,,https://b".parse().expect("endpoints");
        assert_eq!(endpoints.0.len(), 2);
        assert_eq!(" ".parse::<EndpointGrants>(), Ok(EndpointGrants(vec![])));
    }

    #[test]
    fn inputs_are_restricted_only_once_granted_and_then_like_lakes() {
        let open = policy(&["*=*"], &[]);
        assert!(open.check_input("etl", "s3://another-teams-bronze/feed/").is_ok(), "no input grant: any input");
        let granted = LakePolicy {
            inputs: vec!["etl=s3://bronze/etl".parse().expect("grant"), "*=/data/shared".parse().expect("grant")],
            ..open
        };
        assert!(granted.check_input("etl", "s3://bronze/etl/2024/01.csv").is_ok());
        assert!(granted.check_input("team-b", "/data/shared/x.csv").is_ok());
        let refused = granted.check_input("team-b", "s3://bronze/etl/2024/01.csv").expect_err("another namespace's");
        assert!(refused.contains("input s3://bronze/etl/2024/01.csv") && refused.contains("namespace team-b"));
        assert!(refused.contains("(allowed: /data/shared)") && refused.contains("--allowed-inputs"), "{refused}");
        assert!(granted.check_input("etl", "s3://bronze/etl-b/x.csv").is_err(), "whole segments");
        assert!(granted.check_input("etl", "s3://bronze/etl/../other/x.csv").is_err(), "no dot segments");
        assert!(granted.check_input("etl", "relative/x.csv").is_err());
    }

    #[test]
    fn grants_that_say_nothing_clear_are_refused() {
        for text in
            ["etl", "Etl=s3://lake", "=s3://lake", "etl=relative/lake", "etl=s3://", "etl=s3://lake/../x", "etl="]
        {
            assert!(text.parse::<LakeGrant>().is_err(), "{text}");
        }
        for text in ["ftp://x", "http://", "minio:9000", "http://a@b", "http://a b"] {
            assert!(text.parse::<EndpointGrant>().is_err(), "{text}");
        }
    }

    #[tokio::test]
    async fn a_lake_the_policy_does_not_allow_is_never_opened() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "r1", SUCCESS, &report("r1", "success"));
        let lakes = Lakes::new(policy(&["etl=s3://lake/etl"], &[]));
        let lake = storage(root.path().to_str().expect("utf-8"));
        match lakes.open("etl", &lake) {
            Err(Error::LakeNotAllowed { message, .. }) => {
                assert!(message.contains("not one the operator allows"), "{message}")
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| "a lake")),
        }
    }
}
