//! Replaying a quarantine run: its part files are read back as records in contract column order, keeping each
//! row's lineage, hash and attempt count, so the ledger can revalidate them and condemn those out of attempts.

use crate::contract::Contract;
use crate::input::{InputObject, read_error};
use crate::tokenize::{RecordChunk, ReplayMeta};
use crate::{Error, Result};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, UInt32Type, UInt64Type};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use silverline_crds::side_columns as col;
use std::io::Read;
use tokio::runtime::Handle;

/// The checksum of an object, filled once it has been read to its end.
pub type ChecksumSlot = std::sync::Arc<std::sync::Mutex<Option<crate::input::Checksum>>>;

/// Reads a whole quarantine part file, with the checksum of what was read.
fn fetch(input: &InputObject, handle: &Handle) -> Result<(Bytes, ChecksumSlot)> {
    let mut open = input.open(handle, None)?;
    let mut buf = Vec::with_capacity(input.size as usize);
    open.reader.read_to_end(&mut buf).map_err(|e| read_error(e, &input.uri))?;
    Ok((Bytes::from(buf), open.checksum))
}

fn drift(input: &InputObject, message: String) -> Error {
    Error::SchemaDrift { source_uri: input.uri.clone(), message }
}

const META: [(&str, DataType); 6] = [
    (col::RAW_RECORD, DataType::Utf8),
    (col::SOURCE_URI, DataType::Utf8),
    (col::RECORD_NUMBER, DataType::UInt64),
    (col::LINE_NUMBER, DataType::UInt64),
    (col::ATTEMPT_COUNT, DataType::UInt32),
    (col::ROW_HASH, DataType::Utf8),
];

fn open_reader(
    input: &InputObject,
    contract: &Contract,
    handle: &Handle,
) -> Result<(parquet::arrow::arrow_reader::ParquetRecordBatchReader, ChecksumSlot)> {
    let (bytes, checksum) = fetch(input, handle)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| Error::undecodable(&input.uri, "not a Parquet file", e))?;
    let schema = builder.schema().clone();
    if schema.field_with_name(col::CONDEMNED_REASON).is_ok() {
        // A condemned row is terminal (an exact duplicate, or out of attempts): replaying it would load it again.
        return Err(Error::Usage(format!(
            "{}: a condemned part file (it has column {}): condemned rows are terminal and never replayed; give a \
             quarantine run's path (quarantine/DATASET/schema_v=…/run_id=…/)",
            input.uri,
            col::CONDEMNED_REASON
        )));
    }
    let expected = contract.columns.iter().map(|c| (c.name.as_str(), DataType::Utf8)).chain(META);
    for (name, data_type) in expected {
        match schema.field_with_name(name) {
            Ok(f) if *f.data_type() == data_type => {}
            Ok(f) => return Err(drift(input, format!("column {name} is {}, expected {data_type}", f.data_type()))),
            Err(_) => {
                return Err(drift(input, format!("not a quarantine file of this contract: column {name} is missing")));
            }
        }
    }
    // Quarantine files written before the column existed have no raw_record_bytes: they held text only.
    match schema.field_with_name(col::RAW_RECORD_BYTES) {
        Ok(f) if *f.data_type() != DataType::Binary => {
            return Err(drift(
                input,
                format!("column {} is {}, expected Binary", col::RAW_RECORD_BYTES, f.data_type()),
            ));
        }
        _ => {}
    }
    let reader = builder
        .with_batch_size(16 * 1024)
        .build()
        .map_err(|e| Error::undecodable(&input.uri, "cannot start its Parquet reader", e))?;
    Ok((reader, checksum))
}

/// Checks that the object is a quarantine file of this contract, before anything is written.
pub fn preflight(input: &InputObject, contract: &Contract, handle: &Handle) -> Result<()> {
    open_reader(input, contract, handle).map(|_| ())
}

/// Reads a quarantine file as chunks of replayed records, with the checksum of the object.
pub fn read_chunks(
    input: &InputObject,
    source: usize,
    contract: &Contract,
    handle: &Handle,
) -> Result<(Vec<RecordChunk>, ChecksumSlot)> {
    let (reader, checksum) = open_reader(input, contract, handle)?;
    let mut chunks = Vec::new();
    let mut first = 1;
    for batch in reader {
        let batch = batch.map_err(|e| Error::undecodable(&input.uri, "a Parquet row group is not readable", e))?;
        let chunk = to_chunk(&batch, source, first, contract, input)?;
        first += chunk.len() as u64;
        chunks.push(chunk);
    }
    Ok((chunks, checksum))
}

fn to_chunk(
    batch: &RecordBatch,
    source: usize,
    first: u64,
    contract: &Contract,
    input: &InputObject,
) -> Result<RecordChunk> {
    let column =
        |name: &str| batch.column_by_name(name).ok_or_else(|| drift(input, format!("column {name} is missing")));
    let values: Vec<_> = contract
        .columns
        .iter()
        .map(|c| column(&c.name).map(|a| a.as_string::<i32>().clone()))
        .collect::<Result<_>>()?;
    let raw_record = column(col::RAW_RECORD)?.as_string::<i32>().clone();
    let source_uri = column(col::SOURCE_URI)?.as_string::<i32>().clone();
    let record_number = column(col::RECORD_NUMBER)?.as_primitive::<UInt64Type>().clone();
    let line_number = column(col::LINE_NUMBER)?.as_primitive::<UInt64Type>().clone();
    let attempt = column(col::ATTEMPT_COUNT)?.as_primitive::<UInt32Type>().clone();
    let row_hash = column(col::ROW_HASH)?.as_string::<i32>().clone();
    let previous_error = batch.column_by_name(col::ERROR_TYPE).and_then(|a| a.as_string_opt::<i32>().cloned());
    let raw_bytes = batch.column_by_name(col::RAW_RECORD_BYTES).map(|a| a.as_binary::<i32>().clone());
    let mut chunk = RecordChunk::new(source, first);
    for r in 0..batch.num_rows() {
        let has_values = values.iter().all(|v| v.is_valid(r));
        let hash = u128::from_str_radix(row_hash.value(r), 16).map_err(|_| {
            drift(input, format!("row {}: row_hash {:?} is not 32 hex digits", first + r as u64, row_hash.value(r)))
        })?;
        let pushed = if has_values {
            chunk.push_record(values.iter().map(|v| v.value(r).as_bytes()), line_number.value(r))
        } else {
            chunk.push_record(std::iter::empty(), line_number.value(r))
        };
        pushed.map_err(|e| drift(input, format!("row {}: {e}", first + r as u64)))?;
        chunk.replay.push(ReplayMeta {
            source_uri: source_uri.value(r).to_owned(),
            record_number: record_number.value(r),
            line_number: line_number.value(r),
            row_hash: hash,
            attempt_count: attempt.value(r),
            has_values,
            raw_record: raw_record.value(r).to_owned(),
            previous_error: previous_error
                .as_ref()
                .filter(|a| a.is_valid(r))
                .and_then(|a| crate::values::ErrorType::parse(a.value(r))),
            raw_record_bytes: raw_bytes.as_ref().filter(|a| a.is_valid(r)).map(|a| a.value(r).to_vec()),
        });
    }
    Ok(chunk)
}
