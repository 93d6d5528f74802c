//! Chunk results coming back: [`MapCollector`] gathers a `map`'s chunks
//! into one ordered `Vec`, [`ChannelSink`] hands `imap_unordered` each chunk
//! as it comes, and [`check_chunk`] makes sure a chunk owes what it returns.

use super::cell_chunks::ChunkRc;
use super::driver::Shared;
use super::handle::Cell;
use super::prefault::Prefault;
use super::sink::{Completion, Outcome};
use crate::error::{Error, Result};
use crate::shm::ring::{Claimed, Consumer};
use crate::sync::lock;
use crate::wire::{decode_exact, Wire};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

/// Collects the chunks of a `map` into one `Vec`, in order.
///
/// Plain results (numbers, `Plain<T>`) are copied from the result ring
/// straight to their place in the output while the pool's lock is held
/// ([`absorb`](Completion::absorb)): onto its end when the chunk is next in
/// order, into its spare capacity when it came early, the length moving over
/// it once the chunks before it are in. Other results are decoded straight
/// onto the end of the output, with no `Vec` of their own and no final
/// concatenation; one that arrives early waits as the bytes it came in until
/// its turn.
pub(super) struct MapCollector<R> {
    state: Mutex<Collected<R>>,
    cell: ChunkRc<Cell<Vec<R>>>,
    /// Faulting the output's fresh memory in ahead of the results; stopped
    /// (and its thread joined) before the output is handed over.
    prefault: Mutex<Option<Prefault>>,
    /// Whether `R` is plain data, asked once here on the caller's thread:
    /// `Wire::plain` is the user's to override, and [`absorb`](Self::absorb)
    /// runs under the pool's lock, where a panic of theirs must not land.
    plain: Option<crate::wire::PlainLayout<R>>,
}

/// One chunk of a map, as the collector sees it.
struct Chunk {
    /// How many results it owes.
    due: usize,
    /// Where its results start in the output.
    start: usize,
    /// Its encoded results, when they arrived before the chunks ahead of it
    /// (or could not be absorbed): decoded when their turn comes.
    early: Option<crate::wire::Payload>,
    /// Its results are in the output already, beyond the output's length:
    /// copied there by [`MapCollector::absorb`] before the chunks ahead of
    /// it came in; the length moves over them when their turn comes.
    in_place: bool,
}

struct Collected<R> {
    /// The results of chunks `0..next`, in order.
    out: Vec<R>,
    next: usize,
    /// Every chunk added so far.
    chunks: Vec<Chunk>,
    /// Results the chunks added so far owe, in all.
    owed: usize,
    /// No chunk will be added any more.
    sealed: bool,
    /// Chunks answered, in any order (failed ones too).
    completed: usize,
    failed: bool,
    /// The output was handed to the result.
    handed_over: bool,
}

impl<R: Wire> MapCollector<R> {
    /// A collector expecting about `items` results (a hint for the output's
    /// first allocation); chunks are added with [`add_chunk`](Self::add_chunk)
    /// and the collection closed with [`seal`](Self::seal).
    pub(super) fn new(items: usize, cell: ChunkRc<Cell<Vec<R>>>) -> Arc<Self> {
        // The hint may come from a faulty `size_hint`: the output grows
        // past this if need be.
        const PREALLOCATE_AT_MOST: usize = 1 << 24;
        let out = output_buffer::<R>(items.min(PREALLOCATE_AT_MOST));
        let prefault = Prefault::start(
            out.as_ptr() as usize,
            out.capacity().saturating_mul(std::mem::size_of::<R>()),
        );
        Arc::new(Self {
            plain: crate::wire::plain_of::<R>(),
            prefault: Mutex::new(prefault),
            state: Mutex::new(Collected {
                out,
                next: 0,
                chunks: Vec::new(),
                owed: 0,
                sealed: false,
                completed: 0,
                failed: false,
                handed_over: false,
            }),
            cell,
        })
    }

    /// Registers the next chunk, which owes `due` results; returns its tag.
    /// Call before submitting it.
    pub(super) fn add_chunk(&self, due: usize) -> u64 {
        let mut state = lock(&self.state);
        let start = state.owed;
        state.owed = start.saturating_add(due);
        state.chunks.push(Chunk {
            due,
            start,
            early: None,
            in_place: false,
        });
        (state.chunks.len() - 1) as u64
    }

    /// No more chunks: the result is complete once those added are in.
    pub(super) fn seal(&self) {
        let mut state = lock(&self.state);
        state.sealed = true;
        self.finish_if_done(state);
    }

    /// Whether the collection has ended (all in, or failed).
    pub(super) fn ended(&self) -> bool {
        self.cell.is_ready()
    }

    /// Blocks until at least `n` chunks have been answered or the collection
    /// failed, helping `pool` collect results meanwhile, and going on
    /// helping while a slow decoder holds up whoever delivers (see
    /// [`wait_helping`](super::assist::wait_helping)).
    pub(super) fn wait_completed(&self, n: usize, pool: &Shared) {
        super::assist::wait_helping(pool, || {
            let state = lock(&self.state);
            state.completed >= n || state.failed
        });
    }

    fn finish_if_done(&self, mut state: std::sync::MutexGuard<'_, Collected<R>>) {
        if state.failed || state.handed_over || !state.sealed || state.next < state.chunks.len() {
            return;
        }
        // Once: the last chunk may have been absorbed before `seal` and be
        // delivered after it.
        state.handed_over = true;
        let all = std::mem::take(&mut state.out);
        drop(state);
        self.stop_prefault();
        self.cell.finish(Ok(all));
    }

    fn fail(&self, mut state: std::sync::MutexGuard<'_, Collected<R>>, e: Error) {
        state.failed = true;
        drop(state);
        self.stop_prefault();
        self.cell.finish(Err(e));
    }

    /// Stops faulting the output in (at most one step's wait): the output is
    /// about to be handed over, or dropped.
    fn stop_prefault(&self) {
        let prefault = lock(&self.prefault).take();
        drop(prefault);
    }

    /// Takes one chunk's outcome; decodes every chunk that is now in order.
    fn take(&self, mut state: std::sync::MutexGuard<'_, Collected<R>>, tag: u64, outcome: Outcome) {
        if state.failed {
            return;
        }
        let bytes = match outcome {
            Outcome::Ok(bytes) => bytes,
            Outcome::Err(e) => return self.fail(state, e),
        };
        let index = tag as usize;
        let next = state.next;
        let Some(chunk) = state.chunks.get_mut(index) else {
            return; // not a chunk of ours
        };
        // An absorbed chunk's outcome is an empty payload: its results are
        // in the output already (at or behind `next`).
        if !chunk.in_place && index >= next {
            chunk.early = Some(bytes);
        }
        if index > next {
            return;
        }
        if let Err(e) = Self::advance(&mut state, true) {
            return self.fail(state, e);
        }
        self.finish_if_done(state);
    }
}

impl<R: Wire> MapCollector<R> {
    /// Moves `next` over the chunks now in order: those absorbed in place
    /// (the output's length moves over their results) and, with `decode`,
    /// those that arrived as bytes (decoded onto the end of the output).
    /// Without `decode` (under the pool's lock) it stops at the first of
    /// those.
    fn advance(state: &mut Collected<R>, decode: bool) -> Result<()> {
        loop {
            let Collected {
                out, next, chunks, ..
            } = state;
            let Some(chunk) = chunks.get_mut(*next) else {
                return Ok(());
            };
            if chunk.in_place {
                let end = chunk.start + chunk.due;
                if out.len() != chunk.start || end > out.capacity() {
                    // Cannot be: every chunk ahead of it owed and gave
                    // exactly its `due`. Refused, never assumed.
                    return Err(crate::wire::decode_error::<Vec<R>>("results out of place"));
                }
                // SAFETY: `absorb` wrote all `due` values of this chunk at
                // `start..end` of the spare capacity (through the plain
                // layout proof: every byte written, any bits a valid `R`),
                // the output was never reallocated since (every reserve is
                // for a chunk ending before it, inside the capacity), and
                // the length is exactly `start` (checked above).
                unsafe { out.set_len(end) };
            } else if let Some(bytes) = chunk.early.take_if(|_| decode) {
                let due = chunk.due;
                crate::wire::decode_vec_into(&bytes, due, out)?;
            } else {
                return Ok(());
            }
            *next += 1;
        }
    }
}

impl<R: Wire> Completion for MapCollector<R> {
    fn complete(&self, tag: u64, outcome: Outcome) {
        let mut state = lock(&self.state);
        state.completed += 1;
        self.take(state, tag, outcome);
    }

    /// Plain results: one copy from the ring straight to their place in
    /// the output (no copy into a buffer, no decode pass): onto its end for
    /// the chunk next in order, into its spare capacity for one that came
    /// early (when it fits: the output is never reallocated under it). The
    /// count and the length are checked before anything is copied; anything
    /// else (another type, a count or length that lies, an output too
    /// small, a busy collector) is left to the general path, which copies
    /// the result out and reports what is wrong with it. Delivery
    /// (`complete`) then only does the bookkeeping.
    fn absorb(&self, tag: u64, ring: &Consumer, record: &Claimed) -> bool {
        let Some(plain) = self.plain else {
            return false;
        };
        // Never wait here, under the pool's lock: whoever holds the
        // collector may be decoding a whole chunk.
        let Ok(mut guard) = self.state.try_lock() else {
            return false;
        };
        let state = &mut *guard;
        let index = tag as usize;
        if state.failed || index < state.next {
            return false;
        }
        let Some(chunk) = state.chunks.get(index) else {
            return false;
        };
        if chunk.in_place || chunk.early.is_some() {
            return false;
        }
        let (due, start) = (chunk.due, chunk.start);
        if !plain_results_fit(plain, due, ring, record) {
            return false;
        }
        let copy = |dst: &mut [MaybeUninit<u8>]| ring.copy_payload_into(record, 8, dst);
        if index == state.next {
            // SAFETY: `copy_payload_into` writes every byte of the slice it
            // is given when it returns true.
            if !unsafe { plain.extend_with(&mut state.out, due, copy) } {
                return false;
            }
            state.next += 1;
            // What was absorbed behind it is in order now. An error (which
            // cannot be) stops here and is reported at delivery.
            let _ = Self::advance(state, false);
            return true;
        }
        // SAFETY: as above.
        if !unsafe { plain.fill_spare(&mut state.out, start, due, copy) } {
            return false;
        }
        state.chunks[index].in_place = true;
        true
    }
}

/// Whether a result record holds exactly `due` plain values as an encoded
/// `Vec`: its length, then its count, checked (the count copied once).
fn plain_results_fit<R>(
    plain: crate::wire::PlainLayout<R>,
    due: usize,
    ring: &Consumer,
    record: &Claimed,
) -> bool {
    let expected = plain.bytes_for(due).and_then(|b| b.checked_add(8));
    if expected != Some(record.header.payload_len as usize) {
        return false;
    }
    let mut count = [MaybeUninit::<u8>::uninit(); 8];
    if !ring.copy_payload_into(record, 0, &mut count) {
        return false;
    }
    // SAFETY: `copy_payload_into` returned true: it wrote all 8 bytes.
    let count =
        u64::from_le_bytes(unsafe { std::mem::transmute::<[MaybeUninit<u8>; 8], [u8; 8]>(count) });
    count == due as u64
}

/// A map's output, with room for `items` results. It is fresh memory,
/// faulted in on the parent's critical path as results are decoded into it
/// (about 1-3 µs per 4 KiB page on a VM: 8,192 faults for 4M `u64`), so a
/// large one asks for transparent huge pages: one fault per 2 MiB.
fn output_buffer<R>(items: usize) -> Vec<R> {
    /// Below this the faults cost little, and a huge page would be mostly
    /// unused memory.
    const HUGE_PAGES_FROM_BYTES: usize = 4 << 20;
    let out = Vec::<R>::with_capacity(items);
    let bytes = out.capacity().saturating_mul(std::mem::size_of::<R>());
    if bytes >= HUGE_PAGES_FROM_BYTES {
        crate::sys::advise_huge_pages(out.as_ptr().cast(), bytes);
    }
    out
}

/// A chunk's results, if there are as many as it had items: a worker that
/// returns fewer or more is reported, never silently short.
pub(super) fn check_chunk<R>(values: Vec<R>, due: usize) -> Result<Vec<R>> {
    if values.len() == due {
        Ok(values)
    } else {
        Err(crate::wire::decode_error::<Vec<R>>(format!(
            "{} results for a chunk of {due} items",
            values.len()
        )))
    }
}

/// Copies a chunk's plain results (exactly `due` of them, checked) from
/// the result ring into a `Vec` of their own: the one copy, from shared
/// memory, then nothing to decode. `None` if they are not what the chunk
/// owes, for the general path to report.
fn absorb_plain_chunk<R>(
    plain: crate::wire::PlainLayout<R>,
    due: usize,
    ring: &Consumer,
    record: &Claimed,
) -> Option<Vec<R>> {
    if !plain_results_fit(plain, due, ring, record) {
        return None;
    }
    let mut values = Vec::new();
    let copy = |dst: &mut [MaybeUninit<u8>]| ring.copy_payload_into(record, 8, dst);
    // SAFETY: `copy_payload_into` writes every byte of the slice it is
    // given when it returns true.
    unsafe { plain.extend_with(&mut values, due, copy) }.then_some(values)
}

/// A chunk's outcome as its results: decoded, and exactly as many as it
/// had items.
fn decode_chunk<R: Wire>(outcome: Outcome, due: usize) -> Result<Vec<R>> {
    match outcome {
        Outcome::Ok(bytes) => {
            decode_exact::<Vec<R>>(&bytes).and_then(|values| check_chunk(values, due))
        }
        Outcome::Err(e) => Err(e),
    }
}

/// One chunk of an `imap`: its results go to the chunk's own cell. Plain
/// results are copied from the result ring straight into their `Vec`
/// ([`absorb`](Completion::absorb), as [`MapCollector`] does), with no copy
/// into a buffer and no decode pass; others are decoded at delivery.
pub(super) struct LazyChunk<R> {
    cell: ChunkRc<Cell<Vec<R>>>,
    /// How many results the chunk owes.
    due: usize,
    /// Asked once, on the caller's thread (see [`MapCollector`]'s field).
    plain: Option<crate::wire::PlainLayout<R>>,
    /// The results absorbed under the pool's lock, until their delivery.
    absorbed: Mutex<Option<Vec<R>>>,
}

impl<R: Wire> LazyChunk<R> {
    pub(super) fn new(cell: ChunkRc<Cell<Vec<R>>>, due: usize) -> Arc<Self> {
        Arc::new(Self {
            cell,
            due,
            plain: crate::wire::plain_of::<R>(),
            absorbed: Mutex::new(None),
        })
    }
}

impl<R: Wire> Completion for LazyChunk<R> {
    fn complete(&self, _tag: u64, outcome: Outcome) {
        let absorbed = lock(&self.absorbed).take();
        let result = match (outcome, absorbed) {
            // An absorbed chunk's outcome is an empty payload.
            (Outcome::Ok(_), Some(values)) => Ok(values),
            (outcome, _) => decode_chunk(outcome, self.due),
        };
        self.cell.finish(result);
    }

    /// Plain results, checked, copied once from the ring into their `Vec`;
    /// anything else is left to the general path (see
    /// [`MapCollector::absorb`]).
    fn absorb(&self, _tag: u64, ring: &Consumer, record: &Claimed) -> bool {
        let Some(plain) = self.plain else {
            return false;
        };
        let Ok(mut absorbed) = self.absorbed.try_lock() else {
            return false;
        };
        if absorbed.is_some() {
            return false; // one outcome per chunk: a second is not ours
        }
        *absorbed = absorb_plain_chunk(plain, self.due, ring, record);
        absorbed.is_some()
    }

    fn delivers_at_once(&self) -> bool {
        // Plain results are in already, or fail to decode at once; the
        // cell has no callbacks (`imap` makes it with none).
        self.plain.is_some()
    }
}

/// Sends each chunk's results to an `imap_unordered` iterator as they come.
/// Plain results are absorbed from the result ring as [`LazyChunk`]'s are,
/// and sent at their delivery.
pub(super) struct ChannelSink<R> {
    tx: crossbeam_channel::Sender<Result<Vec<R>>>,
    /// Asked once, on the caller's thread (see [`MapCollector`]'s field).
    plain: Option<crate::wire::PlainLayout<R>>,
    /// Chunks absorbed under the pool's lock and not delivered yet, in the
    /// order they were absorbed: each delivery of an absorbed chunk (an
    /// empty payload) sends the oldest. Which chunk's results go first does
    /// not matter to an unordered map; that each delivery sends one does.
    absorbed: Mutex<std::collections::VecDeque<Vec<R>>>,
}

impl<R: Wire> ChannelSink<R> {
    pub(super) fn new(tx: crossbeam_channel::Sender<Result<Vec<R>>>) -> Arc<Self> {
        Arc::new(Self {
            tx,
            plain: crate::wire::plain_of::<R>(),
            absorbed: Mutex::new(std::collections::VecDeque::new()),
        })
    }
}

impl<R: Wire> Completion for ChannelSink<R> {
    /// `tag` is the number of results the chunk owes.
    fn complete(&self, tag: u64, outcome: Outcome) {
        let absorbed = match &outcome {
            Outcome::Ok(bytes) if bytes.is_empty() => lock(&self.absorbed).pop_front(),
            _ => None,
        };
        let chunk = match absorbed {
            Some(values) => Ok(values),
            None => decode_chunk(outcome, tag as usize),
        };
        let _ = self.tx.send(chunk);
    }

    /// As [`LazyChunk::absorb`]; `tag` is the number of results owed.
    fn absorb(&self, tag: u64, ring: &Consumer, record: &Claimed) -> bool {
        let Some(plain) = self.plain else {
            return false;
        };
        let Ok(mut absorbed) = self.absorbed.try_lock() else {
            return false;
        };
        match absorb_plain_chunk(plain, tag as usize, ring, record) {
            Some(values) => {
                absorbed.push_back(values);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Callbacks;
    use crate::shm::ring::{HeapRing, Producer, RecordHeader};
    use crate::wire::task::kind;
    use crate::wire::Payload;

    /// What a map's cell received: the whole output, or the error.
    type Received<R> = Arc<Mutex<Option<Result<Vec<R>>>>>;

    /// Callbacks that record the outcome they are given, and where.
    fn recording<R: Wire + Clone>() -> (Callbacks<Vec<R>>, Received<R>) {
        let received: Received<R> = Arc::new(Mutex::new(None));
        let (ok, err) = (received.clone(), received.clone());
        let callbacks = Callbacks::new()
            .on_success(move |v: &Vec<R>| *lock(&ok) = Some(Ok(v.clone())))
            .on_error(move |e| *lock(&err) = Some(Err(e.clone())));
        (callbacks, received)
    }

    fn collector<R: Wire + Clone>(items: usize) -> (Arc<MapCollector<R>>, Received<R>) {
        let (callbacks, received) = recording();
        (
            MapCollector::new(items, Cell::new(callbacks, None)),
            received,
        )
    }

    /// An encoded `Vec<u64>` claiming `count` values, followed by `values`.
    fn chunk_bytes(count: u64, values: &[u64]) -> Vec<u8> {
        let mut bytes = count.to_le_bytes().to_vec();
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes
    }

    /// `payloads` as result records of one ring, claimed.
    fn claimed(ring: &mut HeapRing, payloads: &[Vec<u8>]) -> (Consumer, Vec<Claimed>) {
        let mem = ring.memory();
        let (mut producer, mut consumer) = (Producer::new(mem), Consumer::new(mem));
        for (id, payload) in payloads.iter().enumerate() {
            let header = RecordHeader {
                kind: kind::OK,
                id: id as u64,
                ..Default::default()
            };
            assert!(producer.write(header, payload).unwrap().is_some());
        }
        producer.publish().unwrap();
        let mut records = Vec::new();
        consumer.claim(usize::MAX, &mut records).unwrap();
        assert_eq!(records.len(), payloads.len());
        (consumer, records)
    }

    #[test]
    fn plain_results_are_absorbed_in_place_only_when_honest() {
        let (map, received) = collector::<u64>(5);
        let (first, second) = (map.add_chunk(3), map.add_chunk(2));
        map.seal();
        let mut ring = HeapRing::new(4096);
        let (ring, records) = claimed(
            &mut ring,
            &[
                chunk_bytes(2, &[30, 40]),         // the second chunk, early
                chunk_bytes(4, &[1, 2, 3]),        // a count that lies
                chunk_bytes(u64::MAX, &[1, 2, 3]), // a forged huge count
                chunk_bytes(3, &[1, 2]),           // a value short
                chunk_bytes(3, &[1, 2, 3, 4]),     // a value too many
                chunk_bytes(3, &[10, 20, 0]),      // honest
            ],
        );
        assert!(map.absorb(second, &ring, &records[0]), "early, into place");
        assert!(!map.absorb(second, &ring, &records[0]), "taken once");
        for (lie, record) in records[1..5].iter().enumerate() {
            assert!(!map.absorb(first, &ring, record), "lie {lie} absorbed");
        }
        assert!(map.absorb(first, &ring, &records[5]));
        assert!(
            lock(&received).is_none(),
            "nothing handed over under the pool's lock"
        );
        // Delivery, in either order, only does the bookkeeping (the first
        // hands the complete output over) and hands over once.
        map.complete(second, Outcome::Ok(Payload::default()));
        let got = lock(&received).take();
        assert_eq!(got.unwrap().unwrap(), [10, 20, 0, 30, 40]);
        map.complete(first, Outcome::Ok(Payload::default()));
        assert!(lock(&received).is_none(), "handed over once");
    }

    #[test]
    fn results_that_came_as_bytes_wait_behind_an_absorbed_chunk() {
        let (map, received) = collector::<u64>(6);
        let tags: Vec<u64> = (0..3).map(|_| map.add_chunk(2)).collect();
        map.seal();
        let mut ring = HeapRing::new(4096);
        let (ring, records) = claimed(
            &mut ring,
            &[chunk_bytes(2, &[1, 2]), chunk_bytes(2, &[5, 6])],
        );
        // The second chunk arrives the general way, the third in place,
        // then the first in order: the second must still be decoded.
        map.complete(
            tags[1],
            Outcome::Ok(Payload::from_slice(&chunk_bytes(2, &[3, 4]))),
        );
        assert!(map.absorb(tags[2], &ring, &records[1]));
        assert!(map.absorb(tags[0], &ring, &records[0]));
        map.complete(tags[2], Outcome::Ok(Payload::default()));
        map.complete(tags[0], Outcome::Ok(Payload::default()));
        let got = lock(&received).take();
        assert_eq!(got.unwrap().unwrap(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn an_early_chunk_beyond_the_output_takes_the_general_path() {
        // A length hint of 1: the output's capacity does not reach the
        // second chunk, which must not be written past it.
        let (map, received) = collector::<u64>(1);
        let (first, second) = (map.add_chunk(2), map.add_chunk(2));
        map.seal();
        let mut ring = HeapRing::new(4096);
        let (ring, records) = claimed(
            &mut ring,
            &[chunk_bytes(2, &[1, 2]), chunk_bytes(2, &[3, 4])],
        );
        assert!(!map.absorb(second, &ring, &records[1]), "past the capacity");
        assert!(
            map.absorb(first, &ring, &records[0]),
            "in order: the output grows"
        );
        map.complete(second, Outcome::Ok(ring.payload(&records[1])));
        map.complete(first, Outcome::Ok(Payload::default()));
        let got = lock(&received).take();
        assert_eq!(got.unwrap().unwrap(), [1, 2, 3, 4]);
    }

    #[test]
    fn a_lying_result_left_to_the_general_path_fails_the_map() {
        let (map, received) = collector::<u64>(4);
        let (first, second) = (map.add_chunk(2), map.add_chunk(2));
        map.seal();
        let mut ring = HeapRing::new(4096);
        let (ring, records) = claimed(
            &mut ring,
            &[chunk_bytes(2, &[1, 2]), chunk_bytes(3, &[3, 4])],
        );
        assert!(map.absorb(first, &ring, &records[0]));
        assert!(!map.absorb(second, &ring, &records[1]));
        // The general path: copied out, decoded, refused.
        map.complete(second, Outcome::Ok(ring.payload(&records[1])));
        map.complete(first, Outcome::Ok(Payload::default()));
        let got = lock(&received).take();
        assert!(matches!(got, Some(Err(Error::Decode { .. }))), "{got:?}");
    }

    #[test]
    fn an_imap_chunk_absorbs_plain_results_only_when_honest() {
        let (callbacks, received) = recording::<u64>();
        let chunk = LazyChunk::new(Cell::new(callbacks, None), 3);
        let mut ring = HeapRing::new(4096);
        let (ring, records) = claimed(
            &mut ring,
            &[
                chunk_bytes(4, &[1, 2, 3]), // a count that lies
                chunk_bytes(3, &[1, 2]),    // a value short
                chunk_bytes(3, &[7, 8, 9]), // honest
            ],
        );
        assert!(!chunk.absorb(0, &ring, &records[0]));
        assert!(!chunk.absorb(0, &ring, &records[1]));
        assert!(chunk.absorb(0, &ring, &records[2]));
        assert!(!chunk.absorb(0, &ring, &records[2]), "taken once");
        assert!(
            lock(&received).is_none(),
            "nothing delivered under the lock"
        );
        chunk.complete(0, Outcome::Ok(Payload::default()));
        assert_eq!(lock(&received).take().unwrap().unwrap(), [7, 8, 9]);
        // Not absorbed: the general path decodes and checks the count.
        let (callbacks, received) = recording::<u64>();
        let chunk = LazyChunk::new(Cell::new(callbacks, None), 3);
        chunk.complete(0, Outcome::Ok(ring.payload(&records[1])));
        let got = lock(&received).take();
        assert!(matches!(got, Some(Err(Error::Decode { .. }))), "{got:?}");
    }

    #[test]
    fn an_unordered_imap_sends_one_message_per_chunk_absorbed_or_not() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = ChannelSink::<u64>::new(tx);
        let mut ring = HeapRing::new(4096);
        let (ring, records) = claimed(
            &mut ring,
            &[chunk_bytes(2, &[1, 2]), chunk_bytes(2, &[3, 4])],
        );
        assert!(sink.absorb(2, &ring, &records[0]));
        assert!(!sink.absorb(3, &ring, &records[1]), "owes 3, holds 2");
        assert!(rx.is_empty(), "sent at delivery, not under the lock");
        sink.complete(2, Outcome::Ok(Payload::default()));
        assert_eq!(rx.try_recv().unwrap().unwrap(), [1, 2]);
        sink.complete(3, Outcome::Ok(ring.payload(&records[1])));
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Decode { .. }))));
        // An empty payload that was never absorbed is refused, not lost.
        sink.complete(2, Outcome::Ok(Payload::default()));
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Decode { .. }))));
        assert!(rx.is_empty());
    }

    #[test]
    fn results_that_are_not_plain_data_are_never_absorbed() {
        let (map, _) = collector::<String>(1);
        let tag = map.add_chunk(1);
        let mut ring = HeapRing::new(4096);
        let mut bytes = 1u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.push(b'x');
        let (ring, records) = claimed(&mut ring, &[bytes]);
        assert!(!map.absorb(tag, &ring, &records[0]));
    }
}
