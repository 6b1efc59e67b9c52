//! `silverline-worker`: runs one history-safe CSV → Parquet transform (`run`), helps triage a run's quarantine
//! (`quarantine`), promotes verified runs (`promote`) and shows a dataset's history (`history`). A person at a
//! terminal gets a progress line and a short summary (or one line on failure); a pod gets JSON log lines in the
//! operator's shape, through `tracing` (see `log`). See the README for exit codes.

use clap::{Parser, Subcommand, ValueEnum};
use silverline_crds::PromotionMode;
use silverline_lake::promotion::{Hooks, Step};
use silverline_worker::promote::{LakeArgs, PromoteArgs, PromoteResult, history, history_table, promote};
use silverline_worker::quarantine::{TriageArgs, triage};
use silverline_worker::run::{RunArgs, RunControl, report_progress, run};
use silverline_worker::{Error, ExitCode, log};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(
    name = "silverline-worker",
    version,
    about = "Silverline's worker: history-safe CSV to Parquet runs, promotion and history"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transform an input into the lake under a new run id.
    Run(RunCli),
    /// Triage a run's quarantine (or condemned rows): errors by type and column, bad values, sources, a sample.
    Quarantine(QuarantineCli),
    /// Make verified runs (or an old version) current, with a named approver; or record a rejection.
    Promote(PromoteCli),
    /// List the dataset's runs, versions and audit log, newest first.
    History(HistoryCli),
}

#[derive(clap::Args)]
struct LakeCli {
    /// The Dataset manifest (the same YAML that is applied to the cluster).
    #[arg(long, value_name = "FILE")]
    contract: PathBuf,
    /// The lake root (local path, file:// or s3://); defaults to the contract's spec.storage.lakeUri.
    #[arg(long, value_name = "URI")]
    lake: Option<String>,
    /// S3 endpoint of an S3-compatible store (path-style addressing); overrides the contract and AWS_ENDPOINT_URL.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region; overrides the contract and AWS_REGION.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
}

impl LakeCli {
    fn args(&self) -> LakeArgs {
        LakeArgs {
            contract: self.contract.clone(),
            lake: self.lake.clone(),
            endpoint: self.s3_endpoint.clone(),
            region: self.region.clone(),
        }
    }
}

#[derive(clap::Args)]
struct PromoteCli {
    #[command(flatten)]
    lake: LakeCli,
    /// A run to promote; repeat for several runs promoted together as one version.
    #[arg(long = "run-id", value_name = "ID", conflicts_with = "restore_version")]
    run_ids: Vec<String>,
    /// How current changes: append, replace-partitions or replace-all (default: the contract's spec.promotion.mode).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    mode: Option<PromotionMode>,
    /// A rollback: make the files of version N current again, as a new version.
    #[arg(long, value_name = "N")]
    restore_version: Option<u64>,
    /// Who approved the promotion.
    #[arg(long, value_name = "NAME", conflicts_with = "rejected_by")]
    approved_by: Option<String>,
    /// Record a rejection by NAME instead: writes a `rejected` audit record and moves nothing.
    #[arg(long, value_name = "NAME")]
    rejected_by: Option<String>,
    /// Why (shown in the pointer and the audit log).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// The Kubernetes Promotion this is (NAMESPACE/NAME/UID): a repeat of it only catches up.
    #[arg(long, value_name = "NS/NAME/UID")]
    promotion: Option<String>,
    /// Commit again, as a new version, a request (same runs and mode, or restore version; approver; reason) that
    /// the audit log records as committed; without it such a repeat says "already promoted as version N".
    #[arg(long, conflicts_with_all = ["promotion", "rejected_by"])]
    again: bool,
}

fn parse_mode(text: &str) -> Result<PromotionMode, String> {
    PromotionMode::parse(text).ok_or_else(|| "expected append, replace-partitions or replace-all".to_owned())
}

#[derive(Clone, Copy, ValueEnum)]
enum HistoryFormat {
    Table,
    Json,
}

#[derive(clap::Args)]
struct HistoryCli {
    #[command(flatten)]
    lake: LakeCli,
    #[arg(long, value_enum, default_value = "table")]
    format: HistoryFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum TriageFormat {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
struct QuarantineCli {
    #[command(flatten)]
    lake: LakeCli,
    /// The run whose quarantine to read.
    #[arg(long, value_name = "ID")]
    run_id: String,
    /// Rows in the sample (0: the summary only).
    #[arg(long, value_name = "N", default_value_t = 10)]
    limit: usize,
    /// table (for a person), json (everything), csv (the sample rows).
    #[arg(long, value_enum, default_value = "table")]
    format: TriageFormat,
    /// Only rows with this error type (with --condemned, also EXACT_DUPLICATE or MAX_ATTEMPTS_REACHED).
    #[arg(long, value_name = "TYPE")]
    error_type: Option<String>,
    /// Only rows whose error is in this column.
    #[arg(long, value_name = "COLUMN")]
    column: Option<String>,
    /// The condemned rows (exact duplicates, rows out of attempts) instead of the quarantined ones.
    #[arg(long)]
    condemned: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum LogFormat {
    /// For a person when stderr is a terminal, JSON otherwise.
    Auto,
    /// For a person: a progress line, a summary, one line on failure.
    Text,
    /// JSON log lines on stderr, in the operator's shape; nothing on stdout.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Progress {
    /// A progress line on a terminal, progress log lines otherwise.
    Auto,
    /// Progress log lines every few seconds (JSON in a pod, text with `--log-format text`).
    Json,
    /// No progress reports.
    Off,
}

#[derive(clap::Args)]
struct RunCli {
    /// The Dataset manifest (the same YAML that is applied to the cluster).
    #[arg(long, value_name = "FILE")]
    contract: PathBuf,
    /// A CSV object or a prefix of them (local path, file:// or s3://), or a quarantine run path to replay.
    #[arg(long, value_name = "URI")]
    input: String,
    /// The lake root (local path, file:// or s3://); defaults to the contract's spec.storage.lakeUri.
    #[arg(long, value_name = "URI")]
    lake: Option<String>,
    /// The run id; defaults to the UTC start time YYYYMMDDTHHMMSSZ. A run id is never reused.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// S3 endpoint of an S3-compatible store (path-style addressing); overrides the contract and AWS_ENDPOINT_URL.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region; overrides the contract and AWS_REGION.
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Checker threads (default: the available cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// A writable directory where part files bound for S3 wait for their upload, at most 5 MiB per open
    /// partition (default: TMPDIR, else /tmp). Not used for a local lake.
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    progress: Progress,
    /// How the run reports: auto (text on a terminal, JSON elsewhere), text or json.
    #[arg(long, value_enum, default_value = "auto")]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut args = match cli.command {
        Command::Run(args) => args,
        Command::Quarantine(args) => {
            log::init(log::Format::Text);
            return exit(execute_quarantine(&args));
        }
        Command::Promote(args) => {
            log::init(log::Format::Json);
            return exit(execute_promote(&args));
        }
        Command::History(args) => {
            log::init(log::Format::Text);
            return exit(execute_history(&args));
        }
    };
    let human = match args.log_format {
        LogFormat::Auto => std::io::stderr().is_terminal(),
        LogFormat::Text => true,
        LogFormat::Json => false,
    };
    log::init(if human { log::Format::Text } else { log::Format::Json });
    // The run id is known up front, so that a failure can name it.
    let run_id = args.run_id.get_or_insert_with(|| chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()).clone();
    let code = match execute(args, human) {
        Ok(()) => ExitCode::Success,
        Err(e) => {
            let fields = serde_json::json!({"error": e.to_string(), "category": e.category(), "exit_code": e.exit_code().code()});
            // Kubernetes shows the termination message in the pod's status; the operator copies it into the run's.
            termination_log(&fields);
            if human {
                eprintln!("silverline-worker: {}", silverline_worker::summary::failure_line(&e, &run_id));
            } else {
                log::run_failed(&run_id, &e);
            }
            e.exit_code()
        }
    };
    std::process::ExitCode::from(code.code() as u8)
}

/// The hash maps keyed by input values seed themselves from the system's random source (ahash, through
/// getrandom); where it cannot be read — a static binary in a root without `/dev/urandom`, which getrandom falls
/// back to — they would panic in the middle of a run, after its id was claimed. Probed first, it is a usage error
/// that writes nothing.
fn random_source() -> Result<(), Error> {
    let mut seed = [0u8; 16];
    getrandom::fill(&mut seed).map_err(|e| {
        Error::Usage(format!(
            "the system's random source cannot be read ({e}): the worker needs it for its hash maps' seeds; a \
             container must provide /dev/urandom and /dev/random (every container runtime does; a bare chroot may not)"
        ))
    })
}

fn execute(cli: RunCli, human: bool) -> Result<(), Error> {
    random_source()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal { context: "starting the I/O runtime".into(), source: e.into() })?;
    let control = Arc::new(RunControl::default());
    {
        let control = control.clone();
        runtime.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            control.request_stop(name);
        });
    }
    let args = RunArgs {
        contract: cli.contract,
        input: cli.input,
        lake: cli.lake,
        run_id: cli.run_id,
        endpoint: cli.s3_endpoint,
        region: cli.region,
        threads: cli.threads,
        spill_dir: cli.spill_dir,
    };
    // A progress line on a terminal for a person, JSON progress logs otherwise; none for a person whose stderr is
    // not a terminal (a line rewritten with \r would only clutter a file).
    let progress = match cli.progress {
        Progress::Off => None,
        Progress::Json => Some(false),
        Progress::Auto if human => std::io::stderr().is_terminal().then_some(true),
        Progress::Auto => Some(false),
    };
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        if let Some(terminal) = progress {
            let (control, done) = (&*control, &done);
            scope.spawn(move || report_progress(control, done, terminal));
        }
        let outcome = run(&args, runtime.handle(), &control);
        done.store(true, Ordering::Relaxed);
        outcome
    })?;
    let report = &outcome.report;
    if human {
        print!("{}", silverline_worker::summary::run_summary(report, &outcome.success_uri, &outcome.error_columns));
    } else {
        log::run_finished(report, &outcome.success_uri, outcome.ledger_bytes, outcome.finishing_seconds);
    }
    Ok(())
}

fn execute_quarantine(cli: &QuarantineCli) -> Result<(), Error> {
    let runtime = runtime()?;
    let args = TriageArgs {
        lake: cli.lake.args(),
        run_id: cli.run_id.clone(),
        limit: cli.limit,
        error_type: cli.error_type.clone(),
        column: cli.column.clone(),
        condemned: cli.condemned,
    };
    let found = triage(&args, runtime.handle())?;
    match cli.format {
        TriageFormat::Table => print!("{}", silverline_worker::quarantine::table(&found)),
        TriageFormat::Json => println!("{}", serde_json::to_string_pretty(&found).unwrap_or_default()),
        TriageFormat::Csv => print!("{}", silverline_worker::quarantine::csv(&found)),
    }
    Ok(())
}

fn exit(outcome: Result<(), Error>) -> std::process::ExitCode {
    let code = match outcome {
        Ok(()) => ExitCode::Success,
        Err(e) => {
            eprintln!("silverline-worker: {e}");
            e.exit_code()
        }
    };
    std::process::ExitCode::from(code.code() as u8)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal { context: "starting the I/O runtime".into(), source: e.into() })
}

/// Writes the one-line result where Kubernetes picks up a container's termination message: the file named by
/// `SILVERLINE_TERMINATION_LOG`, else `/dev/termination-log` when it exists and is writable.
fn termination_log(line: &serde_json::Value) {
    let path = match std::env::var_os("SILVERLINE_TERMINATION_LOG") {
        Some(path) => PathBuf::from(path),
        None => {
            let default = PathBuf::from("/dev/termination-log");
            if !default.exists() {
                return;
            }
            default
        }
    };
    if let Ok(mut file) = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path) {
        use std::io::Write;
        let _ = writeln!(file, "{line}");
    }
}

/// Test-only hooks, from the environment (documented in docs/lake.md): `SILVERLINE_PROMOTE_CRASH_AFTER=
/// manifest|pointer|copies|current_manifest|current` aborts the process right after that step, as a kill would;
/// `SILVERLINE_PROMOTE_PAUSE_BEFORE_POINTER=FILE`, before each attempt's conditional write of `_LATEST.json`,
/// creates `FILE.paused.N` (N = 1, 2, …) and waits (up to 60 s) for `FILE.go.N`, so a test can move the pointer
/// meanwhile.
fn hooks() -> Hooks {
    let crash_after = std::env::var("SILVERLINE_PROMOTE_CRASH_AFTER").ok();
    let pause = std::env::var_os("SILVERLINE_PROMOTE_PAUSE_BEFORE_POINTER").map(PathBuf::from);
    let attempts = std::sync::atomic::AtomicU32::new(0);
    Hooks {
        after_step: Some(Arc::new(move |step: Step| {
            if crash_after.as_deref() == Some(step.name()) {
                eprintln!("silverline-worker: SILVERLINE_PROMOTE_CRASH_AFTER={}: aborting", step.name());
                std::process::abort();
            }
            if let (Step::BeforePointer, Some(file)) = (step, &pause) {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                let with = |suffix: &str| PathBuf::from(format!("{}.{suffix}.{attempt}", file.display()));
                let _ = std::fs::write(with("paused"), b"");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while !with("go").exists() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        })),
        // The promotion logs its retries and repairs through `tracing` itself.
        log: None,
    }
}

fn execute_promote(cli: &PromoteCli) -> Result<(), Error> {
    random_source()?;
    let runtime = runtime()?;
    let args = PromoteArgs {
        lake: cli.lake.args(),
        run_ids: cli.run_ids.clone(),
        mode: cli.mode,
        restore_version: cli.restore_version,
        approved_by: cli.approved_by.clone(),
        rejected_by: cli.rejected_by.clone(),
        reason: cli.reason.clone(),
        promotion: cli.promotion.clone(),
        again: cli.again,
    };
    match promote(&args, runtime.handle(), &hooks()) {
        Ok(PromoteResult::Promoted { dataset, outcome }) => {
            let o = &outcome;
            let before = o.version_before.map_or_else(|| "none".to_owned(), |v| v.to_string());
            if o.already_promoted {
                println!(
                    "already promoted as version {} of dataset {dataset}; current/ and the audit log are caught up",
                    o.version_after
                );
                if cli.promotion.is_none() {
                    println!("  (the same request was committed; to commit it again as a new version, add --again)");
                }
            } else {
                println!(
                    "{} dataset {dataset}: version {before} → {}",
                    o.result.as_str().replace('_', " "),
                    o.version_after
                );
            }
            println!("  {}", o.change.summary());
            if let Some(key) = &o.audit_key {
                println!("  audit: {key}");
            }
            let line = serde_json::json!({
                "result": o.result.as_str(), "already_promoted": o.already_promoted, "dataset": dataset,
                "version_before": o.version_before, "version_after": o.version_after, "retries": o.retries,
                "change": o.change, "audit": o.audit_key, "exit_code": 0,
            });
            log::promotion_finished(&dataset, o);
            termination_log(&line);
            Ok(())
        }
        Ok(PromoteResult::Rejected { dataset, audit_key, version }) => {
            println!(
                "rejected: nothing moved; dataset {dataset} stays at version {}",
                version.map_or_else(|| "none".to_owned(), |v| v.to_string())
            );
            println!("  audit: {audit_key}");
            let line = serde_json::json!({"result": "rejected", "dataset": dataset, "version": version, "audit": audit_key, "exit_code": 0});
            log::rejection_recorded(&dataset, version, &audit_key);
            termination_log(&line);
            Ok(())
        }
        Err(e) => {
            let result = match &e {
                Error::GateRefused { .. } => "refused",
                Error::PointerContention(_) => "contention",
                _ => "failed",
            };
            let checks: Vec<&str> = match &e {
                Error::GateRefused { checks, .. } => checks.split(',').collect(),
                _ => Vec::new(),
            };
            let line = serde_json::json!({
                "result": result, "error": e.to_string(), "category": e.category(), "checks": checks,
                "exit_code": e.exit_code().code(),
            });
            log::promotion_failed(result, &checks, &e);
            termination_log(&line);
            Err(e)
        }
    }
}

fn execute_history(cli: &HistoryCli) -> Result<(), Error> {
    let runtime = runtime()?;
    let found = history(&cli.lake.args(), runtime.handle())?;
    match cli.format {
        HistoryFormat::Table => print!("{}", history_table(&found)),
        HistoryFormat::Json => println!("{}", serde_json::to_string_pretty(&found).unwrap_or_default()),
    }
    Ok(())
}
