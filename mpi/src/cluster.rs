//! [`Cluster`]: rank 0's handle on the job, its start on every rank, and
//! its `apply` family, broadcasts and per-rank tasks; [`Shard`].

use crate::broadcast::{self, Broadcast};
use crate::comm::{self, Command, DoneFn, Started, Unit};
use crate::maps::Chunked;
use crate::proto;
use crate::result::Slot;
use crate::{ClusterError, ClusterImap, ClusterImapUnordered, ClusterResult, Config};
use corepool::bytemuck::Pod;
use corepool::{Callbacks, Encoder, Error, RawTask, Result, StarFn, Wire};
use crossbeam_channel::Sender;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

static STARTED: AtomicBool = AtomicBool::new(false);

/// Rank 0's handle on the whole job: a Pool whose workers are on every rank.
///
/// Dropping it ends the job: tasks still running are cancelled, every rank
/// stops its pool and finalizes MPI, and the serving ranks exit with status
/// 0. Keep it until `main` ends.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
/// let squares = cluster.map(|x: u64| x * x, 0..100u64)?;
/// assert_eq!(squares[9], 81);
/// drop(cluster); // ends the job on every rank
/// # Ok(()) }
/// ```
pub struct Cluster {
    commands: Sender<Command>,
    comm: Option<std::thread::JoinHandle<std::result::Result<(), ClusterError>>>,
    workers: Vec<usize>,
    max_task_bytes: usize,
    threading: mpi::Threading,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("workers", &self.workers)
            .finish()
    }
}

/// One rank's part in a per-rank task ([`Cluster::gather`]): which of the
/// computing ranks this is, and how many there are.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
/// let parts = cluster.gather(|(shard, n): (corepool_mpi::Shard, usize)| shard.range_of(n).len(), 1000usize)?;
/// assert_eq!(parts.iter().sum::<usize>(), 1000); // the shards cover 0..1000 once
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// The rank running the task.
    pub rank: usize,
    /// This rank's index among the ranks that compute, from 0.
    pub index: usize,
    /// How many ranks compute.
    pub count: usize,
    /// Workers of this rank's pool.
    pub workers: usize,
}

impl Shard {
    /// This shard's part of `0..len` when it is cut into `count` nearly
    /// equal consecutive ranges.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use corepool_mpi::Shard;
    /// let shard = Shard { rank: 1, index: 1, count: 3, workers: 2 };
    /// assert_eq!(shard.range_of(10), 3..6);
    /// # Ok(()) }
    /// ```
    pub fn range_of(&self, len: usize) -> std::ops::Range<usize> {
        (self.index * len / self.count)..((self.index + 1) * len / self.count)
    }
}

impl Wire for Shard {
    fn encode(&self, out: &mut Encoder) {
        (self.rank, self.index, self.count, self.workers).encode(out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (rank, index, count, workers) = <(usize, usize, usize, usize)>::decode(input)?;
        Ok(Self {
            rank,
            index,
            count,
            workers,
        })
    }
}

/// Decodes a task's result bytes; a panicking decoder is a decode error
/// naming `R` and quoting the panic.
pub(crate) fn decode_result<R: Wire>(bytes: Result<Vec<u8>>) -> Result<R> {
    crate::guard::decode_caught::<R>(&bytes?)
}

/// Encodes `value` into fresh bytes; a panicking encoder is an encode error
/// naming `A` and quoting the panic.
pub(crate) fn encode_value<A: Wire>(value: &A) -> Result<Vec<u8>> {
    encode_named::<A, A>(value)
}

/// Encodes `value` into fresh bytes; a panicking encoder is an encode error
/// naming `Name` (a chunk's item type rather than the `Vec` of them) and
/// quoting the panic.
pub(crate) fn encode_named<Name: ?Sized, V: Wire>(value: &V) -> Result<Vec<u8>> {
    let mut out = Encoder::new();
    // On the MPI thread: a spare buffer of an earlier large task, whose
    // pages are already there.
    *out = crate::transport::spare_buffer();
    crate::guard::encode_caught::<Name>(&mut out, |out| value.encode(out));
    out.finish()
}

impl Cluster {
    /// Starts MPI and the job's pools with the defaults. Returns on rank 0
    /// only; every other rank serves, and exits when rank 0 drops the
    /// cluster (or exits with status 1 if it could not start).
    ///
    /// # Errors
    ///
    /// [`ClusterError::BinaryMismatch`] (on every rank) when the ranks do
    /// not run the same executable; [`ClusterError::Pool`] when a rank
    /// cannot start its pool; [`ClusterError::Mpi`] when MPI was already
    /// initialized or grants less than `MPI_THREAD_FUNNELED`, or when
    /// called twice.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// corepool::init(); // optional: a no-op, kept for programs written for earlier versions
    /// let cluster = corepool_mpi::Cluster::init()?; // only rank 0 gets past this line
    /// assert_eq!(cluster.apply(|x: i32| x + 1, 41)?, 42);
    /// # Ok(()) }
    /// ```
    pub fn init() -> std::result::Result<Self, ClusterError> {
        Self::start(Config::default())
    }

    /// A configuration to start from.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::builder().retries(1).init()?;
    /// assert_eq!(cluster.apply(|x: u8| x * 2, 21)?, 42);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> Config {
        Config::default()
    }

    pub(crate) fn start(config: Config) -> std::result::Result<Self, ClusterError> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(ClusterError::Mpi(
                "`Cluster::init` was called twice: MPI starts once per process".into(),
            ));
        }
        let (commands, inbox) = crossbeam_channel::unbounded();
        let to_self = commands.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let comm = std::thread::Builder::new()
            .name("corepool-mpi".into())
            .spawn(move || comm::run(config, inbox, to_self, started_tx))
            .map_err(|e| ClusterError::Mpi(format!("starting the MPI thread: {e}")))?;
        match started_rx.recv() {
            Ok(Ok(Started::Root {
                workers,
                max_task_bytes,
                threading,
                ..
            })) => Ok(Self {
                commands,
                comm: Some(comm),
                workers,
                max_task_bytes,
                threading,
            }),
            Ok(Ok(Started::Serving)) => {
                drop(commands);
                let code = match comm.join() {
                    Ok(Ok(())) => 0,
                    Ok(Err(e)) => {
                        eprintln!("corepool-mpi: {e}");
                        1
                    }
                    Err(_) => 1,
                };
                std::process::exit(code)
            }
            Ok(Err(e)) => {
                let _ = comm.join();
                if is_root_env() {
                    Err(e)
                } else {
                    eprintln!("corepool-mpi: {e}");
                    std::process::exit(1)
                }
            }
            Err(_) => {
                let _ = comm.join();
                Err(ClusterError::Mpi(
                    "the MPI thread ended before the rank started".into(),
                ))
            }
        }
    }

    /// Number of ranks in the job.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// assert_eq!(cluster.ranks(), cluster.workers().len());
    /// # Ok(()) }
    /// ```
    pub fn ranks(&self) -> usize {
        self.workers.len()
    }

    /// Workers of each rank's pool, by rank (rank 0's may be 0).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let total: usize = cluster.workers().iter().sum();
    /// assert!(total >= 1);
    /// # Ok(()) }
    /// ```
    pub fn workers(&self) -> &[usize] {
        &self.workers
    }

    /// The largest encoded argument (a task's, or a chunk of items) that
    /// travels *inside* a worker's ring on every rank: about half of
    /// [`Config::ring_bytes`] (2 MiB with the default 4 MiB rings). It is a
    /// speed figure, not a limit: a larger argument goes through the
    /// rank's argument arena or a one-off shared segment (a spill), as in
    /// a local pool, and arguments, results and broadcasts of any size the
    /// ranks' memory holds go through (a message over 1 GiB between ranks
    /// is sent in pieces, since one MPI message holds at most 2 GiB - 1
    /// bytes). `map` keeps its automatic chunks under a quarter of it (and
    /// under 256 KiB).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// assert!(cluster.max_task_bytes() > 1024);
    /// // Not a limit: a larger argument goes too (through a spill).
    /// let big = vec![1u8; cluster.max_task_bytes() * 2];
    /// assert_eq!(cluster.apply(|v: Vec<u8>| v.len(), big)?, cluster.max_task_bytes() * 2);
    /// # Ok(()) }
    /// ```
    pub fn max_task_bytes(&self) -> usize {
        self.max_task_bytes
    }

    /// The MPI thread level the library granted (at least `Funneled`).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// assert!(cluster.threading() >= mpi::Threading::Funneled);
    /// # Ok(()) }
    /// ```
    pub fn threading(&self) -> mpi::Threading {
        self.threading
    }

    pub(crate) fn submit(&self, unit: Unit) -> Result<()> {
        self.commands
            .send(Command::Submit(unit))
            .map_err(|_| Error::PoolClosed)
    }

    fn submit_one<R: Wire>(
        &self,
        task: RawTask,
        encode: impl FnOnce() -> Result<Vec<u8>> + Send + 'static,
        callbacks: Callbacks<R>,
        target: Option<usize>,
    ) -> Result<ClusterResult<R>> {
        let slot = Slot::new();
        let landing = slot.clone();
        let done: DoneFn = Box::new(move |bytes| {
            let result = decode_result::<R>(bytes);
            if !callbacks.is_empty() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    callbacks.run(&result)
                }));
            }
            landing.finish(result);
        });
        self.submit(Unit {
            task,
            encode: Box::new(encode),
            done,
            target,
        })?;
        Ok(ClusterResult { slot })
    }

    /// Runs `f(arg)` on some rank and waits for the result.
    ///
    /// # Errors
    ///
    /// The task's error: [`Error::Panicked`], [`Error::WorkerDied`],
    /// [`Error::ArgumentTooLarge`], ...
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// assert_eq!(cluster.apply(|s: String| s.len(), "four".to_string())?, 4);
    /// // A task's panic comes back as an error, and the cluster goes on.
    /// let e = cluster.apply(|_: ()| -> u8 { panic!("boom") }, ()).unwrap_err();
    /// assert!(matches!(e, corepool::Error::Panicked { .. }));
    /// # Ok(()) }
    /// ```
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        // Refused before anything is submitted, as a pool does.
        crate::result::check_can_wait()?;
        self.apply_async(f, arg)?.get()
    }

    /// Submits `f(arg)` to some rank and returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::PoolClosed`] when the cluster's MPI thread has ended.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let pending: Vec<_> = (0..10u64)
    ///     .map(|i| cluster.apply_async(|x: u64| x * x, i))
    ///     .collect::<corepool::Result<_>>()?;
    /// let squares: Vec<u64> = pending.into_iter().map(|r| r.get()).collect::<corepool::Result<_>>()?;
    /// assert_eq!(squares[3], 9);
    /// # Ok(()) }
    /// ```
    pub fn apply_async<F, A, R>(&self, f: F, arg: A) -> Result<ClusterResult<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.apply_async_with(f, arg, Callbacks::new())
    }

    /// [`apply_async`](Self::apply_async) with Python's `callback` and
    /// `error_callback`, run at rank 0 on the MPI thread when the result
    /// arrives (they must not wait on the cluster: a wait there is
    /// [`Error::WaitInCallback`] at once).
    ///
    /// A callback that panics, like a result's `Wire::decode` that panics,
    /// is caught: the panic hook reports it as usual, naming the thread it
    /// ran on (`thread 'corepool-mpi' panicked at ...`, as a local pool's
    /// callbacks report theirs on `corepool-callbacks`), the task's result
    /// is delivered all the same (a decoder's panic is the task's
    /// [`Error::Decode`], quoting it), and the cluster goes on: the report
    /// is not the engine's thread crashing.
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Self::apply_async).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// use corepool::Callbacks;
    /// let callbacks = Callbacks::new().on_success(|x: &u64| println!("got {x}"));
    /// let result = cluster.apply_async_with(|x: u64| x + 1, 1, callbacks)?;
    /// assert_eq!(result.get()?, 2);
    /// # Ok(()) }
    /// ```
    pub fn apply_async_with<F, A, R>(
        &self,
        f: F,
        arg: A,
        callbacks: Callbacks<R>,
    ) -> Result<ClusterResult<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.submit_one(RawTask::one(f), move || encode_value(&arg), callbacks, None)
    }

    /// Runs `f(arg)` on rank `rank`'s pool and waits for the result: a
    /// task that must run there (rank 0 is this process's own pool).
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply); [`Error::InvalidConfig`] for a rank that
    /// does not exist or has no worker.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// // Rank 0 is this process's own pool.
    /// let pid = cluster.apply_on_rank(0, |_: ()| std::os::unix::process::parent_id(), ())?;
    /// assert_eq!(pid, std::process::id());
    /// // A rank that is not in the job is a typed error.
    /// assert!(cluster.apply_on_rank(cluster.ranks(), |x: u8| x, 0).is_err());
    /// # Ok(()) }
    /// ```
    pub fn apply_on_rank<F, A, R>(&self, rank: usize, f: F, arg: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        crate::result::check_can_wait()?;
        self.apply_async_on_rank(rank, f, arg)?.get()
    }

    /// [`apply_on_rank`](Self::apply_on_rank) without waiting.
    ///
    /// # Errors
    ///
    /// As [`apply_on_rank`](Self::apply_on_rank), at submission.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let last = cluster.ranks() - 1;
    /// let result = cluster.apply_async_on_rank(last, |x: u32| x * 3, 14)?;
    /// assert_eq!(result.get()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn apply_async_on_rank<F, A, R>(
        &self,
        rank: usize,
        f: F,
        arg: A,
    ) -> Result<ClusterResult<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        if self.workers.get(rank).is_none_or(|&w| w == 0) {
            return Err(Error::InvalidConfig {
                what: format!(
                    "rank {rank} has no worker (workers by rank: {:?})",
                    self.workers
                ),
            });
        }
        self.submit_one(
            RawTask::one(f),
            move || encode_value(&arg),
            Callbacks::new(),
            Some(rank),
        )
    }

    /// The bare MPI round trip between rank 0 and `rank`: `rounds`
    /// ping-pongs of `bytes`-byte messages with plain blocking rsmpi sends
    /// and receives, made by the MPI threads with nothing of corepool's in
    /// between; returns the median round trip. The floor the cluster's own latency
    /// compares to. Run it while the cluster is otherwise idle.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `rank` is 0 or not in the job.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// if cluster.ranks() > 1 {
    ///     let round_trip = cluster.mpi_ping_pong(1, 8, 1000)?;
    ///     println!("bare MPI round trip: {round_trip:?}");
    /// } else {
    ///     assert!(cluster.mpi_ping_pong(1, 8, 1000).is_err()); // no rank 1 to ask
    /// }
    /// # Ok(()) }
    /// ```
    pub fn mpi_ping_pong(&self, rank: usize, bytes: usize, rounds: u64) -> Result<Duration> {
        self.floor(
            rank,
            proto::Control::PingPong {
                bytes: bytes as u64,
                rounds,
            },
        )
    }

    /// The bare MPI send bandwidth from rank 0 to `rank`: `rounds`
    /// messages of `bytes` with plain blocking rsmpi sends, then one
    /// acknowledgement; returns the total time.
    ///
    /// # Errors
    ///
    /// As [`mpi_ping_pong`](Self::mpi_ping_pong).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// if cluster.ranks() > 1 {
    ///     let took = cluster.mpi_stream(1, 1 << 20, 16)?;
    ///     println!("{:.0} MB/s", 16.0 * 1.048576 / took.as_secs_f64());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn mpi_stream(&self, rank: usize, bytes: usize, rounds: u64) -> Result<Duration> {
        self.floor(
            rank,
            proto::Control::Stream {
                bytes: bytes as u64,
                rounds,
            },
        )
    }

    fn floor(&self, peer: usize, control: proto::Control) -> Result<Duration> {
        crate::result::check_can_wait()?;
        if let proto::Control::PingPong { bytes, .. } | proto::Control::Stream { bytes, .. } =
            control
        {
            // Plain MPI sends, one message each: an `int` count.
            if bytes > crate::transport::PIECE_LIMIT as u64 {
                return Err(Error::InvalidConfig {
                    what: format!(
                        "{bytes}-byte messages: a bare MPI message holds at most {} bytes (an MPI count is an `int`); measure with smaller ones",
                        crate::transport::PIECE_LIMIT
                    ),
                });
            }
        }
        let (reply, answer) = std::sync::mpsc::channel();
        self.commands
            .send(Command::Floor {
                peer,
                control,
                reply,
            })
            .map_err(|_| Error::PoolClosed)?;
        answer.recv().map_err(|_| Error::PoolClosed)?
    }

    /// A view of the cluster whose `map` family sends chunks of `chunksize`
    /// items (at least 1).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for 0.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let doubled = cluster.chunked(10)?.map(|x: u64| x * 2, 0..100u64)?;
    /// assert_eq!(doubled[99], 198);
    /// assert!(cluster.chunked(0).is_err());
    /// # Ok(()) }
    /// ```
    pub fn chunked(&self, chunksize: usize) -> Result<Chunked<'_>> {
        if chunksize == 0 {
            return Err(Error::InvalidConfig {
                what: "chunksize 0: give at least 1".into(),
            });
        }
        Ok(Chunked {
            cluster: self,
            chunksize: Some(chunksize),
        })
    }

    fn auto(&self) -> Chunked<'_> {
        Chunked {
            cluster: self,
            chunksize: None,
        }
    }

    /// `f` over every item, in order (Python's `map`), in chunks of about
    /// four per worker of the whole cluster, each kept under 256 KiB.
    ///
    /// # Errors
    ///
    /// The first failing chunk's error (by position).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let squares = cluster.map(|x: u64| x * x, 0..1000u64)?;
    /// assert_eq!(squares[999], 998_001); // in order
    /// # Ok(()) }
    /// ```
    pub fn map<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.auto().map(f, items)
    }

    /// `f(*args)` for every tuple, in order (Python's `starmap`).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let sums = cluster.starmap(|a: u32, b: u32| a + b, vec![(1, 2), (3, 4)])?;
    /// assert_eq!(sums, vec![3, 7]);
    /// # Ok(()) }
    /// ```
    pub fn starmap<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        self.auto().starmap(f, items)
    }

    /// `f` over every item, results yielded in order as they arrive
    /// (Python's `imap`). Every chunk is submitted at once.
    ///
    /// # Errors
    ///
    /// [`Error::PoolClosed`] at submission; each item's error as it comes.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let mut running = 0;
    /// for square in cluster.imap(|x: u64| x * x, 0..100u64)? {
    ///     running += square?; // in order, each as soon as its chunk is in
    /// }
    /// assert_eq!(running, 328_350);
    /// # Ok(()) }
    /// ```
    pub fn imap<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<ClusterImap<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.auto().imap(f, items)
    }

    /// Like [`imap`](Self::imap), but yields results in the order they
    /// arrive (Python's `imap_unordered`).
    ///
    /// # Errors
    ///
    /// As [`imap`](Self::imap).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let mut all: Vec<u64> = cluster
    ///     .imap_unordered(|x: u64| x + 1, 0..100u64)?
    ///     .collect::<corepool::Result<_>>()?;
    /// all.sort_unstable();
    /// assert_eq!(all, (1..=100).collect::<Vec<u64>>());
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<ClusterImapUnordered<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.auto().imap_unordered(f, items)
    }

    /// Gives `data` to every rank once, into a shared array on each node,
    /// and returns the handle tasks refer to it by. Any size the nodes'
    /// memory holds: over 1 GiB it is sent in several `MPI_Bcast`s (one
    /// MPI message holds at most 2 GiB - 1 bytes). Rank 0 holds two copies
    /// meanwhile (its shared array and the bytes it sends), and so does
    /// each other rank until its copy is made.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when a rank has no room for it;
    /// [`Error::PoolClosed`] when the MPI thread has ended.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// use corepool_mpi::Broadcast;
    /// let table = cluster.broadcast(&(0..10_000u32).collect::<Vec<_>>())?;
    /// // Tasks carry the handle, not the 40 KB.
    /// let sum = |(t, from, to): (Broadcast<u32>, usize, usize)| -> u64 {
    ///     t.fold_chunks(from..to, 0u64, |acc, xs| acc + xs.iter().map(|&x| u64::from(x)).sum::<u64>())
    ///         .unwrap_or(0)
    /// };
    /// let parts = cluster.map(sum, (0..10).map(|i| (table.clone(), i * 1000, (i + 1) * 1000)))?;
    /// assert_eq!(parts.iter().sum::<u64>(), 49_995_000);
    /// # Ok(()) }
    /// ```
    pub fn broadcast<T: Pod>(&self, data: &[T]) -> Result<Broadcast<T>> {
        crate::result::check_can_wait()?;
        let bytes: &[u8] = corepool::bytemuck::cast_slice(data);
        let local = corepool::SharedArray::<u8>::from_slice(bytes)?;
        let (reply, answer) = std::sync::mpsc::channel();
        self.commands
            .send(Command::Broadcast {
                bytes: bytes.to_vec(),
                reply,
            })
            .map_err(|_| Error::PoolClosed)?;
        let handles = answer.recv().map_err(|_| Error::PoolClosed)??;
        Ok(Broadcast::new(
            Arc::new(broadcast::Copies { local, handles }),
            data.len(),
        ))
    }

    /// Runs `f((shard, arg))` once on every rank that computes, and returns
    /// the results by rank: per-rank partial results (a rank's rows of a
    /// matrix product, a partial sum) gathered at rank 0.
    ///
    /// # Errors
    ///
    /// The first rank's error (by rank).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// use corepool_mpi::Shard;
    /// let ranks = cluster.gather(|(shard, _): (Shard, ())| shard.rank, ())?;
    /// assert_eq!(ranks[0], 0);
    /// # Ok(()) }
    /// ```
    pub fn gather<F, A, R>(&self, f: F, arg: A) -> Result<Vec<R>>
    where
        F: Fn((Shard, A)) -> R + Copy + Send + Sync + 'static,
        A: Wire + Clone,
        R: Wire,
    {
        crate::result::check_can_wait()?;
        let computing: Vec<usize> = (0..self.ranks()).filter(|&r| self.workers[r] > 0).collect();
        let count = computing.len();
        let mut pending = Vec::with_capacity(count);
        for (index, &rank) in computing.iter().enumerate() {
            let shard = Shard {
                rank,
                index,
                count,
                workers: self.workers[rank],
            };
            let arg = (shard, arg.clone());
            pending.push(self.submit_one(
                RawTask::one(f),
                move || encode_value(&arg),
                Callbacks::new(),
                Some(rank),
            )?);
        }
        pending.into_iter().map(ClusterResult::get).collect()
    }

    /// [`gather`](Self::gather), then `combine` folded over the per-rank
    /// results at rank 0, in rank order.
    ///
    /// # Errors
    ///
    /// As [`gather`](Self::gather).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// use corepool_mpi::Shard;
    /// // Each computing rank sums its share of 0..1000; rank 0 adds the parts.
    /// let part = |(shard, n): (Shard, u64)| -> u64 { shard.range_of(n as usize).map(|i| i as u64).sum() };
    /// assert_eq!(cluster.reduce(part, 1000, |a, b| a + b)?, 499_500);
    /// # Ok(()) }
    /// ```
    pub fn reduce<F, A, R>(&self, f: F, arg: A, combine: impl FnMut(R, R) -> R) -> Result<R>
    where
        F: Fn((Shard, A)) -> R + Copy + Send + Sync + 'static,
        A: Wire + Clone,
        R: Wire,
    {
        let parts = self.gather(f, arg)?;
        parts
            .into_iter()
            .reduce(combine)
            .ok_or(Error::InvalidConfig {
                what: "no rank computes".into(),
            })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(comm) = self.comm.take() {
            if let Ok(Err(e)) = comm.join() {
                eprintln!("corepool-mpi: {e}");
            }
        }
    }
}

/// Whether this process is rank 0 by the launcher's environment (used only
/// when MPI could not say).
fn is_root_env() -> bool {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok())
    .is_none_or(|v| v == "0")
}
