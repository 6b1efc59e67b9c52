//! Names that become paths in the lake or object keys. Every such name is checked here, once, before use.

use regex::Regex;
use std::sync::LazyLock;

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, at most 63 characters.
/// Used for dataset names, which become a path segment.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// A schema version such as `v1` or `v2`; becomes `schema_v=v1`.
pub const SCHEMA_VERSION_PATTERN: &str = "^v[0-9]{1,6}$";
/// A run id: letters, digits, '-', '_' and '.', not starting with '.' or '_', at most 64 characters; becomes
/// `run_id=…` and the start of each file name the run puts in `current/` (`{run_id}-part-…`), which engines skip
/// when it starts with '.' or '_' (hidden files).
pub const RUN_ID_PATTERN: &str = "^[A-Za-z0-9-][A-Za-z0-9._-]{0,63}$";

/// An S3 region name such as `eu-west-1` (or an S3-compatible store's, e.g. `garage`): lowercase alphanumerics in
/// groups joined by '-', at most 64 characters. The S3 client builds host names from it (`sts.{region}.amazonaws.com`,
/// `s3.{region}.amazonaws.com`), so anything else — a '/', '.', '#' or '@' — would send requests and web-identity
/// tokens to another host.
pub const REGION_PATTERN: &str = "^[a-z0-9]{1,20}(-[a-z0-9]{1,20}){0,5}$";
/// An S3 bucket name (the general-purpose rules): 3 to 63 lowercase alphanumerics, '-' and '.', starting and
/// ending alphanumeric; it becomes part of request URLs.
pub const BUCKET_PATTERN: &str = "^[a-z0-9][-a-z0-9.]{1,61}[a-z0-9]$";

static DNS_LABEL: LazyLock<Regex> = LazyLock::new(|| compile(DNS_LABEL_PATTERN));
static REGION: LazyLock<Regex> = LazyLock::new(|| compile(REGION_PATTERN));
static BUCKET: LazyLock<Regex> = LazyLock::new(|| compile(BUCKET_PATTERN));
static SCHEMA_VERSION: LazyLock<Regex> = LazyLock::new(|| compile(SCHEMA_VERSION_PATTERN));
static RUN_ID: LazyLock<Regex> = LazyLock::new(|| compile(RUN_ID_PATTERN));

#[allow(clippy::expect_used)] // the patterns are constants, covered by the tests below
fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("constant pattern compiles")
}

/// Why a name may not become part of a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: it must match {pattern}")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub pattern: &'static str,
}

fn check(re: &Regex, pattern: &'static str, what: &'static str, value: &str) -> Result<(), InvalidName> {
    if re.is_match(value) { Ok(()) } else { Err(InvalidName { what, value: value.to_owned(), pattern }) }
}

pub fn check_region(value: &str) -> Result<(), InvalidName> {
    check(&REGION, REGION_PATTERN, "S3 region", value)
}

pub fn check_bucket(value: &str) -> Result<(), InvalidName> {
    check(&BUCKET, BUCKET_PATTERN, "S3 bucket", value)
}

/// A Kubernetes namespace's name (a DNS label), e.g. in the operator's grants.
pub fn check_namespace(value: &str) -> Result<(), InvalidName> {
    check(&DNS_LABEL, DNS_LABEL_PATTERN, "namespace", value)
}

pub fn check_dataset_name(value: &str) -> Result<(), InvalidName> {
    check(&DNS_LABEL, DNS_LABEL_PATTERN, "dataset name", value)
}

pub fn check_schema_version(value: &str) -> Result<(), InvalidName> {
    check(&SCHEMA_VERSION, SCHEMA_VERSION_PATTERN, "schemaVersion", value)
}

pub fn check_run_id(value: &str) -> Result<(), InvalidName> {
    check(&RUN_ID, RUN_ID_PATTERN, "run id", value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_that_could_escape_a_path_are_rejected() {
        for bad in ["", "../x", "a/b", "A", "-a", "a-", "a.b", "a b", &"a".repeat(64)] {
            assert!(check_dataset_name(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["transactions", "a", "tx-2024", &"a".repeat(63)] {
            assert!(check_dataset_name(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn regions_and_buckets_cannot_name_another_host() {
        for ok in ["eu-west-1", "us-gov-west-1", "cn-north-1", "auto", "garage", "us-east-1"] {
            assert!(check_region(ok).is_ok(), "{ok}");
        }
        for bad in ["", "attacker.example/", "eu-west-1.evil.com", "a#b", "u@x", "EU-WEST-1", "-x", "x-", "a b", "x/"] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
        for ok in ["lake", "silverline-lake", "my.bucket.1", "abc"] {
            assert!(check_bucket(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "Lake", "a_b", "x#y", "evil.com/", "-lake", "lake-", "a@b", &"a".repeat(64)] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_ids_are_single_safe_segments() {
        for bad in ["", ".", "..", ".hidden", "_hidden", "a/b", "a b", "x=y", &"a".repeat(65)] {
            assert!(check_run_id(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["20240101T000000Z", "my-run_1", "r.2"] {
            assert!(check_run_id(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn schema_versions_look_like_v_and_a_number() {
        assert!(check_schema_version("v1").is_ok());
        assert!(check_schema_version("v12").is_ok());
        for bad in ["1", "v", "v1.0", "V1", "v1/..", ""] {
            assert!(check_schema_version(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
