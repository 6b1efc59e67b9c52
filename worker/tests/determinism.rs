//! The output depends only on the input and the contract: the same input gives byte-identical silver,
//! quarantine and condemned files, and the same `_SUCCESS` apart from its timing fields, whatever the number of
//! threads or the size of the chunks the input is cut into.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use silverline_crds::report::RunReport;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use support::*;
use tempfile::TempDir;

/// Rows of the generated input: enough that partitions fill buffers and part files cut row groups mid-chunk.
const ROWS: usize = 200_000;

/// A deterministic input over 25 months (one UTC offset crossing into a 25th), in random order, with every kind
/// of bad row, exact duplicates (some differing only in padding), repeated keys and quoted fields.
fn generated_input() -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut text = format!("{HEADER}\n");
    let mut earlier: Vec<String> = Vec::new();
    for i in 0..ROWS {
        let (year, month, day) = (2023 + next(2), 1 + next(12), 1 + next(28));
        let ts = format!("{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", next(24), next(60), next(60));
        let customer = if next(50) == 0 { format!("\"C{}, EU\"", next(1000)) } else { format!("C{}", next(1000)) };
        let amount = format!("{}.{:02}", next(100_000), next(100));
        let currency = ["EUR", "USD", "GBP", "CHF", "JPY"][next(5) as usize];
        let mut row = format!("TX{i:08},{customer},{amount},{currency},{ts}");
        match next(200) {
            0 => row = format!("TX{i:08},{customer},{amount}"),
            1 => row = format!("TX{i:08},,{amount},{currency},{ts}"),
            2 => row = format!("TX{i:08},{customer},1e3,{currency},{ts}"),
            3 => row = format!("TX{i:08},{customer},{amount},usd,{ts}"),
            4 => row = format!("TX{i:08},{customer},{amount},{currency},2024-13-01T00:00:00Z"),
            5 => row = format!("TX{:08},{customer},{amount},{currency},{ts}", next(i as u64 + 1)),
            6 if !earlier.is_empty() => row = earlier[next(earlier.len() as u64) as usize].clone(),
            7 if !earlier.is_empty() => row = format!(" {} ", earlier[next(earlier.len() as u64) as usize]),
            8 => row = format!("TX{i:08},{customer},{amount},{currency},2024-12-31T23:30:00-02:00"),
            _ => {}
        }
        if i % 97 == 0 {
            earlier.push(row.clone());
        }
        text.push_str(&row);
        text.push('\n');
    }
    text
}

/// Runs the worker on `input` into a new lake; returns every file under the lake (path → bytes) and the report.
fn run(input: &Path, contract: &Path, lake: &Path, threads: usize, chunk: Option<usize>) -> BTreeMap<String, Vec<u8>> {
    let mut command = Command::new(worker_bin());
    command
        .args(["run", "--progress", "off", "--threads", &threads.to_string(), "--contract"])
        .arg(contract)
        .arg("--input")
        .arg(input)
        .arg("--lake")
        .arg(lake)
        .args(["--run-id", "same"]);
    match chunk {
        Some(records) => command.env("SILVERLINE_CHUNK_BYTES", records.to_string()),
        None => command.env_remove("SILVERLINE_CHUNK_BYTES"),
    };
    let out = ran(command.output().expect("the worker starts"));
    assert_eq!(out.code, 0, "threads {threads}, chunk {chunk:?}: {}", out.stderr);
    files_under(lake).into_iter().map(|f| (f.clone(), std::fs::read(lake.join(&f)).unwrap())).collect()
}

/// The report without the fields that say when the run happened and how long it took.
fn timeless(report: &[u8]) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_slice(report).unwrap();
    let object = value.as_object_mut().unwrap();
    for field in ["started_at", "finished_at", "duration_seconds"] {
        assert!(object.remove(field).is_some(), "the report has {field}");
    }
    value
}

#[test]
fn files_and_checksums_do_not_depend_on_threads_or_chunk_size() {
    let tmp = TempDir::new().unwrap();
    let input = write(tmp.path(), "in.csv", generated_input());
    let contract = contract(
        tmp.path(),
        &[("maxQuarantineRate: 0.01", "maxQuarantineRate: 0.5"), ("maxSameErrors: 100", "maxSameErrors: 1000000")],
    );
    let runs = [(1, None), (2, None), (4, None), (2, Some(64 * 1024)), (1, Some(10_000))];
    let mut first: Option<(BTreeMap<String, Vec<u8>>, serde_json::Value)> = None;
    // One lake path for every run (the report names it), emptied between runs.
    let lake = tmp.path().join("lake");
    for (i, (threads, chunk)) in runs.into_iter().enumerate() {
        let _ = std::fs::remove_dir_all(&lake);
        let mut files = run(&input, &contract, &lake, threads, chunk);
        let success_key = files.keys().find(|k| k.ends_with("_SUCCESS")).cloned().expect("a _SUCCESS");
        let report_bytes = files.remove(&success_key).unwrap();
        // The run's claim says when it started and holds its nonce, and only those differ.
        let claim_key = files.keys().find(|k| k.ends_with("_RUN.json")).cloned().expect("a run claim");
        let mut claim: serde_json::Value = serde_json::from_slice(&files[&claim_key]).unwrap();
        assert!(claim.as_object_mut().unwrap().remove("started_at").is_some(), "the claim has started_at");
        let nonce = claim.as_object_mut().unwrap().remove("claim").expect("the claim has its nonce");
        assert_eq!(nonce.as_str().map(str::len), Some(32), "{nonce}");
        files.insert(claim_key, serde_json::to_vec(&claim).unwrap());
        let report: RunReport = serde_json::from_slice(&report_bytes).unwrap();
        // The report's checksums are those of the files themselves.
        for file in &report.files {
            let path = files.keys().find(|k| file.key.ends_with(k.as_str())).expect("a listed file exists");
            assert_eq!(sha256(&files[path]), file.sha256, "{path}");
        }
        let areas: std::collections::BTreeSet<&str> = report.files.iter().map(|f| f.area.as_str()).collect();
        assert_eq!(areas.len(), 3, "silver, quarantine and condemned all get rows: {areas:?}");
        assert!(report.files.iter().filter(|f| f.area == "silver").count() >= 24, "many partitions");
        let report = timeless(&report_bytes);
        match &first {
            None => first = Some((files, report)),
            Some((files_1, report_1)) => {
                assert_eq!(files.keys().collect::<Vec<_>>(), files_1.keys().collect::<Vec<_>>(), "run {i}: file names");
                for (name, bytes) in &files {
                    assert!(bytes == &files_1[name], "run {i} (threads {threads}, chunk {chunk:?}): {name} differs");
                }
                assert_eq!(&report, report_1, "run {i}: the report apart from its timing");
            }
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
