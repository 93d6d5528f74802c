//! [`Ring`]: where one Vyukov ring's words lie, the view the slot protocol
//! ([`super::slot`]) works on. A bounded queue is one ring; an unbounded
//! queue ([`super::unbounded`]) is a chain of them.
//!
//! A ring's `head` and `tail` lie in the queue's control memory, its slots
//! wherever its [`QueueMemory`] says (the same segment for a bounded queue,
//! the growable data file for an unbounded one). Slot state words are stored
//! *biased* by their index ([`SlotWord`]), so that zeroed memory is a ring
//! ready for its first lap: a ring appended to an unbounded queue needs no
//! initialization, which no process could do without others waiting for it.

use super::memory::QueueMemory;
use crate::shm::owner::OwnerTag;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Bits of a slot state word that hold the position (`seq`).
pub(super) const SEQ_BITS: u32 = 40;
pub(super) const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// State word (8 bytes), length word (4), owner tag (4), then the value.
pub(super) const SLOT_HEADER: usize = 16;

/// Bytes from one slot to the next for values of up to `message_bytes`.
pub(super) fn stride_for(message_bytes: usize) -> usize {
    (SLOT_HEADER + message_bytes).next_multiple_of(64)
}

/// One process's view of one ring: its control words and its slots.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ring {
    /// The queue's control memory: `head`, `tail`, `closed_for_puts` and the
    /// queue's event counts.
    pub(super) control: QueueMemory,
    head_at: usize,
    tail_at: usize,
    /// Where the word lies that closes this ring to puts (rings of an
    /// unbounded queue); `None` for a bounded queue's one ring.
    closed_at: Option<usize>,
    /// Slot `i` at `i * stride`.
    pub(super) slots: QueueMemory,
    pub(super) capacity: u64,
    pub(super) message_bytes: usize,
    stride: usize,
    /// Its place in an unbounded queue's chain (0 for a bounded queue).
    pub(super) index: u64,
}

impl Ring {
    /// A ring whose `head` and `tail` are the u64 words at `head_at` and
    /// `tail_at` of `control`, with `capacity` slots (a power of two) of
    /// `message_bytes` at the start of `slots`, ring number `index` of its
    /// queue. The caller checked that `slots` holds them and that the
    /// offsets lie in `control`.
    pub(super) fn new(
        control: QueueMemory,
        (head_at, tail_at, closed_at): (usize, usize, Option<usize>),
        slots: QueueMemory,
        (capacity, message_bytes): (u64, usize),
        index: u64,
    ) -> Self {
        Self {
            control,
            head_at,
            tail_at,
            closed_at,
            slots,
            capacity,
            message_bytes,
            stride: stride_for(message_bytes),
            index,
        }
    }

    pub(super) fn slot_base(&self, pos: u64) -> usize {
        (pos % self.capacity) as usize * self.stride
    }

    /// The state word of the slot position `pos` falls on.
    pub(super) fn slot_state(&self, pos: u64) -> SlotWord<'_> {
        SlotWord {
            word: self.slots.word64(self.slot_base(pos)),
            bias: pos % self.capacity,
        }
    }

    pub(super) fn slot_len(&self, pos: u64) -> &AtomicU32 {
        self.slots.word32(self.slot_base(pos) + 8)
    }

    /// The tag of the process named in the slot's state word while it
    /// writes or reads it.
    pub(super) fn slot_owner(&self, pos: u64) -> OwnerTag<'_> {
        OwnerTag::new(self.slots.word32(self.slot_base(pos) + 12))
    }

    pub(super) fn head(&self) -> &AtomicU64 {
        self.control.word64(self.head_at)
    }

    pub(super) fn tail(&self) -> &AtomicU64 {
        self.control.word64(self.tail_at)
    }

    /// Values it holds (a snapshot: others may be putting and getting).
    pub(super) fn len(&self) -> u64 {
        // Acquire (both) pairs with the AcqRel CASes in `help_head` and
        // `help_tail` (mpmc/slot.rs). `head` first: it never passes `tail`,
        // which only grows.
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        // Saturating, not wrapping: `head` never passes `tail`, and a garbage
        // `head` beyond `tail` had better read as empty than as full.
        tail.saturating_sub(head).min(self.capacity)
    }

    /// Whether puts into this ring are over (an unbounded queue grew past
    /// it). Always `false` for a bounded queue's ring.
    pub(super) fn closed_for_puts(&self) -> bool {
        // SeqCst: pairs with the SeqCst claim CAS in `put_once` (a producer
        // that claimed before the close is seen by a consumer that loads this
        // and then the slot) and with the SeqCst store in `close_for_puts`.
        self.closed_at
            .is_some_and(|at| self.control.word32(at).load(Ordering::SeqCst) != 0)
    }

    /// Ends puts into this ring (an unbounded queue's producer grows past
    /// it). Only for rings with a `closed_at` word.
    pub(super) fn close_for_puts(&self) {
        if let Some(at) = self.closed_at {
            // SeqCst: pairs with the SeqCst loads in `closed_for_puts`.
            self.control.word32(at).store(1, Ordering::SeqCst);
        }
    }
}

/// A slot's state word, stored with its `seq` lowered by the slot's index
/// (`bias`): a zero word reads as "empty, ready for position `index`", the
/// slot's state before its first lap. Every load, store and CAS goes through
/// here and deals in unbiased words ([`super::slot`]'s `pack`).
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotWord<'a> {
    word: &'a AtomicU64,
    bias: u64,
}

/// `word` with its `seq` field moved by `delta` (mod 2^40).
fn shift_seq(word: u64, delta: u64) -> u64 {
    let seq = ((word >> 24).wrapping_add(delta)) & SEQ_MASK;
    (seq << 24) | (word & ((1 << 24) - 1))
}

impl SlotWord<'_> {
    fn stored(&self, word: u64) -> u64 {
        shift_seq(word, self.bias.wrapping_neg())
    }

    fn unbiased(&self, stored: u64) -> u64 {
        shift_seq(stored, self.bias)
    }

    pub(super) fn load(&self, order: Ordering) -> u64 {
        self.unbiased(self.word.load(order))
    }

    pub(super) fn store(&self, word: u64, order: Ordering) {
        self.word.store(self.stored(word), order);
    }

    pub(super) fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        self.word
            .compare_exchange(self.stored(current), self.stored(new), success, failure)
            .map(|w| self.unbiased(w))
            .map_err(|w| self.unbiased(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_word_is_ready_for_its_index() {
        let word = AtomicU64::new(0);
        let slot = SlotWord {
            word: &word,
            bias: 5,
        };
        assert_eq!(slot.load(Ordering::Relaxed) >> 24, 5);
        slot.store((9 << 24) | 3, Ordering::Relaxed);
        assert_eq!(word.load(Ordering::Relaxed), (4 << 24) | 3);
        assert_eq!(slot.load(Ordering::Relaxed), (9 << 24) | 3);
        // Below the bias, the stored seq wraps at 40 bits and comes back.
        slot.store(2 << 24, Ordering::Relaxed);
        assert_eq!(slot.load(Ordering::Relaxed), 2 << 24);
        assert!(slot
            .compare_exchange(2 << 24, 7 << 24, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok());
        assert_eq!(
            slot.compare_exchange(2 << 24, 0, Ordering::Relaxed, Ordering::Relaxed),
            Err(7 << 24)
        );
    }
}
