//! [`Encoder`]: where a value's encoding goes, together with everything the
//! encoding needs from its sender (shared objects to keep alive, pipe ends
//! handed over, a failure), so that whoever sends the bytes takes those from
//! the same place and none is left behind in a thread-local.

use crate::error::{Error, Result};
use crate::wire::{catch_encode_panic, Payload, Wire};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Objects an encoding refers to and that must outlive it in flight (the
/// memory behind a [`crate::SharedArray`] passed by value).
pub(crate) type KeepAlive = Vec<Arc<dyn Any + Send + Sync>>;

/// Something an encoding hands over to whichever process decodes it (one end
/// of a [`crate::Pipe`]): the sender learns the receiver's pid when it starts
/// it, and records it at once; a carrier that ends without delivering the
/// bytes (a cancelled task) gives it back.
///
/// Both act only on the transit this encoding started: once a process has
/// decoded the bytes (and perhaps handed the end on), they do nothing.
pub(crate) trait Handover: Send + Sync {
    /// The encoding was delivered to process `pid`.
    fn delivered_to(&self, pid: i32);

    /// The encoding will never be delivered: its carrier was dropped,
    /// cancelled or failed (called by [`InFlight`], in the sender).
    fn undelivered(&self);

    /// Process `pid`, which the encoding was [delivered
    /// to](Self::delivered_to), has exited and been reaped (a definite
    /// death, known to its parent): what it still holds of this transit is
    /// closed on its behalf, whatever `/proc` could say of a pid that may
    /// now be another process's.
    fn holder_exited(&self, pid: i32);
}

/// Handovers whose carrier's fate is known to the sender (a pool task, a
/// `Process` being started): unless [`delivered_to`](Self::delivered_to) is
/// called, dropping it calls [`Handover::undelivered`] on each, which does
/// nothing for those a process decoded meanwhile. Carriers that cannot tell
/// (a value put into a [`crate::Queue`], bytes encoded by hand) leave the
/// handovers to whoever decodes the bytes, as plain [`Carried::handovers`].
pub(crate) struct InFlight(Vec<Box<dyn Handover>>);

impl InFlight {
    /// Takes charge of `handovers`.
    pub(crate) fn new(handovers: Vec<Box<dyn Handover>>) -> Self {
        Self(handovers)
    }

    /// The carrier reached process `pid`; returns the handovers, for
    /// [`Handover::holder_exited`] once that process is reaped.
    pub(crate) fn delivered_to(mut self, pid: i32) -> Vec<Box<dyn Handover>> {
        let handovers = std::mem::take(&mut self.0);
        for handover in &handovers {
            handover.delivered_to(pid);
        }
        handovers
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for handover in &self.0 {
            handover.undelivered();
        }
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InFlight").field(&self.0.len()).finish()
    }
}

/// One shared object's handle written into an encoding: the object counts
/// it as in flight from the moment it is written (so that it stays alive for
/// the receiver, see `shm::handle`), and [`abandon`](Self::abandon) takes
/// that back when the bytes are never sent.
pub(crate) trait Transit: Send + Sync {
    /// The bytes holding this handle will not be sent after all.
    fn abandon(&self);
}

/// The transits an encoding started, taken back on drop unless the bytes
/// were [`sent`](Self::sent): an encoding that fails, or whose `put` finds
/// the queue closed, leaves no count behind.
#[derive(Default)]
pub(crate) struct Transits(Vec<Arc<dyn Transit>>);

impl Transits {
    /// The bytes went out (into a ring, a queue slot, a process segment):
    /// their receiver ends each transit by decoding its handle.
    #[inline]
    pub(crate) fn sent(&mut self) {
        self.0.clear();
    }

    /// How many transits are pending.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Takes `other`'s transits into these.
    pub(crate) fn append(&mut self, other: &mut Transits) {
        self.0.append(&mut other.0);
    }
}

impl Drop for Transits {
    #[inline]
    fn drop(&mut self) {
        if !self.0.is_empty() {
            self.abandon_all();
        }
    }
}

impl Transits {
    #[cold]
    fn abandon_all(&mut self) {
        for transit in self.0.drain(..) {
            transit.abandon();
        }
    }
}

/// What an encoded value carries besides its bytes: taken from the
/// [`Encoder`] by whoever sends the bytes, and held as long as they are in
/// flight.
#[derive(Default)]
pub(crate) struct Carried {
    /// Objects the bytes refer to.
    pub(crate) keep: KeepAlive,
    /// Ends handed over to the receiver.
    pub(crate) handovers: Vec<Box<dyn Handover>>,
    /// Shared objects' handles the bytes hold: abandoned when dropped
    /// unless marked [`Transits::sent`].
    pub(crate) transits: Transits,
}

impl Carried {
    /// The bytes went out: their receiver ends the transits they started.
    #[inline]
    pub(crate) fn sent(&mut self) {
        self.transits.sent();
    }

    /// The bytes will not go out after all: the pipe ends they handed over
    /// go back to their senders (the transits are taken back on drop).
    pub(crate) fn not_sent(&mut self) {
        if !self.handovers.is_empty() {
            drop(InFlight::new(std::mem::take(&mut self.handovers)));
        }
    }

    /// What a pool task must hold until its outcome: the kept objects, the
    /// handovers in an [`InFlight`], so that a task that ends before a
    /// worker decoded its argument gives its pipe ends back, and the
    /// transits in a [`TaskTransits`], taken back likewise unless a worker
    /// took the task ([`mark_delivered`]).
    pub(crate) fn into_keep_alive(mut self) -> KeepAlive {
        let transits = std::mem::take(&mut self.transits);
        let mut keep = std::mem::take(&mut self.keep);
        if transits.len() > 0 {
            keep.push(Arc::new(TaskTransits {
                transits: std::sync::Mutex::new(transits),
                delivered: std::sync::atomic::AtomicBool::new(false),
            }));
        }
        let handovers = std::mem::take(&mut self.handovers);
        if !handovers.is_empty() {
            keep.push(Arc::new(InFlight::new(handovers)));
        }
        keep
    }
}

/// The transits of a pool submission's arguments, held with its tasks:
/// taken back when the last task goes, unless a worker took one of them
/// (then its decode ended them). A map's chunks share one: if a worker took
/// any chunk, the transits of chunks cancelled before a worker took them
/// are not taken back (their objects linger in the sender, within the
/// lingering bound, instead of being let go early).
pub(crate) struct TaskTransits {
    transits: std::sync::Mutex<Transits>,
    delivered: std::sync::atomic::AtomicBool,
}

impl Drop for TaskTransits {
    fn drop(&mut self) {
        if self.delivered.load(std::sync::atomic::Ordering::Relaxed) {
            crate::sync::lock(&self.transits).sent();
        }
        // Otherwise dropping `transits` unsent takes them back.
    }
}

/// A worker took a task holding `keep` (it decodes, or decoded, its
/// arguments).
pub(crate) fn mark_delivered(keep: &KeepAlive) {
    for object in keep {
        if let Some(t) = (**object).downcast_ref::<TaskTransits>() {
            // Relaxed: read in `Drop`, after the last holder let go (the
            // `Arc`'s own synchronisation orders the two).
            t.delivered
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Carried")
            .field("keep", &self.keep.len())
            .field("handovers", &self.handovers.len())
            .field("transits", &self.transits.len())
            .finish()
    }
}

/// The output of [`Wire::encode`]: the encoded bytes, plus what the encoding
/// needs from its sender.
///
/// It dereferences to the `Vec<u8>` of bytes, so an implementation appends
/// with `out.push(..)` and `out.extend_from_slice(..)` and encodes its fields
/// with `field.encode(out)`. A value that cannot be encoded says so with
/// [`fail`](Self::fail) instead of panicking: the call that was sending it
/// ([`crate::Queue::put`], a task submission, ...) then returns
/// [`Error::Encode`] and sends nothing. Encoding shared objects
/// ([`crate::SharedArray`], [`crate::Queue`], a [`crate::PipeEnd`], ...)
/// also records, in the encoder, what must stay alive while the bytes are in
/// flight; corepool's senders take that from the encoder with the bytes.
///
/// A hand-written `Wire` impl:
///
/// ```
/// use corepool::{Encoder, Error, Wire};
///
/// /// A temperature in hundredths of a degree, at least absolute zero.
/// #[derive(Debug, PartialEq)]
/// struct Celsius(i32);
///
/// impl Wire for Celsius {
///     fn encode(&self, out: &mut Encoder) {
///         if self.0 < -27315 {
///             // The sender's `put` or `apply` returns `Error::Encode`.
///             out.fail::<Self>(format!("{} is below absolute zero", self.0));
///             return;
///         }
///         self.0.encode(out); // or: out.extend_from_slice(&self.0.to_le_bytes())
///     }
///
///     fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
///         i32::decode(input).map(Celsius)
///     }
/// }
///
/// let mut out = Encoder::new();
/// Celsius(2150).encode(&mut out);
/// let bytes = out.finish().unwrap();
/// assert_eq!(Celsius::decode(&mut bytes.as_slice()).unwrap(), Celsius(2150));
///
/// let mut out = Encoder::new();
/// Celsius(-30000).encode(&mut out);
/// assert!(matches!(out.finish(), Err(Error::Encode { .. })));
/// ```
#[derive(Default)]
pub struct Encoder {
    bytes: Vec<u8>,
    carried: Carried,
    failure: Option<Error>,
    /// Levels of `#[derive(Wire)]` types being encoded into it (see
    /// [`__enter_level`](Self::__enter_level)).
    depth: u32,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("bytes", &self.bytes.len())
            .field("carried", &self.carried)
            .field("failure", &self.failure)
            .field("depth", &self.depth)
            .finish()
    }
}

impl std::ops::Deref for Encoder {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl std::ops::DerefMut for Encoder {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
}

impl Encoder {
    /// An empty encoder (allocates nothing until something is written).
    ///
    /// ```
    /// use corepool::{Encoder, Wire};
    /// let mut out = Encoder::new();
    /// assert!(out.is_empty());
    /// 3u32.encode(&mut out);
    /// assert_eq!(out.finish()?, 3u32.to_le_bytes());
    /// # Ok::<(), corepool::Error>(())
    /// ```
    pub const fn new() -> Self {
        Self {
            bytes: Vec::new(),
            carried: Carried {
                keep: Vec::new(),
                handovers: Vec::new(),
                transits: Transits(Vec::new()),
            },
            failure: None,
            depth: 0,
        }
    }

    /// Records that the value being encoded, of type `T`, cannot be encoded,
    /// and why. The first failure is the one reported; the bytes written so
    /// far are worthless once an encoding failed, and are never sent.
    ///
    /// A hand-written [`Wire`](crate::Wire) impl calls it for a value it
    /// cannot represent; the task or message carrying the value then fails
    /// with [`Error::Encode`] naming `T` and the reason, before anything is
    /// sent:
    ///
    /// ```
    /// use corepool::{Encoder, Error, Wire};
    ///
    /// /// A count the wire format keeps in 16 bits.
    /// struct Small(u32);
    ///
    /// impl Wire for Small {
    ///     fn encode(&self, out: &mut Encoder) {
    ///         match u16::try_from(self.0) {
    ///             Ok(v) => v.encode(out),
    ///             Err(_) => out.fail::<Self>(format!("{} does not fit in 16 bits", self.0)),
    ///         }
    ///     }
    ///     fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
    ///         Ok(Small(u16::decode(input)?.into()))
    ///     }
    /// }
    ///
    /// let mut out = Encoder::new();
    /// Small(70_000).encode(&mut out);
    /// assert!(matches!(out.failure(), Some(Error::Encode { .. })));
    /// let err = out.finish().unwrap_err();
    /// assert!(err.to_string().contains("does not fit in 16 bits"));
    /// ```
    pub fn fail<T: ?Sized>(&mut self, reason: impl Into<String>) {
        if self.failure.is_none() {
            self.failure = Some(Error::Encode {
                type_name: std::any::type_name::<T>(),
                reason: reason.into(),
            });
        }
    }

    /// The failure recorded by [`fail`](Self::fail), if any: a `Wire` impl
    /// of a container may check it to stop encoding the rest early.
    ///
    /// ```
    /// let mut out = corepool::Encoder::new();
    /// assert!(out.failure().is_none());
    /// out.fail::<u8>("not today");
    /// out.fail::<u8>("the first failure is the one kept");
    /// assert!(out.failure().unwrap().to_string().contains("not today"));
    /// ```
    pub fn failure(&self) -> Option<&Error> {
        self.failure.as_ref()
    }

    /// Called first by every `#[derive(Wire)]` `encode`: enters one more
    /// level of nesting of `T` and returns `true`, or returns `false` (the
    /// encoding has failed: skip the value) when that is more levels than a
    /// receiver decodes, or once the encoding has failed otherwise. Each
    /// `true` is matched by a [`__leave_level`](Self::__leave_level) at the
    /// end of that `encode` (a panic in between leaves the count high, and
    /// the encoding is worthless then anyway: corepool records the panic as
    /// its failure). Not an API: the derive macro's, kept here so that the
    /// generated code names nothing but `Encoder`. The count lives in the
    /// encoder, not a thread-local: it costs a `Vec` of a million small
    /// derived values nothing measurable.
    #[doc(hidden)]
    #[inline]
    pub fn __enter_level<T: ?Sized>(&mut self) -> bool {
        if self.failure.is_some() {
            return false;
        }
        if self.depth >= crate::wire::MAX_NESTING {
            crate::wire::nesting::fail_too_deep::<T>(self);
            return false;
        }
        self.depth += 1;
        true
    }

    /// Ends the level a `true` [`__enter_level`](Self::__enter_level)
    /// entered. Not an API.
    #[doc(hidden)]
    #[inline]
    pub fn __leave_level(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Called first by every `#[derive(Wire)]` `decode`: one more level of
    /// nesting of `T`, held until the result drops, or [`Error::Decode`]
    /// when the value nests too deeply. Not an API, as
    /// [`__enter_level`](Self::__enter_level).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming `T` past the nesting limit.
    #[doc(hidden)]
    #[inline]
    pub fn __enter_decode_level<T: ?Sized>() -> Result<impl Sized> {
        crate::wire::nesting::decode_level::<T>()
    }

    /// The encoded bytes, or the failure recorded while encoding.
    ///
    /// Encoding a shared object (a [`crate::SharedArray`], ...) by hand this
    /// way keeps nothing alive: the receiver can open it only while the
    /// sender still holds it.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if a value could not be encoded.
    ///
    /// ```
    /// use corepool::{Encoder, Wire};
    /// let mut out = Encoder::new();
    /// (1u8, String::from("x")).encode(&mut out);
    /// let bytes = out.finish()?;
    /// assert_eq!(<(u8, String)>::decode(&mut bytes.as_slice())?, (1, "x".to_string()));
    /// # Ok::<(), corepool::Error>(())
    /// ```
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.check()?;
        Ok(self.bytes)
    }

    /// An encoder writing after the bytes already in `bytes` (a recycled
    /// buffer, or a prefix).
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            ..Self::new()
        }
    }

    /// Called while encoding: keep `value` alive as long as the encoding is
    /// in flight.
    pub(crate) fn keep_alive(&mut self, value: Arc<dyn Any + Send + Sync>) {
        self.carried.keep.push(value);
    }

    /// Called while encoding: a shared object's handle was written; `transit`
    /// takes its in-flight count back if the bytes are never sent.
    pub(crate) fn started_transit(&mut self, transit: Arc<dyn Transit>) {
        self.carried.transits.0.push(transit);
    }

    /// Called while encoding: `handover` goes to whichever process decodes
    /// these bytes.
    pub(crate) fn hand_over(&mut self, handover: Box<dyn Handover>) {
        self.carried.handovers.push(handover);
    }

    /// `Err` with the recorded failure, if any (taking it, so that the
    /// encoder can be reused). Bytes that failed are never sent: what they
    /// handed over goes back to its senders.
    pub(crate) fn check(&mut self) -> Result<()> {
        match self.failure.take() {
            Some(e) => {
                drop(InFlight::new(std::mem::take(&mut self.carried.handovers)));
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Takes what the encoding carries besides its bytes.
    pub(crate) fn take_carried(&mut self) -> Carried {
        std::mem::take(&mut self.carried)
    }

    /// Takes the bytes, leaving the encoder without a buffer.
    pub(crate) fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// Empties it for the next value, keeping the bytes' capacity.
    pub(crate) fn reset(&mut self) {
        self.bytes.clear();
        self.carried = Carried::default();
        self.failure = None;
        self.depth = 0;
    }
}

thread_local! {
    /// A reused encoder per thread: a small value costs no allocation.
    static SCRATCH: std::cell::RefCell<Encoder> = const { std::cell::RefCell::new(Encoder::new()) };
}

/// The most scratch memory a thread keeps between encodes.
const SCRATCH_KEEP: usize = 64 << 10;

/// Runs `f` on an empty encoder: this thread's reused one, or a fresh one if
/// re-entered from inside an encode (a `Wire` impl that submits tasks).
fn with_scratch<R>(f: impl FnOnce(&mut Encoder) -> R) -> R {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut enc) => {
            enc.reset();
            let result = f(&mut enc);
            if enc.capacity() > SCRATCH_KEEP {
                // A one-off large value: do not hold its memory per thread.
                *enc = Encoder::new();
            } else {
                // Nothing the value referred to outlives the call here.
                enc.reset();
            }
            result
        }
        Err(_) => f(&mut Encoder::new()),
    })
}

/// Encodes `value` into a [`Payload`] (through a reused scratch buffer, so a
/// small value costs no allocation and a large one exactly one), with what
/// the encoding carries.
///
/// # Errors
///
/// [`Error::Encode`] if the value could not be encoded.
pub(crate) fn encode_payload<T: Wire>(value: &T) -> Result<(Payload, Carried)> {
    with_scratch(|enc| {
        encode_guarded(value, enc);
        enc.check()?;
        let payload = if enc.len() <= Payload::INLINE {
            Payload::from_slice(enc)
        } else {
            Payload::from_vec(enc.take_bytes())
        };
        Ok((payload, enc.take_carried()))
    })
}

/// As [`encode_payload`], except that a value whose encoding is longer than
/// `max` goes to `spill` instead, as the start of its encoding and the rest
/// borrowed from the value ([`Wire::encode_split`]): a large vector of plain
/// numbers is then copied once, by `spill`, rather than into an encoding
/// first. The payload is then what `spill` returned (the spill's handle),
/// with what it holds. A value up to `max` costs what [`encode_payload`]
/// costs.
///
/// # Errors
///
/// [`Error::Encode`] if the value could not be encoded; `spill`'s errors
/// (what the encoding handed over then goes back to its senders).
pub(crate) fn encode_payload_or_spill<T: Wire, H>(
    value: &T,
    max: usize,
    spill: impl FnOnce(&[u8], &[u8]) -> Result<(Vec<u8>, H)>,
) -> Result<(Payload, Carried, Option<H>)> {
    with_scratch(|enc| {
        let rest = encode_split_guarded(value, enc);
        enc.check()?;
        if enc.len() + rest.len() > max {
            let mut carried = enc.take_carried();
            return match spill(enc, rest) {
                Ok((handle, held)) => Ok((Payload::from_slice(&handle), carried, Some(held))),
                Err(e) => {
                    carried.not_sent();
                    Err(e)
                }
            };
        }
        enc.extend_from_slice(rest);
        let payload = if enc.len() <= Payload::INLINE {
            Payload::from_slice(enc)
        } else {
            Payload::from_vec(enc.take_bytes())
        };
        Ok((payload, enc.take_carried(), None))
    })
}

/// Runs `f` on the encoding of `value`, split ([`Wire::encode_split`]),
/// and what it carries: `f` gets the encoder holding the encoding's start,
/// made in a reused thread-local buffer (no allocation once the buffer has
/// grown to the values' size, up to [`SCRATCH_KEEP`]), and the rest,
/// borrowed from the value; it joins them (appending the rest to the
/// encoder) if it needs the whole, or copies the two parts to where they go
/// (a spill) without an encoding copy first. `f` is not called if the value
/// could not be encoded.
///
/// # Errors
///
/// [`Error::Encode`] if the value could not be encoded; `f`'s errors.
pub(crate) fn with_split_encoding<T: Wire, R>(
    value: &T,
    f: impl FnOnce(&mut Encoder, &[u8], Carried) -> Result<R>,
) -> Result<R> {
    with_scratch(|enc| {
        let rest = encode_split_guarded(value, enc);
        enc.check()?;
        let carried = enc.take_carried();
        f(enc, rest, carried)
    })
}

/// Encodes `value` into a fresh buffer, with what it carries.
///
/// # Errors
///
/// [`Error::Encode`] if the value could not be encoded.
pub(crate) fn encode_carried<T: Wire>(value: &T) -> Result<(Vec<u8>, Carried)> {
    let mut enc = Encoder::new();
    encode_guarded(value, &mut enc);
    enc.check()?;
    let carried = enc.take_carried();
    Ok((enc.bytes, carried))
}

/// Encodes `value` into `out`; a user's `Wire` code that panics meanwhile
/// is recorded in `out` as an [`Error::Encode`] naming `T` (so that
/// [`Encoder::check`] returns it) instead of unwinding into the caller.
pub(crate) fn encode_guarded<T: Wire>(value: &T, out: &mut Encoder) {
    catch_encode_panic::<T, _>(out, |out| value.encode(out));
}

/// As [`encode_guarded`], for the items of a slice ([`Wire::encode_slice`],
/// the body of a `map` chunk).
pub(crate) fn encode_slice_guarded<T: Wire>(items: &[T], out: &mut Encoder) {
    catch_encode_panic::<T, _>(out, |out| T::encode_slice(items, out));
}

/// As [`encode_guarded`], for [`Wire::encode_split`]: the rest of the
/// encoding, borrowed from `value` (empty if it panicked).
fn encode_split_guarded<'v, T: Wire>(value: &'v T, out: &mut Encoder) -> &'v [u8] {
    catch_encode_panic::<T, _>(out, |out| value.encode_split(out)).unwrap_or(&[])
}

/// The bytes of `value` (tests only: what it carries is dropped).
#[cfg(test)]
pub(crate) fn encode_to_vec<T: Wire>(value: &T) -> Vec<u8> {
    encode_carried(value).expect("encodes").0
}
