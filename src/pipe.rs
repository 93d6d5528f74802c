//! [`Pipe`]: two connected ends between two processes, Python's
//! `multiprocessing.Pipe`, over shared-memory [`Queue`]s instead of a socket.
//!
//! Each direction is a [`Queue`]. A small control segment records which
//! process holds each end: the creator at first, then whichever process
//! decodes the end it was sent (an end in transit belongs to nobody).
//! Dropping an end in the process that holds it closes it; the other end then
//! reads what is left and gets [`Error::EndOfStream`]. If the process holding
//! an end dies, the other end notices within a few milliseconds of waiting
//! and gets the same error: no call blocks on a dead peer.

use crate::error::{Error, Result};
use crate::handle::{process_is_dead, type_tag, SharedSegment};
use crate::queue::Queue;
use crate::wire::{decode_error, Wire};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An end's holder word: a pid, or one of these.
const IN_TRANSIT: u32 = 0;
const CLOSED: u32 = u32::MAX;

/// How often a waiting end checks whether its peer died.
const PEER_CHECK: Duration = Duration::from_millis(5);

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
///     corepool::init();
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
    pub fn duplex<T: Wire>() -> Result<(PipeEnd<T>, PipeEnd<T>)> {
        Self::with_capacity(64, 4096, true)
    }

    /// `(receiver, sender)`: the first end only receives, the second only
    /// sends (Python's `Pipe(duplex=False)`).
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`].
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
        };
        let second = PipeEnd {
            side: 1,
            send: Some(to_first),
            recv: to_second,
            control,
        };
        // Release pairs with the Acquire loads in `peer_gone`.
        first.holder(0).store(me, Ordering::Release);
        first.holder(1).store(me, Ordering::Release);
        Ok((first, second))
    }
}

/// One end of a [`Pipe`] (Python's `Connection`).
pub struct PipeEnd<T> {
    side: u8,
    send: Option<Queue<T>>,
    recv: Option<Queue<T>>,
    control: Arc<SharedSegment>,
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

impl<T> PipeEnd<T> {
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

    /// Whether the other end was closed: one atomic load, cheap enough for
    /// every call.
    fn peer_closed(&self) -> bool {
        // Acquire pairs with the Release stores of holders.
        self.holder(1 - self.side).load(Ordering::Acquire) == CLOSED
    }

    /// Whether the other end is gone: closed, or its process died. Reads
    /// `/proc`, so only checked after waiting a while.
    fn peer_gone(&self) -> bool {
        // Acquire pairs with the Release stores of holders.
        match self.holder(1 - self.side).load(Ordering::Acquire) {
            CLOSED => true,
            IN_TRANSIT => false,
            pid => process_is_dead(pid as i32),
        }
    }
}

impl<T: Wire> PipeEnd<T> {
    /// Sends `value` (Python's `send`), waiting while the pipe is full.
    ///
    /// # Errors
    ///
    /// [`Error::EndOfStream`] if the other end is closed or its process died;
    /// [`Error::InvalidConfig`] on the receive-only end of a one-way pipe;
    /// [`Error::ArgumentTooLarge`].
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
        self.recv_until(crate::park::deadline_after(timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T> {
        let q = self.recv.as_ref().ok_or_else(|| Error::InvalidConfig {
            what: "this end of a one-way pipe only sends: receive on the other end".into(),
        })?;
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

    /// Closes this end: the other end reads what is left, then gets
    /// [`Error::EndOfStream`]. Dropping the end in the process that holds it
    /// does the same.
    pub fn close(&self) {
        self.holder(self.side).store(CLOSED, Ordering::Release);
        if let Some(q) = &self.send {
            q.close();
        }
    }
}

thread_local! {
    /// Ends encoded on this thread since the last `take_transfers`: the
    /// caller that knows which process receives them assigns it at once.
    static TRANSFERS: std::cell::RefCell<Vec<(Arc<SharedSegment>, u8)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Takes the ends encoded on this thread since the last call.
pub(crate) fn take_transfers() -> Vec<(Arc<SharedSegment>, u8)> {
    TRANSFERS.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// Records that `pid` now holds the ends in `transfers` (a `Process` that
/// was just started with them), so that its death is seen even if it dies
/// before it first touches them.
pub(crate) fn assign_transfers(transfers: &[(Arc<SharedSegment>, u8)], pid: i32) {
    for (control, side) in transfers {
        if let Some(p) = control.segment().at(usize::from(*side) * 4, 4) {
            // SAFETY: in bounds, 4-aligned, lives as long as `control`.
            let word = unsafe { AtomicU32::from_ptr(p.cast()) };
            let _ =
                word.compare_exchange(IN_TRANSIT, pid as u32, Ordering::AcqRel, Ordering::Acquire);
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
        let me = crate::sys::current_pid();
        // Only the process holding the end closes it: a copy dropped after
        // sending the end elsewhere leaves it open.
        if self
            .holder(self.side)
            .compare_exchange(me, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Some(q) = &self.send {
                q.close();
            }
        }
    }
}

impl<T: Wire> Wire for PipeEnd<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        // In transit: nobody holds it until a process decodes it, so the
        // sender dropping its copy does not close it.
        let me = crate::sys::current_pid();
        let _ = self.holder(self.side).compare_exchange(
            me,
            IN_TRANSIT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        TRANSFERS.with(|t| t.borrow_mut().push((self.control.clone(), self.side)));
        out.push(self.side);
        self.send.encode(out);
        self.recv.encode(out);
        self.control.encode(type_tag::<PipeEnd<T>>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let side = u8::decode(input)?;
        if side > 1 {
            return Err(decode_error::<Self>("bad side"));
        }
        let send = Option::<Queue<T>>::decode(input)?;
        let recv = Option::<Queue<T>>::decode(input)?;
        let (control, _) =
            SharedSegment::decode::<Self>(input, type_tag::<PipeEnd<T>>(), |_| Some(64))?;
        let end = Self {
            side,
            send,
            recv,
            control,
        };
        // Release pairs with the Acquire loads in `peer_gone`.
        let _ = end.holder(side).compare_exchange(
            IN_TRANSIT,
            std::process::id(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        Ok(end)
    }
}
