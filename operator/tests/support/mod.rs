//! What the integration tests share: the connection to the test control plane, the CRDs, a namespace per test,
//! the operator as a real process, the test kubelet, and waiting.
//!
//! The control plane is started by `scripts/test.sh` (`scripts/controlplane.sh start`), which exports
//! `KUBECONFIG`. In a plain `cargo test` these tests are ignored with a hint naming that script; run with
//! `--ignored` (as the script does) without a control plane they fail: that is a failure, never a skip.

#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod helm;
pub mod kubelet;
pub mod proxy;

use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use silverline_crds::{Dataset, EtlRun, EtlRunPhase, EtlRunSpec};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

pub const TRANSACTIONS_CONTRACT: &str = include_str!("../../../examples/datasets/transactions.yaml");
pub const TRANSACTIONS_CSV: &str = include_str!("../../../examples/data/transactions.csv");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// How long a test's request to the control plane may wait for its answer: a request whose answer never comes fails
/// the test, naming it, instead of holding it (and the whole suite) forever.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the test control plane, bounded as the operator's is (`silverline_operator::apiserver`).
pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run ./scripts/test.sh, or start a control plane with \
         `scripts/controlplane.sh start DIR` and `source DIR/env`"
    );
    let client = silverline_operator::apiserver::client(API_TIMEOUT).await.expect("a client from KUBECONFIG");
    client.apiserver_version().await.expect("the test control plane answers");
    client
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Applies the committed CRDs (crds/generated/*.yaml) once per test binary and waits until they are served.
pub async fn install_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for file in ["dataset.yaml", "etlrun.yaml", "promotion.yaml"] {
            let path = repo_root().join("crds/generated").join(file);
            let text = std::fs::read_to_string(&path).expect("generated CRD");
            let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("CRD YAML");
            let name = crd.name_any();
            api.patch(&name, &PatchParams::apply("silverline-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("the apiserver refused {file}: {e}"));
            eventually(&format!("CRD {name} established"), Duration::from_secs(30), || async {
                let crd = api.get(&name).await.ok()?;
                let conditions = crd.status?.conditions?;
                conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
            })
            .await;
        }
        let probe: Api<EtlRun> = Api::namespaced(client.clone(), "default");
        eventually("EtlRuns served", Duration::from_secs(30), || async {
            probe.list(&ListParams::default()).await.ok()
        })
        .await;
        let probe: Api<silverline_crds::Promotion> = Api::namespaced(client.clone(), "default");
        eventually("Promotions served", Duration::from_secs(30), || async {
            probe.list(&ListParams::default()).await.ok()
        })
        .await;
    })
    .await;
}

/// Polls `check` until it returns `Some`, or panics naming what did not happen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Dataset `name`'s `CredentialsSecret` condition has `status` (and `reason`, if given), and returns it.
pub async fn credentials_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), namespace);
    let what = format!("CredentialsSecret={status} ({reason:?}) on Dataset {name}");
    eventually(&what, Duration::from_secs(20), || async {
        let ds = datasets.get(name).await.ok()?;
        let c = ds.status?.conditions.into_iter().find(|c| c.type_ == "CredentialsSecret")?;
        (c.status == status && reason.is_none_or(|r| c.reason == r)).then_some(c)
    })
    .await
}

/// A namespace of its own for one test, deleted at the end.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("{prefix}-{:x}-{n}", (nanos ^ std::process::id()) & 0xffffff);
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns).await.expect("create namespace");
        TestNamespace { name, client: client.clone() }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        }
    }
}

/// The worker binary the test kubelet runs for `silverline-worker`.
pub fn worker_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SILVERLINE_WORKER_BIN") {
        return PathBuf::from(path);
    }
    let built = repo_root().join("target/debug/silverline-worker");
    assert!(
        built.exists(),
        "the worker binary is not built: run `cargo build -p silverline-worker` or set SILVERLINE_WORKER_BIN"
    );
    built
}

/// The transactions contract with its lake in `lake` and no credentials Secret.
pub fn transactions_dataset(lake: &Path, max_attempts: u32) -> Dataset {
    let mut dataset = Dataset::from_manifest(TRANSACTIONS_CONTRACT).expect("example contract");
    dataset.spec.storage.lake_uri = format!("file://{}", lake.display());
    dataset.spec.storage.region = None;
    dataset.spec.storage.credentials_secret = None;
    dataset.spec.max_attempts = max_attempts;
    dataset.metadata = kube::api::ObjectMeta { name: Some("transactions".into()), ..Default::default() };
    dataset
}

pub async fn create_dataset(client: &Client, namespace: &str, dataset: &Dataset) {
    let api: Api<Dataset> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), dataset).await.expect("create Dataset");
}

pub async fn create_run(client: &Client, namespace: &str, name: &str, input: &Path) -> EtlRun {
    let api: Api<EtlRun> = Api::namespaced(client.clone(), namespace);
    let spec = EtlRunSpec {
        dataset: "transactions".into(),
        input: input.display().to_string(),
        resources: None,
        deadline_seconds: None,
    };
    api.create(&PostParams::default(), &EtlRun::new(name, spec)).await.expect("create EtlRun")
}

/// Waits until the EtlRun reaches a terminal phase and returns it.
pub async fn finished(client: &Client, namespace: &str, name: &str, timeout: Duration) -> EtlRun {
    let api: Api<EtlRun> = Api::namespaced(client.clone(), namespace);
    eventually(&format!("EtlRun {name} to finish"), timeout, || async {
        let run = api.get(name).await.ok()?;
        run.phase().is_some_and(|p| p.is_terminal()).then_some(run)
    })
    .await
}

/// Waits until EtlRun `name` says `reason` in its `Progressing` condition (in `phase`, where given), and returns
/// that condition's message; panics after `timeout` naming `what`.
pub async fn run_waits(
    runs: &Api<EtlRun>,
    name: &str,
    reason: &str,
    phase: Option<EtlRunPhase>,
    what: &str,
    timeout: Duration,
) -> String {
    eventually(what, timeout, || async {
        let status = runs.get(name).await.ok()?.status?;
        let c = status.conditions.into_iter().find(|c| c.type_ == "Progressing")?;
        (c.reason == reason && phase.is_none_or(|p| status.phase == Some(p))).then_some(c.message)
    })
    .await
}

/// Whether an Event on `object` satisfies `wanted` within 10 s, and the object's Events at the last look (for the
/// assertion's message): the operator publishes an Event after the status write a test waits for, so one look
/// right after that status could come before the Event.
pub async fn event_appears(
    client: &Client,
    namespace: &str,
    object: &str,
    wanted: impl Fn(&Event) -> bool,
) -> (bool, Vec<Event>) {
    let start = Instant::now();
    loop {
        let events = events(client, namespace, object).await;
        if events.iter().any(&wanted) {
            return (true, events);
        }
        if start.elapsed() > Duration::from_secs(10) {
            return (false, events);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a Warning Event with `reason` on `object` appears within 10 s (see [`event_appears`]).
pub async fn warned(client: &Client, namespace: &str, object: &str, reason: &str) -> bool {
    event_appears(client, namespace, object, |e| {
        e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning")
    })
    .await
    .0
}

pub async fn events(client: &Client, namespace: &str, object: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await.expect("list events");
    list.items.into_iter().filter(|e| e.involved_object.name.as_deref() == Some(object)).collect()
}

/// When a watch event first brought a key: the instant (sub-second, on this process's monotonic clock, unlike
/// `creationTimestamp`) and the object's `resourceVersion` in that event.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub at: Instant,
    /// The write's place in the apiserver's order. Clients must treat resourceVersions as opaque; against the test
    /// control plane (one apiserver, one etcd) it is etcd's revision, one counter for every kind, so comparing two
    /// tells which write came first — what the arrival of events on two watches, two connections, cannot tell.
    pub revision: u64,
}

/// Watches `api` and notes, per key that `noted` finds in an object, when a watch event first brought it; returns
/// once the watch has listed what exists.
pub async fn first_seen<K, F>(api: Api<K>, noted: F) -> std::sync::Arc<std::sync::Mutex<HashMap<String, Seen>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    <K as kube::Resource>::DynamicType: Default,
    F: Fn(&K) -> Option<String> + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen: std::sync::Arc<std::sync::Mutex<HashMap<String, Seen>>> = Default::default();
    let kind = K::kind(&Default::default()).into_owned();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (record, watched) = (seen.clone(), kind.clone());
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    if let Some(key) = noted(&object) {
                        let version = object.meta().resource_version.as_deref().unwrap_or_default();
                        let revision =
                            version.parse().unwrap_or_else(|e| panic!("{watched} resourceVersion {version:?}: {e}"));
                        record.lock().expect("objects seen").entry(key).or_insert(Seen { at: now, revision });
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("{watched} watch error: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .unwrap_or_else(|_| panic!("the {kind} watch listed within 30 s"))
        .unwrap_or_else(|_| panic!("the {kind} watch task"));
    seen
}

/// GET `path` on loopback port `port` (an operator's HTTP port): (status code, body); `None` if it cannot be had
/// within 10 s, so that a server that accepts and never answers fails the test's wait instead of holding it.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(10), get).await.ok().flatten()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The operator, as a process of its own (so that it can be killed).
pub struct Operator {
    child: tokio::process::Child,
    pub identity: String,
    pub port: u16,
    pub log: PathBuf,
}

/// How the tests run the operator: fast retries, a short lake grace, a short Lease.
pub struct OperatorOptions<'a> {
    pub namespace: &'a str,
    pub identity: &'a str,
    pub log_dir: &'a Path,
    /// Connect with this kubeconfig instead of the tests' (admin) one.
    pub kubeconfig: Option<&'a Path>,
    /// More environment, e.g. the operator's own lake identity.
    pub env: Vec<(String, String)>,
}

impl Operator {
    pub async fn start(options: OperatorOptions<'_>) -> Operator {
        let port = free_port();
        let log = options.log_dir.join(format!("operator-{}-{port}.log", options.identity));
        let file = std::fs::File::create(&log).expect("operator log");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_silverline-operator"));
        if let Some(kubeconfig) = options.kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        command.envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // A test that sets the lake's timing in the environment gets it; the others a short grace.
        if !options.env.iter().any(|(k, _)| k.starts_with("SILVERLINE_LAKE_")) {
            command.args(["--lake-grace-seconds", "2", "--lake-check-interval-seconds", "0.5"]);
        }
        // The lakes of the test's own scenario are allowed (its directory, and the S3 test server's bucket `lake`)
        // unless the environment says which; no custom S3 endpoint unless it does.
        if !options.env.iter().any(|(k, _)| k == "SILVERLINE_ALLOWED_LAKES") {
            let (namespace, dir) = (options.namespace, options.log_dir.display());
            command.arg(format!("--allowed-lakes={namespace}={dir},{namespace}=s3://lake"));
        }
        if !options.env.iter().any(|(k, _)| k == "SILVERLINE_WORKER_SERVICE_ACCOUNT") {
            command.args(["--worker-service-account", "default"]);
        }
        // The Lease lives in the watched namespace unless the environment says where (a chart's release namespace).
        if !options.env.iter().any(|(k, _)| k == "SILVERLINE_LEASE_NAMESPACE") {
            command.args(["--lease-namespace", options.namespace]);
        }
        let child = command
            .args(["--namespace", options.namespace])
            .args(["--worker-image", "ghcr.io/silverline-dev/silverline-worker:test"])
            .args(["--retry-base-seconds", "1", "--retry-cap-seconds", "2"])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--identity", options.identity])
            // Short enough that a standby takes over a killed leader's Lease within seconds; long enough that a
            // renewal slowed by a loaded apiserver (a GET and a PUT) does not lose it.
            .args(["--lease-duration-seconds", "8", "--lease-renew-seconds", "1"])
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start silverline-operator");
        let operator = Operator { child, identity: options.identity.to_owned(), port, log };
        eventually(&format!("operator {} /readyz", options.identity), Duration::from_secs(30), || async {
            let (code, _) = operator.get("/readyz").await?;
            (code == 200).then_some(())
        })
        .await;
        operator
    }

    /// GET on the operator's HTTP port: (status code, body); `None` if it cannot be had within 10 s.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|(_, body)| body).unwrap_or_default()
    }

    /// The value of one series (`name{labels}`: the same name and labels, in any order), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let wanted = parse_series(series);
        let text = self.metrics().await;
        text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (parse_series(name) == wanted).then(|| value.parse().ok()).flatten()
        })
    }

    /// SIGTERM, as Kubernetes stops a pod; returns whether the operator then exited successfully.
    pub async fn terminate(&mut self) -> bool {
        let Some(pid) = self.child.id() else { return false };
        let sent = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        assert!(sent.is_ok_and(|s| s.success()), "cannot send SIGTERM to the operator");
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }

    /// SIGKILL: the operator gets no chance to clean up.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Everything one scenario needs: namespace, lake, kubelet and a place for logs.
pub struct Scenario {
    pub client: Client,
    pub ns: TestNamespace,
    pub dir: tempfile::TempDir,
    pub kubelet: kubelet::Kubelet,
}

impl Scenario {
    /// One of a dataset's series in this scenario's namespace: `name{labels}` with its `namespace` label added.
    pub fn series(&self, series: &str) -> String {
        let labels = series.strip_suffix('}').expect("a series with labels: name{…}");
        format!("{labels},namespace=\"{}\"}}", self.ns.name)
    }

    pub async fn new(prefix: &str) -> Scenario {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::create(&client, prefix).await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("lake")).expect("lake");
        std::fs::create_dir_all(dir.path().join("input")).expect("input");
        let kubelet = kubelet::Kubelet::start(client.clone(), &ns.name, worker_bin());
        Scenario { client, ns, dir, kubelet }
    }

    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    /// Writes an input file and returns its path.
    pub fn input(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join("input").join(name);
        std::fs::write(&path, text).expect("write input");
        path
    }

    /// An S3 lake of the transactions dataset on `s3` (bucket `lake`): the Dataset's credentials Secret
    /// `lake-writer` holds the writing identity (for worker and promote Jobs); the returned operator reads with the
    /// server's read-only identity of its own.
    pub async fn s3_dataset_and_read_only_operator(&self, s3: &S3Server) -> Operator {
        self.s3_dataset_and_read_only_operator_with_env(s3, &[]).await
    }

    /// The same, with more environment for the operator.
    pub async fn s3_dataset_and_read_only_operator_with_env(&self, s3: &S3Server, more: &[(&str, &str)]) -> Operator {
        s3.create_bucket("lake").await;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), &self.ns.name);
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "lake-writer"},
            "stringData": {"AWS_ACCESS_KEY_ID": s3.var("AWS_ACCESS_KEY_ID"), "AWS_SECRET_ACCESS_KEY": s3.var("AWS_SECRET_ACCESS_KEY")},
        }))
        .expect("secret");
        secrets.create(&PostParams::default(), &secret).await.expect("create Secret");
        let mut dataset = transactions_dataset(&self.lake(), 3);
        dataset.spec.storage.lake_uri = "s3://lake/warehouse".into();
        dataset.spec.storage.endpoint = Some(s3.var("AWS_ENDPOINT_URL"));
        dataset.spec.storage.region = Some("us-east-1".into());
        dataset.spec.storage.credentials_secret = Some(silverline_crds::SecretKeyRef { name: "lake-writer".into() });
        create_dataset(&self.client, &self.ns.name, &dataset).await;
        Operator::start(OperatorOptions {
            namespace: &self.ns.name,
            identity: "replica-a",
            log_dir: self.dir.path(),
            kubeconfig: None,
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), s3.var("SILVERLINE_TEST_RO_ACCESS_KEY_ID")),
                ("AWS_SECRET_ACCESS_KEY".into(), s3.var("SILVERLINE_TEST_RO_SECRET_ACCESS_KEY")),
                ("SILVERLINE_ALLOWED_ENDPOINTS".into(), s3.var("AWS_ENDPOINT_URL")),
            ]
            .into_iter()
            .chain(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .collect(),
        })
        .await
    }

    pub async fn operator(&self, identity: &str) -> Operator {
        self.operator_with_env(identity, &[]).await
    }

    /// The operator with more environment (e.g. `SILVERLINE_LAKE_GRACE_SECONDS`).
    pub async fn operator_with_env(&self, identity: &str, env: &[(&str, &str)]) -> Operator {
        Operator::start(OperatorOptions {
            namespace: &self.ns.name,
            identity,
            log_dir: self.dir.path(),
            kubeconfig: None,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        })
        .await
    }

    /// A kubeconfig of a ServiceAccount `silverline-operator` in this namespace that holds exactly the rules of
    /// the ClusterRole and the leader-election Role of the chart charts/silverline (`helm template`, default values).
    pub async fn operator_service_account(&self) -> PathBuf {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
        let docs = helm::template("silverline", helm::RELEASE_NAMESPACE, &[])
            .unwrap_or_else(|e| panic!("helm template of charts/silverline failed: {e}"));
        let rules_of = |kind: &str, name: &str| {
            let doc = docs
                .iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no {kind} {name} in the chart's rendering"));
            doc["rules"].clone()
        };
        let ns = &self.ns.name;
        let pp = PostParams::default();
        let sa = "silverline-operator";
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let account: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).expect("sa");
        accounts.create(&pp, &account).await.expect("create ServiceAccount");
        let subject = serde_json::json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]);
        let cluster_name = format!("silverline-operator-{ns}");
        let cluster_role: ClusterRole = serde_json::from_value(
            serde_json::json!({"metadata": {"name": cluster_name}, "rules": rules_of("ClusterRole", "silverline-operator")}),
        )
        .expect("ClusterRole");
        Api::<ClusterRole>::all(self.client.clone()).create(&pp, &cluster_role).await.expect("create ClusterRole");
        let cluster_binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": cluster_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
            "subjects": subject,
        }))
        .expect("ClusterRoleBinding");
        Api::<ClusterRoleBinding>::all(self.client.clone()).create(&pp, &cluster_binding).await.expect("binding");
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "silverline-operator-leader"},
            "rules": rules_of("Role", "silverline-operator-leader"),
        }))
        .expect("Role");
        Api::<Role>::namespaced(self.client.clone(), ns).create(&pp, &role).await.expect("create Role");
        let role_binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "silverline-operator-leader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "silverline-operator-leader"},
            "subjects": subject,
        }))
        .expect("RoleBinding");
        Api::<RoleBinding>::namespaced(self.client.clone(), ns).create(&pp, &role_binding).await.expect("binding");
        // The RBAC authorizer learns of new bindings a moment after their create returns: wait until it allows
        // every rule, so the operator's first requests are not refused by a lagging cache.
        let user = format!("system:serviceaccount:{ns}:{sa}");
        for (rules, namespace) in [
            (rules_of("ClusterRole", "silverline-operator"), None),
            (rules_of("Role", "silverline-operator-leader"), Some(ns.as_str())),
        ] {
            for rule in rules.as_array().into_iter().flatten() {
                let strings = |field: &str| -> Vec<String> {
                    rule[field].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                };
                for group in strings("apiGroups") {
                    for resource in strings("resources") {
                        for verb in strings("verbs") {
                            let access = Access { group: &group, resource: &resource, verb: &verb };
                            wait_until_allowed(&self.client, &user, namespace, access).await;
                        }
                    }
                }
            }
        }

        service_account_kubeconfig(&self.client, ns, sa, &self.dir.path().join("operator.kubeconfig")).await
    }

    /// Logs of the kubelet's containers and of the given operators, for a failing assertion's message.
    pub fn diagnostics(&self, operators: &[&Operator]) -> String {
        let mut out = self.kubelet.logs();
        for op in operators {
            let logs = op.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            out.push_str(&format!("--- operator {}\n", op.identity));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// A resource verb, for [`wait_until_allowed`].
#[derive(Clone, Copy)]
pub struct Access<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub verb: &'a str,
}

/// Waits (up to a minute) until the apiserver's authorizer allows ServiceAccount user `user`
/// (`system:serviceaccount:NS:NAME`) `access`, in `namespace` or cluster-wide. RBAC's authorizer reads bindings
/// from informers, so a Role or binding just created is not enforced at once; a test that acts right after a grant
/// waits here instead of racing it.
pub async fn wait_until_allowed(client: &Client, user: &str, namespace: Option<&str>, access: Access<'_>) {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let sa_namespace = user.split(':').nth(2).unwrap_or_default();
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_namespace}"), "system:authenticated"],
            "resourceAttributes": {
                "group": access.group, "resource": access.resource, "namespace": namespace, "verb": access.verb,
            },
        },
    }))
    .expect("SubjectAccessReview");
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let what = format!("RBAC to allow {user} to {} {}.{} in {namespace:?}", access.verb, access.resource, access.group);
    eventually(&what, Duration::from_secs(60), || async {
        let answer = reviews.create(&PostParams::default(), &review).await.ok()?;
        answer.status.is_some_and(|s| s.allowed).then_some(())
    })
    .await;
}

/// Writes to `path` a kubeconfig of the test control plane that authenticates as ServiceAccount `sa` of
/// `namespace`, with a token from the TokenRequest API (an hour long), and returns `path`.
pub async fn service_account_kubeconfig(client: &Client, namespace: &str, sa: &str, path: &Path) -> PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() }),
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let issued: TokenRequest = accounts
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for ServiceAccount {namespace}/{sa}: {e}"));
    let token = issued.status.and_then(|s| s.token).expect("token");
    let admin_path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let admin = std::fs::read_to_string(&admin_path).expect("kubeconfig");
    let replaced: Vec<String> = admin
        .lines()
        .map(|line| match line.find("token: ") {
            Some(i) => format!("{}token: {token}", &line[..i]),
            None => line.to_owned(),
        })
        .collect();
    std::fs::write(path, replaced.join("\n") + "\n").expect("write kubeconfig");
    path.to_owned()
}

/// A SeaweedFS S3 server of its own (scripts/s3server.sh), stopped when dropped.
pub struct S3Server {
    dir: tempfile::TempDir,
    /// What `DIR/env` exports: AWS_ENDPOINT_URL, the admin and the read-only identities.
    pub env: std::collections::BTreeMap<String, String>,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("s3 directory");
        let status = tokio::process::Command::new(repo_root().join("scripts/s3server.sh"))
            .arg("start")
            .arg(dir.path())
            .stdout(Stdio::null())
            .status()
            .await
            .expect("run scripts/s3server.sh");
        assert!(status.success(), "the S3 test server did not start (scripts/s3server.sh start)");
        let text = std::fs::read_to_string(dir.path().join("env")).expect("s3 env");
        let env = text
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        S3Server { dir, env }
    }

    pub fn var(&self, name: &str) -> String {
        self.env.get(name).cloned().unwrap_or_else(|| panic!("{name} is not in the S3 server's env"))
    }

    /// Creates a bucket with the admin identity (a SigV4-signed PUT, by the s3server helper's client).
    pub async fn create_bucket(&self, bucket: &str) {
        let script = format!(
            "import sys; sys.path.insert(0, {dir:?}); import check_conditional as c; \
             r = c.request('PUT', '/{bucket}'); sys.exit(0 if r.status == 200 else f'CreateBucket: {{r}}')",
            dir = repo_root().join("tests/s3server").display().to_string()
        );
        let status = tokio::process::Command::new("python3")
            .args(["-c", &script])
            .envs(&self.env)
            .status()
            .await
            .expect("python3");
        assert!(status.success(), "cannot create bucket {bucket}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo_root().join("scripts/s3server.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A series' name and its labels, sorted: `name{a="1",b="2"}` in the text exposition's format (label values
/// without escaped quotes, as the operator's are).
fn parse_series(series: &str) -> (String, Vec<(String, String)>) {
    let Some((name, labels)) = series.split_once('{') else { return (series.to_owned(), Vec::new()) };
    let mut pairs = Vec::new();
    let mut rest = labels.trim_end_matches('}');
    while let Some((key, tail)) = rest.split_once("=\"") {
        let Some((value, tail)) = tail.split_once('"') else { break };
        pairs.push((key.trim_start_matches(',').to_owned(), value.to_owned()));
        rest = tail;
    }
    pairs.sort();
    (name.to_owned(), pairs)
}
