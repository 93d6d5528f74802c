//! Chunk results coming back: [`MapCollector`] gathers a `map`'s chunks
//! into one ordered `Vec`, [`ChannelSink`] hands `imap_unordered` each chunk
//! as it comes, and [`check_chunk`] makes sure a chunk owes what it returns.

use super::driver::Shared;
use super::handle::{guarded_decode, Cell};
use super::prefault::Prefault;
use super::sink::{Completion, Outcome};
use crate::error::{Error, Result};
use crate::shm::park::Spinner;
use crate::sync::lock;
use crate::wire::{decode_exact, Wire};
use std::sync::{Arc, Condvar, Mutex};

/// Collects the chunks of a `map` into one `Vec`, in order.
///
/// Chunks usually come back in order: each is then decoded straight onto
/// the end of the output, with no `Vec` of its own and no final
/// concatenation (for plain data, one copy from the result bytes). A chunk
/// that arrives early waits as the bytes it came in until its turn.
pub(super) struct MapCollector<R> {
    state: Mutex<Collected<R>>,
    /// Signalled when a chunk completes and somebody waits in
    /// [`wait_completed`](Self::wait_completed).
    progress: Condvar,
    cell: Arc<Cell<Vec<R>>>,
    /// Faulting the output's fresh memory in ahead of the results; stopped
    /// (and its thread joined) before the output is handed over.
    prefault: Mutex<Option<Prefault>>,
}

struct Collected<R> {
    /// The results of chunks `0..next`, in order.
    out: Vec<R>,
    next: usize,
    /// Every chunk added so far: how many results it owes, and its encoded
    /// results while they wait for the chunks before them.
    chunks: Vec<(usize, Option<crate::wire::Payload>)>,
    /// No chunk will be added any more.
    sealed: bool,
    /// Chunks answered, in any order (failed ones too).
    completed: usize,
    /// Threads blocked in `wait_completed`; only changed under this lock.
    waiters: usize,
    failed: bool,
}

impl<R: Wire> MapCollector<R> {
    /// A collector expecting about `items` results (a hint for the output's
    /// first allocation); chunks are added with [`add_chunk`](Self::add_chunk)
    /// and the collection closed with [`seal`](Self::seal).
    pub(super) fn new(items: usize, cell: Arc<Cell<Vec<R>>>) -> Arc<Self> {
        // The hint may come from a faulty `size_hint`: the output grows
        // past this if need be.
        const PREALLOCATE_AT_MOST: usize = 1 << 24;
        let out = output_buffer::<R>(items.min(PREALLOCATE_AT_MOST));
        let prefault = Prefault::start(
            out.as_ptr() as usize,
            out.capacity().saturating_mul(std::mem::size_of::<R>()),
        );
        Arc::new(Self {
            prefault: Mutex::new(prefault),
            state: Mutex::new(Collected {
                out,
                next: 0,
                chunks: Vec::new(),
                sealed: false,
                completed: 0,
                waiters: 0,
                failed: false,
            }),
            progress: Condvar::new(),
            cell,
        })
    }

    /// Registers the next chunk, which owes `due` results; returns its tag.
    /// Call before submitting it.
    pub(super) fn add_chunk(&self, due: usize) -> u64 {
        let mut state = lock(&self.state);
        state.chunks.push((due, None));
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
    /// failed, helping `pool` collect results meanwhile (as
    /// [`AsyncResult::wait`](super::AsyncResult::wait) does).
    pub(super) fn wait_completed(&self, n: usize, pool: &Shared) {
        let reached = |s: &Collected<R>| s.completed >= n || s.failed;
        {
            let helping = pool.helper();
            let mut spinner = Spinner::new();
            loop {
                if reached(&lock(&self.state)) {
                    return;
                }
                pool.try_drive();
                if !spinner.spin() {
                    break;
                }
            }
            // Hand over to the driver thread before sleeping.
            drop(helping);
        }
        let mut state = lock(&self.state);
        state.waiters += 1;
        while !reached(&state) {
            state = self.progress.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiters -= 1;
    }

    fn finish_if_done(&self, mut state: std::sync::MutexGuard<'_, Collected<R>>) {
        if state.failed || !state.sealed || state.next < state.chunks.len() {
            return;
        }
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
        match state.chunks.get_mut(index) {
            Some((_, slot)) if index > next => {
                *slot = Some(bytes);
                return;
            }
            Some(_) if index == next => {}
            _ => return, // not a chunk of ours, or one already taken
        }
        let mut bytes = Some(bytes);
        while let Some(b) = bytes.take() {
            let Collected {
                out, next, chunks, ..
            } = &mut *state;
            let due = chunks[*next].0;
            if let Err(e) =
                guarded_decode::<Vec<R>, _>(|| crate::wire::decode_vec_into(&b, due, out))
            {
                return self.fail(state, e);
            }
            *next += 1;
            bytes = chunks.get_mut(*next).and_then(|(_, slot)| slot.take());
        }
        self.finish_if_done(state);
    }
}

impl<R: Wire> Completion for MapCollector<R> {
    fn complete(&self, tag: u64, outcome: Outcome) {
        let mut state = lock(&self.state);
        state.completed += 1;
        if state.waiters > 0 {
            // The waiter re-checks under the lock we hold, once we drop it.
            self.progress.notify_all();
        }
        self.take(state, tag, outcome);
    }
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

/// Sends each chunk's results to an `imap_unordered` iterator as they come.
pub(super) struct ChannelSink<R> {
    pub tx: crossbeam_channel::Sender<Result<Vec<R>>>,
}

impl<R: Wire> Completion for ChannelSink<R> {
    /// `tag` is the number of results the chunk owes.
    fn complete(&self, tag: u64, outcome: Outcome) {
        let chunk = match outcome {
            Outcome::Ok(bytes) => guarded_decode::<Vec<R>, _>(|| decode_exact::<Vec<R>>(&bytes))
                .and_then(|values| check_chunk(values, tag as usize)),
            Outcome::Err(e) => Err(e),
        };
        let _ = self.tx.send(chunk);
    }
}
