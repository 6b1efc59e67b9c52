//! A test kubelet. The test control plane has no nodes, so this watches the Pods of one namespace, runs each
//! pod's first container as a local process (the image is ignored; `silverline-worker` is the worker binary
//! built by cargo), and writes the pod's status as a kubelet does: Running, then Succeeded or Failed with the
//! container's exit code in `containerStatuses[].state.terminated` (with `terminationMessagePolicy:
//! FallbackToLogsOnError`, a failed container's message is the tail of its log). The real Job controller turns that into
//! Job status, so backoff limits, pod failure policies and owner references behave as in a cluster.
//!
//! What a process cannot honour: images, users, read-only root file systems and resource limits (an emptyDir's
//! sizeLimit too). ConfigMap volumes are materialised into a directory per pod, emptyDir volumes as an empty
//! one, and arguments under a volume's mountPath are rewritten to it (there is no mount namespace).
//!
//! A pod deleted gracefully (eviction, the Job controller stopping it) gets SIGTERM, then SIGKILL after 30 s, and
//! its terminal status; a pod that vanishes has its process killed.
//!
//! Faults are injected per Job name, the way they happen in a cluster: a container that exits with a code, one
//! that exits 0 without doing its work, one killed with SIGKILL in the middle of its run, one held before start,
//! one whose worker runs with more environment (e.g. a test hook of the worker), optionally held before start.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// Something that goes wrong with the pod of one Job.
#[derive(Clone)]
pub enum Fault {
    /// The container exits with this code without running the worker.
    Exit(i32),
    /// The container exits 0 without running the worker: a Job that completes but leaves nothing in the lake.
    SucceedWithoutRunning,
    /// The worker runs and is killed with SIGKILL once its run id's `_RUN.json` claim is in the lake under `lake`.
    KillAfterClaim { lake: PathBuf },
    /// The pod is Running but its worker only starts once the test notifies.
    Hold(Arc<Notify>),
    /// The worker runs with these environment variables added (e.g. `SILVERLINE_PROMOTE_CRASH_AFTER`), and
    /// with `hold`, only once the test notifies.
    Env { vars: Vec<(String, String)>, hold: Option<Arc<Notify>> },
}

type Faults = Arc<Mutex<HashMap<String, Fault>>>;

pub struct Kubelet {
    faults: Faults,
    task: tokio::task::JoinHandle<()>,
    /// Where pod volumes and container logs are kept (removed with the kubelet).
    pub dir: tempfile::TempDir,
}

impl Kubelet {
    pub fn start(client: Client, namespace: &str, worker_bin: PathBuf) -> Kubelet {
        let dir = tempfile::tempdir().expect("kubelet directory");
        let faults: Faults = Arc::default();
        let node = Node {
            pods: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            worker_bin,
            root: dir.path().to_owned(),
            faults: faults.clone(),
        };
        let task = tokio::spawn(node.run());
        Kubelet { faults, task, dir }
    }

    /// The next pod of Job `job` meets `fault` (once).
    pub fn inject(&self, job: &str, fault: Fault) {
        self.faults.lock().expect("faults").insert(job.to_owned(), fault);
    }

    /// The output of the container of every pod so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else { return out };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("container.log")).collect();
        paths.sort();
        for path in paths {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {}\n", path.display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Aborting drops every pod task, and with it each child process (kill_on_drop).
        self.task.abort();
    }
}

struct Node {
    pods: Api<Pod>,
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    namespace: String,
    worker_bin: PathBuf,
    root: PathBuf,
    faults: Faults,
}

impl Node {
    async fn run(self) {
        let node = Arc::new(self);
        let mut running: HashMap<String, oneshot::Sender<()>> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut events = watcher(node.pods.clone(), watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let pod = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                Ok(watcher::Event::Delete(pod)) => {
                    // The pod is gone: stop its container, as a kubelet does.
                    running.remove(&pod.uid().unwrap_or_default());
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("test kubelet: watch error: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let uid = pod.uid().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                // Graceful deletion (eviction, the Job controller stopping a pod): SIGTERM, then the terminal status.
                if let Some(stop) = running.remove(&uid) {
                    let _ = stop.send(());
                }
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if running.contains_key(&uid) || phase == "Succeeded" || phase == "Failed" || phase == "Running" {
                continue;
            }
            let (stop, stopped) = oneshot::channel();
            running.insert(uid, stop);
            let node = node.clone();
            tasks.spawn(async move {
                if let Err(e) = node.run_pod(pod, stopped).await {
                    eprintln!("test kubelet: {e}");
                }
            });
        }
    }

    async fn run_pod(&self, pod: Pod, mut stopped: oneshot::Receiver<()>) -> Result<(), String> {
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().ok_or("a pod without spec")?;
        let container = spec.containers.first().cloned().ok_or("a pod without containers")?;
        let labels = pod.labels();
        let job =
            labels.get("batch.kubernetes.io/job-name").or_else(|| labels.get("job-name")).cloned().unwrap_or_default();
        let fault = self.faults.lock().map_err(|e| e.to_string())?.remove(&job);
        let pod_dir = self.root.join(&uid);
        std::fs::create_dir_all(&pod_dir).map_err(|e| e.to_string())?;

        // Volumes: each ConfigMap volume becomes a directory of its keys, each emptyDir an empty directory.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let mount = |mounts: &mut Vec<(String, PathBuf)>, volume: &str, dir: &PathBuf| {
            for m in container.volume_mounts.iter().flatten().filter(|m| m.name == volume) {
                mounts.push((m.mount_path.clone(), dir.clone()));
            }
        };
        for volume in spec.volumes.iter().flatten() {
            if volume.empty_dir.is_some() {
                let dir = pod_dir.join("volumes").join(&volume.name);
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                mount(&mut mounts, &volume.name, &dir);
                continue;
            }
            let Some(source) = &volume.config_map else { continue };
            // Like a kubelet, wait for a ConfigMap that does not exist yet (a non-optional volume: the pod stays
            // ContainerCreating until it appears), unless the pod is stopped first.
            let cm = loop {
                match self.config_maps.get_opt(&source.name).await {
                    Ok(Some(cm)) => break cm,
                    Ok(None) if source.optional == Some(true) => break ConfigMap::default(),
                    Ok(None) => {}
                    Err(e) => return Err(format!("ConfigMap {}: {e}", source.name)),
                }
                // Stopped gracefully, or gone (its sender dropped).
                if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let dir = pod_dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            for (key, value) in cm.data.iter().flatten() {
                std::fs::write(dir.join(key), value).map_err(|e| e.to_string())?;
            }
            mount(&mut mounts, &volume.name, &dir);
        }
        let rewrite = |arg: &String| {
            for (mount_path, dir) in &mounts {
                if let Some(rest) = arg.strip_prefix(mount_path.as_str()) {
                    return format!("{}{rest}", dir.display());
                }
            }
            arg.clone()
        };
        let args: Vec<String> = container.args.iter().flatten().map(rewrite).collect();
        let command = container.command.clone().unwrap_or_default();
        let program = match command.first().map(String::as_str) {
            Some("silverline-worker") => self.worker_bin.clone(),
            Some(other) => PathBuf::from(other),
            None => return Err(format!("pod {name}: the container has no command")),
        };
        let mut args_all: Vec<String> = command.iter().skip(1).cloned().collect();
        args_all.extend(args);

        // Environment: whole Secrets by envFrom, literal values, and Secret keys by secretKeyRef. As a kubelet:
        // the whole environment is made again on every try, each Secret read once per try; a missing Secret, or a
        // missing key that is not optional, is a CreateContainerConfigError in the kubelet's words, retried
        // until the pod can start.
        let mut said: Option<String> = None;
        let mut env = loop {
            match self.environment(&container).await? {
                Ok(env) => break env,
                Err(problem) => {
                    if said.as_ref() != Some(&problem) {
                        self.set_waiting(&name, &container.name, "CreateContainerConfigError", &problem).await?;
                        said = Some(problem);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = &mut stopped => return Ok(()),
            }
        };

        if let Some(Fault::Env { vars, .. }) = &fault {
            env.extend(vars.iter().cloned());
        }
        // The container's terminationMessagePath (`/dev/termination-log`), as a file of the pod's own; the worker
        // writes there when SILVERLINE_TERMINATION_LOG names it.
        let termination_path = pod_dir.join("termination-log");
        env.insert("SILVERLINE_TERMINATION_LOG".into(), termination_path.display().to_string());

        let started = Timestamp::now();
        self.set_running(&name, &container.name, container.image.as_deref().unwrap_or(""), started).await?;
        let image = container.image.clone().unwrap_or_default();
        let log_path = pod_dir.join("container.log");
        let exit_code = match fault {
            Some(Fault::Exit(code)) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                code
            }
            Some(Fault::SucceedWithoutRunning) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                0
            }
            Some(Fault::Hold(_) | Fault::Env { .. }) => {
                let release = match &fault {
                    Some(Fault::Hold(release)) => Some(release.clone()),
                    Some(Fault::Env { hold, .. }) => hold.clone(),
                    _ => None,
                };
                if let Some(release) = release {
                    tokio::select! {
                        () = release.notified() => {}
                        graceful = &mut stopped => match graceful {
                            // A held container dies of the SIGTERM it is sent.
                            Ok(()) => return self.set_terminated(&name, &container.name, &image, started, 143).await,
                            Err(_) => return Ok(()),
                        },
                    }
                }
                match spawn_and_wait(&program, &args_all, &env, &log_path, &pod_dir, &mut stopped, None).await? {
                    Some(code) => code,
                    None => return Ok(()),
                }
            }
            Some(Fault::KillAfterClaim { lake }) => {
                let run_id = pod.annotations().get("etl.silverline.dev/run-id").cloned().unwrap_or_default();
                let claim = (lake, run_id);
                match spawn_and_wait(&program, &args_all, &env, &log_path, &pod_dir, &mut stopped, Some(claim)).await? {
                    Some(code) => code,
                    None => return Ok(()),
                }
            }
            None => match spawn_and_wait(&program, &args_all, &env, &log_path, &pod_dir, &mut stopped, None).await? {
                Some(code) => code,
                None => return Ok(()),
            },
        };
        // As a kubelet does: the termination message file (at most 4096 bytes), else, with
        // `terminationMessagePolicy: FallbackToLogsOnError`, a failed container's log tail.
        let written = std::fs::read(&termination_path).ok().filter(|b| !b.iter().all(u8::is_ascii_whitespace));
        let message = match written {
            Some(mut bytes) => {
                bytes.truncate(4096);
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            None => (exit_code != 0
                && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"))
            .then(|| log_tail(&log_path))
            .flatten(),
        };
        self.set_terminated_with(&name, &container.name, &image, started, exit_code, message).await
    }

    async fn patch_status(&self, name: &str, status: serde_json::Value) -> Result<(), String> {
        let patch = serde_json::json!({ "status": status });
        self.pods
            // Strategic merge, as the kubelet does: conditions merge by type, so a DisruptionTarget set by the
            // eviction API is kept.
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map(|_| ())
            .map_err(|e| format!("pod {name}: writing status: {e}"))
    }

    /// The container's environment from one read of each Secret it names, or what keeps it from starting.
    async fn environment(&self, container: &Container) -> Result<Result<BTreeMap<String, String>, String>, String> {
        let mut secrets: BTreeMap<String, Option<Secret>> = BTreeMap::new();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        let mut names: Vec<&str> =
            container.env_from.iter().flatten().filter_map(|f| Some(f.secret_ref.as_ref()?.name.as_str())).collect();
        names.extend(
            container
                .env
                .iter()
                .flatten()
                .filter_map(|v| Some(v.value_from.as_ref()?.secret_key_ref.as_ref()?.name.as_str())),
        );
        for name in names {
            if !secrets.contains_key(name) {
                let secret = self.secrets.get_opt(name).await.map_err(|e| format!("Secret {name}: {e}"))?;
                secrets.insert(name.to_owned(), secret);
            }
        }
        let text = |v: &k8s_openapi::ByteString| String::from_utf8_lossy(&v.0).into_owned();
        for from in container.env_from.iter().flatten() {
            let Some(reference) = &from.secret_ref else { continue };
            match secrets.get(&reference.name).cloned().flatten() {
                Some(secret) => env.extend(secret.data.iter().flatten().map(|(k, v)| (k.clone(), text(v)))),
                None if reference.optional == Some(true) => {}
                None => return Ok(Err(format!("secret \"{}\" not found", reference.name))),
            }
        }
        for var in container.env.iter().flatten() {
            if let Some(value) = &var.value {
                env.insert(var.name.clone(), value.clone());
            }
            let Some(selector) = var.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()) else { continue };
            let optional = selector.optional == Some(true);
            let Some(secret) = secrets.get(&selector.name).cloned().flatten() else {
                if optional {
                    continue;
                }
                return Ok(Err(format!("secret \"{}\" not found", selector.name)));
            };
            match secret.data.as_ref().and_then(|d| d.get(&selector.key)) {
                Some(value) => {
                    env.insert(var.name.clone(), text(value));
                }
                None if optional => {}
                None => {
                    let (key, namespace, name) = (&selector.key, &self.namespace, &selector.name);
                    return Ok(Err(format!("couldn't find key {key} in Secret {namespace}/{name}")));
                }
            }
        }
        Ok(Ok(env))
    }

    async fn set_waiting(&self, name: &str, container: &str, reason: &str, message: &str) -> Result<(), String> {
        self.patch_status(
            name,
            serde_json::json!({
                "phase": "Pending",
                "containerStatuses": [{
                    "name": container, "image": "", "imageID": "", "ready": false, "started": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}}
                }]
            }),
        )
        .await
    }

    async fn set_running(&self, name: &str, container: &str, image: &str, started: Timestamp) -> Result<(), String> {
        let t = serde_json::to_value(Time(started)).map_err(|e| e.to_string())?;
        let condition = |type_: &str| serde_json::json!({"type": type_, "status": "True", "lastTransitionTime": t});
        self.patch_status(
            name,
            serde_json::json!({
                "phase": "Running",
                "startTime": t,
                "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
                "containerStatuses": [{
                    "name": container, "image": image, "imageID": "", "ready": true, "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": t}}
                }]
            }),
        )
        .await
    }

    async fn set_terminated(
        &self,
        name: &str,
        container: &str,
        image: &str,
        started: Timestamp,
        code: i32,
    ) -> Result<(), String> {
        self.set_terminated_with(name, container, image, started, code, None).await
    }

    async fn set_terminated_with(
        &self,
        name: &str,
        container: &str,
        image: &str,
        started: Timestamp,
        code: i32,
        message: Option<String>,
    ) -> Result<(), String> {
        let (t0, t1) = (Time(started), Time(Timestamp::now()));
        let (phase, reason) = if code == 0 { ("Succeeded", "Completed") } else { ("Failed", "Error") };
        let not_ready = |type_: &str| serde_json::json!({"type": type_, "status": "False", "reason": "PodCompleted", "lastTransitionTime": t1});
        let ready = |type_: &str| serde_json::json!({"type": type_, "status": "True", "lastTransitionTime": t0});
        self.patch_status(
            name,
            serde_json::json!({
                "phase": phase,
                "conditions": [ready("PodScheduled"), ready("Initialized"), not_ready("ContainersReady"), not_ready("Ready")],
                "containerStatuses": [{
                    "name": container, "image": image, "imageID": "", "ready": false, "started": false, "restartCount": 0,
                    "state": {"terminated": {
                        "exitCode": code, "reason": reason, "startedAt": t0, "finishedAt": t1, "message": message,
                    }}
                }]
            }),
        )
        .await
    }
}

/// The last 80 lines (at most 2048 bytes) of a container's log, as a kubelet's `FallbackToLogsOnError` takes them.
fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(80)..].join("\n");
    if tail.len() > 2048 {
        let mut cut = tail.len() - 2048;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_owned();
    }
    (!tail.trim().is_empty()).then_some(tail)
}

/// Runs the container's process and returns its exit code (128 + signal when killed). On graceful deletion it
/// gets SIGTERM, then SIGKILL after the grace period; `None` when the pod vanished (its process is killed).
async fn spawn_and_wait(
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    log_path: &Path,
    cwd: &Path,
    stopped: &mut oneshot::Receiver<()>,
    kill_after_claim: Option<(PathBuf, String)>,
) -> Result<Option<i32>, String> {
    let log = std::fs::File::create(log_path).map_err(|e| e.to_string())?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let killer = async {
        match &kill_after_claim {
            Some((lake, run_id)) => loop {
                if claim_exists(lake, run_id) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            },
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| e.to_string())?;
            Ok(Some(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))))
        }
        () = killer => {
            child.start_kill().map_err(|e| e.to_string())?;
            let status = child.wait().await.map_err(|e| e.to_string())?;
            Ok(Some(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))))
        }
        graceful = stopped => {
            if graceful.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Ok(None);
            }
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            let status = match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(status) => status.map_err(|e| e.to_string())?,
                Err(_) => {
                    child.start_kill().map_err(|e| e.to_string())?;
                    child.wait().await.map_err(|e| e.to_string())?
                }
            };
            Ok(Some(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))))
        }
    }
}

/// Whether `…/run_id={run_id}/_RUN.json` exists anywhere under the lake's silver area.
fn claim_exists(lake: &Path, run_id: &str) -> bool {
    let Ok(datasets) = std::fs::read_dir(lake.join("silver")) else { return false };
    for dataset in datasets.flatten() {
        let Ok(versions) = std::fs::read_dir(dataset.path()) else { continue };
        for version in versions.flatten() {
            if version.path().join(format!("run_id={run_id}")).join("_RUN.json").exists() {
                return true;
            }
        }
    }
    false
}
