//! The MPI thread: the only thread of a rank that calls MPI. It starts MPI
//! (asking for `MPI_THREAD_FUNNELED`: this thread initializes and finalizes
//! MPI and makes every call in between), checks that every rank runs the
//! same build, starts the rank's local pool, and then either dispatches
//! (rank 0: tasks go to the rank with the most room, results come back to
//! their slots) or serves (every other rank: tasks run on the local pool,
//! results go back to rank 0) until rank 0 shuts the job down.

use crate::broadcast::encoding_for;
use crate::node;
use crate::proto::{
    self, Control, TAG_CONTROL, TAG_FLOOR, TAG_RESULT, TAG_SHARED, TAG_STOPPED, TAG_TASK,
};
use crate::transport::Transport;
use crate::{ClusterError, Config};
use corepool::{Error, Pinning, Pool, RawTask, Result, SharedArray, Wire};
use crossbeam_channel::{Receiver, Sender};
use mpi::topology::Communicator;
use mpi::traits::*;
use std::collections::{HashMap, VecDeque};
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
/// Units kept in flight per worker of a rank when they are long (their
/// round trip is over [`SHORT_UNIT`]): the next chunk is there when a
/// worker finishes one, and a slow rank holds no more than this many.
const AHEAD_PER_WORKER: usize = 3;
/// Units kept in flight per worker of a rank when they are short: enough
/// to cover the network's round trip, which then dominates.
const AHEAD_SHORT: usize = 32;
/// A unit whose round trip (dispatch to result, smoothed) is under this
/// is short.
const SHORT_UNIT: Duration = Duration::from_micros(500);

/// The MPI thread's body. Reports through `started` and returns when the
/// rank is done (its universe dropped: MPI finalized).
pub(crate) fn run(
    config: Config,
    commands: Receiver<Command>,
    to_self: Sender<Command>,
    started: std::sync::mpsc::Sender<std::result::Result<Started, ClusterError>>,
) -> std::result::Result<(), ClusterError> {
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
            let mut transport = Transport::new(world);
            if rank == 0 {
                let _ = started.send(Ok(Started::Root {
                    workers: workers.clone(),
                    max_task_bytes,
                    threading,
                }));
                let mut root = Dispatcher::new(pool, workers, to_self);
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    root.run(&mut transport, &commands)
                }));
                end_job_if_panicked(ran, &transport);
            } else {
                let _ = started.send(Ok(Started::Serving));
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    serve(pool, &mut transport, &commands, to_self)
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
        Pool::builder()
            .workers(want)
            .pinning(Pinning::Cpus(share))
            .ring_bytes(config.ring_bytes)
            .retries(config.retries)
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
        return Err(ClusterError::Mpi("no rank has a worker".into()));
    }
    Ok((pool, workers, max_task_bytes))
}

/// Sleeps or spins between looks, by how long the thread has been idle.
struct Idle {
    last_event: Instant,
    sleep: Duration,
}

impl Idle {
    fn new() -> Self {
        Self {
            last_event: Instant::now(),
            sleep: SLEEP_MIN,
        }
    }

    fn event(&mut self) {
        self.last_event = Instant::now();
        self.sleep = SLEEP_MIN;
    }

    /// Waits a little for a command; returns it if one came.
    fn wait(&mut self, commands: &Receiver<Command>) -> Option<Command> {
        if self.last_event.elapsed() < SPIN {
            std::thread::yield_now();
            return None;
        }
        let got = commands.recv_timeout(self.sleep);
        self.sleep = (self.sleep * 2).min(SLEEP_MAX);
        // A timeout, or no sender left (the cluster is going away): look again.
        got.ok()
    }
}

/// Runs `done` without letting a panic in the user's callback or decoder
/// take the MPI thread down (the panic hook has printed it).
fn deliver(done: DoneFn, result: Result<Vec<u8>>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(result)));
}

/// Submits `bytes` to the local pool; its outcome comes back as a command.
fn run_locally(
    pool: &Pool,
    task: RawTask,
    unit: u64,
    bytes: Vec<u8>,
    to_self: &Sender<Command>,
) -> Result<()> {
    let tx = to_self.clone();
    pool.submit_raw(task, bytes, move |result| {
        let _ = tx.send(Command::LocalDone { unit, result });
    })
}

/// A broadcast whose handles are being collected: one per rank, how many
/// are still missing, and who waits for them.
type Collecting = (
    Vec<Vec<u8>>,
    usize,
    std::sync::mpsc::Sender<Result<Vec<Vec<u8>>>>,
);

/// Rank 0's dispatcher.
struct Dispatcher {
    pool: Option<Pool>,
    to_self: Sender<Command>,
    /// Units in flight per rank, and the most each may hold.
    in_flight: Vec<usize>,
    limit: Vec<usize>,
    workers: Vec<usize>,
    /// Each rank's smoothed unit round trip, in nanoseconds.
    round_trip: Vec<f64>,
    waiting: VecDeque<(u64, Unit)>,
    running: HashMap<u64, (usize, Instant, DoneFn)>,
    next_unit: u64,
    next_broadcast: u64,
    /// Broadcasts whose handles are being collected.
    collecting: HashMap<u64, Collecting>,
}

impl Dispatcher {
    fn new(pool: Option<Pool>, workers: Vec<usize>, to_self: Sender<Command>) -> Self {
        Self {
            pool,
            to_self,
            in_flight: vec![0; workers.len()],
            limit: workers.iter().map(|w| w * AHEAD_PER_WORKER).collect(),
            round_trip: vec![f64::INFINITY; workers.len()],
            workers,
            waiting: VecDeque::new(),
            running: HashMap::new(),
            next_unit: 0,
            next_broadcast: 0,
            collecting: HashMap::new(),
        }
    }

    fn run(&mut self, transport: &mut Transport, commands: &Receiver<Command>) {
        let mut idle = Idle::new();
        let mut pending: Option<Command> = None;
        loop {
            let mut busy = false;
            while let Some(command) = pending.take().or_else(|| commands.try_recv().ok()) {
                busy = true;
                if !self.command(command, transport) {
                    self.shut_down(transport, commands);
                    return;
                }
            }
            while let Some((from, tag, bytes)) = transport.receive() {
                busy = true;
                self.message(from as usize, tag, bytes);
            }
            busy |= self.dispatch(transport);
            busy |= transport.progress();
            if busy {
                idle.event();
            } else {
                pending = idle.wait(commands);
            }
        }
    }

    /// Handles one command; `false` for shutdown.
    fn command(&mut self, command: Command, transport: &mut Transport) -> bool {
        match command {
            Command::Submit(unit) => {
                self.waiting.push_back((self.next_unit, unit));
                self.next_unit += 1;
            }
            Command::LocalDone { unit, result } => self.finished(0, unit, result),
            Command::Broadcast { mut bytes, reply } => {
                let id = self.next_broadcast;
                self.next_broadcast += 1;
                let ranks = self.limit.len();
                for to in 1..ranks {
                    let control = Control::Broadcast {
                        id,
                        bytes: bytes.len() as u64,
                    };
                    transport.send(to as i32, TAG_CONTROL, control.to_bytes());
                }
                transport
                    .world
                    .process_at_rank(0)
                    .broadcast_into(&mut bytes[..]);
                if ranks == 1 {
                    let _ = reply.send(Ok(vec![Vec::new()]));
                } else {
                    self.collecting
                        .insert(id, (vec![Vec::new(); ranks], ranks - 1, reply));
                }
            }
            Command::Floor {
                peer,
                control,
                reply,
            } => {
                if peer == 0 || peer >= self.limit.len() {
                    let _ = reply.send(Err(Error::InvalidConfig {
                        what: format!("rank {peer} is not a serving rank of this job"),
                    }));
                    return true;
                }
                transport.send(peer as i32, TAG_CONTROL, control.to_bytes());
                let took = floor(transport, peer as i32, &control, true);
                let _ = reply.send(Ok(took));
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn message(&mut self, from: usize, tag: i32, bytes: Vec<u8>) {
        match tag {
            TAG_RESULT => match proto::open_result(bytes) {
                Ok((unit, result)) => self.finished(from, unit, result),
                Err(e) => {
                    eprintln!("corepool-mpi: rank 0: a malformed result from rank {from}: {e}")
                }
            },
            TAG_SHARED => {
                let parsed = (bytes.len() >= 8).then(|| {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&bytes[..8]);
                    (u64::from_le_bytes(id), bytes[8..].to_vec())
                });
                let Some((id, handle)) = parsed else { return };
                let Some(entry) = self.collecting.get_mut(&id) else {
                    return;
                };
                if let Some(slot) = entry.0.get_mut(from) {
                    *slot = handle;
                }
                entry.1 = entry.1.saturating_sub(1);
                if entry.1 == 0 {
                    if let Some((handles, _, reply)) = self.collecting.remove(&id) {
                        let missing: Vec<usize> = (1..handles.len())
                            .filter(|&r| handles[r].is_empty())
                            .collect();
                        let result = if missing.is_empty() {
                            Ok(handles)
                        } else {
                            Err(Error::SharedMemory {
                                op: "a rank's copy of a broadcast array",
                                source: std::io::Error::other(format!("ranks {missing:?} could not make their copy (their stderr says why)")),
                            })
                        };
                        let _ = reply.send(result);
                    }
                }
            }
            other => {
                eprintln!("corepool-mpi: rank 0: unexpected message tag {other} from rank {from}")
            }
        }
    }

    fn finished(&mut self, rank: usize, unit: u64, result: Result<Vec<u8>>) {
        if let Some((ran_on, sent, done)) = self.running.remove(&unit) {
            if ran_on == rank {
                self.in_flight[rank] -= 1;
                self.learn(rank, sent.elapsed());
                deliver(done, result);
            } else {
                eprintln!(
                    "corepool-mpi: rank 0: rank {rank} answered unit {unit} of rank {ran_on}"
                );
                self.running.insert(unit, (ran_on, sent, done));
            }
        }
    }

    /// Folds a unit's round trip into the rank's estimate, and sizes its
    /// window by it: deep for short units (the network's round trip is
    /// then what limits), shallow for long ones (dynamic balance).
    fn learn(&mut self, rank: usize, took: Duration) {
        let took = took.as_nanos() as f64;
        let estimate = &mut self.round_trip[rank];
        *estimate = if estimate.is_finite() {
            0.8 * *estimate + 0.2 * took
        } else {
            took
        };
        let ahead = if *estimate < SHORT_UNIT.as_nanos() as f64 {
            AHEAD_SHORT
        } else {
            AHEAD_PER_WORKER
        };
        self.limit[rank] = self.workers[rank] * ahead;
    }

    /// The rank with the most room, relative to its size; `None` if all are full.
    fn pick(&self) -> Option<usize> {
        (0..self.limit.len())
            .filter(|&r| self.in_flight[r] < self.limit[r])
            .min_by_key(|&r| (self.in_flight[r] * 1024) / self.limit[r])
    }

    /// Sends waiting units to ranks with room; returns whether any went.
    fn dispatch(&mut self, transport: &mut Transport) -> bool {
        let mut any = false;
        while let Some((_, unit)) = self.waiting.front() {
            let rank = match unit.target {
                Some(r) => r,
                None => match self.pick() {
                    Some(r) => r,
                    None => break,
                },
            };
            let Some((id, unit)) = self.waiting.pop_front() else {
                break;
            };
            any = true;
            let Unit {
                task, encode, done, ..
            } = unit;
            let bytes = match encoding_for(rank, encode) {
                Ok(b) => b,
                Err(e) => {
                    deliver(done, Err(e));
                    continue;
                }
            };
            if rank == 0 {
                let Some(pool) = &self.pool else {
                    deliver(done, Err(Error::PoolClosed));
                    continue;
                };
                if let Err(e) = run_locally(pool, task, id, bytes, &self.to_self) {
                    deliver(done, Err(e));
                    continue;
                }
            } else {
                transport.send(
                    rank as i32,
                    TAG_TASK,
                    proto::seal_task(bytes, id, task.to_bits()),
                );
            }
            self.in_flight[rank] += 1;
            self.running.insert(id, (rank, Instant::now(), done));
        }
        any
    }

    /// Cancels what is left, stops every rank, and waits until each has
    /// said it sends nothing more.
    fn shut_down(&mut self, transport: &mut Transport, commands: &Receiver<Command>) {
        for (_, unit) in self.waiting.drain(..) {
            deliver(unit.done, Err(Error::Cancelled));
        }
        let ranks = self.limit.len();
        for to in 1..ranks {
            transport.send(to as i32, TAG_CONTROL, Control::Shutdown.to_bytes());
        }
        let mut stopped = vec![false; ranks];
        stopped[0] = true;
        let mut idle = Idle::new();
        while !stopped.iter().all(|&s| s) {
            let mut busy = transport.progress();
            while let Some((from, tag, bytes)) = transport.receive() {
                busy = true;
                match tag {
                    TAG_STOPPED => stopped[from as usize] = true,
                    _ => self.message(from as usize, tag, bytes),
                }
            }
            if busy {
                idle.event();
            } else if let Some(Command::LocalDone { unit, result }) = idle.wait(commands) {
                self.finished(0, unit, result);
            }
        }
        if let Some(pool) = self.pool.take() {
            pool.terminate();
            drop(pool);
        }
        while let Ok(command) = commands.try_recv() {
            if let Command::LocalDone { unit, result } = command {
                self.finished(0, unit, result);
            }
        }
        for (_, (_, _, done)) in self.running.drain() {
            deliver(done, Err(Error::Cancelled));
        }
        for (_, (_, _, reply)) in self.collecting.drain() {
            let _ = reply.send(Err(Error::Cancelled));
        }
        transport.flush();
    }
}

/// A serving rank's loop: run what rank 0 sends, answer, until shutdown.
fn serve(
    pool: Option<Pool>,
    transport: &mut Transport,
    commands: &Receiver<Command>,
    to_self: Sender<Command>,
) {
    let rank = transport.world.rank();
    // Broadcast copies live until the job ends.
    let mut copies: Vec<SharedArray<u8>> = Vec::new();
    let mut idle = Idle::new();
    let mut pending: Option<Command> = None;
    loop {
        let mut busy = false;
        while let Some(command) = pending.take().or_else(|| commands.try_recv().ok()) {
            busy = true;
            if let Command::LocalDone { unit, result } = command {
                transport.send(0, TAG_RESULT, proto::seal_result(unit, result, rank));
            }
        }
        while let Some((from, tag, bytes)) = transport.receive() {
            busy = true;
            if from != 0 {
                eprintln!("corepool-mpi: rank {rank}: ignoring a message from rank {from}");
                continue;
            }
            match tag {
                TAG_TASK => match proto::open_task(bytes) {
                    Ok((unit, bits, arg)) => {
                        // SAFETY: the bits come from `RawTask::to_bits` on
                        // rank 0 (the only rank that sends tasks), and every
                        // rank checked at start that it runs the very same
                        // executable (content hash), so they name the same
                        // trampoline here.
                        let task = unsafe { RawTask::from_bits(bits) };
                        let submitted = match &pool {
                            Some(pool) => run_locally(pool, task, unit, arg, &to_self),
                            None => Err(Error::PoolClosed),
                        };
                        if let Err(e) = submitted {
                            transport.send(0, TAG_RESULT, proto::seal_result(unit, Err(e), rank));
                        }
                    }
                    Err(e) => eprintln!("corepool-mpi: rank {rank}: a malformed task: {e}"),
                },
                TAG_CONTROL => match Control::parse(&bytes) {
                    Ok(Control::Shutdown) => {
                        if let Some(pool) = &pool {
                            pool.terminate();
                        }
                        transport.send(0, TAG_STOPPED, Vec::new());
                        transport.flush();
                        drop(pool);
                        return;
                    }
                    Ok(Control::Broadcast { id, bytes }) => {
                        let mut answer = id.to_le_bytes().to_vec();
                        match usize::try_from(bytes) {
                            Ok(len) => {
                                let mut data = vec![0u8; len];
                                transport
                                    .world
                                    .process_at_rank(0)
                                    .broadcast_into(&mut data[..]);
                                match SharedArray::<u8>::from_slice(&data) {
                                    Ok(array) => {
                                        let mut handle = corepool::Encoder::new();
                                        array.encode(&mut handle);
                                        answer.extend_from_slice(&handle);
                                        copies.push(array);
                                    }
                                    Err(e) => eprintln!("corepool-mpi: rank {rank}: no room for a broadcast copy of {len} bytes: {e}"),
                                }
                            }
                            Err(_) => {
                                eprintln!("corepool-mpi: rank {rank}: a broadcast of {bytes} bytes does not fit this machine");
                                transport.world.abort(1);
                            }
                        }
                        transport.send(0, TAG_SHARED, answer);
                    }
                    Ok(control @ (Control::PingPong { .. } | Control::Stream { .. })) => {
                        let _ = floor(transport, 0, &control, false);
                    }
                    Err(e) => {
                        eprintln!("corepool-mpi: rank {rank}: a malformed control frame: {e}")
                    }
                },
                other => eprintln!("corepool-mpi: rank {rank}: unexpected message tag {other}"),
            }
        }
        busy |= transport.progress();
        if busy {
            idle.event();
        } else {
            pending = idle.wait(commands);
        }
    }
}

/// The bare MPI measurements, with plain blocking sends and receives of
/// byte buffers on [`TAG_FLOOR`]: what rsmpi alone does, nothing of
/// corepool's in between. `leader` is rank 0's side; it returns the median
/// round trip of a ping-pong, the whole time of a stream.
fn floor(transport: &mut Transport, peer: i32, control: &Control, leader: bool) -> Duration {
    let (bytes, rounds, ping_pong) = match *control {
        Control::PingPong { bytes, rounds } => (bytes, rounds, true),
        Control::Stream { bytes, rounds } => (bytes, rounds, false),
        _ => return Duration::ZERO,
    };
    let Ok(len) = usize::try_from(bytes) else {
        return Duration::ZERO;
    };
    let mut buf = vec![1u8; len];
    let other = transport.world.process_at_rank(peer);
    let started = Instant::now();
    let mut trips = Vec::new();
    for _ in 0..rounds {
        match (ping_pong, leader) {
            (true, true) => {
                let trip = Instant::now();
                other.send_with_tag(&buf[..], TAG_FLOOR);
                other.receive_into_with_tag(&mut buf[..], TAG_FLOOR);
                trips.push(trip.elapsed());
            }
            (true, false) => {
                other.receive_into_with_tag(&mut buf[..], TAG_FLOOR);
                other.send_with_tag(&buf[..], TAG_FLOOR);
            }
            (false, true) => other.send_with_tag(&buf[..], TAG_FLOOR),
            (false, false) => {
                other.receive_into_with_tag(&mut buf[..], TAG_FLOOR);
            }
        }
    }
    if !ping_pong {
        let mut ack = [0u8; 1];
        if leader {
            other.receive_into_with_tag(&mut ack[..], TAG_FLOOR);
        } else {
            other.send_with_tag(&ack[..], TAG_FLOOR);
        }
    }
    if trips.is_empty() {
        return started.elapsed();
    }
    trips.sort_unstable();
    trips[trips.len() / 2]
}
