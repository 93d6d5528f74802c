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
use std::collections::{HashMap, VecDeque};
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

/// The largest piece a message is sent in: an MPI count is an `int`, so
/// one MPI message holds at most `i32::MAX` bytes (rsmpi panics past it).
/// A round 1 GiB, well inside.
pub(crate) const PIECE_MAX: usize = 1 << 30;

/// The largest piece [`Config`](crate::Config) may ask for: one MPI
/// message's most.
pub(crate) const PIECE_LIMIT: usize = i32::MAX as usize;

/// The smallest piece [`Config`](crate::Config) may ask for. Each piece is
/// an MPI request held until it completes, so a piece of a few bytes would
/// make a megabyte a million requests; 4 KiB costs nothing and still lets
/// the tests send small messages in pieces. A head announcing no more than
/// this is no honest head (its sender would have sent the message whole).
pub(crate) const PIECE_MIN: usize = 4 << 10;

/// A send in flight and the buffer it reads.
struct InFlight {
    /// One request per piece of the buffer not yet completed (one for
    /// most messages), in the order they were started; the buffer is taken
    /// back once all have completed.
    requests: VecDeque<Request<'static, [u8]>>,
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

/// A message arriving in pieces from one rank: its tag, its bytes so far
/// (the whole length reserved at the head), and its length.
struct Assembly {
    tag: i32,
    bytes: Vec<u8>,
    len: usize,
}

/// A byte MPI writes before it has a value: a piece is received straight
/// into its message's spare capacity, which is never zero-filled first.
#[repr(transparent)]
pub(crate) struct Unwritten(MaybeUninit<u8>);

// SAFETY: `Unwritten` is `repr(transparent)` over `MaybeUninit<u8>`, which
// has `u8`'s size and alignment, so MPI's byte datatype describes its
// memory exactly; every bit pattern, and none, is a valid `Unwritten`, so
// nothing MPI writes (or leaves) makes an invalid value. rsmpi's own
// `matched_receive_vec` receives into the same kind of wrapper.
unsafe impl Equivalence for Unwritten {
    type Out = <u8 as Equivalence>::Out;

    fn equivalent_datatype() -> Self::Out {
        u8::equivalent_datatype()
    }
}

/// `spare` (a `Vec<u8>`'s spare capacity) as a buffer MPI may receive into.
pub(crate) fn unwritten(spare: &mut [MaybeUninit<u8>]) -> &mut [Unwritten] {
    let len = spare.len();
    // SAFETY: `Unwritten` is `repr(transparent)` over `MaybeUninit<u8>`:
    // same size, alignment and validity, so the same memory and length
    // are a valid `[Unwritten]`; the exclusive borrow of `spare` carries
    // over to the result, so nothing else reaches the memory meanwhile.
    unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<Unwritten>(), len) }
}

/// How another rank broke the protocol of messages in pieces. No rank of
/// the same build does (`Cluster::init` refuses a mismatch), but the rank
/// that waits for the message would otherwise wait for ever, so each ends
/// the job ([`Transport::refuse`]).
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// A head that is not `[tag i32][length u64]`.
    MalformedHead { len: usize },
    /// A head while this rank's last message in pieces is not whole.
    HeadBeforeWhole { len: u64, have: usize, of: usize },
    /// A head announcing no more than one piece of the smallest size: its
    /// sender would have sent it whole, and a length of 0 never completes.
    TooShort { len: u64 },
    /// A head announcing more than this machine's memory.
    TooLarge { len: u64, memory: u64 },
    /// A piece with no head before it.
    NoMessage { piece: usize },
    /// An empty piece (never sent: it could not complete anything), or one
    /// that runs past its message's length.
    PieceMisfits {
        piece: usize,
        have: usize,
        of: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MalformedHead { len } => write!(
                f,
                "a head of a message in pieces of {len} bytes, not 12 ([tag i32][length u64])"
            ),
            Refusal::HeadBeforeWhole { len, have, of } => write!(
                f,
                "the head of a new message in pieces ({len} bytes) while its last one has only {have} of its {of} bytes"
            ),
            Refusal::TooShort { len } => write!(
                f,
                "the head of a message in pieces of {len} bytes, no more than the smallest piece ({PIECE_MIN}): such a message is sent whole"
            ),
            Refusal::TooLarge { len, memory } => write!(
                f,
                "the head of a message in pieces of {len} bytes, more than this machine's memory ({memory} bytes)"
            ),
            Refusal::NoMessage { piece } => {
                write!(f, "a piece of {piece} bytes with no head before it")
            }
            Refusal::PieceMisfits { piece, have, of } => write!(
                f,
                "a piece of {piece} bytes of a message that has {have} of its {of} bytes"
            ),
        }
    }
}

/// The tag and length a [`TAG_PIECES`] head announces, checked: `open`
/// is the message from the same rank still being put together (its bytes
/// so far and length), `memory` this machine's, if known.
fn parse_head(
    head: &[u8],
    open: Option<(usize, usize)>,
    memory: Option<u64>,
) -> Result<(i32, usize), Refusal> {
    let (tag, len) = head
        .split_first_chunk::<4>()
        .and_then(|(tag, rest)| Some((tag, <[u8; 8]>::try_from(rest).ok()?)))
        .map(|(tag, len)| (i32::from_le_bytes(*tag), u64::from_le_bytes(len)))
        .ok_or(Refusal::MalformedHead { len: head.len() })?;
    if let Some((have, of)) = open {
        return Err(Refusal::HeadBeforeWhole { len, have, of });
    }
    if len <= PIECE_MIN as u64 {
        return Err(Refusal::TooShort { len });
    }
    match (usize::try_from(len), memory) {
        (Ok(len), Some(memory)) if len as u64 <= memory => Ok((tag, len)),
        (Ok(len), None) => Ok((tag, len)),
        _ => Err(Refusal::TooLarge {
            len,
            memory: memory.unwrap_or(usize::MAX as u64),
        }),
    }
}

/// Whether a piece of `piece` bytes fits the message being put together
/// (`open`: its bytes so far and its length).
fn check_piece(open: Option<(usize, usize)>, piece: usize) -> Result<(), Refusal> {
    let (have, of) = open.ok_or(Refusal::NoMessage { piece })?;
    let fits = piece > 0 && have.checked_add(piece).is_some_and(|end| end <= of);
    if fits {
        Ok(())
    } else {
        Err(Refusal::PieceMisfits { piece, have, of })
    }
}

/// Ends the job over a message in pieces that cannot be put together: the
/// rank waiting for it would otherwise wait for ever (as running out of
/// memory for it would leave it).
fn refuse(world: &SimpleCommunicator, from: Rank, refusal: &dyn std::fmt::Display, why: &str) -> ! {
    eprintln!(
        "corepool-mpi: rank {}: {refusal}, from rank {from}: {why}; ending the job",
        world.rank()
    );
    world.abort(1)
}

/// Why a broken message in pieces ends the job.
const PROTOCOL_ERROR: &str = "a protocol error between ranks (are they all this build of corepool-mpi, and does nothing else call MPI?)";
/// Why a message too large for this rank ends the job.
const TOO_LARGE: &str =
    "its sender would wait for ever for an answer (send less to one rank, or use a larger node)";

/// Whether, at `now`, a wait that began at `since` has seen nothing move
/// for longer than `grace`, the last progress being at `last`.
fn stalled_at(now: Instant, since: Instant, last: Instant, grace: Duration) -> bool {
    now.saturating_duration_since(since.max(last)) > grace
}

/// The world communicator, this rank's sends in flight, and the messages
/// arriving in pieces. Not `Send`: it lives and dies on the MPI thread.
pub(crate) struct Transport {
    pub(crate) world: SimpleCommunicator,
    sends: Vec<InFlight>,
    /// The largest piece this rank sends a message in
    /// ([`PIECE_MIN`]`..=`[`PIECE_LIMIT`]).
    piece: usize,
    /// By source rank: the message whose pieces are arriving.
    assembling: HashMap<Rank, Assembly>,
    /// How long the end of the job waits for another rank while nothing
    /// moves ([`Config::shutdown_grace`](crate::Config::shutdown_grace)).
    grace: Duration,
    /// When a send (or a piece of one) last completed or a message (or a
    /// piece) last arrived: the end of the job measures its grace from
    /// it, so a long transfer that is moving is never cut short.
    last_progress: Instant,
    /// This machine's memory, the most a message in pieces may announce.
    memory: Option<u64>,
}

impl Transport {
    /// `piece`: the largest message sent whole, clamped to
    /// [`PIECE_MIN`]`..=`[`PIECE_LIMIT`]; `grace`: how long the end of the
    /// job waits for another rank while nothing moves.
    pub(crate) fn new(world: SimpleCommunicator, piece: usize, grace: Duration) -> Self {
        Self {
            world,
            sends: Vec::new(),
            piece: piece.clamp(PIECE_MIN, PIECE_LIMIT),
            assembling: HashMap::new(),
            grace,
            last_progress: Instant::now(),
            memory: corepool::info::physical_memory(),
        }
    }

    /// How long the end of the job waits for another rank, while nothing
    /// moves, before it ends the job.
    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    /// Whether nothing has moved (no send or piece of one completed, no
    /// message or piece arrived) for longer than the grace since `since`
    /// (when the wait began) or the last progress, whichever is later. A
    /// grace too long to reach never runs out.
    pub(crate) fn stalled(&self, since: Instant) -> bool {
        stalled_at(Instant::now(), since, self.last_progress, self.grace)
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
            VecDeque::from([process.immediate_send_with_tag(StaticScope, data, tag)])
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

    /// Completes the sends (and pieces of sends) that are done; returns
    /// whether any did.
    pub(crate) fn progress(&mut self) -> bool {
        let mut any = false;
        self.sends.retain_mut(|send| {
            // In the order they were started, up to the first not done:
            // one sender's pieces to one receiver are matched in order, so
            // the rest are rarely done before it, and a message of many
            // pieces costs one test per call rather than one per piece.
            while let Some(request) = send.requests.pop_front() {
                match request.test() {
                    Ok(_) => any = true,
                    Err(request) => {
                        send.requests.push_front(request);
                        return true;
                    }
                }
            }
            // SAFETY: every request reading the buffer has completed, so
            // MPI no longer reads it, and the only references to it (held
            // by the requests) are gone; the send leaves the list.
            unsafe { send.release() };
            false
        });
        if any {
            self.last_progress = Instant::now();
        }
        any
    }

    /// Waits until every send has completed, while they move: past the
    /// shutdown grace with no piece completed, the receiver hangs alive (a
    /// dead one ends the job through the launcher), and the job is ended
    /// with `MPI_Abort`.
    pub(crate) fn flush(&mut self) {
        let since = Instant::now();
        while !self.sends.is_empty() {
            if !self.progress() {
                if self.stalled(since) {
                    eprintln!(
                        "corepool-mpi: rank {}: {} sends not taken, none moving for {:?} (`Config::shutdown_grace`); ending the job",
                        self.world.rank(),
                        self.sends.len(),
                        self.grace
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
            self.last_progress = Instant::now();
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
        let open = self.assembling.get(&from).map(|a| (a.bytes.len(), a.len));
        let (tag, len) = match parse_head(head, open, self.memory) {
            Ok(head) => head,
            Err(refusal @ Refusal::TooLarge { .. }) => {
                refuse(&self.world, from, &refusal, TOO_LARGE)
            }
            Err(refusal) => refuse(&self.world, from, &refusal, PROTOCOL_ERROR),
        };
        // The whole length at once (within this machine's memory, checked
        // above): the pieces are received in place, never moved.
        let mut bytes = Vec::new();
        if bytes.try_reserve_exact(len).is_err() {
            refuse(
                &self.world,
                from,
                &format_args!("no memory for a message of {len} bytes in pieces"),
                TOO_LARGE,
            );
        }
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
        let open = self.assembling.get(&from).map(|a| (a.bytes.len(), a.len));
        if let Err(refusal) = check_piece(open, piece) {
            refuse(&self.world, from, &refusal, PROTOCOL_ERROR);
        }
        let world = &self.world;
        let Some(assembly) = self.assembling.get_mut(&from) else {
            refuse(world, from, &Refusal::NoMessage { piece }, PROTOCOL_ERROR);
        };
        let at = assembly.bytes.len();
        // The whole length was reserved at the head, and `at + piece` is
        // within it (checked above), so the spare capacity holds the piece.
        let Some(spare) = assembly.bytes.spare_capacity_mut().get_mut(..piece) else {
            let of = assembly.len;
            let misfit = Refusal::PieceMisfits {
                piece,
                have: at,
                of,
            };
            refuse(world, from, &misfit, PROTOCOL_ERROR);
        };
        let received = message.matched_receive_into(unwritten(spare));
        let received = usize::try_from(received.count(u8::equivalent_datatype())).unwrap_or(0);
        // A matched receive takes the whole matched message, `piece` bytes
        // (a shorter buffer would be MPI_ERR_TRUNCATE, fatal to the job).
        let received = received.min(piece);
        // SAFETY: MPI wrote the `received` bytes of the piece at
        // `at..at + received`, within the capacity (`at + piece` <= the
        // length reserved at the head); the bytes before `at` were written
        // by the earlier pieces. So the first `at + received` bytes are
        // initialized.
        unsafe { assembly.bytes.set_len(at + received) };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(tag: i32, len: u64) -> Vec<u8> {
        let mut head = tag.to_le_bytes().to_vec();
        head.extend_from_slice(&len.to_le_bytes());
        head
    }

    #[test]
    fn an_honest_head_is_taken() {
        let len = PIECE_MIN as u64 + 1;
        assert_eq!(
            parse_head(&head(3, len), None, Some(1 << 30)),
            Ok((3, len as usize))
        );
        // Memory unknown: any length this machine can address.
        assert_eq!(parse_head(&head(2, 1 << 40), None, None), Ok((2, 1 << 40)));
    }

    #[test]
    fn a_head_that_cannot_be_put_together_is_refused() {
        for short in [&[][..], &[1, 2, 3, 4, 5], &head(1, 1 << 20)[..11]] {
            assert_eq!(
                parse_head(short, None, None),
                Err(Refusal::MalformedHead { len: short.len() })
            );
        }
        let mut long = head(1, 1 << 20);
        long.push(0);
        assert_eq!(
            parse_head(&long, None, None),
            Err(Refusal::MalformedHead { len: 13 })
        );
        for len in [0, 1, PIECE_MIN as u64] {
            assert_eq!(
                parse_head(&head(1, len), None, None),
                Err(Refusal::TooShort { len })
            );
        }
        assert_eq!(
            parse_head(&head(1, 1 << 20), Some((5000, 9000)), None),
            Err(Refusal::HeadBeforeWhole {
                len: 1 << 20,
                have: 5000,
                of: 9000
            })
        );
        assert_eq!(
            parse_head(&head(1, (1 << 30) + 1), None, Some(1 << 30)),
            Err(Refusal::TooLarge {
                len: (1 << 30) + 1,
                memory: 1 << 30
            })
        );
        assert_eq!(
            parse_head(&head(1, u64::MAX), None, Some(1 << 30)),
            Err(Refusal::TooLarge {
                len: u64::MAX,
                memory: 1 << 30
            })
        );
        // Each refusal says what came, for the message that ends the job.
        let text = Refusal::HeadBeforeWhole {
            len: 7,
            have: 1,
            of: 2,
        }
        .to_string();
        assert!(
            text.contains("7 bytes") && text.contains("1 of its 2"),
            "{text}"
        );
    }

    #[test]
    fn the_grace_runs_from_the_last_progress() {
        let grace = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // Nothing moved since the wait began: it runs out past the grace.
        assert!(!stalled_at(at(2), t0, at(0), grace));
        assert!(stalled_at(at(3), t0, at(0), grace));
        // Progress before the wait does not shorten it.
        assert!(!stalled_at(at(11), at(10), at(0), grace));
        // A transfer that keeps moving is waited out, however long in all.
        assert!(!stalled_at(at(100), t0, at(99), grace));
        assert!(stalled_at(at(102), t0, at(99), grace));
        // A grace too long to reach never runs out.
        assert!(!stalled_at(at(1000), t0, t0, Duration::MAX));
    }

    #[test]
    fn only_a_piece_that_fits_its_message_is_taken() {
        assert_eq!(check_piece(Some((0, 10_000)), 4096), Ok(()));
        assert_eq!(check_piece(Some((4096, 10_000)), 5904), Ok(()));
        assert_eq!(
            check_piece(None, 4096),
            Err(Refusal::NoMessage { piece: 4096 })
        );
        assert_eq!(
            check_piece(Some((4096, 10_000)), 5905),
            Err(Refusal::PieceMisfits {
                piece: 5905,
                have: 4096,
                of: 10_000
            })
        );
        assert_eq!(
            check_piece(Some((4096, 10_000)), 0),
            Err(Refusal::PieceMisfits {
                piece: 0,
                have: 4096,
                of: 10_000
            })
        );
        assert_eq!(
            check_piece(Some((usize::MAX, usize::MAX)), 1),
            Err(Refusal::PieceMisfits {
                piece: 1,
                have: usize::MAX,
                of: usize::MAX
            })
        );
    }
}
