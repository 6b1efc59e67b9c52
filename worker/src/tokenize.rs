//! CSV bytes → chunks of raw records, with csv-core (RFC 4180: quoted fields may hold commas, quotes and line
//! breaks; CRLF or LF; a UTF-8 BOM is skipped). Fields are kept as bytes: decoding is the checker's job, so one
//! undecodable byte costs one row, not the run. A chunk is a flat byte buffer with field and record ends, so
//! reading allocates per chunk, not per row.
//!
//! To tokenize in parallel, the input is first cut into blocks of whole records ([`record_prefix`] follows only
//! the quotes, as csv-core reads them, to find where a record ends); each block is then tokenized on its own
//! ([`tokenize_block`]) by any thread, starting on the line where the block starts.

use std::io::{self, BufRead};

/// Where a replayed quarantine row came from: it keeps its lineage, hash and attempt count.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayMeta {
    pub source_uri: String,
    pub record_number: u64,
    pub line_number: u64,
    pub row_hash: u128,
    pub attempt_count: u32,
    /// False when the quarantined row had no per-column values (wrong field count or undecodable bytes).
    pub has_values: bool,
    pub raw_record: String,
    /// The error the row was quarantined with: failing the same way again is not a new failure for the gate.
    pub previous_error: Option<crate::values::ErrorType>,
    /// The record's original bytes, when they are not UTF-8 (`raw_record` then holds U+FFFD in their place).
    pub raw_record_bytes: Option<Vec<u8>>,
}

/// The most bytes of fields a chunk holds: offsets into them are 32-bit. Chunks are cut near
/// [`crate::run::CHUNK_BYTES`], so only a single record longer than this reaches it, and is refused (see
/// [`TooLong`]).
pub const MAX_CHUNK_DATA: usize = u32::MAX as usize;

/// A record whose fields would take a chunk past [`MAX_CHUNK_DATA`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the record starting on line {line} is longer than 4 GiB (4,294,967,295 bytes of fields), which is not supported"
)]
pub struct TooLong {
    pub line: u64,
}

/// Consecutive records of one source.
#[derive(Debug, Clone, Default)]
pub struct RecordChunk {
    /// Index of the source in the run's list of inputs.
    pub source: usize,
    /// 1-based record number (data records, header excluded) of the first record in this chunk.
    pub first_record: u64,
    /// The fields' bytes, back to back: at most [`MAX_CHUNK_DATA`] bytes, so offsets into it are 32-bit.
    pub data: Vec<u8>,
    /// End offset in `data` of every field (32 bits: half the memory of `usize` for every chunk in flight).
    pub field_ends: Vec<u32>,
    /// For every record, the index in `field_ends` one past its last field.
    pub record_ends: Vec<u32>,
    /// 1-based line on which each record starts.
    pub lines: Vec<u64>,
    /// For replayed quarantine rows, one entry per record; empty for CSV input.
    pub replay: Vec<ReplayMeta>,
    /// The record, if any, that ended at the end of the input inside a quoted field: its quote was never closed.
    pub open_quote: Option<OpenQuote>,
    /// Records with text after a closing quote (`"C1"x`), which csv-core would silently join to `C1x`: (record
    /// index in the chunk, 1-based field). Rare, so a list.
    pub text_after_quote: Vec<(usize, usize)>,
    /// Where in `block` each record lies (its line break excluded; a record that the input's end ends, all of
    /// it): what the quarantine keeps of a record, byte for byte. Filled by [`tokenize_block`]; empty for records
    /// read from a stream or replayed, or from a block of 4 GiB or more. 32-bit offsets: 8 bytes a record in
    /// every chunk in flight.
    pub spans: Vec<std::ops::Range<u32>>,
    /// The input bytes of a block: to tokenize (see [`tokenize_block`]), then, once `tokenized`, the bytes that
    /// `spans` point into.
    pub block: Vec<u8>,
    pub tokenized: bool,
    /// 1-based line on which `block` starts, and whether the input ends with it.
    pub block_line: u64,
    pub block_is_last: bool,
}

/// Where the quote scanner is within a record's raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    FieldStart,
    Unquoted,
    Quoted,
    /// Just after a quote inside a quoted field: the closing one, or the first of an escaped pair.
    QuoteInQuoted,
}

/// Follows the quoting of a record's raw bytes, beside csv-core, to see what csv-core forgives: text after a
/// closing quote, and a quote still open at the end of the input. Jumps with memchr, so it costs little.
#[derive(Debug, Clone, Copy)]
struct QuoteScan {
    state: QuoteState,
    /// 0-based field the scan is in.
    field: usize,
    /// 0-based field with text after its closing quote, the first one.
    text_after_quote: Option<usize>,
}

impl QuoteScan {
    fn new() -> QuoteScan {
        QuoteScan { state: QuoteState::FieldStart, field: 0, text_after_quote: None }
    }

    fn scan(&mut self, bytes: &[u8]) {
        use QuoteState::*;
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                Quoted => match memchr::memchr(b'"', &bytes[i..]) {
                    Some(j) => {
                        i += j + 1;
                        self.state = QuoteInQuoted;
                    }
                    None => return,
                },
                Unquoted => match memchr::memchr3(b',', b'\r', b'\n', &bytes[i..]) {
                    Some(j) => {
                        self.field += usize::from(bytes[i + j] == b',');
                        i += j + 1;
                        self.state = FieldStart;
                    }
                    None => return,
                },
                FieldStart | QuoteInQuoted => {
                    let after_quote = self.state == QuoteInQuoted;
                    self.state = match bytes[i] {
                        b'"' => Quoted,
                        b',' => {
                            self.field += 1;
                            FieldStart
                        }
                        b'\r' | b'\n' => FieldStart,
                        _ => {
                            if after_quote {
                                self.text_after_quote.get_or_insert(self.field);
                            }
                            Unquoted
                        }
                    };
                    i += 1;
                }
            }
        }
    }
}

/// Counts the lone CRs among `bytes`, just consumed (a `\r` not followed by `\n`, a line break of classic Mac
/// files, which csv-core does not count): `pending` says the previous bytes ended with a `\r`.
fn note_lone_crs(pending: &mut bool, lone: &mut u64, bytes: &[u8]) {
    let Some(&first) = bytes.first() else { return };
    if std::mem::take(pending) && first != b'\n' {
        *lone += 1;
    }
    for i in memchr::memchr_iter(b'\r', bytes) {
        match bytes.get(i + 1) {
            Some(b'\n') => {}
            Some(_) => *lone += 1,
            None => *pending = true,
        }
    }
}

/// The line breaks in `data`: `\n`, `\r\n` and lone `\r` (a `\r` at its end counts: blocks are cut only after a
/// line break, never between a `\r` and its `\n`).
pub fn line_breaks(data: &[u8]) -> u64 {
    let newlines = memchr::memchr_iter(b'\n', data).count();
    let lone = memchr::memchr_iter(b'\r', data).filter(|&i| data.get(i + 1) != Some(&b'\n')).count();
    (newlines + lone) as u64
}

/// Just past the last line break in `data[from..to]`: a `\n`, or a `\r` that a byte other than `\n` follows (a
/// `\r` whose next byte is not in `data` yet may be the first half of a `\r\n`: not taken).
fn last_line_break(data: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut end = to;
    while let Some(i) = memchr::memrchr2(b'\n', b'\r', &data[from..end]).map(|i| from + i) {
        match (data[i], data.get(i + 1)) {
            (b'\n', _) => return Some(i + 1),
            (_, Some(next)) if *next != b'\n' => return Some(i + 1),
            _ => end = i,
        }
    }
    None
}

/// Where a quote that was never closed opened: it swallowed the rest of the input into one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenQuote {
    /// Index of the record in its chunk.
    pub record: usize,
    /// 1-based line of the quote.
    pub line: u64,
    /// 1-based field of the record that the quote opens.
    pub field: usize,
}

impl RecordChunk {
    pub fn new(source: usize, first_record: u64) -> RecordChunk {
        RecordChunk { source, first_record, ..RecordChunk::default() }
    }

    pub fn len(&self) -> usize {
        self.record_ends.len()
    }

    /// Empties the chunk for reuse, keeping its buffers.
    pub fn clear(&mut self, source: usize, first_record: u64) {
        self.source = source;
        self.first_record = first_record;
        self.data.clear();
        self.field_ends.clear();
        self.record_ends.clear();
        self.lines.clear();
        self.replay.clear();
        self.open_quote = None;
        self.text_after_quote.clear();
        self.spans.clear();
        self.block.clear();
        self.tokenized = false;
        self.block_line = 0;
        self.block_is_last = false;
    }

    pub fn is_empty(&self) -> bool {
        self.record_ends.is_empty()
    }

    /// The input bytes of record `r`, exactly as the file has them (line break excluded), if it was read from a
    /// block.
    pub fn input_bytes(&self, r: usize) -> Option<&[u8]> {
        self.spans.get(r).and_then(|span| self.block.get(span.start as usize..span.end as usize))
    }

    /// Whether record `r` has text after a closing quote.
    pub fn has_text_after_quote(&self, r: usize) -> bool {
        self.text_after_quote.binary_search_by_key(&r, |(record, _)| *record).is_ok()
    }

    /// The range of `field_ends` indices of record `r`.
    #[inline]
    pub fn field_range(&self, r: usize) -> std::ops::Range<usize> {
        let start = if r == 0 { 0 } else { self.record_ends[r - 1] as usize };
        start..self.record_ends[r] as usize
    }

    /// Field `f` (an index into `field_ends`).
    #[inline]
    pub fn field(&self, f: usize) -> &[u8] {
        &self.data[self.field_start(f)..self.field_ends[f] as usize]
    }

    /// Where field `f` starts in `data`: where the one before it ends.
    #[inline]
    fn field_start(&self, f: usize) -> usize {
        if f == 0 { 0 } else { self.field_ends[f - 1] as usize }
    }

    /// The bytes of all fields of record `r`, back to back.
    pub fn record_bytes(&self, r: usize) -> &[u8] {
        let range = self.field_range(r);
        &self.data[self.field_start(range.start)..self.field_start(range.end)]
    }

    /// All fields of record `r`, in source order.
    pub fn fields(&self, r: usize) -> impl Iterator<Item = &[u8]> {
        self.field_range(r).map(move |f| self.field(f))
    }

    /// Appends one record given as fields (used for replayed rows and tests); an error, and the chunk as it was,
    /// if the chunk's data would pass [`MAX_CHUNK_DATA`].
    pub fn push_record<'a>(&mut self, fields: impl IntoIterator<Item = &'a [u8]>, line: u64) -> Result<(), TooLong> {
        self.push_record_within(fields, line, MAX_CHUNK_DATA)
    }

    /// [`Self::push_record`] with at most `max` bytes of fields (at most [`MAX_CHUNK_DATA`]).
    fn push_record_within<'a>(
        &mut self,
        fields: impl IntoIterator<Item = &'a [u8]>,
        line: u64,
        max: usize,
    ) -> Result<(), TooLong> {
        let (data, ends) = (self.data.len(), self.field_ends.len());
        let mut fit = true;
        for field in fields {
            self.data.extend_from_slice(field);
            match u32::try_from(self.data.len()).ok().filter(|end| *end as usize <= max) {
                Some(end) => self.field_ends.push(end),
                None => {
                    fit = false;
                    break;
                }
            }
        }
        match u32::try_from(self.field_ends.len()).ok().filter(|n| *n as usize <= max) {
            Some(fields_end) if fit => {
                self.record_ends.push(fields_end);
                self.lines.push(line);
                Ok(())
            }
            _ => {
                self.data.truncate(data);
                self.field_ends.truncate(ends);
                Err(TooLong { line })
            }
        }
    }
}

/// An input's header record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1-based line it is on: blank lines may come before it.
    pub line: u64,
    /// The field names, trimmed.
    pub names: Vec<Vec<u8>>,
}

/// Reads records one at a time from a buffered byte stream.
pub struct CsvTokenizer<R> {
    input: R,
    core: csv_core::Reader,
    ends: Vec<usize>,
    /// Newlines consumed outside of records (blank lines), which csv-core does not see, and the lines before the
    /// start of the input given.
    skipped_lines: u64,
    done: bool,
    /// The last record read ended because the input did, not at a line break.
    ended_by_input_end: bool,
    /// The input starts mid-file: a UTF-8 BOM there is data, which csv-core would skip at its first read.
    keep_bom: bool,
    /// The most bytes of fields a chunk takes: [`MAX_CHUNK_DATA`] (lower in tests).
    max_data: usize,
    /// Bytes of the input consumed so far.
    consumed: usize,
    /// Lone CRs consumed so far (a `\r` not followed by `\n`: a line break of classic Mac files), which csv-core
    /// does not count as lines; and whether the last byte consumed was a `\r` whose next byte is not known yet.
    lone_crs: u64,
    pending_cr: bool,
    /// Whether each record's place in the input goes to [`RecordChunk::spans`]: only when the input is a block,
    /// which the chunk keeps.
    keep_spans: bool,
}

impl<R: BufRead> CsvTokenizer<R> {
    pub fn new(input: R) -> Self {
        CsvTokenizer {
            input,
            core: csv_core::Reader::new(),
            ends: vec![0; 64],
            skipped_lines: 0,
            done: false,
            ended_by_input_end: false,
            keep_bom: false,
            max_data: MAX_CHUNK_DATA,
            consumed: 0,
            lone_crs: 0,
            pending_cr: false,
            keep_spans: false,
        }
    }

    /// A tokenizer of input that starts on 1-based line `line`, in the middle of a file.
    pub fn starting_at_line(input: R, line: u64) -> Self {
        let mut tokenizer = CsvTokenizer::new(input);
        tokenizer.skipped_lines = line.saturating_sub(1);
        tokenizer.keep_bom = true;
        tokenizer
    }

    /// The 1-based line the reader is on. A line ends with `\n`, `\r\n` or a lone `\r` (a `\r` just read counts
    /// as one: whatever follows, it ends a line, once).
    pub fn line(&self) -> u64 {
        self.skipped_lines + self.core.line() + self.lone_crs + u64::from(self.pending_cr)
    }

    /// The input not read yet (after the header, the data records).
    pub fn into_inner(self) -> R {
        self.input
    }

    /// Skips blank lines before a record, so that the record's line number is exact.
    fn skip_blank_lines(&mut self) -> io::Result<()> {
        loop {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                return Ok(());
            }
            let blank = buf.iter().take_while(|b| **b == b'\n' || **b == b'\r').count();
            self.skipped_lines += buf[..blank].iter().filter(|b| **b == b'\n').count() as u64;
            note_lone_crs(&mut self.pending_cr, &mut self.lone_crs, &buf[..blank]);
            let whole = blank == buf.len();
            self.input.consume(blank);
            self.consumed += blank;
            if !whole {
                return Ok(());
            }
        }
    }

    /// Consumes the `\n` of a `\r\n` whose `\r` ended the last record: csv-core stops after the `\r`, and
    /// [`Self::line`] already counts the break (see `pending_cr`), so whoever reads on from here must not see the
    /// `\n` as a blank line of its own.
    fn finish_crlf(&mut self) -> io::Result<()> {
        if !self.pending_cr {
            return Ok(());
        }
        if self.input.fill_buf()?.first() == Some(&b'\n') {
            self.input.consume(1);
            self.consumed += 1;
            self.pending_cr = false;
            self.skipped_lines += 1;
        }
        Ok(())
    }

    /// Reads the next record into `chunk`, whose `data` holds `*filled` bytes of fields followed by spare room.
    /// Returns false at the end of the input.
    fn read_record(&mut self, chunk: &mut RecordChunk, filled: &mut usize) -> io::Result<bool> {
        use csv_core::ReadRecordResult::*;
        if self.done {
            return Ok(false);
        }
        self.skip_blank_lines()?;
        let start_line = self.line();
        let record_start = *filled;
        let input_start = self.consumed;
        let mut n_ends = 0;
        let mut quoting = QuoteScan::new();
        loop {
            if chunk.data.len() < *filled + 1024 {
                let grown = (*filled + 1024).max(chunk.data.len() * 2);
                chunk.data.resize(grown, 0);
            }
            let mut input = self.input.fill_buf()?;
            if self.keep_bom && !input.is_empty() {
                // csv-core skips a BOM only when its first read holds all three bytes.
                self.keep_bom = false;
                input = &input[..1];
            }
            let at_end = input.is_empty();
            let (result, n_in, n_out, n_end) =
                self.core.read_record(input, &mut chunk.data[*filled..], &mut self.ends[n_ends..]);
            quoting.scan(&input[..n_in]);
            note_lone_crs(&mut self.pending_cr, &mut self.lone_crs, &input[..n_in]);
            self.input.consume(n_in);
            self.consumed += n_in;
            *filled += n_out;
            n_ends += n_end;
            match result {
                InputEmpty | OutputFull => {}
                OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                Record => {
                    self.ended_by_input_end = at_end;
                    if let Some(field) = quoting.text_after_quote {
                        chunk.text_after_quote.push((chunk.len(), field + 1));
                    }
                    // csv-core ends a record silently at the end of the input, even inside a quoted field.
                    if at_end && quoting.state == QuoteState::Quoted && n_ends > 0 {
                        // The open field is the last one; line breaks before it lie inside earlier quoted fields,
                        // counted field by field (a `\r` ending one and a `\n` starting the next are two lines).
                        let mut from = record_start;
                        let mut breaks = 0;
                        for &end in &self.ends[..n_ends - 1] {
                            breaks += line_breaks(&chunk.data[from..record_start + end]);
                            from = record_start + end;
                        }
                        chunk.open_quote =
                            Some(OpenQuote { record: chunk.len(), line: start_line + breaks, field: n_ends });
                    }
                    let end = record_start + if n_ends == 0 { 0 } else { self.ends[n_ends - 1] };
                    if end > self.max_data || chunk.field_ends.len() + n_ends > self.max_data {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, TooLong { line: start_line }));
                    }
                    // Both fit in 32 bits: checked just above.
                    chunk.field_ends.extend(self.ends[..n_ends].iter().map(|e| (record_start + e) as u32));
                    chunk.record_ends.push(chunk.field_ends.len() as u32);
                    chunk.lines.push(start_line);
                    if self.keep_spans
                        && let (Ok(start), Ok(end)) = (u32::try_from(input_start), u32::try_from(self.consumed))
                    {
                        // With its line break, taken off by `tokenize_block`, which holds the input.
                        chunk.spans.push(start..end);
                    }
                    return Ok(true);
                }
                End => {
                    *filled = record_start;
                    self.done = true;
                    return Ok(false);
                }
            }
        }
    }

    /// Reads the header record: the field names, trimmed. `None` when the input holds no record at all. Its
    /// whole line break is consumed, so that [`Self::into_inner`] starts on the line [`Self::line`] names.
    pub fn read_header(&mut self) -> io::Result<Option<Header>> {
        let mut chunk = RecordChunk::new(0, 0);
        let mut filled = 0;
        let found = self.read_record(&mut chunk, &mut filled)?;
        chunk.data.truncate(filled);
        if !found {
            return Ok(None);
        }
        self.finish_crlf()?;
        let names = chunk.fields(0).map(|f| crate::values::trim(f).to_vec()).collect();
        Ok(Some(Header { line: chunk.lines[0], names }))
    }

    /// Reads up to `max_records` records or about `max_bytes` of field data into a new chunk.
    pub fn next_chunk(
        &mut self,
        source: usize,
        first_record: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Option<RecordChunk>> {
        self.next_chunk_reusing(RecordChunk::default(), source, first_record, max_records, max_bytes)
    }

    /// [`Self::next_chunk`] into the buffers of a chunk that is done with, so that reading allocates (and
    /// faults in) nothing once the buffers in flight have grown to size.
    pub fn next_chunk_reusing(
        &mut self,
        mut chunk: RecordChunk,
        source: usize,
        first_record: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Option<RecordChunk>> {
        chunk.clear(source, first_record);
        chunk.data.resize(max_bytes + 4096, 0);
        let mut filled = 0;
        while chunk.len() < max_records && filled < max_bytes {
            if !self.read_record(&mut chunk, &mut filled)? {
                break;
            }
        }
        chunk.data.truncate(filled);
        Ok(if chunk.is_empty() { None } else { Some(chunk) })
    }
}

/// The length of the longest prefix of `data` that ends just after a line break ending a record, when `data`
/// starts at the start of a record; `None` if no record ends in it. It follows only the quotes, jumping from one
/// to the next, and reads them as csv-core does: a quote opens a quoted field only at the start of a field (after
/// a comma, a line break or at the start), `""` inside one is a quote, a lone quote closes it, and any other quote
/// is a plain character. A line break outside a quoted field ends a record (or a blank line).
pub fn record_prefix(data: &[u8]) -> Option<usize> {
    RecordScan::default().scan(data)
}

/// [`record_prefix`] over input that grows: each call goes on from where the last one stopped, so that a block
/// read piece by piece until a record ends in it (one long record, or a quote never closed) is scanned once, not
/// once per piece.
#[derive(Debug, Clone, Default)]
pub struct RecordScan {
    /// Where the scan goes on: the bytes before it are read, as far as what follows them cannot change.
    at: usize,
    quoted: bool,
    cut: Option<usize>,
    /// Bytes searched so far, counting a byte again each time it is searched: the scan's work.
    examined: usize,
}

impl RecordScan {
    /// [`record_prefix`] of `data`, which must start with the data of every earlier call of this scan.
    pub fn scan(&mut self, data: &[u8]) -> Option<usize> {
        loop {
            let at = self.at;
            if self.quoted {
                // No closing quote yet: the data ends inside a quoted field, after the last cut.
                let Some(q) = memchr::memchr(b'"', &data[at..]).map(|q| at + q) else {
                    self.examined += data.len() - at;
                    self.at = data.len();
                    return self.cut;
                };
                self.examined += q + 1 - at;
                match data.get(q + 1) {
                    Some(b'"') => self.at = q + 2,
                    Some(_) => {
                        self.quoted = false;
                        self.at = q + 1;
                    }
                    // A quote at the very end: closing, or the first of a pair? The next bytes will tell.
                    None => {
                        self.at = q;
                        return self.cut;
                    }
                }
            } else {
                let next_quote = memchr::memchr(b'"', &data[at..]).map(|q| at + q);
                let end = next_quote.unwrap_or(data.len());
                // The quote search and the line break search each read the bytes up to the quote.
                self.examined += 2 * (end - at);
                if let Some(after) = last_line_break(data, at, end) {
                    self.cut = Some(after);
                }
                let Some(q) = next_quote else {
                    // A `\r` at the end may be the first half of a `\r\n`: it is looked at again.
                    self.at = if data[at..end].last() == Some(&b'\r') { end - 1 } else { end };
                    return self.cut;
                };
                self.quoted = q == 0 || matches!(data[q - 1], b',' | b'\n' | b'\r');
                self.at = q + 1;
            }
        }
    }

    /// Bytes searched so far, each as many times as it was searched.
    pub fn examined(&self) -> usize {
        self.examined
    }
}

/// Tokenizes the block held in `chunk.block` (whole records of source `chunk.source`, starting on line
/// `chunk.block_line`) into the chunk's records. Its first record number is left at 0, for the committer to set
/// in input order. A block that is not the input's last must end with a record's line break; if its last record
/// ends only because the block does, the boundary was misread, and that is an error rather than a record cut in
/// two.
pub fn tokenize_block(chunk: &mut RecordChunk) -> io::Result<()> {
    let block = std::mem::take(&mut chunk.block);
    let (source, line, last) = (chunk.source, chunk.block_line, chunk.block_is_last);
    let mut tokenizer = CsvTokenizer::starting_at_line(&block[..], line);
    // Offsets of 32 bits (see `RecordChunk::spans`): a block of 4 GiB (one record that long) keeps none.
    tokenizer.keep_spans = u32::try_from(block.len()).is_ok();
    chunk.clear(source, 0);
    // Exactly: a recycled buffer a little short would otherwise double, and every chunk in flight keeps its own.
    chunk.data.reserve_exact(block.len() + 4096);
    chunk.data.resize(block.len() + 4096, 0);
    let mut filled = 0;
    let read = loop {
        match tokenizer.read_record(chunk, &mut filled) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    chunk.data.truncate(filled);
    let misread = !last && tokenizer.ended_by_input_end;
    let end_line = tokenizer.line();
    // A record ends with its line break, which is not part of it; one that the input's end ends has none, and
    // what looks like one there lies inside a quote never closed.
    let unbroken = tokenizer.ended_by_input_end.then(|| chunk.spans.len().checked_sub(1)).flatten();
    for (i, span) in chunk.spans.iter_mut().enumerate() {
        if Some(i) != unbroken {
            let bytes = &block[span.start as usize..span.end as usize];
            let line_break = bytes.iter().rev().take_while(|b| matches!(b, b'\n' | b'\r')).count();
            span.end -= line_break as u32;
        }
    }
    chunk.block = block;
    chunk.tokenized = true;
    read?;
    if misread {
        return Err(io::Error::other(format!(
            "internal: a block of the input was cut inside a record (line {end_line}); please report this input"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(input: &[u8]) -> Vec<(u64, Vec<String>)> {
        let mut t = CsvTokenizer::new(input);
        let chunk = t.next_chunk(0, 1, 1000, 1 << 20).expect("reads").unwrap_or_default();
        (0..chunk.len())
            .map(|r| (chunk.lines[r], chunk.fields(r).map(|f| String::from_utf8_lossy(f).into_owned()).collect()))
            .collect()
    }

    #[test]
    fn a_record_past_a_chunks_32_bit_offsets_is_refused_naming_its_line() {
        // The limit is 4 GiB; lowered here to 8 bytes of fields, the second record (10 bytes) passes it.
        let mut t = CsvTokenizer::new(&b"a,b\n\ncccc,dddd\ne,f\n"[..]);
        t.max_data = 8;
        let err = t.next_chunk(0, 1, 1000, 1 << 20).expect_err("a record past the limit");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("the record starting on line 3 is longer than 4 GiB"), "{err}");
        let mut chunk = RecordChunk::new(0, 1);
        assert_eq!(chunk.push_record_within([&b"ab"[..], b"c"], 2, 4), Ok(()));
        assert_eq!(chunk.push_record_within([&b"d"[..], b"ef"], 3, 4), Err(TooLong { line: 3 }));
        // Refused whole: the chunk holds the first record only.
        assert_eq!((chunk.len(), chunk.data.as_slice(), chunk.field_ends.len()), (1, &b"abc"[..], 2));
        assert_eq!(chunk.fields(0).collect::<Vec<_>>(), vec![&b"ab"[..], b"c"]);
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines() {
        let got = records(b"a,\"b,c\",\"say \"\"hi\"\"\"\n\"multi\nline\",x,y\nlast,1,2");
        assert_eq!(got[0], (1, vec!["a".into(), "b,c".into(), "say \"hi\"".into()]));
        assert_eq!(got[1], (2, vec!["multi\nline".into(), "x".into(), "y".into()]));
        assert_eq!(got[2], (4, vec!["last".into(), "1".into(), "2".into()]));
    }

    #[test]
    fn crlf_bom_and_blank_lines_are_handled() {
        let got = records(b"\xef\xbb\xbfh1,h2\r\n1,2\r\n\r\n\r\n3,4\r\n");
        assert_eq!(
            got,
            vec![
                (1, vec!["h1".into(), "h2".into()]),
                (2, vec!["1".into(), "2".into()]),
                (5, vec!["3".into(), "4".into()])
            ]
        );
    }

    #[test]
    fn chunks_split_on_record_boundaries() {
        let text: String = (0..100).map(|i| format!("{i},\"x\ny\"\n")).collect();
        let mut t = CsvTokenizer::new(text.as_bytes());
        let mut seen = 0;
        let mut first = 1;
        while let Some(chunk) = t.next_chunk(0, first, 7, 1 << 20).expect("reads") {
            for r in 0..chunk.len() {
                let fields: Vec<&[u8]> = chunk.fields(r).collect();
                assert_eq!(fields[0], seen.to_string().as_bytes());
                assert_eq!(chunk.lines[r], 1 + 2 * seen as u64);
                seen += 1;
            }
            first += chunk.len() as u64;
        }
        assert_eq!(seen, 100);
    }

    #[test]
    fn a_reused_chunk_holds_only_the_new_records() {
        let mut t = CsvTokenizer::new(&b"a,b\nc,d\ne,f\n"[..]);
        let first = t.next_chunk(0, 1, 2, 1 << 16).expect("reads").expect("records");
        let second = t.next_chunk_reusing(first, 1, 3, 2, 1 << 16).expect("reads").expect("a record");
        assert_eq!((second.source, second.first_record, second.len(), second.lines.clone()), (1, 3, 1, vec![3]));
        assert_eq!(second.fields(0).collect::<Vec<_>>(), vec![&b"e"[..], b"f"]);
    }

    #[test]
    fn a_quote_left_open_at_the_end_is_located() {
        let mut t = CsvTokenizer::new(&b"a,b\n\"x\ny\",c\nd,\"e\nf,g\n"[..]);
        let chunk = t.next_chunk(0, 1, 100, 1 << 16).expect("reads").expect("records");
        assert_eq!(chunk.len(), 3);
        assert_eq!(chunk.open_quote, Some(OpenQuote { record: 2, line: 4, field: 2 }));
        let mut t = CsvTokenizer::new(&b"a,\"b\"\nc,d\n"[..]);
        assert_eq!(t.next_chunk(0, 1, 100, 1 << 16).expect("reads").expect("records").open_quote, None);
    }

    #[test]
    fn an_open_quote_after_quoted_line_breaks_of_any_kind_is_on_its_own_line() {
        let open_quote = |input: &[u8]| {
            let mut t = CsvTokenizer::new(input);
            t.next_chunk(0, 1, 100, 1 << 16).expect("reads").expect("records").open_quote
        };
        // Classic Mac line ends: the quoted field of record 1 spans lines 2 and 3, and the open quote is on 3.
        assert_eq!(open_quote(b"a,b\r\"x\ry\",\"z\rw\r"), Some(OpenQuote { record: 1, line: 3, field: 2 }));
        assert_eq!(open_quote(b"a,b\r\n\"x\r\ny\",\"z\r\nw\r\n"), Some(OpenQuote { record: 1, line: 3, field: 2 }));
        // A field ending in `\r` and the next beginning with `\n`: two line breaks in the file, not one `\r\n`.
        assert_eq!(open_quote(b"\"a\r\",\"\nb\",\"c"), Some(OpenQuote { record: 0, line: 3, field: 3 }));
    }

    #[test]
    fn text_after_a_closing_quote_is_noted_with_its_field() {
        let mut t = CsvTokenizer::new(&b"a,\"b\"x,c\n\"d\"\"e\",f\"g\r\n\"h\"\n"[..]);
        let chunk = t.next_chunk(0, 1, 100, 1 << 16).expect("reads").expect("records");
        assert_eq!(chunk.len(), 3);
        assert_eq!(chunk.text_after_quote, vec![(0, 2)]);
        assert_eq!(chunk.open_quote, None);
    }

    /// (line, fields) of every record of a chunk.
    fn listed(chunk: &RecordChunk) -> Vec<(u64, Vec<Vec<u8>>)> {
        (0..chunk.len()).map(|r| (chunk.lines[r], chunk.fields(r).map(<[u8]>::to_vec).collect())).collect()
    }

    fn block(data: &[u8], line: u64, last: bool) -> io::Result<RecordChunk> {
        let mut chunk =
            RecordChunk { block: data.to_vec(), block_line: line, block_is_last: last, ..Default::default() };
        tokenize_block(&mut chunk).map(|()| chunk)
    }

    #[test]
    fn every_line_end_counts_as_a_line_lone_crs_too() {
        // The same records with LF, CRLF and lone-CR line ends (and a blank line, and a quoted line break).
        for end in ["\n", "\r\n", "\r"] {
            let text = ["a,b", "1,x", "", "2,\"y", "z\"", "3,w", ""].join(end);
            let mut t = CsvTokenizer::new(text.as_bytes());
            t.read_header().expect("header");
            let chunk = t.next_chunk(0, 1, 100, 1 << 16).expect("reads").expect("records");
            assert_eq!(chunk.lines, [2, 4, 6], "{end:?}");
            let whole = block(text.as_bytes(), 1, true).expect("tokenizes");
            assert_eq!(whole.lines, [1, 2, 4, 6], "{end:?} as a block");
        }
    }

    #[test]
    fn blocks_cut_where_a_record_ends_tokenize_like_the_whole_input() {
        let inputs: [&[u8]; 11] = [
            // Lone CRs (classic Mac) and a mix of every line end: cut after a lone CR too, never inside a CRLF.
            b"a,b\r1,\"x\ry\"\r2,z\r\r3,\"\"\r",
            b"a,b\r\n1,2\r3,4\n5,\"6\r\n7\"\r8,9",
            b"x\r\r\n\r\"a\rb\",\"\r\"\r\n",
            b"a,b\n1,\"x\ny\"\n2,\"say \"\"hi\"\"\nthere\"\n3,z\n",
            b"a,\"b\"x,c\n\"d\"\"e\",f\"g\r\n\"h\"\n\"\"\"\n\",i\n",
            b"ab\"c,d\ne,\"f\ng\"\nh\"i\"j,k\n\"\n\"\n",
            b"x,y\r\n\r\n\n1,2\r\n\"3\r\n4\",5\r\n\n",
            b"a,\"b\nc,d\ne\n",
            b"\"\",\"\"\"\"\n\",\"\n,\n\"\"\"a\n\"\"\"\n",
            b"1,2\n3,4",
            b"\n\n\"a\nb\"\"\n\"\"\n\"\n",
        ];
        for data in inputs {
            let whole = listed(&block(data, 1, true).expect("tokenizes"));
            for k in 0..=data.len() {
                let Some(cut) = record_prefix(&data[..k]) else { continue };
                assert!(cut <= k && matches!(data[cut - 1], b'\n' | b'\r'), "{data:?} at {k}: {cut}");
                assert!(
                    data.get(cut) != Some(&b'\n') || data[cut - 1] == b'\n',
                    "{data:?}: cut inside a CRLF at {cut}"
                );
                let first = block(&data[..cut], 1, false)
                    .unwrap_or_else(|e| panic!("{:?} cut at {cut}: {e}", String::from_utf8_lossy(data)));
                let line = 1 + line_breaks(&data[..cut]);
                let second = block(&data[cut..], line, true).expect("tokenizes");
                let mut parts = listed(&first);
                parts.extend(listed(&second));
                assert_eq!(parts, whole, "{:?} cut at {cut}", String::from_utf8_lossy(data));
            }
        }
    }

    #[test]
    fn a_scan_that_goes_on_over_more_data_finds_what_a_scan_of_it_all_finds() {
        let inputs: [&[u8]; 6] = [
            b"a,b\r1,\"x\ry\"\r2,z\r\r3,\"\"\r",
            b"x\r\r\n\r\"a\rb\",\"\r\"\r\n",
            b"a,\"b\"x,c\n\"d\"\"e\",f\"g\r\n\"h\"\n\"\"\"\n\",i\n",
            b"\"\",\"\"\"\"\n\",\"\n,\n\"\"\"a\n\"\"\"\n",
            b"1,\"a\"\"\nb\"\n2",
            b"\n\n\"a\nb\"\"\n\"\"\n\"\n",
        ];
        for data in inputs {
            for k in 0..=data.len() {
                for l in k..=data.len() {
                    let mut scan = RecordScan::default();
                    scan.scan(&data[..k]);
                    assert_eq!(scan.scan(&data[..l]), record_prefix(&data[..l]), "{data:?} {k} {l}");
                }
            }
        }
    }

    #[test]
    fn a_record_read_piece_by_piece_is_scanned_once() {
        // A quote never closed, then 4 MB: read 64 KiB at a time, each piece is searched about twice at most.
        let mut data = b"a,b\n1,\"x".to_vec();
        data.extend(b"y,z\r\n".repeat(700_000));
        let mut scan = RecordScan::default();
        for end in (0..data.len()).step_by(64 * 1024).chain([data.len()]) {
            assert_eq!(scan.scan(&data[..end]), (end >= 4).then_some(4));
        }
        assert!(scan.examined() <= 2 * data.len(), "{} bytes searched of {}", scan.examined(), data.len());
        // Nor one long unquoted line.
        let line = vec![b'x'; 4_000_000];
        let mut scan = RecordScan::default();
        for end in (0..line.len()).step_by(64 * 1024).chain([line.len()]) {
            assert_eq!(scan.scan(&line[..end]), None);
        }
        assert!(scan.examined() <= 2 * line.len(), "{} bytes searched of {}", scan.examined(), line.len());
    }

    #[test]
    fn a_block_cut_inside_a_record_is_an_error_not_two_records() {
        assert!(block(b"1,\"a\nb", 1, false).is_err());
        assert!(block(b"1,2\n3,4", 1, false).is_err());
        assert_eq!(block(b"1,2\n3,4", 1, true).expect("the input's end").len(), 2);
        assert_eq!(record_prefix(b"1,\"a\nb"), None);
        // Only the input's start may hold a BOM to skip; in a block it is data.
        let bom = block(b"\xef\xbb\xbfa,b\n", 5, true).expect("tokenizes");
        assert_eq!((bom.lines[0], bom.field(0)), (5, &b"\xef\xbb\xbfa"[..]));
        assert_eq!(record_prefix(b"1,\"a\"\"\nb\"\n2"), Some(10));
        // A quote at the very end may be the first of a pair: the cut stays before it.
        assert_eq!(record_prefix(b"1\n2,\"a\n\""), Some(2));
    }

    #[test]
    fn the_input_after_a_header_starts_on_the_line_after_it_whatever_the_line_end() {
        for bom in ["", "\u{feff}"] {
            for end in ["\n", "\r\n", "\r"] {
                let text = format!("{bom}a,b{end}1,x{end}{end}2,y{end}");
                let mut t = CsvTokenizer::new(text.as_bytes());
                t.read_header().expect("header");
                let line = t.line();
                let rest: &[u8] = t.into_inner();
                assert_eq!(line, 2, "{bom:?} {end:?}");
                assert_eq!(block(rest, line, true).expect("tokenizes").lines, [2, 4], "{bom:?} {end:?}");
            }
        }
    }

    #[test]
    fn a_blocks_records_keep_their_input_bytes_without_their_line_break() {
        let chunk = block(b"\"a\",b\r\n\n\"c\"x,d\re,\"f\ng\n", 1, true).expect("tokenizes");
        let kept: Vec<&[u8]> = (0..chunk.len()).filter_map(|r| chunk.input_bytes(r)).collect();
        // The last record's quote is never closed: the rest of the input, line break and all, is the record.
        assert_eq!(kept, [&b"\"a\",b"[..], b"\"c\"x,d", b"e,\"f\ng\n"]);
        assert_eq!(chunk.lines, [1, 3, 4]);
        assert!(chunk.has_text_after_quote(1) && !chunk.has_text_after_quote(0));
        // Read from a stream, records have no input bytes to keep.
        let mut t = CsvTokenizer::new(&b"a,b\n"[..]);
        assert_eq!(t.next_chunk(0, 1, 10, 1 << 10).expect("reads").expect("a record").input_bytes(0), None);
    }

    #[test]
    fn the_header_is_on_its_own_line_after_blank_lines() {
        let header = CsvTokenizer::new(&b"\r\n\n\ra, b\n1,2\n"[..]).read_header().expect("reads");
        assert_eq!(header, Some(Header { line: 4, names: vec![b"a".to_vec(), b"b".to_vec()] }));
    }

    #[test]
    fn an_empty_input_has_no_header() {
        assert_eq!(CsvTokenizer::new(&b""[..]).read_header().expect("reads"), None);
        assert_eq!(CsvTokenizer::new(&b"\n\n"[..]).read_header().expect("reads"), None);
    }
}
