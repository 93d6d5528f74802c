//! The pool worker process: [`crate::init`] recognises it, attaches to its
//! slot and the pool's common segment, and serves tasks until told to stop. It never returns into the user's `main`.

use super::layout::{self, fail, state, Header, Slot};
use crate::child::fingerprint::fingerprint;
use crate::child::panic::{fit_message, install_panic_hook, take_panic_message};
use crate::error::Error;
use crate::shm::park::{self, LeavingFlagWaker, Spinner};
#[cfg(feature = "fault-injection")]
use crate::shm::ring::{stamp_for, HEADER_BYTES};
use crate::shm::ring::{Claimed, Consumer, Producer, RecordHeader, RingError};
use crate::shm::Segment;
use crate::sys;
use crate::wire::task::{self, failure, kind};
use crate::wire::Encoder;
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The environment variable that marks a worker process. Its value is
/// `v1:<slot fd>:<slot index>:<parent pid>[:<header fd>:<common fd>[:<parent
/// description>]]`: the slot segment (this worker's control block and
/// rings), the sealed memfd holding the header, the identities of the
/// pool's segments and the initializer's argument (`layout::write_pristine`),
/// and the common segment (the doorbell); the description as
/// `crate::identity::describe_current` writes it. A token without the
/// descriptors after the pid parses (a stray variable is then refused for
/// what it is) but starts no worker.
pub(crate) const WORKER_ENV: &str = "COREPOOL_WORKER";

/// Exit status of a worker that failed to attach (see the slot's `fail_code`).
pub(crate) const EXIT_START_FAILED: i32 = 101;
/// Exit status of a worker that saw a broken ring from the parent.
pub(crate) const EXIT_PROTOCOL: i32 = 102;

/// In a process started as a pool worker (it has [`WORKER_ENV`]): serve
/// until told to stop and return the exit status. `None` elsewhere.
pub(crate) fn enter() -> Option<i32> {
    let token = std::env::var_os(WORKER_ENV)?;
    // Removed at once, so that processes the worker's tasks start are not
    // mistaken for workers.
    std::env::remove_var(WORKER_ENV);
    if sys::is_secure_execution() {
        eprintln!("corepool: refusing worker mode in a setuid, setgid or setcap program");
        return Some(EXIT_START_FAILED);
    }
    // A worker ends when its parent ends it, not at a SIGTERM sent to the
    // whole program (docs/processes.md, "Signals"). Should this fail, the
    // worker serves all the same.
    let _ = sys::inherit::survive_termination_requests();
    Some(match token.to_str().and_then(parse_token) {
        Some(t) => serve(t),
        None => {
            eprintln!(
                "corepool: malformed {WORKER_ENV} token; this process is not a usable worker"
            );
            EXIT_START_FAILED
        }
    })
}

/// True in a process that was started as a worker but did not call [`crate::init`]:
/// building a pool there would start workers recursively.
pub(crate) fn is_uninitialised_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    fd: i32,
    index: usize,
    parent: i32,
    /// The sealed header's descriptor and the common segment's: numbers
    /// other than `fd`'s and each other's.
    more_fds: Option<(i32, i32)>,
    /// Who the parent is, for `crate::parent_process`.
    parent_description: Option<&'a str>,
}

fn parse_token(s: &str) -> Option<Token<'_>> {
    // The description comes last and may itself hold ':'.
    let mut parts = s.splitn(7, ':');
    if parts.next()? != "v1" {
        return None;
    }
    // A descriptor number is never negative (one would reach
    // `OwnedFd::from_raw_fd`, which asserts it is not -1).
    let fd: i32 = parts.next()?.parse().ok().filter(|fd: &i32| *fd >= 0)?;
    let index = parts.next()?.parse().ok()?;
    let parent = parts.next()?.parse().ok()?;
    let more_fds = match parts.next() {
        None => None,
        Some(header) => {
            let header: i32 = header.parse().ok()?;
            let common: i32 = parts.next()?.parse().ok()?;
            let distinct = header != fd && common != fd && header != common;
            if header < 0 || common < 0 || !distinct {
                return None;
            }
            Some((header, common))
        }
    };
    let parent_description = match parts.next() {
        None => None,
        Some(d) => {
            crate::identity::parse_description(d)?;
            Some(d)
        }
    };
    Some(Token {
        fd,
        index,
        parent,
        more_fds,
        parent_description,
    })
}

/// The token a parent passes to worker `index`: its slot segment's
/// descriptor `fd`, the sealed header's, and the common segment's.
pub(crate) fn make_token(fd: i32, index: usize, parent: i32, header: i32, common: i32) -> String {
    let me = crate::identity::describe_current();
    format!("v1:{fd}:{index}:{parent}:{header}:{common}:{me}")
}

/// This worker's slot, for [`sabotage`] (a test hook).
#[cfg(feature = "fault-injection")]
static OWN_SLOT: std::sync::OnceLock<Slot> = std::sync::OnceLock::new();
/// The address and length of the pool's common segment and of this
/// worker's slot segment, for [`Sabotage::Scribble`].
#[cfg(feature = "fault-injection")]
static OWN_SEGMENTS: std::sync::OnceLock<[(usize, usize); 2]> = std::sync::OnceLock::new();

/// How a deliberately misbehaving worker breaks the protocol (tests only).
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug)]
pub enum Sabotage {
    /// Publish a result record whose stamp names no position of it (since
    /// protocol version 5 the parent reads stamps, not the ring's `tail`).
    StampOutOfRange,
    /// Publish a result record for a task id the worker was never given.
    UnknownTaskId,
    /// Publish a record whose length runs past the end of the ring.
    BadRecordLength,
    /// Write garbage into the result ring's `head` and `tail`, the monitor
    /// words: the parent reads neither, so nothing may come of it (until
    /// protocol version 5 a garbage `head` kept the parent's driver busy).
    GarbageInHead,
    /// Hand the memory this worker maps to the function, which may write
    /// anything into it: the pool's common segment (a copy of the header,
    /// the doorbell) and this worker's slot segment as bytes, and the sizes
    /// of its task and result rings (`testing::worker_memory`).
    Scribble(fn(&[std::sync::atomic::AtomicU8], &[std::sync::atomic::AtomicU8], usize, usize)),
}

/// Makes the calling worker write garbage into its own result ring, to test
/// that the parent survives it. Returns false outside a worker.
#[cfg(feature = "fault-injection")]
pub fn sabotage(how: Sabotage) -> bool {
    let Some(slot) = OWN_SLOT.get() else {
        return false;
    };
    let ring = slot.result_ring();
    // Our own producer writes `tail` on every publish, and it publishes each
    // result at once: where the next record goes, the parent's next look.
    let (_, tail) = ring.positions();
    let forged = |kind, payload_len, id, stamp| {
        let header = RecordHeader {
            stamp,
            kind,
            payload_len,
            id,
            ..Default::default()
        };
        ring.force_record(tail, &header);
    };
    match how {
        Sabotage::StampOutOfRange => {
            forged(kind::OK, 8, 1, stamp_for(tail.wrapping_add(1 << 31)) + 2)
        }
        Sabotage::UnknownTaskId => forged(kind::OK, 8, u64::MAX - 7, stamp_for(tail)),
        Sabotage::BadRecordLength => forged(kind::OK, 1 << 30, 1, stamp_for(tail)),
        Sabotage::GarbageInHead => {
            ring.force_head(tail.wrapping_add(0x1234_5678));
            ring.force_tail(tail.wrapping_sub(0x0bad_cafe));
        }
        Sabotage::Scribble(scribble) => {
            let Some(&[common, own]) = OWN_SEGMENTS.get() else {
                return false;
            };
            // A ring's largest payload is half its bytes less a header.
            let bytes = |max_payload: usize| 2 * (max_payload + HEADER_BYTES);
            let task_ring_bytes = bytes(slot.task_ring().max_payload());
            // SAFETY: whole segments, which stay mapped while the worker
            // serves (its whole life); every byte is accessed through atomics.
            let [common, own] = [common, own].map(|(base, len)| unsafe {
                std::slice::from_raw_parts(base as *const std::sync::atomic::AtomicU8, len)
            });
            scribble(common, own, task_ring_bytes, bytes(ring.max_payload()));
        }
    }
    true
}

/// Set by [`exit_after_next_spill`]: exit right after the next spilled
/// result is published (tests only).
#[cfg(feature = "fault-injection")]
static EXIT_AFTER_SPILL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this worker exit right after it publishes its next spilled result.
#[cfg(feature = "fault-injection")]
pub(crate) fn exit_after_next_spill() {
    EXIT_AFTER_SPILL.store(true, Ordering::Relaxed);
}

/// A start failure before the worker found its slot, so the parent cannot
/// be told: say it on stderr (a stray variable is otherwise a silent 101).
fn stray(why: &str) -> i32 {
    eprintln!(
        "corepool: {WORKER_ENV} is set but {why}; this process is not a pool worker (unset {WORKER_ENV}), exiting with status {EXIT_START_FAILED}"
    );
    EXIT_START_FAILED
}

fn serve(token: Token<'_>) -> i32 {
    // The parent may have died between fork and now, before PDEATHSIG was armed
    // for us to notice: then there is nobody to serve.
    if sys::getppid() != token.parent {
        if sys::process_has_ended(token.parent) {
            // The program ended while we started (a replacement started as
            // it exited): nobody to serve, and nothing is wrong.
            return EXIT_START_FAILED;
        }
        return stray("its parent is not the pool that started it");
    }
    // Who we are, before any task can ask (`crate::current_process`).
    let kind = crate::identity::ProcessKind::PoolWorker { index: token.index };
    crate::identity::record_child(kind, None, token.parent, token.parent_description);
    let Some((header_fd, common_fd)) = token.more_fds else {
        return stray("its token names no pool header");
    };
    // Keep the descriptors away from processes our tasks start.
    for fd in [token.fd, header_fd, common_fd] {
        let _ = sys::set_cloexec(fd);
    }
    // SAFETY: the parent passed these descriptors to us, for us alone; the
    // token's parse made sure the three numbers differ.
    let (header_file, common_file) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(header_fd),
            std::os::fd::OwnedFd::from_raw_fd(common_fd),
        )
    };
    // SAFETY: as above.
    let own = unsafe { Segment::open_raw(token.fd) };
    let (own, common) = match own.and_then(|own| Ok((own, Segment::open(common_file)?))) {
        Ok(segments) => segments,
        Err(e) => {
            // Our parent is the pool that started us (checked above), so
            // this is a limit (`ulimit -v` refusing the mapping, say), not a
            // stray variable: say what failed, not "unset COREPOOL_WORKER"
            // (a user trial under `ulimit -v` read that advice).
            eprintln!(
                "corepool: pool worker {} could not map its pool's shared memory: {e}; exiting with status {EXIT_START_FAILED}",
                token.index
            );
            return EXIT_START_FAILED;
        }
    };
    // From the parent's sealed copy, never the common segment's: a worker
    // may have written anything there. It names the segments that are the
    // pool's: ours must be the slot it names for our index.
    let Ok(layout::Pristine {
        header,
        layout,
        slot: slot_identity,
        init_arg,
    }) = layout::read_pristine(header_file, &common, token.index)
    else {
        return stray("its shared memory holds no pool");
    };
    if layout::FileIdentity::of(&own).ok() != Some(slot_identity) {
        return stray("its slot is not the pool's");
    }
    let Some(slot) = Slot::new(&own, &layout) else {
        return stray("its slot is not in the pool");
    };
    slot.pid().store(std::process::id(), Ordering::Relaxed);
    #[cfg(feature = "fault-injection")]
    let _ = OWN_SLOT.set(slot);
    let doorbell = layout::doorbell(&common);
    #[cfg(feature = "fault-injection")]
    let _ = OWN_SEGMENTS.set([&common, &own].map(|seg| (seg.base() as usize, seg.len())));
    let fail_start = |code: u32| {
        slot.fail_code().store(code, Ordering::Relaxed);
        // Release pairs with the parent's Acquire load of `state`.
        slot.state().store(state::FAILED, Ordering::Release);
        park::wake_leaving_flag(doorbell);
        EXIT_START_FAILED
    };
    let own = fingerprint();
    if header.fingerprint != own {
        slot.fail_detail().store(own, Ordering::Relaxed);
        return fail_start(fail::BINARY_MISMATCH);
    }
    install_panic_hook();
    let mut results = Producer::new(slot.result_ring());
    if header.flags & layout::FLAG_INITIALIZER != 0 {
        // SAFETY: same binary (fingerprint checked above); the offset was made
        // by `offset_of` in the parent.
        let init = unsafe { task::from_offset(header.initializer) };
        let outcome = catch_unwind(AssertUnwindSafe(|| init(&init_arg, &mut Encoder::new())));
        if !matches!(outcome, Ok(Ok(()))) {
            let message = match outcome {
                Ok(Err(e)) => format!("the initializer's argument did not decode: {e}"),
                _ => format!("the initializer panicked: {}", take_panic_message()),
            };
            let rec = RecordHeader {
                kind: kind::PANICKED,
                id: u64::MAX,
                ..Default::default()
            };
            let mut message = message.into_bytes();
            // The parent reads at most 4096 bytes of it.
            fit_message(&mut message, results.memory().max_payload().min(4096));
            let _ = results.write(rec, &message);
            let _ = results.publish();
            return fail_start(fail::INITIALIZER_FAILED);
        }
    }
    // Release pairs with the parent's Acquire load of `state`.
    slot.state().store(state::READY, Ordering::Release);
    park::wake_leaving_flag(doorbell);
    let code = match Server::new(&header, slot, results, doorbell).run() {
        Ok(()) => 0,
        Err(_) => EXIT_PROTOCOL,
    };
    // What our results (or our tasks' puts) sent and nobody opened yet:
    // wait for it, bounded (the parent collects results as they come).
    crate::shm::handle::linger_at_exit(crate::shm::handle::EXIT_LINGER);
    code
}

/// The serving loop's state.
struct Server<'a> {
    slot: Slot,
    tasks: Consumer,
    results: Producer,
    doorbell: &'a std::sync::atomic::AtomicU32,
    /// Rings the doorbell after each batch, without a system call while the
    /// driver has yet to run after this worker's last ring.
    ringer: LeavingFlagWaker,
    max_tasks: u64,
    done: u64,
    /// How many tasks to claim at once: many when tasks are short (fewer ring
    /// operations), one when they are long (so that queued tasks stay
    /// stealable by idle workers).
    batch: usize,
    /// Smoothed nanoseconds per task.
    task_ns: f64,
    /// When the last batch ended, if every claim since found tasks: the next
    /// batch started then, so timing it costs no clock read (about 35 ns on
    /// a VM, on the round trip's critical path when taken before a task).
    went_on_at: Option<Instant>,
}

/// The most memory the worker keeps in its buffers between tasks: a one-off
/// large argument or result does not stay resident.
const BUFFER_KEEP: usize = 1 << 20;

/// Claim batches aim to hold about this much work.
const BATCH_TARGET_NS: f64 = 20_000.0;
const MAX_BATCH: usize = 64;
/// Tasks this long on average are always timed: a clock read is noise next
/// to them.
const ALWAYS_TIME_NS: f64 = 2_000.0;

impl<'a> Server<'a> {
    fn new(
        header: &Header,
        slot: Slot,
        results: Producer,
        doorbell: &'a std::sync::atomic::AtomicU32,
    ) -> Self {
        Self {
            slot,
            tasks: Consumer::new(slot.task_ring()),
            results,
            doorbell,
            ringer: LeavingFlagWaker::default(),
            max_tasks: header.max_tasks_per_child,
            done: 0,
            batch: 1,
            task_ns: BATCH_TARGET_NS,
            went_on_at: None,
        }
    }

    fn run(mut self) -> Result<(), RingError> {
        let mut claimed: Vec<Claimed> = Vec::with_capacity(MAX_BATCH);
        let mut input = Vec::new();
        let mut out = Encoder::new();
        let mut spinner = Spinner::new();
        loop {
            claimed.clear();
            // After a wait, one record: a lone task (a blocking `apply`)
            // starts without first reading the stamp beyond it, a line the
            // parent wrote last (its zero-ahead), which costs a cache miss
            // on the round trip. A burst that arrived meanwhile is claimed
            // in full on the next turn, timed from this one.
            let mut limit = if self.went_on_at.is_some() {
                self.batch
            } else {
                1
            };
            if self.max_tasks > 0 {
                limit = limit.min((self.max_tasks - self.done) as usize);
            }
            if self.tasks.claim(limit, &mut claimed)? == 0 {
                self.went_on_at = None;
                self.tasks.release(); // padding may have been claimed
                                      // Acquire (here and below) pairs with the parent's Release
                                      // store of `shutdown` once the pool is closed and idle
                                      // (`Core::drive` in pool/core/mod.rs).
                if self.slot.shutdown().load(Ordering::Acquire) != 0 {
                    return Ok(());
                }
                if !spinner.spin() {
                    let tasks = &self.tasks;
                    let shutdown = self.slot.shutdown();
                    // While a result's spill (or an object it names) waits
                    // for the parent to open it, or received arrays are
                    // kept mapped, look again now and then: memory nobody
                    // needs goes as soon as it can.
                    let recheck = crate::shm::handle::idle_recheck();
                    // The stamp at our claim position: the parent stamps a
                    // task, then wakes us (`park`'s fences order its stamp
                    // before its look at `sleeping`, and our announcement
                    // before this look at the stamp).
                    park::sleep_unless(self.slot.sleeping(), recheck, || {
                        tasks.has_record() || shutdown.load(Ordering::Acquire) != 0
                    });
                    spinner.reset();
                }
                continue;
            }
            spinner.reset();
            // The batch's start, for `adapt_batch`. After a wait, a single
            // short task goes untimed: the batch size only matters when
            // tasks queue up, and then batches follow one another (timed
            // for free) or come several at a time.
            let started = match self.went_on_at {
                Some(at) => Some(at),
                None if claimed.len() > 1 || self.task_ns >= ALWAYS_TIME_NS => Some(Instant::now()),
                None => None,
            };
            let mut ran = 0usize;
            let ring = self.tasks.memory();
            let last = claimed.len() - 1;
            let mut released = false;
            for (i, record) in claimed.iter().enumerate() {
                let Some(tag) = ring.record_kind(record.position) else {
                    return Err(RingError::Violation(
                        "claimed record at an impossible position",
                    ));
                };
                // Take the task unless the parent took it back first (to give
                // it to an idle worker). AcqRel pairs with the parent's AcqRel
                // CAS in `Core::balance`: exactly one of the two succeeds.
                if tag
                    .compare_exchange(kind::TASK, kind::TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                self.tasks.read_payload(record, &mut input);
                if i == last {
                    // Every tag of the batch is decided and every payload we
                    // run is copied: the parent may refill while we work.
                    self.tasks.release();
                    released = true;
                }
                self.run_one(record, &input, &mut out)?;
                // As a worker that dies between publishing a spilled result
                // and the parent opening it: the spill goes first, so that
                // the parent's open surely fails.
                #[cfg(feature = "fault-injection")]
                let exit_now = crate::shm::handle::lingering_now()
                    && EXIT_AFTER_SPILL.swap(false, Ordering::Relaxed);
                #[cfg(feature = "fault-injection")]
                if exit_now {
                    crate::shm::handle::forget_lingering();
                }
                // Publish each result at once: a crash later in the batch must
                // not lose it, and a waiting caller can take it while we go on.
                self.results.publish()?;
                #[cfg(feature = "fault-injection")]
                if exit_now {
                    park::wake_leaving_flag(self.doorbell);
                    sys::exit_now(0);
                }
                ran += 1;
            }
            if !released {
                // The last record was taken back: its tag is decided too.
                self.tasks.release();
            }
            let ended = Instant::now();
            self.ringer.wake(self.doorbell, ended);
            if let (Some(started), true) = (started, ran > 0) {
                let elapsed = ended.saturating_duration_since(started);
                self.adapt_batch(ran, elapsed.as_nanos() as f64);
            }
            self.went_on_at = Some(ended);
            self.done += ran as u64;
            self.slot.tasks_done().store(self.done, Ordering::Relaxed);
            if self.max_tasks > 0 && self.done >= self.max_tasks {
                // Release pairs with the parent's Acquire load of `state`.
                self.slot.state().store(state::RETIRING, Ordering::Release);
                park::wake_leaving_flag(self.doorbell);
                return Ok(());
            }
        }
    }

    fn adapt_batch(&mut self, n: usize, elapsed_ns: f64) {
        let per_task = elapsed_ns / n as f64;
        self.task_ns = 0.7 * self.task_ns + 0.3 * per_task;
        self.batch = ((BATCH_TARGET_NS / self.task_ns.max(1.0)) as usize).clamp(1, MAX_BATCH);
        // For the parent's window (`Core::collect`): how far ahead to feed
        // this worker. Relaxed: a hint, read whenever the parent collects;
        // `as` saturates (and a NaN would be 0: "not measured").
        self.slot
            .task_ns()
            .store(self.task_ns as u64, Ordering::Relaxed);
    }

    fn run_one(
        &mut self,
        record: &Claimed,
        input: &[u8],
        out: &mut Encoder,
    ) -> Result<(), RingError> {
        let id = record.header.id;
        if record.header.kind != kind::TASK {
            return Err(RingError::Violation("unknown record kind in the task ring"));
        }
        // SAFETY: the parent wrote this offset with `offset_of` in the same
        // binary (fingerprint checked at start).
        let trampoline = unsafe { task::from_offset(record.header.aux as i64) };
        // Objects our earlier results sent, now opened by the parent.
        crate::shm::handle::sweep();
        out.reset();
        if out.capacity() > BUFFER_KEEP {
            *out = Encoder::new();
        }
        // A spilled argument is decoded where the parent wrote it (sealed,
        // mapped for this task, unmapped after it): no copy into a buffer.
        let spilled = (record.header.flags & layout::RECORD_SPILLED != 0)
            .then(|| crate::shm::spill::open_sealed(input));
        let input = match &spilled {
            Some(Ok(spill)) => Ok(spill.bytes()),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(input),
        };
        // Under `panic = "abort"`, the hook publishes the task's PANICKED
        // record through this before the process ends.
        let server = std::ptr::from_mut(self).cast::<Server<'static>>();
        let report = move |text: &str| {
            // SAFETY: called only by the panic hook on this thread while
            // the task below runs (`with_abort_report` drops it after), when
            // this frame's `&mut self` is not used (the task uses `input`
            // and `out` only), and the process aborts right after: nothing
            // else touches the server meanwhile. `'static` is never relied
            // on: the reference ends with this call.
            let server = unsafe { &mut *server };
            server.publish_panic_before_abort(id, text)
        };
        let outcome = match input {
            Ok(input) => crate::child::panic::with_abort_report(report, || {
                catch_unwind(AssertUnwindSafe(|| {
                    trampoline(input, out).and_then(|()| out.check())
                }))
            }),
            // Decoded as a failed argument: the parent gets `Error::Decode`.
            Err(e) => Ok(Err(e)),
        };
        drop(spilled);
        let max = self.results.memory().max_payload();
        // What the result carries (the shared objects it names) counts as
        // sent only if the result goes out as it is.
        let mut carried = out.take_carried();
        let mut sent = false;
        let (header, payload): (RecordHeader, &[u8]) = match outcome {
            Ok(Ok(())) if out.len() <= max => {
                sent = true;
                (
                    RecordHeader {
                        kind: kind::OK,
                        id,
                        ..Default::default()
                    },
                    &out[..],
                )
            }
            Ok(Ok(())) => match crate::shm::spill::write(out) {
                // Larger than a ring message: the record carries a spill's
                // handle; we hold the spill until the parent opened it.
                Ok((handle, mut spilled)) => {
                    carried.transits.append(&mut spilled.transits);
                    carried.keep.append(&mut spilled.keep);
                    sent = true;
                    out.clear();
                    out.extend_from_slice(&handle);
                    (
                        RecordHeader {
                            kind: kind::OK,
                            flags: layout::RECORD_SPILLED,
                            id,
                            ..Default::default()
                        },
                        &out[..],
                    )
                }
                // No memory for it: a real limit.
                Err(_) => {
                    let size = out.len() as u64;
                    out.clear();
                    let h = RecordHeader {
                        kind: kind::FAILED,
                        flags: failure::RESULT_TOO_LARGE,
                        id,
                        aux: size,
                        ..Default::default()
                    };
                    (h, &out[..])
                }
            },
            Ok(Err(err)) => {
                let (code, message) = match err {
                    // The result could not be encoded: the caller gets the
                    // encoder's own message.
                    Error::Encode { type_name, reason } => {
                        (failure::ENCODE, format!("{type_name}: {reason}"))
                    }
                    err if task::is_decode_error(&err) => (failure::DECODE, err.to_string()),
                    err => (failure::TASK_ERROR, err.to_string()),
                };
                out.clear();
                out.extend_from_slice(message.as_bytes());
                fit_message(out, max);
                (
                    RecordHeader {
                        kind: kind::FAILED,
                        flags: code,
                        id,
                        ..Default::default()
                    },
                    &out[..],
                )
            }
            Err(_) => {
                out.clear();
                out.extend_from_slice(take_panic_message().as_bytes());
                fit_message(out, max);
                (
                    RecordHeader {
                        kind: kind::PANICKED,
                        id,
                        ..Default::default()
                    },
                    &out[..],
                )
            }
        };
        let written = self.write_result(header, payload);
        if sent && written.is_ok() {
            carried.sent();
        } else {
            // The result was replaced by a failure: pipe ends in it go back.
            carried.not_sent();
        }
        written
    }

    /// Writes a result, waiting for the parent to make room when the ring is full.
    /// Publishes task `id`'s PANICKED record with `text`, and wakes the
    /// parent: what a panic does under `panic = "abort"`, just before the
    /// process ends (the parent collects a dead worker's results before it
    /// fails its tasks, so the caller gets `Error::Panicked`, not
    /// `WorkerDied`, and no retry runs it again). Whether it was published.
    fn publish_panic_before_abort(&mut self, id: u64, text: &str) -> bool {
        let mut message = text.as_bytes().to_vec();
        fit_message(&mut message, self.results.memory().max_payload());
        let header = RecordHeader {
            kind: kind::PANICKED,
            id,
            ..Default::default()
        };
        let published =
            self.write_result(header, &message).is_ok() && self.results.publish().is_ok();
        park::wake_leaving_flag(self.doorbell);
        published
    }

    fn write_result(&mut self, header: RecordHeader, payload: &[u8]) -> Result<(), RingError> {
        let mut spinner = Spinner::new();
        loop {
            if self.results.write(header, payload)?.is_some() {
                return Ok(());
            }
            // Full: let the parent see what we have, then wait for it.
            self.results.publish()?;
            park::wake_leaving_flag(self.doorbell);
            if !spinner.spin() {
                let results = &self.results;
                park::sleep_unless(self.slot.sleeping(), None, || {
                    results.has_room(payload.len())
                });
                spinner.reset();
            }
        }
    }
}

impl From<RingError> for Error {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Violation(what) => Error::ProtocolViolation { pid: 0, what },
            RingError::TooLarge { record, max } => Error::ArgumentTooLarge { size: record, max },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_strictly() {
        let token = make_token(5, 2, 77, 6, 7);
        let t = parse_token(&token).unwrap();
        assert_eq!(
            (t.fd, t.index, t.parent, t.more_fds),
            (5, 2, 77, Some((6, 7)))
        );
        assert!(parse_token("v2:5:2:77").is_none());
        assert!(parse_token("v1:5:2").is_none());
        assert!(
            parse_token("v1:5:2:77:6:7:1").is_none(),
            "a bad description"
        );
        assert!(
            parse_token("v1:5:2:77:x:7").is_none(),
            "a bad header descriptor"
        );
        assert!(parse_token("v1:5:2:77:6").is_none(), "no common descriptor");
        assert!(parse_token("v1:5:2:77:-1:7").is_none(), "a negative one");
        assert!(parse_token("v1:-1:2:77:6:7").is_none(), "a negative slot");
        assert!(parse_token("v1:5:2:77:5:7").is_none(), "the slot's twice");
        assert!(parse_token("v1:5:2:77:6:6").is_none(), "one for two");
        assert!(parse_token("v1:5:2:77:6:7").is_some(), "no description");
        let bare = parse_token("v1:5:2:77").unwrap();
        assert_eq!(bare.more_fds, None, "a stray variable still parses");
        assert_eq!(
            t.parent_description,
            Some(crate::identity::describe_current().as_str())
        );
    }
}
