//! [`PlainLayout`]: the proof that a [`Wire`](super::Wire) type is plain data
//! (its encoding is its own bytes, and every bit pattern is a valid value),
//! and the one-pass copies it allows: a `map` chunk gathered straight into
//! its encoding, a worker reading its arguments from and writing its results
//! into the encodings, results copied from shared memory straight into the
//! output.

use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};

/// Proof that `T` is plain data: it has no padding, every bit pattern of
/// `size_of::<T>()` bytes is a valid `T`, and its [`Wire`](super::Wire)
/// encoding (one value, or a slice by `encode_slice`) is its memory, byte
/// for byte. Only corepool makes one (for `bytemuck::Pod` types, through
/// [`Wire::plain`](super::Wire::plain)); the field is private so that no
/// other crate can claim it for a type that is not.
#[doc(hidden)]
pub struct PlainLayout<T>(PhantomData<fn() -> T>);

impl<T> Clone for PlainLayout<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for PlainLayout<T> {}

impl<T> std::fmt::Debug for PlainLayout<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainLayout")
            .field("size", &size_of::<T>())
            .finish()
    }
}

impl<T: bytemuck::Pod> PlainLayout<T> {
    /// The proof, for a type that is `Pod` (no padding, any bits valid).
    pub(crate) fn of() -> Self {
        Self(PhantomData)
    }
}

impl<T> PlainLayout<T> {
    /// Bytes one value takes, in memory and on the wire.
    pub(crate) fn size(self) -> usize {
        size_of::<T>()
    }

    /// Bytes `n` values take, unless that overflows.
    pub(crate) fn bytes_for(self, n: usize) -> Option<usize> {
        n.checked_mul(size_of::<T>())
    }

    /// Appends the bytes of up to `max` values from `items` to `out`,
    /// returning how many: the gather and the encode of a chunk in one pass.
    pub(crate) fn extend_bytes(
        self,
        out: &mut Vec<u8>,
        items: impl Iterator<Item = T>,
        max: usize,
    ) -> usize {
        let size = size_of::<T>();
        let mut items = items.take(max);
        // Room for the values known to come (all of them for a slice or a
        // range), never for `max` on trust: a chunk size far above the
        // items there must not reserve gigabytes (found in review).
        let known = items.size_hint().0;
        out.reserve(known.saturating_mul(size));
        let start = out.len();
        let base = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let mut written = 0usize;
        // The values known to come, in the room reserved for them: the
        // tight loop (a vectorised copy for a slice's items). At most
        // `known` are taken, whatever the iterator then yields.
        for item in items.by_ref().take(known) {
            // SAFETY: `reserve` made room for `known * size` bytes after
            // `start`, and `written < known`, so the `size` bytes at
            // `written * size` are inside it; unaligned, hence
            // `write_unaligned`.
            unsafe { base.add(written * size).cast::<T>().write_unaligned(item) };
            written += 1;
        }
        // SAFETY: the first `written * size` bytes of the spare capacity
        // were written just above, each as a whole `T`, which has no padding
        // (the proof), so every one of those bytes is initialised.
        unsafe { out.set_len(start + written * size) };
        // Any more (an iterator that did not know its length), growing as
        // they come.
        for item in items {
            if out.capacity() - out.len() < size {
                out.reserve(size); // amortised: it doubles
            }
            let at = out.len();
            // SAFETY: the spare capacity holds at least `size` bytes
            // (ensured just above); unaligned, hence `write_unaligned`.
            // Those bytes are then initialised, written as a whole `T`
            // without padding (the proof), so the length may cover them.
            unsafe {
                out.spare_capacity_mut()
                    .as_mut_ptr()
                    .cast::<T>()
                    .write_unaligned(item);
                out.set_len(at + size);
            }
            written += 1;
        }
        written
    }

    /// Writes the bytes of values from `items` into `out`, as many as fit
    /// whole (all of them if fewer come), returning how many: the gather of
    /// a chunk straight into memory it was not allocated in (a block of a
    /// pool's argument arena). A zero-sized `T` writes nothing and takes
    /// none: the caller gathers those another way.
    pub(crate) fn fill_bytes(self, out: &mut [u8], items: impl Iterator<Item = T>) -> usize {
        let size = size_of::<T>();
        if size == 0 {
            return 0;
        }
        let room = out.len() / size;
        let base = out.as_mut_ptr();
        let mut written = 0usize;
        for item in items.take(room) {
            // SAFETY: `written < room` (at most `room` items are taken), so
            // the `size` bytes at `written * size` lie inside `out`, which
            // this call borrows mutably; unaligned, hence `write_unaligned`.
            // A `T` has no padding (the proof): every byte written is
            // initialised.
            unsafe { base.add(written * size).cast::<T>().write_unaligned(item) };
            written += 1;
        }
        written
    }

    /// The values whose bytes are `bytes` (a multiple of the size, any
    /// alignment), read one by one.
    pub(crate) fn values(self, bytes: &[u8]) -> impl ExactSizeIterator<Item = T> + '_ {
        // A zero-sized value takes no bytes: such a slice holds none.
        bytes.chunks_exact(size_of::<T>().max(1)).map(|value| {
            // SAFETY: `value` holds `size_of::<T>()` bytes (for a zero-sized
            // `T`, none are read); every bit pattern is a valid `T` (the
            // proof); the read is unaligned.
            unsafe { value.as_ptr().cast::<T>().read_unaligned() }
        })
    }

    /// Appends `n` values to `out` whose bytes `fill` writes, if it returns
    /// true; on false nothing is appended (the space it may have written is
    /// left as spare capacity). No zero-fill pass first: the one copy.
    ///
    /// # Safety
    ///
    /// When `fill` returns true it must have written every byte of the slice
    /// it was given (`n * size_of::<T>()` bytes).
    pub(crate) unsafe fn extend_with(
        self,
        out: &mut Vec<T>,
        n: usize,
        fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> bool,
    ) -> bool {
        out.reserve(n);
        let start = out.len();
        // SAFETY: `fill`'s contract is ours.
        if !unsafe { self.fill_spare(out, start, n, fill) } {
            return false;
        }
        // SAFETY: `fill_spare` returned true: the `n` values after the
        // length are written whole, and any bytes are a valid `T` (the proof).
        unsafe { out.set_len(start + n) };
        true
    }

    /// Has `fill` write `n` values into `out`'s spare capacity, starting at
    /// index `at` (at or past the length), without changing the length:
    /// false, nothing asked of `fill`, unless they fit in the capacity; else
    /// what `fill` returns. Once true, the values `at..at + n` are valid
    /// (any bits are a valid `T`), for a `set_len` over them when the values
    /// before them are too.
    ///
    /// # Safety
    ///
    /// As [`extend_with`](Self::extend_with): on true, `fill` has written
    /// every byte of the slice it was given.
    pub(crate) unsafe fn fill_spare(
        self,
        out: &mut Vec<T>,
        at: usize,
        n: usize,
        fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> bool,
    ) -> bool {
        let fits = at >= out.len() && at.checked_add(n).is_some_and(|end| end <= out.capacity());
        let Some(bytes) = n.checked_mul(size_of::<T>()).filter(|_| fits) else {
            return false;
        };
        // SAFETY: `at..at + n` lies in the allocation's capacity and past
        // the length (checked above): memory of `n` values that nothing else
        // refers to, viewed as bytes that may be uninitialised.
        let spare = unsafe {
            std::slice::from_raw_parts_mut(
                out.as_mut_ptr().add(at).cast::<MaybeUninit<u8>>(),
                bytes,
            )
        };
        fill(spare)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_size_far_above_the_items_reserves_only_for_the_items() {
        // Found in review: room for `max` values was reserved on trust, so
        // a huge chunk size over a few large values reserved gigabytes (and
        // a `max` whose bytes overflow ended the chunk with nothing).
        let plain = PlainLayout::<[u8; 4096]>::of();
        let mut out = Vec::new();
        let items = (0..3u8).map(|i| [i; 4096]);
        assert_eq!(plain.extend_bytes(&mut out, items, usize::MAX / 2), 3);
        assert_eq!(out.len(), 3 * 4096);
        assert!(out.capacity() < 1 << 20, "{}", out.capacity());
        assert_eq!(out[2 * 4096], 2);
        // An iterator that does not know its length grows as it goes.
        let mut out = Vec::new();
        let unknown = (0..1000u32).filter(|_| true);
        assert_eq!(
            PlainLayout::<u32>::of().extend_bytes(&mut out, unknown, 10_000),
            1000
        );
        assert_eq!(&out[4 * 999..], &999u32.to_ne_bytes());
    }

    #[test]
    fn bytes_round_trip_through_the_proof() {
        let plain = PlainLayout::<u32>::of();
        let mut bytes = vec![9u8];
        assert_eq!(
            plain.extend_bytes(&mut bytes, [1u32, 2, 3].into_iter(), 2),
            2
        );
        assert_eq!(bytes.len(), 1 + 8);
        let back: Vec<u32> = plain.values(&bytes[1..]).collect();
        assert_eq!(back, [1, 2]);
        let mut out = vec![7u32];
        // SAFETY: the closure writes every byte when it returns true.
        let ok = unsafe {
            plain.extend_with(&mut out, 2, |dst| {
                for (d, s) in dst.iter_mut().zip(&bytes[1..]) {
                    d.write(*s);
                }
                true
            })
        };
        assert!(ok);
        assert_eq!(out, [7, 1, 2]);
        // SAFETY: nothing is claimed written.
        assert!(!unsafe { plain.extend_with(&mut out, 5, |_| false) });
        assert_eq!(out, [7, 1, 2], "a refused fill appends nothing");
    }

    #[test]
    fn a_fill_writes_only_the_values_that_fit_whole() {
        let plain = PlainLayout::<u32>::of();
        // Room for two values and a half: two are written, the rest of the
        // iterator is left alone and the last bytes are untouched.
        let mut out = [0xAAu8; 10];
        let mut items = [1u32, 2, 3].into_iter();
        assert_eq!(plain.fill_bytes(&mut out, items.by_ref()), 2);
        assert_eq!(items.next(), Some(3));
        let back: Vec<u32> = plain.values(&out[..8]).collect();
        assert_eq!(back, [1, 2]);
        assert_eq!(out[8..], [0xAA, 0xAA]);
        // Fewer values than room: all of them.
        assert_eq!(plain.fill_bytes(&mut out, [5u32].into_iter()), 1);
        assert_eq!(plain.values(&out[..4]).next(), Some(5));
        // A zero-sized value: nothing written, nothing taken.
        let mut units = [(), ()].into_iter();
        assert_eq!(
            PlainLayout::<()>::of().fill_bytes(&mut out, units.by_ref()),
            0
        );
        assert_eq!(units.len(), 2);
    }
}
