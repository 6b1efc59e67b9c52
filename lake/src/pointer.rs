//! `silver/{dataset}/_LATEST.json`: the promotion pointer and the commit point of a promotion. It names the
//! current version and its manifest (with the manifest's SHA-256), who approved it and why. It is only ever
//! replaced conditionally on the version that was read (S3 `If-Match`; a local lake's lock-and-digest).

use crate::layout::DatasetLayout;
use crate::store::{Lake, ObjectVersion};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use silverline_crds::PromotionMode;

/// The Kubernetes `Promotion` that moved the pointer, when one did (`--promotion NAMESPACE/NAME/UID`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PromotionRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PromotionRef {
    /// Parses `NAMESPACE/NAME/UID`.
    pub fn parse(text: &str) -> Option<PromotionRef> {
        let mut parts = text.split('/');
        let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [namespace, name, uid].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(PromotionRef { namespace: namespace.into(), name: name.into(), uid: uid.into() })
    }
}

impl std::fmt::Display for PromotionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.name, self.uid)
    }
}

/// The content of `_LATEST.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestPointer {
    pub format: u32,
    pub dataset: String,
    /// The current version; the first promotion is 1.
    pub version: u64,
    /// Lake-relative key of the version's manifest, `silver/{dataset}/_manifests/{N}.json`.
    pub manifest: String,
    pub manifest_sha256: String,
    pub mode: PromotionMode,
    pub runs: Vec<String>,
    pub restored_version: Option<u64>,
    pub previous_version: Option<u64>,
    /// RFC 3339, UTC.
    pub promoted_at: String,
    pub approved_by: String,
    pub reason: String,
    pub promotion: Option<PromotionRef>,
}

/// Reads `_LATEST.json` and the version it was read at (for a conditional replace); `None` before the first
/// promotion.
pub async fn read_latest(lake: &Lake, dataset: &str) -> Result<Option<(LatestPointer, ObjectVersion)>> {
    let key = lake.path(&DatasetLayout::new(dataset)?.latest());
    let Some((bytes, version)) = lake.get_versioned(&key).await? else { return Ok(None) };
    let pointer: LatestPointer = serde_json::from_slice(&bytes).map_err(|source| Error::Format {
        uri: lake.uri_of(&key),
        what: "_LATEST.json",
        source,
    })?;
    if pointer.dataset != dataset {
        return Err(Error::Inconsistent {
            uri: lake.uri_of(&key),
            message: format!("the pointer is of dataset {:?}", pointer.dataset),
        });
    }
    Ok(Some((pointer, version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_refs_parse_exactly_three_parts() {
        let r = PromotionRef::parse("team-a/promote-1/0f1e").expect("valid");
        assert_eq!(r.to_string(), "team-a/promote-1/0f1e");
        for bad in ["a/b", "a/b/c/d", "a//c", ""] {
            assert!(PromotionRef::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_pointer_round_trips() {
        let pointer = LatestPointer {
            format: 1,
            dataset: "tx".into(),
            version: 3,
            manifest: "silver/tx/_manifests/3.json".into(),
            manifest_sha256: "ab".into(),
            mode: PromotionMode::ReplaceAll,
            runs: vec![],
            restored_version: Some(1),
            previous_version: Some(2),
            promoted_at: "2024-01-01T00:00:00Z".into(),
            approved_by: "jane".into(),
            reason: "bad data in v2".into(),
            promotion: PromotionRef::parse("ns/p/u"),
        };
        let json = serde_json::to_value(&pointer).expect("json");
        assert_eq!(json["mode"], "ReplaceAll");
        assert_eq!(json["promotion"]["uid"], "u");
        assert_eq!(serde_json::from_value::<LatestPointer>(json).expect("parse"), pointer);
    }
}
