//! How arguments and results cross between processes.
//!
//! [`Wire`] is corepool's encoding: plain numbers and slices of them are copied
//! as bytes (no serialization), everything else goes through a compact
//! length-prefixed format. Types from elsewhere join in two ways:
//!
//! * [`Plain<T>`] for any [`bytemuck::Pod`] type: copied as raw bytes, and a
//!   `Vec<Plain<T>>` as one `memcpy`;
//! * [`Serde<T>`] for any serde type, encoded with postcard.
//!
//! Decoding never trusts its input: every length is checked against the bytes
//! left, and a bad value is an [`Error::Decode`], never a panic or an
//! over-allocation.

mod budget;
mod encoder;
pub(crate) mod nesting;
mod plain;
pub(crate) mod task;

#[cfg(test)]
pub(crate) use encoder::encode_to_vec;
pub use encoder::Encoder;
pub(crate) use encoder::{
    encode_carried, encode_guarded, encode_payload, encode_payload_or_spill, encode_slice_guarded,
    mark_delivered, with_split_encoding, Carried, Handover, InFlight, KeepAlive, Transit, Transits,
};
// Named by `Wire::plain`, a hidden method of the public trait: public for
// that, but never named outside corepool (nor constructible there).
use nesting::{catch_decode_panic, catch_encode_panic, MAX_NESTING};
#[doc(hidden)]
#[allow(unreachable_pub)]
pub use plain::PlainLayout;

use crate::error::{Error, Result};
use bytemuck::{Pod, TransparentWrapper};

/// A value that can travel between the parent and its workers.
///
/// Implemented for the primitive numbers, `bool`, `char`, `()`, `String`,
/// `Vec<T>`, `VecDeque<T>`, `Box<T>`, `Option<T>`, `Result<T, E>`,
/// `HashMap`, `BTreeMap`, `HashSet`, `BTreeSet`, arrays, tuples up to 8,
/// [`Plain`], [`Serde`] and [`crate::SharedArray`]; your own types with
/// `#[derive(Wire)]`.
///
/// ```
/// use corepool::{Encoder, Wire};
/// use std::collections::HashMap;
/// let mut out = Encoder::new();
/// (7u64, String::from("seven"), vec![1.5f64, 2.5]).encode(&mut out);
/// let bytes = out.finish().unwrap();
/// let back = <(u64, String, Vec<f64>)>::decode(&mut bytes.as_slice()).unwrap();
/// assert_eq!(back, (7, "seven".to_string(), vec![1.5, 2.5]));
///
/// let counts = HashMap::from([("a".to_string(), 1u32), ("b".to_string(), 2)]);
/// let mut out = Encoder::new();
/// counts.encode(&mut out);
/// let bytes = out.finish().unwrap();
/// assert_eq!(HashMap::decode(&mut bytes.as_slice()).unwrap(), counts);
/// ```
///
/// # How deep a value may nest
///
/// A value may nest at most **128 levels** of `#[derive(Wire)]` types (a
/// recursive `struct Node { v: u64, kids: Vec<Node> }`: a chain of 128
/// nodes crosses, one of 129 does not). Decoding recurses once per level,
/// and results are decoded on threads with 2 MiB stacks (corepool's own,
/// or yours waiting in `get`), so a deeper value could overflow one and
/// abort the whole program. Instead, the sender refuses it with
/// [`Error::Encode`] before anything is sent, and the receiver refuses a
/// deeper encoding (a corrupt or hostile sender's) with [`Error::Decode`]:
/// only that task or message fails. A decode whose levels take more than
/// 1 MiB of stack (a large array inside a recursive type; debug builds
/// take several times the stack of release builds) is refused too, as is
/// a [`Serde`] value whose deserializing would.
///
/// Send deeper data flattened: the nodes in a `Vec`, each naming its
/// children by index, cross at any size and depth:
///
/// ```
/// use corepool::{Encoder, Error, Wire};
///
/// #[derive(Debug, PartialEq, Wire)]
/// struct Node { v: u64, kids: Vec<Node> }
///
/// /// The same tree, flattened: node `i` is `nodes[i]`, its kids by index.
/// #[derive(Debug, PartialEq, Wire)]
/// struct Flat { nodes: Vec<(u64, Vec<u32>)> }
///
/// let deep = (1..1000).fold(Node { v: 0, kids: vec![] }, |n, v| Node { v, kids: vec![n] });
/// let mut out = Encoder::new();
/// deep.encode(&mut out);
/// assert!(matches!(out.finish(), Err(Error::Encode { .. })));
///
/// let flat = Flat { nodes: (0..1000).map(|v| (v, if v > 0 { vec![v as u32 - 1] } else { vec![] })).collect() };
/// let mut out = Encoder::new();
/// flat.encode(&mut out);
/// let bytes = out.finish()?;
/// assert_eq!(Flat::decode(&mut bytes.as_slice())?, flat);
/// # Ok::<(), corepool::Error>(())
/// ```
///
/// # When an impl panics
///
/// A hand-written `encode` or `decode` should not panic (an `encode` calls
/// [`Encoder::fail`], a `decode` returns [`Error::Decode`]). If one does,
/// the value's sender gets [`Error::Encode`], its receiver
/// [`Error::Decode`], each naming the type and quoting the panic; the panic
/// never unwinds out of corepool into the caller, and a pool's worker goes
/// on serving.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross between processes: it does not implement `corepool::Wire`",
    label = "not `Wire`",
    note = "for your own struct or enum, add `#[derive(corepool::Wire)]` (all its fields must be `Wire`)",
    note = "for a serde type, wrap it: `corepool::Serde(value)`; for a `bytemuck::Pod` type: `corepool::Plain(value)`",
    note = "a function that never returns (`-> !`) can say so with `-> std::convert::Infallible`, which is `Wire`"
)]
pub trait Wire: Sized + Send + 'static {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Encoder);

    /// Decodes one value from the front of `input`, advancing it.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the bytes are not a valid encoding.
    fn decode(input: &mut &[u8]) -> Result<Self>;

    /// Appends the encodings of `items`, one after another. Plain-data types
    /// override this with a single copy.
    #[doc(hidden)]
    fn encode_slice(items: &[Self], out: &mut Encoder) {
        for item in items {
            item.encode(out);
        }
    }

    /// The bytes [`encode_slice`](Wire::encode_slice) writes for `items`
    /// when they are the items' own memory (plain numbers, [`Plain`]), so
    /// that a large value's sender can copy them straight to where they
    /// travel; `None` for every other type.
    #[doc(hidden)]
    fn slice_bytes(items: &[Self]) -> Option<&[u8]> {
        let _ = items;
        None
    }

    /// Appends the start of the encoding of `self` to `out` and returns the
    /// rest, borrowed from `self` (empty unless the value ends with plain
    /// data, see [`slice_bytes`](Wire::slice_bytes)): the two together are
    /// exactly what [`encode`](Wire::encode) writes. A large value's sender
    /// then copies the rest once, into the memory it travels in, instead of
    /// into an encoding first.
    #[doc(hidden)]
    fn encode_split(&self, out: &mut Encoder) -> &[u8] {
        self.encode(out);
        &[]
    }

    /// The proof that this type is plain data (its encoding is its memory,
    /// any bits are a valid value), for the one-pass copies of `map`;
    /// `None` for every other type. Only corepool can make the proof.
    #[doc(hidden)]
    fn plain() -> Option<PlainLayout<Self>> {
        None
    }

    /// Decodes `n` values written by [`encode_slice`](Wire::encode_slice),
    /// appending them to `out` (so that `map` can decode each chunk's results
    /// straight into its output). Plain-data types override this with a
    /// single copy. On an error, `out` may hold some of the values.
    #[doc(hidden)]
    fn decode_extend(input: &mut &[u8], n: usize, out: &mut Vec<Self>) -> Result<()> {
        // Never trust `n` for the allocation: every element takes at least one
        // byte or is a zero-sized `()`, so cap by what is there. Zero-sized
        // values take no bytes, so nothing but a cap stops a forged length
        // from looping for ever.
        if std::mem::size_of::<Self>() == 0 && n > MAX_ZERO_SIZED_VALUES {
            return Err(decode_error::<Vec<Self>>(format!(
                "{n} zero-sized values, more than the {MAX_ZERO_SIZED_VALUES} accepted: the sender is corrupt"
            )));
        }
        // Nor for the memory: a value may take far more memory than its
        // encoding (`None` of an `Option<[u64; 8192]>` is one byte), so the
        // memory `n` values would take is charged before any is decoded.
        budget::charge::<Vec<Self>>(n, std::mem::size_of::<Self>(), input.len())?;
        out.reserve(n.min(input.len()));
        for _ in 0..n {
            out.push(Self::decode(input)?);
        }
        Ok(())
    }
}

/// `T`'s plain-data proof when it has one and its values take bytes (the
/// one-pass paths count values by their bytes).
pub(crate) fn plain_of<T: Wire>() -> Option<PlainLayout<T>> {
    T::plain().filter(|p| p.size() > 0)
}

/// The longest sequence of zero-sized values (`Vec<()>`) that decodes: their
/// encoding takes no bytes, so the length alone bounds the work.
pub(crate) const MAX_ZERO_SIZED_VALUES: usize = 1 << 28;

/// Decodes an encoded `Vec<T>` of exactly `due` values onto the end of
/// `out`; the bytes must be used up. `map` collects each chunk's results this
/// way, straight into its output; a count other than `due` is refused before
/// anything is decoded.
pub(crate) fn decode_vec_into<T: Wire>(bytes: &[u8], due: usize, out: &mut Vec<T>) -> Result<()> {
    catch_decode_panic::<Vec<T>, _>(|| {
        budget::with_budget(bytes.len(), || decode_vec_into_budgeted(bytes, due, out))
    })
}

fn decode_vec_into_budgeted<T: Wire>(mut bytes: &[u8], due: usize, out: &mut Vec<T>) -> Result<()> {
    let n = decode_len::<Vec<T>>(&mut bytes)?;
    if n != due {
        return Err(decode_error::<Vec<T>>(format!(
            "{n} results for a chunk of {due} items: the worker misbehaved"
        )));
    }
    T::decode_extend(&mut bytes, n, out)?;
    if !bytes.is_empty() {
        return Err(decode_error::<Vec<T>>(format!(
            "{} trailing bytes",
            bytes.len()
        )));
    }
    Ok(())
}

/// Decodes a value that must use up all of `bytes`. A user's `Wire` code
/// that panics meanwhile makes it an [`Error::Decode`] naming `T`.
pub(crate) fn decode_exact<T: Wire>(mut bytes: &[u8]) -> Result<T> {
    let value =
        catch_decode_panic::<T, _>(|| budget::with_budget(bytes.len(), || T::decode(&mut bytes)))?;
    if !bytes.is_empty() {
        return Err(decode_error::<T>(format!("{} trailing bytes", bytes.len())));
    }
    Ok(value)
}

/// An encoded value in transit inside the parent: small ones (most task
/// arguments and results) live inline, with no allocation; large ones (a
/// `map` chunk) hand their buffer back to [`take_buffer`]'s pool when they
/// drop, so the next chunk finds memory already faulted in.
#[derive(Debug, Default)]
pub(crate) struct Payload(smallvec::SmallVec<[u8; Payload::INLINE]>);

impl Payload {
    /// Payloads up to this many bytes live inline.
    pub(crate) const INLINE: usize = 48;

    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        Self(smallvec::SmallVec::from_slice(bytes))
    }

    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        Self(smallvec::SmallVec::from_vec(bytes))
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if self.0.spilled() {
            recycle_buffer(std::mem::take(&mut self.0).into_vec());
        }
    }
}

/// Buffers of at least this many bytes are worth recycling: below it malloc
/// serves from memory it keeps anyway, above it fresh memory costs a page
/// fault per 4 KiB (about 3 us each on a VM).
const RECYCLE_MIN: usize = 64 << 10;
/// The most the pool keeps, in all: a few chunks per worker of a `map`.
const RECYCLE_KEEP: usize = 16 << 20;

/// Spare large buffers and their total capacity.
static RECYCLED: std::sync::Mutex<(Vec<Vec<u8>>, usize)> = std::sync::Mutex::new((Vec::new(), 0));

/// An empty buffer with room for `capacity` bytes: a recycled one when the
/// pool has one large enough (its pages are already faulted in).
pub(crate) fn take_buffer(capacity: usize) -> Vec<u8> {
    if capacity >= RECYCLE_MIN {
        let mut pool = crate::sync::lock(&RECYCLED);
        if let Some(i) = pool.0.iter().position(|b| b.capacity() >= capacity) {
            let buf = pool.0.swap_remove(i);
            pool.1 -= buf.capacity();
            return buf;
        }
    }
    Vec::with_capacity(capacity)
}

/// Keeps `buf` for a later [`take_buffer`] if it is large and the pool has
/// room; frees it otherwise.
fn recycle_buffer(mut buf: Vec<u8>) {
    let capacity = buf.capacity();
    if !(RECYCLE_MIN..=RECYCLE_KEEP / 4).contains(&capacity) {
        return;
    }
    buf.clear();
    let mut pool = crate::sync::lock(&RECYCLED);
    if pool.1 + capacity <= RECYCLE_KEEP {
        pool.1 += capacity;
        pool.0.push(buf);
    }
}

pub(crate) fn decode_error<T: ?Sized>(reason: impl Into<String>) -> Error {
    Error::Decode {
        type_name: std::any::type_name::<T>(),
        reason: reason.into(),
    }
}

fn take<'a, T>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if input.len() < n {
        return Err(decode_error::<T>(format!(
            "needs {n} bytes, {} left",
            input.len()
        )));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn decode_len<T>(input: &mut &[u8]) -> Result<usize> {
    let raw = u64::from_le_bytes(take::<T>(input, 8)?.try_into().expect("8 bytes"));
    usize::try_from(raw).map_err(|_| decode_error::<T>("length does not fit in usize"))
}

fn encode_len(len: usize, out: &mut Encoder) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

/// Copies a slice of plain data as bytes.
fn encode_pod_slice<P: Pod>(items: &[P], out: &mut Encoder) {
    out.extend_from_slice(bytemuck::cast_slice(items));
}

/// Copies `n` plain values out of `input` (any alignment).
/// Appends `n` values of plain data from their raw bytes: one copy, and no
/// zero-fill pass over the destination first.
///
/// Errors name the sequence (`Vec<P>`), not `P`: `n` came from the
/// sequence's length prefix, so that is what a forged or truncated input
/// got wrong.
fn decode_pod_extend<P: Pod>(input: &mut &[u8], n: usize, out: &mut Vec<P>) -> Result<()> {
    let size = std::mem::size_of::<P>();
    // Zero-sized plain values (`Plain<()>`) take no bytes: as in the
    // default `decode_extend`, only a cap stops 8 bytes of input from
    // making 2^64 - 1 of them, which the receiver would iterate for ever.
    if size == 0 && n > MAX_ZERO_SIZED_VALUES {
        return Err(decode_error::<Vec<P>>(format!(
            "{n} zero-sized values, more than the {MAX_ZERO_SIZED_VALUES} accepted: the sender is corrupt"
        )));
    }
    let bytes = n.checked_mul(size).ok_or_else(|| {
        decode_error::<Vec<P>>(format!(
            "a length of {n} values of {size} bytes overflows: the input is corrupt"
        ))
    })?;
    if input.len() < bytes {
        return Err(decode_error::<Vec<P>>(format!(
            "a length of {n} values needs {bytes} bytes, {} left: the input is truncated or corrupt",
            input.len()
        )));
    }
    // Checked before anything is reserved: `n` is now known to be backed by
    // bytes that are really there.
    let raw = take::<Vec<P>>(input, bytes)?;
    out.reserve(n);
    let start = out.len();
    // SAFETY: `reserve` made room for `n` more `P`s after `start`, and the
    // copy writes exactly `n * size_of::<P>()` bytes there (byte-wise, so the
    // unaligned source is fine; the destination is a `P` array). Every bit
    // pattern is a valid `P` (`Pod`), so all of `..start + n` is initialised.
    unsafe {
        std::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            out.as_mut_ptr().add(start).cast::<u8>(),
            bytes,
        );
        out.set_len(start + n);
    }
    Ok(())
}

macro_rules! wire_for_numbers {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            #[inline]
            fn encode(&self, out: &mut Encoder) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn decode(input: &mut &[u8]) -> Result<Self> {
                let bytes = take::<Self>(input, std::mem::size_of::<Self>())?;
                Ok(<$t>::from_le_bytes(bytes.try_into().expect("exact size")))
            }
            fn encode_slice(items: &[Self], out: &mut Encoder) {
                encode_pod_slice(items, out);
            }
            fn slice_bytes(items: &[Self]) -> Option<&[u8]> {
                // What `encode_pod_slice` copies.
                Some(bytemuck::cast_slice(items))
            }
            fn decode_extend(input: &mut &[u8], n: usize, out: &mut Vec<Self>) -> Result<()> {
                decode_pod_extend(input, n, out)
            }
            fn plain() -> Option<PlainLayout<Self>> {
                // `encode_slice` copies the memory (little-endian targets:
                // the same bytes as `to_le_bytes`).
                Some(PlainLayout::of())
            }
        }
    )*};
}

wire_for_numbers!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);

impl Wire for usize {
    fn encode(&self, out: &mut Encoder) {
        (*self as u64).encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        usize::try_from(u64::decode(input)?).map_err(|_| decode_error::<Self>("out of range"))
    }
}

impl Wire for isize {
    fn encode(&self, out: &mut Encoder) {
        (*self as i64).encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        isize::try_from(i64::decode(input)?).map_err(|_| decode_error::<Self>("out of range"))
    }
}

impl Wire for bool {
    fn encode(&self, out: &mut Encoder) {
        out.push(u8::from(*self));
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        match u8::decode(input)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(decode_error::<Self>(format!("byte {b} is neither 0 nor 1"))),
        }
    }
}

impl Wire for char {
    fn encode(&self, out: &mut Encoder) {
        u32::from(*self).encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let code = u32::decode(input)?;
        char::from_u32(code).ok_or_else(|| decode_error::<Self>(format!("{code:#x} is not a char")))
    }
}

impl Wire for () {
    fn encode(&self, _: &mut Encoder) {}
    fn decode(_: &mut &[u8]) -> Result<Self> {
        Ok(())
    }
}

/// No value of `Infallible` exists: nothing is ever encoded, and decoding
/// one always fails. It is the result type of a function that never returns
/// (a server loop run as a [`Process`](crate::Process) until it is killed),
/// where `-> !` is not allowed (`!` is not a type on stable Rust, so it
/// cannot be `Wire`):
///
/// ```
/// use corepool::{Pipe, PipeEnd, Process};
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// /// Doubles every number it receives, for ever.
/// fn serve(end: PipeEnd<u64>) -> Infallible {
///     loop {
///         if let Ok(n) = end.recv() {
///             let _ = end.send(&(2 * n));
///         }
///     }
/// }
///
/// fn main() -> corepool::Result<()> {
///     let (mine, theirs) = Pipe::duplex::<u64>()?;
///     let server = Process::start(serve, theirs)?;
///     mine.send(&21)?;
///     assert_eq!(mine.recv()?, 42);
///     server.kill()?; // the only way it ends
///     assert!(server.join_timeout(Duration::from_secs(10)));
///     Ok(())
/// }
/// ```
impl Wire for std::convert::Infallible {
    fn encode(&self, _: &mut Encoder) {
        match *self {}
    }
    fn decode(_: &mut &[u8]) -> Result<Self> {
        Err(decode_error::<Self>(
            "no value of this type exists, so none can be decoded: the sender is corrupt",
        ))
    }
}

impl Wire for String {
    fn encode(&self, out: &mut Encoder) {
        encode_len(self.len(), out);
        out.extend_from_slice(self.as_bytes());
    }
    fn encode_split(&self, out: &mut Encoder) -> &[u8] {
        encode_len(self.len(), out);
        self.as_bytes()
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let len = decode_len::<Self>(input)?;
        let bytes = take::<Self>(input, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| decode_error::<Self>(e.to_string()))
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn encode(&self, out: &mut Encoder) {
        encode_len(self.len(), out);
        T::encode_slice(self, out);
    }
    fn encode_split(&self, out: &mut Encoder) -> &[u8] {
        encode_len(self.len(), out);
        match T::slice_bytes(self) {
            Some(bytes) => bytes,
            None => {
                T::encode_slice(self, out);
                &[]
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let len = decode_len::<Self>(input)?;
        let mut out = Vec::new();
        T::decode_extend(input, len, &mut out)?;
        Ok(out)
    }
}

/// As the `T` it holds: a `Box` only moves the value to the heap, so that
/// recursive enums can be `Wire` (each level still counts towards the
/// nesting limit above, through the derived impl that holds the `Box`).
impl<T: Wire> Wire for Box<T> {
    fn encode(&self, out: &mut Encoder) {
        (**self).encode(out);
    }
    fn encode_split(&self, out: &mut Encoder) -> &[u8] {
        (**self).encode_split(out)
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        T::decode(input).map(Box::new)
    }
}

/// As a `Vec<T>` of its items, front to back.
impl<T: Wire> Wire for std::collections::VecDeque<T> {
    fn encode(&self, out: &mut Encoder) {
        let (front, back) = self.as_slices();
        encode_len(self.len(), out);
        T::encode_slice(front, out);
        T::encode_slice(back, out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        Vec::<T>::decode(input).map(Self::from)
    }
}

/// Decodes a sequence of `n` values (the count read by the caller) through
/// `Vec`'s checks: the memory budget and the cap on zero-sized values hold
/// for maps and sets as for vectors, whatever count a sender forged.
fn decode_items<T: Wire>(input: &mut &[u8]) -> Result<Vec<T>> {
    let n = decode_len::<Vec<T>>(input)?;
    let mut items = Vec::new();
    T::decode_extend(input, n, &mut items)?;
    Ok(items)
}

/// Encodes a map as its length, then each key followed by its value, in the
/// map's order of iteration.
fn encode_entries<'a, K: Wire, V: Wire>(
    len: usize,
    entries: impl Iterator<Item = (&'a K, &'a V)>,
    out: &mut Encoder,
) {
    encode_len(len, out);
    for (k, v) in entries {
        k.encode(out);
        v.encode(out);
    }
}

/// Encodes a set as its length, then each item, in its order of iteration.
fn encode_items<'a, T: Wire>(len: usize, items: impl Iterator<Item = &'a T>, out: &mut Encoder) {
    encode_len(len, out);
    for item in items {
        item.encode(out);
    }
}

/// Its entries, as a `Vec<(K, V)>` would carry them. A key that comes twice
/// (only a corrupt sender writes one) keeps its last value.
impl<K, V, S> Wire for std::collections::HashMap<K, V, S>
where
    K: Wire + Eq + std::hash::Hash,
    V: Wire,
    S: std::hash::BuildHasher + Default + Send + 'static,
{
    fn encode(&self, out: &mut Encoder) {
        encode_entries(self.len(), self.iter(), out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        Ok(decode_items::<(K, V)>(input)?.into_iter().collect())
    }
}

/// Its entries in key order, as a `Vec<(K, V)>` would carry them.
impl<K: Wire + Ord, V: Wire> Wire for std::collections::BTreeMap<K, V> {
    fn encode(&self, out: &mut Encoder) {
        encode_entries(self.len(), self.iter(), out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        Ok(decode_items::<(K, V)>(input)?.into_iter().collect())
    }
}

/// Its items, as a `Vec<T>` would carry them.
impl<T, S> Wire for std::collections::HashSet<T, S>
where
    T: Wire + Eq + std::hash::Hash,
    S: std::hash::BuildHasher + Default + Send + 'static,
{
    fn encode(&self, out: &mut Encoder) {
        encode_items(self.len(), self.iter(), out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        Ok(decode_items::<T>(input)?.into_iter().collect())
    }
}

/// Its items in order, as a `Vec<T>` would carry them.
impl<T: Wire + Ord> Wire for std::collections::BTreeSet<T> {
    fn encode(&self, out: &mut Encoder) {
        encode_items(self.len(), self.iter(), out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        Ok(decode_items::<T>(input)?.into_iter().collect())
    }
}

impl<T: Wire> Wire for Option<T> {
    fn encode(&self, out: &mut Encoder) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        match u8::decode(input)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(input)?)),
            b => Err(decode_error::<Self>(format!("bad tag {b}"))),
        }
    }
}

impl<T: Wire, E: Wire> Wire for std::result::Result<T, E> {
    fn encode(&self, out: &mut Encoder) {
        match self {
            Ok(v) => {
                out.push(0);
                v.encode(out);
            }
            Err(e) => {
                out.push(1);
                e.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        match u8::decode(input)? {
            0 => Ok(Ok(T::decode(input)?)),
            1 => Ok(Err(E::decode(input)?)),
            b => Err(decode_error::<Self>(format!("bad tag {b}"))),
        }
    }
}

impl<T: Wire, const N: usize> Wire for [T; N] {
    fn encode(&self, out: &mut Encoder) {
        T::encode_slice(self, out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let mut items = Vec::with_capacity(N);
        T::decode_extend(input, N, &mut items)?;
        items
            .try_into()
            .map_err(|_| decode_error::<Self>("wrong length"))
    }
}

macro_rules! wire_for_tuples {
    ($(($($init:ident),*; $last:ident)),*) => {$(
        impl<$($init: Wire,)* $last: Wire> Wire for ($($init,)* $last,) {
            #[allow(non_snake_case)]
            fn encode(&self, out: &mut Encoder) {
                let ($($init,)* $last,) = self;
                $($init.encode(out);)*
                $last.encode(out);
            }
            #[allow(non_snake_case)]
            fn encode_split(&self, out: &mut Encoder) -> &[u8] {
                // Every element but the last whole, the last split.
                let ($($init,)* $last,) = self;
                $($init.encode(out);)*
                $last.encode_split(out)
            }
            fn decode(input: &mut &[u8]) -> Result<Self> {
                Ok(($($init::decode(input)?,)* $last::decode(input)?,))
            }
        }
    )*};
}

wire_for_tuples!(
    (; A),
    (A; B),
    (A, B; C),
    (A, B, C; D),
    (A, B, C, D; E),
    (A, B, C, D, E; F),
    (A, B, C, D, E, F; G),
    (A, B, C, D, E, F, G; H)
);

/// Any [`Pod`] value, sent as its raw bytes; a `Vec<Plain<T>>` crosses as one
/// copy. The zero-serialization path for your own `#[repr(C)]` structs.
///
/// ```
/// use corepool::{Encoder, Plain, Wire};
/// // Through corepool's re-export: no `bytemuck` dependency of your own.
/// #[derive(Clone, Copy, corepool::bytemuck::Pod, corepool::bytemuck::Zeroable)]
/// #[bytemuck(crate = "corepool::bytemuck")]
/// #[repr(C)]
/// struct Point { x: f32, y: f32 }
///
/// let mut out = Encoder::new();
/// vec![Plain(Point { x: 1.0, y: 2.0 })].encode(&mut out);
/// let bytes = out.finish().unwrap();
/// let back = Vec::<Plain<Point>>::decode(&mut bytes.as_slice()).unwrap();
/// assert_eq!(back[0].0.y, 2.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(transparent)]
pub struct Plain<T>(pub T);

// SAFETY: `Plain<T>` is `#[repr(transparent)]` over its only field `T`.
unsafe impl<T> TransparentWrapper<T> for Plain<T> {}

impl<T: Pod + Send> Wire for Plain<T> {
    fn encode(&self, out: &mut Encoder) {
        out.extend_from_slice(bytemuck::bytes_of(&self.0));
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let bytes = take::<Self>(input, std::mem::size_of::<T>())?;
        Ok(Plain(bytemuck::pod_read_unaligned(bytes)))
    }
    fn encode_slice(items: &[Self], out: &mut Encoder) {
        encode_pod_slice(Plain::peel_slice(items), out);
    }
    fn slice_bytes(items: &[Self]) -> Option<&[u8]> {
        // What `encode_pod_slice` copies.
        Some(bytemuck::cast_slice(Plain::peel_slice(items)))
    }
    fn decode_extend(input: &mut &[u8], n: usize, out: &mut Vec<Self>) -> Result<()> {
        decode_pod_extend(input, n, out)
    }
    fn plain() -> Option<PlainLayout<Self>> {
        // Its memory, as `encode`/`encode_slice` copy it.
        Some(PlainLayout::of())
    }
}

// SAFETY: `Plain<T>` is `#[repr(transparent)]` over a `Zeroable` `T`.
unsafe impl<T: Pod> bytemuck::Zeroable for Plain<T> {}
// SAFETY: `#[repr(transparent)]` over a `Pod` `T`: the same size, alignment
// and valid bit patterns, no padding; `Copy` and `'static` come with `T: Pod`.
unsafe impl<T: Pod> Pod for Plain<T> {}

/// Lets postcard append to a `Vec` it does not own.
#[cfg(feature = "serde")]
struct Append<'a>(&'a mut Vec<u8>);

#[cfg(feature = "serde")]
impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// Any serde type, encoded with postcard (compact, varint-based).
///
/// Needs the `serde` feature (on by default).
///
/// ```
/// use corepool::{Encoder, Serde, Wire};
/// use std::collections::BTreeMap;
/// let map: BTreeMap<String, u32> = [("a".to_string(), 1)].into();
/// let mut out = Encoder::new();
/// Serde(map.clone()).encode(&mut out);
/// let bytes = out.finish().unwrap();
/// assert_eq!(Serde::<BTreeMap<String, u32>>::decode(&mut bytes.as_slice()).unwrap().0, map);
/// ```
#[cfg(feature = "serde")]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Serde<T>(pub T);

#[cfg(feature = "serde")]
impl<T> Wire for Serde<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    fn encode(&self, out: &mut Encoder) {
        // Length-prefixed so that values can follow each other.
        let at = out.len();
        encode_len(0, out);
        let body = out.len();
        // A panic in the type's `Serialize` is reported as that, not as a
        // `Wire` impl's (the user wrote none).
        let serialized = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            postcard::to_extend(&self.0, Append(&mut *out)).map(|_| ())
        }));
        let serialized = match serialized {
            Ok(serialized) => serialized,
            Err(payload) => {
                out.truncate(at);
                out.fail::<Self>(format!(
                    "the type's `Serialize` impl panicked: {}",
                    nesting::panic_text(&*payload)
                ));
                return;
            }
        };
        match serialized {
            Ok(()) => {
                let len = (out.len() - body) as u64;
                out[at..at + 8].copy_from_slice(&len.to_le_bytes());
            }
            // A `Serialize` impl may fail (a custom error; a sequence whose
            // length is unknown up front, which postcard needs): the sender
            // returns the serializer's message and sends nothing.
            Err(e) => {
                out.truncate(at);
                let hint = match e {
                    postcard::Error::SerdeSerCustom => {
                        " (the type's `Serialize` impl returned an error; postcard does not keep its message)"
                    }
                    _ => "",
                };
                out.fail::<Self>(format!(
                    "serializing with postcard failed: {e}{hint}: fix the value or its \
                     `Serialize` impl (postcard needs every sequence's length up front), or send \
                     another type"
                ));
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let len = decode_len::<Self>(input)?;
        let body = take::<Self>(input, len)?;
        // postcard recurses once per level of a recursive serde type, with
        // no limit of its own: bounded here by the stack it may use.
        let exceeded = std::cell::Cell::new(false);
        let mut deserializer =
            postcard::Deserializer::from_flavor(nesting::StackBound::new(body, &exceeded));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            <T as serde::Deserialize>::deserialize(&mut deserializer)
        }))
        .map_err(|payload| {
            decode_error::<Self>(format!(
                "the type's `Deserialize` impl panicked: {}",
                nesting::panic_text(&*payload)
            ))
        })?
        .map(Serde)
        .map_err(|e| {
            if exceeded.get() {
                decode_error::<Self>(format!(
                    "the value nests so deeply that deserializing it would take more than {} \
                     KiB of stack (postcard has no depth limit of its own): the sender is \
                     corrupt, or it sent a recursive value this deep; send a deep structure \
                     flattened instead",
                    nesting::STACK_BUDGET >> 10
                ))
            } else {
                decode_error::<Self>(e.to_string())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
        let bytes = encode_to_vec(&value);
        assert_eq!(decode_exact::<T>(&bytes).unwrap(), value);
    }

    /// What `encode_split` writes and returns, joined.
    fn split_bytes<T: Wire>(value: &T) -> Vec<u8> {
        let mut out = Encoder::new();
        let rest = value.encode_split(&mut out);
        let mut bytes = out.finish().unwrap();
        bytes.extend_from_slice(rest);
        bytes
    }

    #[test]
    fn a_split_encoding_is_the_encoding() {
        fn same<T: Wire>(value: T) {
            assert_eq!(split_bytes(&value), encode_to_vec(&value));
        }
        same(vec![1u8, 2, 3]);
        same(Vec::<u8>::new());
        same(vec![1.5f64, -2.0]);
        same(vec![Plain([1u16, 2]), Plain([3, 4])]);
        same("text".to_string());
        same(vec!["a".to_string(), "bc".to_string()]);
        same((7u32, vec![9u8; 100]));
        same((vec![1u8], 2u64, vec![3i32, 4]));
        same((vec![1u8],));
        same(Some(vec![1u8]));
        same(());
        same(42u64);
        // Plain data at the end comes back borrowed, not copied.
        let value = (1u8, vec![5u8; 1000]);
        let mut out = Encoder::new();
        let rest = value.encode_split(&mut out);
        assert_eq!((out.len(), rest.len()), (1 + 8, 1000));
    }

    #[test]
    fn a_payload_over_its_limit_goes_to_the_spill_in_two_parts() {
        let value = (3u16, vec![7u8; 500]);
        let whole = encode_to_vec(&value);
        let (payload, _, spilled) =
            encode_payload_or_spill(&value, whole.len(), |_, _| -> Result<(Vec<u8>, ())> {
                panic!("fits: no spill")
            })
            .unwrap();
        assert_eq!((&payload[..], spilled), (&whole[..], None));
        let (payload, _, spilled) =
            encode_payload_or_spill(&value, whole.len() - 1, |head, rest| {
                assert_eq!([head, rest].concat(), whole);
                assert_eq!(rest.len(), 500, "the vector's bytes, borrowed");
                Ok((b"handle".to_vec(), 9))
            })
            .unwrap();
        assert_eq!((&payload[..], spilled), (&b"handle"[..], Some(9)));
    }

    #[test]
    fn std_types_round_trip() {
        round_trip(42u64);
        round_trip(-3i8);
        round_trip(1.25f64);
        round_trip(true);
        round_trip('é');
        round_trip(String::from("héllo"));
        round_trip(vec![1u32, 2, 3]);
        round_trip(vec![String::from("a"), String::new()]);
        round_trip(Some((1u8, 2u16)));
        round_trip::<std::result::Result<u8, String>>(Err("x".into()));
        round_trip([1.0f32; 5]);
        round_trip(());
        round_trip(Serde(vec![(1u8, String::from("z"))]));
        round_trip(vec![Plain([1u16, 2])]);
    }

    #[test]
    fn no_infallible_value_decodes() {
        let err = decode_exact::<std::convert::Infallible>(&[]).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
        assert!(decode_exact::<std::result::Result<u8, std::convert::Infallible>>(&[1]).is_err());
        // What a function returning `Result<u8, Infallible>` sends.
        round_trip::<std::result::Result<u8, std::convert::Infallible>>(Ok(7));
    }

    #[test]
    fn pod_vectors_are_one_copy() {
        let v: Vec<u64> = (0..1000).collect();
        let bytes = encode_to_vec(&v);
        assert_eq!(bytes.len(), 8 + 8 * 1000);
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let bytes = encode_to_vec(&u64::MAX);
        assert!(decode_exact::<Vec<u64>>(&bytes).is_err());
        assert!(decode_exact::<Vec<String>>(&bytes).is_err());
        assert!(decode_exact::<String>(&bytes).is_err());
        assert!(decode_exact::<bool>(&[2]).is_err());
        assert!(decode_exact::<u32>(&[1, 2]).is_err());
        assert!(decode_exact::<u8>(&[1, 2]).is_err(), "trailing bytes");
    }

    #[test]
    fn forged_counts_of_zero_sized_values_are_errors() {
        let bytes = encode_to_vec(&u64::MAX);
        // Without the cap this loops for ever: no byte is consumed per value.
        assert!(decode_exact::<Vec<()>>(&bytes).is_err());
        let mut out = Vec::new();
        assert!(decode_vec_into::<u64>(&encode_to_vec(&vec![1u64, 2, 3]), 2, &mut out).is_err());
        assert!(decode_vec_into::<u64>(&encode_to_vec(&vec![1u64, 2, 3]), 4, &mut out).is_err());
        assert!(out.is_empty(), "refused before decoding");
        decode_vec_into::<u64>(&encode_to_vec(&vec![1u64, 2, 3]), 3, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
    }

    /// A value far larger in memory (64 KiB) than its smallest encoding
    /// (`None`: one byte).
    type Huge = Option<[u64; 8192]>;

    /// An encoded `Vec<T>` claiming `n` values, followed by `body`.
    fn forged_vec(n: u64, body: &[u8]) -> Vec<u8> {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn boxes_deques_maps_and_sets_round_trip() {
        use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
        fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
            assert_eq!(decode_exact::<T>(&encode_to_vec(&value)).unwrap(), value);
        }
        round_trip(Box::new((1u64, String::from("x"))));
        round_trip(Box::new(vec![7u8; 100]));
        let mut deque: VecDeque<u32> = (0..10).collect();
        deque.rotate_left(3); // two slices inside
        round_trip(deque.clone());
        assert_eq!(encode_to_vec(&deque), encode_to_vec(&Vec::from(deque)));
        round_trip(HashMap::from([(1u64, vec![1.5f64]), (2, vec![])]));
        round_trip(BTreeMap::from([("k".to_string(), Some(3i32))]));
        round_trip(HashSet::from([3u16, 4, 5]));
        round_trip(BTreeSet::from([[1u8; 4], [2; 4]]));
        round_trip(HashMap::<u8, u8>::new());
    }

    #[test]
    fn forged_counts_of_maps_and_sets_are_errors() {
        use std::collections::{BTreeMap, HashSet};
        // Zero-sized items take no bytes: without the cap a forged count
        // loops for ever, as for `Vec<()>`.
        assert!(decode_exact::<HashSet<()>>(&forged_vec(u64::MAX, &[])).is_err());
        assert!(decode_exact::<BTreeMap<(), ()>>(&forged_vec(u64::MAX, &[])).is_err());
        assert!(decode_exact::<BTreeMap<u64, u64>>(&forged_vec(1 << 40, &[0; 64])).is_err());
        // A key that comes twice keeps its last value.
        let twice = [
            forged_vec(2, &[]),
            encode_to_vec(&(1u8, 10u8)),
            encode_to_vec(&(1u8, 20u8)),
        ];
        let map = decode_exact::<BTreeMap<u8, u8>>(&twice.concat()).unwrap();
        assert_eq!(map, BTreeMap::from([(1, 20)]));
    }

    /// `Plain<T>` of a zero-sized `T` (`()` and `[u8; 0]` are `Pod`)
    /// decodes through `decode_pod_extend`, which had no cap on zero-sized
    /// values: 8 bytes of input made a `Vec` (or, through it, a `VecDeque`)
    /// of 2^64 - 1 values, which a receiver then iterated for ever (found by
    /// review). `Vec<()>` was refused already (`MAX_ZERO_SIZED_VALUES`).
    #[test]
    fn a_forged_count_of_zero_sized_plain_values_is_refused() {
        use std::collections::VecDeque;
        assert!(decode_exact::<Vec<()>>(&forged_vec(u64::MAX, &[])).is_err());
        let got = decode_exact::<Vec<Plain<()>>>(&forged_vec(u64::MAX, &[]));
        assert!(got.is_err(), "Ok with {:?} values", got.map(|v| v.len()));
        let got = decode_exact::<VecDeque<Plain<[u8; 0]>>>(&forged_vec(u64::MAX, &[]));
        assert!(got.is_err(), "Ok with {:?} values", got.map(|v| v.len()));
    }

    #[test]
    fn a_forged_length_of_plain_values_is_named_as_the_sequences_length() {
        // A user trial's raw argument of 16 bytes of 0xff, decoded as a
        // `Vec<u8>`: the error once said "decoding a u8 failed: needs
        // 18446744073709551615 bytes", blaming a byte for the length prefix.
        let err = decode_exact::<Vec<u8>>(&forged_vec(u64::MAX, &[0xff; 8])).unwrap_err();
        let Error::Decode { type_name, reason } = &err else {
            panic!("{err:?}")
        };
        assert!(type_name.ends_with("Vec<u8>"), "{type_name}");
        assert!(
            reason.contains("a length of 18446744073709551615"),
            "{reason}"
        );
        assert!(reason.contains("8 left"), "{reason}");
        let err = decode_exact::<Vec<u64>>(&forged_vec(u64::MAX, &[])).unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        assert!(err.to_string().contains("Vec<u64>"), "{err}");
    }

    #[test]
    fn forged_counts_of_large_values_are_errors_not_huge_allocations() {
        // 2^20 claimed, 500 KB present: once a 32 GB reservation, an abort.
        let bytes = forged_vec(1 << 20, &vec![0; 500_000]);
        let err = decode_exact::<Vec<Huge>>(&bytes).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let mut out = Vec::new();
        assert!(decode_vec_into::<Huge>(&bytes, 1 << 20, &mut out).is_err());
        // As many as are there, each one byte on the wire, 64 KiB in memory:
        // the budget is per decode, nested sequences included.
        let bytes = forged_vec(500_000, &vec![0; 500_000]);
        assert!(decode_exact::<Vec<Huge>>(&bytes).is_err());
        let mut nested = forged_vec(100, &[]);
        for _ in 0..100 {
            nested.extend_from_slice(&forged_vec(200, &[0; 200]));
        }
        assert!(decode_exact::<Vec<Vec<Huge>>>(&nested).is_err());
        // Outside an entry point, a sequence is held to the rule on its own.
        assert!(Vec::<Huge>::decode(&mut forged_vec(1 << 20, &[0; 1000]).as_slice()).is_err());
        // Honest values of the same type still decode.
        let few: Vec<Huge> = vec![None; 100];
        assert_eq!(
            decode_exact::<Vec<Huge>>(&encode_to_vec(&few)).unwrap(),
            few
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "decodes 200,000 values")]
    fn real_values_far_larger_in_memory_than_on_the_wire_decode() {
        // A user trial's value: 200,000 `None`s, 200 KB on the wire and
        // 27 MB in memory (136 bytes each), once refused by the budget.
        let nones: Vec<Option<[u64; 16]>> = vec![None; 200_000];
        assert_eq!(
            decode_exact::<Vec<Option<[u64; 16]>>>(&encode_to_vec(&nones)).unwrap(),
            nones
        );
    }

    /// Serializes as a sequence of unknown length, which postcard refuses.
    #[derive(Debug)]
    struct Unsized;

    impl serde::Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(None)?;
            seq.serialize_element(&1u8)?;
            seq.end()
        }
    }

    impl<'de> serde::Deserialize<'de> for Unsized {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            <Vec<u8>>::deserialize(d).map(|_| Unsized)
        }
    }

    #[test]
    fn a_failing_serialize_is_an_encode_error_with_the_serializers_message() {
        let mut out = Encoder::new();
        7u32.encode(&mut out);
        Serde(Unsized).encode(&mut out); // used to panic, then to write a marker
        Serde(5u8).encode(&mut out);
        let err = out.finish().unwrap_err();
        assert!(
            matches!(&err, Error::Encode { type_name, .. } if type_name.contains("Unsized")),
            "{err:?}"
        );
        // postcard's own message, not a guess about a type mismatch.
        assert!(err.to_string().contains("postcard"), "{err}");
        assert!(encode_payload(&Serde(Unsized)).is_err());
        assert!(with_split_encoding(&Serde(Unsized), |_, _, _| Ok(())).is_err());
        // The thread's reused encoder is clean again.
        assert_eq!(
            decode_exact::<u8>(&encode_payload(&9u8).unwrap().0).unwrap(),
            9
        );
    }

    #[test]
    fn the_buffer_pool_is_bounded_and_reuses_memory() {
        // More than the pool keeps (16 MiB of 64 KiB buffers is 256).
        for _ in 0..300 {
            drop(Payload::from_vec(Vec::with_capacity(RECYCLE_MIN)));
        }
        assert!(crate::sync::lock(&RECYCLED).1 <= RECYCLE_KEEP);
        let buf = take_buffer(RECYCLE_MIN);
        assert!(buf.capacity() >= RECYCLE_MIN && buf.is_empty());
        // Small payloads live inline and never reach the pool.
        assert_eq!(&*Payload::from_slice(&[1, 2, 3]), &[1, 2, 3]);
    }

    proptest::proptest! {
        // Miri runs each case about 1000x slower: fewer cases there.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { 16 } else { 256 }))]
        #[test]
        fn forged_counts_never_allocate_beyond_the_budget(
            n in 0u64..=u64::MAX,
            body in proptest::collection::vec(0u8..=1, 0..256),
        ) {
            // A count claiming anything over bytes of `None`s and `Some`s.
            let bytes = forged_vec(n, &body);
            let _ = decode_exact::<Vec<Huge>>(&bytes);
            let _ = decode_exact::<Vec<Option<Vec<Huge>>>>(&bytes);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..64)) {
            let _ = decode_exact::<Vec<String>>(&bytes);
            let _ = decode_exact::<Vec<Huge>>(&bytes);
            let _ = decode_exact::<Vec<Vec<Option<[u8; 4096]>>>>(&bytes);
            let _ = decode_exact::<(u8, Option<Vec<u64>>, char)>(&bytes);
            let _ = decode_exact::<Serde<Vec<(String, i32)>>>(&bytes);
        }
    }
}
