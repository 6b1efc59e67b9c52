// Records the git commit the worker was built from, for the `_SUCCESS` marker.
use std::process::Command;

fn main() {
    let sha = std::env::var("SILVERLINE_GIT_SHA").ok().filter(|s| !s.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=SILVERLINE_GIT_SHA={}", sha.unwrap_or_else(|| "unknown".to_owned()));
    println!("cargo:rerun-if-env-changed=SILVERLINE_GIT_SHA");
    println!("cargo:rerun-if-changed=../.git/HEAD");
}
