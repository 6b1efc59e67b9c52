//! Parquet part files in the lake. A part is written in place to a local lake, or to an object store through a
//! spill file and a multipart upload ([`crate::upload`]), and becomes visible only when complete; a part that is
//! dropped unfinished is aborted, never left half-written.
//! Everything here is deterministic: the same rows in the same order give byte-identical files.

use crate::check::CheckedChunk;
use crate::contract::{Contract, HeaderMap};
use crate::input::storage_error;
use crate::layout::{Area, LakeLayout};
use crate::ledger::SideRow;
use crate::tokenize::RecordChunk;
use crate::upload::{Finishing, Spill, SpilledUpload};
use crate::{Error, Result};
use arrow::array::BooleanArray;
use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, RecordBatch, StringBuilder, UInt32Builder, UInt64Builder};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};
pub use silverline_crds::report::FileRecord;
use silverline_crds::side_columns as col;
use silverline_lake::Lake as Location;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

/// Rows per part file before the next part starts (a whole number of row groups).
pub const ROWS_PER_FILE: u64 = 8 * 1024 * 1024;
/// Rows per row group: every row group of a file but its last holds exactly this many, whatever the chunking or
/// the thread count. Each open partition keeps its row group in progress, encoded and compressed, in memory.
/// 32 Ki: bench/README "Row-group size" measured no reader scanning faster with larger groups, and selective
/// queries slower from 128 Ki up.
pub const ROWS_PER_ROW_GROUP: usize = 32 * 1024;
/// Rows handed to a Parquet writer per call: every write but a file's last holds a whole multiple of this, itself
/// a multiple of the writer's 1,024-row mini-batches, after which it decides where a page ends. So page and row
/// group boundaries fall on the same rows however the input was cut into chunks, and the bytes depend only on
/// the rows. One mini-batch: every open partition keeps fewer than this many rows waiting as Arrow (up to 3 Ki
/// rows fewer per partition than with the 4 Ki before; not measured on its own).
pub const WRITE_ALIGN: usize = 1024;
/// Valid rows, in input order, from which the dictionary columns are chosen (see [`dictionary_columns`]).
pub const DICTIONARY_SAMPLE_ROWS: usize = 16 * 1024;
/// Data and dictionary page size: smaller than parquet's 1 MiB default, because every open partition holds a
/// page per column in memory, and each compressed column a zstd context sized by its largest page (at level 1:
/// 0.55 MB for 128 KiB pages, 0.30 MB for 64 KiB, 0.18 MB for 32 KiB, zstd's own estimate), and each string
/// column's encoder a buffer twice its page. 32 KiB together with [`PAGE_ROWS`]: the bench input's silver 0.33 %
/// larger than with 64 KiB, the same speed (the top-level README, "Memory").
pub const PAGE_BYTES: usize = 32 * 1024;
/// Rows per data page at most: a dictionary column's page holds its entries' indices as 8-byte integers until
/// the page is written, and a few bits per row would otherwise fill 32 KiB only after the whole row group.
pub const PAGE_ROWS: usize = 8 * 1024;
/// zstd level. Level 1 rather than the engines' default 3: every compressed column of every open partition keeps
/// a compression context sized by level and page (for [`PAGE_BYTES`]: 0.18 MB at level 1, 0.54 MB at level 3),
/// and on the bench input's ids level 3 saved under 1.5 % of their bytes. The peers are run at this level too.
pub const ZSTD_LEVEL: i32 = 1;

/// A column gets a dictionary when its sample holds at most this many distinct values per this many rows.
pub const DICTIONARY_MAX_DISTINCT_PER_ROWS: (usize, usize) = (1, 4);

/// zstd at [`ZSTD_LEVEL`], for silver and side files alike.
fn zstd() -> Compression {
    Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default())
}

/// A silver column is compressed only when zstd makes its sample's pages at least this share smaller.
pub const ZSTD_MIN_SAVING: (i64, i64) = (1, 16);

/// What the run's first valid rows decided for each silver column: a dictionary or not, zstd or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnChoices {
    pub dictionary: Vec<bool>,
    pub compressed: Vec<bool>,
}

impl ColumnChoices {
    /// Both decisions, from the sample (see [`dictionary_columns`] and [`compressed_columns`]).
    pub fn from_sample(contract: &Contract, sample: &[(u32, RecordBatch)]) -> ColumnChoices {
        let dictionary = dictionary_columns(contract, sample);
        let compressed = compressed_columns(contract, sample, &dictionary);
        ColumnChoices { dictionary, compressed }
    }
}

/// Bounded row groups and pages, a dictionary only for the columns `choices` gives one, the fallback encoding
/// of its kind for the others, and zstd only for the columns `choices` compresses.
pub fn writer_properties(contract: &Contract, choices: &ColumnChoices) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(zstd())
        .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
        .set_data_page_size_limit(PAGE_BYTES)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_dictionary_page_size_limit(PAGE_BYTES);
    let columns = contract.columns.iter().zip(&choices.dictionary).zip(&choices.compressed);
    for ((column, dictionary), compressed) in columns {
        let path = ColumnPath::from(column.name.as_str());
        builder = builder.set_column_dictionary_enabled(path.clone(), *dictionary);
        if !*compressed {
            builder = builder.set_column_compression(path.clone(), Compression::UNCOMPRESSED);
        }
        if let Some(encoding) = (!*dictionary).then(|| fallback_encoding(column.kind)).flatten() {
            builder = builder.set_column_encoding(path, encoding);
        }
    }
    builder.build()
}

/// Which columns zstd is worth running on, judged like the dictionaries from the run's first valid rows (a pure
/// decision on the input, so the files stay deterministic): the sample is encoded as the silver files encode it,
/// every column compressed, and a column keeps zstd only if its pages come out at least [`ZSTD_MIN_SAVING`]
/// smaller. Bit-packed differences of amounts and instants are dense already — zstd found nothing in them on the
/// bench input (compressed size 100.0 % of the encoded size) — and every column it runs on costs CPU and, in each
/// open partition, a compression context of ~0.65 MB. Without a sample (no valid rows yet) every column is
/// compressed.
pub fn compressed_columns(contract: &Contract, sample: &[(u32, RecordBatch)], dictionary: &[bool]) -> Vec<bool> {
    let all = ColumnChoices { dictionary: dictionary.to_vec(), compressed: vec![true; contract.columns.len()] };
    if sample.iter().all(|(_, b)| b.num_rows() == 0) {
        return all.compressed;
    }
    let sizes = || -> parquet::errors::Result<Vec<(i64, i64)>> {
        let properties = writer_properties(contract, &all);
        let mut writer = ArrowWriter::try_new(Vec::new(), contract.silver_schema.clone(), Some(properties))?;
        for (_, batch) in sample {
            writer.write(batch)?;
        }
        let metadata = writer.close()?;
        let mut sizes = vec![(0, 0); contract.columns.len()];
        for row_group in metadata.row_groups() {
            for (size, column) in sizes.iter_mut().zip(row_group.columns()) {
                *size = (size.0 + column.compressed_size(), size.1 + column.uncompressed_size());
            }
        }
        Ok(sizes)
    };
    let (saved, of) = ZSTD_MIN_SAVING;
    match sizes() {
        Ok(sizes) => sizes.iter().map(|(zstd, encoded)| (encoded - zstd) * of >= encoded * saved).collect(),
        // The sample is the writers' own input: if it cannot be written, neither can the run, which then says
        // why; until then compression stays on.
        Err(_) => all.compressed,
    }
}

/// The encoding of a column without a dictionary. Numbers of one column sit close together (amounts, instants
/// of one month), so their differences take far fewer bits than 64; text values often share a prefix with the
/// value before (ids). zstd then gets less to chew on.
pub fn fallback_encoding(kind: crate::contract::Kind) -> Option<parquet::basic::Encoding> {
    use crate::contract::Kind;
    use parquet::basic::Encoding;
    match kind {
        Kind::Int64 | Kind::Timestamp | Kind::Date => Some(Encoding::DELTA_BINARY_PACKED),
        Kind::Decimal { precision, .. } if precision <= 18 => Some(Encoding::DELTA_BINARY_PACKED),
        Kind::Decimal { .. } => None,
        Kind::String => Some(Encoding::DELTA_BYTE_ARRAY),
    }
}

/// Which columns are worth a dictionary, judged from the first valid rows of the run (a pure decision on the
/// input, so the files stay deterministic): never a primary-key column, which is unique by contract, and
/// otherwise only a column with at most one distinct value per four rows in the sample. Trying a dictionary on
/// a column of mostly distinct values (ids, amounts, timestamps) costs a hash per value and ends in a fallback
/// to plain encoding anyway.
pub fn dictionary_columns(contract: &Contract, sample: &[(u32, RecordBatch)]) -> Vec<bool> {
    let rows: usize = sample.iter().map(|(_, b)| b.num_rows()).sum();
    let (distinct_max, per_rows) = DICTIONARY_MAX_DISTINCT_PER_ROWS;
    (0..contract.columns.len())
        .map(|c| {
            if contract.key_columns == [c] {
                return false;
            }
            let mut seen = std::collections::HashSet::new();
            for (_, batch) in sample {
                distinct_values(batch.column(c).as_ref(), &mut seen);
            }
            seen.len() * per_rows <= rows * distinct_max
        })
        .collect()
}

/// Adds a hash of each value of `array` (one for null) to `seen`.
fn distinct_values(array: &dyn Array, seen: &mut std::collections::HashSet<u64>) {
    use xxhash_rust::xxh3::xxh3_64;
    let data = array.to_data();
    let strings = array.as_string_opt::<i32>();
    let width = data.data_type().primitive_width();
    for i in 0..array.len() {
        if array.is_null(i) {
            seen.insert(0);
        } else if let Some(strings) = strings {
            seen.insert(xxh3_64(strings.value(i).as_bytes()));
        } else if let Some(w) = width {
            let at = (data.offset() + i) * w;
            seen.insert(xxh3_64(&data.buffers()[0][at..at + w]));
        }
    }
}

/// Quarantine rows carry long text (raw record, message), so their row groups are kept small, and only the
/// columns that repeat by nature (where a row came from, what went wrong, why it was condemned) get a dictionary:
/// building one for raw records, values or hashes, which hardly repeat, only holds memory until it is dropped.
fn side_properties() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(zstd())
        .set_max_row_group_row_count(Some(SIDE_ROWS_PER_ROW_GROUP))
        .set_dictionary_enabled(false);
    for column in [col::SOURCE_URI, col::ERROR_TYPE, col::ERROR_COLUMN, col::ATTEMPT_COUNT, col::CONDEMNED_REASON] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), true);
    }
    builder.build()
}

/// Rows per row group of quarantine and condemned files.
pub const SIDE_ROWS_PER_ROW_GROUP: usize = 4 * 1024;

/// The buffer of a part file written in place to a local lake.
const LOCAL_BUFFER: usize = 128 * 1024;

/// Where a part file's bytes go: written in place for a local lake; for an object store, through a spill file
/// in parts (see [`crate::upload`]).
enum Target {
    Local(SyncIoBridge<BufWriter>),
    Remote(SpilledUpload),
}

/// A `Write` into one object: counts and checksums the bytes, completes the upload on `finish`, and aborts it
/// when dropped unfinished.
pub struct ObjectSink {
    target: Option<Target>,
    handle: Handle,
    key: String,
    hasher: Sha256,
    bytes: u64,
}

impl ObjectSink {
    pub fn create(location: &Location, key: &Path, spill: &Spill, handle: &Handle) -> Result<ObjectSink> {
        let uri = location.uri_of(key);
        let target = if location.local_dir.is_some() {
            let writer = BufWriter::with_capacity(location.store.clone(), key.clone(), LOCAL_BUFFER);
            Target::Local(SyncIoBridge::new_with_handle(writer, handle.clone()))
        } else {
            let upload = SpilledUpload::new(location.store.clone(), key.clone(), spill, handle)
                .map_err(|e| upload_error(e, &uri))?;
            Target::Remote(upload)
        };
        Ok(ObjectSink { target: Some(target), handle: handle.clone(), key: uri, hasher: Sha256::new(), bytes: 0 })
    }

    /// Completes the upload: a local file at once, an object in the background ([`Closing::wait`]).
    pub fn finish(mut self) -> Result<Closing> {
        let finishing = match self.target.take() {
            Some(Target::Local(mut bridge)) => {
                bridge.shutdown().map_err(|e| upload_error(e, &self.key))?;
                None
            }
            Some(Target::Remote(upload)) => Some(upload.finish().map_err(|e| upload_error(e, &self.key))?),
            None => return Err(Error::internal(&self.key, "finished twice")),
        };
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok(Closing { key: std::mem::take(&mut self.key), bytes: self.bytes, sha256, finishing })
    }
}

/// An object whose bytes are all written and whose upload may still be completing.
pub struct Closing {
    key: String,
    bytes: u64,
    sha256: String,
    finishing: Option<Finishing>,
}

impl Closing {
    /// Waits until the object is visible; returns (bytes, sha256).
    pub fn wait(self) -> Result<(u64, String)> {
        if let Some(finishing) = self.finishing {
            finishing.wait().map_err(|e| upload_error(e, &self.key))?;
        }
        Ok((self.bytes, self.sha256))
    }
}

fn upload_error(err: io::Error, key: &str) -> Error {
    let text = err.to_string();
    match err.into_inner() {
        Some(inner) => match inner.downcast::<object_store::Error>() {
            Ok(e) => storage_error(*e, key),
            Err(other) if other.is::<crate::upload::TaskFailed>() => Error::internal(format!("uploading {key}"), other),
            Err(other) => Error::Transient { key: key.to_owned(), message: other.to_string() },
        },
        None => Error::Transient { key: key.to_owned(), message: text },
    }
}

impl Write for ObjectSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.target.as_mut() {
            Some(Target::Local(bridge)) => bridge.write(buf)?,
            Some(Target::Remote(upload)) => upload.write(buf)?,
            None => return Err(io::Error::other("upload already finished")),
        };
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // The part buffers are the sink's own; flushing here would only force small uploads.
        Ok(())
    }
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        // A spilled upload aborts itself when dropped.
        if let Some(Target::Local(bridge)) = self.target.take() {
            let mut writer = bridge.into_inner();
            // Best effort: a failed abort leaves an incomplete multipart upload, never a visible object.
            let _ = self.handle.block_on(writer.abort());
        }
    }
}

/// One part file being written.
struct OpenPart {
    writer: ArrowWriter<ObjectSink>,
    rows: u64,
}

impl OpenPart {
    fn create(
        location: &Location,
        key: &Path,
        schema: SchemaRef,
        properties: WriterProperties,
        spill: &Spill,
        handle: &Handle,
    ) -> Result<OpenPart> {
        let sink = ObjectSink::create(location, key, spill, handle)?;
        let writer = ArrowWriter::try_new(sink, schema, Some(properties))
            .map_err(|e| Error::internal(location.uri_of(key), e))?;
        Ok(OpenPart { writer, rows: 0 })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|e| parquet_error(e, &self.writer))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Writes the footer and starts completing the upload; [`ClosingPart::wait`] gives its record.
    fn close(self, area: Area) -> Result<ClosingPart> {
        let key = self.writer.inner().key.clone();
        let sink = self.writer.into_inner().map_err(|e| parquet_error_key(e, &key))?;
        Ok(ClosingPart { key, area, rows: self.rows, closing: sink.finish()? })
    }
}

/// A part file whose upload is completing.
struct ClosingPart {
    key: String,
    area: Area,
    rows: u64,
    closing: Closing,
}

impl ClosingPart {
    fn wait(self) -> Result<FileRecord> {
        let (bytes, sha256) = self.closing.wait()?;
        Ok(FileRecord { key: self.key, area: self.area.as_str().to_owned(), rows: self.rows, bytes, sha256 })
    }
}

/// Waits for every part's upload, in order; the first failure is the error (the uploads after it are waited for
/// all the same, when dropped: see [`Finishing`](crate::upload::Finishing)).
fn wait_all(parts: Vec<ClosingPart>) -> Result<Vec<FileRecord>> {
    parts.into_iter().map(ClosingPart::wait).collect()
}

fn parquet_error(err: parquet::errors::ParquetError, writer: &ArrowWriter<ObjectSink>) -> Error {
    parquet_error_key(err, &writer.inner().key)
}

/// A Parquet writer's error: a failed write to the store underneath is the store's error (and may be transient);
/// anything else is the encoder's own, which a retry would meet again, so it is never transient.
fn parquet_error_key(err: parquet::errors::ParquetError, key: &str) -> Error {
    match err {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<io::Error>() {
            Ok(io) => upload_error(*io, key),
            Err(other) => Error::internal(format!("encoding Parquet for {key}"), other),
        },
        other => Error::internal(format!("encoding Parquet for {key}"), other),
    }
}

/// The part files of one stream of rows (one partition of silver, or one side area), written in order: rows wait
/// until a whole multiple of [`WRITE_ALIGN`] is there, then go to the open part, which cuts its row groups at
/// exactly [`ROWS_PER_ROW_GROUP`] rows; a part is completed at exactly [`ROWS_PER_FILE`] rows and the next one
/// starts. Nothing here depends on how the rows arrived, only on the rows.
struct PartStream {
    area: Area,
    schema: SchemaRef,
    properties: WriterProperties,
    waiting: Vec<RecordBatch>,
    waiting_rows: usize,
    open: Option<OpenPart>,
    next_part: u32,
    closing: Vec<ClosingPart>,
}

impl PartStream {
    fn new(area: Area, schema: SchemaRef, properties: WriterProperties) -> PartStream {
        PartStream {
            area,
            schema,
            properties,
            waiting: Vec::new(),
            waiting_rows: 0,
            open: None,
            next_part: 0,
            closing: Vec::new(),
        }
    }

    /// Adds rows; `key_of` names part `n` of this stream, should one start.
    fn push(&mut self, batch: RecordBatch, sink: &SinkContext, key_of: &dyn Fn(u32) -> Path) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.waiting_rows += batch.num_rows();
        self.waiting.push(batch);
        if self.waiting_rows >= WRITE_ALIGN { self.write_waiting(false, sink, key_of) } else { Ok(()) }
    }

    /// Writes the waiting rows: a whole multiple of [`WRITE_ALIGN`], or all of them at the end.
    fn write_waiting(&mut self, all: bool, sink: &SinkContext, key_of: &dyn Fn(u32) -> Path) -> Result<()> {
        let whole = if all { self.waiting_rows } else { self.waiting_rows / WRITE_ALIGN * WRITE_ALIGN };
        if whole == 0 {
            return Ok(());
        }
        let batch = match self.waiting.as_slice() {
            [one] => one.clone(),
            many => arrow::compute::concat_batches(&self.schema, many)
                .map_err(|e| Error::internal("joining rows for a part file", e))?,
        };
        self.waiting.clear();
        let mut at = 0;
        while at < whole {
            let open = match &mut self.open {
                Some(open) => open,
                slot => {
                    let key = key_of(self.next_part);
                    self.next_part += 1;
                    slot.insert(OpenPart::create(
                        &sink.location,
                        &key,
                        self.schema.clone(),
                        self.properties.clone(),
                        &sink.spill,
                        &sink.handle,
                    )?)
                }
            };
            let n = ((ROWS_PER_FILE - open.rows) as usize).min(whole - at);
            open.write(&batch.slice(at, n))?;
            at += n;
            if open.rows >= ROWS_PER_FILE
                && let Some(open) = self.open.take()
            {
                self.closing.push(open.close(self.area)?);
            }
        }
        self.waiting_rows -= whole;
        if self.waiting_rows > 0 {
            self.waiting.push(batch.slice(whole, self.waiting_rows));
        }
        Ok(())
    }

    /// Writes what is left and closes the open part; the uploads may still be completing.
    fn finish(mut self, sink: &SinkContext, key_of: &dyn Fn(u32) -> Path) -> Result<Vec<ClosingPart>> {
        self.write_waiting(true, sink, key_of)?;
        if let Some(open) = self.open.take() {
            self.closing.push(open.close(self.area)?);
        }
        Ok(self.closing)
    }
}

/// Where part files go.
#[derive(Clone)]
struct SinkContext {
    location: Location,
    layout: LakeLayout,
    spill: Spill,
    handle: Handle,
}

/// The partitions of one encoder thread, each a [`PartStream`] of its own. Each open partition holds its row group
/// in progress, encoded and compressed, and a page per column; rows waiting for a whole [`WRITE_ALIGN`] stay Arrow.
struct PartitionSet {
    sink: SinkContext,
    schema: SchemaRef,
    properties: WriterProperties,
    streams: BTreeMap<u32, PartStream>,
}

impl PartitionSet {
    fn key_of(layout: &LakeLayout, partition: u32) -> impl Fn(u32) -> Path + '_ {
        move |part| layout.silver_part((partition / 12) as i32, partition % 12 + 1, part)
    }

    fn write_partition(&mut self, partition: u32, batch: RecordBatch, keep: Option<BooleanArray>) -> Result<()> {
        let batch = match keep {
            Some(mask) if mask.true_count() < batch.num_rows() => {
                filter_record_batch(&batch, &mask).map_err(|e| Error::internal("filtering rows", e))?
            }
            _ => batch,
        };
        let stream = self
            .streams
            .entry(partition)
            .or_insert_with(|| PartStream::new(Area::Silver, self.schema.clone(), self.properties.clone()));
        stream.push(batch, &self.sink, &Self::key_of(&self.sink.layout, partition))
    }

    /// Closes every partition, then waits for their uploads: an object store completes them side by side.
    fn finish(mut self) -> Result<Vec<FileRecord>> {
        let mut closing = Vec::new();
        for (partition, stream) in std::mem::take(&mut self.streams) {
            closing.extend(stream.finish(&self.sink, &Self::key_of(&self.sink.layout, partition))?);
        }
        wait_all(closing)
    }
}

enum EncoderMessage<T> {
    Write(T),
    /// Close the open parts. A channel closed without it means the run was abandoned: the open parts are dropped,
    /// which aborts their uploads.
    Finish,
}

/// A thread that encodes what it is sent, in order, over a bounded channel: each of silver's encoders, and the
/// side areas' writer. [`EncoderThread::request_finish`] asks it to close its open parts and
/// [`EncoderThread::stop`] returns what it ended with. Dropped unfinished (an abandoned run), it sets
/// `abandoned`, so that what is still queued is dropped instead of encoded (and maybe starting uploads) on the way
/// out, and waits for the thread to drop its open parts, which abort their uploads: that must happen before the
/// run's runtime shuts down.
struct EncoderThread<T, R> {
    /// How errors name it.
    name: &'static str,
    /// `None` once stopped.
    sender: Option<crossbeam_channel::Sender<EncoderMessage<T>>>,
    thread: Option<std::thread::JoinHandle<Result<R>>>,
    abandoned: Arc<std::sync::atomic::AtomicBool>,
}

impl<T: Send + 'static, R: Default + Send + 'static> EncoderThread<T, R> {
    /// Starts thread `thread_name`, which hands each item to `write` with `state`, and on `Finish` gives `state`
    /// to `finish`. `abandoned` may be shared by several threads of one writer.
    fn spawn<S: Send + 'static>(
        name: &'static str,
        thread_name: String,
        abandoned: Arc<std::sync::atomic::AtomicBool>,
        mut state: S,
        mut write: impl FnMut(&mut S, T) -> Result<()> + Send + 'static,
        finish: impl FnOnce(S) -> Result<R> + Send + 'static,
    ) -> Result<Self> {
        let (sender, receiver) = crossbeam_channel::bounded::<EncoderMessage<T>>(4);
        let skip = abandoned.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                for message in receiver.iter() {
                    match message {
                        EncoderMessage::Write(_) if skip.load(std::sync::atomic::Ordering::Relaxed) => {}
                        EncoderMessage::Write(item) => write(&mut state, item)?,
                        EncoderMessage::Finish => return finish(state),
                    }
                }
                Err(Error::internal(name, "stopped before the run finished"))
            })
            .map_err(|e| Error::internal(format!("starting the {name} thread"), e))?;
        Ok(EncoderThread { name, sender: Some(sender), thread: Some(thread), abandoned })
    }

    /// Hands `item` to the thread; if it has stopped (on an error), that error.
    fn send(&mut self, item: T) -> Result<()> {
        if self.sender.as_ref().is_some_and(|s| s.send(EncoderMessage::Write(item)).is_ok()) {
            return Ok(());
        }
        match self.stop() {
            Err(e) => Err(e),
            Ok(_) => Err(Error::internal(self.name, "the thread stopped unexpectedly")),
        }
    }

    /// Asks the thread to close its open parts; [`EncoderThread::stop`] then returns what it ended with.
    fn request_finish(&self) {
        // A closed channel means the thread already stopped on an error, which `stop` reports.
        if let Some(sender) = &self.sender {
            let _ = sender.send(EncoderMessage::Finish);
        }
    }

    /// Closes the channel and waits for the thread; what it ended with (nothing once stopped before).
    fn stop(&mut self) -> Result<R> {
        self.sender.take();
        match self.thread.take().map(|t| t.join()) {
            None => Ok(R::default()),
            Some(Ok(ended)) => ended,
            Some(Err(_)) => Err(Error::internal(self.name, "the thread panicked")),
        }
    }
}

impl<T, R> Drop for EncoderThread<T, R> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
            self.sender.take();
            let _ = thread.join();
        }
    }
}

/// What silver's encoder threads are sent: a partition's batch and which of its rows to keep.
type SilverItem = (u32, RecordBatch, Option<BooleanArray>);

/// Valid rows, split into `year=YYYY/month=MM` partitions and encoded in parallel: partition `p` belongs to
/// encoder thread `p % threads`, which writes its batches in the order given, so the files do not depend on
/// the number of threads. The encoders start once the first [`DICTIONARY_SAMPLE_ROWS`] valid rows are there
/// (or the input ends), which decide the dictionary columns; until then the batches wait here. With one thread
/// the rows are encoded right here, in the caller's thread.
/// An encoder whose channel closes without `Finish` drops its parts, aborting them.
pub struct SilverWriter {
    /// Set when the writer is dropped before `finish`: the encoders then drop what is still queued for them
    /// instead of encoding it (and maybe starting uploads) on the way out.
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    sink: SinkContext,
    contract: Contract,
    threads: usize,
    encoders: Vec<EncoderThread<SilverItem, Vec<FileRecord>>>,
    /// With one thread, the partitions encoded in the caller's thread.
    inline: Option<PartitionSet>,
    /// Before the encoders start: the batches to send them, and the sample so far.
    held: Vec<(u32, RecordBatch, Option<BooleanArray>)>,
    sample: Vec<(u32, RecordBatch)>,
    sample_rows: usize,
}

impl SilverWriter {
    pub fn new(
        location: Location,
        layout: LakeLayout,
        contract: &Contract,
        spill: Spill,
        handle: Handle,
        threads: usize,
    ) -> Self {
        SilverWriter {
            abandoned: Arc::default(),
            sink: SinkContext { location, layout, spill, handle },
            contract: contract.clone(),
            threads: threads.max(1),
            encoders: Vec::new(),
            inline: None,
            held: Vec::new(),
            sample: Vec::new(),
            sample_rows: 0,
        }
    }

    fn start(&mut self) -> Result<()> {
        let properties = writer_properties(&self.contract, &ColumnChoices::from_sample(&self.contract, &self.sample));
        self.sample.clear();
        let encoders = if self.threads == 1 { 0 } else { self.threads };
        if encoders == 0 {
            self.inline = Some(PartitionSet {
                sink: self.sink.clone(),
                schema: self.contract.silver_schema.clone(),
                properties: properties.clone(),
                streams: BTreeMap::new(),
            });
        }
        for i in 0..encoders {
            let set = PartitionSet {
                sink: self.sink.clone(),
                schema: self.contract.silver_schema.clone(),
                properties: properties.clone(),
                streams: BTreeMap::new(),
            };
            self.encoders.push(EncoderThread::spawn(
                "encoder",
                format!("encoder-{i}"),
                self.abandoned.clone(),
                set,
                |set: &mut PartitionSet, (p, batch, keep): SilverItem| set.write_partition(p, batch, keep),
                PartitionSet::finish,
            )?);
        }
        for (partition, batch, keep) in std::mem::take(&mut self.held) {
            self.send(partition, batch, keep)?;
        }
        Ok(())
    }

    fn send(&mut self, partition: u32, batch: RecordBatch, keep: Option<BooleanArray>) -> Result<()> {
        if let Some(set) = &mut self.inline {
            return set.write_partition(partition, batch, keep);
        }
        let i = partition as usize % self.encoders.len();
        self.encoders[i].send((partition, batch, keep))
    }

    /// Adds the first valid rows of `chunk`, in record order, to the dictionary sample, up to its size.
    fn take_sample(&mut self, chunk: &CheckedChunk) -> Result<()> {
        let rows: usize = chunk.valid.iter().map(|(_, b)| b.num_rows()).sum();
        let need = DICTIONARY_SAMPLE_ROWS - self.sample_rows;
        if rows <= need {
            self.sample.extend(chunk.valid.iter().cloned());
            self.sample_rows += rows;
            return Ok(());
        }
        let mut at = 0;
        for (partition, batch) in &chunk.valid {
            let n = batch.num_rows();
            // The batches are grouped by partition; `order` gives each row's place among the valid rows.
            let mask: BooleanArray =
                (at..at + n).map(|i| Some(chunk.order.as_ref().map_or(i, |o| o[i] as usize) < need)).collect();
            at += n;
            let part = filter_record_batch(batch, &mask).map_err(|e| Error::internal("sampling rows", e))?;
            self.sample.push((*partition, part));
        }
        self.sample_rows = DICTIONARY_SAMPLE_ROWS;
        Ok(())
    }

    /// Writes the valid rows of a chunk (one batch per partition) that the ledger kept: `keep`, in record
    /// order, says which; `None` keeps all. The encoders do the filtering, off the in-order path.
    pub fn write(&mut self, chunk: &CheckedChunk, keep: Option<&BooleanArray>) -> Result<()> {
        if chunk.valid.is_empty() {
            return Ok(());
        }
        let mask: Option<BooleanArray> = match (keep, &chunk.order) {
            (None, _) => None,
            (Some(mask), None) => Some(mask.clone()),
            // The mask is in record order; the batches are grouped by partition.
            (Some(mask), Some(order)) => Some(order.iter().map(|&i| Some(mask.value(i as usize))).collect()),
        };
        let started = self.started();
        if !started {
            self.take_sample(chunk)?;
        }
        let mut at = 0;
        for (partition, batch) in &chunk.valid {
            let rows = batch.num_rows();
            let part_mask = mask.as_ref().map(|m| m.slice(at, rows));
            at += rows;
            if rows == 0 {
                continue;
            }
            if started {
                self.send(*partition, batch.clone(), part_mask)?;
            } else {
                self.held.push((*partition, batch.clone(), part_mask));
            }
        }
        if !started && self.sample_rows >= DICTIONARY_SAMPLE_ROWS {
            self.start()?;
        }
        Ok(())
    }

    fn started(&self) -> bool {
        !self.encoders.is_empty() || self.inline.is_some()
    }

    /// Completes every part; the files are listed in key order.
    pub fn finish(mut self) -> Result<Vec<FileRecord>> {
        if !self.started() && !self.held.is_empty() {
            self.start()?;
        }
        let mut files = match self.inline.take() {
            Some(set) => set.finish()?,
            None => Vec::new(),
        };
        // Every encoder closes its parts at once; then each is waited for.
        for encoder in &self.encoders {
            encoder.request_finish();
        }
        let mut first_error = None;
        for encoder in &mut self.encoders {
            match encoder.stop() {
                Ok(f) => files.extend(f),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        files.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(files)
    }
}

impl Drop for SilverWriter {
    /// A run that fails before `finish` (a tripped circuit breaker, SIGTERM, an unreadable input) waits here for its
    /// encoders to abort their open uploads.
    fn drop(&mut self) {
        // All of them at once, before the first is waited for.
        self.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
        self.encoders.clear();
    }
}

/// The schema of quarantine (and, with `condemned_reason`, condemned) files: the raw values of each contract
/// column as text, the whole record, and where the row came from and why it is here.
pub fn side_schema(contract: &Contract, area: Area) -> SchemaRef {
    let mut fields: Vec<Field> = contract.columns.iter().map(|c| Field::new(&c.name, DataType::Utf8, true)).collect();
    fields.extend([
        Field::new(col::RAW_RECORD, DataType::Utf8, false),
        Field::new(col::RAW_RECORD_BYTES, DataType::Binary, true),
        Field::new(col::SOURCE_URI, DataType::Utf8, false),
        Field::new(col::RECORD_NUMBER, DataType::UInt64, false),
        Field::new(col::LINE_NUMBER, DataType::UInt64, false),
        Field::new(col::ERROR_TYPE, DataType::Utf8, area == Area::Condemned),
        Field::new(col::ERROR_COLUMN, DataType::Utf8, true),
        Field::new(col::ERROR_MESSAGE, DataType::Utf8, area == Area::Condemned),
        Field::new(col::ATTEMPT_COUNT, DataType::UInt32, false),
        Field::new(col::ROW_HASH, DataType::Utf8, false),
    ]);
    if area == Area::Condemned {
        fields.push(Field::new(col::CONDEMNED_REASON, DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

/// Re-encodes fields as one CSV record, for `raw_record`.
pub fn csv_record<'a>(fields: impl Iterator<Item = &'a [u8]>) -> String {
    String::from_utf8_lossy(&csv_record_bytes(fields)).into_owned()
}

/// Re-encodes fields as one CSV record, byte for byte, for `raw_record_bytes`.
pub fn csv_record_bytes<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if field.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
            out.push(b'"');
            for &b in field {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field);
        }
    }
    out
}

/// `raw_record` and `raw_record_bytes` of record `r` of a CSV input: the record re-written from its fields (for
/// one with text after a closing quote, the line as the file has it, since its fields are not what the file
/// says), and the record's bytes exactly as the file has them whenever `raw_record` is not those bytes, or the
/// record has text after a closing quote.
fn raw_record_of(raw: &RecordChunk, r: usize, after_quote: bool) -> (String, Option<Vec<u8>>) {
    let rewritten = csv_record_bytes(raw.fields(r));
    let exact = raw.input_bytes(r).unwrap_or(&rewritten);
    let shown = if after_quote { exact } else { &rewritten };
    let text = String::from_utf8_lossy(shown);
    let bytes = (after_quote || text.as_bytes() != exact).then(|| exact.to_vec());
    (text.into_owned(), bytes)
}

/// The two side areas, in the order their files are listed.
const SIDE_AREAS: [Area; 2] = [Area::Quarantine, Area::Condemned];

fn side_index(area: Area) -> usize {
    usize::from(area == Area::Condemned)
}

/// Quarantine and condemned rows, in input order, each area in `part-NNNNN.parquet` files of its own. The caller
/// builds each chunk's rows (they need the chunk's raw records); with more than one thread both areas are encoded
/// in one thread of their own, off the in-order path, as silver's rows are in the encoders.
pub struct SideWriters {
    schemas: [SchemaRef; 2],
    encoding: SideEncoding,
}

/// The part streams of both side areas.
struct SideStreams {
    streams: [PartStream; 2],
    sink: SinkContext,
}

impl SideStreams {
    fn push(&mut self, area: Area, batch: RecordBatch) -> Result<()> {
        let sink = &self.sink;
        self.streams[side_index(area)].push(batch, sink, &|part| sink.layout.side_part(area, part))
    }

    /// Writes what is left and closes both areas' open parts: quarantine's, then condemned's.
    fn finish(self) -> Result<Vec<ClosingPart>> {
        let sink = &self.sink;
        let mut closing = Vec::new();
        for (stream, area) in self.streams.into_iter().zip(SIDE_AREAS) {
            closing.extend(stream.finish(sink, &|part| sink.layout.side_part(area, part))?);
        }
        Ok(closing)
    }
}

/// Where the side areas' rows are encoded.
enum SideEncoding {
    /// In the caller's thread; `None` once closed.
    Inline(Option<Box<SideStreams>>),
    Thread(EncoderThread<(Area, RecordBatch), Vec<ClosingPart>>),
}

const SIDE_WRITER: &str = "quarantine and condemned writer";

impl SideWriters {
    pub fn new(
        contract: &Contract,
        location: Location,
        layout: LakeLayout,
        spill: Spill,
        handle: Handle,
        threads: usize,
    ) -> Result<SideWriters> {
        let schemas = SIDE_AREAS.map(|area| side_schema(contract, area));
        let streams = Box::new(SideStreams {
            streams: SIDE_AREAS.map(|area| PartStream::new(area, schemas[side_index(area)].clone(), side_properties())),
            sink: SinkContext { location, layout, spill, handle },
        });
        if threads <= 1 {
            return Ok(SideWriters { schemas, encoding: SideEncoding::Inline(Some(streams)) });
        }
        let thread = EncoderThread::spawn(
            SIDE_WRITER,
            "side-writer".to_owned(),
            Arc::default(),
            streams,
            |streams: &mut Box<SideStreams>, (area, batch)| streams.push(area, batch),
            |streams| streams.finish(),
        )?;
        Ok(SideWriters { schemas, encoding: SideEncoding::Thread(thread) })
    }

    /// Writes `rows` of `chunk` to `area` (quarantine or condemned); the chunk's source is `source_uri` with
    /// header `map`.
    pub fn write(
        &mut self,
        area: Area,
        contract: &Contract,
        chunk: &CheckedChunk,
        map: &HeaderMap,
        source_uri: &str,
        rows: &[SideRow],
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = self.build(area, contract, chunk, map, source_uri, rows)?;
        match &mut self.encoding {
            SideEncoding::Inline(Some(streams)) => streams.push(area, batch),
            SideEncoding::Inline(None) => Err(Error::internal(SIDE_WRITER, "closed")),
            SideEncoding::Thread(thread) => thread.send((area, batch)),
        }
    }

    fn build(
        &self,
        area: Area,
        contract: &Contract,
        chunk: &CheckedChunk,
        map: &HeaderMap,
        source_uri: &str,
        rows: &[SideRow],
    ) -> Result<RecordBatch> {
        let n = rows.len();
        let raw = &chunk.raw;
        let mut values: Vec<StringBuilder> =
            contract.columns.iter().map(|_| StringBuilder::with_capacity(n, n * 16)).collect();
        let mut raw_record = StringBuilder::new();
        let mut raw_bytes = BinaryBuilder::new();
        let mut source = StringBuilder::new();
        let mut record_number = UInt64Builder::with_capacity(n);
        let mut line_number = UInt64Builder::with_capacity(n);
        let mut error_type = StringBuilder::new();
        let mut error_column = StringBuilder::new();
        let mut error_message = StringBuilder::new();
        let mut attempt = UInt32Builder::with_capacity(n);
        let mut row_hash = StringBuilder::new();
        let mut reason = StringBuilder::new();
        for row in rows {
            let r = row.record;
            let range = raw.field_range(r);
            let replay = raw.replay.get(r);
            // A record with text after a closing quote is kept as the file has it, not as csv-core joined it.
            let after_quote = replay.is_none() && raw.has_text_after_quote(r);
            let has_values = match replay {
                Some(m) => m.has_values,
                None => {
                    !after_quote
                        && range.len() == map.field_count
                        && raw.fields(r).all(|f| std::str::from_utf8(f).is_ok())
                }
            };
            for (c, builder) in values.iter_mut().enumerate() {
                if has_values {
                    builder.append_value(String::from_utf8_lossy(raw.field(range.start + map.source_index[c])));
                } else {
                    builder.append_null();
                }
            }
            match replay {
                Some(m) => {
                    raw_record.append_value(&m.raw_record);
                    raw_bytes.append_option(m.raw_record_bytes.as_deref());
                    source.append_value(&m.source_uri);
                    record_number.append_value(m.record_number);
                    line_number.append_value(m.line_number);
                }
                None => {
                    let (text, bytes) = raw_record_of(raw, r, after_quote);
                    raw_record.append_value(text);
                    raw_bytes.append_option(bytes);
                    source.append_value(source_uri);
                    record_number.append_value(raw.first_record + r as u64);
                    line_number.append_value(raw.lines[r]);
                }
            }
            match &row.error {
                Some(e) => {
                    error_type.append_value(e.error_type.as_str());
                    match e.column {
                        Some(c) => error_column.append_value(&contract.columns[c].name),
                        None => error_column.append_null(),
                    }
                    error_message.append_value(&e.message);
                }
                None => {
                    error_type.append_null();
                    error_column.append_null();
                    error_message.append_option(row.duplicate_of.as_deref());
                }
            }
            attempt.append_value(row.attempt_count);
            row_hash.append_value(format!("{:032x}", chunk.hashes[r]));
            if let Some(why) = row.reason {
                reason.append_value(why.as_str());
            }
        }
        let mut columns: Vec<ArrayRef> = values.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef).collect();
        columns.push(Arc::new(raw_record.finish()));
        columns.push(Arc::new(raw_bytes.finish()));
        columns.push(Arc::new(source.finish()));
        columns.push(Arc::new(record_number.finish()));
        columns.push(Arc::new(line_number.finish()));
        columns.push(Arc::new(error_type.finish()));
        columns.push(Arc::new(error_column.finish()));
        columns.push(Arc::new(error_message.finish()));
        columns.push(Arc::new(attempt.finish()));
        columns.push(Arc::new(row_hash.finish()));
        if area == Area::Condemned {
            columns.push(Arc::new(reason.finish()));
        }
        RecordBatch::try_new(self.schemas[side_index(area)].clone(), columns)
            .map_err(|e| Error::internal("building side rows", e))
    }

    /// Writes what is left and closes both areas' open parts (quarantine's, then condemned's); the uploads may
    /// still be completing.
    fn close(mut self) -> Result<Vec<ClosingPart>> {
        match &mut self.encoding {
            SideEncoding::Inline(streams) => match streams.take() {
                Some(streams) => streams.finish(),
                None => Err(Error::internal(SIDE_WRITER, "closed twice")),
            },
            SideEncoding::Thread(thread) => {
                thread.request_finish();
                thread.stop()
            }
        }
    }
}

/// Finishes a run's three writers, the side areas' uploads completing while silver's last row groups are encoded
/// and uploaded: silver's files, then quarantine's, then condemned's.
pub fn finish_all(silver: SilverWriter, sides: SideWriters) -> Result<Vec<FileRecord>> {
    // On an error, the uploads still completing are waited for as they are dropped (`Finishing`).
    let sides = sides.close()?;
    let mut files = silver.finish()?;
    files.extend(wait_all(sides)?);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_only_for_columns_whose_values_repeat() {
        use crate::check::check_chunk;
        use crate::contract::{HeaderMap, tests::transactions};
        use crate::tokenize::RecordChunk;
        let contract = transactions();
        let mut raw = RecordChunk::new(0, 1);
        for i in 0..100u64 {
            let row = format!("T{i},C{},{i}.50,EUR,2024-01-{:02}T00:00:{:02}Z", i % 3, 1 + i % 28, i % 60);
            assert_eq!(raw.push_record(row.split(',').map(str::as_bytes), i + 2), Ok(()));
        }
        let checked = check_chunk(&contract, &HeaderMap::identity(5), raw);
        // The key is never a dictionary; 3 customers and 1 currency repeat; amounts and timestamps do not.
        assert_eq!(dictionary_columns(&contract, &checked.valid), vec![false, true, false, true, false]);
        let choices = ColumnChoices { dictionary: vec![false, true, false, true, false], compressed: vec![true; 5] };
        let properties = writer_properties(&contract, &choices);
        assert!(properties.dictionary_enabled(&ColumnPath::from("Currency")));
        assert!(!properties.dictionary_enabled(&ColumnPath::from("TransactionID")));
        use parquet::basic::Encoding;
        assert_eq!(properties.encoding(&ColumnPath::from("TransactionID")), Some(Encoding::DELTA_BYTE_ARRAY));
        assert_eq!(properties.encoding(&ColumnPath::from("TransactionAmount")), Some(Encoding::DELTA_BINARY_PACKED));
        assert_eq!(properties.encoding(&ColumnPath::from("TransactionTimestamp")), Some(Encoding::DELTA_BINARY_PACKED));
    }

    /// `rows` valid rows of the transactions contract: ids that share long prefixes, customers from a small set,
    /// one currency; amounts and instants at random, whose bit-packed differences leave zstd nothing to find.
    fn varied_rows(rows: u64) -> Vec<(u32, RecordBatch)> {
        use crate::check::check_chunk;
        use crate::contract::{HeaderMap, tests::transactions};
        use crate::tokenize::RecordChunk;
        let mut raw = RecordChunk::new(0, 1);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..rows {
            let (amount, day, second) = (next() % 1_000_000, 1 + next() % 28, next() % 86_400);
            let row = format!(
                "TXN-2024-{i:010},CUSTOMER-{:06},{}.{:02},EUR,2024-01-{day:02}T{:02}:{:02}:{:02}Z",
                i % 500,
                amount / 100,
                amount % 100,
                second / 3600,
                second / 60 % 60,
                second % 60
            );
            assert_eq!(raw.push_record(row.split(',').map(str::as_bytes), i + 2), Ok(()));
        }
        let valid = check_chunk(&transactions(), &HeaderMap::identity(5), raw).valid;
        assert_eq!(valid.iter().map(|(_, b)| b.num_rows() as u64).sum::<u64>(), rows);
        valid
    }

    #[test]
    fn zstd_only_for_columns_it_makes_smaller() {
        let contract = crate::contract::tests::transactions();
        let valid = varied_rows(8000);
        let choices = ColumnChoices::from_sample(&contract, &valid);
        let [id, customer, amount, _currency, instant] = choices.compressed[..] else {
            panic!("five columns: {choices:?}")
        };
        assert!(id && customer, "{choices:?}");
        assert!(!amount && !instant, "{choices:?}");
        let properties = writer_properties(&contract, &choices);
        assert_eq!(properties.compression(&ColumnPath::from("TransactionAmount")), Compression::UNCOMPRESSED);
        assert!(matches!(properties.compression(&ColumnPath::from("TransactionID")), Compression::ZSTD(_)));
        // Without valid rows to judge by, every column is compressed.
        assert_eq!(compressed_columns(&contract, &[], &choices.dictionary), vec![true; 5]);
    }

    #[test]
    fn pages_are_bounded_in_bytes_and_in_rows() -> std::result::Result<(), Box<dyn std::error::Error>> {
        use parquet::column::page::Page;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let contract = crate::contract::tests::transactions();
        let valid = varied_rows(ROWS_PER_ROW_GROUP as u64);
        let choices = ColumnChoices::from_sample(&contract, &valid);
        assert!(choices.dictionary[3], "one currency: a dictionary {choices:?}");
        let properties = writer_properties(&contract, &choices);
        let mut writer = ArrowWriter::try_new(Vec::new(), contract.silver_schema.clone(), Some(properties))?;
        for (_, batch) in &valid {
            writer.write(batch)?;
        }
        let file = SerializedFileReader::new(bytes::Bytes::from(writer.into_inner()?))?;
        let row_group = file.get_row_group(0)?;
        assert_eq!(row_group.metadata().num_rows() as usize, ROWS_PER_ROW_GROUP);
        for (c, column) in contract.columns.iter().enumerate() {
            let mut data_pages = 0;
            for page in row_group.get_column_page_reader(c)? {
                let page = page?;
                if let Page::DataPage { num_values, .. } | Page::DataPageV2 { num_values, .. } = &page {
                    data_pages += 1;
                    // Limits are checked after each 1,024-row mini-batch: a page ends at most one batch past them.
                    assert!(*num_values as usize <= PAGE_ROWS, "{}: a page of {num_values} rows", column.name);
                    let per_row = page.buffer().len() / *num_values as usize + 1;
                    assert!(
                        page.buffer().len() <= PAGE_BYTES + 1024 * per_row,
                        "{}: {} bytes",
                        column.name,
                        page.buffer().len()
                    );
                }
            }
            // 32 Ki rows of a one-value dictionary column fit one 32 KiB page; the row bound makes four.
            assert!(data_pages >= ROWS_PER_ROW_GROUP / PAGE_ROWS, "{}: {data_pages} pages", column.name);
        }
        Ok(())
    }

    #[test]
    fn side_files_have_small_row_groups_and_dictionaries_only_for_repeating_columns() {
        let properties = side_properties();
        assert_eq!(properties.max_row_group_row_count(), Some(SIDE_ROWS_PER_ROW_GROUP));
        for column in ["source_uri", "error_type", "error_column", "attempt_count", "condemned_reason"] {
            assert!(properties.dictionary_enabled(&ColumnPath::from(column)), "{column}");
        }
        for column in ["raw_record", "row_hash", "error_message", "TransactionID"] {
            assert!(!properties.dictionary_enabled(&ColumnPath::from(column)), "{column}");
        }
    }

    #[test]
    fn the_side_files_own_columns_are_the_names_a_contract_may_not_use() {
        let contract = crate::contract::tests::transactions();
        let own = |area| -> Vec<String> {
            let schema = side_schema(&contract, area);
            let fields = &schema.fields()[contract.columns.len()..];
            fields.iter().map(|f| f.name().clone()).collect()
        };
        let condemned = own(Area::Condemned);
        let mut reserved: Vec<String> = crate::contract::RESERVED_COLUMNS.iter().map(|&c| c.to_owned()).collect();
        let mut sorted = condemned.clone();
        sorted.sort();
        reserved.sort();
        assert_eq!(
            sorted, reserved,
            "every column of a condemned file beside the contract's is reserved, and only those"
        );
        let quarantine = own(Area::Quarantine);
        assert_eq!(quarantine, condemned[..condemned.len() - 1], "quarantine: the same, without condemned_reason");
        // The names are a public interface (README.md, "Layout of the lake"): spelled out here, not from the consts.
        assert_eq!(
            condemned,
            [
                "raw_record",
                "raw_record_bytes",
                "source_uri",
                "record_number",
                "line_number",
                "error_type",
                "error_column",
                "error_message",
                "attempt_count",
                "row_hash",
                "condemned_reason"
            ]
        );
    }

    #[test]
    fn an_encoder_error_is_permanent_and_only_store_io_is_transient() {
        use crate::ExitCode;
        use parquet::errors::ParquetError;
        let key = "file:///lake/silver/part-00000.parquet";
        for encoder in [
            ParquetError::General("cannot encode".into()),
            ParquetError::NYI("an encoding".into()),
            ParquetError::ArrowError("a schema mismatch".into()),
            ParquetError::External(Box::new(std::fmt::Error)),
        ] {
            let e = parquet_error_key(encoder, key);
            assert_eq!(e.exit_code(), ExitCode::Other, "{e}");
            assert!(e.to_string().contains(key), "{e}");
        }
        let store =
            io::Error::other(object_store::Error::Generic { store: "S3", source: "connection reset by peer".into() });
        let e = parquet_error_key(ParquetError::External(Box::new(store)), key);
        assert_eq!(e.exit_code(), ExitCode::Transient, "{e}");
        let e = parquet_error_key(ParquetError::External(Box::new(io::Error::other("broken pipe"))), key);
        assert_eq!(e.exit_code(), ExitCode::Transient, "{e}");
    }

    #[test]
    fn a_failed_upload_task_is_the_workers_own_error_and_an_os_error_keeps_its_text() {
        use crate::ExitCode;
        let key = "s3://b/lake/silver/part-00000.parquet";
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let cancelled = rt.spawn(std::future::pending::<()>());
        cancelled.abort();
        let join_error = rt.block_on(cancelled).expect_err("the task was cancelled");
        let failed = io::Error::other(crate::upload::TaskFailed::new("upload", join_error));
        let e = upload_error(failed, key);
        assert_eq!(e.exit_code(), ExitCode::Other, "{e}");
        assert!(e.to_string().contains(key) && e.to_string().contains("upload task failed"), "{e}");
        let e = upload_error(io::Error::from(io::ErrorKind::ConnectionReset), key);
        assert_eq!(e.exit_code(), ExitCode::Transient, "{e}");
        assert!(e.to_string().contains("connection reset"), "{e}");
    }

    #[test]
    fn raw_records_are_valid_csv() {
        let fields: [&[u8]; 4] = [b"a", b"b,c", b"say \"hi\"", b"x\ny"];
        assert_eq!(csv_record(fields.into_iter()), "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\"");
    }
}
