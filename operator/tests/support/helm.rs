//! Helm for the tests: the binary scripts/test.sh builds from its pinned Go module (`SILVERLINE_HELM`, from
//! `scripts/gotool.sh path helm`), and the chart charts/silverline rendered by `helm template` into objects — the
//! RBAC the operator's tests grant it is the chart's.

use std::path::{Path, PathBuf};
use std::process::Output;

/// The release namespace the docs use, and the tests' renderings.
pub const RELEASE_NAMESPACE: &str = "silverline-system";

pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/silverline")
}

/// The helm binary; panics with what to do when it is not given.
pub fn helm() -> PathBuf {
    let path = std::env::var_os("SILVERLINE_HELM").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "SILVERLINE_HELM is not set: run ./scripts/test.sh, or export SILVERLINE_HELM=$(scripts/gotool.sh path helm)"
        )
    });
    assert!(path.is_file(), "SILVERLINE_HELM={} is not a file", path.display());
    path
}

/// Runs helm with `args`; the Output, whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    std::process::Command::new(helm())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm {}: {e}", args.join(" ")))
}

/// `helm template RELEASE charts/silverline --namespace NAMESPACE ARGS…`: the rendered objects (CRDs included),
/// or helm's error output.
pub fn template(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<serde_json::Value>, String> {
    let chart = chart_dir();
    let chart = chart.to_str().expect("a UTF-8 chart path");
    let mut all = vec!["template", release, chart, "--namespace", namespace, "--include-crds"];
    all.extend_from_slice(args);
    let out = run(&all);
    if !out.status.success() {
        return Err(format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)));
    }
    Ok(documents(&String::from_utf8_lossy(&out.stdout)))
}

/// The non-empty YAML documents of a stream, as JSON values.
pub fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("a YAML document of helm's output: {e}"))
        })
        .filter(|doc: &serde_json::Value| !doc.is_null())
        .collect()
}

/// The objects of one kind.
pub fn of_kind<'a>(objects: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}
