//! Where everything goes in the lake. Every path and marker name of the product's contract is spelled here, once.
//!
//! ```text
//! silver/{dataset}/schema_v={v}/run_id={id}/year=YYYY/month=MM/part-NNNNN.parquet
//! silver/{dataset}/schema_v={v}/run_id={id}/_RUN.json              (run-id claim, create-if-absent)
//! silver/{dataset}/schema_v={v}/run_id={id}/_SUCCESS               (written last)
//! silver/{dataset}/schema_v={v}/run_id={id}/_QUALITY_REPORT.json   (exit 5 only)
//! silver/{dataset}/schema_v={v}/run_id={id}/_CIRCUIT_BREAKER.json  (exit 4 only)
//! quarantine/{dataset}/schema_v={v}/run_id={id}/part-NNNNN.parquet
//! condemned/{dataset}/schema_v={v}/run_id={id}/part-NNNNN.parquet
//! silver/{dataset}/_LATEST.json                                    (the promotion pointer, the commit point)
//! silver/{dataset}/_manifests/{N}.json                             (immutable, one per version)
//! silver/{dataset}/current/year=YYYY/month=MM/{run_id}-part-NNNNN.parquet
//! silver/{dataset}/current/_MANIFEST.json                          (written after the copies)
//! audit/{dataset}/{YYYYMMDDTHHMMSS.ffffffZ}-{result}-{unique}.json (create-only)
//! ```

use object_store::path::Path;
use silverline_crds::names::{self, InvalidName};

pub const SUCCESS: &str = "_SUCCESS";
pub const QUALITY_REPORT: &str = "_QUALITY_REPORT.json";
pub const CIRCUIT_BREAKER_REPORT: &str = "_CIRCUIT_BREAKER.json";
/// Written with create-if-absent before any data, so that two workers can never share a run id.
pub const RUN_CLAIM: &str = "_RUN.json";
pub const LATEST: &str = "_LATEST.json";
pub const MANIFESTS_DIR: &str = "_manifests";
pub const CURRENT_DIR: &str = "current";
pub const CURRENT_MANIFEST: &str = "_MANIFEST.json";
pub const AUDIT_DIR: &str = "audit";

/// The three areas of the lake a run writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Silver,
    Quarantine,
    Condemned,
}

impl Area {
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Silver => "silver",
            Area::Quarantine => "quarantine",
            Area::Condemned => "condemned",
        }
    }
}

/// The paths of one run, in the store (under the lake root `root`). Built only from checked names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeLayout {
    root: Path,
    dataset: String,
    schema_version: String,
    run_id: String,
}

impl LakeLayout {
    pub fn new(root: Path, dataset: &str, schema_version: &str, run_id: &str) -> Result<LakeLayout, InvalidName> {
        names::check_dataset_name(dataset)?;
        names::check_schema_version(schema_version)?;
        names::check_run_id(run_id)?;
        Ok(LakeLayout {
            root,
            dataset: dataset.to_owned(),
            schema_version: schema_version.to_owned(),
            run_id: run_id.to_owned(),
        })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// `{area}/{dataset}/schema_v={v}/run_id={id}`
    pub fn run_prefix(&self, area: Area) -> Path {
        let mut parts: Vec<String> = self.root.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend(run_prefix(area, &self.dataset, &self.schema_version, &self.run_id).split('/').map(str::to_owned));
        Path::from_iter(parts)
    }

    pub fn silver_part(&self, year: i32, month: u32, part: u32) -> Path {
        self.run_prefix(Area::Silver)
            .join(format!("year={year:04}"))
            .join(format!("month={month:02}"))
            .join(part_name(part))
    }

    pub fn side_part(&self, area: Area, part: u32) -> Path {
        self.run_prefix(area).join(part_name(part))
    }

    pub fn marker(&self, name: &str) -> Path {
        self.run_prefix(Area::Silver).join(name)
    }
}

/// `{area}/{dataset}/schema_v={v}/run_id={id}`, lake-relative; the names must have been checked.
fn run_prefix(area: Area, dataset: &str, schema_version: &str, run_id: &str) -> String {
    format!("{}/{dataset}/schema_v={schema_version}/run_id={run_id}", area.as_str())
}

/// `year=YYYY/month=MM`
pub fn partition_name(year: i32, month: u32) -> String {
    format!("year={year:04}/month={month:02}")
}

/// Whether a text is a partition name as written by the worker (`year=YYYY/month=MM`, month 01–12).
pub fn is_partition_name(text: &str) -> bool {
    let Some((year, month)) = text.split_once('/') else { return false };
    let digits = |s: Option<&str>, n: usize| s.is_some_and(|s| s.len() == n && s.bytes().all(|b| b.is_ascii_digit()));
    let month_value = month.strip_prefix("month=");
    digits(year.strip_prefix("year="), 4)
        && digits(month_value, 2)
        && month_value.and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| (1..=12).contains(&m))
}

fn part_name(part: u32) -> String {
    format!("part-{part:05}.parquet")
}

/// Whether a text is a part file's name as written by the worker (`part-NNNNN.parquet`).
pub fn is_part_name(text: &str) -> bool {
    text.strip_prefix("part-")
        .and_then(|n| n.strip_suffix(".parquet"))
        .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The lake-relative keys of one dataset's promotion state. Built only from a checked dataset name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetLayout {
    dataset: String,
}

impl DatasetLayout {
    pub fn new(dataset: &str) -> Result<DatasetLayout, InvalidName> {
        names::check_dataset_name(dataset)?;
        Ok(DatasetLayout { dataset: dataset.to_owned() })
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// `{area}/{dataset}`
    pub fn area(&self, area: Area) -> String {
        format!("{}/{}", area.as_str(), self.dataset)
    }

    /// `{area}/{dataset}/schema_v={v}/run_id={id}`, from checked names.
    pub fn run_prefix(&self, area: Area, schema_version: &str, run_id: &str) -> Result<String, InvalidName> {
        names::check_schema_version(schema_version)?;
        names::check_run_id(run_id)?;
        Ok(run_prefix(area, &self.dataset, schema_version, run_id))
    }

    /// `silver/{dataset}/_LATEST.json`
    pub fn latest(&self) -> String {
        format!("silver/{}/{LATEST}", self.dataset)
    }

    /// `silver/{dataset}/_manifests`
    pub fn manifests(&self) -> String {
        format!("silver/{}/{MANIFESTS_DIR}", self.dataset)
    }

    /// `silver/{dataset}/_manifests/{N}.json`
    pub fn manifest(&self, version: u64) -> String {
        format!("{}/{version}.json", self.manifests())
    }

    /// `silver/{dataset}/current`
    pub fn current(&self) -> String {
        format!("silver/{}/{CURRENT_DIR}", self.dataset)
    }

    /// `silver/{dataset}/current/_MANIFEST.json`
    pub fn current_manifest(&self) -> String {
        format!("{}/{CURRENT_MANIFEST}", self.current())
    }

    /// `silver/{dataset}/current/{partition}/{run_id}-{file name}`, for a checked run id and partition.
    pub fn current_file(&self, partition: &str, run_id: &str, file_name: &str) -> Result<String, InvalidName> {
        names::check_run_id(run_id)?;
        let bad = |what: &'static str, value: &str| InvalidName {
            what,
            value: value.to_owned(),
            pattern: "year=YYYY/month=MM and part-NNNNN.parquet",
        };
        if !is_partition_name(partition) {
            return Err(bad("partition", partition));
        }
        if file_name.contains('/') || !file_name.ends_with(".parquet") || file_name.starts_with('.') {
            return Err(bad("file name", file_name));
        }
        Ok(format!("{}/{partition}/{run_id}-{file_name}", self.current()))
    }

    /// Whether `key` is a silver file of this dataset's run `run_id` in `partition`, as the worker writes them:
    /// `silver/{dataset}/schema_v={v}/run_id={run_id}/{partition}/part-NNNNN.parquet`, every name valid.
    pub fn is_run_file(&self, key: &str, run_id: &str, partition: &str) -> bool {
        let Some(rest) = key.strip_prefix(&format!("{}/schema_v=", self.area(Area::Silver))) else { return false };
        let Some((schema_version, rest)) = rest.split_once('/') else { return false };
        names::check_schema_version(schema_version).is_ok()
            && names::check_run_id(run_id).is_ok()
            && is_partition_name(partition)
            && rest.strip_prefix(&format!("run_id={run_id}/{partition}/")).is_some_and(is_part_name)
    }

    /// `audit/{dataset}`
    pub fn audit(&self) -> String {
        format!("{AUDIT_DIR}/{}", self.dataset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let l = LakeLayout::new(Path::from("lake/root"), "transactions", "v1", "20240101T000000Z").expect("valid");
        assert_eq!(
            l.silver_part(2024, 2, 0).as_ref(),
            "lake/root/silver/transactions/schema_v=v1/run_id=20240101T000000Z/year=2024/month=02/part-00000.parquet"
        );
        assert_eq!(
            l.side_part(Area::Quarantine, 3).as_ref(),
            "lake/root/quarantine/transactions/schema_v=v1/run_id=20240101T000000Z/part-00003.parquet"
        );
        assert_eq!(
            l.marker(SUCCESS).as_ref(),
            "lake/root/silver/transactions/schema_v=v1/run_id=20240101T000000Z/_SUCCESS"
        );
        let bare = LakeLayout::new(Path::default(), "t", "v2", "r").expect("valid");
        assert_eq!(bare.run_prefix(Area::Condemned).as_ref(), "condemned/t/schema_v=v2/run_id=r");
        let d = DatasetLayout::new("t").expect("valid");
        assert_eq!(d.latest(), "silver/t/_LATEST.json");
        assert_eq!(d.manifest(12), "silver/t/_manifests/12.json");
        assert_eq!(d.current_manifest(), "silver/t/current/_MANIFEST.json");
        assert_eq!(
            d.current_file("year=2024/month=01", "r1", "part-00000.parquet").expect("valid"),
            "silver/t/current/year=2024/month=01/r1-part-00000.parquet"
        );
        assert_eq!(d.audit(), "audit/t");
    }

    #[test]
    fn unsafe_names_never_become_paths() {
        assert!(LakeLayout::new(Path::default(), "../x", "v1", "r").is_err());
        assert!(LakeLayout::new(Path::default(), "t", "v1/..", "r").is_err());
        assert!(LakeLayout::new(Path::default(), "t", "v1", "../../etc").is_err());
        assert!(DatasetLayout::new("../t").is_err());
        let d = DatasetLayout::new("t").expect("valid");
        assert!(d.run_prefix(Area::Silver, "v1", "a/../../b").is_err());
        for (partition, run, file) in [
            ("year=2024/month=13", "r", "part-00000.parquet"),
            ("year=2024/../month=01", "r", "part-00000.parquet"),
            ("year=2024/month=01", "../r", "part-00000.parquet"),
            ("year=2024/month=01", "r", "../../x.parquet"),
            ("year=2024/month=01", "r", "_LATEST.json"),
        ] {
            assert!(d.current_file(partition, run, file).is_err(), "{partition} {run} {file}");
        }
    }

    #[test]
    fn partition_names_are_exactly_year_and_month() {
        for good in ["year=2024/month=01", "year=0001/month=12"] {
            assert!(is_partition_name(good), "{good}");
        }
        for bad in ["year=2024/month=00", "year=24/month=01", "year=2024/month=1", "year=2024", "month=01/year=2024"] {
            assert!(!is_partition_name(bad), "{bad}");
        }
    }
}
