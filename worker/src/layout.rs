//! Where a run's objects go in the lake. Every path of the product's contract is spelled here, once.
//!
//! ```text
//! silver/{dataset}/schema_v={v}/run_id={id}/year=YYYY/month=MM/part-NNNNN.parquet
//! silver/{dataset}/schema_v={v}/run_id={id}/_SUCCESS               (written last)
//! silver/{dataset}/schema_v={v}/run_id={id}/_QUALITY_REPORT.json   (exit 5 only)
//! quarantine/{dataset}/schema_v={v}/run_id={id}/part-NNNNN.parquet
//! condemned/{dataset}/schema_v={v}/run_id={id}/part-NNNNN.parquet
//! ```

use object_store::path::Path;
use silverline_crds::names::{self, InvalidName};

pub const SUCCESS: &str = "_SUCCESS";
pub const QUALITY_REPORT: &str = "_QUALITY_REPORT.json";
pub const CIRCUIT_BREAKER_REPORT: &str = "_CIRCUIT_BREAKER.json";
/// Written with create-if-absent before any data, so that two workers can never share a run id.
pub const RUN_CLAIM: &str = "_RUN.json";

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

/// The paths of one run, relative to the lake root. Built only from checked names.
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
        parts.push(area.as_str().to_owned());
        parts.push(self.dataset.clone());
        parts.push(format!("schema_v={}", self.schema_version));
        parts.push(format!("run_id={}", self.run_id));
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

fn part_name(part: u32) -> String {
    format!("part-{part:05}.parquet")
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
    }

    #[test]
    fn unsafe_names_never_become_paths() {
        assert!(LakeLayout::new(Path::default(), "../x", "v1", "r").is_err());
        assert!(LakeLayout::new(Path::default(), "t", "v1/..", "r").is_err());
        assert!(LakeLayout::new(Path::default(), "t", "v1", "../../etc").is_err());
    }
}
