//! `current/` kept in step with the pointer: `sync_current`, `repair_current` and `current_is_up_to_date` on a
//! local lake, with versions written directly (no gate), so a test can interleave two syncs step by step.

use super::*;
use crate::{OpenOptions, StoreOptions};
use tempfile::TempDir;

const JAN: &str = "year=2024/month=01";

struct Fixture {
    dir: TempDir,
    lake: Lake,
    layout: DatasetLayout,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(dir.path().to_str().expect("utf-8"), &StoreOptions::default(), OpenOptions::WRITER)
            .expect("open");
        Fixture { dir, lake, layout: DatasetLayout::new("tx").expect("layout") }
    }

    /// A run's silver file (`part-00000.parquet` of `run_id` in January), as a manifest lists it.
    fn run_file(&self, run_id: &str) -> ManifestFile {
        let key = format!("silver/tx/schema_v=v1/run_id={run_id}/{JAN}/part-00000.parquet");
        let body = format!("rows of {run_id}");
        let file = self.dir.path().join(&key);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, &body).expect("write");
        ManifestFile {
            partition: JAN.into(),
            key,
            run_id: run_id.into(),
            rows: 1,
            bytes: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body.as_bytes())),
        }
    }

    /// Commits version `version` with `files`: its manifest, then the pointer.
    async fn commit(&self, version: u64, files: &[ManifestFile]) -> (Manifest, Bytes) {
        let manifest = Manifest {
            format: manifest::FORMAT,
            dataset: "tx".into(),
            schema_v: "v1".into(),
            version,
            previous_version: version.checked_sub(1).filter(|v| *v > 0),
            mode: PromotionMode::ReplaceAll,
            runs: runs_of(files),
            restored_version: None,
            created_at: format!("2024-02-01T00:00:0{version}Z"),
            totals: Totals::of(files),
            files: files.to_vec(),
        };
        let bytes = Bytes::from(manifest.to_bytes());
        let lake = &self.lake;
        lake.put(&lake.path(&self.layout.manifest(version)), bytes.clone()).await.expect("manifest");
        let pointer = LatestPointer {
            format: manifest::FORMAT,
            dataset: "tx".into(),
            version,
            manifest: self.layout.manifest(version),
            manifest_sha256: hex::encode(Sha256::digest(&bytes)),
            mode: PromotionMode::ReplaceAll,
            runs: manifest.runs.clone(),
            restored_version: None,
            previous_version: manifest.previous_version,
            promoted_at: manifest.created_at.clone(),
            approved_by: "jane".into(),
            reason: "test".into(),
            promotion: None,
        };
        let body = Bytes::from(serde_json::to_vec_pretty(&pointer).expect("json"));
        lake.put(&lake.path(&self.layout.latest()), body).await.expect("pointer");
        (manifest, bytes)
    }

    /// The names under `current/` an engine reading the folder sees (all but dot files), relative to it.
    fn visible(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, at: &str, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let relative = if at.is_empty() { name.clone() } else { format!("{at}/{name}") };
                if entry.file_type().expect("type").is_dir() {
                    walk(&entry.path(), &relative, out);
                } else if !name.starts_with('.') {
                    out.push(relative);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("silver/tx/current"), "", &mut out);
        out.sort();
        out
    }

    /// What `current/` must hold for `files`: their copies and `_MANIFEST.json`.
    fn expected(files: &[&ManifestFile]) -> Vec<String> {
        let mut out: Vec<String> =
            files.iter().map(|f| format!("{}/{}-{}", f.partition, f.run_id, f.file_name())).collect();
        out.push("_MANIFEST.json".into());
        out.sort();
        out
    }
}

#[tokio::test]
async fn a_staging_file_left_in_current_by_a_killed_copy_is_removed_by_the_next_repair() {
    let fx = Fixture::new();
    let r1 = fx.run_file("r1");
    fx.commit(1, std::slice::from_ref(&r1)).await;
    repair_current(&fx.lake, "tx", &Hooks::default()).await.expect("repair");
    assert_eq!(fx.visible(), Fixture::expected(&[&r1]));
    // A copy killed midway by an older promoter: object_store's staging name, hidden from its listing only.
    let leftover = fx.dir.path().join(format!("silver/tx/current/{JAN}/r2-part-00000.parquet#1"));
    std::fs::write(&leftover, "half a file").expect("leftover");
    assert!(
        !fx.lake
            .list(&fx.lake.path("silver/tx/current"))
            .await
            .expect("list")
            .iter()
            .any(|m| { m.location.as_ref().contains('#') })
    );
    repair_current(&fx.lake, "tx", &Hooks::default()).await.expect("repair");
    assert!(!leftover.exists(), "the staging file is removed");
    assert_eq!(fx.visible(), Fixture::expected(&[&r1]));
}

#[tokio::test]
async fn a_copy_missing_from_current_or_one_too_many_makes_it_lag_and_the_next_repair_fixes_it() {
    let fx = Fixture::new();
    let (r1, r2) = (fx.run_file("r1"), fx.run_file("r2"));
    fx.commit(1, &[r1.clone(), r2.clone()]).await;
    repair_current(&fx.lake, "tx", &Hooks::default()).await.expect("repair");
    let (pointer, _) = read_latest(&fx.lake, "tx").await.expect("read").expect("pointer");
    assert!(current_is_up_to_date(&fx.lake, &fx.layout, &pointer).await.expect("checked"));
    // A copy deleted under the manifest (by a sync that raced a newer one), and a stray one left by an older sync.
    let copy = fx.dir.path().join(format!("silver/tx/current/{JAN}/r2-part-00000.parquet"));
    std::fs::remove_file(&copy).expect("remove");
    let stray = fx.dir.path().join(format!("silver/tx/current/{JAN}/r0-part-00000.parquet"));
    std::fs::write(&stray, "an old version's rows").expect("stray");
    assert!(!current_is_up_to_date(&fx.lake, &fx.layout, &pointer).await.expect("checked"));
    repair_current(&fx.lake, "tx", &Hooks::default()).await.expect("repair");
    assert_eq!(fx.visible(), Fixture::expected(&[&r1, &r2]));
    assert_eq!(std::fs::read(&copy).expect("copied again"), std::fs::read(fx.dir.path().join(&r2.key)).expect("run"));
    assert!(current_is_up_to_date(&fx.lake, &fx.layout, &pointer).await.expect("checked"));
}

/// A hook that, at `at`, tells the test it got there and waits for its go.
fn pause_at(at: Step) -> (Hooks, tokio::sync::mpsc::UnboundedReceiver<()>, std::sync::mpsc::Sender<()>) {
    let (arrived, arrival) = tokio::sync::mpsc::unbounded_channel();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let hook = move |step: Step| {
        if step == at {
            arrived.send(()).expect("the test waits");
            wait.lock().expect("lock").recv().expect("go");
        }
    };
    (Hooks { after_step: Some(Arc::new(hook)), log: None }, arrival, go)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_sync_of_an_older_version_does_not_delete_the_copies_of_a_newer_one_under_way() {
    let fx = Arc::new(Fixture::new());
    let (r1, r2, r3) = (fx.run_file("r1"), fx.run_file("r2"), fx.run_file("r3"));
    fx.commit(1, std::slice::from_ref(&r1)).await;
    repair_current(&fx.lake, "tx", &Hooks::default()).await.expect("repair");
    // A makes version 2 current and stops once its current/_MANIFEST.json is written, before its cleanup.
    let (v2, v2_bytes) = fx.commit(2, &[r1.clone(), r2.clone()]).await;
    let (hooks_a, mut at_a, go_a) = pause_at(Step::CurrentManifest);
    let a = {
        let fx = fx.clone();
        tokio::spawn(async move { sync_current(&fx.lake, &fx.layout, &v2, &v2_bytes, &hooks_a).await })
    };
    at_a.recv().await.expect("A paused");
    // B commits version 3 and copies its files, but has not written its current/_MANIFEST.json yet ...
    let (v3, v3_bytes) = fx.commit(3, &[r1.clone(), r2.clone(), r3.clone()]).await;
    let (hooks_b, mut at_b, go_b) = pause_at(Step::Copies);
    let b = {
        let fx = fx.clone();
        tokio::spawn(async move { sync_current(&fx.lake, &fx.layout, &v3, &v3_bytes, &hooks_b).await })
    };
    at_b.recv().await.expect("B paused");
    // ... when A cleans up: r3's fresh copy is not A's to delete.
    go_a.send(()).expect("A waits");
    a.await.expect("A ran").expect("A synced");
    go_b.send(()).expect("B waits");
    b.await.expect("B ran").expect("B synced");
    assert_eq!(fx.visible(), Fixture::expected(&[&r1, &r2, &r3]), "current/ shows version 3 whole");
    let (pointer, _) = read_latest(&fx.lake, "tx").await.expect("read").expect("pointer");
    assert!(current_is_up_to_date(&fx.lake, &fx.layout, &pointer).await.expect("checked"));
}
