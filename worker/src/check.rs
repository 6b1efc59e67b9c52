//! Checking one chunk of records against the contract: a pure function, run on several chunks in parallel.
//!
//! Each record gets an [`Outcome`]: the first error that applies (SCHEMA_ERROR, then NULL_VALUE_ERROR, then
//! each column's type and value checks in contract order), or valid with its key hash. Valid rows are appended
//! to typed Arrow columns at once, so a row is parsed exactly once. Exact duplicates and repeated keys depend on
//! earlier chunks and are decided later, in input order, by the ledger.

use crate::contract::{Contract, HeaderMap, Kind};
use crate::tokenize::RecordChunk;
use crate::values::{self, ErrorType, shown};
use arrow::array::{
    ArrayRef, BinaryBuilder, Date32Builder, Decimal128Builder, Int64Builder, StringArray, TimestampMicrosecondBuilder,
};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Why a row is not valid, naming the column.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub error_type: ErrorType,
    /// Contract index of the column at fault, if one is.
    pub column: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Passed every check; `key` is the 128-bit fingerprint of the trimmed primary-key values.
    Valid {
        key: u128,
    },
    Invalid(Box<RowError>),
}

/// A chunk after checking: its raw records (kept for quarantine and condemned rows), one hash and outcome per
/// record, and the tentatively valid rows as typed batches, one per partition (record order within each), each
/// owning its memory so that an encoder can hold it without holding the rest of the chunk.
pub struct CheckedChunk {
    pub raw: RecordChunk,
    pub hashes: Vec<u128>,
    /// Per record, the 128-bit fingerprint of its content — the trimmed values — which decides exact duplicates:
    /// rows that differ only in surrounding whitespace are the same row. See `content_hash`.
    pub contents: Vec<u128>,
    pub outcomes: Vec<Outcome>,
    /// (partition, rows), in partition order. A partition is months since year 0 (`year * 12 + month - 1`), UTC.
    pub valid: Vec<(u32, RecordBatch)>,
    /// When grouping reordered the rows: for each row of the concatenated `valid`, its index among the valid
    /// rows in record order.
    pub order: Option<Vec<u32>>,
    /// The primary key's columns: name and position in the record, to name a repeated key's value.
    pub key_fields: Vec<(String, usize)>,
}

impl CheckedChunk {
    /// The primary key of record `r` as text for a message, e.g. `TransactionID "T1"`.
    pub fn key_text(&self, r: usize) -> String {
        let start = self.raw.field_range(r).start;
        let parts: Vec<String> = self
            .key_fields
            .iter()
            .map(|(name, at)| format!("{name} {}", shown(values::trim(self.raw.field(start + at)))))
            .collect();
        parts.join(", ")
    }
}

/// Groups rows by partition, stably. Returns the groups and, unless the rows were already grouped, the order.
/// A chunk spans few partitions, so they are counted in a small vector, not a map.
pub fn group_by_partition(partitions: &[u32]) -> (Vec<(u32, usize)>, Option<Vec<u32>>) {
    let mut groups: Vec<(u32, usize)> = Vec::new();
    let mut sorted = true;
    let mut last: Option<usize> = None;
    for p in partitions {
        let at = match last {
            Some(i) if groups[i].0 == *p => i,
            _ => match groups.iter().position(|(q, _)| q == p) {
                Some(i) => {
                    sorted &= i + 1 == groups.len();
                    i
                }
                None => {
                    sorted &= groups.last().is_none_or(|(q, _)| q < p);
                    groups.push((*p, 0));
                    groups.len() - 1
                }
            },
        };
        groups[at].1 += 1;
        last = Some(at);
    }
    if sorted {
        return (groups, None);
    }
    groups.sort_unstable_by_key(|(p, _)| *p);
    let mut next: Vec<(u32, usize)> = Vec::with_capacity(groups.len());
    let mut at = 0;
    for (p, n) in &groups {
        next.push((*p, at));
        at += n;
    }
    let mut order = vec![0u32; partitions.len()];
    for (row, p) in partitions.iter().enumerate() {
        if let Ok(i) = next.binary_search_by_key(p, |(q, _)| *q) {
            order[next[i].1] = row as u32;
            next[i].1 += 1;
        }
    }
    (groups, Some(order))
}

/// The stable hash of a row: XXH3-128 over its field bytes (untrimmed, in contract column order), seeded with
/// the field lengths so that `a,bc` and `ab,c` differ. Replayed quarantine rows keep the hash they were given.
pub fn row_hash(fields: &[&[u8]], scratch: &mut Vec<u8>) -> u128 {
    scratch.clear();
    for field in fields {
        scratch.extend_from_slice(field);
    }
    xxh3_128_with_seed(scratch, row_seed(fields.iter().map(|f| f.len())))
}

/// The seed of a row hash: the fields' lengths, so that moving bytes from one field to the next changes it.
fn row_seed(lengths: impl Iterator<Item = usize>) -> u64 {
    lengths.fold(0xcbf2_9ce4_8422_2325, |seed, len| (seed ^ (len as u64 + 1)).wrapping_mul(0x0100_0000_01b3))
}

/// [`row_hash`] of record `r`'s fields in source order, which lie back to back in the chunk: no copy needed.
fn record_hash(raw: &RecordChunk, r: usize) -> u128 {
    xxh3_128_with_seed(raw.record_bytes(r), row_seed(raw.fields(r).map(<[u8]>::len)))
}

/// The content fingerprint of a row: [`row_hash`] of its trimmed values in contract order. When no value needed
/// trimming it equals the row hash, so the common row costs no second pass.
fn content_hash(hash: u128, fields: &[&[u8]], trimmed: &[&[u8]], scratch: &mut Vec<u8>) -> u128 {
    if fields.iter().zip(trimmed).all(|(f, t)| f.len() == t.len()) {
        return hash;
    }
    row_hash(trimmed, scratch)
}

/// Marks the content fingerprint of a record without per-column values (wrong field count), so that it differs
/// from a row's with values; such records compare by their trimmed fields in source order.
const NO_VALUES: u128 = 0x5c5c_a3a3_0f0f_7171_e1e1_2d2d_9696_b4b4;

/// Marks the content fingerprint of a record refused for how it was written (text after a closing quote): it
/// is the hash of its input bytes, so that it repeats only a record written the same way, never a valid row
/// that spells the same values otherwise (`"C1" ` is not `C1`).
const WRITTEN_FORM: u128 = 0x3e3e_c1c1_5a5a_8787_d2d2_4b4b_1e1e_f0f0;

/// The content fingerprint of a record refused for how it was written: its input bytes as the file has them
/// (its fields as csv-core read them, for a record read from a stream).
fn written_form_hash(raw: &RecordChunk, r: usize) -> u128 {
    let bytes = raw.input_bytes(r).unwrap_or_else(|| raw.record_bytes(r));
    xxh3_128_with_seed(bytes, row_seed(raw.fields(r).map(<[u8]>::len))) ^ WRITTEN_FORM
}

/// The 128-bit fingerprint of a row's primary key: [`row_hash`] of its trimmed values.
fn key_hash(contract: &Contract, trimmed: &[&[u8]], scratch: &mut Vec<u8>) -> u128 {
    let columns = &contract.key_columns;
    if let [c] = columns.as_slice() {
        return xxh3_128_with_seed(trimmed[*c], row_seed(std::iter::once(trimmed[*c].len())));
    }
    scratch.clear();
    for &c in columns {
        scratch.extend_from_slice(trimmed[c]);
    }
    xxh3_128_with_seed(scratch, row_seed(columns.iter().map(|&c| trimmed[c].len())))
}

enum ColumnBuilder {
    /// Text is collected as bytes and validated as UTF-8 once per chunk, not once per value.
    Str(BinaryBuilder),
    Dec(Decimal128Builder, u8, i8),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    Int(Int64Builder),
}

impl ColumnBuilder {
    fn new(kind: Kind, capacity: usize) -> ColumnBuilder {
        match kind {
            Kind::String => ColumnBuilder::Str(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            Kind::Decimal { precision, scale } => {
                ColumnBuilder::Dec(Decimal128Builder::with_capacity(capacity), precision, scale as i8)
            }
            Kind::Timestamp => ColumnBuilder::Ts(TimestampMicrosecondBuilder::with_capacity(capacity)),
            Kind::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            Kind::Int64 => ColumnBuilder::Int(Int64Builder::with_capacity(capacity)),
        }
    }

    fn append(&mut self, value: Parsed, text: &[u8]) {
        match (self, value) {
            (ColumnBuilder::Str(b), Parsed::Null) => b.append_null(),
            (ColumnBuilder::Dec(b, ..), Parsed::Null) => b.append_null(),
            (ColumnBuilder::Ts(b), Parsed::Null) => b.append_null(),
            (ColumnBuilder::Date(b), Parsed::Null) => b.append_null(),
            (ColumnBuilder::Int(b), Parsed::Null) => b.append_null(),
            (ColumnBuilder::Str(b), _) => b.append_value(text),
            (ColumnBuilder::Dec(b, ..), Parsed::Dec(v)) => b.append_value(v),
            (ColumnBuilder::Ts(b), Parsed::Int(v)) => b.append_value(v),
            (ColumnBuilder::Date(b), Parsed::Date(v)) => b.append_value(v),
            (ColumnBuilder::Int(b), Parsed::Int(v)) => b.append_value(v),
            (ColumnBuilder::Dec(b, ..), _) => b.append_null(),
            (ColumnBuilder::Ts(b), _) => b.append_null(),
            (ColumnBuilder::Date(b), _) => b.append_null(),
            (ColumnBuilder::Int(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            // Every value was checked to be UTF-8 before it was appended.
            ColumnBuilder::Str(mut b) => {
                Arc::new(StringArray::try_from_binary(b.finish()).unwrap_or_else(|e| unreachable_text(&e.to_string())))
            }
            ColumnBuilder::Dec(mut b, p, s) => {
                Arc::new(b.finish().with_precision_and_scale(p, s).unwrap_or_else(|_| unreachable_decimal()))
            }
            ColumnBuilder::Ts(mut b) => Arc::new(b.finish().with_timezone("UTC")),
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int(mut b) => Arc::new(b.finish()),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_text(message: &str) -> StringArray {
    panic!("text values are checked to be UTF-8 before they are appended: {message}")
}

// The contract guarantees 1 <= precision <= 38 and scale <= precision, which arrow accepts.
#[allow(clippy::panic)]
fn unreachable_decimal() -> arrow::array::Decimal128Array {
    panic!("contract validation admits only precision 1..=38 with scale <= precision")
}

#[derive(Clone, Copy)]
enum Parsed {
    Null,
    Text,
    Dec(i128),
    Int(i64),
    Date(i32),
}

/// Parses one trimmed, non-empty value of column `c`, then applies its allowed values and pattern.
fn check_value(contract: &Contract, c: usize, text: &[u8]) -> Result<Parsed, RowError> {
    let column = &contract.columns[c];
    let fail = |e: values::ValueError| RowError {
        error_type: e.error_type,
        column: Some(c),
        message: format!("column {}: {}", column.name, e.reason),
    };
    let parsed = match column.kind {
        Kind::String => Parsed::Text,
        Kind::Decimal { precision, scale } => Parsed::Dec(values::parse_decimal(text, precision, scale).map_err(fail)?),
        Kind::Timestamp => Parsed::Int(values::parse_timestamp_micros(text).map_err(fail)?),
        Kind::Date => Parsed::Date(values::parse_date_days(text).map_err(fail)?),
        Kind::Int64 => Parsed::Int(values::parse_int64(text).map_err(fail)?),
    };
    if let Some(allowed) = &column.allowed
        && !allowed.iter().any(|a| **a == *text)
    {
        return Err(RowError {
            error_type: ErrorType::Value,
            column: Some(c),
            message: format!(
                "column {}: {} is not one of {}",
                column.name,
                shown(text),
                column.allowed_display.as_deref().unwrap_or_default()
            ),
        });
    }
    if let Some(pattern) = &column.pattern
        && !pattern.is_match(text)
    {
        return Err(RowError {
            error_type: ErrorType::Value,
            column: Some(c),
            message: format!("column {}: {} does not match pattern {}", column.name, shown(text), pattern.as_str()),
        });
    }
    Ok(parsed)
}

fn schema_error(message: String, column: Option<usize>) -> Outcome {
    Outcome::Invalid(Box::new(RowError { error_type: ErrorType::Schema, column, message }))
}

/// Checks every record of `raw` whose source has the header `map`.
pub fn check_chunk(contract: &Contract, map: &HeaderMap, raw: RecordChunk) -> CheckedChunk {
    let n = raw.len();
    let width = contract.columns.len();
    let mut builders: Vec<ColumnBuilder> = contract.columns.iter().map(|c| ColumnBuilder::new(c.kind, n)).collect();
    let mut hashes = Vec::with_capacity(n);
    let mut contents = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut scratch = Vec::with_capacity(256);
    let mut fields: Vec<&[u8]> = Vec::with_capacity(width);
    let mut trimmed: Vec<&[u8]> = Vec::with_capacity(width);
    let mut parsed: Vec<Parsed> = Vec::with_capacity(width);
    let mut valid_rows = 0usize;
    // In record order, as the tokenizer found them.
    let mut quotes = raw.text_after_quote.iter().peekable();

    for r in 0..n {
        let range = raw.field_range(r);
        let replay = raw.replay.get(r);
        let field_count = range.len();
        let mismatch = replay.map_or(field_count != map.field_count, |m| !m.has_values);
        let after_quote = quotes.next_if(|(record, _)| *record == r).map(|(_, field)| *field);
        if mismatch {
            let hash = replay.map_or_else(|| record_hash(&raw, r), |m| m.row_hash);
            hashes.push(hash);
            contents.push(match replay {
                Some(_) => hash ^ NO_VALUES,
                None => {
                    trimmed.clear();
                    trimmed.extend(raw.fields(r).map(values::trim));
                    row_hash(&trimmed, &mut scratch) ^ NO_VALUES
                }
            });
            let message = match replay {
                Some(_) => {
                    "the quarantined row has no per-column values (wrong field count or undecodable bytes)".to_owned()
                }
                None => match raw.open_quote {
                    Some(q) if q.record == r => format!(
                        "expected {} fields, found {field_count}: the quote that opens field {} on line {} is never \
                         closed, so the rest of the input was read into that field",
                        map.field_count, q.field, q.line
                    ),
                    _ => format!("expected {} fields, found {field_count}", map.field_count),
                },
            };
            outcomes.push(schema_error(message, None));
            continue;
        }
        fields.clear();
        fields.extend(map.source_index.iter().map(|&s| raw.field(range.start + s)));
        let hash = match replay {
            Some(m) => m.row_hash,
            None if map.identity && map.field_count == width => record_hash(&raw, r),
            None => row_hash(&fields, &mut scratch),
        };
        hashes.push(hash);
        trimmed.clear();
        trimmed.extend(fields.iter().map(|f| values::trim(f)));
        // A replayed row keeps the hash it was first given, which need not be its values' hash.
        contents.push(match replay {
            Some(_) => row_hash(&trimmed, &mut scratch),
            None if after_quote.is_some() => written_form_hash(&raw, r),
            None => content_hash(hash, &fields, &trimmed, &mut scratch),
        });
        if let Some(field) = after_quote {
            let column = map.source_index.iter().position(|s| *s + 1 == field);
            let name =
                column.map_or_else(|| format!("field {field}"), |c| format!("column {}", contract.columns[c].name));
            let message = format!(
                "{name}: text after the closing quote (as in \"C1\"x); quote the whole value or none of it — it is \
                 not joined to the quoted text"
            );
            outcomes.push(schema_error(message, column));
            continue;
        }
        let ascii = raw.record_bytes(r).is_ascii();
        if let Some((c, err)) = (!ascii)
            .then(|| fields.iter().enumerate().find_map(|(c, f)| std::str::from_utf8(f).err().map(|e| (c, e))))
            .flatten()
        {
            let message = format!(
                "column {}: bytes that are not valid UTF-8 at byte {} of the value",
                contract.columns[c].name,
                err.valid_up_to() + 1
            );
            outcomes.push(schema_error(message, Some(c)));
            continue;
        }
        if let Some(c) = (0..width).find(|&c| contract.columns[c].required && trimmed[c].is_empty()) {
            outcomes.push(Outcome::Invalid(Box::new(RowError {
                error_type: ErrorType::NullValue,
                column: Some(c),
                message: format!("column {}: a value is required but the field is empty", contract.columns[c].name),
            })));
            continue;
        }
        parsed.clear();
        let mut failure = None;
        for (c, text) in trimmed.iter().enumerate() {
            if text.is_empty() {
                parsed.push(Parsed::Null);
                continue;
            }
            match check_value(contract, c, text) {
                Ok(p) => parsed.push(p),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            outcomes.push(Outcome::Invalid(Box::new(e)));
            continue;
        }
        for (c, builder) in builders.iter_mut().enumerate() {
            builder.append(parsed[c], trimmed[c]);
        }
        if let Parsed::Int(micros) = parsed[contract.partition_column] {
            let (year, month) = values::year_month_of_micros(micros);
            partitions.push((year.max(0) as u32) * 12 + month - 1);
        }
        outcomes.push(Outcome::Valid { key: key_hash(contract, &trimmed, &mut scratch) });
        valid_rows += 1;
    }
    debug_assert_eq!(partitions.len(), valid_rows);
    let columns: Vec<ArrayRef> = builders.into_iter().map(ColumnBuilder::finish).collect();
    let valid = RecordBatch::try_new(contract.silver_schema.clone(), columns)
        .unwrap_or_else(|e| unreachable_batch(&e.to_string()));
    let (groups, order) = group_by_partition(&partitions);
    let valid = match groups.as_slice() {
        [] => Vec::new(),
        [(p, _)] => vec![(*p, valid)],
        _ => {
            let in_record_order: Vec<u32>;
            let indices: &[u32] = match &order {
                Some(order) => order,
                None => {
                    in_record_order = (0..valid.num_rows() as u32).collect();
                    &in_record_order
                }
            };
            let mut at = 0;
            groups
                .iter()
                .map(|(p, n)| {
                    let rows = arrow::array::UInt32Array::from(indices[at..at + n].to_vec());
                    at += n;
                    let part = arrow::compute::take_record_batch(&valid, &rows)
                        .unwrap_or_else(|e| unreachable_batch(&e.to_string()));
                    (*p, part)
                })
                .collect()
        }
    };
    let key_fields =
        contract.key_columns.iter().map(|&c| (contract.columns[c].name.clone(), map.source_index[c])).collect();
    CheckedChunk { raw, hashes, contents, outcomes, valid, order, key_fields }
}

// Every column builder gets exactly one value per valid row, of the schema's own type.
#[allow(clippy::panic)]
fn unreachable_batch(message: &str) -> RecordBatch {
    panic!("checked columns always match the silver schema: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::tests::transactions;
    use crate::tokenize::CsvTokenizer;

    const HEADER: &str = "TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp\n";

    fn outcome_of(row: &str) -> Result<(), (ErrorType, String)> {
        let contract = transactions();
        let text = format!("{HEADER}{row}\n");
        let mut t = CsvTokenizer::new(text.as_bytes());
        t.read_header().expect("header");
        let chunk = t.next_chunk(0, 1, 10, 1 << 16).expect("reads").expect("a record");
        let checked = check_chunk(&contract, &HeaderMap::identity(5), chunk);
        match &checked.outcomes[0] {
            Outcome::Valid { .. } => Ok(()),
            Outcome::Invalid(e) => Err((e.error_type, e.message.clone())),
        }
    }

    fn error_of(row: &str) -> ErrorType {
        outcome_of(row).expect_err(row).0
    }

    #[test]
    fn a_good_row_is_valid_after_trimming() {
        assert_eq!(outcome_of("T1,C1,12.50,EUR,2024-01-15T10:00:00Z"), Ok(()));
        assert_eq!(outcome_of("  T1 , C1 ,  -3 ,USD , 2024-01-15T10:00:00+02:00 "), Ok(()));
        assert_eq!(outcome_of("\"T,1\",C1,1.5,JPY,2024-02-29T00:00:00"), Ok(()));
    }

    #[test]
    fn each_error_type_is_assigned() {
        assert_eq!(error_of("T1,C1,12.50,EUR"), ErrorType::Schema);
        assert_eq!(error_of("T1,C1,12.50,EUR,2024-01-15T10:00:00Z,extra"), ErrorType::Schema);
        assert_eq!(error_of("T1,,12.50,EUR,2024-01-15T10:00:00Z"), ErrorType::NullValue);
        assert_eq!(error_of("T1,C1,   ,EUR,2024-01-15T10:00:00Z"), ErrorType::NullValue);
        assert_eq!(error_of("T1,C1,12.505,EUR,2024-01-15T10:00:00Z"), ErrorType::Type);
        assert_eq!(error_of("T1,C1,\"1,000.00\",EUR,2024-01-15T10:00:00Z"), ErrorType::Type);
        assert_eq!(error_of("T1,C1,1e3,EUR,2024-01-15T10:00:00Z"), ErrorType::Type);
        assert_eq!(error_of("T1,C1,12.50,eur,2024-01-15T10:00:00Z"), ErrorType::Value);
        assert_eq!(error_of("T1,C1,12.50,XYZ,2024-01-15T10:00:00Z"), ErrorType::Value);
        assert_eq!(error_of("T1,C1,12.50,EUR,2024-01-15 10:00:00"), ErrorType::Timestamp);
        assert_eq!(error_of("T1,C1,12.50,EUR,2023-02-29T10:00:00Z"), ErrorType::Timestamp);
    }

    #[test]
    fn the_first_applicable_error_wins() {
        // A null in a later column beats a type error in an earlier one.
        assert_eq!(error_of("T1,C1,abc,EUR,"), ErrorType::NullValue);
        // Type checks run in contract column order.
        assert_eq!(error_of("T1,C1,abc,XXX,bad"), ErrorType::Type);
        assert_eq!(error_of("T1,C1,1.00,XXX,bad"), ErrorType::Value);
    }

    #[test]
    fn messages_name_the_column_and_value() {
        let (_, message) = outcome_of("T1,C1,12.50,eur,2024-01-15T10:00:00Z").expect_err("invalid");
        assert!(message.contains("column Currency") && message.contains("\"eur\""), "{message}");
        let (_, message) = outcome_of("T1,C1,12.50,EUR").expect_err("invalid");
        assert!(message.contains("expected 5 fields, found 4"), "{message}");
    }

    #[test]
    fn undecodable_bytes_are_a_schema_error_naming_the_column() {
        let contract = transactions();
        let mut chunk = RecordChunk::new(0, 1);
        let row: [&[u8]; 5] = [b"T1", b"C\xff1", b"1.00", b"EUR", b"2024-01-15T10:00:00Z"];
        assert_eq!(chunk.push_record(row, 2), Ok(()));
        let checked = check_chunk(&contract, &HeaderMap::identity(5), chunk);
        match &checked.outcomes[0] {
            Outcome::Invalid(e) => {
                assert_eq!(e.error_type, ErrorType::Schema);
                assert!(e.message.contains("column CustomerID"), "{}", e.message);
            }
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    #[test]
    fn grouping_by_partition_is_stable() {
        assert_eq!(group_by_partition(&[]), (vec![], None));
        assert_eq!(group_by_partition(&[3, 3, 5]), (vec![(3, 2), (5, 1)], None));
        assert_eq!(group_by_partition(&[5, 3, 5, 3]), (vec![(3, 2), (5, 2)], Some(vec![1, 3, 0, 2])));
        assert_eq!(group_by_partition(&[3, 3, 5, 3]), (vec![(3, 3), (5, 1)], Some(vec![0, 1, 3, 2])));
        assert_eq!(group_by_partition(&[5, 5, 3]), (vec![(3, 1), (5, 2)], Some(vec![2, 0, 1])));
    }

    #[test]
    fn row_hashes_separate_fields() {
        let mut s = Vec::new();
        assert_ne!(row_hash(&[b"a", b"bc"], &mut s), row_hash(&[b"ab", b"c"], &mut s));
        assert_eq!(row_hash(&[b"a", b"bc"], &mut s), row_hash(&[b"a", b"bc"], &mut s));
    }

    #[test]
    fn a_record_hashes_like_its_fields() {
        let mut chunk = RecordChunk::new(0, 1);
        assert_eq!(chunk.push_record([&b"x"[..], b"yz"], 2), Ok(()));
        assert_eq!(chunk.push_record([&b""[..], b"a", b"bc", b""], 3), Ok(()));
        let mut s = Vec::new();
        assert_eq!(record_hash(&chunk, 0), row_hash(&[b"x", b"yz"], &mut s));
        assert_eq!(record_hash(&chunk, 1), row_hash(&[b"", b"a", b"bc", b""], &mut s));
        assert_ne!(record_hash(&chunk, 1), row_hash(&[b"a", b"bc"], &mut s));
    }
}
