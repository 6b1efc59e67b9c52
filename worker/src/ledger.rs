//! The ledger decides, in input order, what happens to each checked row: exact duplicates (rows whose trimmed
//! values equal an earlier row's, see `check::CheckedChunk::contents`) are condemned before
//! anything else, rows that used up their attempts are condemned, a valid row whose key was already taken is a
//! DUPLICATE_KEY_ERROR, and every row is counted exactly once, so `input = valid + quarantined + condemned`.
//!
//! Memory: the ledger keeps one 64-bit hash per distinct row and one per distinct valid key, in two flat tables
//! of 8-byte slots kept between 3/8 and 3/4 full: 10.7–21.3 bytes per distinct row and the same per valid key,
//! about 21–43 bytes per input row in all, 10.7 bytes each when the run pre-sizes them from the input's size
//! (21.3 bytes per input row: ≈ 102 MiB for 5 M rows). Nothing else grows with the input. With 64-bit hashes
//! the chance that two different rows or keys collide among 10 M is about 3 in a million per run.

use crate::check::{CheckedChunk, Outcome, RowError};
use crate::values::ErrorType;
use arrow::array::BooleanArray;

/// Zeroed 8-byte slots. Large tables live in their own anonymous mapping, for which the kernel is asked to use
/// huge pages: probes land anywhere in a table of tens of megabytes, and with 4 KiB pages nearly every probe would
/// also miss the TLB. Small tables, or a kernel that refuses, get ordinary memory.
#[derive(Debug)]
enum Slots {
    Heap(Vec<u64>),
    Mapped(memmap2::MmapMut),
}

impl Default for Slots {
    fn default() -> Self {
        Slots::Heap(Vec::new())
    }
}

impl Slots {
    /// Tables from this many slots up get their own mapping (16 MiB).
    const MAPPED_FROM: usize = 2 * 1024 * 1024;

    fn zeroed(n: usize) -> Slots {
        if n >= Self::MAPPED_FROM
            && let Ok(map) = memmap2::MmapMut::map_anon(n * 8)
        {
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            // A mapping is page-aligned, so it always holds whole aligned u64s; checked all the same.
            if bytemuck::try_cast_slice::<u8, u64>(&map[..]).is_ok() {
                return Slots::Mapped(map);
            }
        }
        Slots::Heap(vec![0; n])
    }

    #[inline]
    fn get(&self) -> &[u64] {
        match self {
            Slots::Heap(v) => v,
            Slots::Mapped(m) => bytemuck::try_cast_slice(&m[..]).unwrap_or_default(),
        }
    }

    #[inline]
    fn get_mut(&mut self) -> &mut [u64] {
        match self {
            Slots::Heap(v) => v,
            Slots::Mapped(m) => bytemuck::try_cast_slice_mut(&mut m[..]).unwrap_or_default(),
        }
    }
}

/// A set of 64-bit hashes in one flat array with linear probing: 8 bytes per slot and nothing else, kept at
/// most 3/4 full. The hashes are uniformly distributed already, so a slot is found by multiply-shift; 0 marks
/// an empty slot, so a hash of 0 is stored as 1.
#[derive(Debug, Default)]
pub struct HashSet64 {
    slots: Slots,
    len: usize,
}

impl HashSet64 {
    fn slot(hash: u64, slots: usize) -> usize {
        ((u128::from(hash) * slots as u128) >> 64) as usize
    }

    /// Makes room for `additional` more hashes without growing on the way.
    pub fn reserve(&mut self, additional: usize) {
        let wanted = (self.len + additional) / 3 * 4 + 64;
        if wanted > self.slots.get().len() {
            self.rebuild(wanted);
        }
    }

    fn rebuild(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, Slots::zeroed(slots));
        for hash in old.get().iter().filter(|h| **h != 0) {
            self.place(*hash);
        }
    }

    fn place(&mut self, hash: u64) -> bool {
        let slots = self.slots.get_mut();
        let n = slots.len();
        let mut i = Self::slot(hash, n);
        loop {
            match slots[i] {
                0 => {
                    slots[i] = hash;
                    return true;
                }
                h if h == hash => return false,
                _ => i = if i + 1 == n { 0 } else { i + 1 },
            }
        }
    }

    /// Adds a hash; false if it was already there.
    #[inline]
    pub fn insert(&mut self, hash: u64) -> bool {
        if (self.len + 1) * 4 > self.slots.get().len() * 3 {
            self.rebuild((self.slots.get().len() * 2).max(1024));
        }
        let added = self.place(hash.max(1));
        self.len += usize::from(added);
        added
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Reads the home slot of each hash and returns a value that depends on them all. The tables are far larger
    /// than the caches, so nearly every probe misses; reading the slots of a block of rows first lets those
    /// misses overlap instead of following one another, and the probes that follow find the slots cached.
    pub fn warm(&self, hashes: impl Iterator<Item = u64>) -> u64 {
        let slots = self.slots.get();
        let n = slots.len();
        if n == 0 {
            return 0;
        }
        hashes.fold(0, |acc, h| acc ^ slots[Self::slot(h.max(1), n)])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
}

impl Counts {
    /// The rate the quality gate compares with `maxQuarantineRate`: rows failing anew per input row. For a CSV
    /// run it is the quarantine rate; a replay is not failed by rows that were already in quarantine.
    pub fn gated_rate(&self) -> f64 {
        if self.input_rows == 0 { 0.0 } else { self.newly_failed as f64 / self.input_rows as f64 }
    }
}

/// The circuit breaker tripped at this row.
#[derive(Debug, Clone, PartialEq)]
pub struct Tripped {
    pub error_type: ErrorType,
    pub record: usize,
}

pub struct Ledger {
    seen_rows: HashSet64,
    seen_keys: HashSet64,
    max_same_errors: u64,
    max_attempts: u32,
    pub counts: Counts,
}

/// Rows whose table slots are read ahead together; see [`HashSet64::warm`].
const WARM_BLOCK: usize = 32;

impl Ledger {
    pub fn new(max_same_errors: u64, max_attempts: u32) -> Ledger {
        Ledger {
            seen_rows: HashSet64::default(),
            seen_keys: HashSet64::default(),
            max_same_errors,
            max_attempts,
            counts: Counts::default(),
        }
    }

    /// Reserves room for about `rows` more rows, so that the tables do not grow (and briefly double) on the way.
    pub fn reserve(&mut self, rows: usize) {
        self.seen_rows.reserve(rows);
        self.seen_keys.reserve(rows);
    }

    /// Settles every row of a chunk, in order. Stops at the row that trips the circuit breaker.
    pub fn settle(&mut self, chunk: &CheckedChunk) -> Result<Settled, Tripped> {
        let mut settled = Settled::default();
        let mut keep: Vec<bool> = Vec::new();
        let mut dropped_valid = false;
        for (r, outcome) in chunk.outcomes.iter().enumerate() {
            if r % WARM_BLOCK == 0 {
                let block = r..(r + WARM_BLOCK).min(chunk.outcomes.len());
                let rows = self.seen_rows.warm(chunk.contents[block.clone()].iter().copied());
                let keys = self.seen_keys.warm(chunk.outcomes[block].iter().filter_map(|o| match o {
                    Outcome::Valid { key } => Some(*key),
                    Outcome::Invalid(_) => None,
                }));
                std::hint::black_box(rows ^ keys);
            }
            self.counts.input_rows += 1;
            let attempt_count = chunk.raw.replay.get(r).map_or(1, |m| m.attempt_count.saturating_add(1));
            let first_time = self.seen_rows.insert(chunk.contents[r]);
            let is_valid = matches!(outcome, Outcome::Valid { .. });
            if !first_time {
                self.counts.condemned += 1;
                self.counts.exact_duplicates += 1;
                settled.condemned.push(SideRow {
                    record: r,
                    error: None,
                    attempt_count,
                    reason: Some(CondemnReason::ExactDuplicate),
                });
                if is_valid {
                    keep.push(false);
                    dropped_valid = true;
                }
                continue;
            }
            let error = match outcome {
                Outcome::Valid { key } => {
                    if self.seen_keys.insert(*key) {
                        self.counts.valid += 1;
                        keep.push(true);
                        continue;
                    }
                    keep.push(false);
                    dropped_valid = true;
                    RowError {
                        error_type: ErrorType::DuplicateKey,
                        column: None,
                        message: format!(
                            "primary key {} is already held by an earlier valid row of this run, which has other \
                             content (the ledger keeps a hash per key, not where it was first seen)",
                            chunk.key_text(r)
                        ),
                    }
                }
                Outcome::Invalid(e) => (**e).clone(),
            };
            let error_type = error.error_type;
            self.counts.by_error[error_type.index()] += 1;
            if attempt_count >= self.max_attempts {
                self.counts.condemned += 1;
                self.counts.max_attempts_condemned += 1;
                settled.condemned.push(SideRow {
                    record: r,
                    error: Some(error),
                    attempt_count,
                    reason: Some(CondemnReason::MaxAttemptsReached),
                });
            } else {
                self.counts.quarantined += 1;
                self.counts.quarantined_attempts += u64::from(attempt_count);
                let previous = chunk.raw.replay.get(r).and_then(|m| m.previous_error);
                self.counts.newly_failed += u64::from(previous != Some(error_type));
                settled.quarantined.push(SideRow { record: r, error: Some(error), attempt_count, reason: None });
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

    fn chunk(rows: &[&str]) -> CheckedChunk {
        let mut raw = RecordChunk::new(0, 1);
        for (i, row) in rows.iter().enumerate() {
            raw.push_record(row.split(',').map(str::as_bytes), i as u64 + 2);
        }
        check_chunk(&transactions(), &HeaderMap::identity(5), raw)
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
    fn the_circuit_breaker_trips_after_max_same_errors() {
        let c = chunk(&["a", "b", "c", "d"]);
        let mut ledger = Ledger::new(2, 3);
        let trip = ledger.settle(&c).expect_err("trips");
        assert_eq!(trip, Tripped { error_type: ErrorType::Schema, record: 2 });
    }

    #[test]
    fn the_hash_set_keeps_every_distinct_hash_across_growth() {
        let mut set = HashSet64::default();
        for h in 0..100_000u64 {
            assert!(set.insert(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
        for h in 0..100_000u64 {
            assert!(!set.insert(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)), "{h}");
        }
        assert_eq!(set.len(), 100_000);
        let mut sized = HashSet64::default();
        sized.reserve(1000);
        let slots = sized.slots.get().len();
        (1..=1000u64).for_each(|h| {
            sized.insert(h << 40);
        });
        assert_eq!(sized.slots.get().len(), slots, "a reserved set does not grow");
    }

    #[test]
    fn a_large_set_lives_in_its_own_mapping_and_keeps_every_hash() {
        let mut set = HashSet64::default();
        set.reserve(Slots::MAPPED_FROM);
        assert!(matches!(set.slots, Slots::Mapped(_)), "a table of {} slots is mapped", set.slots.get().len());
        for h in 1..=200_000u64 {
            assert!(set.insert(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        }
        assert!((1..=200_000u64).all(|h| !set.insert(h.wrapping_mul(0x9e37_79b9_7f4a_7c15))));
        assert_eq!(set.len(), 200_000);
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
