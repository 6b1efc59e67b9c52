//! One run, from contract to `_SUCCESS`. The order matters and is the product's promise:
//! 1. contract, names and run id are checked, and the run id must be unused: nothing is written yet;
//! 2. every input is opened and its header matched: schema drift or an unreadable input ends the run (exit 3)
//!    before any object is written;
//! 3. the run id is claimed with a create-if-absent marker, so two workers can never share it;
//! 4. records stream through tokenize → check (parallel) → ledger (in order) → Parquet parts;
//! 5. all parts are completed, then the quality gate decides between `_QUALITY_REPORT.json` (exit 5) and
//!    `_SUCCESS`, which is written last.

use crate::check::{CheckedChunk, check_chunk};
use crate::contract::{Contract, HeaderMap};
use crate::input::{InputFormat, InputObject, read_error, resolve_inputs, storage_error};
use crate::layout::{self, Area, LakeLayout};
use crate::ledger::Ledger;
use crate::report::{InputRecord, Put, RunFacts, RunReport, build_report, put_json};
use crate::sink::{SideWriters, SilverWriter};
use crate::tokenize::{CsvTokenizer, RecordScan};
use crate::upload::Spill;
use crate::{Error, Result, replay};
use crossbeam_channel::{Receiver, Sender, bounded};
use futures::StreamExt;
use object_store::ObjectStore;
use silverline_crds::Dataset;
use silverline_lake::{Lake as Location, OpenOptions, StoreOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// Input bytes per chunk (whole records, so a little more or less): the unit of parallel work and of memory in
/// flight. 512 KiB held 20 MiB less but cost 7 % wall at two threads (5 M rows, 7 paired runs; the same CPU:
/// fewer bytes in flight leave the threads less to work ahead on).
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Sets input bytes per chunk instead of [`CHUNK_BYTES`] (for tests: the output must not depend on it).
pub const CHUNK_BYTES_ENV: &str = "SILVERLINE_CHUNK_BYTES";

/// Input bytes per chunk: [`CHUNK_BYTES`], or a positive number from [`CHUNK_BYTES_ENV`].
fn chunk_bytes() -> usize {
    std::env::var(CHUNK_BYTES_ENV).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(CHUNK_BYTES)
}

/// What `silverline-worker run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub contract: PathBuf,
    pub input: String,
    pub lake: Option<String>,
    pub run_id: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Checker threads; defaults to the available cores.
    pub threads: Option<usize>,
    /// Where part files bound for an object store wait for their upload; defaults to the system's temporary
    /// directory (`TMPDIR`, else `/tmp`). Unused for a local lake.
    pub spill_dir: Option<PathBuf>,
}

/// Live counters for progress reports, and the flag a signal sets to stop the run.
#[derive(Debug, Default)]
pub struct RunControl {
    pub stop: AtomicBool,
    pub stop_signal: std::sync::Mutex<Option<&'static str>>,
    pub rows: AtomicU64,
    pub bytes: Arc<AtomicU64>,
    pub total_bytes: AtomicU64,
}

impl RunControl {
    pub fn request_stop(&self, signal: &'static str) {
        if let Ok(mut s) = self.stop_signal.lock() {
            s.get_or_insert(signal);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            let signal = self.stop_signal.lock().ok().and_then(|s| *s).unwrap_or("a signal");
            return Err(Error::Interrupted { signal });
        }
        Ok(())
    }
}

/// A run that finished with `_SUCCESS`.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: RunReport,
    pub success_uri: String,
    /// Per error type, the rows with it by the column at fault, for the summary's "most affected column".
    pub error_columns: crate::summary::ErrorColumns,
    /// Bytes of the duplicate and key state at the end of the run (the only state that grows with the input).
    pub ledger_bytes: usize,
    /// Seconds from the last row settled to every data file complete (the writers' last row groups and footers,
    /// and on an object store the uploads still going): the end of the run after its input.
    pub finishing_seconds: f64,
}

/// Loads and compiles a contract manifest from a file.
pub fn load_contract(path: &std::path::Path) -> Result<Contract> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::ContractRead { path: shown.clone(), source })?;
    let dataset = Dataset::from_manifest(&text).map_err(|source| Error::Contract { path: shown.clone(), source })?;
    Contract::compile(&dataset).map_err(|e| match e {
        Error::ContractUnsupported(m) => Error::ContractUnsupported(format!("{shown}: {m}")),
        other => other,
    })
}

/// Fails if anything exists under the run's paths in any area.
fn ensure_unused(lake: &Location, layout: &LakeLayout, handle: &Handle) -> Result<()> {
    let prefixes = [Area::Silver, Area::Quarantine, Area::Condemned].map(|area| layout.run_prefix(area));
    // The three listings side by side: on a remote store each is a round trip before the run can start.
    let firsts = handle.block_on(futures::future::join_all(
        prefixes.iter().map(|prefix| async { lake.store.list(Some(prefix)).next().await }),
    ));
    for (prefix, first) in prefixes.iter().zip(firsts) {
        match first {
            None | Some(Err(object_store::Error::NotFound { .. })) => {}
            Some(Ok(meta)) => {
                return Err(Error::RunIdReused {
                    run_id: layout.run_id().to_owned(),
                    key: lake.uri_of(&meta.location),
                });
            }
            Some(Err(e)) => return Err(storage_error(e, &lake.uri_of(prefix))),
        }
    }
    Ok(())
}

/// A run's only input, opened by [`preflight`] and read past its header: the run goes on reading it where the
/// header ends. On a remote store that saves a second GET of it, and a new connection (the first GET, cut short
/// after the header, cannot be reused) — two round trips before the first row. Only for a run of one input: with
/// more, the first would wait unread while the others' headers are fetched, on a store long enough for its request
/// to time out and be made again.
struct OpenedFirst {
    /// Lines of the header (the number of the line before the first record).
    line: u64,
    reader: Box<dyn std::io::BufRead + Send>,
    checksum: Arc<std::sync::Mutex<Option<crate::input::Checksum>>>,
}

/// Opens each input and matches its header (or, for a quarantine replay, its schema). A run's only input, if CSV,
/// stays open, read past its header, with `progress` counting its bytes (see [`OpenedFirst`]).
fn preflight(
    inputs: &[InputObject],
    contract: &Contract,
    handle: &Handle,
    progress: &Arc<AtomicU64>,
) -> Result<(Vec<HeaderMap>, Option<OpenedFirst>)> {
    let mut first = None;
    let maps = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            if input.format == InputFormat::Quarantine {
                replay::preflight(input, contract, handle)?;
                return Ok(HeaderMap::identity(contract.columns.len()));
            }
            let keep = index == 0 && inputs.len() == 1;
            let open = input.open(handle, keep.then(|| progress.clone()))?;
            let mut tokenizer = CsvTokenizer::new(open.reader);
            let header = tokenizer.read_header().map_err(|e| read_error(e, &input.uri))?.ok_or_else(|| {
                Error::UnreadableInput {
                    source_uri: input.uri.clone(),
                    message: "the input is empty: no header line".into(),
                }
            })?;
            let names = header
                .names
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    String::from_utf8(h.clone()).map_err(|_| Error::SchemaDrift {
                        source_uri: input.uri.clone(),
                        message: format!("header line {}, column {}: the name is not valid UTF-8", header.line, i + 1),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let map = HeaderMap::match_header(contract, &names, header.line)
                .map_err(|message| Error::SchemaDrift { source_uri: input.uri.clone(), message })?;
            if keep {
                let line = tokenizer.line();
                first = Some(OpenedFirst { line, reader: tokenizer.into_inner(), checksum: open.checksum });
            }
            Ok(map)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((maps, first))
}

/// Reads every input in order into chunks: CSV as blocks of whole records, tokenized later by the checkers (see
/// [`crate::tokenize::record_prefix`]), a replay as tokenized chunks. Stops quietly when the consumers are gone.
fn read_inputs(
    inputs: &[InputObject],
    contract: &Contract,
    handle: &Handle,
    control: &RunControl,
    flow: &mut dyn ChunkFlow,
    mut first: Option<OpenedFirst>,
) -> Result<Vec<InputRecord>> {
    let mut seq = 0u64;
    let mut records = Vec::with_capacity(inputs.len());
    let block_bytes = chunk_bytes();
    for (source, input) in inputs.iter().enumerate() {
        control.check()?;
        if input.format == InputFormat::Quarantine {
            let (chunks, checksum) = replay::read_chunks(input, source, contract, handle)?;
            for chunk in chunks {
                if !flow.send(seq, chunk)? {
                    return Ok(records);
                }
                seq += 1;
            }
            records.push(checksum_of(input, &checksum)?);
            continue;
        }
        let (mut line, mut reader, checksum) = match first.take().filter(|_| source == 0) {
            Some(opened) => (opened.line, opened.reader, opened.checksum),
            None => {
                let open = input.open(handle, Some(control.bytes.clone()))?;
                let mut header = CsvTokenizer::new(open.reader);
                header.read_header().map_err(|e| read_error(e, &input.uri))?;
                (header.line(), header.into_inner(), open.checksum)
            }
        };
        let mut carry: Vec<u8> = Vec::new();
        let mut at_end = false;
        while !(at_end && carry.is_empty()) {
            control.check()?;
            let Some(mut chunk) = flow.buffers()? else {
                return Ok(records);
            };
            chunk.clear(source, 0);
            let mut block = std::mem::take(&mut chunk.block);
            block.append(&mut carry);
            if !at_end {
                let mut scan = RecordScan::default();
                at_end = fill_block(&mut reader, &mut block, &mut carry, block_bytes, &mut scan)
                    .map_err(|e| read_error(e, &input.uri))?;
            }
            if block.is_empty() {
                break;
            }
            chunk.block_line = line;
            chunk.block_is_last = at_end && carry.is_empty();
            line += crate::tokenize::line_breaks(&block);
            chunk.block = block;
            if !flow.send(seq, chunk)? {
                return Ok(records);
            }
            seq += 1;
        }
        // Read to the end (a header-only input has no block), so that the checksum is complete.
        let mut rest = [0u8; 64];
        while read_some(&mut reader, &mut rest).map_err(|e| read_error(e, &input.uri))? > 0 {}
        drop(reader);
        records.push(checksum_of(input, &checksum)?);
    }
    Ok(records)
}

/// Reads into `block`, which starts with the records left over from the last one, until it holds `block_bytes`
/// and a record ends in it, or the input ends (then `true`); what follows the last record end moves to `carry`.
/// `scan` goes on where it stopped as the block grows, so that one record longer than a block (or a quote never
/// closed) is scanned once, not once per read.
fn fill_block(
    reader: &mut impl std::io::Read,
    block: &mut Vec<u8>,
    carry: &mut Vec<u8>,
    block_bytes: usize,
    scan: &mut RecordScan,
) -> std::io::Result<bool> {
    loop {
        if block.len() >= block_bytes
            && let Some(cut) = scan.scan(block)
        {
            carry.extend_from_slice(&block[cut..]);
            block.truncate(cut);
            return Ok(false);
        }
        let start = block.len();
        let wanted = start.max(block_bytes) + 64 * 1024;
        if start < block_bytes {
            // Exactly, as for the chunk's data; a record longer than a block grows it amortised.
            block.reserve_exact(wanted - start);
        }
        block.resize(wanted, 0);
        let n = read_some(reader, &mut block[start..])?;
        block.truncate(start + n);
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Where the reader's chunks go, and where their buffers come from.
trait ChunkFlow {
    /// Buffers for the next chunk; `None` when the consumers are gone.
    fn buffers(&mut self) -> Result<Option<crate::tokenize::RecordChunk>>;
    /// Hands on chunk `seq`; `false` when the consumers are gone.
    fn send(&mut self, seq: u64, chunk: crate::tokenize::RecordChunk) -> Result<bool>;
}

/// To the checker threads over a channel, with buffers recycled by the committer (see [`next_buffers`]).
struct ToCheckers<'a> {
    out: Sender<(u64, crate::tokenize::RecordChunk)>,
    recycled: Receiver<crate::tokenize::RecordChunk>,
    created: usize,
    limit: usize,
    control: &'a RunControl,
}

impl ChunkFlow for ToCheckers<'_> {
    fn buffers(&mut self) -> Result<Option<crate::tokenize::RecordChunk>> {
        next_buffers(&self.recycled, &mut self.created, self.limit, self.control)
    }

    fn send(&mut self, seq: u64, chunk: crate::tokenize::RecordChunk) -> Result<bool> {
        Ok(self.out.send((seq, chunk)).is_ok())
    }
}

/// One thread: each chunk is tokenized, checked and committed where it is read, and its buffers reused.
struct Inline<'a, 'c> {
    committer: &'a mut Committer<'c>,
    inputs: &'a [InputObject],
    maps: &'a [HeaderMap],
    spare: Option<crate::tokenize::RecordChunk>,
}

impl ChunkFlow for Inline<'_, '_> {
    fn buffers(&mut self) -> Result<Option<crate::tokenize::RecordChunk>> {
        Ok(Some(self.spare.take().unwrap_or_default()))
    }

    fn send(&mut self, _seq: u64, chunk: crate::tokenize::RecordChunk) -> Result<bool> {
        let checked = tokenize_and_check(self.committer.contract, self.inputs, self.maps, chunk)?;
        self.spare = Some(self.committer.commit(checked)?);
        Ok(true)
    }
}

/// Reads as much as `buf` holds, unless the input ends first; 0 only at its end.
fn read_some(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The buffers for the next chunk: new ones until `limit` chunks exist, then those of a committed chunk. So the
/// reader never runs more than `limit` chunks ahead of the committer, however the checkers are scheduled, and
/// memory in flight is bounded. `None` when the committer is gone.
fn next_buffers(
    recycled: &Receiver<crate::tokenize::RecordChunk>,
    created: &mut usize,
    limit: usize,
    control: &RunControl,
) -> Result<Option<crate::tokenize::RecordChunk>> {
    if let Ok(chunk) = recycled.try_recv() {
        return Ok(Some(chunk));
    }
    if *created < limit {
        *created += 1;
        return Ok(Some(crate::tokenize::RecordChunk::default()));
    }
    loop {
        match recycled.recv_timeout(Duration::from_millis(200)) {
            Ok(chunk) => return Ok(Some(chunk)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => control.check()?,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

fn checksum_of(input: &InputObject, slot: &std::sync::Mutex<Option<crate::input::Checksum>>) -> Result<InputRecord> {
    let sum = slot
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .ok_or_else(|| Error::internal(&input.uri, "the input was not read to its end"))?;
    Ok(InputRecord { uri: input.uri.clone(), bytes: sum.bytes, sha256: sum.sha256 })
}

/// The niceness of the checker threads: the lowest priority (see [`yield_to_serial_stages`]).
const CHECKER_NICE: i32 = 19;

/// Lowers the calling thread's scheduling priority to [`CHECKER_NICE`] (on Linux niceness is per thread). The
/// checkers do most of a run's work and there are as many of them as threads, while the reader, the in-order
/// committer and the writers are each one thread that the others wait for. At one priority for all, the
/// scheduler shared the cores out evenly among whichever threads were runnable, so a serial stage waited behind
/// the checkers, the chunks in flight filled up, and then the checkers waited for it: at 5 M rows on two cores
/// 1.65 cores were busy on average; with the checkers at the lowest priority they take what the serial stages
/// leave, and 1.82 are (bench/README, "Thread scaling"). It orders only the worker's own threads where the
/// worker has a CPU cgroup of its own (a container, a systemd service, an autogrouped session); in one shared with
/// other busy processes the checkers also yield to those. Best effort: a system that refuses changes only the
/// speed.
fn yield_to_serial_stages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), CHECKER_NICE) {
        tracing::debug!(error = %e, "could not lower a checker thread's priority");
    }
}

/// Tokenizes (a CSV block) and checks chunks until the input ends or the consumer is gone.
fn check_chunks(
    contract: &Contract,
    inputs: &[InputObject],
    maps: &[HeaderMap],
    input: Receiver<(u64, crate::tokenize::RecordChunk)>,
    out: Sender<(u64, Result<CheckedChunk>)>,
) {
    yield_to_serial_stages();
    for (seq, chunk) in input.iter() {
        if out.send((seq, tokenize_and_check(contract, inputs, maps, chunk))).is_err() {
            return;
        }
    }
}

/// Tokenizes a chunk's block, if it holds one, then checks its records.
fn tokenize_and_check(
    contract: &Contract,
    inputs: &[InputObject],
    maps: &[HeaderMap],
    mut chunk: crate::tokenize::RecordChunk,
) -> Result<CheckedChunk> {
    if !chunk.tokenized && !chunk.block.is_empty() {
        crate::tokenize::tokenize_block(&mut chunk).map_err(|e| read_error(e, &inputs[chunk.source].uri))?;
    }
    Ok(check_chunk(contract, &maps[chunk.source], chunk))
}

/// Rows in the whole input, estimated from the stored size and the first chunk's bytes per record (an
/// underestimate for compressed input, which only means the ledger grows later). Capped, so that a wrong guess
/// cannot reserve much.
fn estimate_rows(first: &crate::tokenize::RecordChunk, total_bytes: u64) -> usize {
    let per_record = (first.data.len() + first.field_ends.len()) as u64 / first.len().max(1) as u64;
    (total_bytes / per_record.max(1)).min(50_000_000) as usize
}

/// The in-order half of the pipeline: ledger and writers.
struct Committer<'a> {
    contract: &'a Contract,
    inputs: &'a [InputObject],
    maps: &'a [HeaderMap],
    ledger: Ledger,
    silver: SilverWriter,
    sides: SideWriters,
    control: &'a RunControl,
    /// The source being read and the number of its next record: blocks are tokenized in any order, so their
    /// records are numbered here, in input order.
    next_record: (usize, u64),
}

impl Committer<'_> {
    /// Settles and writes a chunk; returns its raw records, whose buffers the reader may reuse.
    fn commit(&mut self, mut chunk: CheckedChunk) -> Result<crate::tokenize::RecordChunk> {
        self.control.check()?;
        if chunk.raw.first_record == 0 && chunk.raw.replay.is_empty() {
            if self.next_record.0 != chunk.raw.source {
                self.next_record = (chunk.raw.source, 1);
            }
            chunk.raw.first_record = self.next_record.1;
            self.next_record.1 += chunk.raw.len() as u64;
        }
        if self.ledger.counts.input_rows == 0 && !chunk.raw.is_empty() {
            self.ledger.reserve(estimate_rows(&chunk.raw, self.control.total_bytes.load(Ordering::Relaxed)));
        }
        let source = chunk.raw.source;
        let uri = &self.inputs[source].uri;
        let settled = self.ledger.settle(&chunk).map_err(|trip| {
            // A replayed row is named where it came from: its original source, record and line.
            let (source_uri, record, line) = match chunk.raw.replay.get(trip.record) {
                Some(m) => (m.source_uri.clone(), m.record_number, m.line_number),
                None => (
                    uri.clone(),
                    chunk.raw.first_record + trip.record as u64,
                    chunk.raw.lines.get(trip.record).copied().unwrap_or_default(),
                ),
            };
            Error::CircuitBreaker {
                error_type: trip.error_type.as_str(),
                max_same_errors: self.contract.max_same_errors,
                source_uri,
                record,
                line,
            }
        })?;
        self.silver.write(&chunk, settled.keep.as_ref())?;
        let map = &self.maps[source];
        self.sides.write(Area::Quarantine, self.contract, &chunk, map, uri, &settled.quarantined)?;
        self.sides.write(Area::Condemned, self.contract, &chunk, map, uri, &settled.condemned)?;
        self.control.rows.store(self.ledger.counts.input_rows, Ordering::Relaxed);
        Ok(chunk.raw)
    }
}

/// Runs the transform. On success `_SUCCESS` has been written; every other end is an [`Error`].
pub fn run(args: &RunArgs, handle: &Handle, control: &RunControl) -> Result<RunOutcome> {
    let contract = load_contract(&args.contract)?;
    let options = StoreOptions {
        endpoint: args.endpoint.clone().or_else(|| contract.storage.endpoint.clone()),
        region: args.region.clone().or_else(|| contract.storage.region.clone()),
    };
    let lake_uri = args.lake.clone().unwrap_or_else(|| contract.storage.lake_uri.clone());
    let started_at = chrono::Utc::now();
    let run_id = args.run_id.clone().unwrap_or_else(|| started_at.format("%Y%m%dT%H%M%SZ").to_string());
    silverline_crds::names::check_run_id(&run_id).map_err(|e| Error::Usage(e.to_string()))?;

    let lake = Location::open(&lake_uri, &options, OpenOptions::WRITER)?;
    let spill_dir = args.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spill = if lake.local_dir.is_some() {
        Spill::unchecked(&spill_dir)
    } else {
        Spill::new(&spill_dir).map_err(|e| Error::Usage(format!("{e} (set --spill-dir to a writable directory)")))?
    };
    let layout = LakeLayout::new(lake.prefix.clone(), &contract.dataset, &contract.schema_version, &run_id)
        .map_err(|e| Error::Usage(e.to_string()))?;
    // The run-id check and the inputs' lookup side by side: both only read, and on a remote store each is a round
    // trip (and a new connection) before the run can start. The run-id check's error comes first.
    let (unused, inputs) = std::thread::scope(|scope| {
        let inputs = scope.spawn(|| resolve_inputs(&args.input, &options, handle));
        let unused = ensure_unused(&lake, &layout, handle);
        (unused, inputs.join().unwrap_or_else(|_| Err(Error::internal("resolving the inputs", "the thread panicked"))))
    });
    unused?;
    let inputs = inputs?;
    control.total_bytes.store(inputs.iter().map(|i| i.size).sum(), Ordering::Relaxed);
    let (maps, first) = preflight(&inputs, &contract, handle, &control.bytes)?;

    // The nonce makes the claim this worker's alone: a create whose answer was lost is recognised as its own by its
    // bytes (`put_json`), never another worker's claim of the same run id.
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| Error::internal("drawing the run claim's nonce", e.to_string()))?;
    let claim = serde_json::json!({
        "run_id": run_id,
        "dataset": contract.dataset,
        "input_uri": args.input,
        "started_at": started_at.to_rfc3339(),
        "worker_version": crate::report::WORKER_VERSION,
        "claim": hex::encode(nonce),
    });
    put_json(&lake, &layout.marker(layout::RUN_CLAIM), &claim, Put::OnceFor(&run_id), handle)?;

    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let mut committer = Committer {
        contract: &contract,
        inputs: &inputs,
        maps: &maps,
        ledger: Ledger::new(contract.max_same_errors, contract.max_attempts)
            .with_sources(inputs.iter().map(|i| i.uri.clone()).collect()),
        silver: SilverWriter::new(lake.clone(), layout.clone(), &contract, spill.clone(), handle.clone(), threads),
        sides: SideWriters::new(&contract, lake.clone(), layout.clone(), spill.clone(), handle.clone(), threads)?,
        control,
        next_record: (usize::MAX, 1),
    };

    let (input_records, committed) = if threads == 1 {
        // One thread does everything, in order: no queues, no hand-offs.
        let mut flow = Inline { committer: &mut committer, inputs: &inputs, maps: &maps, spare: None };
        match read_inputs(&inputs, &contract, handle, control, &mut flow, first) {
            Ok(records) => (Ok(records), Ok(())),
            Err(e) => (Ok(Vec::new()), Err(e)),
        }
    } else {
        std::thread::scope(|scope| {
            let (raw_tx, raw_rx) = bounded(threads);
            let (checked_tx, checked_rx) = bounded(threads);
            // Chunks in flight: one being read or committed, and two per checker (being checked, or waiting in a
            // queue). With three per checker the queues held more than kept the checkers busy (2 fewer chunks at
            // two threads: −7 MiB peak RSS, the same speed); one fewer again: −6 MiB, wall 1.02x within the
            // spread (5 M rows, 7 paired runs each).
            let in_flight = 2 * threads + 1;
            let (recycle_tx, recycle_rx) = bounded(in_flight);
            let (all_inputs, the_contract) = (&inputs, &contract);
            let reader = scope.spawn(move || {
                let mut flow = ToCheckers { out: raw_tx, recycled: recycle_rx, created: 0, limit: in_flight, control };
                read_inputs(all_inputs, the_contract, handle, control, &mut flow, first)
            });
            for _ in 0..threads {
                let (rx, tx) = (raw_rx.clone(), checked_tx.clone());
                let (contract, inputs, maps) = (&contract, &inputs, &maps);
                scope.spawn(move || check_chunks(contract, inputs, maps, rx, tx));
            }
            drop((raw_rx, checked_tx));
            let recycle = recycle_tx;
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            let mut committed = Ok(());
            'receive: loop {
                // Wake up now and then, so that a stop request is honoured even while the input stalls.
                let (seq, chunk) = match checked_rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(item) => item,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => match control.check() {
                        Ok(()) => continue,
                        Err(e) => {
                            committed = Err(e);
                            break;
                        }
                    },
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
                pending.insert(seq, chunk);
                while let Some(chunk) = pending.remove(&next) {
                    next += 1;
                    match chunk.and_then(|chunk| committer.commit(chunk)) {
                        // A full queue or a finished reader only means this chunk's buffers are freed instead.
                        Ok(raw) => {
                            let _ = recycle.try_send(raw);
                        }
                        Err(e) => {
                            committed = Err(e);
                            break 'receive;
                        }
                    }
                }
            }
            drop(checked_rx);
            // A reader waiting for buffers stops when the committer lets go of them.
            drop(recycle);
            let read = reader.join().unwrap_or_else(|_| Err(Error::internal("input reader", "the thread panicked")));
            (read, committed)
        })
    };
    if let Err(e) = committed {
        if let Error::CircuitBreaker { .. } = &e {
            let trip = serde_json::json!({
                "run_id": run_id,
                "dataset": contract.dataset,
                "error": e.to_string(),
                "rows_read": committer.ledger.counts.input_rows,
            });
            put_json(&lake, &layout.marker(layout::CIRCUIT_BREAKER_REPORT), &trip, Put::Replace, handle)?;
        }
        return Err(e);
    }
    let input_records = input_records?;
    control.check()?;

    let Committer { ledger, silver, sides, .. } = committer;
    // Every row is settled: the key state (~30 bytes a row) is freed before the writers encode their last row
    // groups and complete their uploads, so that the end of a run does not add to its peak; uploads to an object
    // store may then have as many more parts in flight as that memory holds.
    let ledger_bytes = ledger.state_bytes();
    let counts = ledger.into_counts();
    spill.widen(ledger_bytes);
    let finishing = Instant::now();
    let files = crate::sink::finish_all(silver, sides)?;
    let finishing_seconds = finishing.elapsed().as_secs_f64();
    let mut error_columns = crate::summary::ErrorColumns::new();
    for ((error, column), n) in &counts.by_error_column {
        let name = crate::values::ErrorType::ALL.get(*error).map_or("UNKNOWN", |t| t.as_str());
        let column = column.and_then(|c| contract.columns.get(c)).map(|c| c.name.clone());
        *error_columns.entry(name.to_owned()).or_default().entry(column).or_default() += n;
    }
    if counts.input_rows != counts.valid + counts.quarantined + counts.condemned {
        return Err(Error::internal("conservation", format!("{counts:?} does not add up")));
    }
    let facts = RunFacts {
        run_id: run_id.clone(),
        dataset: contract.dataset.clone(),
        schema_v: contract.schema_version.clone(),
        lake_uri: lake.uri.clone(),
        input_uri: args.input.clone(),
        inputs: input_records,
        started_at,
        finished_at: chrono::Utc::now(),
        files,
    };
    let rate = counts.gated_rate();
    if rate > contract.max_quarantine_rate {
        let report = build_report("quality_gate_failed", facts, &counts);
        let key = layout.marker(layout::QUALITY_REPORT);
        put_json(&lake, &key, &report, Put::Replace, handle)?;
        return Err(Error::QualityGate { rate, max: contract.max_quarantine_rate, report_key: lake.uri_of(&key) });
    }
    let report = build_report("success", facts, &counts);
    let key = layout.marker(layout::SUCCESS);
    control.check()?;
    put_json(&lake, &key, &report, Put::OnceFor(&run_id), handle)?;
    Ok(RunOutcome { report, success_uri: lake.uri_of(&key), error_columns, ledger_bytes, finishing_seconds })
}

/// Reports progress until `done` is set: a line on a terminal, a JSON log line every few seconds otherwise.
pub fn report_progress(control: &RunControl, done: &AtomicBool, terminal: bool) {
    let started = Instant::now();
    let every = if terminal { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let mut last = Instant::now();
    let mut printed = false;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        let rows = control.rows.load(Ordering::Relaxed);
        let bytes = control.bytes.load(Ordering::Relaxed);
        let total = control.total_bytes.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64().max(1e-3);
        let eta = (total > bytes && bytes > 0).then(|| (total - bytes) as f64 * seconds / bytes as f64);
        if terminal {
            let eta = eta.map_or(String::new(), |s| format!(", ETA {s:.0}s"));
            eprint!("\r{rows} rows, {:.0} rows/s, {:.1} MB read{eta}   ", rows as f64 / seconds, bytes as f64 / 1e6);
            printed = true;
        } else {
            crate::log::progress(rows, (rows as f64 / seconds).round(), bytes, total, eta.map(f64::round));
        }
    }
    if printed {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_longer_than_a_block_is_scanned_once_as_it_is_read() {
        // A quote never closed at the top: the whole input is one record, read 64 KiB at a time.
        let mut input = b"1,\"2\n".to_vec();
        input.extend(b"5,6\r\n".repeat(1_000_000));
        let (mut block, mut carry, mut scan) = (Vec::new(), Vec::new(), RecordScan::default());
        let at_end = fill_block(&mut &input[..], &mut block, &mut carry, 1024, &mut scan).expect("reads");
        assert!(at_end && carry.is_empty() && block == input);
        assert!(scan.examined() <= 2 * input.len(), "{} bytes searched for {}", scan.examined(), input.len());
        // Records that end in time are cut where the last one ends.
        let input = b"1,2\n3,4\n5".repeat(1000);
        let (mut block, mut carry, mut scan) = (Vec::new(), Vec::new(), RecordScan::default());
        assert!(!fill_block(&mut &input[..], &mut block, &mut carry, 1024, &mut scan).expect("reads"));
        assert!(block.ends_with(b"\n") && block.len() >= 1024);
        assert_eq!([block.as_slice(), carry.as_slice()].concat(), input);
    }

    #[test]
    fn the_reader_gets_no_more_than_its_limit_of_chunks_ahead() {
        let control = RunControl::default();
        let (tx, rx) = bounded(4);
        let mut created = 0;
        let fresh = |r: Result<Option<crate::tokenize::RecordChunk>>| r.expect("no stop").expect("buffers");
        let first = fresh(next_buffers(&rx, &mut created, 2, &control));
        fresh(next_buffers(&rx, &mut created, 2, &control));
        assert_eq!(created, 2);
        // A committed chunk comes back and is reused before anything new is made.
        tx.send(first).expect("queue has room");
        fresh(next_buffers(&rx, &mut created, 2, &control));
        assert_eq!(created, 2);
        // At the limit the reader waits; a stop request ends the wait with the signal's error.
        control.request_stop("SIGTERM");
        assert!(matches!(next_buffers(&rx, &mut created, 2, &control), Err(Error::Interrupted { .. })));
        // And once the committer is gone, the reader stops quietly.
        drop(tx);
        let control = RunControl::default();
        assert!(next_buffers(&rx, &mut created, 2, &control).expect("no stop").is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn checker_threads_run_at_the_lowest_priority_and_leave_the_others_alone() {
        let nice = |tid| rustix::process::getpriority_process(Some(tid)).expect("reads a thread's priority");
        let here = rustix::thread::gettid();
        let before = nice(here);
        assert_ne!(
            before, CHECKER_NICE,
            "run the tests at another priority than the checkers', or this proves nothing"
        );
        let contract = crate::contract::tests::transactions();
        let (raw_tx, raw_rx) = bounded(1);
        let (checked_tx, _checked_rx) = bounded(1);
        drop(raw_tx);
        // A checker with no input returns at once: its thread's priority is what it set.
        let checker = std::thread::spawn(move || {
            check_chunks(&contract, &[], &[], raw_rx, checked_tx);
            nice(rustix::thread::gettid())
        });
        assert_eq!(checker.join().expect("the checker thread ends"), CHECKER_NICE);
        assert_eq!(nice(here), before, "only the checker's own thread changes");
    }

    /// Takes every chunk the reader hands on: how many, their records' lines, the first block's line.
    #[derive(Debug, Default, PartialEq)]
    struct Collect {
        chunks: usize,
        lines: u64,
        first_line: Option<u64>,
    }

    impl ChunkFlow for Collect {
        fn buffers(&mut self) -> Result<Option<crate::tokenize::RecordChunk>> {
            Ok(Some(crate::tokenize::RecordChunk::default()))
        }

        fn send(&mut self, _seq: u64, chunk: crate::tokenize::RecordChunk) -> Result<bool> {
            self.chunks += 1;
            self.lines += crate::tokenize::line_breaks(&chunk.block);
            self.first_line.get_or_insert(chunk.block_line);
            Ok(true)
        }
    }

    #[test]
    fn a_runs_only_input_is_read_on_from_its_header_where_the_preflight_opened_it() {
        use sha2::Digest;
        let dir = tempfile::tempdir().expect("temp dir");
        // A byte-order mark and CRLF line ends.
        let mut text =
            String::from("\u{feff}TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp\r\n");
        for i in 0..50_000 {
            text.push_str(&format!("T{i},C{},{i}.25,EUR,2024-01-01T00:00:00Z\r\n", i % 7));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let handle = runtime.handle();
        let contract = crate::contract::tests::transactions();
        // Read as before (opened again after the preflight), then as now: the same chunks from the same line.
        let read = |keep: bool| {
            let path = dir.path().join(if keep { "kept.csv" } else { "again.csv" });
            std::fs::write(&path, &text).expect("write the input");
            let uri = path.display().to_string();
            let inputs = crate::input::resolve_inputs(&uri, &StoreOptions::default(), handle).expect("resolves");
            let control = RunControl::default();
            let (maps, first) = preflight(&inputs, &contract, handle, &control.bytes).expect("the header matches");
            assert_eq!(maps.len(), 1);
            assert!(first.is_some(), "a run's only input stays open");
            if keep {
                // Gone from its directory: a second open would fail; the one open file is read on to its end.
                std::fs::remove_file(&path).expect("remove the input");
            }
            let mut flow = Collect::default();
            let first = if keep { first } else { None };
            let records = read_inputs(&inputs, &contract, handle, &control, &mut flow, first).expect("read to its end");
            (flow, records[0].bytes, records[0].sha256.clone(), control.bytes.load(Ordering::Relaxed))
        };
        let (again, kept) = (read(false), read(true));
        // (Progress aside: there the preflight's open had counted what it buffered before it was dropped.)
        assert_eq!((&kept.0, kept.1, &kept.2), (&again.0, again.1, &again.2));
        let (flow, bytes, sha256, progress) = kept;
        assert_eq!(
            (flow.lines, flow.first_line),
            (50_000, Some(2)),
            "every record once, numbered from the header's end"
        );
        assert_eq!((bytes, progress), (text.len() as u64, text.len() as u64), "every byte counted once");
        assert_eq!(sha256, hex::encode(sha2::Sha256::digest(text.as_bytes())), "the header is in the checksum");
    }

    #[test]
    fn with_more_than_one_input_none_is_kept_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let header = "TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp\n";
        for name in ["a.csv", "b.csv"] {
            std::fs::write(dir.path().join(name), format!("{header}T-{name},C1,1.00,EUR,2024-01-01T00:00:00Z\n"))
                .expect("write an input");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let uri = dir.path().display().to_string();
        let inputs = crate::input::resolve_inputs(&uri, &StoreOptions::default(), runtime.handle()).expect("resolves");
        let contract = crate::contract::tests::transactions();
        let control = RunControl::default();
        let (maps, first) = preflight(&inputs, &contract, runtime.handle(), &control.bytes).expect("headers match");
        assert_eq!(maps.len(), 2);
        assert!(first.is_none());
        assert_eq!(control.bytes.load(Ordering::Relaxed), 0, "the preflight counts no progress");
    }
}
