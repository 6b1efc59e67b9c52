//! With no AWS credentials and `AWS_EC2_METADATA_DISABLED=true`, an S3 lake is a clear configuration error
//! (exit 2) at once, never a call to the cloud instance-metadata endpoint. No S3 server is needed: the worker
//! must stop before any request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::{contract, s3_run_without_aws_env};

#[test]
fn no_credentials_with_the_metadata_fallback_disabled_is_exit_2_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let contract = contract(dir.path(), &[]);
    let started = Instant::now();
    let out = s3_run_without_aws_env(&contract, "s3://silverline-no-such-bucket/lake", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no AWS credentials"), "{stderr}");
    assert!(stderr.contains("AWS_EC2_METADATA_DISABLED"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "it must fail at once, not after retries");
}
