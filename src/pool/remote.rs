//! Tasks as bytes: a [`RawTask`] names a task's function portably between
//! processes running the same executable, and [`Pool::submit_raw`] runs one
//! on the pool with already encoded arguments. The hook a transport that
//! carries tasks between machines (the `corepool-mpi` crate) is built on,
//! with [`Collector`], which lets that transport's thread collect the
//! results itself instead of waiting for the pool's driver to hand them over,
//! and [`RawArgument`], memory of the pool's argument arena that such a
//! transport receives a large argument straight into.

use super::driver::HelperGuard;
use super::sink::{Completion, Outcome, Sink};
use super::{Callbacks, Pool};
use crate::error::Result;
use crate::wire::task::{self, StarFn};
use crate::wire::{Payload, Wire};
use std::fmt;
use std::sync::{Arc, Mutex};

/// A task's function, named the way corepool names it to its workers: by
/// the distance of its decoding trampoline from a fixed function of the
/// executable, which is the same in every process running the same build
/// (wherever the loader placed the image).
///
/// Made from a typed function, turned into bits ([`to_bits`](Self::to_bits)),
/// carried to another process of the same build, turned back
/// ([`from_bits`](Self::from_bits)) and run there with
/// [`Pool::submit_raw`]. The argument bytes are a [`Wire`] encoding: `A`'s
/// for [`one`](Self::one), a `Vec<A>`'s for [`chunk`](Self::chunk) and a
/// `Vec<T>`'s for [`star_chunk`](Self::star_chunk); the result bytes are
/// `R`'s, or a `Vec<R>`'s for the chunks.
///
/// ```
/// use corepool::{Pool, RawTask, Wire, Encoder};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() -> corepool::Result<()> {
///     let pool = Pool::new(1)?;
///     let bits = RawTask::one(square).to_bits(); // what crosses the network
///     // SAFETY: the bits come from `to_bits` in this very executable.
///     let task = unsafe { RawTask::from_bits(bits) };
///     let mut arg = Encoder::new();
///     7u64.encode(&mut arg);
///     let (tx, rx) = std::sync::mpsc::channel();
///     pool.submit_raw(task, arg.finish()?, move |result| tx.send(result).unwrap())?;
///     let bytes = rx.recv().unwrap()?;
///     assert_eq!(u64::decode(&mut bytes.as_slice())?, 49);
///     Ok(())
/// }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawTask {
    offset: i64,
}

impl fmt::Debug for RawTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTask")
            .field("offset", &self.offset)
            .finish()
    }
}

impl RawTask {
    /// `f` on one argument (what `apply` sends). The same function gives
    /// the same bits; different functions (or the same one through another
    /// kind) different bits:
    ///
    /// ```
    /// use corepool::RawTask;
    /// fn square(x: u64) -> u64 { x * x }
    /// fn cube(x: u64) -> u64 { x * x * x }
    /// assert_eq!(RawTask::one(square), RawTask::one(square));
    /// assert_ne!(RawTask::one(square), RawTask::one(cube));
    /// assert_ne!(RawTask::one(square), RawTask::chunk(square));
    /// ```
    pub fn one<F, A, R>(f: F) -> Self
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        const { task::assert_captures_nothing::<F>() };
        let _ = f;
        Self {
            offset: task::offset_of(task::call_one::<F, A, R>),
        }
    }

    /// `f` on every item of an encoded `Vec<A>`, giving a `Vec<R>` (a
    /// chunk of `map`).
    ///
    /// ```
    /// use corepool::{Encoder, Pool, RawTask, Wire};
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::new(1)?;
    ///     let mut arg = Encoder::new();
    ///     vec![1u64, 2, 3].encode(&mut arg);
    ///     let (tx, rx) = std::sync::mpsc::channel();
    ///     pool.submit_raw(RawTask::chunk(square), arg.finish()?, move |r| tx.send(r).unwrap())?;
    ///     let bytes = rx.recv().unwrap()?;
    ///     assert_eq!(Vec::<u64>::decode(&mut bytes.as_slice())?, [1, 4, 9]);
    ///     Ok(())
    /// }
    /// ```
    pub fn chunk<F, A, R>(f: F) -> Self
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        const { task::assert_captures_nothing::<F>() };
        let _ = f;
        Self {
            offset: task::offset_of(task::call_chunk::<F, A, R>),
        }
    }

    /// `f(*t)` for every tuple `t` of an encoded `Vec<T>`, giving a `Vec<R>`
    /// (a chunk of `starmap`).
    ///
    /// ```
    /// use corepool::{Encoder, Pool, RawTask, Wire};
    ///
    /// fn add(a: u64, b: u64) -> u64 { a + b }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::new(1)?;
    ///     let mut arg = Encoder::new();
    ///     vec![(1u64, 2u64), (10, 20)].encode(&mut arg);
    ///     let (tx, rx) = std::sync::mpsc::channel();
    ///     pool.submit_raw(RawTask::star_chunk(add), arg.finish()?, move |r| tx.send(r).unwrap())?;
    ///     let bytes = rx.recv().unwrap()?;
    ///     assert_eq!(Vec::<u64>::decode(&mut bytes.as_slice())?, [3, 30]);
    ///     Ok(())
    /// }
    /// ```
    pub fn star_chunk<F, T, R>(f: F) -> Self
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        const { task::assert_captures_nothing::<F>() };
        let _ = f;
        Self {
            offset: task::offset_of(task::call_star_chunk::<F, T, R>),
        }
    }

    /// The portable name: meaningful only to a process running the very same
    /// executable.
    ///
    /// ```
    /// use corepool::RawTask;
    /// fn square(x: u64) -> u64 { x * x }
    /// let bits = RawTask::one(square).to_bits();
    /// // SAFETY: the bits come from `to_bits` in this very executable.
    /// assert_eq!(unsafe { RawTask::from_bits(bits) }, RawTask::one(square));
    /// ```
    pub fn to_bits(self) -> i64 {
        self.offset
    }

    /// The task named by `bits`.
    ///
    /// # Safety
    ///
    /// `bits` must come from [`to_bits`](Self::to_bits) in a process running
    /// the very same executable (byte for byte: check a content hash of it
    /// first, as `corepool-mpi` does when its ranks start). A worker jumps to
    /// the address the bits name; any other value makes it run arbitrary
    /// code.
    pub unsafe fn from_bits(bits: i64) -> Self {
        Self { offset: bits }
    }
}

/// Hands a task's outcome, as bytes, to a caller's function once.
struct RawSink<D> {
    done: Mutex<Option<D>>,
}

impl<D: FnOnce(Result<Vec<u8>>) + Send> Completion for RawSink<D> {
    fn complete(&self, _tag: u64, outcome: Outcome) {
        let result = match outcome {
            Outcome::Ok(bytes) => Ok(bytes.to_vec()),
            Outcome::Err(e) => Err(e),
        };
        // Taken out first, so that the lock is released before the
        // caller's code runs (an `if let` would hold it through `done`).
        let done = crate::sync::lock(&self.done).take();
        if let Some(done) = done {
            done(result);
        }
    }
}

impl Pool {
    /// Runs `task` on encoded `arg` bytes and calls `done` once with the
    /// encoded result (or the task's error: [`Error::Panicked`](crate::Error::Panicked),
    /// [`Error::WorkerDied`](crate::Error::WorkerDied), [`Error::Decode`](crate::Error::Decode) for bytes that do not decode
    /// as the task's argument, ...).
    ///
    /// `done` runs in this process, at once, on whichever thread collects
    /// the result: the pool's driver, a thread holding a [`Collector`], a
    /// caller waiting on the pool (`get`, `map`, a lazy map's `next`, a
    /// submission waiting for room under
    /// [`max_queued`](crate::PoolBuilder::max_queued)), an `AsyncResult`'s
    /// poll (inside an async runtime), or [`terminate`](Self::terminate)'s
    /// caller for the tasks it cancels. Unlike a [`Callbacks`] callback, it
    /// is not handed to the pool's callback thread: a transport's thread
    /// that collects its own results (`corepool-mpi`'s) gets them with no
    /// hop between threads. So keep it short and make it never block (hand
    /// the bytes on, as into an unbounded channel): while it runs, that
    /// thread collects nothing else, and a `done` that waits for a thread
    /// which is itself collecting (a submitter blocked for room, a caller in
    /// `get`) can deadlock it. Waiting on this pool in `done` fails with
    /// [`Error::WaitInCallback`](crate::Error::WaitInCallback); a panic in it
    /// is caught and affects nothing else. The worker decodes `arg` as
    /// untrusted input.
    ///
    /// ```
    /// use corepool::{Encoder, Error, Pool, RawTask, Wire};
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::new(1)?;
    ///     let (tx, rx) = std::sync::mpsc::channel();
    ///     // Three bytes are no `u64`: the worker refuses them, the pool lives on.
    ///     pool.submit_raw(RawTask::one(square), vec![1, 2, 3], move |r| tx.send(r).unwrap())?;
    ///     assert!(matches!(rx.recv().unwrap(), Err(Error::Decode { .. })));
    ///     assert_eq!(pool.apply(square, 3)?, 9);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ArgumentTooLarge`](crate::Error::ArgumentTooLarge) when `arg` is longer than
    /// [`max_task_bytes`](Self::max_task_bytes); [`Error::PoolClosed`](crate::Error::PoolClosed)
    /// after `close`/`terminate`; [`Error::ForeignPool`](crate::Error::ForeignPool) in a `fork()`ed copy.
    /// `done` is not called when submission fails.
    pub fn submit_raw(
        &self,
        task: RawTask,
        arg: Vec<u8>,
        done: impl FnOnce(Result<Vec<u8>>) + Send + 'static,
    ) -> Result<()> {
        let target: Arc<dyn Completion> = Arc::new(RawSink {
            done: Mutex::new(Some(done)),
        });
        let payload = if arg.len() <= Payload::INLINE {
            Payload::from_slice(&arg)
        } else {
            Payload::from_vec(arg)
        };
        self.shared.submit(
            smallvec::smallvec![(task.offset, payload, Sink::shared(target, 0))],
            Vec::new(),
            false,
        )
    }

    /// `len` bytes of this pool's argument arena for a task's encoded
    /// argument, to fill in place (a transport receives the argument's bytes
    /// straight into them) and then run with
    /// [`submit_raw_argument`](Self::submit_raw_argument): the worker decodes
    /// them where they are, with no copy into its ring on the way.
    ///
    /// `None` when the arena has no free block of that size (it is full of
    /// arguments still queued or running, or smaller than `len`), when the
    /// pool has no arena ([`arg_arena_bytes`](crate::PoolBuilder::arg_arena_bytes)
    /// of 0, or one too large to be made), when the pool is closed or
    /// terminated (nothing could be submitted), or in a `fork()`ed copy of
    /// the pool's process: then pass the bytes to
    /// [`submit_raw`](Self::submit_raw), which takes any size (and says why
    /// it cannot run them).
    /// Dropped unsubmitted, the memory goes back to the arena.
    ///
    /// ```
    /// use corepool::{Encoder, Pool, RawTask, Wire};
    ///
    /// fn total(v: Vec<u8>) -> u64 { v.iter().map(|&b| u64::from(b)).sum() }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::new(1)?;
    ///     let mut encoded = Encoder::new();
    ///     vec![3u8; 1 << 20].encode(&mut encoded);
    ///     let encoded = encoded.finish()?; // as a transport would receive it
    ///     let (tx, rx) = std::sync::mpsc::channel();
    ///     let done = move |r| tx.send(r).unwrap();
    ///     match pool.raw_argument(encoded.len()) {
    ///         Some(mut arg) => {
    ///             arg.copy_from_slice(&encoded); // a receive, in a transport
    ///             pool.submit_raw_argument(RawTask::one(total), arg, encoded.len(), done)?
    ///         }
    ///         None => pool.submit_raw(RawTask::one(total), encoded, done)?,
    ///     }
    ///     let bytes = rx.recv().unwrap()?;
    ///     assert_eq!(u64::decode(&mut bytes.as_slice())?, 3 << 20);
    ///     Ok(())
    /// }
    /// ```
    pub fn raw_argument(&self, len: usize) -> Option<RawArgument<'_>> {
        // `check_open` checks the owner too; a closed pool would only
        // refuse the filled bytes later.
        self.shared.check_open().ok()?;
        let reserved = self.shared.arena()?.reserve(len)?;
        Some(RawArgument {
            reserved,
            _pool: std::marker::PhantomData,
        })
    }

    /// Runs `task` on the first `len` bytes of `arg` (see
    /// [`raw_argument`](Self::raw_argument)) and calls `done` once with the
    /// encoded result, as [`submit_raw`](Self::submit_raw) does. The ring
    /// carries only the memory's handle; the memory is the task's until its
    /// outcome is in (and kept for ever, never reused, if a worker that may
    /// still read it is given up). The bytes after the first `len` (a
    /// transport's trailer, say) are never looked at.
    ///
    /// An `arg` of another pool (of the same process) still runs: its bytes
    /// are copied and submitted as [`submit_raw`](Self::submit_raw) would.
    /// See [`raw_argument`](Self::raw_argument) for the whole way.
    ///
    /// ```
    /// use corepool::{Error, Pool, RawTask};
    ///
    /// fn length(v: Vec<u8>) -> u64 { v.len() as u64 }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::new(1)?;
    ///     if let Some(arg) = pool.raw_argument(16) {
    ///         // More bytes than were lent: refused, the memory goes back.
    ///         let refused = pool.submit_raw_argument(RawTask::one(length), arg, 17, |_| {});
    ///         assert!(matches!(refused, Err(Error::ArgumentTooLarge { size: 17, max: 16 })));
    ///     }
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ArgumentTooLarge`](crate::Error::ArgumentTooLarge) when `len`
    /// is more than `arg` holds; otherwise as [`submit_raw`](Self::submit_raw)
    /// ([`Error::PoolClosed`](crate::Error::PoolClosed) after
    /// `close`/`terminate`, ...). `done` is not called when submission
    /// fails; the memory goes back to the arena.
    pub fn submit_raw_argument(
        &self,
        task: RawTask,
        arg: RawArgument<'_>,
        len: usize,
        done: impl FnOnce(Result<Vec<u8>>) + Send + 'static,
    ) -> Result<()> {
        // First: in a `fork()`ed copy, `arg` has no bytes (ForeignPool, not
        // ArgumentTooLarge).
        self.shared.check_owner()?;
        let Some(bytes) = arg.get(..len) else {
            return Err(crate::Error::ArgumentTooLarge {
                size: len,
                max: arg.len(),
            });
        };
        let ours = self
            .shared
            .arena()
            .is_some_and(|arena| Arc::ptr_eq(arena, arg.reserved.arena()));
        if !ours {
            return self.submit_raw(task, bytes.to_vec(), done);
        }
        let target: Arc<dyn Completion> = Arc::new(RawSink {
            done: Mutex::new(Some(done)),
        });
        let (handle, held) = crate::shm::spill::hold_reserved(arg.reserved, len);
        self.shared.submit_spilled(
            smallvec::smallvec![(
                task.offset,
                Payload::from_slice(&handle),
                Sink::shared(target, 0)
            )],
            Some(vec![Some(held)]),
            Vec::new(),
            false,
        )
    }

    /// The largest encoded argument that travels inside the task ring's
    /// record (about half of [`ring_bytes`](crate::PoolBuilder::ring_bytes)):
    /// a speed figure, not a limit. A larger argument goes out of line (the
    /// pool's argument arena, or a spill) at the cost of one more copy; a
    /// `map` sizes its chunks to fit it.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder().workers(1).ring_bytes(1 << 16).build()?;
    ///     assert!(pool.max_task_bytes() < 1 << 15);
    ///     Ok(())
    /// }
    /// ```
    pub fn max_task_bytes(&self) -> usize {
        self.shared.max_payload
    }

    /// Makes the calling thread collect this pool's results itself, for as
    /// long as the [`Collector`] lives: see there.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let collector = pool.collector();
    ///     collector.collect(); // nothing submitted: nothing to deliver
    ///     drop(collector); // before waiting on the pool: the driver takes over
    ///     assert_eq!(pool.apply(|x: u64| x + 1, 1)?, 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn collector(&self) -> Collector<'_> {
        Collector {
            pool: self,
            _helping: self.shared.helper(),
        }
    }
}

/// Memory of a pool's argument arena for one task's encoded argument, to
/// fill in place and submit with [`Pool::submit_raw_argument`] (see
/// [`Pool::raw_argument`], with an example). It derefs to its bytes: as
/// many as were asked for, holding whatever the memory held before (an
/// earlier argument, or zeros) until written. Dropped unsubmitted, the
/// memory goes back to the arena.
///
/// Nothing but this process can write the arena, and no worker reads this
/// memory before it is submitted. In a `fork()`ed copy of the process, where
/// the arena is not mapped, it derefs to no bytes at all.
pub struct RawArgument<'pool> {
    reserved: crate::shm::arena::Reserved,
    _pool: std::marker::PhantomData<&'pool Pool>,
}

impl fmt::Debug for RawArgument<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArgument")
            .field("len", &self.reserved.len())
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for RawArgument<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.reserved.bytes()
    }
}

impl std::ops::DerefMut for RawArgument<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.reserved.bytes_mut()
    }
}

/// A thread that collects a pool's results itself, as a caller waiting in
/// [`AsyncResult::get`](crate::AsyncResult::get) does: while one lives, the
/// pool's driver thread stays asleep and leaves the rings to it, so a result
/// goes from the worker to its `done` (of [`Pool::submit_raw`]) or callback
/// on this thread, with no hand-over between threads and no wake-up.
///
/// For a thread that polls anyway (a transport's event loop): call
/// [`collect`](Self::collect) on every turn of the loop, and drop the
/// collector before the thread sleeps or turns to something long, since
/// nothing is collected meanwhile (dropping it wakes the driver if results
/// are still due). Nor should the thread submit to a full pool with a
/// [`max_queued`](crate::PoolBuilder::max_queued) bound while it holds a
/// collector: the submission collects while it spins, but then sleeps
/// waiting for room that only collecting frees, while the collector keeps
/// the driver asleep.
///
/// ```
/// use corepool::{Encoder, Pool, RawTask, Wire};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() -> corepool::Result<()> {
///     let pool = Pool::new(1)?;
///     let mut arg = Encoder::new();
///     7u64.encode(&mut arg);
///     let (tx, rx) = std::sync::mpsc::channel();
///     let collector = pool.collector();
///     pool.submit_raw(RawTask::one(square), arg.finish()?, move |r| tx.send(r).unwrap())?;
///     let bytes = loop {
///         collector.collect(); // runs `done` here once the result is in
///         if let Ok(result) = rx.try_recv() {
///             break result?;
///         }
///         std::thread::yield_now();
///     };
///     drop(collector);
///     assert_eq!(u64::decode(&mut bytes.as_slice())?, 49);
///     Ok(())
/// }
/// ```
pub struct Collector<'a> {
    pool: &'a Pool,
    /// Registered as a helper: the driver sleeps on its gate meanwhile.
    _helping: HelperGuard<'a>,
}

impl fmt::Debug for Collector<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl Collector<'_> {
    /// Collects the results the workers have finished, delivers them on
    /// this thread, and hands queued tasks to free workers; never blocks
    /// (if another thread is doing the same this instant, it does nothing).
    /// Returns whether anything happened. See [`Collector`] for an example.
    pub fn collect(&self) -> bool {
        self.pool.shared.try_drive()
    }
}

impl<T> Callbacks<T> {
    /// Runs the callback that fits `result` (`on_success` for a value,
    /// `on_error` for an error), if there is one: for results that arrive
    /// by another way than a [`Pool`] (from another machine).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// static SEEN: AtomicU64 = AtomicU64::new(0);
    ///
    /// let cb = corepool::Callbacks::new().on_success(|v: &u64| { SEEN.store(*v, Ordering::Relaxed); });
    /// cb.run(&Ok(5));
    /// assert_eq!(SEEN.load(Ordering::Relaxed), 5);
    /// ```
    pub fn run(self, result: &Result<T>) {
        match (result, self) {
            (Ok(v), Callbacks { ok: Some(f), .. }) => f(v),
            (Err(e), Callbacks { err: Some(f), .. }) => f(e),
            _ => {}
        }
    }

    /// Whether any callback is set.
    ///
    /// ```
    /// use corepool::Callbacks;
    /// assert!(Callbacks::<u64>::new().is_empty());
    /// assert!(!Callbacks::<u64>::new().on_error(|e| eprintln!("{e}")).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.ok.is_none() && self.err.is_none()
    }
}
