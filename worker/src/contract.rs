//! The Dataset contract compiled for the hot path: column kinds, allowed values, patterns, key and partition
//! positions, the Arrow schema of silver, and how a CSV header maps onto the contract.

use crate::{Error, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use regex::bytes::Regex;
use silverline_crds::{ColumnType, Dataset, StorageSpec};
use std::collections::HashMap;
use std::sync::Arc;

/// Column names the quarantine and condemned files use for their own metadata; `Dataset::validate` refuses them.
pub use silverline_crds::RESERVED_COLUMNS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Decimal { precision: u8, scale: u8 },
    Timestamp,
    Date,
    Int64,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    pub required: bool,
    /// Allowed values; lists are short, so a scan beats hashing.
    pub allowed: Option<Vec<Box<[u8]>>>,
    pub allowed_display: Option<String>,
    pub pattern: Option<Regex>,
}

/// A validated, compiled contract.
#[derive(Debug, Clone)]
pub struct Contract {
    pub dataset: String,
    pub schema_version: String,
    pub columns: Vec<Column>,
    pub key_columns: Vec<usize>,
    pub partition_column: usize,
    pub max_quarantine_rate: f64,
    pub max_same_errors: u64,
    pub max_attempts: u32,
    pub storage: StorageSpec,
    pub silver_schema: SchemaRef,
}

impl Contract {
    pub fn compile(dataset: &Dataset) -> Result<Contract> {
        let bad = |e| Error::ContractUnsupported(format!("{e}"));
        dataset.validate().map_err(bad)?;
        let spec = &dataset.spec;
        let position = |name: &str| spec.columns.iter().position(|c| c.name == name);
        let mut columns = Vec::with_capacity(spec.columns.len());
        for c in &spec.columns {
            let kind = match c.column_type {
                ColumnType::String => Kind::String,
                ColumnType::Decimal => {
                    Kind::Decimal { precision: c.precision.unwrap_or_default(), scale: c.scale.unwrap_or_default() }
                }
                ColumnType::Timestamp => Kind::Timestamp,
                ColumnType::Date => Kind::Date,
                ColumnType::Int64 => Kind::Int64,
            };
            let pattern = match &c.pattern {
                Some(p) => Some(
                    Regex::new(p)
                        .map_err(|e| Error::ContractUnsupported(format!("spec.columns[{}].pattern: {e}", c.name)))?,
                ),
                None => None,
            };
            columns.push(Column {
                name: c.name.clone(),
                kind,
                required: c.required,
                allowed: c.allowed_values.as_ref().map(|v| v.iter().map(|s| s.as_bytes().into()).collect()),
                allowed_display: c.allowed_values.as_ref().map(|v| v.join(", ")),
                pattern,
            });
        }
        let key_columns = spec.primary_key.iter().filter_map(|k| position(k)).collect();
        let partition_column = position(&spec.partition_column)
            .ok_or_else(|| Error::ContractUnsupported("spec.partitionColumn is not a column".into()))?;
        let fields: Vec<Field> =
            columns.iter().map(|c| Field::new(&c.name, c.kind.arrow_type(), !c.required)).collect();
        Ok(Contract {
            dataset: dataset.checked_name().map_err(bad)?.to_owned(),
            schema_version: spec.schema_version.clone(),
            columns,
            key_columns,
            partition_column,
            max_quarantine_rate: spec.quality.max_quarantine_rate,
            max_same_errors: spec.circuit_breaker.max_same_errors,
            max_attempts: spec.max_attempts,
            storage: spec.storage.clone(),
            silver_schema: Arc::new(Schema::new(fields)),
        })
    }
}

impl Kind {
    pub fn arrow_type(self) -> DataType {
        match self {
            Kind::String => DataType::Utf8,
            Kind::Decimal { precision, scale } => DataType::Decimal128(precision, scale as i8),
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Date => DataType::Date32,
            Kind::Int64 => DataType::Int64,
        }
    }
}

/// Where each contract column sits in a source's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMap {
    /// `source_index[c]` is the position in the record of contract column `c`.
    pub source_index: Vec<usize>,
    pub field_count: usize,
    /// True when the source has the contract's own column order.
    pub identity: bool,
}

impl HeaderMap {
    /// Matches a header to the contract by name (after trimming). A missing, unexpected or repeated column is
    /// schema drift; the message lists each.
    pub fn match_header(contract: &Contract, header: &[String], line: u64) -> Result<HeaderMap, String> {
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut repeated = Vec::new();
        for (i, name) in header.iter().enumerate() {
            if by_name.insert(name.as_str(), i).is_some() {
                repeated.push(name.clone());
            }
        }
        let missing: Vec<&str> = contract
            .columns
            .iter()
            .filter(|c| !by_name.contains_key(c.name.as_str()))
            .map(|c| c.name.as_str())
            .collect();
        let unexpected: Vec<(usize, &str)> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| !contract.columns.iter().any(|c| &c.name == *h))
            .map(|(i, h)| (i + 1, h.as_str()))
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() || !repeated.is_empty() {
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!("missing column(s) {missing:?}"));
            }
            if !unexpected.is_empty() {
                let list: Vec<String> = unexpected.iter().map(|(i, h)| format!("{h:?} at column {i}")).collect();
                parts.push(format!("unexpected column(s) {}", list.join(", ")));
            }
            if !repeated.is_empty() {
                parts.push(format!("repeated column(s) {repeated:?}"));
            }
            return Err(format!("header line {line}: {}", parts.join("; ")));
        }
        let source_index: Vec<usize> = contract.columns.iter().map(|c| by_name[c.name.as_str()]).collect();
        let identity = source_index.iter().enumerate().all(|(i, s)| i == *s);
        Ok(HeaderMap { source_index, field_count: header.len(), identity })
    }

    pub fn identity(columns: usize) -> HeaderMap {
        HeaderMap { source_index: (0..columns).collect(), field_count: columns, identity: true }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use silverline_crds::side_columns as col;

    pub fn transactions() -> Contract {
        let text = include_str!("../../examples/datasets/transactions.yaml");
        Contract::compile(&Dataset::from_manifest(text).expect("example parses")).expect("compiles")
    }

    fn header(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_header_is_matched_by_name_in_any_order() {
        let c = transactions();
        let h = header(&["Currency", "TransactionID", "CustomerID", "TransactionTimestamp", "TransactionAmount"]);
        let map = HeaderMap::match_header(&c, &h, 1).expect("matches");
        assert_eq!(map.source_index, vec![1, 2, 4, 0, 3]);
        assert!(!map.identity);
    }

    #[test]
    fn drift_names_missing_and_unexpected_columns() {
        let c = transactions();
        let h = header(&["TransactionID", "CustomerID", "Amount", "Currency", "TransactionTimestamp"]);
        let err = HeaderMap::match_header(&c, &h, 1).expect_err("drift");
        assert!(err.contains("missing column(s) [\"TransactionAmount\"]"), "{err}");
        assert!(err.contains("\"Amount\" at column 3"), "{err}");
        let h = header(&[
            "TransactionID",
            "TransactionID",
            "CustomerID",
            "TransactionAmount",
            "Currency",
            "TransactionTimestamp",
        ]);
        assert!(HeaderMap::match_header(&c, &h, 1).expect_err("repeat").contains("repeated"));
    }

    #[test]
    fn reserved_names_cannot_be_contract_columns() {
        let text = include_str!("../../examples/datasets/transactions.yaml").replace("CustomerID", "error_type");
        // The contract itself refuses them now (so the Dataset's Valid condition does too); the worker keeps
        // its own check for a Dataset built without validation.
        assert!(matches!(Dataset::from_manifest(&text), Err(silverline_crds::ContractError::ReservedColumn(_))));
        let mut ds = Dataset::from_manifest(include_str!("../../examples/datasets/transactions.yaml")).expect("parses");
        ds.spec.columns[1].name = "error_type".into();
        assert!(Contract::compile(&ds).is_err());
        let mut ds = Dataset::from_manifest(include_str!("../../examples/datasets/transactions.yaml")).expect("parses");
        ds.spec.columns[1].name = col::RAW_RECORD_BYTES.into();
        let err = Contract::compile(&ds).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(col::RAW_RECORD_BYTES), "{err}");
        assert!(RESERVED_COLUMNS.contains(&col::RAW_RECORD_BYTES), "the contract's own list names every side column");
    }
}
