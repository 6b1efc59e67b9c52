//! `silverline-worker quarantine`: triage of one run's quarantine (or, with `--condemned`, its condemned rows) for
//! the person investigating a quality alert. Reads only that area's part files of the run — never silver — from a
//! local or S3 lake, in one pass, and summarizes them: rows by error type (with the column most affected) and by
//! column, the most frequent bad values per column, the source files and line ranges they came from, and a sample
//! of rows with record number, line, raw record and message (for condemned rows, the record each duplicates).
//! Filters (`--error-type`, `--column`) apply to everything shown.

use crate::contract::Contract;
use crate::input::storage_error;
use crate::promote::LakeArgs;
use crate::values::ErrorType;
use crate::{Error, Result};
use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{UInt32Type, UInt64Type};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use silverline_crds::side_columns as col;
use silverline_lake::layout::{self, Area, LakeLayout};
use silverline_lake::{Lake, OpenOptions, RelativePaths, StoreOptions};
use std::collections::HashMap;
use tokio::runtime::Handle;

/// Bad values listed per column.
pub const TOP_VALUES: usize = 5;
/// Characters of a value or raw record shown in the table format (JSON and CSV carry them whole).
const SHOWN_CHARS: usize = 120;

/// What `silverline-worker quarantine` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct TriageArgs {
    pub lake: LakeArgs,
    pub run_id: String,
    /// Rows in the sample.
    pub limit: usize,
    /// Only rows with this error type (or, with `condemned`, this condemned reason).
    pub error_type: Option<String>,
    /// Only rows whose error is in this contract column.
    pub column: Option<String>,
    /// The condemned rows instead of the quarantined ones.
    pub condemned: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorTypeRows {
    pub error_type: String,
    pub rows: u64,
    pub share: f64,
    /// `None` when the error is about the whole record (e.g. a wrong field count).
    pub most_affected_column: Option<String>,
    pub most_affected_column_rows: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColumnRows {
    pub column: Option<String>,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValueRows {
    pub value: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BadValues {
    pub column: String,
    /// Distinct bad values in the column.
    pub distinct: u64,
    pub values: Vec<ValueRows>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceRows {
    pub source_uri: String,
    pub rows: u64,
    pub first_line: u64,
    pub last_line: u64,
    pub first_record: u64,
    pub last_record: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SampleRow {
    pub source_uri: String,
    pub record_number: u64,
    pub line_number: u64,
    pub error_type: Option<String>,
    pub error_column: Option<String>,
    pub attempt_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condemned_reason: Option<String>,
    pub error_message: Option<String>,
    pub raw_record: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Filters {
    pub error_type: Option<String>,
    pub column: Option<String>,
}

/// The triage of one run's quarantine or condemned rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Triage {
    pub dataset: String,
    pub schema_v: String,
    pub run_id: String,
    /// `quarantine` or `condemned`.
    pub area: String,
    /// The run's folder in that area.
    pub prefix: String,
    /// The part files read.
    pub files: Vec<String>,
    /// Rows in the area.
    pub total_rows: u64,
    pub filters: Filters,
    /// Rows that match the filters; everything below counts only these.
    pub rows: u64,
    pub by_error_type: Vec<ErrorTypeRows>,
    pub by_column: Vec<ColumnRows>,
    pub bad_values: Vec<BadValues>,
    pub sources: Vec<SourceRows>,
    pub sample: Vec<SampleRow>,
}

/// The label of a row's error: its error type, or for an exact duplicate (which has none) the condemned reason.
fn label(error_type: Option<&str>, reason: Option<&str>) -> String {
    error_type.or(reason).unwrap_or("UNKNOWN").to_owned()
}

/// Counts and samples rows, batch by batch: the pure half of the triage.
#[derive(Debug, Default)]
pub struct Tally {
    total_rows: u64,
    rows: u64,
    by_error: HashMap<String, HashMap<Option<String>, u64>>,
    by_column: HashMap<Option<String>, u64>,
    values: HashMap<String, HashMap<String, u64>>,
    sources: HashMap<String, SourceRows>,
    sample: Vec<SampleRow>,
}

fn count<K: std::hash::Hash + Eq + ?Sized + ToOwned>(map: &mut HashMap<K::Owned, u64>, key: &K)
where
    K::Owned: std::hash::Hash + Eq + std::borrow::Borrow<K>,
{
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

impl Tally {
    /// Adds a batch of a quarantine or condemned file read with [`columns_read`].
    pub fn add(&mut self, batch: &RecordBatch, contract: &Contract, args: &TriageArgs) -> Result<()> {
        let text = |name: &str| -> Result<StringArray> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| Error::internal("quarantine file", format!("column {name} is missing")))?;
            column
                .as_string_opt::<i32>()
                .cloned()
                .ok_or_else(|| Error::internal("quarantine file", format!("column {name} is not text")))
        };
        let error_type = text(col::ERROR_TYPE)?;
        let error_column = text(col::ERROR_COLUMN)?;
        let source = text(col::SOURCE_URI)?;
        let line = batch.column_by_name(col::LINE_NUMBER).and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned());
        let record = batch.column_by_name(col::RECORD_NUMBER).and_then(|a| a.as_primitive_opt::<UInt64Type>().cloned());
        let (Some(line), Some(record)) = (line, record) else {
            return Err(Error::internal("quarantine file", "record_number or line_number is missing or not UInt64"));
        };
        let reason = if args.condemned { Some(text(col::CONDEMNED_REASON)?) } else { None };
        let values: Vec<StringArray> = contract.columns.iter().map(|c| text(&c.name)).collect::<Result<_>>()?;
        let mut sample_rows = Vec::new();
        for r in 0..batch.num_rows() {
            self.total_rows += 1;
            let ty = error_type.is_valid(r).then(|| error_type.value(r));
            let why = reason.as_ref().filter(|a| a.is_valid(r)).map(|a| a.value(r));
            let column = error_column.is_valid(r).then(|| error_column.value(r));
            if let Some(wanted) = &args.error_type
                && ty != Some(wanted.as_str())
                && why != Some(wanted.as_str())
            {
                continue;
            }
            if let Some(wanted) = &args.column
                && column != Some(wanted.as_str())
            {
                continue;
            }
            self.rows += 1;
            let name = label(ty, why);
            let owned_column = column.map(str::to_owned);
            match self.by_error.get_mut(&name) {
                Some(by) => *by.entry(owned_column.clone()).or_default() += 1,
                None => {
                    self.by_error.insert(name, HashMap::from([(owned_column.clone(), 1)]));
                }
            }
            count(&mut self.by_column, &owned_column);
            if let Some(c) = column
                && let Some(at) = contract.columns.iter().position(|k| k.name == c)
                && values[at].is_valid(r)
            {
                let value = values[at].value(r);
                match self.values.get_mut(c) {
                    Some(by) => count(by, value),
                    None => {
                        self.values.insert(c.to_owned(), HashMap::from([(value.to_owned(), 1)]));
                    }
                }
            }
            let uri = source.value(r);
            let (l, n) = (line.value(r), record.value(r));
            match self.sources.get_mut(uri) {
                Some(s) => {
                    s.rows += 1;
                    s.first_line = s.first_line.min(l);
                    s.last_line = s.last_line.max(l);
                    s.first_record = s.first_record.min(n);
                    s.last_record = s.last_record.max(n);
                }
                None => {
                    self.sources.insert(
                        uri.to_owned(),
                        SourceRows {
                            source_uri: uri.to_owned(),
                            rows: 1,
                            first_line: l,
                            last_line: l,
                            first_record: n,
                            last_record: n,
                        },
                    );
                }
            }
            if self.sample.len() + sample_rows.len() < args.limit {
                sample_rows.push(r);
            }
        }
        if !sample_rows.is_empty() {
            let raw = text(col::RAW_RECORD)?;
            let message = text(col::ERROR_MESSAGE)?;
            let attempts =
                batch.column_by_name(col::ATTEMPT_COUNT).and_then(|a| a.as_primitive_opt::<UInt32Type>().cloned());
            for r in sample_rows {
                let opt = |a: &StringArray| a.is_valid(r).then(|| a.value(r).to_owned());
                self.sample.push(SampleRow {
                    source_uri: source.value(r).to_owned(),
                    record_number: record.value(r),
                    line_number: line.value(r),
                    error_type: opt(&error_type),
                    error_column: opt(&error_column),
                    attempt_count: attempts.as_ref().map_or(0, |a| a.value(r)),
                    condemned_reason: reason.as_ref().and_then(opt),
                    error_message: opt(&message),
                    raw_record: raw.value(r).to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The summary, most frequent first (ties by name, so the output is deterministic).
    pub fn finish(self, head: Triage) -> Triage {
        let rows = self.rows;
        let mut by_error_type: Vec<ErrorTypeRows> = self
            .by_error
            .into_iter()
            .map(|(error_type, by)| {
                let n = by.values().sum();
                let (column, column_rows) =
                    by.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).unwrap_or((None, 0));
                ErrorTypeRows {
                    error_type,
                    rows: n,
                    share: if rows == 0 { 0.0 } else { n as f64 / rows as f64 },
                    most_affected_column: column,
                    most_affected_column_rows: column_rows,
                }
            })
            .collect();
        by_error_type.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.error_type.cmp(&b.error_type)));
        let mut by_column: Vec<ColumnRows> =
            self.by_column.into_iter().map(|(column, rows)| ColumnRows { column, rows }).collect();
        by_column.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.column.cmp(&b.column)));
        let mut bad_values: Vec<BadValues> = self
            .values
            .into_iter()
            .map(|(column, by)| {
                let distinct = by.len() as u64;
                let mut values: Vec<ValueRows> =
                    by.into_iter().map(|(value, rows)| ValueRows { value, rows }).collect();
                values.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.value.cmp(&b.value)));
                values.truncate(TOP_VALUES);
                BadValues { column, distinct, values }
            })
            .collect();
        bad_values.sort_by(|a, b| {
            let total = |v: &BadValues| v.values.iter().map(|x| x.rows).sum::<u64>();
            total(b).cmp(&total(a)).then(a.column.cmp(&b.column))
        });
        let mut sources: Vec<SourceRows> = self.sources.into_values().collect();
        sources.sort_by(|a, b| a.source_uri.cmp(&b.source_uri));
        Triage {
            total_rows: self.total_rows,
            rows,
            by_error_type,
            by_column,
            bad_values,
            sources,
            sample: self.sample,
            ..head
        }
    }
}

/// The columns the triage reads: never the typed silver data, and not `raw_record_bytes` or `row_hash`.
pub fn columns_read(contract: &Contract, condemned: bool) -> Vec<String> {
    let mut names: Vec<String> = contract.columns.iter().map(|c| c.name.clone()).collect();
    for name in [
        col::RAW_RECORD,
        col::SOURCE_URI,
        col::RECORD_NUMBER,
        col::LINE_NUMBER,
        col::ERROR_TYPE,
        col::ERROR_COLUMN,
        col::ERROR_MESSAGE,
        col::ATTEMPT_COUNT,
    ] {
        names.push(name.to_owned());
    }
    if condemned {
        names.push(col::CONDEMNED_REASON.to_owned());
    }
    names
}

fn check_filters(contract: &Contract, args: &TriageArgs) -> Result<()> {
    if let Some(t) = &args.error_type {
        let reasons = ["EXACT_DUPLICATE", "MAX_ATTEMPTS_REACHED"];
        let known = ErrorType::parse(t).is_some() || (args.condemned && reasons.contains(&t.as_str()));
        if !known {
            let mut names: Vec<&str> = ErrorType::ALL.iter().map(|t| t.as_str()).collect();
            if args.condemned {
                names.extend(reasons);
            }
            return Err(Error::Usage(format!("--error-type {t}: not one of {}", names.join(", "))));
        }
    }
    if let Some(c) = &args.column
        && !contract.columns.iter().any(|k| &k.name == c)
    {
        let names: Vec<&str> = contract.columns.iter().map(|k| k.name.as_str()).collect();
        return Err(Error::Usage(format!("--column {c}: not a column of the contract ({})", names.join(", "))));
    }
    Ok(())
}

/// Reads the run's quarantine (or condemned) part files and summarizes them.
pub fn triage(args: &TriageArgs, handle: &Handle) -> Result<Triage> {
    let contract = crate::run::load_contract(&args.lake.contract)?;
    check_filters(&contract, args)?;
    silverline_crds::names::check_run_id(&args.run_id)?;
    let options = StoreOptions {
        endpoint: args.lake.endpoint.clone().or_else(|| contract.storage.endpoint.clone()),
        region: args.lake.region.clone().or_else(|| contract.storage.region.clone()),
    };
    let uri = args.lake.lake.clone().unwrap_or_else(|| contract.storage.lake_uri.clone());
    // A reader: relative paths are fine on a laptop, but a missing local lake is an error, not created.
    let lake = Lake::open(&uri, &options, OpenOptions { relative_paths: RelativePaths::Accept, create_local: false })?;
    let layout = LakeLayout::new(lake.prefix.clone(), &contract.dataset, &contract.schema_version, &args.run_id)?;
    let area = if args.condemned { Area::Condemned } else { Area::Quarantine };
    let prefix = layout.run_prefix(area);
    let mut parts: Vec<object_store::path::Path> = handle
        .block_on(lake.store.list(Some(&prefix)).try_collect::<Vec<_>>())
        .map_err(|e| storage_error(e, &lake.uri_of(&prefix)))?
        .into_iter()
        .map(|m| m.location)
        .filter(|p| p.filename().is_some_and(|f| f.ends_with(".parquet")))
        .collect();
    parts.sort();
    if parts.is_empty() {
        // Either the run had no such rows, or there is no such run: its claim marker tells (a head, not a read).
        let claim = layout.marker(layout::RUN_CLAIM);
        if let Err(e) = handle.block_on(lake.store.head(&claim)) {
            return Err(match e {
                object_store::Error::NotFound { .. } => Error::Usage(format!(
                    "no run {} of dataset {} (schema {}) in {}: {} does not exist",
                    args.run_id,
                    contract.dataset,
                    contract.schema_version,
                    lake.uri,
                    lake.uri_of(&claim)
                )),
                other => storage_error(other, &lake.uri_of(&claim)),
            });
        }
    }
    let names = columns_read(&contract, args.condemned);
    let mut tally = Tally::default();
    for part in &parts {
        let shown = lake.uri_of(part);
        let bytes = handle
            .block_on(async { lake.store.get(part).await?.bytes().await })
            .map_err(|e| storage_error(e, &shown))?;
        let unreadable =
            |e: crate::BoxError| Error::undecodable(&shown, format!("not a readable {} file", area.as_str()), e);
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| unreadable(e.into()))?;
        let schema = builder.schema().clone();
        if let Some(missing) = names.iter().find(|n| schema.field_with_name(n).is_err()) {
            return Err(Error::SchemaDrift {
                source_uri: shown,
                message: format!("not a {} file of this contract: column {missing} is missing", area.as_str()),
            });
        }
        let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().map(String::as_str));
        let reader =
            builder.with_projection(mask).with_batch_size(64 * 1024).build().map_err(|e| unreadable(e.into()))?;
        for batch in reader {
            tally.add(&batch.map_err(|e| unreadable(e.into()))?, &contract, args)?;
        }
    }
    let head = Triage {
        dataset: contract.dataset.clone(),
        schema_v: contract.schema_version.clone(),
        run_id: args.run_id.clone(),
        area: area.as_str().to_owned(),
        prefix: format!("{}/", lake.uri_of(&prefix)),
        files: parts.iter().map(|p| lake.uri_of(p)).collect(),
        total_rows: 0,
        filters: Filters { error_type: args.error_type.clone(), column: args.column.clone() },
        rows: 0,
        by_error_type: Vec::new(),
        by_column: Vec::new(),
        bad_values: Vec::new(),
        sources: Vec::new(),
        sample: Vec::new(),
    };
    Ok(tally.finish(head))
}

/// At most [`SHOWN_CHARS`] characters of a text, on one line (line breaks shown as `⏎`).
fn shown(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c == '\n' || c == '\r' { '⏎' } else { c }).collect();
    match one_line.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}… ({} bytes)", &one_line[..at], text.len()),
        None => one_line,
    }
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

/// The triage for a person: tables and a sample.
pub fn table(t: &Triage) -> String {
    use crate::summary::thousands;
    let mut out = String::new();
    let filters: Vec<String> = [("error type", &t.filters.error_type), ("column", &t.filters.column)]
        .iter()
        .filter_map(|(what, v)| v.as_ref().map(|v| format!("{what} {v}")))
        .collect();
    out.push_str(&format!(
        "{} of run {}, dataset {} (schema {}): {} rows in {} file{} under {}\n",
        t.area,
        t.run_id,
        t.dataset,
        t.schema_v,
        thousands(t.total_rows),
        t.files.len(),
        if t.files.len() == 1 { "" } else { "s" },
        t.prefix
    ));
    if !filters.is_empty() {
        out.push_str(&format!("filtered to {}: {} rows\n", filters.join(", "), thousands(t.rows)));
    }
    if t.rows == 0 {
        out.push_str(&format!("no {} rows{}\n", t.area, if filters.is_empty() { "" } else { " match" }));
        return out;
    }
    let column_name = |c: &Option<String>| c.clone().unwrap_or_else(|| "(whole record)".to_owned());
    out.push_str(&format!("\n{:<24}{:>10}  {:>8}  most affected column\n", "error type", "rows", "share"));
    for e in &t.by_error_type {
        let most = match (&e.most_affected_column, e.most_affected_column_rows) {
            (_, 0) => String::new(),
            (None, n) if e.error_type == "DUPLICATE_KEY_ERROR" => format!("(primary key) ({})", thousands(n)),
            (c, n) => format!("{} ({})", column_name(c), thousands(n)),
        };
        out.push_str(&format!("  {:<22}{:>10}  {:>8}  {most}\n", e.error_type, thousands(e.rows), percent(e.share)));
    }
    out.push_str(&format!("\n{:<24}{:>10}\n", "column", "rows"));
    for c in &t.by_column {
        out.push_str(&format!("  {:<22}{:>10}\n", column_name(&c.column), thousands(c.rows)));
    }
    if !t.bad_values.is_empty() {
        out.push_str("\nmost frequent bad values (value ×rows)\n");
        for b in &t.bad_values {
            let values: Vec<String> =
                b.values.iter().map(|v| format!("{:?} ×{}", shown(&v.value), thousands(v.rows))).collect();
            let more = b.distinct.saturating_sub(b.values.len() as u64);
            let more = if more > 0 { format!(" … and {} more", thousands(more)) } else { String::new() };
            out.push_str(&format!("  {:<22}{}{more}\n", b.column, values.join(", ")));
        }
    }
    out.push_str("\nsources\n");
    for s in &t.sources {
        out.push_str(&format!(
            "  {}: {} rows, lines {}–{} (records {}–{})\n",
            s.source_uri,
            thousands(s.rows),
            s.first_line,
            s.last_line,
            s.first_record,
            s.last_record
        ));
    }
    out.push_str(&format!(
        "\nsample: the first {} of {} rows (--limit N for more)\n",
        t.sample.len(),
        thousands(t.rows)
    ));
    for s in &t.sample {
        let kind = label(s.error_type.as_deref(), s.condemned_reason.as_deref());
        let column = s.error_column.as_deref().map(|c| format!(" in {c}")).unwrap_or_default();
        let reason = match (&s.condemned_reason, &s.error_type) {
            (Some(r), Some(_)) => format!(", condemned: {r}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  record {}, line {} of {}: {kind}{column} (attempt {}{reason})\n",
            s.record_number, s.line_number, s.source_uri, s.attempt_count
        ));
        out.push_str(&format!("    raw:     {}\n", shown(&s.raw_record)));
        if let Some(m) = &s.error_message {
            out.push_str(&format!("    message: {}\n", shown(m)));
        }
    }
    out
}

/// The sample as CSV, one row per quarantined (or condemned) row, with a header.
pub fn csv(t: &Triage) -> String {
    let mut out = String::from(
        "source_uri,record_number,line_number,error_type,error_column,attempt_count,condemned_reason,error_message,\
         raw_record\n",
    );
    for s in &t.sample {
        let fields = [
            s.source_uri.clone(),
            s.record_number.to_string(),
            s.line_number.to_string(),
            s.error_type.clone().unwrap_or_default(),
            s.error_column.clone().unwrap_or_default(),
            s.attempt_count.to_string(),
            s.condemned_reason.clone().unwrap_or_default(),
            s.error_message.clone().unwrap_or_default(),
            s.raw_record.clone(),
        ];
        out.push_str(&crate::sink::csv_record(fields.iter().map(|f| f.as_bytes())));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_multiline_text_is_shown_on_one_bounded_line() {
        assert_eq!(shown("a\nb"), "a⏎b");
        let long = "x".repeat(500);
        let s = shown(&long);
        assert!(s.starts_with(&"x".repeat(SHOWN_CHARS)) && s.ends_with("… (500 bytes)"), "{s}");
    }

    #[test]
    fn unknown_filters_are_refused_naming_what_is_known() {
        let contract = crate::contract::tests::transactions();
        let args = TriageArgs { error_type: Some("TYPO".into()), ..TriageArgs::default() };
        let e = check_filters(&contract, &args).expect_err("refused").to_string();
        assert!(e.contains("TYPE_ERROR") && !e.contains("EXACT_DUPLICATE"), "{e}");
        let args = TriageArgs { error_type: Some("EXACT_DUPLICATE".into()), condemned: true, ..TriageArgs::default() };
        assert!(check_filters(&contract, &args).is_ok());
        let args = TriageArgs { column: Some("Nope".into()), ..TriageArgs::default() };
        let e = check_filters(&contract, &args).expect_err("refused").to_string();
        assert!(e.contains("TransactionAmount"), "{e}");
    }
}
