//! Rank 0's dispatcher, run by its MPI thread: units go to the rank with
//! the most room in its window, results come back to their slots, and at
//! the end every rank is stopped.

use crate::broadcast::encoding_for;
use crate::comm::{
    deliver, run_locally, Command, DoneFn, Idle, Unit, AHEAD_PER_WORKER, AHEAD_SHORT, SHORT_UNIT,
};
use crate::proto::{self, Control, TAG_CONTROL, TAG_RESULT, TAG_SHARED, TAG_STOPPED, TAG_TASK};
use crate::serve::floor;
use crate::transport::Transport;
use corepool::{Collector, Error, Pool, Result};
use crossbeam_channel::{Receiver, Sender};
use mpi::traits::*;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A broadcast whose handles are being collected: one per rank, how many
/// are still missing, and who waits for them.
type Collecting = (
    Vec<Vec<u8>>,
    usize,
    std::sync::mpsc::Sender<Result<Vec<Vec<u8>>>>,
);

/// Rank 0's dispatcher.
pub(crate) struct Dispatcher {
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
    pub(crate) fn new(pool: Option<Pool>, workers: Vec<usize>, to_self: Sender<Command>) -> Self {
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

    pub(crate) fn run(&mut self, transport: &mut Transport, commands: &Receiver<Command>) {
        let mut idle = Idle::new();
        let mut pending: Option<Command> = None;
        // Out of `self` while the loop runs, so that a collector can borrow
        // it; back in for the shutdown.
        let pool = self.pool.take();
        // As on a serving rank: while the thread spins with local units in
        // flight, it collects their results itself (see `serve`).
        let mut collector: Option<Collector<'_>> = None;
        loop {
            let mut busy = false;
            if let Some(collector) = &collector {
                busy |= collector.collect();
            }
            while let Some(command) = pending.take().or_else(|| commands.try_recv().ok()) {
                busy = true;
                if matches!(command, Command::Broadcast { .. } | Command::Floor { .. }) {
                    // Blocking MPI calls follow: the driver collects
                    // meanwhile.
                    collector = None;
                }
                if !self.command(command, transport) {
                    drop(collector);
                    self.pool = pool;
                    self.shut_down(transport, commands);
                    return;
                }
            }
            while let Some((from, tag, bytes)) = transport.receive() {
                busy = true;
                self.message(from as usize, tag, bytes);
            }
            busy |= self.dispatch(transport, pool.as_ref());
            busy |= transport.progress();
            if busy {
                idle.event();
            }
            if !idle.spinning() {
                // About to sleep: the pool's driver collects from now on.
                collector = None;
            } else if self.in_flight[0] > 0 && collector.is_none() {
                // Kept while the thread spins (see `serve`).
                collector = pool.as_ref().map(Pool::collector);
            }
            if !busy {
                if !idle.spinning() {
                    idle.expect_within(self.expected_round_trip());
                }
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
                let piece = transport.piece();
                for to in 1..ranks {
                    let control = Control::Broadcast {
                        id,
                        bytes: bytes.len() as u64,
                        piece: piece as u64,
                    };
                    transport.send(to as i32, TAG_CONTROL, control.to_bytes());
                }
                // One `MPI_Bcast` per piece (an MPI count is an `int`: rsmpi
                // panics past 2 GiB), every rank alike. An empty array has
                // none (and Open MPI takes a zero-length `MPI_Bcast` of a
                // dangling buffer for a bad argument, fatal to the job).
                for part in bytes.chunks_mut(piece) {
                    transport.world.process_at_rank(0).broadcast_into(part);
                }
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
            TAG_RESULT => match proto::open_result(bytes, from as u32) {
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
                eprintln!("corepool-mpi: rank 0: unexpected message tag {other} from rank {from}, ignored (do not call MPI yourself beside corepool-mpi: its MPI thread takes every message)")
            }
        }
    }

    fn finished(&mut self, rank: usize, unit: u64, result: Result<Vec<u8>>) {
        // A remote rank's errors arrive named by it (`proto::error_to_bytes`);
        // rank 0's own pool's come unlabelled (`comm::local_done`).
        let result = if rank == 0 {
            result.map_err(proto::on_rank_zero)
        } else {
            result
        };
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

    /// The shortest smoothed round trip of the serving ranks with units in
    /// flight (whose results come as MPI messages, seen only when the
    /// thread looks); `None` when none has.
    fn expected_round_trip(&self) -> Option<Duration> {
        (1..self.in_flight.len())
            .filter(|&r| self.in_flight[r] > 0)
            .map(|r| self.round_trip[r])
            .filter(|t| t.is_finite())
            .min_by(f64::total_cmp)
            .map(|nanos| Duration::from_nanos(nanos as u64))
    }

    /// The rank with the most room, relative to its size; `None` if all are full.
    fn pick(&self) -> Option<usize> {
        (0..self.limit.len())
            .filter(|&r| self.in_flight[r] < self.limit[r])
            .min_by_key(|&r| (self.in_flight[r] * 1024) / self.limit[r])
    }

    /// Sends waiting units to ranks with room; returns whether any went.
    fn dispatch(&mut self, transport: &mut Transport, pool: Option<&Pool>) -> bool {
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
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    deliver(done, Err(e));
                    continue;
                }
                Err(payload) => {
                    // The encoders catch their `Wire` code's panics
                    // (`guard::encode_caught`, naming the type): this is
                    // the backstop for the rest of the closure.
                    let e = Error::Encode {
                        type_name: "a task's argument",
                        reason: format!(
                            "encoding it panicked: {}",
                            crate::guard::panic_text(&*payload)
                        ),
                    };
                    deliver(done, Err(e));
                    continue;
                }
            };
            if rank == 0 {
                let Some(pool) = pool else {
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
        let grace = transport.grace();
        // The grace runs from the last message or piece that came or went,
        // not from here: a long transfer that is still moving (the pieces
        // of a large task to a rank that then answers) is waited out.
        let since = Instant::now();
        while !stopped.iter().all(|&s| s) {
            if transport.stalled(since) {
                // A rank that neither answers nor died (a dead one ends the
                // job through the launcher): finalizing would wait for it
                // for ever, so end the job instead.
                let silent: Vec<usize> = (0..ranks).filter(|&r| !stopped[r]).collect();
                eprintln!("corepool-mpi: rank 0: ranks {silent:?} did not stop, and nothing came or went for {grace:?} after the shutdown (`Config::shutdown_grace`); ending the job with MPI_Abort: rank 0's program does not go on past dropping the cluster");
                transport.world.abort(1);
            }
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
