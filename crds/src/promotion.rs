//! The vocabulary of promotion shared by the Dataset contract, the `Promotion` resource, the worker's
//! `promote` command and the lake's pointer: how a promotion changes the dataset's current set of files.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a promotion changes the current set of files.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PromotionMode {
    /// The runs' files join the current set (incremental feeds, replays of corrected quarantine rows).
    #[default]
    Append,
    /// For every year/month partition the runs cover, that partition's current files are replaced by the runs'.
    ReplacePartitions,
    /// Current becomes exactly the runs' files (full-snapshot feeds).
    ReplaceAll,
}

impl PromotionMode {
    pub const ALL: [PromotionMode; 3] =
        [PromotionMode::Append, PromotionMode::ReplacePartitions, PromotionMode::ReplaceAll];

    /// The name in manifests and `_LATEST.json`: `Append`, `ReplacePartitions`, `ReplaceAll`.
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionMode::Append => "Append",
            PromotionMode::ReplacePartitions => "ReplacePartitions",
            PromotionMode::ReplaceAll => "ReplaceAll",
        }
    }

    /// The name on the command line: `append`, `replace-partitions`, `replace-all`.
    pub fn cli_name(self) -> &'static str {
        match self {
            PromotionMode::Append => "append",
            PromotionMode::ReplacePartitions => "replace-partitions",
            PromotionMode::ReplaceAll => "replace-all",
        }
    }

    /// Parses either spelling.
    pub fn parse(text: &str) -> Option<PromotionMode> {
        PromotionMode::ALL.into_iter().find(|m| m.as_str() == text || m.cli_name() == text)
    }
}

impl std::fmt::Display for PromotionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Dataset's promotion policy (`spec.promotion`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionPolicy {
    /// How promotions of this dataset change current unless a Promotion says otherwise (default `Append`).
    #[serde(default)]
    pub mode: PromotionMode,
    /// When true, the operator creates a Promotion awaiting approval for every EtlRun of this dataset that
    /// succeeds, so reviewers only have to approve.
    #[serde(default)]
    pub request_on_success: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_both_spellings_and_round_trip() {
        for mode in PromotionMode::ALL {
            assert_eq!(PromotionMode::parse(mode.as_str()), Some(mode));
            assert_eq!(PromotionMode::parse(mode.cli_name()), Some(mode));
            let json = serde_json::to_string(&mode).expect("serialize");
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
        }
        assert_eq!(PromotionMode::parse("replace"), None);
        assert_eq!(PromotionMode::default(), PromotionMode::Append);
    }
}
