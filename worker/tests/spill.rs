//! A spill directory the worker cannot write fails an S3 run at once with exit 2, naming the directory, before
//! any request: no S3 server is needed (the endpoint is a loopback port nothing listens on).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use support::{contract, repo_root, s3_run_without_aws_env, worker_bin};

#[test]
fn an_unwritable_spill_directory_is_exit_2_naming_it_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let contract = contract(dir.path(), &[]);
    let missing = dir.path().join("no-such-dir");
    let out = s3_run_without_aws_env(&contract, "s3://silverline-bucket/lake", "http://127.0.0.1:9")
        .arg("--spill-dir")
        .arg(&missing)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("SILVERLINE_IO_RETRY_SECONDS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("cannot create a spill file in {}", missing.display())), "{stderr}");
    assert!(stderr.contains("--spill-dir"), "{stderr}");
}

#[test]
fn a_local_lake_never_needs_the_spill_directory() {
    let dir = tempfile::tempdir().unwrap();
    let contract = contract(dir.path(), &[]);
    let out = Command::new(worker_bin())
        .args(["run", "--progress", "off", "--run-id", "local", "--contract"])
        .arg(&contract)
        .arg("--input")
        .arg(repo_root().join("examples/data/transactions.csv"))
        .arg("--lake")
        .arg(dir.path().join("lake"))
        .arg("--spill-dir")
        .arg(dir.path().join("no-such-dir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
