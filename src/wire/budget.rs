//! How much memory decoding may allocate: a small multiple of the bytes
//! decoded, so that a forged element count can never make a receiver reserve
//! gigabytes (or abort) for a few kilobytes of input.
//!
//! A decode that starts at one of the crate's entry points
//! ([`super::decode_exact`], [`super::decode_vec_into`]) gets one budget for
//! the whole value, nested sequences included; a sequence decoded outside
//! them (a user calling `Vec::<T>::decode` directly) is held to the same
//! rule on its own.

use crate::error::Result;
use crate::wire::decode_error;
use std::cell::Cell;

/// Decoded memory allowed per byte of input.
const BYTES_PER_INPUT_BYTE: usize = 64;
/// Decoded memory always allowed, however short the input: room for real
/// values that are large in memory but small on the wire (a user trial's
/// 200,000 `None`s of an `Option<[u64; 16]>`, 53 MB from 200 KB, were
/// refused under the earlier 16 MiB), while a forged count still cannot
/// make a receiver reserve more than this plus the multiple of its input.
const FLOOR: usize = 256 << 20;

thread_local! {
    /// Bytes the decode in progress on this thread may still allocate for
    /// sequences; `None` outside [`with_budget`].
    static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The budget for decoding `input_len` bytes.
fn budget_for(input_len: usize) -> usize {
    input_len.saturating_mul(BYTES_PER_INPUT_BYTE).max(FLOOR)
}

/// Runs `decode` with a budget for `input_len` bytes of input (restoring an
/// enclosing one afterwards: decodes can nest through `Wire` impls).
pub(super) fn with_budget<R>(input_len: usize, decode: impl FnOnce() -> R) -> R {
    /// Puts the enclosing budget back, even if a `Wire` impl panics.
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEFT.with(|left| left.set(self.0));
        }
    }
    let _restore = Restore(LEFT.with(|left| left.replace(Some(budget_for(input_len)))));
    decode()
}

/// Charges `n` values of `size` bytes each, about to be decoded from the
/// `input_left` bytes that remain, to the budget; a decode error for the
/// sequence type `T` if they do not fit.
pub(super) fn charge<T>(n: usize, size: usize, input_left: usize) -> Result<()> {
    let wanted = n.saturating_mul(size);
    LEFT.with(|left| {
        let available = left.get().unwrap_or_else(|| budget_for(input_left));
        if wanted > available {
            return Err(decode_error::<T>(format!(
                "{n} values of {size} bytes would take {wanted} bytes of memory, more than the \
                 {available} allowed for {input_left} bytes of input (256 MiB, or 64 bytes per \
                 byte of input if more): the sender is corrupt, or sends values far larger in \
                 memory than on the wire (send fewer per message)"
            )));
        }
        if let Some(budget) = left.get() {
            left.set(Some(budget - wanted));
        }
        Ok(())
    })
}
