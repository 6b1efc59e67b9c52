//! The pure part of a promotion: from the current file set, the runs' files and the mode to the next file set,
//! and the summary a reviewer sees (partitions added, extended, replaced or removed; files, rows and bytes
//! before → after). No I/O here; table-tested below.

use crate::manifest::{ManifestFile, Totals};
use serde::{Deserialize, Serialize};
use silverline_crds::PromotionMode;
use std::collections::{BTreeMap, BTreeSet};

/// What a promotion changes, partition by partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Partitions that had no current files.
    pub partitions_added: Vec<String>,
    /// Partitions that keep their files and gain more (Append).
    pub partitions_extended: Vec<String>,
    /// Partitions whose files are replaced.
    pub partitions_replaced: Vec<String>,
    /// Partitions that lose all their files (ReplaceAll, rollback).
    pub partitions_removed: Vec<String>,
    pub before: Totals,
    pub after: Totals,
}

impl Change {
    /// One line for people: `files 3 → 5, rows 2,000 → 3,000; added year=2024/month=02; …`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "files {} → {}, rows {} → {}",
            self.before.files, self.after.files, self.before.rows, self.after.rows
        );
        for (what, list) in [
            ("added", &self.partitions_added),
            ("extended", &self.partitions_extended),
            ("replaced", &self.partitions_replaced),
            ("removed", &self.partitions_removed),
        ] {
            // Long lists (a first load touches every month) are cut after six, with the count of the rest.
            match list.len() {
                0 => {}
                n if n <= 6 => text.push_str(&format!("; {what} {}", list.join(", "))),
                n => text.push_str(&format!("; {what} {} … (+{} more)", list[..6].join(", "), n - 6)),
            }
        }
        text
    }
}

/// The current files that stay current beside the incoming ones: all of them for `Append`, those outside the
/// incoming partitions for `ReplacePartitions`, none for `ReplaceAll`.
pub fn kept_files(current: &[ManifestFile], incoming: &[ManifestFile], mode: PromotionMode) -> Vec<ManifestFile> {
    let touched: BTreeSet<&str> = incoming.iter().map(|f| f.partition.as_str()).collect();
    current
        .iter()
        .filter(|f| match mode {
            PromotionMode::Append => true,
            PromotionMode::ReplacePartitions => !touched.contains(f.partition.as_str()),
            PromotionMode::ReplaceAll => false,
        })
        .cloned()
        .collect()
}

/// The next file set, sorted by partition then key.
pub fn next_files(current: &[ManifestFile], incoming: &[ManifestFile], mode: PromotionMode) -> Vec<ManifestFile> {
    let kept = kept_files(current, incoming, mode);
    let mut files: Vec<ManifestFile> =
        kept.iter().chain(incoming).cloned().collect::<BTreeSet<_>>().into_iter().collect();
    files.sort_by(|a, b| (&a.partition, &a.key).cmp(&(&b.partition, &b.key)));
    files
}

/// How `after` differs from `before`.
pub fn change(before: &[ManifestFile], after: &[ManifestFile]) -> Change {
    fn by_partition(files: &[ManifestFile]) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut map: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for f in files {
            map.entry(f.partition.as_str()).or_default().insert(f.key.as_str());
        }
        map
    }
    let (old, new) = (by_partition(before), by_partition(after));
    let mut change = Change { before: Totals::of(before), after: Totals::of(after), ..Change::default() };
    for partition in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let name = partition.to_string();
        match (old.get(partition), new.get(partition)) {
            (None, Some(_)) => change.partitions_added.push(name),
            (Some(_), None) => change.partitions_removed.push(name),
            (Some(o), Some(n)) if o == n => {}
            (Some(o), Some(n)) if o.is_subset(n) => change.partitions_extended.push(name),
            (Some(_), Some(_)) => change.partitions_replaced.push(name),
            (None, None) => {}
        }
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use PromotionMode::*;

    fn file(run: &str, partition: &str, part: u32, rows: u64) -> ManifestFile {
        ManifestFile {
            partition: partition.into(),
            key: format!("silver/tx/schema_v=v1/run_id={run}/{partition}/part-{part:05}.parquet"),
            run_id: run.into(),
            rows,
            bytes: rows * 10,
            sha256: format!("{run}{part}"),
        }
    }

    const JAN: &str = "year=2024/month=01";
    const FEB: &str = "year=2024/month=02";
    const MAR: &str = "year=2024/month=03";

    #[test]
    fn each_mode_gives_the_documented_file_set_and_change() {
        let current = vec![file("a", JAN, 0, 10), file("a", FEB, 1, 20)];
        let incoming = vec![file("b", FEB, 0, 5), file("b", MAR, 1, 7)];
        struct Case {
            mode: PromotionMode,
            current: Vec<ManifestFile>,
            files: Vec<(&'static str, &'static str)>,
            added: Vec<&'static str>,
            extended: Vec<&'static str>,
            replaced: Vec<&'static str>,
            removed: Vec<&'static str>,
            rows_after: u64,
        }
        let cases = [
            Case {
                mode: Append,
                current: current.clone(),
                files: vec![("a", JAN), ("a", FEB), ("b", FEB), ("b", MAR)],
                added: vec![MAR],
                extended: vec![FEB],
                replaced: vec![],
                removed: vec![],
                rows_after: 42,
            },
            Case {
                mode: ReplacePartitions,
                current: current.clone(),
                files: vec![("a", JAN), ("b", FEB), ("b", MAR)],
                added: vec![MAR],
                extended: vec![],
                replaced: vec![FEB],
                removed: vec![],
                rows_after: 22,
            },
            Case {
                mode: ReplaceAll,
                current: current.clone(),
                files: vec![("b", FEB), ("b", MAR)],
                added: vec![MAR],
                extended: vec![],
                replaced: vec![FEB],
                removed: vec![JAN],
                rows_after: 12,
            },
            Case {
                mode: Append,
                current: vec![],
                files: vec![("b", FEB), ("b", MAR)],
                added: vec![FEB, MAR],
                extended: vec![],
                replaced: vec![],
                removed: vec![],
                rows_after: 12,
            },
            Case {
                mode: ReplacePartitions,
                current: vec![],
                files: vec![("b", FEB), ("b", MAR)],
                added: vec![FEB, MAR],
                extended: vec![],
                replaced: vec![],
                removed: vec![],
                rows_after: 12,
            },
        ];
        for case in cases {
            let next = next_files(&case.current, &incoming, case.mode);
            let got: Vec<(&str, &str)> = next.iter().map(|f| (f.run_id.as_str(), f.partition.as_str())).collect();
            assert_eq!(got, case.files, "{:?}", case.mode);
            let change = change(&case.current, &next);
            assert_eq!(change.partitions_added, case.added, "{:?}", case.mode);
            assert_eq!(change.partitions_extended, case.extended, "{:?}", case.mode);
            assert_eq!(change.partitions_replaced, case.replaced, "{:?}", case.mode);
            assert_eq!(change.partitions_removed, case.removed, "{:?}", case.mode);
            assert_eq!(change.after.rows, case.rows_after, "{:?}", case.mode);
            assert_eq!(change.before.files, case.current.len() as u64);
        }
    }

    #[test]
    fn a_run_without_files_changes_nothing_and_a_repeat_is_not_duplicated() {
        let current = vec![file("a", JAN, 0, 10)];
        for mode in [Append, ReplacePartitions] {
            let next = next_files(&current, &[], mode);
            assert_eq!(next, current, "{mode:?}");
            assert_eq!(
                change(&current, &next),
                Change { before: Totals::of(&current), after: Totals::of(&current), ..Change::default() }
            );
        }
        assert!(next_files(&current, &[], ReplaceAll).is_empty());
        assert_eq!(next_files(&current, &current, Append), current, "the same file is listed once");
    }

    #[test]
    fn a_rollback_is_the_change_to_the_old_file_set() {
        let v1 = vec![file("a", JAN, 0, 10)];
        let v2 = next_files(&v1, &[file("b", JAN, 0, 3), file("b", FEB, 1, 4)], ReplacePartitions);
        let back = change(&v2, &v1);
        assert_eq!(back.partitions_replaced, vec![JAN]);
        assert_eq!(back.partitions_removed, vec![FEB]);
        assert_eq!((back.before.rows, back.after.rows), (7, 10));
        assert!(back.summary().contains("files 2 → 1"), "{}", back.summary());
        let months: Vec<ManifestFile> = (1..=12).map(|m| file("c", &format!("year=2024/month={m:02}"), 0, 1)).collect();
        let first = change(&[], &months).summary();
        assert!(first.ends_with("year=2024/month=06 … (+6 more)"), "{first}");
    }
}
