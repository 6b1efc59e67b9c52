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
}
