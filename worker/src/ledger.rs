//! The ledger decides, in input order, what happens to each checked row: exact duplicates (rows whose content —
//! trimmed values, or for a row refused for how it was written its input bytes — equals an earlier row's, see
//! `check::CheckedChunk::contents`) are condemned before
//! anything else, rows that used up their attempts are condemned, a valid row whose key was already taken is a
//! DUPLICATE_KEY_ERROR, and every row is counted exactly once, so `input = valid + quarantined + condemned`.
//!
//! Memory: the ledger keeps, per distinct valid key, 96 bits of the key's 128-bit fingerprint, the ordinal
//! (0-based position in the run's input, 32 bits) of the row that brought it first, so that a repeat can name the
//! record it repeats, and 64 bits of that row's content fingerprint: a valid row's exact duplicate has its key, so
//! one probe finds both a repeated key and a repeated row. Every other row — invalid, or refused for a repeated
//! key — is kept in a second table by 96 bits of its content fingerprint and its ordinal; in a feed worth loading
//! those are few. Each table is flat arrays beside each other — 8-byte probe bits, read on every probe, then 8
//! bytes of check bits and ordinal and the payload, read only when the probe bits match — kept at most 13/16
//! full: 24 bytes a key slot, 29.5 bytes per valid row when the run pre-sizes the key table from the input's size
//! (≈ 141 MiB for 5 M rows), up to twice that when the size is not known in advance, and 19.7 bytes per other
//! row. Beside them, one entry per input object and, for a replay, the lineage (source, record) of each replayed
//! row. Nothing else grows with the input. A wrong verdict needs two different keys (or other rows) whose 96
//! compared bits agree — about n²/2⁹⁷ per table, 6·10⁻¹⁴ per run at 100 M rows (see [`FirstSeen`]) — or a
//! duplicate-key row whose 64-bit content check agrees with its key holder's (see `content_check`).

use crate::check::{CheckedChunk, Outcome, RowError};
use crate::values::ErrorType;
use arrow::array::BooleanArray;
use std::collections::BTreeMap;

/// Zeroed slots of a plain type. Large tables live in their own anonymous mapping, for which the kernel is asked
/// to use huge pages: probes land anywhere in a table of tens of megabytes, and with 4 KiB pages nearly every
/// probe would also miss the TLB. Small tables, or a kernel that refuses, get ordinary memory.
#[derive(Debug)]
enum Slots<T: bytemuck::Pod> {
    Heap(Vec<T>),
    Mapped(memmap2::MmapMut),
}

impl<T: bytemuck::Pod> Default for Slots<T> {
    fn default() -> Self {
        Slots::Heap(Vec::new())
    }
}

impl<T: bytemuck::Pod> Slots<T> {
    /// Tables from this many bytes up get their own mapping.
    const MAPPED_FROM_BYTES: usize = 16 * 1024 * 1024;

    fn zeroed(n: usize) -> Slots<T> {
        let bytes = n * std::mem::size_of::<T>();
        if bytes >= Self::MAPPED_FROM_BYTES
            && let Ok(map) = memmap2::MmapMut::map_anon(bytes)
        {
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            // A mapping is page-aligned, so it always holds whole aligned values; checked all the same.
            if bytemuck::try_cast_slice::<u8, T>(&map[..]).is_ok() {
                return Slots::Mapped(map);
            }
        }
        Slots::Heap(vec![T::zeroed(); n])
    }

    #[inline]
    fn get(&self) -> &[T] {
        match self {
            Slots::Heap(v) => v,
            Slots::Mapped(m) => bytemuck::try_cast_slice(&m[..]).unwrap_or_default(),
        }
    }

    #[inline]
    fn get_mut(&mut self) -> &mut [T] {
        match self {
            Slots::Heap(v) => v,
            Slots::Mapped(m) => bytemuck::try_cast_slice_mut(&mut m[..]).unwrap_or_default(),
        }
    }
}

/// The ordinal stored for rows past `u32::MAX`: their first holder is not named.
pub const UNKNOWN_ORDINAL: u32 = u32::MAX;

/// How full a table may get, as a fraction of its slots: 13/16. Linear probing with uniformly spread hashes
/// scans about 15 slots for a new hash at that load, two cache lines of the probe array.
const MAX_LOAD: (usize, usize) = (13, 16);

/// A set of 128-bit fingerprints, each with the ordinal of the row that brought it first and a payload `P` of
/// that row (for the key table, its content check). It compares 96 bits of each fingerprint: 64 probe bits in
/// one flat array, read on every probe, and beside them, read only when the probe bits match, 32 check bits and
/// the ordinal, then the payload. Two different fingerprints are taken for one only if all 96 bits agree: among
/// n of them the chance of that anywhere in a run is about n²/2⁹⁷, 6·10⁻¹⁴ at 100 M. Slots are found by
/// multiply-shift on the probe bits, with linear probing; 0 marks an empty slot, so probe bits of 0 are stored
/// as 1.
#[derive(Debug)]
pub struct FirstSeen<P: bytemuck::Pod = ()> {
    probes: Slots<u64>,
    /// Per slot: check bits (high half) and ordinal (low half).
    tags: Slots<u64>,
    payloads: Slots<P>,
    len: usize,
}

impl<P: bytemuck::Pod> Default for FirstSeen<P> {
    fn default() -> Self {
        FirstSeen { probes: Slots::default(), tags: Slots::default(), payloads: Slots::default(), len: 0 }
    }
}

/// What a probe found: the fingerprint's first holder and its payload, or the empty slot where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe<P> {
    Held { ordinal: u32, payload: P },
    Vacant(usize),
}

/// The bits of a fingerprint that are compared: where it is probed, and what confirms a match.
#[inline]
fn split(fingerprint: u128) -> (u64, u32) {
    ((fingerprint as u64).max(1), (fingerprint >> 64) as u32)
}

impl<P: bytemuck::Pod> FirstSeen<P> {
    fn slot(probe: u64, slots: usize) -> usize {
        ((u128::from(probe) * slots as u128) >> 64) as usize
    }

    /// Slots for `n` fingerprints at the maximum load.
    fn slots_for(n: usize) -> usize {
        n / MAX_LOAD.0 * MAX_LOAD.1 + 64
    }

    /// Makes room for `additional` more fingerprints without growing on the way.
    pub fn reserve(&mut self, additional: usize) {
        let wanted = Self::slots_for(self.len + additional);
        if wanted > self.probes.get().len() {
            self.rebuild(wanted);
        }
    }

    fn rebuild(&mut self, slots: usize) {
        let old_probes = std::mem::replace(&mut self.probes, Slots::zeroed(slots));
        let old_tags = std::mem::replace(&mut self.tags, Slots::zeroed(slots));
        let old_payloads = std::mem::replace(&mut self.payloads, Slots::zeroed(slots));
        let old = old_probes.get().iter().zip(old_tags.get()).zip(old_payloads.get());
        for ((probe, tag), payload) in old.filter(|((p, _), _)| **p != 0) {
            // The old table held each fingerprint once, so each lands in an empty slot.
            if let Probe::Vacant(i) = self.probe(*probe, (*tag >> 32) as u32) {
                self.put(i, *probe, *tag, *payload);
            }
        }
    }

    /// Follows the probe sequence of (probe, check) to its holder or to the first empty slot.
    #[inline]
    fn probe(&self, probe: u64, check: u32) -> Probe<P> {
        let probes = self.probes.get();
        let n = probes.len();
        let mut i = Self::slot(probe, n);
        loop {
            match probes[i] {
                0 => return Probe::Vacant(i),
                p if p == probe => {
                    let held = self.tags.get()[i];
                    if (held >> 32) as u32 == check {
                        return Probe::Held { ordinal: held as u32, payload: self.payloads.get()[i] };
                    }
                    // The same probe bits, other check bits: another fingerprint; probing goes on.
                    i = if i + 1 == n { 0 } else { i + 1 };
                }
                _ => i = if i + 1 == n { 0 } else { i + 1 },
            }
        }
    }

    #[inline]
    fn put(&mut self, i: usize, probe: u64, tag: u64, payload: P) {
        self.probes.get_mut()[i] = probe;
        self.tags.get_mut()[i] = tag;
        self.payloads.get_mut()[i] = payload;
    }

    /// The fingerprint's first holder and payload, or the empty slot where [`FirstSeen::fill`] puts it. The
    /// table grows here when one more would pass its maximum load, so a slot returned stays valid until the
    /// next call that changes the table.
    #[inline]
    pub fn find(&mut self, fingerprint: u128) -> Probe<P> {
        if (self.len + 1) * MAX_LOAD.1 > self.probes.get().len() * MAX_LOAD.0 {
            self.rebuild((self.probes.get().len() * 2).max(1024));
        }
        let (probe, check) = split(fingerprint);
        self.probe(probe, check)
    }

    /// The fingerprint's first holder and payload, if it is there; never grows the table.
    #[inline]
    pub fn get(&self, fingerprint: u128) -> Option<(u32, P)> {
        if self.len == 0 {
            return None;
        }
        let (probe, check) = split(fingerprint);
        match self.probe(probe, check) {
            Probe::Held { ordinal, payload } => Some((ordinal, payload)),
            Probe::Vacant(_) => None,
        }
    }

    /// Puts a fingerprint first seen at `ordinal` into the slot [`FirstSeen::find`] returned as vacant for it.
    #[inline]
    pub fn fill(&mut self, slot: usize, fingerprint: u128, ordinal: u64, payload: P) {
        let ordinal = u32::try_from(ordinal).unwrap_or(UNKNOWN_ORDINAL);
        let (probe, check) = split(fingerprint);
        self.put(slot, probe, u64::from(check) << 32 | u64::from(ordinal), payload);
        self.len += 1;
    }

    /// Adds a fingerprint first seen at `ordinal`; if it was already there, `Err` with the ordinal of its first
    /// holder ([`UNKNOWN_ORDINAL`] for a holder past `u32::MAX`).
    #[inline]
    pub fn insert(&mut self, fingerprint: u128, ordinal: u64, payload: P) -> Result<(), u32> {
        match self.find(fingerprint) {
            Probe::Held { ordinal, .. } => Err(ordinal),
            Probe::Vacant(slot) => {
                self.fill(slot, fingerprint, ordinal, payload);
                Ok(())
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes the table holds.
    pub fn bytes(&self) -> usize {
        self.probes.get().len() * (16 + std::mem::size_of::<P>())
    }

    /// Reads the home slot of each fingerprint and returns a value that depends on them all. The tables are far
    /// larger than the caches, so nearly every probe misses; reading the slots of a block of rows first lets those
    /// misses overlap instead of following one another, and the probes that follow find the slots cached.
    pub fn warm(&self, fingerprints: impl Iterator<Item = u128>) -> u64 {
        let probes = self.probes.get();
        let n = probes.len();
        if n == 0 {
            return 0;
        }
        fingerprints.fold(0, |acc, f| acc ^ probes[Self::slot(split(f).0, n)])
    }
}

/// Where a row of the run came from: the input object and the 1-based record number in it (for a replayed row,
/// its original source and record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub source_uri: String,
    pub record_number: u64,
}

impl std::fmt::Display for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record {} of {}", self.record_number, self.source_uri)
    }
}

/// A stretch of the run's input from one source chunk on: the ordinal of its first row, the source's index and
/// record number there, and for replayed rows where their lineage starts in [`Lineage::replayed`].
#[derive(Debug, Clone)]
struct Span {
    first_ordinal: u64,
    source: usize,
    first_record: u64,
    replayed_at: Option<usize>,
}

/// Turns a row's ordinal back into its source and record number: one [`Span`] per chunk whose source differs from
/// the previous chunk's, and for replayed rows their original source and record (a replay is a quarantine's size).
#[derive(Debug, Default)]
struct Lineage {
    spans: Vec<Span>,
    replayed: Vec<(u32, u64)>,
    replayed_uris: Vec<String>,
    uri_ids: BTreeMap<String, u32>,
}

impl Lineage {
    fn record(&mut self, chunk: &CheckedChunk, first_ordinal: u64) {
        let raw = &chunk.raw;
        if raw.replay.is_empty() {
            let continues = self.spans.last().is_some_and(|s| {
                s.source == raw.source
                    && s.replayed_at.is_none()
                    && s.first_record + (first_ordinal - s.first_ordinal) == raw.first_record
            });
            if !continues {
                self.spans.push(Span {
                    first_ordinal,
                    source: raw.source,
                    first_record: raw.first_record,
                    replayed_at: None,
                });
            }
            return;
        }
        self.spans.push(Span {
            first_ordinal,
            source: raw.source,
            first_record: raw.first_record,
            replayed_at: Some(self.replayed.len()),
        });
        for meta in &raw.replay {
            let next = self.replayed_uris.len() as u32;
            let id = *self.uri_ids.entry(meta.source_uri.clone()).or_insert_with(|| next);
            if id == next {
                self.replayed_uris.push(meta.source_uri.clone());
            }
            self.replayed.push((id, meta.record_number));
        }
    }

    fn resolve(&self, ordinal: u32, sources: &[String]) -> Option<RecordRef> {
        if ordinal == UNKNOWN_ORDINAL {
            return None;
        }
        let ordinal = u64::from(ordinal);
        let at = self.spans.partition_point(|s| s.first_ordinal <= ordinal).checked_sub(1)?;
        let span = &self.spans[at];
        let offset = ordinal - span.first_ordinal;
        match span.replayed_at {
            Some(start) => {
                let (id, record_number) = *self.replayed.get(start + offset as usize)?;
                Some(RecordRef { source_uri: self.replayed_uris.get(id as usize)?.clone(), record_number })
            }
            None => Some(RecordRef {
                source_uri: sources.get(span.source).cloned().unwrap_or_else(|| format!("input {}", span.source + 1)),
                record_number: span.first_record + offset,
            }),
        }
    }
}

/// Why a row went to `condemned/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondemnReason {
    ExactDuplicate,
    MaxAttemptsReached,
}

impl CondemnReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CondemnReason::ExactDuplicate => "EXACT_DUPLICATE",
            CondemnReason::MaxAttemptsReached => "MAX_ATTEMPTS_REACHED",
        }
    }
}

/// A row bound for quarantine or condemned, by its index in the chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct SideRow {
    pub record: usize,
    pub error: Option<RowError>,
    pub attempt_count: u32,
    pub reason: Option<CondemnReason>,
    /// For an exact duplicate, the message naming the earlier record it repeats.
    pub duplicate_of: Option<String>,
}

/// What the ledger decided for one chunk.
#[derive(Debug, Default)]
pub struct Settled {
    /// Which rows of the chunk's valid batch stay valid; `None` when all do.
    pub keep: Option<BooleanArray>,
    pub quarantined: Vec<SideRow>,
    pub condemned: Vec<SideRow>,
}

/// Running totals of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub input_rows: u64,
    pub valid: u64,
    pub quarantined: u64,
    pub condemned: u64,
    pub by_error: [u64; 6],
    pub exact_duplicates: u64,
    pub max_attempts_condemned: u64,
    /// Sum of attempt counts of quarantined rows.
    pub quarantined_attempts: u64,
    /// Quarantined rows that fail anew: every row of a CSV input, but in a replay only the rows that fail with
    /// another error type than they were quarantined with. The quality gate counts these.
    pub newly_failed: u64,
    /// Quarantined and condemned rows with an error, by (error type index, contract column at fault).
    pub by_error_column: BTreeMap<(usize, Option<usize>), u64>,
}

impl Counts {
    /// The rate the quality gate compares with `maxQuarantineRate`: rows failing anew per input row. For a CSV
    /// run it is the quarantine rate; a replay is not failed by rows that were already in quarantine.
    pub fn gated_rate(&self) -> f64 {
        silverline_crds::report::rate(self.newly_failed, self.input_rows)
    }
}

/// The circuit breaker tripped at this row.
#[derive(Debug, Clone, PartialEq)]
pub struct Tripped {
    pub error_type: ErrorType,
    pub record: usize,
}

pub struct Ledger {
    /// Per distinct valid key: the ordinal of its first holder and that row's content check (see
    /// [`content_check`]), so that the holder's exact duplicates are found by the same probe as its key.
    keys: FirstSeen<u64>,
    /// Per distinct content of every other row — invalid rows and rows refused for a repeated key — the ordinal
    /// of its first holder. A row invalid for how it was written (text after a closing quote) has the content of
    /// its input bytes, so no valid row repeats it (see `check::written_form_hash`).
    others: FirstSeen,
    lineage: Lineage,
    /// The run's input objects, by source index, to name a first holder.
    pub sources: Vec<String>,
    max_same_errors: u64,
    max_attempts: u32,
    pub counts: Counts,
}

/// The 64 bits of a row's content fingerprint kept beside its key. A valid row whose key is held compares only
/// these with the holder's: a wrong exact-duplicate verdict needs a row that repeats a held key with other
/// content (a duplicate-key error, which the circuit breaker counts) and whose 64 bits agree with the holder's,
/// at most (duplicate-key errors) / 2⁶⁴: 5.4·10⁻¹⁸ for the default breaker of 100, and below 10⁻¹² unless a
/// contract lets more than 18 M of them through. The 64 bits are the fingerprint's high half, which the key's
/// probe (its low half) does not use.
#[inline]
fn content_check(content: u128) -> u64 {
    (content >> 64) as u64
}

/// What the ledger found for a row.
enum Seen {
    First,
    ExactDuplicate(u32),
    DuplicateKey(u32),
}

/// Rows whose table slots are read ahead together; see [`FirstSeen::warm`].
const WARM_BLOCK: usize = 32;

impl Ledger {
    pub fn new(max_same_errors: u64, max_attempts: u32) -> Ledger {
        Ledger {
            keys: FirstSeen::default(),
            others: FirstSeen::default(),
            lineage: Lineage::default(),
            sources: Vec::new(),
            max_same_errors,
            max_attempts,
            counts: Counts::default(),
        }
    }

    /// Names the run's input objects, by source index, so that a repeat can name where its first holder is.
    pub fn with_sources(mut self, sources: Vec<String>) -> Ledger {
        self.sources = sources;
        self
    }

    /// Reserves room for about `rows` more rows in the key table, so that it does not grow (and briefly double)
    /// on the way. The table of other rows grows as they come: in a feed worth loading they are few.
    pub fn reserve(&mut self, rows: usize) {
        self.keys.reserve(rows);
    }

    /// The bytes of the duplicate and key state: the two tables and the lineage.
    pub fn state_bytes(&self) -> usize {
        self.keys.bytes()
            + self.others.bytes()
            + self.lineage.spans.len() * std::mem::size_of::<Span>()
            + self.lineage.replayed.len() * std::mem::size_of::<(u32, u64)>()
    }

    /// The counts, freeing the duplicate and key state.
    pub fn into_counts(self) -> Counts {
        self.counts
    }

    /// The record (source and record number) of the row at `ordinal`, if it can be named.
    pub fn record_at(&self, ordinal: u32) -> Option<RecordRef> {
        self.lineage.resolve(ordinal, &self.sources)
    }

    fn holder_text(&self, ordinal: u32) -> String {
        self.record_at(ordinal)
            .map_or_else(|| "an earlier record (past the 4,294,967,295th row)".to_owned(), |r| r.to_string())
    }

    /// A valid row: new, an exact duplicate (of its key's holder, or of a row kept among the others), or a
    /// repeat of a held key with other content.
    #[inline]
    fn place_valid(&mut self, key: u128, content: u128, ordinal: u64) -> Seen {
        let check = content_check(content);
        match self.keys.find(key) {
            Probe::Held { ordinal: holder, payload } if payload == check => Seen::ExactDuplicate(holder),
            Probe::Held { ordinal: holder, .. } => match self.others.insert(content, ordinal, ()) {
                Err(earlier) => Seen::ExactDuplicate(earlier),
                Ok(()) => Seen::DuplicateKey(holder),
            },
            Probe::Vacant(slot) => {
                self.keys.fill(slot, key, ordinal, check);
                Seen::First
            }
        }
    }

    /// An invalid row: new or an exact duplicate.
    #[inline]
    fn place_invalid(&mut self, content: u128, ordinal: u64) -> Seen {
        match self.others.insert(content, ordinal, ()) {
            Err(earlier) => Seen::ExactDuplicate(earlier),
            Ok(()) => Seen::First,
        }
    }

    /// Settles every row of a chunk, in order. Stops at the row that trips the circuit breaker.
    pub fn settle(&mut self, chunk: &CheckedChunk) -> Result<Settled, Tripped> {
        let mut settled = Settled::default();
        let mut keep: Vec<bool> = Vec::new();
        let mut dropped_valid = false;
        self.lineage.record(chunk, self.counts.input_rows);
        for (r, outcome) in chunk.outcomes.iter().enumerate() {
            if r % WARM_BLOCK == 0 {
                let block = r..(r + WARM_BLOCK).min(chunk.outcomes.len());
                let keys = self.keys.warm(chunk.outcomes[block].iter().filter_map(|o| match o {
                    Outcome::Valid { key } => Some(*key),
                    Outcome::Invalid(_) => None,
                }));
                std::hint::black_box(keys);
            }
            let ordinal = self.counts.input_rows;
            self.counts.input_rows += 1;
            let attempt_count = chunk.raw.replay.get(r).map_or(1, |m| m.attempt_count.saturating_add(1));
            let seen = match outcome {
                Outcome::Valid { key } => self.place_valid(*key, chunk.contents[r], ordinal),
                Outcome::Invalid(_) => self.place_invalid(chunk.contents[r], ordinal),
            };
            let is_valid = matches!(outcome, Outcome::Valid { .. });
            if let Seen::ExactDuplicate(holder) = seen {
                self.counts.condemned += 1;
                self.counts.exact_duplicates += 1;
                settled.condemned.push(SideRow {
                    record: r,
                    error: None,
                    attempt_count,
                    reason: Some(CondemnReason::ExactDuplicate),
                    duplicate_of: Some(format!(
                        "exact duplicate of {}: the same values after trimming",
                        self.holder_text(holder)
                    )),
                });
                if is_valid {
                    keep.push(false);
                    dropped_valid = true;
                }
                continue;
            }
            let error = match (outcome, seen) {
                (Outcome::Valid { .. }, Seen::DuplicateKey(holder)) => {
                    keep.push(false);
                    dropped_valid = true;
                    RowError {
                        error_type: ErrorType::DuplicateKey,
                        column: None,
                        message: format!(
                            "primary key {} is already held by {}, an earlier valid row of this run with other \
                             content",
                            chunk.key_text(r),
                            self.holder_text(holder)
                        ),
                    }
                }
                (Outcome::Valid { .. }, _) => {
                    self.counts.valid += 1;
                    keep.push(true);
                    continue;
                }
                (Outcome::Invalid(e), _) => (**e).clone(),
            };
            let error_type = error.error_type;
            self.counts.by_error[error_type.index()] += 1;
            *self.counts.by_error_column.entry((error_type.index(), error.column)).or_default() += 1;
            if attempt_count >= self.max_attempts {
                self.counts.condemned += 1;
                self.counts.max_attempts_condemned += 1;
                settled.condemned.push(SideRow {
                    record: r,
                    error: Some(error),
                    attempt_count,
                    reason: Some(CondemnReason::MaxAttemptsReached),
                    duplicate_of: None,
                });
            } else {
                self.counts.quarantined += 1;
                self.counts.quarantined_attempts += u64::from(attempt_count);
                let previous = chunk.raw.replay.get(r).and_then(|m| m.previous_error);
                self.counts.newly_failed += u64::from(previous != Some(error_type));
                settled.quarantined.push(SideRow {
                    record: r,
                    error: Some(error),
                    attempt_count,
                    reason: None,
                    duplicate_of: None,
                });
            }
            if self.counts.by_error[error_type.index()] > self.max_same_errors {
                return Err(Tripped { error_type, record: r });
            }
        }
        if dropped_valid {
            settled.keep = Some(BooleanArray::from(keep));
        }
        Ok(settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check_chunk;
    use crate::contract::{HeaderMap, tests::transactions};
    use crate::tokenize::RecordChunk;

    /// A fingerprint with every bit in play.
    fn spread(h: u64) -> u128 {
        u128::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    }

    /// The rows as records of source 0, from line 2 on.
    fn records(rows: &[&str]) -> RecordChunk {
        let mut raw = RecordChunk::new(0, 1);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(raw.push_record(row.split(',').map(str::as_bytes), i as u64 + 2), Ok(()));
        }
        raw
    }

    fn chunk(rows: &[&str]) -> CheckedChunk {
        check_chunk(&transactions(), &HeaderMap::identity(5), records(rows))
    }

    #[test]
    fn exact_duplicates_are_condemned_before_any_check() {
        let c = chunk(&[
            "T1,C1,1.00,EUR,2024-01-01T00:00:00Z",
            "T1,C1,1.00,EUR,2024-01-01T00:00:00Z",
            "bad,row",
            "bad,row",
        ]);
        let mut ledger = Ledger::new(100, 3);
        let s = ledger.settle(&c).expect("no trip");
        assert_eq!(s.condemned.iter().map(|r| r.record).collect::<Vec<_>>(), vec![1, 3]);
        assert!(s.condemned.iter().all(|r| r.reason == Some(CondemnReason::ExactDuplicate) && r.error.is_none()));
        assert_eq!(s.quarantined.len(), 1);
        assert_eq!(s.keep, Some(BooleanArray::from(vec![true, false])));
        assert_eq!((ledger.counts.valid, ledger.counts.quarantined, ledger.counts.condemned), (1, 1, 2));
    }

    #[test]
    fn rows_equal_after_trimming_are_exact_duplicates() {
        let c = chunk(&[
            "T1,C1,1.00,EUR,2024-01-01T00:00:00Z",
            " T1 ,C1 , 1.00,EUR,2024-01-01T00:00:00Z\t",
            "bad, row",
            " bad,row ",
        ]);
        let mut ledger = Ledger::new(100, 3);
        let s = ledger.settle(&c).expect("no trip");
        assert_eq!(s.condemned.iter().map(|r| r.record).collect::<Vec<_>>(), vec![1, 3]);
        assert!(s.quarantined.iter().all(|r| r.error.as_ref().map(|e| e.error_type) == Some(ErrorType::Schema)));
        assert_ne!(c.hashes[0], c.hashes[1], "row_hash stays the hash of the untrimmed fields");
    }

    #[test]
    fn a_repeated_key_with_other_content_is_a_duplicate_key_error() {
        let c = chunk(&[
            "T1,C1,1.00,EUR,2024-01-01T00:00:00Z",
            "T1,C2,2.00,EUR,2024-01-01T00:00:00Z",
            "T1,C3,x,EUR,2024-01-01T00:00:00Z",
        ]);
        let mut ledger = Ledger::new(100, 3);
        let s = ledger.settle(&c).expect("no trip");
        let types: Vec<ErrorType> =
            s.quarantined.iter().filter_map(|r| r.error.as_ref().map(|e| e.error_type)).collect();
        // The third row fails its type check first, so it is a TYPE_ERROR, not a key error.
        assert_eq!(types, vec![ErrorType::DuplicateKey, ErrorType::Type]);
    }

    #[test]
    fn the_exact_duplicate_of_a_duplicate_key_row_names_that_row() {
        let c = chunk(&[
            "T1,C1,1.00,EUR,2024-01-01T00:00:00Z",
            "T1,C2,2.00,EUR,2024-01-01T00:00:00Z",
            "T1,C2,2.00,EUR,2024-01-01T00:00:00Z",
            "T1,C1,1.00,EUR,2024-01-01T00:00:00Z",
        ]);
        let mut ledger = Ledger::new(100, 3);
        ledger.sources = vec!["file:///in/a.csv".into()];
        let s = ledger.settle(&c).expect("no trip");
        assert_eq!(s.quarantined.iter().map(|r| r.record).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.condemned.iter().map(|r| r.record).collect::<Vec<_>>(), vec![2, 3]);
        let holders: Vec<&str> = s.condemned.iter().filter_map(|r| r.duplicate_of.as_deref()).collect();
        assert!(holders[0].contains("record 2 of file:///in/a.csv"), "{}", holders[0]);
        assert!(holders[1].contains("record 1 of file:///in/a.csv"), "{}", holders[1]);
        assert_eq!(s.keep, Some(BooleanArray::from(vec![true, false, false, false])));
        assert_eq!((ledger.counts.valid, ledger.counts.quarantined, ledger.counts.condemned), (1, 1, 2));
    }

    /// A chunk whose record `quoted` had text after a closing quote (as the tokenizer marks it) in its first field.
    fn chunk_with_text_after_quote(rows: &[&str], quoted: usize) -> CheckedChunk {
        let mut raw = records(rows);
        raw.text_after_quote.push((quoted, 1));
        check_chunk(&transactions(), &HeaderMap::identity(5), raw)
    }

    #[test]
    fn a_row_invalid_only_for_its_quoting_repeats_no_valid_row_of_the_same_values() {
        let row = "T1,C1,1.00,EUR,2024-01-01T00:00:00Z";
        // The invalid one first: the valid one, written otherwise, is valid.
        let c = chunk_with_text_after_quote(&[row, row, "T2,C2,2.00,EUR,2024-01-01T00:00:00Z"], 0);
        let mut ledger = Ledger::new(100, 3);
        let s = ledger.settle(&c).expect("no trip");
        assert_eq!(s.quarantined.iter().map(|r| r.record).collect::<Vec<_>>(), vec![0]);
        assert!(s.condemned.is_empty(), "{:?}", s.condemned);
        assert_eq!(s.keep, None);
        // The valid one first: the invalid one is quarantined, not condemned.
        let c = chunk_with_text_after_quote(&[row, row], 1);
        let mut ledger = Ledger::new(100, 3);
        let s = ledger.settle(&c).expect("no trip");
        assert_eq!(s.quarantined.iter().map(|r| r.record).collect::<Vec<_>>(), vec![1]);
        assert!(s.condemned.is_empty(), "{:?}", s.condemned);
        assert_eq!((ledger.counts.valid, ledger.counts.quarantined, ledger.counts.condemned), (1, 1, 0));
        // Two records written the same way are exact duplicates of each other.
        let mut raw = records(&[row, row, row]);
        raw.text_after_quote.extend([(0, 1), (2, 1)]);
        let c = check_chunk(&transactions(), &HeaderMap::identity(5), raw);
        let mut ledger = Ledger::new(100, 3);
        let s = ledger.settle(&c).expect("no trip");
        assert_eq!(s.quarantined.iter().map(|r| r.record).collect::<Vec<_>>(), vec![0]);
        assert_eq!(s.condemned.iter().map(|r| r.record).collect::<Vec<_>>(), vec![2]);
        assert_eq!((ledger.counts.valid, ledger.counts.quarantined, ledger.counts.condemned), (1, 1, 1));
    }

    #[test]
    fn the_key_table_costs_24_bytes_a_slot_and_other_rows_only_what_they_need() {
        let mut ledger = Ledger::new(100, 3);
        ledger.reserve(100_000);
        let reserved = ledger.state_bytes();
        // 24 bytes a slot at most 13/16 full: 29.5 bytes per row, and an empty table of other rows.
        assert!(reserved as f64 / 100_000.0 <= 24.0 * 16.0 / 13.0 + 0.1, "{reserved}");
        let rows: Vec<String> = (0..1000).map(|i| format!("T{i},C1,1.00,EUR,2024-01-01T00:00:00Z")).collect();
        let c = chunk(&rows.iter().map(String::as_str).collect::<Vec<_>>());
        ledger.settle(&c).expect("no trip");
        assert_eq!(ledger.counts.valid, 1000);
        assert_eq!(ledger.state_bytes() - ledger.lineage.spans.len() * std::mem::size_of::<Span>(), reserved);
    }

    #[test]
    fn the_circuit_breaker_trips_after_max_same_errors() {
        let c = chunk(&["a", "b", "c", "d"]);
        let mut ledger = Ledger::new(2, 3);
        let trip = ledger.settle(&c).expect_err("trips");
        assert_eq!(trip, Tripped { error_type: ErrorType::Schema, record: 2 });
    }

    #[test]
    fn the_table_keeps_every_distinct_hash_and_its_first_holder_across_growth() {
        let mut set = FirstSeen::default();
        for h in 0..100_000u64 {
            assert_eq!(set.insert(spread(h), h + 7, ()), Ok(()));
        }
        for h in 0..100_000u64 {
            assert_eq!(set.insert(spread(h), 1 << 20, ()), Err(h as u32 + 7), "{h}");
        }
        assert_eq!(set.len(), 100_000);
        let mut sized = FirstSeen::default();
        sized.reserve(1000);
        let slots = sized.probes.get().len();
        (1..=1000u64).for_each(|h| {
            let _ = sized.insert(spread(h), h, ());
        });
        assert_eq!(sized.probes.get().len(), slots, "a reserved set does not grow");
        // 16 bytes a slot, at most 13/16 full once reserved: 19.7 bytes per fingerprint.
        assert_eq!(sized.bytes(), slots * 16);
        assert!(sized.bytes() as f64 / 1000.0 <= 16.0 * 16.0 / 13.0 + 64.0 * 16.0 / 1000.0, "{}", sized.bytes());
    }

    #[test]
    fn fingerprints_that_share_their_probe_bits_but_not_their_check_bits_are_different() {
        let mut set = FirstSeen::default();
        let probe = 0x1234_5678_9abc_def0u128;
        assert_eq!(set.insert(probe | 1 << 64, 3, ()), Ok(()));
        assert_eq!(set.insert(probe | 2 << 64, 4, ()), Ok(()), "a 64-bit collision is not a repeat");
        assert_eq!(set.len(), 2);
        assert_eq!(set.insert(probe | 2 << 64, 9, ()), Err(4));
        assert_eq!(set.insert(probe | 1 << 64, 9, ()), Err(3));
    }

    #[test]
    fn a_forced_64_bit_collision_condemns_and_quarantines_nothing() {
        // Two different rows with different keys whose fingerprints agree in their low 64 bits, as a 64-bit
        // fingerprint would let them: neither is an exact duplicate, nor a duplicate key, of the other.
        let mut c = chunk(&["T1,C1,1.00,EUR,2024-01-01T00:00:00Z", "T2,C2,2.00,EUR,2024-01-01T00:00:00Z"]);
        let low = |f: u128| f & u128::from(u64::MAX);
        c.contents[1] = c.contents[1] & !u128::from(u64::MAX) | low(c.contents[0]);
        let first_key = match &c.outcomes[0] {
            Outcome::Valid { key } => *key,
            Outcome::Invalid(e) => panic!("the first row is valid: {e:?}"),
        };
        if let Outcome::Valid { key } = &mut c.outcomes[1] {
            *key = *key & !u128::from(u64::MAX) | low(first_key);
        }
        assert_eq!(low(c.contents[0]), low(c.contents[1]));
        assert_ne!(c.contents[0], c.contents[1]);
        let mut ledger = Ledger::new(100, 3);
        let s = ledger.settle(&c).expect("no trip");
        assert!(s.condemned.is_empty(), "{:?}", s.condemned);
        assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
        assert_eq!(s.keep, None);
        assert_eq!(ledger.counts.valid, 2);
        // While a true repeat is still found.
        let again = chunk(&["T1,C1,1.00,EUR,2024-01-01T00:00:00Z"]);
        let s = ledger.settle(&again).expect("no trip");
        assert_eq!(s.condemned.len(), 1);
    }

    #[test]
    fn ordinals_past_u32_are_stored_as_unknown() {
        let mut set = FirstSeen::default();
        assert_eq!(set.insert(42, u64::from(u32::MAX) + 5, ()), Ok(()));
        assert_eq!(set.insert(42, 1, ()), Err(UNKNOWN_ORDINAL));
    }

    #[test]
    fn a_large_set_lives_in_its_own_mapping_and_keeps_every_hash() {
        let mut set = FirstSeen::default();
        set.reserve(4 * 1024 * 1024);
        assert!(matches!(set.probes, Slots::Mapped(_)), "a table of {} slots is mapped", set.probes.get().len());
        assert!(matches!(set.tags, Slots::Mapped(_)), "its check bits and ordinals too");
        for h in 1..=200_000u64 {
            assert_eq!(set.insert(spread(h), h, ()), Ok(()));
        }
        assert!((1..=200_000u64).all(|h| set.insert(spread(h), 0, ()) == Err(h as u32)));
        assert_eq!(set.len(), 200_000);
    }

    #[test]
    fn repeats_name_the_record_that_holds_the_row_or_key_first() {
        let mut ledger = Ledger::new(100, 3);
        ledger.sources = vec!["file:///in/a.csv".into()];
        let first = chunk(&["T1,C1,1.00,EUR,2024-01-01T00:00:00Z", "T2,C1,1.00,EUR,2024-01-01T00:00:00Z"]);
        ledger.settle(&first).expect("no trip");
        // The second chunk goes on from record 3 of the same file.
        let mut raw = RecordChunk::new(0, 3);
        for (i, row) in ["x,y", "T2,C9,9.00,EUR,2024-01-01T00:00:00Z", "x,y", "T1,C1,1.00,EUR,2024-01-01T00:00:00Z"]
            .iter()
            .enumerate()
        {
            assert_eq!(raw.push_record(row.split(',').map(str::as_bytes), i as u64 + 4), Ok(()));
        }
        let second = check_chunk(&transactions(), &HeaderMap::identity(5), raw);
        let s = ledger.settle(&second).expect("no trip");
        let key_error =
            s.quarantined.iter().find_map(|r| r.error.as_ref().filter(|e| e.error_type == ErrorType::DuplicateKey));
        let message = &key_error.expect("a key error").message;
        assert!(
            message.contains("TransactionID \"T2\"") && message.contains("record 2 of file:///in/a.csv"),
            "{message}"
        );
        let dups: Vec<&str> = s.condemned.iter().filter_map(|r| r.duplicate_of.as_deref()).collect();
        assert_eq!(dups.len(), 2, "{dups:?}");
        assert!(dups[0].contains("record 3 of file:///in/a.csv"), "{}", dups[0]);
        assert!(dups[1].contains("record 1 of file:///in/a.csv"), "{}", dups[1]);
    }

    #[test]
    fn replayed_rows_are_named_by_their_original_record() {
        use crate::tokenize::ReplayMeta;
        let mut ledger = Ledger::new(100, 3);
        ledger.sources = vec!["file:///lake/quarantine/part-00000.parquet".into()];
        let mut raw = RecordChunk::new(0, 1);
        for (i, original) in [41u64, 97].iter().enumerate() {
            assert_eq!(
                raw.push_record("T1,C1,1.00,EUR,2024-01-01T00:00:00Z".split(',').map(str::as_bytes), i as u64 + 2),
                Ok(())
            );
            raw.replay.push(ReplayMeta {
                source_uri: "file:///in/orig.csv".into(),
                record_number: *original,
                line_number: original + 1,
                row_hash: 7,
                attempt_count: 1,
                has_values: true,
                raw_record: String::new(),
                previous_error: None,
                raw_record_bytes: None,
            });
        }
        let checked = check_chunk(&transactions(), &HeaderMap::identity(5), raw);
        let s = ledger.settle(&checked).expect("no trip");
        let dup = s.condemned[0].duplicate_of.as_deref().expect("names the holder");
        assert!(dup.contains("record 41 of file:///in/orig.csv"), "{dup}");
    }

    #[test]
    fn rows_on_their_last_attempt_are_condemned() {
        let c = chunk(&["T1,C1,x,EUR,2024-01-01T00:00:00Z"]);
        let mut ledger = Ledger::new(100, 1);
        let s = ledger.settle(&c).expect("no trip");
        assert_eq!(s.condemned[0].reason, Some(CondemnReason::MaxAttemptsReached));
        assert_eq!(ledger.counts.max_attempts_condemned, 1);
    }
}
