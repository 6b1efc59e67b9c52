// Records the git commit the worker was built from, for the `_SUCCESS` marker.
use std::process::Command;

fn main() {
    let sha = std::env::var("SILVERLINE_GIT_SHA").ok().filter(|s| !s.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=SILVERLINE_GIT_SHA={}", sha.unwrap_or_else(|| "unknown".to_owned()));
    println!("cargo:rerun-if-env-changed=SILVERLINE_GIT_SHA");
    // HEAD names the branch; a commit changes the branch's ref (or packed-refs), not HEAD. Only files that exist
    // are watched: cargo would rerun the script every time for a missing one.
    let branch = std::fs::read_to_string("../.git/HEAD")
        .ok()
        .and_then(|h| h.trim().strip_prefix("ref: ").map(|b| format!("../.git/{b}")));
    for watched in ["../.git/HEAD".to_owned(), "../.git/packed-refs".to_owned()].into_iter().chain(branch) {
        if std::path::Path::new(&watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
}
