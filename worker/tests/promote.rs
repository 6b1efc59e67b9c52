//! End-to-end tests of `silverline-worker promote` and `history` on a local lake: the binary runs, the lake is
//! read back from disk. Every mode, the gate's refusals by name, rollback, a pointer moved concurrently, and a
//! promoter killed at each step of the commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use support::*;
use tempfile::TempDir;

const JAN: &str = "year=2024/month=01";
const FEB: &str = "year=2024/month=02";

/// Rows `T{from}`..`T{to}` (exclusive) in one month, plus `bad` rows with a type error.
fn csv(ids: std::ops::Range<usize>, month: u32, bad: usize) -> String {
    let mut text = format!("{HEADER}\n");
    for i in ids {
        text.push_str(&format!("T{i},C{i},10.00,EUR,2024-{month:02}-15T10:00:00Z\n"));
    }
    for i in 0..bad {
        text.push_str(&format!("B{i},C{i},not-a-number,EUR,2024-{month:02}-15T10:00:00Z\n"));
    }
    text
}

struct Lake {
    _tmp: TempDir,
    dir: PathBuf,
    lake: PathBuf,
    contract: PathBuf,
}

impl Lake {
    fn new() -> Lake {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().to_path_buf();
        let contract = contract(&dir, &[]);
        Lake { lake: dir.join("lake"), dir, contract, _tmp: tmp }
    }

    /// A run with the default contract, or with some lines of it replaced; returns its exit code.
    fn run(&self, run_id: &str, input: &str, replacements: &[(&str, &str)]) -> i32 {
        let contract = if replacements.is_empty() {
            self.contract.clone()
        } else {
            let sub = self.dir.join(format!("c-{run_id}"));
            std::fs::create_dir_all(&sub).unwrap();
            contract(&sub, replacements)
        };
        let input = write(&self.dir, &format!("{run_id}.csv"), input);
        run_worker(&contract, &input, &self.lake, run_id).code
    }

    fn ok_run(&self, run_id: &str, input: &str) {
        assert_eq!(self.run(run_id, input, &[]), 0, "run {run_id}");
    }

    fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(worker_bin());
        cmd.arg(subcommand).arg("--contract").arg(&self.contract).arg("--lake").arg(&self.lake).args(args);
        cmd.env_remove("SILVERLINE_PROMOTE_CRASH_AFTER").env_remove("SILVERLINE_PROMOTE_PAUSE_BEFORE_POINTER");
        cmd
    }

    fn promote(&self, args: &[&str]) -> Ran {
        ran(self.command("promote", args).output().unwrap())
    }

    fn approve(&self, runs: &[&str], mode: &str) -> Ran {
        let mut args = vec!["--approved-by", "jane", "--reason", "reviewed", "--mode", mode];
        for r in runs {
            args.extend(["--run-id", r]);
        }
        self.promote(&args)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.lake.join(key)
    }

    fn json(&self, key: &str) -> Value {
        let path = self.path(key);
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
    }

    fn latest(&self) -> Value {
        self.json("silver/transactions/_LATEST.json")
    }

    fn manifest(&self, version: u64) -> Value {
        self.json(&format!("silver/transactions/_manifests/{version}.json"))
    }

    /// The files under current/, relative to it.
    fn current(&self) -> Vec<String> {
        files_under(&self.path("silver/transactions/current"))
            .into_iter()
            .filter(|f| !f.rsplit('/').next().unwrap().starts_with('.'))
            .collect()
    }

    fn audit(&self) -> Vec<Value> {
        let dir = self.path("audit/transactions");
        let mut names = files_under(&dir);
        names.sort();
        names.reverse();
        names.iter().map(|n| serde_json::from_slice(&std::fs::read(dir.join(n)).unwrap()).unwrap()).collect()
    }

    fn audit_results(&self) -> Vec<String> {
        self.audit().iter().map(|r| r["result"].as_str().unwrap().to_owned()).collect()
    }
}

fn manifest_files(manifest: &Value) -> Vec<(String, String)> {
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["run_id"].as_str().unwrap().to_owned(), f["partition"].as_str().unwrap().to_owned()))
        .collect()
}

fn current_rows(lake: &Lake) -> usize {
    lake.current()
        .iter()
        .filter(|f| f.ends_with(".parquet"))
        .map(|f| rows(&read_parquet(&lake.path("silver/transactions/current").join(f))))
        .sum()
}

/// current/_MANIFEST.json must be byte-equal to the current version's manifest.
fn assert_current_matches_pointer(lake: &Lake) {
    let latest = lake.latest();
    let manifest = std::fs::read(lake.path(latest["manifest"].as_str().unwrap())).unwrap();
    let current = std::fs::read(lake.path("silver/transactions/current/_MANIFEST.json")).unwrap();
    assert_eq!(current, manifest, "current/_MANIFEST.json equals the pointer's manifest");
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let mut expected: Vec<String> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f["key"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
            format!("{}/{}-{name}", f["partition"].as_str().unwrap(), f["run_id"].as_str().unwrap())
        })
        .collect();
    expected.push("_MANIFEST.json".into());
    expected.sort();
    assert_eq!(lake.current(), expected, "current/ holds exactly the current files");
}

#[test]
fn each_mode_moves_pointer_manifest_current_and_audit() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(100..105, 2, 0));
    lake.ok_run("r3", &csv(200..203, 1, 0));
    lake.ok_run("r4", &csv(300..301, 2, 0));
    let termination = lake.dir.join("termination-log");

    let out = ran(lake
        .command("promote", &["--run-id", "r1", "--approved-by", "jane", "--reason", "first feed"])
        .env("SILVERLINE_TERMINATION_LOG", &termination)
        .output()
        .unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("version none → 1"), "{}", out.stdout);
    let latest = lake.latest();
    assert_eq!(latest["format"], 1);
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["mode"], "Append", "the contract's default mode");
    assert_eq!(latest["runs"], serde_json::json!(["r1"]));
    assert_eq!(latest["approved_by"], "jane");
    assert_eq!(latest["reason"], "first feed");
    assert_eq!(latest["manifest"], "silver/transactions/_manifests/1.json");
    assert_eq!(manifest_files(&lake.manifest(1)), vec![("r1".into(), JAN.into())]);
    assert_eq!(lake.manifest(1)["totals"]["rows"], 10);
    assert_current_matches_pointer(&lake);
    assert_eq!(current_rows(&lake), 10);
    let record = &lake.audit()[0];
    assert_eq!(record["result"], "promoted");
    assert_eq!((record["version_before"].clone(), record["version_after"].clone()), (Value::Null, 1.into()));
    assert_eq!(record["metrics"][0]["input_rows"], 10);
    let line: Value = serde_json::from_str(std::fs::read_to_string(&termination).unwrap().trim()).unwrap();
    assert_eq!((line["result"].as_str(), line["version_after"].as_u64()), (Some("promoted"), Some(1)));
    assert!(out.stderr.contains("\"promotion finished\""), "{}", out.stderr);

    let out = lake.approve(&["r2"], "append");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(manifest_files(&lake.manifest(2)), vec![("r1".into(), JAN.into()), ("r2".into(), FEB.into())]);
    assert!(out.stdout.contains("added year=2024/month=02"), "{}", out.stdout);
    assert_current_matches_pointer(&lake);
    assert_eq!(current_rows(&lake), 15);

    let out = lake.approve(&["r3"], "replace-partitions");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(lake.latest()["mode"], "ReplacePartitions");
    assert_eq!(manifest_files(&lake.manifest(3)), vec![("r3".into(), JAN.into()), ("r2".into(), FEB.into())]);
    assert!(out.stdout.contains("replaced year=2024/month=01"), "{}", out.stdout);
    assert_current_matches_pointer(&lake);
    assert_eq!(current_rows(&lake), 8, "r1's January copies are gone from current/");

    let out = lake.approve(&["r4"], "replace-all");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(manifest_files(&lake.manifest(4)), vec![("r4".into(), FEB.into())]);
    assert_eq!(lake.manifest(4)["previous_version"], 3);
    assert_current_matches_pointer(&lake);
    assert_eq!(current_rows(&lake), 1);
    assert_eq!(lake.audit_results(), ["promoted"; 4]);
    // The runs' own files are never touched by promotion.
    assert_eq!(rows(&read_area(&lake.lake, "silver", "r1")), 10);
}

#[test]
fn two_runs_are_promoted_together_as_one_version() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..4, 1, 0));
    lake.ok_run("r2", &csv(10..13, 2, 0));
    let out = lake.approve(&["r1", "r2"], "append");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(lake.latest()["version"], 1);
    assert_eq!(lake.latest()["runs"], serde_json::json!(["r1", "r2"]));
    assert_eq!(manifest_files(&lake.manifest(1)).len(), 2);
    assert_eq!(current_rows(&lake), 7);
    assert_eq!(lake.audit_results(), ["promoted"]);
    assert!(!lake.path("silver/transactions/_manifests/2.json").exists());
}

#[test]
fn runs_without_success_are_refused_by_name_and_the_refusal_is_audited() {
    let lake = Lake::new();
    assert_eq!(lake.run("quality", &csv(0..9, 1, 1), &[]), 5, "quality gate failed");
    assert_eq!(lake.run("breaker", &csv(0..9, 1, 3), &[("maxSameErrors: 100", "maxSameErrors: 1")]), 4);
    let unfinished = run_dir(&lake.lake, "silver", "unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("_RUN.json"), "{}").unwrap();
    assert_eq!(lake.run("lenient", &csv(0..9, 1, 1), &[("maxQuarantineRate: 0.01", "maxQuarantineRate: 0.5")]), 0);
    lake.ok_run("good", &csv(50..60, 1, 0));
    let cases = [
        ("quality", "success_marker", "_QUALITY_REPORT.json"),
        ("breaker", "success_marker", "_CIRCUIT_BREAKER.json"),
        ("unfinished", "success_marker", "unfinished"),
        ("never-ran", "success_marker", "holds nothing"),
        ("lenient", "quarantine_rate", "0.1000 is above maxQuarantineRate 0.01"),
    ];
    for (run, check, detail) in cases {
        // Each refused run is promoted together with a good one: one bad run refuses the whole version.
        let out = lake.approve(&["good", run], "append");
        assert_eq!(out.code, 6, "{run}: {}", out.stderr);
        assert!(out.stderr.contains(check) && out.stderr.contains(detail), "{run}: {}", out.stderr);
        assert!(out.stderr.contains(run), "{run}: {}", out.stderr);
        let record = &lake.audit()[0];
        assert_eq!(record["result"], "refused", "{run}");
        assert_eq!(record["failed_checks"][0]["check"], check, "{run}");
    }
    assert!(!lake.path("silver/transactions/_LATEST.json").exists(), "nothing moved");
    assert!(!lake.path("silver/transactions/current").exists());
    // A schema version the dataset is no longer at.
    let v2 = contract(&lake.dir.join("c-v2").tap_mkdir(), &[("schemaVersion: v1", "schemaVersion: v2")]);
    let out = ran(Command::new(worker_bin())
        .args(["promote", "--run-id", "good", "--approved-by", "jane", "--reason", "r", "--contract"])
        .arg(&v2)
        .arg("--lake")
        .arg(&lake.lake)
        .output()
        .unwrap());
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("schema_version"), "{}", out.stderr);
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn a_success_that_is_not_a_report_of_its_run_is_refused_as_success_marker_and_audited() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("good", &csv(50..60, 2, 0));
    let r1 = std::fs::read(run_dir(&lake.lake, "silver", "r1").join("_SUCCESS")).unwrap();
    for (run, body, problem) in [
        ("garbled", b"{\"outcome\": \"succ".to_vec(), "is not a valid run report"),
        ("copied", r1, "the report is of run id \"r1\", expected \"copied\""),
    ] {
        let dir = run_dir(&lake.lake, "silver", run);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("_SUCCESS"), body).unwrap();
        let out = lake.approve(&["good", run], "append");
        assert_eq!(out.code, 6, "{run}: {}", out.stderr);
        let key = format!("silver/transactions/schema_v=v1/run_id={run}/_SUCCESS");
        assert!(out.stderr.contains("success_marker") && out.stderr.contains(&key), "{run}: {}", out.stderr);
        assert!(out.stderr.contains(problem), "{run}: {}", out.stderr);
        let record = &lake.audit()[0];
        assert_eq!(record["result"], "refused", "{run}");
        assert_eq!(record["failed_checks"][0]["check"], "success_marker", "{run}");
        assert!(record["failed_checks"][0]["message"].as_str().unwrap().contains(&key), "{run}: {record}");
        assert_eq!(record["metrics"][1]["state"], "inconsistent", "{run}");
        // Such a run can still be rejected.
        let out = lake.promote(&["--run-id", run, "--rejected-by", "ann", "--reason", "damaged"]);
        assert_eq!(out.code, 0, "{run}: {}", out.stderr);
        assert_eq!(lake.audit()[0]["metrics"][0]["state"], "inconsistent", "{run}");
    }
    assert!(!lake.path("silver/transactions/_LATEST.json").exists(), "nothing moved");
}

#[test]
fn a_runs_files_are_taken_only_from_the_schema_directory_its_success_lies_in() {
    // r9's _SUCCESS moved under schema_v=v2 (its claim gone from v1) still names schema v1 and r9's files there:
    // found under v2, it may not pull in files from schema_v=v1.
    let lake = Lake::new();
    lake.ok_run("r9", &csv(0..10, 1, 0));
    let v1 = run_dir(&lake.lake, "silver", "r9");
    let v2 = lake.path("silver/transactions/schema_v=v2/run_id=r9").tap_mkdir();
    std::fs::rename(v1.join("_SUCCESS"), v2.join("_SUCCESS")).unwrap();
    std::fs::remove_file(v1.join("_RUN.json")).unwrap();
    let out = lake.approve(&["r9"], "append");
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("file_location") && out.stderr.contains("schema_v=v2"), "{}", out.stderr);
    assert!(out.stderr.contains("success_marker"), "{}", out.stderr);
    assert!(!lake.path("silver/transactions/_LATEST.json").exists(), "nothing moved");
}

#[test]
fn a_data_file_altered_after_success_is_refused_file_integrity() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    let part = run_dir(&lake.lake, "silver", "r1").join(JAN).join("part-00000.parquet");
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let out = lake.approve(&["r1"], "append");
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("file_integrity") && out.stderr.contains("SHA-256"), "{}", out.stderr);
    assert!(!lake.path("silver/transactions/_LATEST.json").exists());
}

#[test]
fn a_tampered_success_cannot_pull_in_objects_outside_its_run() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..30, 1, 0));
    let success = run_dir(&lake.lake, "silver", "r1").join("_SUCCESS");
    let text = std::fs::read_to_string(&success).unwrap().replace("run_id=r1/year", "run_id=r2/year");
    std::fs::write(&success, text).unwrap();
    let out = lake.approve(&["r1"], "append");
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("file_location") && out.stderr.contains("outside"), "{}", out.stderr);
}

#[test]
fn a_success_whose_figures_disagree_with_each_other_or_with_its_files_is_refused() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    let success = run_dir(&lake.lake, "silver", "r1").join("_SUCCESS");
    let original: Value = serde_json::from_slice(&std::fs::read(&success).unwrap()).unwrap();
    let refused = |edit: &dyn Fn(&mut Value), check: &str, says: &str| {
        let mut report = original.clone();
        edit(&mut report);
        std::fs::write(&success, serde_json::to_vec(&report).unwrap()).unwrap();
        let out = lake.approve(&["r1"], "append");
        assert_eq!(out.code, 6, "{says}: {}", out.stderr);
        assert!(out.stderr.contains(check) && out.stderr.contains(says), "{says}: {}", out.stderr);
    };
    // Ten more rows everywhere in _SUCCESS (its counts agree): only the file's own footer tells.
    refused(
        &|r| {
            r["files"][0]["rows"] = (r["files"][0]["rows"].as_u64().unwrap() + 10).into();
            r["valid_rows_count"] = (r["valid_rows_count"].as_u64().unwrap() + 10).into();
            r["input_rows"] = (r["input_rows"].as_u64().unwrap() + 10).into();
        },
        "file_integrity",
        "holds 10 rows, _SUCCESS lists 20",
    );
    refused(&|r| r["input_rows"] = 99.into(), "success_marker", "is not its 99 input rows");
    refused(&|r| r["quarantine_rate"] = (-1.0).into(), "success_marker", "is not its quarantined / input rows");
    refused(
        &|r| r["files"] = serde_json::json!([]),
        "success_marker",
        "its silver files hold 0 rows, not its 10 valid",
    );
    // As the worker wrote it, the run is promoted.
    std::fs::write(&success, serde_json::to_vec(&original).unwrap()).unwrap();
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
}

#[test]
fn appending_keys_already_current_is_refused_with_the_count_and_a_run_twice_as_already_current() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(5..14, 1, 0));
    lake.ok_run("r3", &csv(5..14, 2, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    let out = lake.approve(&["r2"], "append");
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("key_collision") && out.stderr.contains("5 row(s)"), "{}", out.stderr);
    assert!(out.stderr.contains("TransactionID=T5"), "examples are shown: {}", out.stderr);
    // A key is unique across the dataset, not per month: r3 holds keys T5..T9 in February, current in January.
    let out = lake.approve(&["r3"], "append");
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("key_collision") && out.stderr.contains("5 row(s)"), "{}", out.stderr);
    // The same request again is answered from the audit log; promoted again on purpose, the gate refuses it.
    let out = lake.approve(&["r1"], "append");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("already promoted as version 1"), "{}", out.stdout);
    let out = lake.promote(&[
        "--approved-by",
        "jane",
        "--reason",
        "reviewed",
        "--mode",
        "append",
        "--run-id",
        "r1",
        "--again",
    ]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("already_current"), "{}", out.stderr);
    // The same run may replace its partition, though: the replaced January files do not stay current.
    let out = lake.approve(&["r2"], "replace-partitions");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(lake.latest()["version"], 2);
    // Replacing February keeps January (now r2, keys T5..T13), so r3's keys T5..T13 collide with it there.
    let out = lake.approve(&["r3"], "replace-partitions");
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("key_collision") && out.stderr.contains("9 row(s)"), "{}", out.stderr);
    // Replacing everything keeps nothing, so nothing collides.
    let out = lake.approve(&["r3"], "replace-all");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(lake.latest()["version"], 3);
}

#[test]
fn a_rollback_makes_an_old_versions_files_current_as_a_new_version() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..23, 2, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    assert_eq!(lake.approve(&["r2"], "replace-all").code, 0);
    let out = lake.promote(&["--restore-version", "1", "--approved-by", "joe", "--reason", "r2 was wrong"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("rolled back dataset transactions: version 2 → 3"), "{}", out.stdout);
    let latest = lake.latest();
    assert_eq!((latest["version"].as_u64(), latest["restored_version"].as_u64()), (Some(3), Some(1)));
    assert_eq!(latest["previous_version"], 2);
    assert_eq!(lake.manifest(3)["files"], lake.manifest(1)["files"]);
    assert_current_matches_pointer(&lake);
    assert_eq!(current_rows(&lake), 10);
    assert_eq!(lake.audit_results()[0], "rolled_back");
    // History is never rewritten: version 2 is still there.
    assert_eq!(manifest_files(&lake.manifest(2)), vec![("r2".into(), FEB.into())]);
    let again = lake.promote(&["--restore-version", "3", "--approved-by", "joe", "--reason", "x"]);
    assert_eq!(again.code, 6, "{}", again.stderr);
    assert!(again.stderr.contains("restore_version"), "{}", again.stderr);
}

#[test]
fn a_rejection_is_audited_and_moves_nothing() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    let out = lake.promote(&["--run-id", "r1", "--rejected-by", "ann", "--reason", "numbers look off"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let record = &lake.audit()[0];
    assert_eq!((record["result"].as_str(), record["rejected_by"].as_str()), (Some("rejected"), Some("ann")));
    assert_eq!(record["metrics"][0]["valid_rows"], 10);
    assert!(!lake.path("silver/transactions/_LATEST.json").exists());
}

#[test]
fn a_pointer_moved_between_read_and_write_is_detected_and_nothing_is_lost() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..25, 2, 0));
    let hook = lake.dir.join("pause");
    let slow = lake
        .command("promote", &["--run-id", "r1", "--approved-by", "jane", "--reason", "slow"])
        .env("SILVERLINE_PROMOTE_PAUSE_BEFORE_POINTER", &hook)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pause(&hook, 1);
    // Meanwhile someone else promotes r2.
    let fast = lake.promote(&["--run-id", "r2", "--approved-by", "joe", "--reason", "fast"]);
    assert_eq!(fast.code, 0, "{}", fast.stderr);
    // The slow promoter had already written manifest 1 (an orphan until it moves the pointer), so the fast one
    // took the next free number.
    assert_eq!(lake.latest()["version"], 2);
    std::fs::write(format!("{}.go.1", hook.display()), "").unwrap();
    std::fs::write(format!("{}.go.2", hook.display()), "").unwrap();
    let slow = ran(slow.wait_with_output().unwrap());
    assert_eq!(slow.code, 0, "{}", slow.stderr);
    assert!(slow.stderr.contains("moved since it was read"), "the retry is logged: {}", slow.stderr);
    let latest = lake.latest();
    assert_eq!((latest["version"].as_u64(), latest["reason"].as_str()), (Some(3), Some("slow")));
    assert_eq!(latest["previous_version"], 2, "re-planned on top of the other promotion");
    assert_eq!(manifest_files(&lake.manifest(3)), vec![("r1".into(), JAN.into()), ("r2".into(), FEB.into())]);
    assert_current_matches_pointer(&lake);
    assert_eq!(lake.audit_results(), ["promoted", "promoted"]);
    // The slow promoter's first manifest never became current: history shows it as an orphan.
    let out = ran(lake.command("history", &["--format", "json"]).output().unwrap());
    let history: Value = serde_json::from_str(&out.stdout).unwrap();
    let committed: Vec<(u64, bool)> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["committed"].as_bool().unwrap()))
        .collect();
    assert_eq!(committed, [(3, true), (2, true), (1, false)]);
}

fn wait_for_pause(hook: &std::path::Path, attempt: u32) {
    let paused = PathBuf::from(format!("{}.paused.{attempt}", hook.display()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !paused.exists() {
        assert!(std::time::Instant::now() < deadline, "the slow promoter never reached the pointer ({attempt})");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_pointer_that_keeps_moving_gives_up_with_exit_7_after_five_attempts_and_loses_nothing() {
    let lake = Lake::new();
    lake.ok_run("slow", &csv(0..3, 1, 0));
    for i in 1..=5 {
        lake.ok_run(&format!("r{i}"), &csv(100 * i..100 * i + 2, 2, 0));
    }
    let hook = lake.dir.join("pause");
    let slow = lake
        .command("promote", &["--run-id", "slow", "--approved-by", "jane", "--reason", "slow"])
        .env("SILVERLINE_PROMOTE_PAUSE_BEFORE_POINTER", &hook)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for attempt in 1..=5u32 {
        wait_for_pause(&hook, attempt);
        let other = lake.approve(&[&format!("r{attempt}")], "append");
        assert_eq!(other.code, 0, "{}", other.stderr);
        std::fs::write(format!("{}.go.{attempt}", hook.display()), "").unwrap();
    }
    let slow = ran(slow.wait_with_output().unwrap());
    assert_eq!(slow.code, 7, "{}", slow.stderr);
    assert!(slow.stderr.contains("kept changing"), "{}", slow.stderr);
    assert_eq!(slow.stderr.matches("moved since it was read").count(), 5, "each retry is logged: {}", slow.stderr);
    // Every other promotion stands; the slow one moved nothing.
    assert_eq!(lake.latest()["runs"], serde_json::json!(["r5"]));
    assert_eq!(lake.audit_results(), ["promoted"; 5]);
    assert_current_matches_pointer(&lake);
    assert_eq!(current_rows(&lake), 10);
}

fn killed_then_repeated(step: &str, identity: Option<&str>) {
    let lake = Lake::new();
    lake.ok_run("r0", &csv(100..102, 2, 0));
    assert_eq!(lake.approve(&["r0"], "append").code, 0);
    lake.ok_run("r1", &csv(0..10, 1, 0));
    let mut args = vec!["--run-id", "r1", "--approved-by", "jane", "--reason", "feed"];
    if let Some(id) = identity {
        args.extend(["--promotion", id]);
    }
    let killed = ran(lake.command("promote", &args).env("SILVERLINE_PROMOTE_CRASH_AFTER", step).output().unwrap());
    assert_ne!(killed.code, 0, "{step}: the hook aborts");
    assert!(killed.stderr.contains("aborting"), "{step}: {}", killed.stderr);
    // Whatever was killed, the pointer names a whole version: the old one or the new one.
    let version = lake.latest()["version"].as_u64().unwrap();
    assert_eq!(version, if step == "manifest" { 1 } else { 2 }, "{step}");
    let again = lake.promote(&args);
    assert_eq!(again.code, 0, "{step}: {}", again.stderr);
    if step != "manifest" {
        assert!(again.stdout.contains("already promoted as version 2"), "{step}: {}", again.stdout);
    }
    assert_eq!(lake.latest()["version"], 2, "{step}: exactly once");
    assert!(!lake.path("silver/transactions/_manifests/3.json").exists(), "{step}");
    assert_current_matches_pointer(&lake);
    assert_eq!(current_rows(&lake), 12, "{step}");
    assert_eq!(lake.audit_results(), ["promoted", "promoted"], "{step}");
    if identity.is_some() {
        let third = lake.promote(&args);
        assert_eq!(third.code, 0, "{step}: {}", third.stderr);
        assert!(third.stdout.contains("already promoted as version 2"), "{step}: {}", third.stdout);
        assert_eq!(lake.audit_results().len(), 2, "{step}: no second record");
    }
}

#[test]
fn a_promoter_killed_at_any_step_completes_exactly_once_when_repeated() {
    for step in ["manifest", "pointer", "copies", "current_manifest", "current"] {
        killed_then_repeated(step, Some("team-a/promote-r1/0b7c"));
    }
    killed_then_repeated("pointer", None);
}

/// A promotion without identity (the CLI's) killed once the pointer had moved; another promotion commits; the
/// killed one is repeated as the exit-75 text tells.
fn killed_then_overtaken_then_repeated(step: &str, mode: &str) {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..25, 2, 0));
    let a = ["--run-id", "r1", "--mode", mode, "--approved-by", "jane", "--reason", "feed"];
    let killed = ran(lake.command("promote", &a).env("SILVERLINE_PROMOTE_CRASH_AFTER", step).output().unwrap());
    assert_ne!(killed.code, 0, "{step}");
    assert_eq!(lake.latest()["version"], 1, "{step}");
    let b = lake.promote(&["--run-id", "r2", "--mode", "append", "--approved-by", "joe", "--reason", "next"]);
    assert_eq!(b.code, 0, "{step}: {}", b.stderr);
    assert_eq!(lake.latest()["version"], 2, "{step}");
    let again = lake.promote(&a);
    assert_eq!(again.code, 0, "{step} {mode}: {}", again.stderr);
    assert!(again.stdout.contains("already promoted as version 1"), "{step} {mode}: {}", again.stdout);
    assert!(again.stdout.contains("--again"), "{step} {mode}: {}", again.stdout);
    assert_eq!(lake.latest()["version"], 2, "{step} {mode}: r2's version stays current");
    assert!(!lake.path("silver/transactions/_manifests/3.json").exists(), "{step} {mode}");
    assert_eq!(
        manifest_files(&lake.manifest(2)),
        vec![("r1".into(), JAN.into()), ("r2".into(), FEB.into())],
        "{step} {mode}"
    );
    assert_current_matches_pointer(&lake);
    assert_eq!(lake.audit_results(), ["promoted", "promoted"], "{step} {mode}: no refusal, no third record");
}

#[test]
fn a_repeat_without_identity_after_another_promotion_committed_is_already_promoted_not_applied_again() {
    for step in ["pointer", "copies", "current"] {
        killed_then_overtaken_then_repeated(step, "replace-all");
    }
    killed_then_overtaken_then_repeated("pointer", "append");
    killed_then_overtaken_then_repeated("pointer", "replace-partitions");
}

#[test]
fn a_repeat_without_identity_of_a_finished_promotion_commits_nothing_unless_asked_again() {
    // A promoter killed right after its audit record leaves the lake as a finished one does.
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..25, 2, 0));
    for mode in ["replace-all", "replace-partitions"] {
        let args = ["--run-id", "r1", "--mode", mode, "--approved-by", "jane", "--reason", mode];
        let first = lake.promote(&args);
        assert_eq!(first.code, 0, "{mode}: {}", first.stderr);
        let version = lake.latest()["version"].as_u64().unwrap();
        let records = lake.audit().len();
        let again = lake.promote(&args);
        assert_eq!(again.code, 0, "{mode}: {}", again.stderr);
        assert!(again.stdout.contains(&format!("already promoted as version {version}")), "{}", again.stdout);
        assert_eq!(lake.latest()["version"], version, "{mode}: no duplicate version");
        assert_eq!(lake.audit().len(), records, "{mode}: no new audit record");
    }
    // A rollback repeated, too.
    assert_eq!(lake.approve(&["r2"], "append").code, 0);
    let restore = ["--restore-version", "1", "--approved-by", "joe", "--reason", "back"];
    assert_eq!(lake.promote(&restore).code, 0);
    let version = lake.latest()["version"].as_u64().unwrap();
    let again = lake.promote(&restore);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains(&format!("already promoted as version {version}")), "{}", again.stdout);
    assert_eq!(lake.latest()["version"], version);
    // Another approver or reason is another request; --again commits the same one again, on purpose.
    let args = ["--run-id", "r1", "--mode", "replace-all", "--approved-by", "jane", "--reason", "replace-all"];
    let out = lake.promote(&[&args[..], &["--again"]].concat());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(lake.latest()["version"], version + 1);
    assert_eq!(lake.audit_results()[0], "promoted");
    let other = lake.promote(&["--run-id", "r1", "--mode", "replace-all", "--approved-by", "ann", "--reason", "x"]);
    assert_eq!(other.code, 0, "{}", other.stderr);
    assert_eq!(lake.latest()["version"], version + 2);
    // --again is for the CLI's requests, never a Promotion's or a rejection's.
    for extra in [&["--again", "--promotion", "ns/p/1"][..], &["--again"][..]] {
        let mut args = vec!["--run-id", "r1", "--reason", "x"];
        args.extend(if extra.len() == 1 { ["--rejected-by", "ann"] } else { ["--approved-by", "ann"] });
        args.extend(extra);
        assert_eq!(lake.promote(&args).code, 2, "{args:?}");
    }
}

#[test]
fn a_runs_file_deleted_before_current_caught_up_fails_the_promote_naming_it_not_as_the_feeds_fault() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    let args = ["--run-id", "r1", "--approved-by", "jane", "--reason", "feed", "--promotion", "team-a/p-r1/1d2e"];
    let killed = ran(lake.command("promote", &args).env("SILVERLINE_PROMOTE_CRASH_AFTER", "pointer").output().unwrap());
    assert_ne!(killed.code, 0, "{}", killed.stderr);
    let key = lake.manifest(1)["files"][0]["key"].as_str().unwrap().to_owned();
    std::fs::remove_file(lake.path(&key)).unwrap();
    let again = lake.promote(&args);
    assert_eq!(again.code, 1, "not exit 3 (fix the feed): {}", again.stderr);
    let copy = format!("silver/transactions/current/{JAN}/r1-part-00000.parquet");
    assert!(again.stderr.contains(&format!("copying file://{}", lake.path(&key).display())), "{}", again.stderr);
    assert!(again.stderr.contains(&copy), "names the copy too: {}", again.stderr);
    assert!(again.stderr.contains("missing from the lake"), "{}", again.stderr);
}

#[test]
fn history_lists_runs_versions_and_the_audit_log_newest_first() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    assert_eq!(lake.run("r2-quality", &csv(0..9, 1, 1), &[]), 5);
    lake.ok_run("r3", &csv(30..33, 2, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    assert_eq!(lake.approve(&["r2-quality"], "append").code, 6);
    let out = ran(lake.command("history", &[]).output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("current version 1"), "{}", out.stdout);
    for line in ["r1 ", "r2-quality", "quality_failed", "committed", "refused", "promoted", "jane"] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    let out = ran(lake.command("history", &["--format", "json"]).output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let history: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(history["current_version"], 1);
    let runs = history["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["run_id"], "r3", "newest first");
    let state = |id: &str| runs.iter().find(|r| r["run_id"] == id).unwrap().clone();
    assert_eq!((state("r1")["state"].as_str(), state("r1")["in_current"].as_bool()), (Some("committed"), Some(true)));
    assert_eq!(state("r3")["in_current"], false);
    assert_eq!(state("r2-quality")["state"], "quality_failed");
    assert_eq!(history["versions"][0]["approved_by"], "jane");
    assert_eq!(history["audit"][0]["result"], "refused", "newest first");
}

#[test]
fn one_unreadable_object_is_skipped_and_reported_not_allowed_to_stop_promote_or_history() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..25, 2, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    // An audit record cut short (or edited by hand) is skipped by promote.
    let bad_record = "audit/transactions/20991231T000000.000000Z-promoted-cut.json";
    std::fs::write(lake.path(bad_record), br#"{"format": 1, "dataset": "transac"#).unwrap();
    let out = lake.approve(&["r2"], "append");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains(bad_record), "the skipped record is named: {}", out.stderr);
    assert_eq!(lake.latest()["version"], 2);
    // A damaged manifest, a _SUCCESS that is not JSON and one of another run id: history goes on and lists them.
    let bad_manifest = "silver/transactions/_manifests/7.json";
    std::fs::write(lake.path(bad_manifest), b"{").unwrap();
    for (run, body) in
        [("garbled", b"not json".to_vec()), ("copied", std::fs::read(success_path(&lake, "r1")).unwrap())]
    {
        let dir = run_dir(&lake.lake, "silver", run);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("_SUCCESS"), body).unwrap();
    }
    let out = ran(lake.command("history", &["--format", "json"]).output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let history: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(history["current_version"], 2);
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
    assert_eq!(history["audit"].as_array().unwrap().len(), 2);
    let runs: Vec<&str> = history["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let problems = history["problems"].as_array().unwrap();
    let problem = |key: &str| {
        let found = problems.iter().find(|p| p["key"] == key);
        found.unwrap_or_else(|| panic!("{key} in {problems:?}"))["error"].as_str().unwrap().to_owned()
    };
    assert!(problem(bad_record).contains("not a valid audit record"));
    assert!(problem(bad_manifest).contains("not a valid manifest"));
    assert!(problem("silver/transactions/schema_v=v1/run_id=garbled").contains("_SUCCESS is not a valid run report"));
    assert!(problem("silver/transactions/schema_v=v1/run_id=copied").contains("\"r1\""));
    assert_eq!(problems.len(), 4, "{problems:?}");
    let out = ran(lake.command("history", &[]).output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("PROBLEMS") && out.stdout.contains(bad_manifest), "{}", out.stdout);
    // A damaged _LATEST.json: history says so and goes on; promote stops, naming it.
    std::fs::write(lake.path("silver/transactions/_LATEST.json"), b"{\"format\": 1,").unwrap();
    let out = ran(lake.command("history", &[]).output().unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("current version unknown"), "{}", out.stdout);
    assert!(out.stdout.contains("silver/transactions/_LATEST.json:"), "{}", out.stdout);
    assert!(out.stdout.contains("r2 "), "the runs are still listed: {}", out.stdout);
    lake.ok_run("r3", &csv(30..33, 3, 0));
    let out = lake.approve(&["r3"], "append");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("silver/transactions/_LATEST.json is not a valid _LATEST.json"), "{}", out.stderr);
}

fn success_path(lake: &Lake, run_id: &str) -> PathBuf {
    run_dir(&lake.lake, "silver", run_id).join("_SUCCESS")
}

#[test]
fn promote_usage_errors_exit_2() {
    let lake = Lake::new();
    for args in [
        vec!["--approved-by", "jane", "--reason", "r"],
        vec!["--run-id", "../etc", "--approved-by", "jane", "--reason", "r"],
        vec!["--run-id", "r1", "--approved-by", "", "--reason", "r"],
        vec!["--run-id", "r1", "--approved-by", "jane", "--reason", "r", "--promotion", "ns/name"],
    ] {
        let out = lake.promote(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
}

#[test]
fn the_next_promotion_repairs_current_and_audits_a_version_whose_promoter_was_killed() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..25, 2, 0));
    let a = ["--run-id", "r1", "--approved-by", "jane", "--reason", "a", "--promotion", "ns/a/1"];
    let killed = ran(lake.command("promote", &a).env("SILVERLINE_PROMOTE_CRASH_AFTER", "pointer").output().unwrap());
    assert_ne!(killed.code, 0);
    assert_eq!(lake.latest()["version"], 1);
    assert!(!lake.path("silver/transactions/current/_MANIFEST.json").exists(), "current/ lags the pointer");
    let b = lake.promote(&["--run-id", "r2", "--approved-by", "joe", "--reason", "b", "--promotion", "ns/b/2"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert!(b.stderr.contains("current/ lags _LATEST.json; repairing"), "{}", b.stderr);
    assert_eq!(lake.latest()["version"], 2);
    assert_current_matches_pointer(&lake);
    let audit = lake.audit();
    let promoted_by = |id: &str| audit.iter().filter(|r| r["promotion"]["name"] == id).count();
    assert_eq!((promoted_by("a"), promoted_by("b")), (1, 1), "both pointer moves are audited: {audit:?}");
    let again = lake.promote(&a);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("already promoted as version 1"), "{}", again.stdout);
    assert_eq!(lake.latest()["version"], 2, "nothing moved");
    assert_eq!(lake.audit().len(), 2);
}

#[test]
fn a_version_whose_promoter_died_before_its_audit_record_is_audited_by_the_next_and_its_repeat_commits_nothing() {
    let lake = Lake::new();
    lake.ok_run("r0", &csv(100..102, 2, 0));
    assert_eq!(lake.approve(&["r0"], "append").code, 0);
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..25, 3, 0));
    // Killed with current/ up to date (nothing lags) but before the audit record of version 2.
    let a = ["--run-id", "r1", "--approved-by", "jane", "--reason", "a", "--promotion", "ns/a/1"];
    let killed = ran(lake.command("promote", &a).env("SILVERLINE_PROMOTE_CRASH_AFTER", "current").output().unwrap());
    assert_ne!(killed.code, 0);
    assert_eq!(lake.latest()["version"], 2);
    assert_current_matches_pointer(&lake);
    // Another promotion moves past version 2: it writes version 2's record first (with its Promotion).
    let b = lake.promote(&["--run-id", "r2", "--approved-by", "joe", "--reason", "b", "--promotion", "ns/b/2"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(lake.latest()["version"], 3);
    let audit = lake.audit();
    let of = |name: &str| audit.iter().filter(|r| r["promotion"]["name"] == name).cloned().collect::<Vec<_>>();
    assert_eq!(of("a").len(), 1, "version 2 is audited: {audit:?}");
    assert_eq!((of("a")[0]["version_after"].as_u64(), of("a")[0]["approved_by"].as_str()), (Some(2), Some("jane")));
    // The repeat of the first Promotion knows it committed version 2: nothing moves, no second record.
    let again = lake.promote(&a);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("already promoted as version 2"), "{}", again.stdout);
    assert_eq!(lake.latest()["version"], 3, "not committed again as version 4");
    assert_eq!(lake.audit_results(), ["promoted", "promoted", "promoted"]);
}

#[test]
fn a_versions_record_is_named_by_its_version_so_every_writer_writes_the_same_one() {
    // A promoter killed before its record, and the next promotion writing it, write the same object: a
    // version's record is named by its version and commit time, create-only.
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    let a = ["--run-id", "r1", "--approved-by", "jane", "--reason", "a", "--promotion", "ns/a/1"];
    let killed = ran(lake.command("promote", &a).env("SILVERLINE_PROMOTE_CRASH_AFTER", "current").output().unwrap());
    assert_ne!(killed.code, 0);
    for _ in 0..2 {
        let again = lake.promote(&a);
        assert_eq!(again.code, 0, "{}", again.stderr);
    }
    let names = files_under(&lake.path("audit/transactions"));
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with("-promoted-v1.json"), "{names:?}");
}

#[test]
fn a_manifest_edited_to_list_files_outside_the_datasets_runs_is_refused_not_restored() {
    use sha2::Digest;
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..200, 1, 1));
    lake.ok_run("r2", &csv(20..23, 2, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    assert_eq!(lake.approve(&["r2"], "replace-all").code, 0);
    let original = std::fs::read(lake.path("silver/transactions/_manifests/1.json")).unwrap();
    // The run's quarantine file, listed with its true size, SHA-256 and row count: every byte check passes.
    let quarantine = "quarantine/transactions/schema_v=v1/run_id=r1/part-00000.parquet";
    let bytes = std::fs::read(lake.path(quarantine)).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            quarantine,
            Box::new(|m: &mut Value| {
                let f = &mut m["files"][0];
                (f["key"], f["rows"], f["bytes"], f["sha256"]) =
                    (quarantine.into(), 1.into(), bytes.len().into(), sha.as_str().into());
            }),
        ),
        (
            "silver/payroll/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet",
            Box::new(|m: &mut Value| {
                m["files"][0]["key"] =
                    "silver/payroll/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet".into()
            }),
        ),
        ("not of transactions version 1", Box::new(|m: &mut Value| m["dataset"] = "payroll".into())),
    ];
    for (named, edit) in &edits {
        let mut manifest: Value = serde_json::from_slice(&original).unwrap();
        edit(&mut manifest);
        std::fs::write(lake.path("silver/transactions/_manifests/1.json"), serde_json::to_vec(&manifest).unwrap())
            .unwrap();
        let out = lake.promote(&["--restore-version", "1", "--approved-by", "joe", "--reason", "back"]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stderr.contains("_manifests/1.json") && out.stderr.contains(named), "{}", out.stderr);
        assert_eq!(lake.latest()["version"], 2, "nothing moved");
        assert_current_matches_pointer(&lake);
    }
    // The manifest as written is restored.
    std::fs::write(lake.path("silver/transactions/_manifests/1.json"), &original).unwrap();
    let out = lake.promote(&["--restore-version", "1", "--approved-by", "joe", "--reason", "back"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn values_starting_with_a_dash_are_taken_as_values_in_the_operators_flag_equals_form() {
    let lake = Lake::new();
    // As the operator's Jobs pass them (`--flag=value`), so that a run id or a reason may start with '-'.
    let input = write(&lake.dir, "dash.csv", csv(0..10, 1, 0));
    let run = Command::new(worker_bin())
        .args(["run", "--progress", "off", "--contract"])
        .arg(&lake.contract)
        .arg(format!("--input={}", input.display()))
        .arg("--lake")
        .arg(&lake.lake)
        .arg("--run-id=-r1")
        .output()
        .unwrap();
    assert_eq!(ran(run).code, 0);
    let args = ["--run-id=-r1", "--approved-by=-jane", "--reason=-5 % fewer rows, --accepted", "--mode", "append"];
    let out = lake.promote(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let record = &lake.audit()[0];
    assert_eq!(
        (record["approved_by"].as_str(), record["reason"].as_str()),
        (Some("-jane"), Some("-5 % fewer rows, --accepted"))
    );
    assert_eq!(lake.latest()["runs"][0], "-r1");
}

#[test]
fn an_orphan_manifest_that_was_never_current_cannot_be_restored() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("m1", &csv(50..55, 2, 0));
    lake.ok_run("c1", &csv(60..62, 3, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    // Killed after writing manifest 2, before the pointer: 2.json is an orphan.
    let m = ["--run-id", "m1", "--approved-by", "jane", "--reason", "m"];
    let killed = ran(lake.command("promote", &m).env("SILVERLINE_PROMOTE_CRASH_AFTER", "manifest").output().unwrap());
    assert_ne!(killed.code, 0);
    assert!(lake.path("silver/transactions/_manifests/2.json").exists());
    assert_eq!(lake.approve(&["c1"], "append").code, 0);
    let v = lake.latest()["version"].as_u64().unwrap();
    assert_eq!((v, lake.latest()["previous_version"].as_u64()), (3, Some(1)), "version 3 follows 1");
    let out = lake.promote(&["--restore-version", "2", "--approved-by", "joe", "--reason", "x"]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("version 2 was never current"), "{}", out.stderr);
    // A version that was current is restored.
    let out = lake.promote(&["--restore-version", "1", "--approved-by", "joe", "--reason", "back"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn a_lost_pointer_stops_every_promotion_instead_of_starting_history_again() {
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    lake.ok_run("r2", &csv(20..25, 2, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    std::fs::remove_file(lake.path("silver/transactions/_LATEST.json")).unwrap();
    let out = lake.approve(&["r2"], "append");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("is missing although a version was committed"), "{}", out.stderr);
    assert!(!lake.path("silver/transactions/_LATEST.json").exists(), "no new history from version 1 again");
    assert!(!lake.path("silver/transactions/_manifests/2.json").exists());
}

#[test]
#[cfg(unix)]
fn a_current_copy_on_a_local_lake_is_its_own_file_not_a_link_to_the_run() {
    use std::os::unix::fs::MetadataExt;
    let lake = Lake::new();
    lake.ok_run("r1", &csv(0..10, 1, 0));
    assert_eq!(lake.approve(&["r1"], "append").code, 0);
    let copy = lake.path("silver/transactions/current/year=2024/month=01/r1-part-00000.parquet");
    let original = run_dir(&lake.lake, "silver", "r1").join("year=2024/month=01/part-00000.parquet");
    let (a, b) = (std::fs::metadata(&copy).unwrap(), std::fs::metadata(&original).unwrap());
    assert_ne!(a.ino(), b.ino(), "a write in place to current/ must not change the run's history");
    assert_eq!(a.nlink(), 1);
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&original).unwrap());
}

#[test]
fn a_run_id_used_under_two_schema_versions_gets_its_own_bytes_into_current() {
    let lake = Lake::new();
    // r9 under v1 with amounts 1.00, then r9 under v2 with amounts 2.00: files of the same size, one copy name.
    let amounts = |a: &str| csv(0..10, 1, 0).replace("10.00", a);
    lake.ok_run("r9", &amounts("1.00"));
    assert_eq!(lake.approve(&["r9"], "append").code, 0);
    let dir = lake.dir.join("v2");
    std::fs::create_dir_all(&dir).unwrap();
    let v2 = contract(&dir, &[("schemaVersion: v1", "schemaVersion: v2")]);
    let input = write(&lake.dir, "r9-v2.csv", amounts("2.00"));
    assert_eq!(run_worker(&v2, &input, &lake.lake, "r9").code, 0);
    let out = ran(Command::new(worker_bin())
        .args(["promote", "--contract"])
        .arg(&v2)
        .arg("--lake")
        .arg(&lake.lake)
        .args(["--run-id", "r9", "--mode", "replace-all", "--approved-by", "jane", "--reason", "v2"])
        .output()
        .unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let copy = lake.path("silver/transactions/current/year=2024/month=01/r9-part-00000.parquet");
    let v2_file = lake.path("silver/transactions/schema_v=v2/run_id=r9/year=2024/month=01/part-00000.parquet");
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), std::fs::metadata(&v2_file).unwrap().len());
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&v2_file).unwrap(), "current/ holds v2's bytes");
}

#[test]
fn a_replay_whose_rows_fail_again_the_same_way_passes_its_gate_and_is_promoted() {
    let lake = Lake::new();
    // 1 bad row in 200: 0.5 % quarantined, within the contract's 1 %.
    lake.ok_run("load", &csv(0..199, 1, 1));
    assert_eq!(lake.approve(&["load"], "append").code, 0);
    let quarantine = lake.path("quarantine/transactions/schema_v=v1/run_id=load");
    let replay = run_worker(&lake.contract, &quarantine, &lake.lake, "replay");
    assert_eq!(replay.code, 0, "a row failing again the same way is not counted by a replay's gate: {}", replay.stderr);
    let report = success(&lake.lake, "replay");
    assert_eq!((report.quarantine_rate, report.gated_quarantine_rate), (1.0, Some(0.0)));
    // Promotion judges the rate the worker's gate judged, not the plain quarantine rate.
    let promoted = lake.approve(&["replay"], "append");
    assert_eq!(promoted.code, 0, "{}", promoted.stderr);
    assert_eq!(lake.latest()["version"], 2);
    assert_eq!(lake.latest()["runs"], serde_json::json!(["replay"]));
}
