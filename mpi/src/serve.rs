//! A serving rank's loop, run by its MPI thread: tasks from rank 0 go to
//! the local pool, results go back; and the bare MPI measurements.

use crate::comm::{local_done, run_locally, Command, Idle};
use crate::proto::{
    self, Control, TAG_CONTROL, TAG_FLOOR, TAG_RESULT, TAG_SHARED, TAG_STOPPED, TAG_TASK,
};
use crate::transport::{unwritten, Transport, PIECE_LIMIT, PIECE_MIN};
use corepool::{Collector, Error, Pool, RawArgument, RawTask, SharedArray, Wire};
use crossbeam_channel::{Receiver, Sender};
use mpi::traits::*;
use std::time::{Duration, Instant};

/// Has this process's allocator keep the memory of large buffers for the
/// next ones, rather than map fresh pages for each (and fault every one of
/// them in: about as costly as copying the bytes, measured) and unmap them
/// when freed. A task's argument that does not go into the pool's argument
/// arena (smaller than [`IN_ARENA_MIN`], or the arena full) is received
/// into a buffer of its own that lives until the task ends, so
/// large arguments then allocate and free a few MiB each.
///
/// Only on a serving rank: its process runs nothing but corepool-mpi from
/// `Cluster::init` on (rank 0's is the user's program, whose allocator is
/// the user's business), so the cost, up to the trim threshold of free
/// memory kept, is ours to choose. The pool's workers are processes of
/// their own and are not affected.
pub(crate) fn keep_large_buffers() {
    #[cfg(target_env = "gnu")]
    {
        // glibc's largest mmap threshold on 64-bit: allocations below it
        // come from the arenas, whose freed memory is reused.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        // Free memory at the top of an arena kept rather than returned.
        const TRIM_THRESHOLD: libc::c_int = 256 << 20;
        // SAFETY: mallopt only sets glibc's allocator parameters (globals
        // read under its own locks); this is the only caller in the
        // process, and a refused setting (0 returned) leaves glibc's
        // defaults, which are correct, only slower.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// A serving rank's loop: run what rank 0 sends, answer, until shutdown.
pub(crate) fn serve(
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
    // Tasks given to the local pool and not answered yet.
    let mut outstanding = 0usize;
    // While the thread spins with tasks outstanding, it collects their
    // results itself (the pool's driver stays asleep): a result goes from
    // the worker's ring to MPI on this thread, with no hand-over.
    let mut collector: Option<Collector<'_>> = None;
    loop {
        let mut busy = false;
        if let Some(collector) = &collector {
            busy |= collector.collect();
        }
        while let Some(command) = pending.take().or_else(|| commands.try_recv().ok()) {
            busy = true;
            if let Command::LocalDone { unit, result } = command {
                outstanding = outstanding.saturating_sub(1);
                transport.send(0, TAG_RESULT, proto::seal_result(unit, result, rank));
            }
        }
        while let Some(incoming) = transport.probe() {
            busy = true;
            // A large task goes straight into the pool's argument arena,
            // where the worker decodes it: no copy into its ring.
            let in_arena = (incoming.source() == 0
                && incoming.tag() == TAG_TASK
                && incoming.len() >= IN_ARENA_MIN)
                .then(|| pool.as_ref()?.raw_argument(incoming.len()))
                .flatten();
            let incoming = match in_arena {
                Some(mut arg) => match incoming.receive_into(&mut arg) {
                    Ok(got) => {
                        match arg.get(..got).map(proto::read_task_trailer) {
                            Some(Ok((unit, bits, len))) => {
                                let arg = Argument::InArena(arg, len);
                                if start_task(
                                    &pool,
                                    &mut collector,
                                    transport,
                                    &to_self,
                                    unit,
                                    bits,
                                    arg,
                                ) {
                                    outstanding += 1;
                                }
                            }
                            _ => eprintln!(
                                "corepool-mpi: rank {rank}: a malformed task of {got} bytes"
                            ),
                        }
                        continue;
                    }
                    // The block was too short (never, by `raw_argument`'s
                    // promise): received into a buffer, it goes the usual way.
                    Err(received) => received,
                },
                None => incoming,
            };
            let (from, tag, bytes) = incoming.receive_vec();
            if from != 0 {
                eprintln!("corepool-mpi: rank {rank}: ignoring a message from rank {from}");
                continue;
            }
            match tag {
                TAG_TASK => match proto::open_task(bytes) {
                    Ok((unit, bits, arg)) => {
                        let arg = Argument::Bytes(arg);
                        if start_task(&pool, &mut collector, transport, &to_self, unit, bits, arg) {
                            outstanding += 1;
                        }
                    }
                    Err(e) => eprintln!("corepool-mpi: rank {rank}: a malformed task: {e}"),
                },
                TAG_CONTROL => match Control::parse(&bytes) {
                    Ok(Control::Shutdown) => {
                        drop(collector);
                        if let Some(pool) = &pool {
                            pool.terminate();
                        }
                        transport.send(0, TAG_STOPPED, Vec::new());
                        transport.flush();
                        drop(pool);
                        return;
                    }
                    Ok(Control::Broadcast { id, bytes, piece }) => {
                        // Blocking MPI calls follow: the driver collects
                        // meanwhile.
                        collector = None;
                        let mut answer = id.to_le_bytes().to_vec();
                        let piece = usize::try_from(piece)
                            .ok()
                            .filter(|p| (PIECE_MIN..=PIECE_LIMIT).contains(p));
                        let mut data = Vec::new();
                        let room = usize::try_from(bytes)
                            .ok()
                            .filter(|&len| data.try_reserve_exact(len).is_ok());
                        let (Some(len), Some(piece)) = (room, piece) else {
                            // Rank 0 waits in `MPI_Bcast`: end the job.
                            eprintln!("corepool-mpi: rank {rank}: a broadcast of {bytes} bytes (in pieces of {piece:?}) does not fit this machine; ending the job");
                            transport.world.abort(1);
                        };
                        // Piece by piece, as rank 0 (an MPI count is an
                        // `int`); none for an empty array. Straight into
                        // the reserved capacity: no zero-filling pass.
                        let spare = &mut data.spare_capacity_mut()[..len];
                        for part in unwritten(spare).chunks_mut(piece) {
                            transport.world.process_at_rank(0).broadcast_into(part);
                        }
                        // SAFETY: the broadcasts wrote every byte of
                        // `..len` (the parts cover it; a broadcast fills
                        // its whole buffer, or MPI fails the job), within
                        // the capacity reserved for `len`.
                        unsafe { data.set_len(len) };
                        match SharedArray::<u8>::from_slice(&data) {
                            Ok(array) => {
                                let mut handle = corepool::Encoder::new();
                                array.encode(&mut handle);
                                answer.extend_from_slice(&handle);
                                copies.push(array);
                            }
                            Err(e) => eprintln!("corepool-mpi: rank {rank}: no room for a broadcast copy of {len} bytes: {e}"),
                        }
                        transport.send(0, TAG_SHARED, answer);
                    }
                    Ok(control @ (Control::PingPong { .. } | Control::Stream { .. })) => {
                        collector = None;
                        let _ = floor(transport, 0, &control, false);
                    }
                    Err(e) => {
                        eprintln!("corepool-mpi: rank {rank}: a malformed control frame: {e}")
                    }
                },
                other => eprintln!("corepool-mpi: rank {rank}: unexpected message tag {other}, ignored (do not call MPI yourself beside corepool-mpi: its MPI thread takes every message)"),
            }
        }
        busy |= transport.progress();
        if busy {
            idle.event();
        }
        if !idle.spinning() {
            // About to sleep: the driver collects from now on (dropping the
            // collector wakes it if results are due).
            collector = None;
        } else if outstanding > 0 && collector.is_none() {
            // Kept while the thread spins, even when nothing is
            // outstanding for a moment: a submission with no collector
            // registered wakes the driver (a system call and one more
            // thread spinning on two CPUs).
            collector = pool.as_ref().map(Pool::collector);
        }
        if !busy {
            pending = idle.wait(commands);
        }
    }
}

/// Task frames at least this large are received into the pool's argument
/// arena (when it has room), smaller ones into a buffer whose bytes are
/// then copied into a worker's ring. Measured (the bench's bandwidth row at
/// other sizes, both ways alternately, three pairs each): the arena faster
/// in every pair from 64 KiB up (1.3–2.1x at 64 KiB), mixed at 32 KiB.
const IN_ARENA_MIN: usize = 64 << 10;

/// A task's argument bytes, as received.
enum Argument<'pool> {
    /// In a buffer of their own.
    Bytes(Vec<u8>),
    /// The first `len` bytes of a block of the pool's arena (the frame's
    /// trailer follows them).
    InArena(RawArgument<'pool>, usize),
}

/// Submits unit `unit` (task `bits` on `arg`) to the local pool; returns
/// whether it went (a failure is answered to rank 0 at once).
fn start_task<'pool>(
    pool: &'pool Option<Pool>,
    collector: &mut Option<Collector<'pool>>,
    transport: &mut Transport,
    to_self: &Sender<Command>,
    unit: u64,
    bits: i64,
    arg: Argument<'pool>,
) -> bool {
    // SAFETY: the bits come from `RawTask::to_bits` on rank 0 (the only
    // rank that sends tasks), and every rank checked at start that it runs
    // the very same executable (content hash), so they name the same
    // trampoline here.
    let task = unsafe { RawTask::from_bits(bits) };
    if collector.is_none() {
        // Registered before the submission, which then leaves the driver
        // asleep.
        *collector = pool.as_ref().map(Pool::collector);
    }
    let submitted = match (pool, arg) {
        (Some(pool), Argument::Bytes(bytes)) => run_locally(pool, task, unit, bytes, to_self),
        (Some(pool), Argument::InArena(arg, len)) => {
            pool.submit_raw_argument(task, arg, len, local_done(unit, to_self))
        }
        (None, _) => Err(Error::PoolClosed),
    };
    match submitted {
        Ok(()) => true,
        Err(e) => {
            let rank = transport.world.rank();
            transport.send(0, TAG_RESULT, proto::seal_result(unit, Err(e), rank));
            false
        }
    }
}

/// The bare MPI measurements, with plain blocking sends and receives of
/// byte buffers on [`TAG_FLOOR`]: what rsmpi alone does, nothing of
/// corepool's in between. `leader` is rank 0's side; it returns the median
/// round trip of a ping-pong, the whole time of a stream.
pub(crate) fn floor(
    transport: &mut Transport,
    peer: i32,
    control: &Control,
    leader: bool,
) -> Duration {
    let (bytes, rounds, ping_pong) = match *control {
        Control::PingPong { bytes, rounds } => (bytes, rounds, true),
        Control::Stream { bytes, rounds } => (bytes, rounds, false),
        _ => return Duration::ZERO,
    };
    // Plain sends of one message each: at most one MPI message's bytes (an
    // `int` count; rank 0 refuses more before asking, see
    // `Cluster::mpi_ping_pong`), the same check on both sides.
    let Some(len) = usize::try_from(bytes).ok().filter(|&l| l <= PIECE_LIMIT) else {
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
