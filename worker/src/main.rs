//! `silverline-worker`: runs one history-safe CSV → Parquet transform. See the README for exit codes.

use clap::{Parser, Subcommand, ValueEnum};
use silverline_worker::run::{RunArgs, RunControl, report_progress, run};
use silverline_worker::{Error, ExitCode};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(name = "silverline-worker", version, about = "History-safe CSV to Parquet transform of one Silverline run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transform an input into the lake under a new run id.
    Run(RunCli),
}

#[derive(Clone, Copy, ValueEnum)]
enum Progress {
    /// A progress line on a terminal, JSON progress logs otherwise.
    Auto,
    /// JSON progress logs.
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
    #[arg(long, value_enum, default_value = "auto")]
    progress: Progress,
}

fn log(level: &str, msg: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({
        "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "level": level,
        "msg": msg,
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (line.as_object_mut(), fields) {
        obj.extend(extra);
    }
    eprintln!("{line}");
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    let code = match execute(args) {
        Ok(()) => ExitCode::Success,
        Err(e) => {
            log(
                "ERROR",
                "run failed",
                serde_json::json!({"error": e.to_string(), "category": e.category(), "exit_code": e.exit_code().code()}),
            );
            eprintln!("silverline-worker: {e}");
            e.exit_code()
        }
    };
    std::process::ExitCode::from(code.code() as u8)
}

fn execute(cli: RunCli) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal { context: "starting the I/O runtime".into(), message: e.to_string() })?;
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
    };
    let terminal = std::io::stderr().is_terminal();
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        if !matches!(cli.progress, Progress::Off) {
            let terminal = terminal && matches!(cli.progress, Progress::Auto);
            let (control, done) = (&*control, &done);
            scope.spawn(move || report_progress(control, done, terminal));
        }
        let outcome = run(&args, runtime.handle(), &control);
        done.store(true, Ordering::Relaxed);
        outcome
    })?;
    let report = &outcome.report;
    let metrics = serde_json::to_value(report).unwrap_or_default();
    log("INFO", "run finished", metrics);
    let prefix = |area: &str| {
        report.files.iter().find(|f| f.area == area).map_or_else(
            || "(no file)".to_owned(),
            |f| match f.key.find("/run_id=") {
                Some(i) => f.key[..i + 1 + f.key[i + 1..].find('/').unwrap_or(f.key.len() - i - 1)].to_owned() + "/",
                None => f.key.clone(),
            },
        )
    };
    let files = |area: &str| report.files.iter().filter(|f| f.area == area).count();
    println!(
        "run {} of dataset {} (schema {}): {} rows read",
        report.run_id, report.dataset, report.schema_v, report.input_rows
    );
    println!("  valid       {:>10}  {} file(s) under {}", report.valid_rows_count, files("silver"), prefix("silver"));
    println!(
        "  quarantined {:>10}  {} file(s) under {}",
        report.quarantined_rows_count,
        files("quarantine"),
        prefix("quarantine")
    );
    println!(
        "  condemned   {:>10}  {} file(s) under {}",
        report.condemned_rows_count,
        files("condemned"),
        prefix("condemned")
    );
    println!("  quarantine rate {:.2}%, errors {:?}", report.quarantine_rate * 100.0, report.error_type_distribution);
    println!("  _SUCCESS: {}", outcome.success_uri);
    Ok(())
}
