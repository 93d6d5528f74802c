//! Cutting a `map`'s items into encoded chunks: [`Items`], [`Chunker`] and
//! the default chunk size.

use super::Pool;
use crate::error::{Error, Result};
use crate::shm::arena::Arena;
use crate::shm::spill::Held;
use crate::wire::{Encoder, KeepAlive, Payload, PlainLayout, Wire};
use std::sync::Arc;

/// The smallest chunk of plain data gathered into the pool's argument
/// arena rather than into a buffer that is then copied into a ring. Below
/// it the copy is cheaper than what the arena costs a chunk: its extents
/// lock, a handle in the ring, the worker's look-up of its mapping.
const ARENA_CHUNK_MIN: usize = 16 << 10;

/// One encoded chunk: its payload (the bytes, or the handle of the arena
/// block holding them), how many items it holds, what its encoding must
/// keep alive, and the arena block, held until the chunk's outcome is in.
pub(super) struct EncodedChunk {
    pub payload: Payload,
    pub items: usize,
    pub keep: KeepAlive,
    pub held: Option<Arc<Held>>,
}

/// A `map`'s items: the caller's iterator when it knows its length, else
/// what it yielded, collected.
pub(super) enum Items<I, A> {
    Exact(I),
    Collected(std::vec::IntoIter<A>),
}

impl<A, I: Iterator<Item = A>> Iterator for Items<I, A> {
    type Item = A;

    fn next(&mut self) -> Option<A> {
        match self {
            Items::Exact(i) => i.next(),
            Items::Collected(i) => i.next(),
        }
    }
}

/// Cuts a `map`'s items into encoded chunks of `chunksize`, one at a time.
pub(super) struct Chunker<A, I> {
    /// The first item, taken to size the chunks and not yet chunked.
    first: Option<A>,
    iter: Items<I, A>,
    chunksize: usize,
    /// The number of items, as the iterator said (it may be wrong).
    pub(super) len_hint: usize,
    /// The items of the chunk being encoded (reused).
    chunk: Vec<A>,
    /// The pool's argument arena, for chunks of plain data: gathered
    /// straight into a block of it, a chunk crosses to its worker without
    /// a copy into the ring, and the worker reads it where it lies (the
    /// caller's copy, on `map`'s critical path, and a worker's copy gone).
    arena: Option<Arc<Arena>>,
}

impl<A: Wire, I: Iterator<Item = A>> Chunker<A, I> {
    /// The next chunk (see [`EncodedChunk`]); `None` when the items ran out.
    pub(super) fn next_chunk(&mut self) -> Result<Option<EncodedChunk>> {
        // `len_hint` may be wrong: reserve no more than a sane amount.
        const PREALLOCATE_AT_MOST: usize = 1 << 16;
        if let Some(plain) = crate::wire::plain_of::<A>() {
            if let Some(chunk) = self.next_plain_chunk_in_arena(plain) {
                return Ok(Some(chunk));
            }
            return Ok(self.next_plain_chunk(plain, PREALLOCATE_AT_MOST));
        }
        self.chunk.clear();
        self.chunk
            .reserve(self.chunksize.min(self.len_hint).min(PREALLOCATE_AT_MOST));
        self.chunk.extend(self.first.take());
        let wanted = self.chunksize - self.chunk.len();
        // One `extend` per variant (not through `Items::next`, nor a
        // `Peekable`): an iterator that knows its exact length, such as a
        // slice's, is then gathered by `Vec`'s bulk path (for plain data a
        // vectorised copy) instead of item by item with a check per push.
        match &mut self.iter {
            Items::Exact(i) => self.chunk.extend(i.by_ref().take(wanted)),
            Items::Collected(i) => self.chunk.extend(i.by_ref().take(wanted)),
        }
        if self.chunk.is_empty() {
            return Ok(None);
        }
        let size = std::mem::size_of_val(self.chunk.as_slice());
        let mut out = Encoder::from_vec(crate::wire::take_buffer(8 + size));
        out.extend_from_slice(&(self.chunk.len() as u64).to_le_bytes());
        crate::wire::encode_slice_guarded(&self.chunk, &mut out);
        out.check()?;
        let keep = out.take_carried().into_keep_alive();
        Ok(Some(EncodedChunk {
            payload: Payload::from_vec(out.take_bytes()),
            items: self.chunk.len(),
            keep,
            held: None,
        }))
    }
}

impl<A: Wire, I: Iterator<Item = A>> Chunker<A, I> {
    /// [`next_chunk`](Self::next_chunk) for plain data: the items are
    /// gathered straight into the chunk's encoding (the count, then their
    /// bytes), one pass instead of a gather and an encode. Plain data carries
    /// nothing to keep alive.
    fn next_plain_chunk(
        &mut self,
        plain: PlainLayout<A>,
        preallocate_at_most: usize,
    ) -> Option<EncodedChunk> {
        let room = self.chunksize.min(self.len_hint).min(preallocate_at_most);
        let mut out = crate::wire::take_buffer(8 + room.saturating_mul(plain.size()));
        out.extend_from_slice(&0u64.to_le_bytes()); // the count, once known
        let mut n = plain.extend_bytes(&mut out, self.first.take().into_iter(), 1);
        let wanted = self.chunksize - n;
        n += match &mut self.iter {
            Items::Exact(i) => plain.extend_bytes(&mut out, i.by_ref(), wanted),
            Items::Collected(i) => plain.extend_bytes(&mut out, i.by_ref(), wanted),
        };
        if n == 0 {
            drop(Payload::from_vec(out)); // back to the buffer pool
            return None;
        }
        out[..8].copy_from_slice(&(n as u64).to_le_bytes());
        Some(EncodedChunk {
            payload: Payload::from_vec(out),
            items: n,
            keep: KeepAlive::default(),
            held: None,
        })
    }

    /// [`next_plain_chunk`](Self::next_plain_chunk) into a block of the
    /// pool's argument arena: the count, then the items' bytes, gathered
    /// where the worker will read them. `None`, with nothing taken from the
    /// items, when the chunk is small, there is no arena or no room in it:
    /// the chunk then goes the buffer's way.
    fn next_plain_chunk_in_arena(&mut self, plain: PlainLayout<A>) -> Option<EncodedChunk> {
        let arena = self.arena.as_ref()?;
        // The items known to come, never `chunksize` on trust (a chunk size
        // far above the items must not reserve the whole arena); a last
        // chunk shorter than that leaves the block's tail unused.
        // `chunker` gave an arena only to maps whose chunks come to
        // `ARENA_CHUNK_MIN` and more (so never to zero-sized items).
        let room = self.chunksize.min(self.len_hint);
        let bytes = plain.bytes_for(room)?.checked_add(8)?;
        let mut reserved = arena.reserve(bytes)?;
        let buf = reserved.bytes_mut();
        let (count, body) = buf[..bytes].split_at_mut(8);
        let size = plain.size();
        let mut n = plain.fill_bytes(body, self.first.take().into_iter());
        n += match &mut self.iter {
            Items::Exact(i) => plain.fill_bytes(&mut body[n * size..], i.by_ref()),
            Items::Collected(i) => plain.fill_bytes(&mut body[n * size..], i.by_ref()),
        };
        if n == 0 {
            return None; // the block goes back with `reserved`
        }
        count.copy_from_slice(&(n as u64).to_le_bytes());
        let (handle, held) = crate::shm::spill::hold_reserved(reserved, 8 + n * size);
        Some(EncodedChunk {
            payload: Payload::from_vec(handle),
            items: n,
            keep: KeepAlive::default(),
            held: Some(held),
        })
    }
}

impl Pool {
    /// Python's default chunk size (about four chunks per worker), capped so
    /// that a chunk stays cache-sized and fits one ring message.
    fn chunksize_for<A: Wire>(
        &self,
        len: usize,
        first: Option<&A>,
        chunksize: Option<usize>,
    ) -> Result<usize> {
        if let Some(c) = chunksize {
            return Ok(c); // checked by `Pool::chunked`
        }
        let mut size = len.div_ceil(self.workers() * 4).max(1);
        if let Some(first) = first {
            let mut probe = Encoder::new();
            crate::wire::encode_guarded(first, &mut probe);
            let budget = (self.shared.max_payload.saturating_sub(8) / 2).min(1 << 18);
            size = size.min((budget / probe.len().max(1)).max(1));
        }
        Ok(size)
    }

    /// The one rule for every method's chunk size, checked by
    /// [`chunked`](Pool::chunked) before anything is allocated or any item
    /// taken: at least 1 item, and at most as many items as one ring message
    /// has bytes (the item's size is not known here; the bound keeps a lazy
    /// map from collecting without end). A chunk whose encoding is larger
    /// than a message travels out of line, as a large argument does.
    pub(super) fn check_chunksize(&self, chunksize: usize) -> Result<usize> {
        let max = self.shared.max_payload;
        if (1..=max).contains(&chunksize) {
            Ok(chunksize)
        } else {
            Err(Error::InvalidConfig {
                what: format!(
                    "chunksize {chunksize} is out of range: give 1 to {max} items (one per byte of a ring message, {max} bytes; raise `ring_bytes` for more; a chunk whose items take more bytes than a message travels out of line, in the argument arena or a segment of its own), or call the pool's method itself for the default"
                ),
            })
        }
    }

    /// Cuts `items` into encoded chunks, one at a time (see [`Chunker`]).
    /// An iterator that does not know its length exactly is collected
    /// first, so that the default chunk size can be computed.
    pub(super) fn chunker<A: Wire, I: Iterator<Item = A>>(
        &self,
        items: impl IntoIterator<Item = A, IntoIter = I>,
        chunksize: Option<usize>,
    ) -> Result<Chunker<A, I>> {
        // A given size comes from `Chunked`, which checked it.
        debug_assert!(chunksize.is_none_or(|c| self.check_chunksize(c).is_ok()));
        let iter = items.into_iter();
        let (mut iter, len) = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => (Items::Exact(iter), lo),
            _ => {
                let all: Vec<A> = iter.collect();
                let len = all.len();
                (Items::Collected(all.into_iter()), len)
            }
        };
        let first = iter.next();
        let chunksize = self.chunksize_for(len, first.as_ref(), chunksize)?;
        // Made at the first map of plain data that needs it (callers
        // checked that this process owns the pool).
        // Not for maps whose chunks are small anyway (nor zero-sized
        // items, whose bytes are none): the arena is a file.
        let arena = crate::wire::plain_of::<A>()
            .and_then(|plain| plain.bytes_for(chunksize.min(len)))
            .filter(|&bytes| bytes.saturating_add(8) >= ARENA_CHUNK_MIN)
            .and_then(|_| self.shared.arena().cloned());
        Ok(Chunker {
            first,
            iter,
            chunksize,
            len_hint: len,
            chunk: Vec::new(),
            arena,
        })
    }
}
