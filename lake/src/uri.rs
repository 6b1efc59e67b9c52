//! Lake and input URIs: a local path, `file:///…` or `s3://bucket/prefix`.
//!
//! One rule for relative local paths, chosen by the caller: the worker and the CLI accept them (a laptop's
//! `--lake ./lake`) and resolve them against the working directory; the operator requires absolute paths,
//! because its working directory means nothing to the Jobs it starts.

use crate::error::StorageError;
use std::path::PathBuf;

/// Whether a relative local path is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelativePaths {
    /// Resolved against the working directory (worker, CLI).
    Accept,
    /// A usage error (operator).
    Reject,
}

/// A parsed lake or input URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeUri {
    Local(PathBuf),
    /// `prefix` has no leading or trailing `/`; it may be empty.
    S3 {
        bucket: String,
        prefix: String,
    },
}

/// Schemes whose `scheme:` without `//` is a typo, not a directory name.
const MISTYPED_SCHEMES: &[&str] = &["s3", "s3a", "s3n", "file", "gs", "http", "https"];

impl LakeUri {
    pub fn parse(uri: &str, relative: RelativePaths) -> Result<LakeUri, StorageError> {
        let usage = |detail: String| StorageError::usage(uri, detail);
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(usage("the URI names no bucket".into()));
            }
            return Ok(LakeUri::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() });
        }
        let local = match uri.strip_prefix("file://") {
            Some(rest) => rest,
            None => {
                if let Some((scheme, _)) = uri.split_once("://") {
                    return Err(usage(format!("scheme {scheme}:// is not supported; use a path, file:// or s3://")));
                }
                // `s3:/bucket` or `s3:bucket` would otherwise be a relative directory named `s3:`.
                if let Some((scheme, _)) = uri.split_once(':')
                    && MISTYPED_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str())
                {
                    return Err(usage(format!(
                        "not a URI ({scheme}: without //): write s3://bucket/prefix, file:///path or a path"
                    )));
                }
                uri
            }
        };
        if local.is_empty() {
            return Err(usage("an empty path was given".into()));
        }
        let path = PathBuf::from(local);
        if path.is_relative() && relative == RelativePaths::Reject {
            return Err(usage("the lake must be s3://, file:// or an absolute path".into()));
        }
        Ok(LakeUri::Local(path))
    }

    /// Whether this lake lies at or under `root`, by whole path segments: `s3://b/team` holds `s3://b/team` and
    /// `s3://b/team/x`, not `s3://b/teams`; a bucket's root holds every prefix in it. A lake or root with a `..`
    /// (or `.`) segment lies nowhere — `/allowed/../etc` is not under `/allowed` — so that such a name cannot
    /// reach out of a root; a local lake is compared as written (symbolic links are not resolved).
    pub fn is_within(&self, root: &LakeUri) -> bool {
        fn dotted<'a>(mut segments: impl Iterator<Item = &'a str>) -> bool {
            segments.any(|s| s == "." || s == "..")
        }
        match (self, root) {
            (LakeUri::S3 { bucket, prefix }, LakeUri::S3 { bucket: root_bucket, prefix: root_prefix }) => {
                let (segments, root_segments) = (prefix.split('/'), root_prefix.split('/'));
                if bucket != root_bucket || dotted(segments.clone()) || dotted(root_segments) {
                    return false;
                }
                root_prefix.is_empty()
                    || prefix == root_prefix
                    || prefix.strip_prefix(root_prefix.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
            (LakeUri::Local(path), LakeUri::Local(root_path)) => {
                use std::path::Component;
                let unsafe_part = |p: &std::path::Path| {
                    p.is_relative()
                        || p.to_str().is_none()
                        || p.to_str().is_some_and(|s| dotted(s.split('/')))
                        || p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
                };
                !unsafe_part(path) && !unsafe_part(root_path) && path.starts_with(root_path)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StorageErrorKind;

    #[test]
    fn uris_parse_by_scheme_and_relative_paths_follow_the_callers_rule() {
        let s3 = |b: &str, p: &str| Ok(LakeUri::S3 { bucket: b.into(), prefix: p.into() });
        let local = |p: &str| Ok(LakeUri::Local(PathBuf::from(p)));
        let cases: [(&str, RelativePaths, Result<LakeUri, StorageErrorKind>); 14] = [
            ("s3://b/p/q/", RelativePaths::Reject, s3("b", "p/q")),
            ("s3://b", RelativePaths::Reject, s3("b", "")),
            ("s3:///x", RelativePaths::Accept, Err(StorageErrorKind::Usage)),
            ("gs://b/x", RelativePaths::Accept, Err(StorageErrorKind::Usage)),
            ("file:///data/lake", RelativePaths::Reject, local("/data/lake")),
            ("/data/lake", RelativePaths::Reject, local("/data/lake")),
            ("./lake", RelativePaths::Accept, local("./lake")),
            ("./lake", RelativePaths::Reject, Err(StorageErrorKind::Usage)),
            ("file://lake", RelativePaths::Reject, Err(StorageErrorKind::Usage)),
            ("", RelativePaths::Accept, Err(StorageErrorKind::Usage)),
            ("s3:/b/x", RelativePaths::Accept, Err(StorageErrorKind::Usage)),
            ("S3:b/x", RelativePaths::Accept, Err(StorageErrorKind::Usage)),
            ("file:/data/lake", RelativePaths::Accept, Err(StorageErrorKind::Usage)),
            ("lake:2024/x", RelativePaths::Accept, local("lake:2024/x")),
        ];
        for (uri, relative, expected) in cases {
            let got = LakeUri::parse(uri, relative).map_err(|e| e.kind);
            assert_eq!(got, expected, "{uri:?} with {relative:?}");
        }
    }

    #[test]
    fn a_lake_is_within_a_root_by_whole_segments_and_never_through_dot_segments() {
        let parse = |uri: &str| LakeUri::parse(uri, RelativePaths::Accept).expect(uri);
        let cases = [
            ("s3://b/team", "s3://b/team", true),
            ("s3://b/team/x/y", "s3://b/team", true),
            ("s3://b/team/x", "s3://b/team/", true),
            ("s3://b/anything", "s3://b", true),
            ("s3://b", "s3://b", true),
            ("s3://b/teams", "s3://b/team", false),
            ("s3://b/tea", "s3://b/team", false),
            ("s3://b", "s3://b/team", false),
            ("s3://other/team", "s3://b/team", false),
            ("s3://bb/team", "s3://b", false),
            ("s3://b/team/../other", "s3://b/team", false),
            ("s3://b/team/./x", "s3://b/team", false),
            ("s3://b/x", "s3://b/team/..", false),
            ("/data/lakes/a", "/data/lakes", true),
            ("file:///data/lakes/a/", "/data/lakes", true),
            ("/data/lakes", "/data/lakes/", true),
            ("/data/lakesx", "/data/lakes", false),
            ("/data", "/data/lakes", false),
            ("/data/lakes/../../etc", "/data/lakes", false),
            ("/data/lakes/./a", "/data/lakes", false),
            ("./data/lakes/a", "./data/lakes", false),
            ("/data/lakes/a", "s3://data/lakes", false),
            ("s3://data/lakes", "/data/lakes", false),
        ];
        for (lake, root, expected) in cases {
            assert_eq!(parse(lake).is_within(&parse(root)), expected, "{lake} within {root}");
        }
    }
}
