//! Shared helpers of the worker's end-to-end and property tests: run the real binary (or the library), then
//! read back what it left in the lake.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use arrow::array::{Array, AsArray, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use silverline_crds::report::RunReport;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const HEADER: &str = "TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp";
pub const EXAMPLE_CONTRACT: &str = include_str!("../../../examples/datasets/transactions.yaml");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn worker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_silverline-worker")
}

/// `silverline-worker run` of the example input into the S3 lake `lake` at `endpoint`, with no `AWS_*` variable
/// inherited from the caller's environment (set the ones a test needs on the returned command).
pub fn s3_run_without_aws_env(contract: &Path, lake: &str, endpoint: &str) -> Command {
    let mut command = Command::new(worker_bin());
    command
        .args(["run", "--progress", "off", "--contract"])
        .arg(contract)
        .arg("--input")
        .arg(repo_root().join("examples/data/transactions.csv"))
        .args(["--lake", lake, "--s3-endpoint", endpoint]);
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command
}

/// Writes the example contract with some lines replaced, e.g. `("maxSameErrors: 100", "maxSameErrors: 2")`.
pub fn contract(dir: &Path, replacements: &[(&str, &str)]) -> PathBuf {
    let mut text = EXAMPLE_CONTRACT.to_owned();
    for (from, to) in replacements {
        assert!(text.contains(from), "the example contract has no {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join(format!("contract-{}.yaml", replacements.len()));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `silverline-worker run` of `input` into `lake` as `run_id`, to add flags or environment to.
pub fn worker_command(
    contract: &Path,
    input: impl AsRef<std::ffi::OsStr>,
    lake: impl AsRef<std::ffi::OsStr>,
    run_id: &str,
) -> Command {
    let mut command = Command::new(worker_bin());
    command
        .args(["run", "--progress", "off", "--contract"])
        .arg(contract)
        .arg("--input")
        .arg(input)
        .arg("--lake")
        .arg(lake)
        .args(["--run-id", run_id]);
    command
}

pub fn run_worker(contract: &Path, input: &Path, lake: &Path, run_id: &str) -> Ran {
    ran(worker_command(contract, input, lake, run_id).output().expect("the worker starts"))
}

pub fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn run_dir(lake: &Path, area: &str, run_id: &str) -> PathBuf {
    lake.join(area).join("transactions").join("schema_v=v1").join(format!("run_id={run_id}"))
}

pub fn success(lake: &Path, run_id: &str) -> RunReport {
    let path = run_dir(lake, "silver", run_id).join("_SUCCESS");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(|b| b.unwrap()).collect()
}

/// All batches of every part file under an area's run directory (recursively), in path order.
pub fn read_area(lake: &Path, area: &str, run_id: &str) -> Vec<RecordBatch> {
    let dir = run_dir(lake, area, run_id);
    files_under(&dir).into_iter().filter(|f| f.ends_with(".parquet")).flat_map(|f| read_parquet(&dir.join(f))).collect()
}

/// The values of a string column across batches (None for nulls).
pub fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap_or_else(|| panic!("no column {column}")).as_string::<i32>().clone();
            (0..a.len()).map(move |i| a.is_valid(i).then(|| a.value(i).to_owned())).collect::<Vec<_>>()
        })
        .collect()
}

pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}
