//! Tests against a real S3-compatible server (SeaweedFS, started on loopback by `scripts/test.sh`, which runs
//! them with `--ignored`). Without the server's environment they fail at once rather than pass vacuously.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tempfile::TempDir;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run these tests through scripts/test.sh"))
}

/// A signed `curl` request of `method` to `path` on the S3 server (for what object_store does not offer).
fn signed_curl(method: &str, path: &str) -> Command {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-f", "-X", method, "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{}:{}", env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")))
        .arg(format!("{}/{path}", env("AWS_ENDPOINT_URL")));
    curl
}

/// Creates a bucket with a signed request (object_store has no bucket API).
fn create_bucket(name: &str) {
    let status = signed_curl("PUT", name).status().expect("curl runs");
    assert!(status.success(), "creating bucket {name} failed");
}

/// The keys of the bucket's incomplete multipart uploads (ListMultipartUploads, which object_store does not offer).
fn incomplete_uploads(bucket: &str) -> Vec<String> {
    let out = signed_curl("GET", &format!("{bucket}?uploads=")).output().expect("curl runs");
    assert!(out.status.success(), "listing the uploads of {bucket} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("<ListMultipartUploadsResult"), "{text}");
    text.split("<Upload>")
        .skip(1)
        .map(|u| u.split("<Key>").nth(1).unwrap().split("</Key>").next().unwrap().into())
        .collect()
}

fn unique_bucket(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("sl-{tag}-{}", nanos % 1_000_000_000_000);
    create_bucket(&name);
    name
}

fn store(bucket: &str) -> AmazonS3 {
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_endpoint(env("AWS_ENDPOINT_URL"))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The worker's own kind of runtime, for calling its input code: that reads through `Handle::block_on`, which
/// drives no I/O on a current-thread runtime.
fn worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn keys(rt: &tokio::runtime::Runtime, s: &AmazonS3, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = rt
        .block_on(s.list(Some(&Path::from(prefix))).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    keys.sort();
    keys
}

fn get(rt: &tokio::runtime::Runtime, s: &AmazonS3, key: &str) -> Bytes {
    rt.block_on(async { s.get(&Path::from(key)).await.unwrap().bytes().await.unwrap() })
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn the_server_honours_conditional_writes() {
    let rt = runtime();
    let s = store(&unique_bucket("cond"));
    let key = Path::from("pointer/_LATEST.json");
    let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    let first = rt.block_on(s.put_opts(&key, Bytes::from_static(b"v1").into(), create.clone())).unwrap();
    let again = rt.block_on(s.put_opts(&key, Bytes::from_static(b"v2").into(), create));
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    let version = UpdateVersion { e_tag: first.e_tag.clone(), version: None };
    let update = PutOptions { mode: PutMode::Update(version.clone()), ..PutOptions::default() };
    rt.block_on(s.put_opts(&key, Bytes::from_static(b"v3").into(), update.clone())).unwrap();
    let stale = rt.block_on(s.put_opts(&key, Bytes::from_static(b"v4").into(), update));
    assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
    assert_eq!(get(&rt, &s, "pointer/_LATEST.json"), Bytes::from_static(b"v3"));
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn a_run_on_s3_writes_the_same_silver_files_as_on_a_local_lake() {
    let rt = runtime();
    let tmp = TempDir::new().unwrap();
    let bucket = unique_bucket("run");
    let s = store(&bucket);
    let sample = std::fs::read(repo_root().join("examples/data/transactions.csv")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("{HEADER}\nZ1,C,1.00,EUR,2024-05-05T05:05:05Z\n").as_bytes()).unwrap();
    rt.block_on(s.put(&Path::from("bronze/transactions/2024/a.csv"), Bytes::from(sample.clone()).into())).unwrap();
    rt.block_on(s.put(&Path::from("bronze/transactions/2024/b.csv.gz"), Bytes::from(gz.finish().unwrap()).into()))
        .unwrap();
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    let out = worker_command(
        &contract,
        format!("s3://{bucket}/bronze/transactions/2024/"),
        format!("s3://{bucket}/lake"),
        "s3run",
    )
    .output()
    .unwrap();
    let out = ran(out);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let remote: silverline_crds::report::RunReport =
        serde_json::from_slice(&get(&rt, &s, "lake/silver/transactions/schema_v=v1/run_id=s3run/_SUCCESS")).unwrap();
    assert_eq!(remote.inputs.len(), 2);
    assert_eq!(remote.input_rows, 3001);
    assert!(remote.files.iter().all(|f| f.key.starts_with(&format!("s3://{bucket}/lake/"))));
    // Every listed file is there with its size and checksum.
    for f in &remote.files {
        let key = f.key.strip_prefix(&format!("s3://{bucket}/")).unwrap();
        let data = get(&rt, &s, key);
        assert_eq!(data.len() as u64, f.bytes, "{key}");
    }
    // The same input from a local directory gives byte-identical silver files.
    let local_in = tmp.path().join("in");
    std::fs::create_dir(&local_in).unwrap();
    std::fs::write(local_in.join("a.csv"), &sample).unwrap();
    std::fs::write(local_in.join("b.csv.gz"), get(&rt, &s, "bronze/transactions/2024/b.csv.gz")).unwrap();
    let local = run_worker(&contract, &local_in, &tmp.path().join("lake"), "s3run");
    assert_eq!(local.code, 0, "{}", local.stderr);
    let local_report = success(&tmp.path().join("lake"), "s3run");
    let silver = |r: &silverline_crds::report::RunReport| -> Vec<(String, String)> {
        r.files
            .iter()
            .filter(|f| f.area == "silver")
            .map(|f| (f.key.rsplit("run_id=s3run/").next().unwrap().to_owned(), f.sha256.clone()))
            .collect()
    };
    assert_eq!(silver(&remote), silver(&local_report));
    assert_eq!(
        (remote.valid_rows_count, remote.quarantined_rows_count, remote.condemned_rows_count),
        (local_report.valid_rows_count, local_report.quarantined_rows_count, local_report.condemned_rows_count)
    );
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn a_missing_bucket_and_denied_access_are_permanent_exit_2() {
    let tmp = TempDir::new().unwrap();
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    let input = repo_root().join("examples/data/transactions.csv");
    let out =
        ran(worker_command(&contract, input.to_str().unwrap(), "s3://sl-no-such-bucket/lake", "r1").output().unwrap());
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("sl-no-such-bucket"), "{}", out.stderr);

    let bucket = unique_bucket("ro");
    let out = ran(worker_command(&contract, input.to_str().unwrap(), format!("s3://{bucket}/lake"), "r1")
        .env("AWS_ACCESS_KEY_ID", env("SILVERLINE_TEST_RO_ACCESS_KEY_ID"))
        .env("AWS_SECRET_ACCESS_KEY", env("SILVERLINE_TEST_RO_SECRET_ACCESS_KEY"))
        .output()
        .unwrap());
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("s3://{bucket}/lake/silver/transactions")), "{}", out.stderr);
    assert!(!out.stderr.contains(&env("SILVERLINE_TEST_RO_SECRET_ACCESS_KEY")), "a secret leaked into the log");
    drop(tmp);
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn an_unreachable_store_is_transient_exit_75_after_the_retry_budget() {
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    let input = repo_root().join("examples/data/transactions.csv");
    let started = Instant::now();
    let out = ran(worker_command(&contract, input.to_str().unwrap(), "s3://any-bucket/lake", "r1")
        .args(["--s3-endpoint", "http://127.0.0.1:9"])
        .env("SILVERLINE_IO_RETRY_SECONDS", "2")
        .output()
        .unwrap());
    assert_eq!(out.code, 75, "{}", out.stderr);
    assert!(out.stderr.contains("s3://any-bucket/lake/silver/transactions/schema_v=v1/run_id=r1"), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// 800k rows in one month: the silver part is large enough to go up as a multipart upload.
fn big_input() -> Vec<u8> {
    let mut text = format!("{HEADER}\n").into_bytes();
    let mut x: u64 = 42;
    for i in 0..800_000u64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        writeln!(
            text,
            "T{i:08},C{:06},{}.{:02},USD,2024-03-{:02}T{:02}:{:02}:00Z",
            x % 1_000_000,
            (x >> 20) % 100_000,
            (x >> 40) % 100,
            1 + (x >> 8) % 28,
            (x >> 16) % 24,
            (x >> 24) % 60
        )
        .unwrap();
    }
    text
}

fn every_visible_parquet_is_complete(rt: &tokio::runtime::Runtime, s: &AmazonS3, prefix: &str) {
    for key in keys(rt, s, prefix).into_iter().filter(|k| k.ends_with(".parquet")) {
        let data = get(rt, s, &key);
        ParquetRecordBatchReaderBuilder::try_new(data)
            .unwrap_or_else(|e| panic!("{key} is not a complete Parquet file: {e}"));
    }
}

/// A bucket holding the big input, and a lenient contract.
struct BigRun {
    rt: tokio::runtime::Runtime,
    bucket: String,
    s: AmazonS3,
    _tmp: TempDir,
    contract: std::path::PathBuf,
}

fn big_run(tag: &str) -> BigRun {
    let rt = runtime();
    let bucket = unique_bucket(tag);
    let s = store(&bucket);
    rt.block_on(s.put(&Path::from("bronze/big.csv"), Bytes::from(big_input()).into())).unwrap();
    let tmp = TempDir::new().unwrap();
    let contract = contract(tmp.path(), &[("maxQuarantineRate: 0.01", "maxQuarantineRate: 1.0")]);
    BigRun { rt, bucket, s, _tmp: tmp, contract }
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn runs_killed_at_any_point_never_look_complete_and_a_new_run_id_succeeds() {
    let BigRun { rt, bucket, s, _tmp, contract } = big_run("kill");
    let input = format!("s3://{bucket}/bronze/big.csv");
    let lake = format!("s3://{bucket}/lake");
    let run_path = |id: &str| format!("lake/silver/transactions/schema_v=v1/run_id={id}");
    // Kill at the claim, early in the stream, and later on. The last kill must land before the run ends: on the
    // machine of 2026-11-30 the whole run took ~4 s, so a kill at 4 s once came after `_SUCCESS` was written but
    // before the process exited (a complete run, killed on its way out), which this test cannot tell from a
    // killed run that looks complete.
    for (i, delay_ms) in [0u64, 300, 1500, 2500].into_iter().enumerate() {
        let id = format!("killed-{i}");
        let mut child =
            worker_command(&contract, &input, &lake, &id).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let claim = format!("{}/_RUN.json", run_path(&id));
        let started = Instant::now();
        while rt.block_on(s.head(&Path::from(claim.as_str()))).is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "run {id} never claimed its run id");
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished_first = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!finished_first, "run {id} finished before it could be killed; the test needs a bigger input");
        assert!(
            !keys(&rt, &s, &run_path(&id)).iter().any(|k| k.ends_with("/_SUCCESS")),
            "killed run {id} has _SUCCESS"
        );
        every_visible_parquet_is_complete(&rt, &s, "lake/");
    }
    let out = ran(worker_command(&contract, &input, &lake, "after").output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: silverline_crds::report::RunReport =
        serde_json::from_slice(&get(&rt, &s, &format!("{}/_SUCCESS", run_path("after")))).unwrap();
    assert_eq!(report.valid_rows_count, 800_000);
    assert!(
        report.files.iter().any(|f| f.area == "silver" && f.bytes > 5 * 1024 * 1024),
        "expected a multipart-sized part: {:?}",
        report.files
    );
    // A consumer that follows the _SUCCESS rule sees exactly one complete run.
    let complete: Vec<String> =
        keys(&rt, &s, "lake/silver/transactions/").into_iter().filter(|k| k.ends_with("/_SUCCESS")).collect();
    assert_eq!(complete, [format!("{}/_SUCCESS", run_path("after"))]);
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn sigterm_on_s3_aborts_uploads_and_exits_75() {
    let BigRun { rt, bucket, s, _tmp, contract } = big_run("term");
    let child = worker_command(&contract, format!("s3://{bucket}/bronze/big.csv"), format!("s3://{bucket}/lake"), "t1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let claim = Path::from("lake/silver/transactions/schema_v=v1/run_id=t1/_RUN.json");
    let started = Instant::now();
    while rt.block_on(s.head(&claim)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the run never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(800));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(!keys(&rt, &s, "lake/").iter().any(|k| k.ends_with("/_SUCCESS")));
    every_visible_parquet_is_complete(&rt, &s, "lake/");
    assert_eq!(incomplete_uploads(&bucket), Vec::<String>::new(), "uploads left behind");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn a_run_stopped_by_its_circuit_breaker_on_two_threads_leaves_no_incomplete_upload() {
    let BigRun { rt, bucket, s, _tmp, contract } = big_run("breaker");
    // The big input's one partition has gone up in parts of 5 MiB when the bad rows at its end trip the breaker.
    let mut input = big_input();
    for i in 0..200 {
        writeln!(input, "B{i:08},C000001,not-a-number,USD,2024-03-01T00:00:00Z").unwrap();
    }
    rt.block_on(s.put(&Path::from("bronze/bad-end.csv"), Bytes::from(input).into())).unwrap();
    let out =
        worker_command(&contract, format!("s3://{bucket}/bronze/bad-end.csv"), format!("s3://{bucket}/lake"), "b1")
            .args(["--threads", "2"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(!keys(&rt, &s, "lake/").iter().any(|k| k.ends_with("/_SUCCESS")));
    every_visible_parquet_is_complete(&rt, &s, "lake/");
    assert_eq!(incomplete_uploads(&bucket), Vec::<String>::new(), "uploads left behind");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn an_input_replaced_after_its_listing_is_not_read_but_retried() {
    let rt = worker_runtime();
    let bucket = unique_bucket("replaced");
    let s = store(&bucket);
    let key = Path::from("bronze/feed.csv");
    rt.block_on(s.put(&key, Bytes::from_static(b"a,b\n1,2\n").into())).unwrap();
    let uri = format!("s3://{bucket}/bronze/feed.csv");
    let listed = || silverline_worker::input::resolve_inputs(&uri, &Default::default(), rt.handle()).unwrap();
    let before = listed();
    assert!(before[0].open(rt.handle(), None).is_ok(), "the listed version opens");
    // The feed rewrites its file between the run's listing (and header check) and its read of the records.
    rt.block_on(s.put(&key, Bytes::from_static(b"b,a\n2,1\n").into())).unwrap();
    let err = before[0].open(rt.handle(), None).err().expect("the replaced object is refused");
    assert_eq!(err.exit_code(), silverline_worker::ExitCode::Transient, "{err}");
    assert!(err.to_string().contains("the input changed while the run read it") && err.to_string().contains(&uri));
    assert!(listed()[0].open(rt.handle(), None).is_ok(), "a new listing reads the new version");
}

fn lake_on(bucket: &str) -> silverline_lake::Lake {
    silverline_lake::Lake::open(
        &format!("s3://{bucket}/lake"),
        &silverline_lake::StoreOptions::default(),
        silverline_lake::OpenOptions::WRITER,
    )
    .unwrap()
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn the_pointer_is_replaced_only_if_unchanged_on_s3() {
    use silverline_lake::StorageErrorKind::{AlreadyExists, Precondition};
    let rt = runtime();
    let lake = lake_on(&unique_bucket("ifmatch"));
    let key = lake.path("silver/transactions/_LATEST.json");
    rt.block_on(lake.put_conditional(&key, Bytes::from_static(b"v1"), None)).unwrap();
    let again = rt.block_on(lake.put_conditional(&key, Bytes::from_static(b"v1 again"), None));
    assert_eq!(again.map_err(|e| e.kind), Err(AlreadyExists));
    let (_, ours) = rt.block_on(lake.get_versioned(&key)).unwrap().unwrap();
    assert!(matches!(ours, silverline_lake::ObjectVersion::ETag { .. }), "{ours:?}");
    // Someone else moves the pointer between our read and our write: detected, theirs kept.
    rt.block_on(lake.replace_if_unchanged(&key, Bytes::from_static(b"v2 theirs"), &ours)).unwrap();
    let stale = rt.block_on(lake.replace_if_unchanged(&key, Bytes::from_static(b"v2 ours"), &ours));
    assert_eq!(stale.map_err(|e| e.kind), Err(Precondition));
    assert_eq!(rt.block_on(lake.get(&key)).unwrap().unwrap(), Bytes::from_static(b"v2 theirs"));
    // Racing writers from one read: exactly one wins.
    let (_, read) = rt.block_on(lake.get_versioned(&key)).unwrap().unwrap();
    let results = rt.block_on(futures::future::join_all((0..4).map(|i| {
        let (lake, key, read) = (lake.clone(), key.clone(), read.clone());
        async move { lake.replace_if_unchanged(&key, Bytes::from(format!("writer {i}")), &read).await }
    })));
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| e.kind == Precondition), "{results:?}");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn a_copy_on_s3_that_may_not_write_its_destination_names_both_keys() {
    let rt = runtime();
    let bucket = unique_bucket("copyro");
    let admin = lake_on(&bucket);
    let from = admin.path("silver/transactions/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet");
    let to = admin.path("silver/transactions/current/year=2024/month=01/r1-part-00000.parquet");
    rt.block_on(admin.put(&from, Bytes::from_static(b"rows"))).unwrap();
    // The read-only identity may read the run's file but not write into current/.
    let read_only = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_endpoint(env("AWS_ENDPOINT_URL"))
        .with_allow_http(true)
        .with_access_key_id(env("SILVERLINE_TEST_RO_ACCESS_KEY_ID"))
        .with_secret_access_key(env("SILVERLINE_TEST_RO_SECRET_ACCESS_KEY"))
        .build()
        .unwrap();
    let lake = silverline_lake::Lake { store: std::sync::Arc::new(read_only), ..admin.clone() };
    let denied = rt.block_on(lake.copy(&from, &to)).unwrap_err();
    assert_eq!(denied.kind, silverline_lake::StorageErrorKind::AccessDenied, "{denied}");
    let (from_uri, to_uri) = (lake.uri_of(&from), lake.uri_of(&to));
    assert!(denied.to_string().starts_with(&format!("copying {from_uri} to {to_uri}: ")), "{denied}");
    let missing = rt.block_on(admin.copy(&admin.path("silver/transactions/none.parquet"), &to)).unwrap_err();
    assert_eq!(missing.kind, silverline_lake::StorageErrorKind::NotFound, "{missing}");
    assert!(missing.to_string().ends_with("/lake/silver/transactions/none.parquet: no such object"), "{missing}");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn a_promotion_on_s3_moves_pointer_current_and_audit_and_refuses_an_altered_file() {
    let rt = runtime();
    let tmp = TempDir::new().unwrap();
    let bucket = unique_bucket("promote");
    let s = store(&bucket);
    let uri = format!("s3://{bucket}/lake");
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    for (run, month, first) in [("r1", 1, 0), ("r2", 2, 100), ("r3", 3, 200)] {
        let mut csv = format!("{HEADER}\n");
        for i in first..first + 5 {
            csv.push_str(&format!("T{i},C{i},10.00,EUR,2024-{month:02}-15T10:00:00Z\n"));
        }
        let input = write(tmp.path(), &format!("{run}.csv"), csv);
        let out = ran(worker_command(&contract, input.to_str().unwrap(), &uri, run)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap());
        assert_eq!(out.code, 0, "{run}: {}", out.stderr);
    }
    let promote = |args: &[&str]| {
        ran(Command::new(worker_bin())
            .args(["promote", "--contract"])
            .arg(&contract)
            .args(["--lake", &uri, "--approved-by", "jane", "--reason", "s3 test"])
            .args(args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap())
    };
    let out = promote(&["--run-id", "r1", "--promotion", "ns/p1/u1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = promote(&["--run-id", "r2", "--mode", "replace-all"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let latest: serde_json::Value =
        serde_json::from_slice(&get(&rt, &s, "lake/silver/transactions/_LATEST.json")).unwrap();
    assert_eq!((latest["version"].as_u64(), latest["mode"].as_str()), (Some(2), Some("ReplaceAll")));
    let manifest = get(&rt, &s, "lake/silver/transactions/_manifests/2.json");
    assert_eq!(get(&rt, &s, "lake/silver/transactions/current/_MANIFEST.json"), manifest);
    assert_eq!(
        keys(&rt, &s, "lake/silver/transactions/current"),
        [
            "lake/silver/transactions/current/_MANIFEST.json",
            "lake/silver/transactions/current/year=2024/month=02/r2-part-00000.parquet",
        ],
        "r1's copies are gone, r2's landed"
    );
    let copy = get(&rt, &s, "lake/silver/transactions/current/year=2024/month=02/r2-part-00000.parquet");
    let original = get(&rt, &s, "lake/silver/transactions/schema_v=v1/run_id=r2/year=2024/month=02/part-00000.parquet");
    assert_eq!(copy, original);
    assert_eq!(keys(&rt, &s, "lake/audit/transactions").len(), 2);
    // The same Promotion again only catches up.
    let out = promote(&["--run-id", "r1", "--promotion", "ns/p1/u1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("already promoted as version 1"), "{}", out.stdout);
    // A silver file altered after _SUCCESS is refused.
    let part = Path::from("lake/silver/transactions/schema_v=v1/run_id=r3/year=2024/month=03/part-00000.parquet");
    let mut bytes = get(&rt, &s, part.as_ref()).to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    rt.block_on(s.put(&part, Bytes::from(bytes).into())).unwrap();
    let out = promote(&["--run-id", "r3"]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("file_integrity"), "{}", out.stderr);
    let history = ran(Command::new(worker_bin())
        .args(["history", "--format", "json", "--contract"])
        .arg(&contract)
        .args(["--lake", &uri])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap());
    assert_eq!(history.code, 0, "{}", history.stderr);
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(history["current_version"], 2);
    assert_eq!(history["audit"][0]["result"], "refused");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn the_quarantine_triage_reads_an_s3_lake() {
    let rt = runtime();
    let bucket = unique_bucket("triage");
    let s = store(&bucket);
    let sample = std::fs::read(repo_root().join("examples/data/transactions.csv")).unwrap();
    rt.block_on(s.put(&Path::from("bronze/tx.csv"), Bytes::from(sample).into())).unwrap();
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    let lake = format!("s3://{bucket}/lake");
    let out =
        ran(worker_command(&contract, format!("s3://{bucket}/bronze/tx.csv"), &lake, "s3triage").output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: silverline_crds::report::RunReport =
        serde_json::from_slice(&get(&rt, &s, "lake/silver/transactions/schema_v=v1/run_id=s3triage/_SUCCESS")).unwrap();
    let triage = |extra: &[&str]| {
        let out = Command::new(worker_bin())
            .arg("quarantine")
            .arg("--contract")
            .arg(&contract)
            .args(["--lake", &lake, "--run-id", "s3triage", "--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        let out = ran(out);
        assert_eq!(out.code, 0, "{}", out.stderr);
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()
    };
    let t = triage(&[]);
    assert_eq!(t["rows"], report.quarantined_rows_count);
    assert!(t["prefix"].as_str().unwrap().starts_with(&format!("s3://{bucket}/lake/quarantine/")), "{t}");
    assert_eq!(t["sources"][0]["source_uri"], format!("s3://{bucket}/bronze/tx.csv"));
    let t = triage(&["--error-type", "TYPE_ERROR"]);
    assert_eq!(t["rows"], report.error_type_distribution["TYPE_ERROR"]);
    let t = triage(&["--condemned"]);
    assert_eq!(t["rows"], report.condemned_rows_count);
    let message = t["sample"][0]["error_message"].as_str().unwrap();
    assert!(message.contains(&format!("of s3://{bucket}/bronze/tx.csv")), "{message}");
    // Silver is not read: with it gone, the triage answers the same.
    let silver = keys(&rt, &s, "lake/silver/");
    for key in &silver {
        rt.block_on(s.delete(&Path::from(key.as_str()))).unwrap();
    }
    assert_eq!(triage(&[])["rows"], report.quarantined_rows_count);
}

/// What a [`FaultyLink`] does to the connections it relays.
struct Faults {
    /// Responses flow back at most this many bytes per `tick`: a slow network.
    bytes_per_tick: usize,
    tick: Duration,
    /// The first connection to carry more response bytes than this is closed in the middle of its response, as a
    /// dropped connection would be.
    cut_after: Option<u64>,
    /// The first connection to carry more response bytes than this stops for that long before the rest, as a
    /// stalled server would.
    stall: Option<(u64, Duration)>,
    /// Done at the cut, before the connection is closed (e.g. deleting the object being read).
    on_cut: Option<Box<dyn Fn() + Send + Sync>>,
    /// The requests counted: those whose bytes hold this (e.g. `GET /bucket/key `).
    count: String,
}

impl Faults {
    /// No fault: responses in 64 KiB reads, no pause; the requests holding `count` counted.
    fn counting(count: String) -> Faults {
        Faults { bytes_per_tick: 64 * 1024, tick: Duration::ZERO, cut_after: None, stall: None, on_cut: None, count }
    }
}

/// A TCP relay on loopback in front of the S3 server (from `AWS_ENDPOINT_URL`), standing in for a network that
/// is slow or drops a connection; the server and the worker are the real ones. Its threads end with the tests.
struct FaultyLink {
    endpoint: String,
    counted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultyLink {
    fn start(faults: Faults) -> FaultyLink {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let target = env("AWS_ENDPOINT_URL").trim_start_matches("http://").to_owned();
        let (faults, counted) = (Arc::new(faults), Arc::new(AtomicUsize::new(0)));
        let (cut, stalled) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let seen = counted.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&target) else { return };
                let (faults, seen, cut, stalled) = (faults.clone(), seen.clone(), cut.clone(), stalled.clone());
                let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let pattern = faults.count.clone().into_bytes();
                std::thread::spawn(move || relay_requests(&mut from_client, &mut to_server, &pattern, &seen));
                std::thread::spawn(move || relay_responses(server, client, &faults, &cut, &stalled));
            }
        });
        FaultyLink { endpoint, counted }
    }

    fn counted(&self) -> usize {
        self.counted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn relay_requests(
    from: &mut std::net::TcpStream,
    to: &mut std::net::TcpStream,
    pattern: &[u8],
    seen: &std::sync::atomic::AtomicUsize,
) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        // Matches across reads: the end of the last read is kept, shorter than the pattern.
        tail.extend_from_slice(&buf[..n]);
        let found = tail.windows(pattern.len()).filter(|w| *w == pattern).count();
        seen.fetch_add(found, std::sync::atomic::Ordering::SeqCst);
        let keep = tail.len().min(pattern.len() - 1);
        tail.drain(..tail.len() - keep);
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn relay_responses(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    faults: &Faults,
    cut: &std::sync::atomic::AtomicBool,
    stalled: &std::sync::atomic::AtomicBool,
) {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; faults.bytes_per_tick];
    let mut carried = 0u64;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(limit) = faults.cut_after
            && carried + n as u64 > limit
            && !cut.swap(true, Ordering::SeqCst)
        {
            let _ = to.write_all(&buf[..(limit - carried) as usize]);
            if let Some(hook) = &faults.on_cut {
                hook();
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
            return;
        }
        if let Some((limit, pause)) = faults.stall
            && carried + n as u64 > limit
            && !stalled.swap(true, Ordering::SeqCst)
        {
            std::thread::sleep(pause);
        }
        carried += n as u64;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        std::thread::sleep(faults.tick);
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// `rows` rows of the big input (one month), and its SHA-256.
fn some_rows(rows: usize) -> (Vec<u8>, String) {
    use sha2::Digest;
    let big = big_input();
    let end = big.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(rows).map(|(i, _)| i + 1).unwrap();
    let text = big[..end].to_vec();
    let sha = hex::encode(sha2::Sha256::digest(&text));
    (text, sha)
}

/// A run of the bucket's `bronze/feed.csv` through `link`, with `env` (`AWS_TIMEOUT`: the client's total timeout;
/// `SILVERLINE_INPUT_READ_TIMEOUT_SECONDS`: the input's read timeout; `SILVERLINE_IO_RETRY_SECONDS`: object_store's retry budget, within which it
/// also resumes a broken body itself).
fn run_through(link: &FaultyLink, bucket: &str, contract: &std::path::Path, run_id: &str, env: &[(&str, &str)]) -> Ran {
    let mut command =
        worker_command(contract, format!("s3://{bucket}/bronze/feed.csv"), format!("s3://{bucket}/lake"), run_id);
    command.env("AWS_ENDPOINT_URL", &link.endpoint).envs(env.iter().copied());
    ran(command.output().unwrap())
}

/// The first line of `stderr` saying the input's stream broke and is read on.
fn resumed_line(stderr: &str) -> Option<serde_json::Value> {
    let line = stderr.lines().find(|l| l.contains("input stream broke; reading on where it stopped"))?;
    serde_json::from_str(line).ok()
}

/// A new bucket holding 120,000 rows at `bronze/feed.csv`, and a lenient contract.
struct Feed {
    rt: tokio::runtime::Runtime,
    bucket: String,
    s: AmazonS3,
    _tmp: TempDir,
    contract: std::path::PathBuf,
    input: Vec<u8>,
    sha: String,
}

impl Feed {
    const ROWS: u64 = 120_000;

    fn new(tag: &str) -> Feed {
        let rt = runtime();
        let bucket = unique_bucket(tag);
        let s = store(&bucket);
        let (input, sha) = some_rows(Self::ROWS as usize);
        rt.block_on(s.put(&Path::from("bronze/feed.csv"), Bytes::from(input.clone()).into())).unwrap();
        let tmp = TempDir::new().unwrap();
        let contract = contract(tmp.path(), &[("maxQuarantineRate: 0.01", "maxQuarantineRate: 1.0")]);
        Feed { rt, bucket, s, _tmp: tmp, contract, input, sha }
    }

    /// The requests of the input that a link counts: `GET` (or with `""`, any method).
    fn requests(&self, method: &str) -> String {
        format!("{method} /{}/bronze/feed.csv ", self.bucket)
    }

    fn run(&self, link: &FaultyLink, run_id: &str, env: &[(&str, &str)]) -> Ran {
        run_through(link, &self.bucket, &self.contract, run_id, env)
    }

    /// The run's `_SUCCESS` says it read every row and every byte of the input, once.
    fn assert_read_whole(&self, run_id: &str) {
        let key = format!("lake/silver/transactions/schema_v=v1/run_id={run_id}/_SUCCESS");
        let report: silverline_crds::report::RunReport = serde_json::from_slice(&get(&self.rt, &self.s, &key)).unwrap();
        assert_eq!((report.input_rows, report.inputs[0].sha256.as_str()), (Self::ROWS, self.sha.as_str()));
        assert_eq!(report.inputs[0].bytes, self.input.len() as u64);
    }
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn an_input_is_found_and_read_by_one_get_however_long_it_streams() {
    let feed = Feed::new("slowlink");
    // ~7 MB at 2 MB/s: the input's GET streams for ~3.5 s, longer than the client's total timeout (2 s). That
    // timeout broke the GET in the middle, every time: it was resumed by a second GET (the count below), and once
    // object_store's retry budget (counted from the GET's start) was spent the run failed, before the input's
    // client had none. The other requests keep the timeout, with a budget of retries.
    // Any request of the input is counted: one GET found it (no HEAD first), was its header check and is its records.
    let link = FaultyLink::start(Faults { tick: Duration::from_millis(32), ..Faults::counting(feed.requests("")) });
    let started = Instant::now();
    // A read timeout far above any pause of the run's reader, which would break the stream too (and count twice).
    let env =
        [("AWS_TIMEOUT", "2s"), ("SILVERLINE_INPUT_READ_TIMEOUT_SECONDS", "60"), ("SILVERLINE_IO_RETRY_SECONDS", "10")];
    let out = feed.run(&link, "slow", &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(started.elapsed() > Duration::from_secs(3), "the link was not slow: {:?}", started.elapsed());
    assert_eq!(link.counted(), 1, "the input took more than one request:\n{}", out.stderr);
    feed.assert_read_whole("slow");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn an_input_stream_that_breaks_is_read_on_where_it_broke() {
    let feed = Feed::new("droplink");
    let link = FaultyLink::start(Faults { cut_after: Some(3_000_000), ..Faults::counting(feed.requests("GET")) });
    // No budget: object_store does not resume the broken body itself, so what reads on is the worker.
    let env = [("SILVERLINE_INPUT_READ_TIMEOUT_SECONDS", "60"), ("SILVERLINE_IO_RETRY_SECONDS", "0")];
    let out = feed.run(&link, "dropped", &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(link.counted(), 2, "the input's GET and the one reading on:\n{}", out.stderr);
    let resumed = resumed_line(&out.stderr).unwrap_or_else(|| panic!("no resumption logged:\n{}", out.stderr));
    assert_eq!(resumed["input_uri"], format!("s3://{}/bronze/feed.csv", feed.bucket));
    assert_eq!(resumed["bytes_total"], feed.input.len());
    let at = resumed["resumed_at"].as_u64().unwrap();
    assert!(at > 0 && at <= 3_000_000, "{resumed}");
    feed.assert_read_whole("dropped");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn an_input_stream_that_stalls_is_broken_by_the_read_timeout_and_read_on() {
    let feed = Feed::new("stalllink");
    // The server stops sending for 60 s after 3 MB; with no read timeout the GET would wait it out (one request).
    let stall = Some((3_000_000, Duration::from_secs(60)));
    let link = FaultyLink::start(Faults { stall, ..Faults::counting(feed.requests("GET")) });
    let started = Instant::now();
    // No budget: object_store does not resume the broken body itself, so what reads on is the worker (logged).
    let env = [("SILVERLINE_INPUT_READ_TIMEOUT_SECONDS", "1"), ("SILVERLINE_IO_RETRY_SECONDS", "0")];
    let out = feed.run(&link, "stalled", &env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(45), "the stall was waited out: {:?}", started.elapsed());
    // At least the GET that stalled and the one reading on (a pause of the run's own reader over the 1 s read
    // timeout, on a loaded machine, would add one).
    assert!(link.counted() >= 2, "the stalled GET was not broken:\n{}", out.stderr);
    assert!(resumed_line(&out.stderr).is_some(), "no resumption logged:\n{}", out.stderr);
    feed.assert_read_whole("stalled");
}

/// Deletes an object with a signed request (from a thread of the relay, which has no runtime of its own).
fn delete_object(bucket: &str, key: &str) {
    let status = signed_curl("DELETE", &format!("{bucket}/{key}")).status().expect("curl runs");
    assert!(status.success(), "deleting {bucket}/{key} failed");
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn an_input_deleted_while_its_stream_is_resumed_is_retried_as_changed() {
    let feed = Feed::new("gonelink");
    // Both resumers: object_store's own (within its budget; its GET of the rest gets a 404) and the worker's
    // (no budget).
    for (run_id, budget) in [("gone1", "180"), ("gone2", "0")] {
        if run_id != "gone1" {
            let input = Bytes::from(feed.input.clone());
            feed.rt.block_on(feed.s.put(&Path::from("bronze/feed.csv"), input.into())).unwrap();
        }
        let gone = feed.bucket.clone();
        let on_cut: Option<Box<dyn Fn() + Send + Sync>> =
            Some(Box::new(move || delete_object(&gone, "bronze/feed.csv")));
        let link =
            FaultyLink::start(Faults { cut_after: Some(3_000_000), on_cut, ..Faults::counting(feed.requests("GET")) });
        let out = feed.run(&link, run_id, &[("SILVERLINE_IO_RETRY_SECONDS", budget)]);
        assert_eq!(out.code, 75, "{run_id}: {}", out.stderr);
        assert!(out.stderr.contains("the input changed while the run read it"), "{run_id}: {}", out.stderr);
        assert!(out.stderr.contains(&format!("s3://{}/bronze/feed.csv", feed.bucket)), "{run_id}: {}", out.stderr);
        assert!(link.counted() >= 2, "{run_id}: the rest was not asked for:\n{}", out.stderr);
    }
}

#[test]
#[ignore = "needs the S3 server that scripts/test.sh starts"]
fn a_folder_with_an_empty_marker_object_of_its_name_is_read_as_a_folder() {
    let rt = worker_runtime();
    let bucket = unique_bucket("marker");
    let s = store(&bucket);
    let sample = std::fs::read(repo_root().join("examples/data/transactions.csv")).unwrap();
    rt.block_on(s.put(&Path::from("bronze/day"), Bytes::new().into())).unwrap();
    rt.block_on(s.put(&Path::from("bronze/day/a.csv"), Bytes::from(sample).into())).unwrap();
    let listed = silverline_worker::input::resolve_inputs(
        &format!("s3://{bucket}/bronze/day"),
        &Default::default(),
        rt.handle(),
    );
    let uris: Vec<String> = listed.unwrap().into_iter().map(|i| i.uri).collect();
    assert_eq!(uris, vec![format!("s3://{bucket}/bronze/day/a.csv")]);
}
