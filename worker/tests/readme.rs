//! The README's quick start (run → look at the quarantine → replay → promote) and walkthrough (run → review →
//! approve → promote → fix → promote → rollback) are run as written, with `slw` standing for the built binary, so
//! the README cannot drift from what the commands do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use support::{repo_root, worker_bin};

/// The shell blocks of the README's walkthrough section, in order.
fn walkthrough_commands(readme: &str) -> Vec<String> {
    shell_blocks(readme, "## Walkthrough", "**The same with `kubectl`**")
}

/// The shell blocks between a heading and a marker after it, in order.
fn shell_blocks(readme: &str, heading: &str, until: &str) -> Vec<String> {
    let start = readme.find(heading).unwrap_or_else(|| panic!("the README has a section {heading:?}"));
    let section = &readme[start..];
    let end = section.find(until).unwrap_or_else(|| panic!("the section {heading:?} ends at {until:?}"));
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section[..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Runs shell blocks in a temporary directory beside a link to `examples/`, with `slw` as the built worker.
fn run_blocks(blocks: &[String]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo_root().join("examples"), dir.path().join("examples")).unwrap();
    let script = format!("set -euo pipefail\nslw() {{ {:?} \"$@\"; }}\n{}", worker_bin(), blocks.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("SILVERLINE_TERMINATION_LOG", dir.path().join("termination-log"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the README's commands failed ({}):\n{stdout}\n{stderr}", out.status);
    (dir, stdout)
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = shell_blocks(&readme, "## Quick start", "## Walkthrough");
    assert_eq!(blocks.len(), 5, "run, look at the quarantine, replay, promote, and the test command");
    // The last block runs every test of the repository: not from here.
    assert!(blocks[4].contains("./scripts/test.sh"), "{}", blocks[4]);
    assert!(blocks[1].contains("slw quarantine") && blocks[2].contains("run_id=first-load/"), "{blocks:?}");
    // The alias line defines `slw` for a person; in this non-interactive shell the function below stands for it.
    let (dir, stdout) = run_blocks(&blocks[..4]);
    for expected in [
        "quarantine of run first-load, dataset transactions (schema v1): 25 rows in 1 file",
        "filtered to error type TYPE_ERROR",
        "sample: the first 3 of",
        "promoted dataset transactions: version none → 1",
    ] {
        assert!(stdout.contains(expected), "the quick start's output lacks {expected:?}:\n{stdout}");
    }
    // The replay ran the 25 quarantined rows again and was committed.
    let replay = dir.path().join("demo-lake/silver/transactions/schema_v=v1/run_id=first-load-replay-1/_SUCCESS");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&replay).unwrap()).unwrap();
    assert_eq!(report["input_rows"], 25);
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = walkthrough_commands(&readme);
    assert_eq!(blocks.len(), 5, "the walkthrough's five steps each have a shell block");
    // The commands name `examples/…` relative to a clone's root; the lake lands in the temporary directory.
    let (dir, stdout) = run_blocks(&blocks);
    for expected in [
        "quarantine of run first-load, dataset transactions (schema v1): 25 rows",
        "condemned of run first-load, dataset transactions (schema v1): 11 rows",
        "promoted dataset transactions: version none → 1",
        "promoted dataset transactions: version 1 → 2",
        "rolled back dataset transactions: version 2 → 3",
        "dataset transactions: current version 3",
    ] {
        assert!(stdout.contains(expected), "the walkthrough's output lacks {expected:?}:\n{stdout}");
    }
    // Version 3 holds exactly version 1's files.
    let manifest = |n: u32| -> serde_json::Value {
        let path = dir.path().join(format!("demo-lake/silver/transactions/_manifests/{n}.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    assert_eq!(manifest(3)["files"], manifest(1)["files"]);
    assert_eq!(manifest(2)["totals"]["rows"], 2964 + 21);
}
