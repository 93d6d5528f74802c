//! The MPI thread: the only thread of a rank that calls MPI. It starts MPI
//! (asking for `MPI_THREAD_FUNNELED`: this thread initializes and finalizes
//! MPI and makes every call in between), checks that every rank runs the
//! same build, starts the rank's local pool, and then either dispatches
//! (rank 0: tasks go to the rank with the most room, results come back to
//! their slots) or serves (every other rank: tasks run on the local pool,
//! results go back to rank 0) until rank 0 shuts the job down.

use crate::node;
use crate::proto::Control;
use crate::transport::Transport;
use crate::{ClusterError, Config};
use corepool::{Pinning, Pool, RawTask, Result};
use crossbeam_channel::{Receiver, Sender};
use mpi::topology::Communicator;
use mpi::traits::*;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// Encodes a task's argument (for the rank [`encoding_for`] names).
pub(crate) type EncodeFn = Box<dyn FnOnce() -> Result<Vec<u8>> + Send>;
/// Receives a task's outcome as bytes; runs on the MPI thread.
pub(crate) type DoneFn = Box<dyn FnOnce(Result<Vec<u8>>) + Send>;

/// One task for some rank.
pub(crate) struct Unit {
    pub(crate) task: RawTask,
    pub(crate) encode: EncodeFn,
    pub(crate) done: DoneFn,
    /// `Some(rank)`: must run there (a per-rank task); `None`: anywhere.
    pub(crate) target: Option<usize>,
}

/// What the other threads of a rank tell its MPI thread.
pub(crate) enum Command {
    /// Rank 0's user thread: run this.
    Submit(Unit),
    /// The local pool: a unit finished.
    LocalDone { unit: u64, result: Result<Vec<u8>> },
    /// Rank 0's user thread: give these bytes to every rank; answer each
    /// rank's handle to its copy.
    Broadcast {
        bytes: Vec<u8>,
        reply: std::sync::mpsc::Sender<Result<Vec<Vec<u8>>>>,
    },
    /// Rank 0's user thread: measure bare MPI with rank `peer`
    /// ([`Control::PingPong`] or [`Control::Stream`]); answer the time.
    Floor {
        peer: usize,
        control: Control,
        reply: std::sync::mpsc::Sender<Result<Duration>>,
    },
    /// Rank 0's user thread: the cluster is dropped.
    Shutdown,
}

/// What the MPI thread reports once the rank has started.
pub(crate) enum Started {
    /// This is rank 0: the user's program goes on.
    Root {
        workers: Vec<usize>,
        max_task_bytes: usize,
        threading: mpi::Threading,
    },
    /// This rank serves; the MPI thread returns when the job ends.
    Serving,
}

/// How long the MPI thread spins after its last event before it sleeps:
/// long enough to catch the next message of a burst without a wake-up.
const SPIN: Duration = Duration::from_micros(200);
/// Its first and longest sleep between looks at MPI when idle.
const SLEEP_MIN: Duration = Duration::from_micros(20);
const SLEEP_MAX: Duration = Duration::from_millis(1);
/// The default of [`Config::shutdown_grace`]: the longest the end of a job
/// waits for another rank (its answer to the shutdown, a send's
/// completion) before it ends the job with `MPI_Abort`. A rank that died is
/// ended by the launcher long before, so only a rank that hangs alive
/// reaches it.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Units kept in flight per worker of a rank when they are long (their
/// round trip is over [`SHORT_UNIT`]): the next chunk is there when a
/// worker finishes one, and a slow rank holds no more than this many.
pub(crate) const AHEAD_PER_WORKER: usize = 3;
/// Units kept in flight per worker of a rank when they are short: enough
/// to cover the network's round trip, which then dominates.
pub(crate) const AHEAD_SHORT: usize = 32;
/// A unit whose round trip (dispatch to result, smoothed) is under this
/// is short.
pub(crate) const SHORT_UNIT: Duration = Duration::from_micros(500);

/// The MPI thread's body. Reports through `started` and returns when the
/// rank is done (its universe dropped: MPI finalized).
pub(crate) fn run(
    config: Config,
    commands: Receiver<Command>,
    to_self: Sender<Command>,
    started: std::sync::mpsc::Sender<std::result::Result<Started, ClusterError>>,
) -> std::result::Result<(), ClusterError> {
    crate::result::mark_mpi_thread();
    let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
    else {
        let e = ClusterError::Mpi("MPI was already initialized in this process: call `Cluster::init` once, and do not initialize MPI yourself".into());
        let _ = started.send(Err(e.clone()));
        return Err(e);
    };
    let world = universe.world();
    let rank = world.rank();
    match start(&config, &world, threading) {
        Err(e) => {
            let _ = started.send(Err(e.clone()));
            // Every rank fails the same check, so every rank ends here and
            // finalizes: the job ends cleanly.
            Err(e)
        }
        Ok((pool, workers, max_task_bytes)) => {
            let mut transport = Transport::new(world, config.message_piece, config.shutdown_grace);
            if rank == 0 {
                let _ = started.send(Ok(Started::Root {
                    workers: workers.clone(),
                    max_task_bytes,
                    threading,
                }));
                let mut root = crate::dispatch::Dispatcher::new(pool, workers, to_self);
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    root.run(&mut transport, &commands)
                }));
                end_job_if_panicked(ran, &transport);
            } else {
                let _ = started.send(Ok(Started::Serving));
                crate::serve::keep_large_buffers();
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    crate::serve::serve(pool, &mut transport, &commands, to_self)
                }));
                end_job_if_panicked(ran, &transport);
            }
            drop(transport); // completes every send before MPI ends
            drop(universe);
            Ok(())
        }
    }
}

/// A panic of the MPI thread (a bug) must not leave rank 0's caller
/// waiting forever for results that will never come: it ends the whole job
/// (`MPI_Abort`), as a dead rank does.
fn end_job_if_panicked(ran: std::thread::Result<()>, transport: &Transport) {
    if ran.is_err() {
        eprintln!(
            "corepool-mpi: rank {}: the MPI thread panicked (a bug: please report it); ending the job",
            transport.world.rank()
        );
        transport.world.abort(70);
    }
}

/// The checks and set-up every rank makes together: same build, CPU share,
/// local pool, everyone's worker count.
fn start(
    config: &Config,
    world: &mpi::topology::SimpleCommunicator,
    threading: mpi::Threading,
) -> std::result::Result<(Option<Pool>, Vec<usize>, usize), ClusterError> {
    let ranks = world.size() as usize;
    let rank = world.rank() as usize;
    if let Some(e) = launcher_mismatch(ranks) {
        // Alone in its world: no other rank waits in a collective below.
        return Err(e);
    }
    // Every rank takes part in every collective below, whatever it finds,
    // so that a failure on one rank never leaves the others waiting.
    let hash = node::executable_hash().unwrap_or(0);
    let mut hashes = vec![0u64; ranks];
    world.all_gather_into(&hash, &mut hashes[..]);
    if threading < mpi::Threading::Funneled {
        return Err(ClusterError::Mpi(format!(
            "the MPI library granted thread level {threading:?}; corepool-mpi needs MPI_THREAD_FUNNELED (one thread of each rank makes every MPI call)"
        )));
    }
    let differing: Vec<(usize, u64)> = hashes
        .iter()
        .enumerate()
        .filter(|&(_, &h)| h != hashes[0] || h == 0)
        .map(|(r, &h)| (r, h))
        .collect();
    if !differing.is_empty() {
        return Err(ClusterError::BinaryMismatch {
            rank0: hashes[0],
            differing,
        });
    }
    let node = world.split_shared(rank as i32);
    let allowed = corepool::info::allowed_cpus().unwrap_or_default();
    let mask = node::mask_of(&allowed);
    let local_size = node.size() as usize;
    let mut masks = vec![0u64; node::MASK_WORDS * local_size];
    node.all_gather_into(&mask[..], &mut masks[..]);
    let same = masks.chunks(node::MASK_WORDS).all(|m| m == &mask[..]);
    let share = node::cpu_share(&allowed, same, node.rank() as usize, local_size);
    let want = if rank == 0 {
        config.rank0_workers.unwrap_or(share.len())
    } else {
        share.len()
    };
    let pool = if want == 0 {
        Ok(None)
    } else {
        let builder = Pool::builder()
            .workers(want)
            .pinning(Pinning::Cpus(share))
            .ring_bytes(config.ring_bytes)
            .retries(config.retries);
        match config.task_timeout {
            Some(timeout) => builder.task_timeout(timeout),
            None => builder,
        }
        .build()
        .map(Some)
    };
    let mine = [
        pool.as_ref()
            .map_or(0, |p| p.as_ref().map_or(0, Pool::workers)) as u64,
        pool.as_ref().map_or(0, |p| {
            p.as_ref().map_or(u64::MAX, |p| p.max_task_bytes() as u64)
        }),
        u64::from(pool.is_err()),
    ];
    let mut all = vec![0u64; 3 * ranks];
    world.all_gather_into(&mine[..], &mut all[..]);
    let pool = pool.map_err(|e| ClusterError::Pool { rank, source: e })?;
    if let Some(failed) = all.chunks(3).position(|c| c[2] != 0) {
        return Err(ClusterError::Mpi(format!(
            "rank {failed} could not start its local pool (its own error says why)"
        )));
    }
    let workers: Vec<usize> = all.chunks(3).map(|c| c[0] as usize).collect();
    let max_task_bytes = all.chunks(3).map(|c| c[1]).min().unwrap_or(0) as usize;
    if workers.iter().all(|&w| w == 0) {
        // Every rank finds the same, from the same gathered counts.
        let why = if config.rank0_workers == Some(0) && ranks == 1 {
            "`rank0_workers(0)` leaves rank 0 without a worker, and this job has only rank 0: launch at least 2 ranks (`mpirun -n 2 ...`), or drop `rank0_workers(0)` to compute on rank 0 as well".to_string()
        } else {
            format!("no rank has a worker (workers by rank: {workers:?}): each rank's pool takes its share of its node's allowed CPUs, and these ranks were allowed none; check the launcher's binding (`--bind-to`, `--cpus-per-task`), or give rank 0 workers with `rank0_workers(n)`")
        };
        return Err(ClusterError::Config(why));
    }
    Ok((pool, workers, max_task_bytes))
}

/// Variables in which a launcher tells the processes it started how many
/// there are: Open MPI's `mpirun`, and PMI's (MPICH's Hydra `mpiexec`,
/// Intel MPI, Slurm's `srun --mpi=pmi2`). Only a launched process has them
/// (Slurm's `SLURM_NTASKS` is also set for a batch script, so not that).
const LAUNCHER_SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// A process alone in its MPI world although its launcher started several:
/// the program was built against another MPI than the launcher's (say,
/// MPICH's library under Open MPI's `mpirun`), so each process initialized
/// as a singleton and would run the whole program on its own. Refused
/// rather than run N times.
fn launcher_mismatch(world_size: usize) -> Option<ClusterError> {
    if world_size != 1 {
        return None;
    }
    let (var, launched) = LAUNCHER_SIZE_VARS.iter().find_map(|&var| {
        let n = std::env::var(var).ok()?.trim().parse::<usize>().ok()?;
        Some((var, n))
    })?;
    if launched <= 1 {
        return None;
    }
    let library = crate::mpi_library();
    Some(ClusterError::Mpi(format!(
        "the launcher started {launched} processes ({var}={launched}), but this one is alone in its MPI world: the program is built against another MPI library ({library}) than the launcher's; launch it with that library's own mpirun/mpiexec (Debian: mpirun.openmpi or mpirun.mpich), or rebuild it against the launcher's MPI (MPICC=mpicc.mpich or mpicc.openmpi, in a fresh target directory)"
    )))
}

/// Sleeps or spins between looks, by how long the thread has been idle.
pub(crate) struct Idle {
    last_event: Instant,
    sleep: Duration,
    /// The longest sleep for now: [`SLEEP_MAX`] unless the thread expects
    /// a message sooner ([`expect_within`](Self::expect_within)).
    cap: Duration,
}

impl Idle {
    pub(crate) fn new() -> Self {
        Self {
            last_event: Instant::now(),
            sleep: SLEEP_MIN,
            cap: SLEEP_MAX,
        }
    }

    /// Caps the sleeps by what the thread waits for: results expected
    /// about `round_trip` after they were sent (`None`: nothing expected).
    /// A result that arrives while the thread sleeps waits for its next
    /// look at MPI, so the sleeps stay under a sixteenth of the round trip
    /// (which includes that wait): a 1 ms task's result waits about 100 µs
    /// at most rather than up to [`SLEEP_MAX`] (measured: the round trip of
    /// a 1 ms task took 4.3 ms with the plain back-off, 1.7–2.3 ms so).
    /// Tasks of 16 ms and more keep the longest sleeps.
    pub(crate) fn expect_within(&mut self, round_trip: Option<Duration>) {
        self.cap = round_trip.map_or(SLEEP_MAX, |t| (t / 16).clamp(SLEEP_MIN, SLEEP_MAX));
    }

    pub(crate) fn event(&mut self) {
        self.last_event = Instant::now();
        self.sleep = SLEEP_MIN;
    }

    /// Whether the thread is still in its spin after the last event (the
    /// next [`wait`](Self::wait) yields rather than sleeps).
    pub(crate) fn spinning(&self) -> bool {
        self.last_event.elapsed() < SPIN
    }

    /// Waits a little for a command; returns it if one came.
    pub(crate) fn wait(&mut self, commands: &Receiver<Command>) -> Option<Command> {
        if self.last_event.elapsed() < SPIN {
            std::thread::yield_now();
            return None;
        }
        let got = commands.recv_timeout(self.sleep.min(self.cap));
        self.sleep = (self.sleep * 2).min(SLEEP_MAX);
        // A timeout, or no sender left (the cluster is going away): look again.
        got.ok()
    }
}

/// Runs `done` without letting a panic in the user's callback or decoder
/// take the MPI thread down (the panic hook has printed it).
pub(crate) fn deliver(done: DoneFn, result: Result<Vec<u8>>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(result)));
}

/// Submits `bytes` to the local pool; its outcome comes back as a command.
pub(crate) fn run_locally(
    pool: &Pool,
    task: RawTask,
    unit: u64,
    bytes: Vec<u8>,
    to_self: &Sender<Command>,
) -> Result<()> {
    pool.submit_raw(task, bytes, local_done(unit, to_self))
}

/// What the local pool calls with unit `unit`'s outcome: hands it back to
/// the MPI thread as a command.
pub(crate) fn local_done(
    unit: u64,
    to_self: &Sender<Command>,
) -> impl FnOnce(Result<Vec<u8>>) + Send + 'static {
    let tx = to_self.clone();
    move |result| {
        // Unlabelled: rank 0 names itself in `Dispatcher::finished`, a
        // serving rank in `proto::error_to_bytes` (labelling here named
        // rank 0 on every rank: "(on rank 0) (on rank 1)", a user trial).
        let _ = tx.send(Command::LocalDone { unit, result });
    }
}
