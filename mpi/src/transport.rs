//! Point-to-point messages of bytes over MPI, for the one thread that makes
//! MPI calls: non-blocking sends (so that two ranks sending each other large
//! messages at once never deadlock), polled receives; messages larger than
//! one MPI message may be (an MPI count is an `int`) sent in pieces and put
//! together again; and the spare buffers large task frames are encoded into.

use crate::proto::{TAG_PIECE, TAG_PIECES};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Rank;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The largest piece a message is sent in: an MPI count is an `int`, so
/// one MPI message holds at most `i32::MAX` bytes (rsmpi panics past it).
/// A round 1 GiB, well inside.
pub(crate) const PIECE_MAX: usize = 1 << 30;

/// The largest piece [`Config`](crate::Config) may ask for: one MPI
/// message's most.
pub(crate) const PIECE_LIMIT: usize = i32::MAX as usize;

/// A send in flight and the buffer it reads.
struct InFlight {
    /// One request per piece of the buffer (one for most messages); the
    /// buffer is taken back once all have completed.
    requests: Vec<Request<'static, [u8]>>,
    /// The buffer `requests` read, as the parts of its `Vec` (pointer,
    /// length, capacity): leaked for the send's duration and taken back
    /// once every request has completed.
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
    /// Every request reading the buffer must have completed (MPI reads it
    /// no more), and this is called once.
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

/// A message arriving in pieces from one rank: its tag, its bytes so far,
/// and its length.
struct Assembly {
    tag: i32,
    bytes: Vec<u8>,
    len: usize,
}

/// The world communicator, this rank's sends in flight, and the messages
/// arriving in pieces. Not `Send`: it lives and dies on the MPI thread.
pub(crate) struct Transport {
    pub(crate) world: SimpleCommunicator,
    sends: Vec<InFlight>,
    /// The largest piece this rank sends a message in (at most
    /// [`PIECE_LIMIT`]).
    piece: usize,
    /// By source rank: the message whose pieces are arriving.
    assembling: HashMap<Rank, Assembly>,
    /// How long the end of the job waits for another rank
    /// ([`Config::shutdown_grace`](crate::Config::shutdown_grace)).
    grace: Duration,
}

impl Transport {
    /// `piece`: the largest message sent whole, clamped to
    /// `1..=`[`PIECE_LIMIT`]; `grace`: how long the end of the job waits for
    /// another rank.
    pub(crate) fn new(world: SimpleCommunicator, piece: usize, grace: Duration) -> Self {
        Self {
            world,
            sends: Vec::new(),
            piece: piece.clamp(1, PIECE_LIMIT),
            assembling: HashMap::new(),
            grace,
        }
    }

    /// How long the end of the job waits for another rank before it ends
    /// the job.
    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    /// The largest piece this rank sends a message (or a broadcast) in.
    pub(crate) fn piece(&self) -> usize {
        self.piece
    }

    /// Starts sending `bytes` to `to` with `tag`; never blocks. A large
    /// task frame's buffer becomes a spare once sent ([`spare_buffer`]).
    /// Bytes of more than one piece go as a [`TAG_PIECES`] head, then
    /// [`TAG_PIECE`] messages of at most a piece each: MPI keeps the
    /// messages of one sender to one receiver in order, and they are
    /// started back to back, so no other message of this rank to `to`
    /// comes between them.
    pub(crate) fn send(&mut self, to: Rank, tag: i32, bytes: Vec<u8>) {
        if bytes.len() > self.piece {
            let mut head = tag.to_le_bytes().to_vec();
            head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            self.send_pieces(to, TAG_PIECES, head);
            self.send_pieces(to, TAG_PIECE, bytes);
        } else {
            self.send_pieces(to, tag, bytes);
        }
    }

    /// Starts sending `bytes` as messages of at most a piece each (one for
    /// an empty buffer), all with `tag`.
    fn send_pieces(&mut self, to: Rank, tag: i32, bytes: Vec<u8>) {
        let keep = tag == crate::proto::TAG_TASK && bytes.capacity() >= SPARE_MIN;
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        let buffer = (bytes.as_mut_ptr(), bytes.len(), bytes.capacity());
        // SAFETY: the `Vec` is leaked (ManuallyDrop) and only taken back in
        // `InFlight::release` once MPI has finished reading it (all of its
        // requests completed), so its bytes stay valid and unwritten for as
        // long as MPI uses them.
        let data: &'static [u8] = unsafe { std::slice::from_raw_parts(buffer.0, buffer.1) };
        let process = self.world.process_at_rank(to);
        // Each piece at most `self.piece` <= `PIECE_LIMIT` bytes: its
        // count fits MPI's `int`.
        let requests = if data.is_empty() {
            vec![process.immediate_send_with_tag(StaticScope, data, tag)]
        } else {
            data.chunks(self.piece)
                .map(|piece| process.immediate_send_with_tag(StaticScope, piece, tag))
                .collect()
        };
        self.sends.push(InFlight {
            requests,
            buffer,
            keep,
        });
    }

    /// Completes the sends that are done; returns whether any did.
    pub(crate) fn progress(&mut self) -> bool {
        let before = self.sends.len();
        self.sends.retain_mut(|send| {
            let requests = std::mem::take(&mut send.requests);
            for request in requests {
                if let Err(request) = request.test() {
                    send.requests.push(request);
                }
            }
            if !send.requests.is_empty() {
                return true;
            }
            // SAFETY: every request reading the buffer has completed, so
            // MPI no longer reads it, and the only references to it (held
            // by the requests) are gone; the send leaves the list.
            unsafe { send.release() };
            false
        });
        self.sends.len() != before
    }

    /// Waits until every send has completed, at most the shutdown grace:
    /// past it the receiver hangs alive (a dead one ends the job through
    /// the launcher), and the job is ended with `MPI_Abort`.
    pub(crate) fn flush(&mut self) {
        let grace = self.grace;
        let deadline = Instant::now().checked_add(grace);
        while !self.sends.is_empty() {
            if !self.progress() {
                if deadline.is_some_and(|d| Instant::now() > d) {
                    eprintln!(
                        "corepool-mpi: rank {}: {} sends not taken within {grace:?} (`Config::shutdown_grace`); ending the job",
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
    pub(crate) fn receive(&mut self) -> Option<(Rank, i32, Vec<u8>)> {
        Some(self.probe()?.receive_vec())
    }

    /// The next message that has arrived, if any, matched (no other receive
    /// takes it) but not received yet: its caller chooses where it goes. A
    /// message sent in pieces is put together here, and comes out whole
    /// once its last piece is in.
    pub(crate) fn probe(&mut self) -> Option<Incoming> {
        // Bounded: each turn receives one message that has arrived.
        loop {
            let (message, status) = self.world.any_process().immediate_matched_probe()?;
            let from = status.source_rank();
            match status.tag() {
                TAG_PIECES => {
                    let (head, _) = (message, status).matched_receive_vec::<u8>();
                    self.begin_assembly(from, &head);
                }
                TAG_PIECE => {
                    if let Some(whole) = self.add_piece(from, message, status) {
                        return Some(whole);
                    }
                }
                _ => return Some(Incoming::Matched { message, status }),
            }
        }
    }

    /// Starts putting together the message a [`TAG_PIECES`] head announces.
    fn begin_assembly(&mut self, from: Rank, head: &[u8]) {
        let rank = self.world.rank();
        let parsed = (head.len() == 12).then(|| {
            let mut tag = [0u8; 4];
            tag.copy_from_slice(&head[..4]);
            let mut len = [0u8; 8];
            len.copy_from_slice(&head[4..]);
            (i32::from_le_bytes(tag), u64::from_le_bytes(len))
        });
        let Some((tag, len)) = parsed else {
            eprintln!("corepool-mpi: rank {rank}: a malformed head of a message in pieces from rank {from}");
            return;
        };
        if self.assembling.contains_key(&from) {
            eprintln!("corepool-mpi: rank {rank}: rank {from} began a message before its last one was whole; the last one is dropped");
        }
        let mut bytes = Vec::new();
        let reserved = usize::try_from(len)
            .ok()
            .filter(|&len| bytes.try_reserve_exact(len).is_ok());
        let Some(len) = reserved else {
            // Its sender waits for an answer that cannot come: end the job
            // rather than leave it waiting (as running out of memory for
            // a message sent whole would).
            eprintln!("corepool-mpi: rank {rank}: no memory for a message of {len} bytes from rank {from}; ending the job");
            self.world.abort(1);
        };
        self.assembling.insert(from, Assembly { tag, bytes, len });
    }

    /// Receives a [`TAG_PIECE`] message into the message `from` is sending
    /// in pieces; returns that message once whole.
    fn add_piece(
        &mut self,
        from: Rank,
        message: mpi::point_to_point::Message,
        status: mpi::point_to_point::Status,
    ) -> Option<Incoming> {
        let piece = usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0);
        let fits = self.assembling.get(&from).is_some_and(|a| {
            a.bytes
                .len()
                .checked_add(piece)
                .is_some_and(|end| end <= a.len)
        });
        let Some(assembly) = self.assembling.get_mut(&from).filter(|_| fits) else {
            // Received all the same (a matched message must be), and dropped.
            let _ = (message, status).matched_receive_vec::<u8>();
            eprintln!(
                "corepool-mpi: rank {}: a piece of {piece} bytes from rank {from} that belongs to no message; dropped",
                self.world.rank()
            );
            return None;
        };
        let at = assembly.bytes.len();
        // Within the capacity reserved at the head: no reallocation.
        assembly.bytes.resize(at + piece, 0);
        message.matched_receive_into(&mut assembly.bytes[at..]);
        if assembly.bytes.len() < assembly.len {
            return None;
        }
        let whole = self.assembling.remove(&from)?;
        Some(Incoming::Whole {
            source: from,
            tag: whole.tag,
            bytes: whole.bytes,
        })
    }
}

/// A message [`Transport::probe`] found, to receive once, either way.
/// Received a matched one must be (rsmpi panics at a matched message
/// dropped unreceived): each way takes it by value.
pub(crate) enum Incoming {
    /// One MPI message, matched, not received yet.
    Matched {
        message: mpi::point_to_point::Message,
        status: mpi::point_to_point::Status,
    },
    /// A message sent in pieces, received and put together.
    Whole {
        source: Rank,
        tag: i32,
        bytes: Vec<u8>,
    },
}

impl Incoming {
    pub(crate) fn source(&self) -> Rank {
        match self {
            Incoming::Matched { status, .. } => status.source_rank(),
            Incoming::Whole { source, .. } => *source,
        }
    }

    pub(crate) fn tag(&self) -> i32 {
        match self {
            Incoming::Matched { status, .. } => status.tag(),
            Incoming::Whole { tag, .. } => *tag,
        }
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Incoming::Matched { status, .. } => {
                usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0)
            }
            Incoming::Whole { bytes, .. } => bytes.len(),
        }
    }

    /// Receives it into a new buffer: (source, tag, bytes).
    pub(crate) fn receive_vec(self) -> (Rank, i32, Vec<u8>) {
        match self {
            Incoming::Matched { message, status } => {
                let (bytes, status) = (message, status).matched_receive_vec::<u8>();
                (status.source_rank(), status.tag(), bytes)
            }
            Incoming::Whole { source, tag, bytes } => (source, tag, bytes),
        }
    }

    /// Receives it into the start of `buf`, which should hold at least
    /// [`len`](Self::len) bytes; returns the bytes received, or, if `buf`
    /// is shorter, the message received into a buffer of its own (as
    /// [`Incoming::Whole`]: nothing is lost).
    pub(crate) fn receive_into(self, buf: &mut [u8]) -> Result<usize, Incoming> {
        let len = self.len();
        let Some(buf) = buf.get_mut(..len) else {
            let (source, tag, bytes) = self.receive_vec();
            return Err(Incoming::Whole { source, tag, bytes });
        };
        match self {
            // `buf` is exactly the message's length, at most one MPI
            // message's (an `int` count).
            Incoming::Matched { message, .. } => {
                let status = message.matched_receive_into(buf);
                Ok(usize::try_from(status.count(u8::equivalent_datatype())).unwrap_or(0))
            }
            Incoming::Whole { bytes, .. } => {
                buf.copy_from_slice(&bytes);
                Ok(len)
            }
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.flush();
    }
}
