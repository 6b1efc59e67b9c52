//! The README's walkthrough (run → review → approve → promote → fix → promote → rollback) is run as written, with
//! `slw` standing for the built binary, so the README cannot drift from what the commands do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use support::{repo_root, worker_bin};

/// The shell blocks of the README's walkthrough section, in order.
fn walkthrough_commands(readme: &str) -> Vec<String> {
    let start = readme.find("## Walkthrough").expect("the README has a walkthrough section");
    let section = &readme[start..];
    let end = section.find("**The same with `kubectl`**").expect("the walkthrough ends with the kubectl part");
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

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = walkthrough_commands(&readme);
    assert_eq!(blocks.len(), 5, "the walkthrough's five steps each have a shell block");
    let dir = tempfile::tempdir().unwrap();
    // The commands name `examples/…` relative to a clone's root; the lake lands in the temporary directory.
    std::os::unix::fs::symlink(repo_root().join("examples"), dir.path().join("examples")).unwrap();
    let script = format!("set -euo pipefail\nslw() {{ {:?} \"$@\"; }}\n{}", worker_bin(), blocks.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("SILVERLINE_TERMINATION_LOG", dir.path().join("termination-log"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the walkthrough failed ({}):\n{stdout}\n{stderr}", out.status);
    for expected in [
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
