//! [`Pipe`]: two connected ends between two processes, Python's
//! `multiprocessing.Pipe`, over shared-memory [`Queue`]s instead of a socket.
//!
//! Each direction is a [`Queue`]. A small control segment records which
//! process holds each end: the creator at first, then whichever process
//! decodes the end it was sent (an end in transit belongs to nobody). Each
//! transit has its own generation, so only the carrier of the current transit
//! can end it: an end whose carrier never delivers it (a cancelled pool task)
//! returns to its sender, or is closed if the sender no longer has it.
//! Dropping an end in the process that holds it closes it; the other end then
//! reads what is left and gets [`Error::EndOfStream`]. If the process holding
//! an end dies, the other end notices within a few milliseconds of waiting
//! and gets the same error: no call blocks on a dead peer.

use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::shm::handle::{type_tag, SharedSegment};
use crate::shm::owner::{self, recorded_holder_is_dead, OwnerTag};
use crate::wire::{decode_error, Encoder, Handover, Wire};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An end's holder word: a pid (below `IN_TRANSIT`), `CLOSED`, or
/// `IN_TRANSIT | generation` while the end is in transit: each transit its
/// own generation, so that a late CAS meant for an earlier transit fails.
const IN_TRANSIT: u32 = 1 << 31;
const CLOSED: u32 = u32::MAX;
/// Generations wrap below this, so that no transit word is `CLOSED`.
const GENERATIONS: u32 = CLOSED - IN_TRANSIT;
/// In an encoding: this encoding did not put the end in transit (its sender
/// did not hold it), so whoever decodes it does not become its holder.
const NOT_HANDED_OVER: u32 = 0;

/// Whether holder word `word` says "in transit".
const fn is_in_transit(word: u32) -> bool {
    word & IN_TRANSIT != 0 && word != CLOSED
}

/// How often a waiting end checks whether its peer died.
const PEER_CHECK: Duration = Duration::from_millis(5);

/// Nanoseconds since this process first asked: a clock that fits an atomic.
fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Creates connected ends.
///
/// ```
/// use corepool::{Pipe, PipeEnd, Process};
///
/// fn echo(end: PipeEnd<String>) {
///     while let Ok(msg) = end.recv() {
///         end.send(&msg.to_uppercase()).unwrap();
///     }
/// }
///
/// fn main() {
///     let (mine, theirs) = Pipe::duplex::<String>().unwrap();
///     let child = Process::start(echo, theirs).unwrap();
///     mine.send(&"ping".to_string()).unwrap();
///     assert_eq!(mine.recv().unwrap(), "PING");
///     drop(mine); // end of stream for the child, which returns
///     child.join().unwrap();
/// }
/// ```
#[derive(Debug)]
pub struct Pipe;

impl Pipe {
    /// Two ends that both send and receive (Python's `Pipe()`), with room for
    /// 64 values of up to 4 KiB encoded each way.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::Pipe;
    ///
    /// let (a, b) = Pipe::duplex::<u64>().unwrap();
    /// a.send(&1).unwrap();
    /// b.send(&2).unwrap();
    /// assert_eq!((b.recv().unwrap(), a.recv().unwrap()), (1, 2));
    /// ```
    pub fn duplex<T: Wire>() -> Result<(PipeEnd<T>, PipeEnd<T>)> {
        Self::with_capacity(64, 4096, true)
    }

    /// `(receiver, sender)`: the first end only receives, the second only
    /// sends (Python's `Pipe(duplex=False)`).
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Pipe};
    ///
    /// let (rx, tx) = Pipe::one_way::<u64>().unwrap();
    /// tx.send(&1).unwrap();
    /// assert_eq!(rx.recv().unwrap(), 1);
    /// assert!(matches!(rx.send(&2), Err(Error::InvalidConfig { .. })));
    /// ```
    pub fn one_way<T: Wire>() -> Result<(PipeEnd<T>, PipeEnd<T>)> {
        Self::with_capacity(64, 4096, false)
    }

    /// Connected ends with room for `capacity` values of up to
    /// `message_bytes` encoded bytes in each direction. As with
    /// [`Queue::new`], the capacity is rounded up to the next power of two.
    ///
    /// ```
    /// use corepool::Pipe;
    ///
    /// let (a, b) = Pipe::with_capacity::<u64>(3, 64, true).unwrap();
    /// for i in 0..4 {
    ///     a.send(&i).unwrap(); // room for 4: none of these waits
    /// }
    /// assert_eq!(b.recv().unwrap(), 0);
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Queue::with_message_bytes`].
    pub fn with_capacity<T: Wire>(
        capacity: usize,
        message_bytes: usize,
        duplex: bool,
    ) -> Result<(PipeEnd<T>, PipeEnd<T>)> {
        // One-way pipes have only `to_first`: the first end receives what the
        // second sends.
        let to_first = Queue::with_message_bytes(capacity, message_bytes)?;
        let to_second = if duplex {
            Some(Queue::with_message_bytes(capacity, message_bytes)?)
        } else {
            None
        };
        let control = SharedSegment::create(c"corepool-pipe", 64)?;
        let me = crate::sys::current_pid();
        let first = PipeEnd {
            side: 0,
            send: to_second.clone(),
            recv: Some(to_first.clone()),
            control: control.clone(),
            next_peer_check: AtomicU64::new(0),
            copy_alive: Arc::new(Mutex::new(true)),
        };
        let second = PipeEnd {
            side: 1,
            send: Some(to_first),
            recv: to_second,
            control,
            next_peer_check: AtomicU64::new(0),
            copy_alive: Arc::new(Mutex::new(true)),
        };
        // Release pairs with the Acquire loads in `peer_closed`/`peer_gone`
        // and the Acquire side of the holder CASes (`Drop`, `encode`): the
        // control segment is set up before anyone reads a holder.
        first.holder_tag(0).record_mine();
        first.holder_tag(1).record_mine();
        first.holder(0).store(me, Ordering::Release);
        first.holder(1).store(me, Ordering::Release);
        Ok((first, second))
    }
}

/// One end of a [`Pipe`] (Python's `Connection`).
///
/// Pass it to a [`crate::Process`] as an argument to hand it over: the
/// process that decodes it holds it from then on, and dropping it there
/// closes it.
/// An end sent with a pool task that never gets to decode it (cancelled by
/// [`crate::Pool::terminate`], or failing on an argument before it), or with
/// a `Process` that could not be started, comes back: to the copy that sent
/// it if that copy still exists, or else it is closed, so that the other end
/// sees [`Error::EndOfStream`] instead of waiting for ever.
///
/// ```
/// use corepool::{Pipe, PipeEnd, Process};
///
/// fn double(end: PipeEnd<u64>) {
///     let n = end.recv().unwrap();
///     end.send(&(2 * n)).unwrap();
/// }
///
/// fn main() {
///     let (mine, theirs) = Pipe::duplex::<u64>().unwrap();
///     let child = Process::start(double, theirs).unwrap();
///     mine.send(&21).unwrap();
///     assert_eq!(mine.recv().unwrap(), 42);
///     child.join().unwrap();
/// }
/// ```
pub struct PipeEnd<T> {
    side: u8,
    send: Option<Queue<T>>,
    recv: Option<Queue<T>>,
    control: Arc<SharedSegment>,
    /// When `try_recv` may next read `/proc` for a dead peer (`now_ns`).
    next_peer_check: AtomicU64,
    /// `false` once this copy is dropped: an end it sent that comes back
    /// undelivered then is closed instead of returned to it
    /// (`EndInTransit::undelivered`). The lock also makes that return and
    /// this copy's `Drop` exclusive, so that one of them closes the end.
    copy_alive: Arc<Mutex<bool>>,
}

impl<T> fmt::Debug for PipeEnd<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeEnd")
            .field("side", &self.side)
            .field("sends", &self.send.is_some())
            .field("receives", &self.recv.is_some())
            .finish()
    }
}

#[cfg(feature = "fault-injection")]
impl<T> PipeEnd<T> {
    /// Clears the owner tag recorded for the other end's holder (see
    /// `testing::forget_peer_tag`).
    pub(crate) fn forget_peer_tag(&self) {
        self.holder_tag(1 - self.side).clear();
    }

    /// The segments this end shares with its peer: the control segment
    /// and its queues' (`testing::pipe_memory`).
    pub(crate) fn shared_segments(&self) -> Vec<&crate::shm::Segment> {
        let queues = self.send.iter().chain(self.recv.iter());
        std::iter::once(self.control.segment())
            .chain(queues.map(|q| q.shared_segment()))
            .collect()
    }

    /// Whether the other end is closed, in one load, without looking for a
    /// dead holder.
    pub(crate) fn peer_is_closed(&self) -> bool {
        self.peer_closed()
    }
}

impl<T> PipeEnd<T> {
    /// Closes the end if this process holds it.
    fn close_if_held(&self) {
        let me = crate::sys::current_pid();
        // Only the process holding the end closes it: a copy left after
        // sending the end elsewhere must not close it under its new holder.
        // AcqRel: Release pairs with the Acquire loads in the peer's
        // `peer_closed`/`peer_gone` (what we sent is visible once it sees
        // CLOSED); Acquire with the Release store or CAS that made us the
        // holder.
        if self.give_up_if_held(me, CLOSED) {
            if let Some(q) = &self.send {
                q.close();
            }
        }
    }

    /// Hands the end on from `me` to `next` (CLOSED or a transit word) if
    /// this process holds it, clearing our owner tag first so that the next
    /// holder never inherits it. AcqRel as the callers say.
    fn give_up_if_held(&self, me: u32, next: u32) -> bool {
        let word = self.holder(self.side);
        // Relaxed: a look at whether we hold it; only we move it away from
        // our pid while we live, and the CAS below decides.
        if word.load(Ordering::Relaxed) != me {
            return false;
        }
        self.holder_tag(self.side).clear();
        // AcqRel: see the callers (`close_if_held`, `encode`).
        word.compare_exchange(me, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The owner tag (start time) of the process whose pid `holder(side)`
    /// holds, in the control segment after the two holder words.
    fn holder_tag(&self, side: u8) -> OwnerTag<'_> {
        let p = self
            .control
            .segment()
            .at(8 + usize::from(side) * 4, 4)
            .expect("control words fit");
        // SAFETY: in bounds, 4-aligned, lives as long as `control`; every
        // process touches it only atomically.
        OwnerTag::new(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    fn holder(&self, side: u8) -> &AtomicU32 {
        let p = self
            .control
            .segment()
            .at(usize::from(side) * 4, 4)
            .expect("control words fit");
        // SAFETY: in bounds, 4-aligned, lives as long as `control`; every
        // process touches it only atomically.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    /// The count of transits of end `side`, in the control segment after the
    /// owner tags: where each transit takes its generation from.
    fn transits(&self, side: u8) -> &AtomicU32 {
        let p = self
            .control
            .segment()
            .at(16 + usize::from(side) * 4, 4)
            .expect("control words fit");
        // SAFETY: in bounds, 4-aligned, lives as long as `control`; every
        // process touches it only atomically.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    /// Whether the other end was closed: one atomic load, cheap enough for
    /// every call.
    fn peer_closed(&self) -> bool {
        // Acquire pairs with the Release of the stores and CASes that write
        // CLOSED (`close`, `Drop`, `peer_gone`): what the peer sent before
        // closing is visible once we see CLOSED.
        self.holder(1 - self.side).load(Ordering::Acquire) == CLOSED
    }

    /// Whether the other end is gone: closed, or its process died. Reads
    /// `/proc`, so only checked after waiting a while (or when a caller asks
    /// not to wait).
    ///
    /// A peer found dead is closed on its behalf, as its `Drop` would have:
    /// from then on [`peer_closed`](Self::peer_closed) sees it in one load,
    /// and waiters on our receiving queue wake with end of stream.
    fn peer_gone(&self) -> bool {
        let word = self.holder(1 - self.side);
        // Acquire pairs with the Release of every holder store and CAS
        // (creation, `decode`, `EndInTransit::delivered_to`/`undelivered`,
        // `close`, `Drop`).
        let tag = self.holder_tag(1 - self.side);
        match word.load(Ordering::Acquire) {
            CLOSED => true,
            // In transit, or 0 (never written: garbage): nobody to look at.
            w if is_in_transit(w) || w == 0 => false,
            // The tag is read after the holder word (both Acquire): it is
            // that holder's, or UNKNOWN. Below IN_TRANSIT, the word fits an
            // i32. CLOSED is final, so the tag needs no forgetting. The
            // holder may be a starting child recorded on its behalf
            // (`delivered_to`), which does not map the pipe yet: judged
            // without the object's mapping.
            pid if recorded_holder_is_dead(i32::try_from(pid).unwrap_or(-1), tag.read()) => {
                // Only from the dead pid: a dead holder never comes back (its
                // end can be handed on only by the holder itself), so the
                // word cannot have been legitimately reassigned meanwhile.
                // AcqRel: Release pairs with the Acquire loads in
                // `peer_closed`/`peer_gone`; Acquire with the Release CAS
                // that recorded the holder.
                if word
                    .compare_exchange(pid, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    if let Some(q) = &self.recv {
                        q.close();
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// The queue this end receives from.
    fn receiving(&self) -> Result<&Queue<T>> {
        self.recv.as_ref().ok_or_else(|| Error::InvalidConfig {
            what: "this end of a one-way pipe only sends: receive on the other end".into(),
        })
    }

    /// The queue this end receives from, if it receives: for waiting on it
    /// along with other things (`crate::connection::wait`).
    pub(crate) fn receiving_queue(&self) -> Option<&Queue<T>> {
        self.recv.as_ref()
    }
}

impl<T: Wire> PipeEnd<T> {
    /// Sends `value` (Python's `send`), waiting while the pipe is full.
    ///
    /// # Errors
    ///
    /// [`Error::EndOfStream`] if the other end is closed or its process died;
    /// [`Error::InvalidConfig`] on the receive-only end of a one-way pipe;
    /// [`Error::Encode`]; [`Error::SharedMemory`] when a value larger than
    /// the pipe's message size (it then travels in a one-off shared segment,
    /// as in a [`crate::Queue`]) cannot get its memory.
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Pipe};
    ///
    /// let (a, b) = Pipe::duplex::<String>().unwrap();
    /// a.send(&"hi".to_string()).unwrap();
    /// assert_eq!(b.recv().unwrap(), "hi");
    /// drop(b);
    /// assert!(matches!(a.send(&"anyone?".to_string()), Err(Error::EndOfStream)));
    /// ```
    pub fn send(&self, value: &T) -> Result<()> {
        let q = self.send.as_ref().ok_or_else(|| Error::InvalidConfig {
            what: "this end of a one-way pipe only receives: send on the other end".into(),
        })?;
        loop {
            if self.peer_closed() {
                return Err(Error::EndOfStream);
            }
            match q.put_timeout(value, PEER_CHECK) {
                // Full for a while: is anyone still reading?
                Err(Error::Timeout) if self.peer_gone() => return Err(Error::EndOfStream),
                Err(Error::Timeout) => continue,
                Err(Error::QueueClosed) => return Err(Error::EndOfStream),
                other => return other,
            }
        }
    }

    /// Receives the next value (Python's `recv`).
    ///
    /// # Errors
    ///
    /// [`Error::EndOfStream`] once the other end is closed or its process
    /// died and every value it sent was received; [`Error::InvalidConfig`] on
    /// the send-only end of a one-way pipe; [`Error::Decode`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Pipe};
    ///
    /// let (a, b) = Pipe::duplex::<u64>().unwrap();
    /// a.send(&1).unwrap();
    /// drop(a);
    /// assert_eq!(b.recv().unwrap(), 1, "sent before the close");
    /// assert!(matches!(b.recv(), Err(Error::EndOfStream)));
    /// ```
    pub fn recv(&self) -> Result<T> {
        self.recv_until(None)
    }

    /// Receives the next value, waiting at most `timeout`. A timeout too long
    /// to represent as an [`Instant`] (such as [`Duration::MAX`]) waits
    /// without limit, like [`recv`](Self::recv).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if none came in time; as [`recv`](Self::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Pipe};
    /// use std::time::Duration;
    ///
    /// let (a, b) = Pipe::duplex::<u64>().unwrap();
    /// assert!(matches!(
    ///     b.recv_timeout(Duration::from_millis(1)),
    ///     Err(Error::Timeout)
    /// ));
    /// a.send(&7).unwrap();
    /// assert_eq!(b.recv_timeout(Duration::MAX).unwrap(), 7);
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_until(crate::shm::park::deadline_after(timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T> {
        let q = self.receiving()?;
        loop {
            if let Some(v) = q.try_get().map_err(eos)? {
                return Ok(v);
            }
            if self.peer_closed() {
                // Values sent before the end was closed still count.
                return q.try_get().map_err(eos)?.ok_or(Error::EndOfStream);
            }
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // A dead peer is the end of the stream, not a
                        // timeout, even when the caller asked not to wait.
                        if self.peer_gone() {
                            return q.try_get().map_err(eos)?.ok_or(Error::EndOfStream);
                        }
                        return Err(Error::Timeout);
                    }
                    left.min(PEER_CHECK)
                }
                None => PEER_CHECK,
            };
            match q.get_timeout(slice) {
                Ok(v) => return Ok(v),
                // Nothing for a while: is anyone still sending?
                Err(Error::Timeout) if self.peer_gone() => {
                    return q.try_get().map_err(eos)?.ok_or(Error::EndOfStream);
                }
                Err(Error::Timeout) => continue,
                Err(e) => return Err(eos(e)),
            }
        }
    }

    /// Receives the next value if one is waiting, without waiting for it.
    ///
    /// `Ok(None)` means nothing is waiting and the other end may still send.
    /// A closed other end is seen at once; a dead process at the other end
    /// within a few milliseconds (finding out reads `/proc`, so a loop of
    /// `try_recv` does it at most every 5 ms). To wait for a value, use
    /// [`poll`](Self::poll) or [`recv_timeout`](Self::recv_timeout).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv): [`Error::EndOfStream`] once the other end is
    /// closed or its process died and every value it sent was received;
    /// [`Error::InvalidConfig`] on the send-only end of a one-way pipe;
    /// [`Error::Decode`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Pipe};
    ///
    /// let (a, b) = Pipe::duplex::<u64>().unwrap();
    /// assert_eq!(b.try_recv().unwrap(), None);
    /// a.send(&7).unwrap();
    /// assert_eq!(b.try_recv().unwrap(), Some(7));
    /// drop(a);
    /// assert!(matches!(b.try_recv(), Err(Error::EndOfStream)));
    /// ```
    pub fn try_recv(&self) -> Result<Option<T>> {
        let q = self.receiving()?;
        if let Some(v) = q.try_get().map_err(eos)? {
            return Ok(Some(v));
        }
        // A closed peer costs one load to see; a dead one a read of `/proc`,
        // which a caller polling in a loop must not pay on every call.
        let now = now_ns();
        // Relaxed: a rate limit, not a synchronization; `peer_gone` does its
        // own Acquire loads.
        let due = now >= self.next_peer_check.load(Ordering::Relaxed);
        if due {
            let next = now.saturating_add(PEER_CHECK.as_nanos() as u64);
            self.next_peer_check.store(next, Ordering::Relaxed);
        }
        if self.peer_closed() || (due && self.peer_gone()) {
            // Values sent before the end was closed still count.
            return q
                .try_get()
                .map_err(eos)?
                .ok_or(Error::EndOfStream)
                .map(Some);
        }
        Ok(None)
    }

    /// Waits at most `timeout` until [`recv`](Self::recv) would return
    /// without waiting (Python's `Connection.poll`); never takes a value.
    ///
    /// `Ok(true)` when a value is waiting, and also, as in Python, when the
    /// stream has ended (the other end is closed or its process died, and
    /// nothing is left): the following `recv` then returns
    /// [`Error::EndOfStream`] at once. `Ok(false)` when `timeout` passed
    /// first. `Duration::ZERO` looks without waiting; a timeout too long to
    /// represent as an [`Instant`] waits without limit. A peer that dies
    /// while this waits is noticed within a few milliseconds.
    ///
    /// Another thread of this process receiving from the same end may take
    /// the value between this call and yours.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] on the send-only end of a one-way pipe.
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Pipe};
    /// use std::time::Duration;
    ///
    /// let (a, b) = Pipe::duplex::<u64>().unwrap();
    /// assert!(!b.poll(Duration::from_millis(1)).unwrap());
    /// a.send(&7).unwrap();
    /// assert!(b.poll(Duration::ZERO).unwrap());
    /// assert_eq!(b.recv().unwrap(), 7, "poll took nothing");
    /// drop(a);
    /// assert!(b.poll(Duration::MAX).unwrap(), "end of stream");
    /// assert!(matches!(b.recv(), Err(Error::EndOfStream)));
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        let q = self.receiving()?;
        let deadline = crate::shm::park::deadline_after(timeout);
        loop {
            if q.has_value() || self.peer_closed() || q.is_closed() {
                return Ok(true);
            }
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // Last look: a dead peer is an end of stream too.
                        return Ok(q.has_value() || self.peer_gone());
                    }
                    left.min(PEER_CHECK)
                }
                None => PEER_CHECK,
            };
            match q.wait_nonempty_until(crate::shm::park::deadline_after(slice)) {
                Ok(()) | Err(Error::QueueClosed) => return Ok(true),
                // Nothing for a while: is anyone still sending?
                Err(Error::Timeout) if self.peer_gone() => return Ok(true),
                Err(Error::Timeout) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes this end: the other end reads what is left, then gets
    /// [`Error::EndOfStream`]. Dropping the end in the process that holds it
    /// does the same. In a process that has sent this end to another, it
    /// does nothing: the end is the other process's to close.
    ///
    /// ```
    /// use corepool::{Error, Pipe};
    ///
    /// let (a, b) = Pipe::duplex::<u64>().unwrap();
    /// a.close();
    /// assert!(matches!(b.recv(), Err(Error::EndOfStream)));
    /// ```
    pub fn close(&self) {
        self.close_if_held();
    }
}

/// One end in transit, as its sender's encoding carries it: whoever starts
/// the process that receives it records the new holder at once, and a carrier
/// that ends without delivering it gives it back (see [`Handover`]). Both act
/// only on this very transit (`transit`, the word the sender's encode wrote),
/// so neither can undo a later one.
struct EndInTransit<T> {
    control: Arc<SharedSegment>,
    side: u8,
    /// `IN_TRANSIT | generation`, as the sender's encode wrote it.
    transit: u32,
    /// The process that sent it (the only one that holds this handover).
    sender: u32,
    /// The sender's copy (see `PipeEnd::copy_alive`).
    copy_alive: Arc<Mutex<bool>>,
    /// The queue the end sends into, closed if the end is closed on the
    /// sender's behalf.
    send: Option<Queue<T>>,
}

impl<T> EndInTransit<T> {
    fn holder(&self) -> Option<&AtomicU32> {
        let p = self.control.segment().at(usize::from(self.side) * 4, 4)?;
        // SAFETY: in bounds, 4-aligned, lives as long as `control`; every
        // process touches it only atomically.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    fn holder_tag(&self) -> Option<OwnerTag<'_>> {
        let p = self
            .control
            .segment()
            .at(8 + usize::from(self.side) * 4, 4)?;
        // SAFETY: as in `holder`.
        Some(OwnerTag::new(unsafe { AtomicU32::from_ptr(p.cast()) }))
    }

    /// Moves the holder word from this transit to `next`: fails if the
    /// transit is over (decoded, delivered, given back) whatever came since.
    /// AcqRel: Release pairs with the Acquire loads in the peer's
    /// `peer_closed`/`peer_gone` and the Acquire side of later holder CASes;
    /// Acquire with the Release CAS in the sender's `encode`.
    fn end_transit(&self, next: u32) -> bool {
        self.holder().is_some_and(|word| {
            word.compare_exchange(self.transit, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }
}

impl<T: Wire> Handover for EndInTransit<T> {
    /// Records that `pid` now holds the end (a `Process` that was just
    /// started with it), so that its death is seen even if it dies before
    /// it first touches the end.
    fn delivered_to(&self, pid: i32) {
        // Only from this transit: the child may already have decoded the end
        // (and recorded itself), and even handed it on (a newer transit),
        // which a late marking must not undo.
        let tag = owner::start_tag_of(pid);
        let Ok(pid) = u32::try_from(pid) else { return };
        if pid != 0 && pid < IN_TRANSIT && self.end_transit(pid) {
            if let Some(t) = self.holder_tag() {
                t.record(tag);
            }
        }
    }

    /// The carrier ended without anyone decoding the end (a task cancelled
    /// or failed before its argument was decoded, a start that failed): it
    /// goes back to the sender's copy, or is closed if that copy is gone, so
    /// that the peer is never left waiting on an end nobody can hold.
    fn undelivered(&self) {
        if crate::sys::current_pid() != self.sender {
            return; // a forked copy of the carrier: not the sender's to undo
        }
        // Held while we decide, so that the copy's `Drop` either ran before
        // (and we close) or runs after (and finds itself the holder).
        let alive = crate::sync::lock(&self.copy_alive);
        if *alive {
            if self.end_transit(self.sender) {
                if let Some(t) = self.holder_tag() {
                    t.record_mine();
                }
            }
        } else if self.end_transit(CLOSED) {
            if let Some(q) = &self.send {
                q.close();
            }
        }
    }

    /// The child this end was delivered to is reaped: if the holder word
    /// still names it (it never handed the end on, and did not close it, as
    /// a SIGKILL or a crash prevents), the end is closed on its behalf now,
    /// while its death is certain. Judging the word later by pid alone
    /// could mistake a process that reused the pid for the holder when no
    /// start time was recorded.
    fn holder_exited(&self, pid: i32) {
        let Ok(pid) = u32::try_from(pid) else { return };
        if pid == 0 || pid >= IN_TRANSIT {
            return;
        }
        // Only from the dead pid: a dead holder never comes back, and the
        // end can be handed on only by its holder. AcqRel: Release pairs
        // with the Acquire loads in the peer's `peer_closed`/`peer_gone`;
        // Acquire with the Release CAS that recorded the holder.
        let closed = self.holder().is_some_and(|word| {
            word.compare_exchange(pid, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if closed {
            if let Some(q) = &self.send {
                q.close();
            }
        }
    }
}

fn eos(e: Error) -> Error {
    match e {
        Error::QueueClosed => Error::EndOfStream,
        e => e,
    }
}

impl<T> Drop for PipeEnd<T> {
    fn drop(&mut self) {
        // Under the lock an undelivered transit of ours takes (see
        // `EndInTransit::undelivered`): either it gave the end back before,
        // and we close it here, or it sees us gone and closes it itself.
        let mut alive = crate::sync::lock(&self.copy_alive);
        *alive = false;
        self.close_if_held();
        drop(alive);
        crate::shm::handle::dropping(&self.control);
    }
}

impl<T: Wire> Wire for PipeEnd<T> {
    fn encode(&self, out: &mut Encoder) {
        // In transit: nobody holds it until a process decodes it, so the
        // sender dropping its copy does not close it. Relaxed count: it only
        // has to differ from the generations around it; the CAS below
        // publishes it. AcqRel CAS: Release pairs with the Acquire side of
        // the CASes from this transit in `decode` and `EndInTransit`;
        // Acquire with the Release that made us holder.
        let me = crate::sys::current_pid();
        let generation = self.transits(self.side).fetch_add(1, Ordering::Relaxed) % GENERATIONS;
        let transit = IN_TRANSIT | generation;
        let handed_over = self.give_up_if_held(me, transit);
        if handed_over {
            out.hand_over(Box::new(EndInTransit {
                control: self.control.clone(),
                side: self.side,
                transit,
                sender: me,
                copy_alive: self.copy_alive.clone(),
                send: self.send.clone(),
            }));
        }
        out.push(self.side);
        // Whoever decodes these bytes takes over this transit, and only it.
        let carried = if handed_over {
            transit
        } else {
            NOT_HANDED_OVER
        };
        carried.encode(out);
        self.send.encode(out);
        self.recv.encode(out);
        self.control.encode(type_tag::<PipeEnd<T>>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let side = u8::decode(input)?;
        if side > 1 {
            return Err(decode_error::<Self>("bad side"));
        }
        let transit = u32::decode(input)?;
        let send = Option::<Queue<T>>::decode(input)?;
        let recv = Option::<Queue<T>>::decode(input)?;
        let (control, _) =
            SharedSegment::decode::<Self>(input, type_tag::<PipeEnd<T>>(), |_| Some(64))?;
        let end = Self {
            side,
            send,
            recv,
            control,
            next_peer_check: AtomicU64::new(0),
            copy_alive: Arc::new(Mutex::new(true)),
        };
        // Only from the transit these bytes carry (any other word, such as
        // NOT_HANDED_OVER or garbage, claims nothing): `delivered_to` may
        // have recorded us already, and a stale copy of the bytes must not
        // take over a later transit. AcqRel: Release pairs with the Acquire
        // loads in `peer_closed`/`peer_gone` and the Acquire side of the CAS
        // in our `Drop`/`encode`; Acquire with the Release CAS in the
        // sender's `encode`.
        if is_in_transit(transit)
            && end
                .holder(side)
                .compare_exchange(
                    transit,
                    crate::sys::current_pid(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            end.holder_tag(side).record_mine();
        }
        Ok(end)
    }
}
