//! `silverline-operator`: runs EtlRuns as Jobs of the worker. See operator/README.md.

use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use silverline_operator::config::Config;
use silverline_operator::controllers::{self, Context};
use silverline_operator::http::{self, Probes};
use silverline_operator::job::JobSettings;
use silverline_operator::leader::LeaderElector;
use silverline_operator::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(config: Config, jobs: JobSettings) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Arc::new(Metrics::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, _server) =
        http::serve(config.http_addr, Probes { metrics: metrics.clone(), ready: ready.clone() }).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");

    let client = silverline_operator::apiserver::client(config.api_timeout()).await?;
    let version = client.apiserver_version().await.map_err(|e| format!("reaching the Kubernetes API server: {e}"))?;
    ready.store(true, Ordering::Relaxed);
    let elector = LeaderElector::new(client.clone(), config.lease_settings());
    let lease = elector.settings().clone();
    tracing::info!(
        apiserver = %version.git_version, lease = %lease.name, lease_namespace = %lease.namespace,
        identity = %lease.identity, "waiting for the leader Lease"
    );
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown_signal() => return Ok(()),
    }
    metrics.leader.set(1);
    let watched = config.watched_namespaces();
    let scope = watched.as_ref().map_or_else(|| "all namespaces".to_owned(), |namespaces| namespaces.join(","));
    tracing::info!(identity = %lease.identity, scope, "leading: reconciling EtlRuns");
    let lake_policy = config.lake_policy();
    if lake_policy.lakes.is_empty() {
        tracing::warn!("no lake is allowed (--allowed-lakes): every Dataset will say LakeNotAllowed until one is");
    }

    let reporter = Reporter { controller: "silverline-operator".into(), instance: Some(lease.identity.clone()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        metrics: metrics.clone(),
        jobs,
        lifecycle: config.lifecycle_settings(),
        promotion: config.promotion_settings(),
        promotion_locks: Default::default(),
        pod_ends: controllers::etlrun::PodEnds::default(),
        lake_checks: controllers::etlrun::LakeChecks::default(),
        lakes: silverline_operator::lake::Lakes::new(lake_policy),
        reconcile_concurrency: config.reconcile_concurrency,
        burst_launches_per_second: config.burst_launches_per_second,
        username: Default::default(),
        failures: Default::default(),
    });
    if let Some(username) = ctx.username().await {
        tracing::info!(%username, "authenticated as");
    }
    tokio::select! {
        () = watch(ctx, watched) => {
            elector.release().await;
            tracing::info!("stopped");
            Ok(())
        }
        lost = elector.hold() => {
            metrics.leader.set(0);
            Err(Box::new(lost))
        }
    }
}

/// Runs the controllers over all namespaces, or over each watched namespace (a namespace-scoped install grants
/// the operator Roles in those namespaces only, so it must not list across the cluster).
async fn watch(ctx: Arc<Context>, namespaces: Option<Vec<String>>) {
    match namespaces {
        None => controllers::run(ctx, None).await,
        Some(namespaces) => {
            futures::future::join_all(namespaces.into_iter().map(|ns| controllers::run(ctx.clone(), Some(ns)))).await;
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let jobs = config.job_settings().unwrap_or_else(|e| {
        use clap::CommandFactory;
        Config::command().error(clap::error::ErrorKind::ArgumentConflict, e).exit()
    });
    init_logging();
    match run(config, jobs).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "silverline-operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
