//! Point-to-point messages of bytes over MPI, for the one thread that makes
//! MPI calls: non-blocking sends (so that two ranks sending each other large
//! messages at once never deadlock), polled receives; and the spare
//! buffers large task frames are encoded into.

use crate::comm::SHUTDOWN_BOUND;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Rank;
use std::time::Instant;

/// A send in flight and the buffer it reads.
struct InFlight {
    request: Option<Request<'static, [u8]>>,
    /// The buffer `request` reads, as the parts of its `Vec` (pointer,
    /// length, capacity): leaked for the send's duration and taken back
    /// once the request has completed.
    buffer: (*mut u8, usize, usize),
    /// Whether the buffer becomes a spare once sent.
    keep: bool,
}

/// Task frames at least this large are encoded into spare buffers: the
/// bandwidth of large arguments is what they are for (a few MiB freshly
/// allocated cost as much in page faults as the copy into them).
const SPARE_MIN: usize = 64 << 10;
/// Spares kept at most, and the largest kept.
const SPARES: usize = 4;
const SPARE_MAX: usize = 64 << 20;

thread_local! {
    /// Buffers of large task frames whose sends completed, for the next
    /// encodings on this thread (rank 0's MPI thread: it both encodes the
    /// tasks and completes their sends).
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer to encode a task's argument into: a spare one, with
/// room, on the MPI thread after large sends; a new one otherwise.
pub(crate) fn spare_buffer() -> Vec<u8> {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_default()
}

fn keep_spare(mut buffer: Vec<u8>) {
    if (SPARE_MIN..=SPARE_MAX).contains(&buffer.capacity()) {
        buffer.clear();
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARES {
                spare.push(buffer);
            }
        });
    }
}

impl InFlight {
    /// Takes the buffer back once the send has completed.
    ///
    /// # Safety
    ///
    /// The request reading the buffer must have completed (MPI reads it no
    /// more), and this is called once.
    unsafe fn release(&self) {
        let (ptr, len, capacity) = self.buffer;
        // SAFETY: the parts come from a `Vec<u8>` leaked in `send`, taken
        // back once (the caller's promise), after MPI's last read of it.
        let buffer = unsafe { Vec::from_raw_parts(ptr, len, capacity) };
        if self.keep {
            keep_spare(buffer);
        }
    }
}

/// The world communicator and this rank's sends in flight. Not `Send`: it
/// lives and dies on the MPI thread.
pub(crate) struct Transport {
    pub(crate) world: SimpleCommunicator,
    sends: Vec<InFlight>,
}

impl Transport {
    pub(crate) fn new(world: SimpleCommunicator) -> Self {
        Self {
            world,
            sends: Vec::new(),
        }
    }

    /// Starts sending `bytes` to `to` with `tag`; never blocks. A large
    /// task frame's buffer becomes a spare once sent ([`spare_buffer`]).
    pub(crate) fn send(&mut self, to: Rank, tag: i32, bytes: Vec<u8>) {
        let keep = tag == crate::proto::TAG_TASK && bytes.capacity() >= SPARE_MIN;
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        let buffer = (bytes.as_mut_ptr(), bytes.len(), bytes.capacity());
        // SAFETY: the `Vec` is leaked (ManuallyDrop) and only taken back in
        // `InFlight::release` once MPI has finished reading it (its request
        // completed), so its bytes stay valid and unwritten for as long as
        // MPI uses them.
        let data: &'static [u8] = unsafe { std::slice::from_raw_parts(buffer.0, buffer.1) };
        let request =
            self.world
                .process_at_rank(to)
                .immediate_send_with_tag(StaticScope, data, tag);
        self.sends.push(InFlight {
            request: Some(request),
            buffer,
            keep,
        });
    }

    /// Completes the sends that are done; returns whether any did.
    pub(crate) fn progress(&mut self) -> bool {
        let before = self.sends.len();
        self.sends.retain_mut(|send| {
            let Some(request) = send.request.take() else {
                return false;
            };
            match request.test() {
                Ok(_) => {
                    // SAFETY: the request has completed, so MPI no longer
                    // reads the buffer, and the only reference to it (held
                    // by the request) is gone; the send leaves the list.
                    unsafe { send.release() };
                    false
                }
                Err(request) => {
                    send.request = Some(request);
                    true
                }
            }
        });
        self.sends.len() != before
    }

    /// Waits until every send has completed, at most [`SHUTDOWN_BOUND`]:
    /// past it the receiver hangs alive (a dead one ends the job through
    /// the launcher), and the job is ended with `MPI_Abort`.
    pub(crate) fn flush(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_BOUND;
        while !self.sends.is_empty() {
            if !self.progress() {
                if Instant::now() > deadline {
                    eprintln!(
                        "corepool-mpi: rank {}: {} sends not taken within {SHUTDOWN_BOUND:?}; ending the job",
                        self.world.rank(),
                        self.sends.len()
                    );
                    self.world.abort(1);
                }
                std::thread::yield_now();
            }
        }
    }

    /// The next message that has arrived, if any: (source, tag, bytes).
    pub(crate) fn receive(&self) -> Option<(Rank, i32, Vec<u8>)> {
        Some(self.probe()?.receive_vec())
    }

    /// The next message that has arrived, if any, matched (no other receive
    /// takes it) but not received yet: its caller chooses where it goes.
    pub(crate) fn probe(&self) -> Option<Incoming> {
        let (message, status) = self.world.any_process().immediate_matched_probe()?;
        Some(Incoming { message, status })
    }
}

/// A message matched by [`Transport::probe`], to receive once, either way.
/// Received it must be (rsmpi panics at a matched message dropped
/// unreceived): each way takes it by value.
pub(crate) struct Incoming {
    message: mpi::point_to_point::Message,
    status: mpi::point_to_point::Status,
}

impl Incoming {
    pub(crate) fn source(&self) -> Rank {
        self.status.source_rank()
    }

    pub(crate) fn tag(&self) -> i32 {
        self.status.tag()
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.status.count(u8::equivalent_datatype())).unwrap_or(0)
    }

    /// Receives it into a new buffer: (source, tag, bytes).
    pub(crate) fn receive_vec(self) -> (Rank, i32, Vec<u8>) {
        let (bytes, status) = (self.message, self.status).matched_receive_vec::<u8>();
        (status.source_rank(), status.tag(), bytes)
    }

    /// Receives it into the start of `buf`, which holds at least
    /// [`len`](Self::len) bytes (MPI refuses a shorter one: an error that
    /// ends the job); returns the bytes received.
    pub(crate) fn receive_into(self, buf: &mut [u8]) -> usize {
        let status = self.message.matched_receive_into(buf);
        usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.flush();
    }
}
