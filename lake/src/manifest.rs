//! `silver/{dataset}/_manifests/{N}.json`: one immutable document per version of current — every file with
//! its partition, run, rows, bytes and SHA-256, and the totals. Written create-only; `current/_MANIFEST.json`
//! is a byte-for-byte copy of the current version's manifest.

use serde::{Deserialize, Serialize};
use silverline_crds::PromotionMode;

/// The version of the formats in this module, `"format": 1`.
pub const FORMAT: u32 = 1;

/// One file of a version. `key` is the lake-relative key of the run's original silver file (the copy under
/// `current/` is derived from it); files never move, so an old manifest stays restorable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ManifestFile {
    /// `year=YYYY/month=MM`
    pub partition: String,
    pub key: String,
    pub run_id: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl ManifestFile {
    /// The file's name in its run (`part-NNNNN.parquet`).
    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl Totals {
    pub fn of(files: &[ManifestFile]) -> Totals {
        Totals {
            files: files.len() as u64,
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
        }
    }
}

/// One version of the dataset's current set of files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub dataset: String,
    /// The dataset's `schemaVersion` when the version was made.
    pub schema_v: String,
    pub version: u64,
    pub previous_version: Option<u64>,
    pub mode: PromotionMode,
    /// The runs this promotion brought in (empty for a rollback).
    pub runs: Vec<String>,
    /// For a rollback: the version whose files this one repeats.
    #[serde(default)]
    pub restored_version: Option<u64>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Sorted by partition, then key.
    pub files: Vec<ManifestFile>,
    pub totals: Totals,
}

impl Manifest {
    /// The bytes as stored (pretty JSON); the pointer records their SHA-256.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Whether `other` describes the same change (everything but the creation time), e.g. an orphan left by a
    /// promoter that crashed before moving the pointer.
    pub fn same_change(&self, other: &Manifest) -> bool {
        Manifest { created_at: String::new(), ..self.clone() }
            == Manifest { created_at: String::new(), ..other.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_and_carries_its_format() {
        let files = vec![ManifestFile {
            partition: "year=2024/month=01".into(),
            key: "silver/tx/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet".into(),
            run_id: "r1".into(),
            rows: 10,
            bytes: 100,
            sha256: "ab".into(),
        }];
        let manifest = Manifest {
            format: FORMAT,
            dataset: "tx".into(),
            schema_v: "v1".into(),
            version: 1,
            previous_version: None,
            mode: PromotionMode::Append,
            runs: vec!["r1".into()],
            restored_version: None,
            created_at: "2024-01-01T00:00:00Z".into(),
            totals: Totals::of(&files),
            files,
        };
        let json: serde_json::Value = serde_json::from_slice(&manifest.to_bytes()).expect("json");
        assert_eq!(json["format"], 1);
        assert_eq!(json["mode"], "Append");
        assert_eq!(json["totals"]["rows"], 10);
        let back: Manifest = serde_json::from_value(json).expect("parse");
        assert_eq!(back, manifest);
        assert_eq!(back.files[0].file_name(), "part-00000.parquet");
    }
}
