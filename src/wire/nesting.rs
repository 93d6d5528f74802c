//! How deeply a value may nest, and what a panic in a user's `Wire` code
//! becomes. Decoding and encoding recurse once per level of a value's own
//! types, so a value nested deeply enough (a long linked list, a deep tree,
//! or a few forged kilobytes) would overflow the stack of the thread that
//! decodes it and abort the whole program. So every `#[derive(Wire)]` type
//! counts one level, and a value deeper than [`MAX_NESTING`] levels is an
//! [`Error::Decode`](crate::Error::Decode) for the receiver and, before
//! anything is sent, an [`Error::Encode`](crate::Error::Encode) for the
//! sender. A decode whose levels use more than [`STACK_BUDGET`] of stack
//! (levels with huge frames) is refused too, and so is a `Serde<T>` value
//! (postcard has no depth limit of its own) past the same budget.
//!
//! Recursion in a value can only go through user types: corepool's own
//! impls (`Vec<T>`, `Option<T>`, tuples, ...) nest exactly as deep as the
//! type says, and recursive serde types are postcard's, bounded by
//! [`StackBound`].

use crate::error::Result;
use crate::wire::{decode_error, Encoder};
use std::cell::Cell;

/// The most levels of `#[derive(Wire)]` types a value may nest: a
/// `struct Node { v: u64, kids: Vec<Node> }` chain of 128 nodes crosses,
/// one of 129 does not (serde_json's default limit is also 128).
///
/// Measured on the decoding side (x86-64, a leaf recording the deepest
/// stack address reached; `tests/derive.rs` decodes that `Node` at the
/// limit on the driver thread): a level of that `Node` takes
/// 2.0 KiB of stack in a debug build and 0.5 KiB in release; a JSON-like
/// enum (`Arr(Vec<Json>)`, `Obj(Vec<(String, Json)>)`, ...) 3.8 and 0.55
/// KiB; a struct of eight fields (strings, a `[u64; 16]`, a tuple,
/// `Vec<Self>`) 4.9 and 1.3 KiB. So 128 levels take at most 0.6 MiB in
/// debug and 0.17 MiB in release of the 2 MiB stacks of the threads that
/// decode results (`corepool-driver`, `corepool-mpi`, a spawned thread of
/// the user's waiting in `get`), within [`STACK_BUDGET`]; without a limit
/// a chain of about 1,000 nodes overflowed them (debug). Encoding takes a
/// tenth of that.
pub(crate) const MAX_NESTING: u32 = 128;

/// The most stack a decode's levels may use, from the outermost one: a
/// backstop for levels whose frames are far larger than those measured for
/// [`MAX_NESTING`] (a large array inline in a recursive type), and the
/// bound on postcard's recursion. Half of a 2 MiB thread stack: the other
/// half is for what the thread used before the decode, and the last level.
pub(crate) const STACK_BUDGET: usize = 1 << 20;

/// This thread's decoding nesting: one thread-local for all of it, so that
/// a level costs one lookup (a `Vec` of a million small derived values
/// enters a million levels). Encoding counts its levels in the `Encoder`.
struct Nesting {
    /// Levels of derived types being decoded.
    decoding: Cell<u32>,
    /// The stack address where the outermost decode level began
    /// (meaningful while `decoding` is above 0).
    decode_start: Cell<usize>,
}

thread_local! {
    static NESTING: Nesting = const {
        Nesting {
            decoding: Cell::new(0),
            decode_start: Cell::new(0),
        }
    };
}

/// An address in the current stack frame.
#[inline(always)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Stack used since `start`, an earlier [`stack_address`] of this thread
/// (0 under Miri, which places locals anywhere, not on a stack).
#[inline(always)]
fn stack_used_since(start: usize) -> usize {
    if cfg!(miri) {
        return 0;
    }
    // The stack grows down on every target corepool runs on (Linux on
    // x86-64 and aarch64).
    start.saturating_sub(stack_address())
}

/// One level of decoding, counted while it lives: dropped at the end of the
/// level's `decode`, by `?`, a return or a panic unwinding.
#[must_use = "the level ends when this is dropped"]
pub(crate) struct DecodeLevel(());

impl Drop for DecodeLevel {
    #[inline]
    fn drop(&mut self) {
        // `try_with`: the state has no destructor, so it is always there,
        // but a drop must never panic.
        let _ = NESTING.try_with(|n| n.decoding.set(n.decoding.get().saturating_sub(1)));
    }
}

/// What a user with a deeper value should do.
const ADVICE: &str = "send a deep structure flattened instead (its nodes in a `Vec`, each \
                      naming its children by index), or encode it iteratively in a \
                      hand-written `Wire` impl";

/// Called first by every derived `decode`: one more level of nesting of
/// `T`, or [`Error::Decode`](crate::Error::Decode) if that is more than
/// [`MAX_NESTING`], or if the levels have used more than [`STACK_BUDGET`].
///
/// # Errors
///
/// [`Error::Decode`](crate::Error::Decode) naming `T` when the value nests
/// too deeply.
#[inline]
pub(crate) fn decode_level<T: ?Sized>() -> Result<DecodeLevel> {
    let (depth, used) = NESTING.with(|n| {
        let depth = n.decoding.get().saturating_add(1);
        n.decoding.set(depth);
        if depth == 1 {
            n.decode_start.set(stack_address());
            return (depth, 0);
        }
        (depth, stack_used_since(n.decode_start.get()))
    });
    let level = DecodeLevel(());
    if depth > MAX_NESTING {
        return Err(too_deep::<T>());
    }
    if used > STACK_BUDGET {
        return Err(too_much_stack::<T>(depth, used));
    }
    Ok(level)
}

#[cold]
#[inline(never)]
fn too_deep<T: ?Sized>() -> crate::Error {
    decode_error::<T>(format!(
        "the value nests more than {MAX_NESTING} levels of `#[derive(Wire)]` types deep, \
         more than corepool decodes (deeper would risk overflowing the decoding thread's \
         stack): the sender is corrupt, or it sent a recursive value this deep; {ADVICE}"
    ))
}

#[cold]
#[inline(never)]
fn too_much_stack<T: ?Sized>(depth: u32, used: usize) -> crate::Error {
    decode_error::<T>(format!(
        "after {depth} levels of `#[derive(Wire)]` types the decode has used {} KiB of \
         stack, more than the {} KiB corepool allows (deeper would risk overflowing the \
         decoding thread's stack): the sender is corrupt, or it sent a recursive value \
         whose levels are this large (a large array inside a recursive type; debug \
         builds take several times the stack of release builds); box large fields \
         into a `Vec`, or {ADVICE}",
        used >> 10,
        STACK_BUDGET >> 10
    ))
}

/// Records in `out` that a value of `T` nests more levels deep than a
/// receiver decodes (see [`Encoder::__enter_level`]).
#[cold]
#[inline(never)]
pub(crate) fn fail_too_deep<T: ?Sized>(out: &mut Encoder) {
    out.fail::<T>(format!(
        "the value nests more than {MAX_NESTING} levels of `#[derive(Wire)]` types deep, \
         more than corepool decodes (deeper would risk overflowing the receiving thread's \
         stack), so it is not sent; {ADVICE}"
    ));
}

/// The text of a panic's payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Runs `decode`, a decoder of `T` that may run a user's `Wire` code: a
/// panic in it is that decode's [`Error::Decode`](crate::Error::Decode) naming `T`, instead of
/// unwinding into corepool or its caller.
pub(crate) fn catch_decode_panic<T, R>(decode: impl FnOnce() -> Result<R>) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|payload| {
        Err(decode_error::<T>(format!(
            "a `Wire::decode` impl panicked while decoding it, or code it runs (a key's \
             `Hash` or `Ord` in a map or set; a `decode` should return \
             `Err(Error::Decode)` for input it cannot take): {}",
            panic_text(&*payload)
        )))
    })
}

/// Runs `encode`, which writes a `T` into `out` and may run a user's `Wire`
/// code: a panic in it is recorded in `out` as an [`Error::Encode`](crate::Error::Encode) naming
/// `T` (see [`Encoder::fail`]), instead of unwinding into corepool or its
/// caller.
pub(crate) fn catch_encode_panic<T, R>(
    out: &mut Encoder,
    encode: impl FnOnce(&mut Encoder) -> R,
) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode(&mut *out))) {
        Ok(written) => Some(written),
        Err(payload) => {
            out.fail::<T>(format!(
                "a `Wire::encode` impl panicked while encoding it (an `encode` should call \
                 `Encoder::fail` for a value it cannot encode): {}",
                panic_text(&*payload)
            ));
            None
        }
    }
}

/// Bounds the stack that postcard, which has no depth limit of its own, may
/// use while it deserializes a `Serde<T>`: a postcard input flavor that, at
/// every byte it reads, measures the stack used since the outermost decode
/// level began (or since it was made, outside one), and refuses to go on
/// past [`STACK_BUDGET`]. Every level of a recursive serde
/// type reads at least a byte (a tag, a length), so a forged or too deep
/// value stops there, with a decode error.
#[cfg(feature = "serde")]
pub(crate) struct StackBound<'de> {
    input: postcard::de_flavors::Slice<'de>,
    /// Where the stack is measured from.
    start: usize,
    /// Set when the bound stopped deserializing.
    exceeded: &'de Cell<bool>,
}

#[cfg(feature = "serde")]
impl<'de> StackBound<'de> {
    /// A flavor reading `input`; `exceeded` is set if the bound stops it.
    pub(crate) fn new(input: &'de [u8], exceeded: &'de Cell<bool>) -> Self {
        let start = NESTING.with(|n| {
            if n.decoding.get() > 0 {
                n.decode_start.get()
            } else {
                stack_address()
            }
        });
        Self {
            input: postcard::de_flavors::Slice::new(input),
            start,
            exceeded,
        }
    }

    fn check(&self) -> postcard::Result<()> {
        if stack_used_since(self.start) > STACK_BUDGET {
            self.exceeded.set(true);
            return Err(postcard::Error::DeserializeBadEncoding);
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
impl<'de> postcard::de_flavors::Flavor<'de> for StackBound<'de> {
    type Remainder = &'de [u8];
    type Source = &'de [u8];

    fn pop(&mut self) -> postcard::Result<u8> {
        self.check()?;
        self.input.pop()
    }

    fn size_hint(&self) -> Option<usize> {
        self.input.size_hint()
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        self.check()?;
        self.input.try_take_n(ct)
    }

    fn finalize(self) -> postcard::Result<&'de [u8]> {
        self.input.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::wire::{decode_exact, encode_carried, encode_payload, Wire};

    /// What `#[derive(Wire)]` generates for `enum List { End, Cons(Vec<List>) }`,
    /// written out (the crate cannot derive for itself): a tag, then the
    /// variant's field, inside one level.
    #[derive(Debug, PartialEq)]
    enum List {
        End,
        Cons(Vec<List>),
    }

    impl Wire for List {
        fn encode(&self, out: &mut Encoder) {
            if !out.__enter_level::<Self>() {
                return;
            }
            match self {
                List::End => 0u8.encode(out),
                List::Cons(kids) => {
                    1u8.encode(out);
                    kids.encode(out);
                }
            }
            out.__leave_level();
        }
        fn decode(input: &mut &[u8]) -> Result<Self> {
            let _level = Encoder::__enter_decode_level::<Self>()?;
            match u8::decode(input)? {
                0 => Ok(List::End),
                1 => Ok(List::Cons(Vec::decode(input)?)),
                tag => Err(decode_error::<Self>(format!("tag {tag}"))),
            }
        }
    }

    /// A chain of `depth` levels: `depth - 1` conses, then the end.
    fn chain(depth: u32) -> List {
        (1..depth).fold(List::End, |inner, _| List::Cons(vec![inner]))
    }

    /// The encoding of [`chain`]`(depth)`, written byte by byte: what a
    /// hostile sender needs no deep value for.
    fn forged_chain(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(depth * 9);
        for _ in 1..depth {
            bytes.push(1);
            bytes.extend_from_slice(&1u64.to_le_bytes());
        }
        bytes.push(0);
        bytes
    }

    /// Runs `f` on a thread with the 2 MiB stack of corepool's own threads.
    fn on_a_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    /// Levels being decoded on this thread.
    fn depth_now() -> u32 {
        NESTING.with(|n| n.decoding.get())
    }

    #[test]
    fn a_value_at_the_limit_crosses_and_one_level_more_does_not() {
        on_a_small_stack(|| {
            let deepest = chain(MAX_NESTING);
            let bytes = encode_carried(&deepest).unwrap().0;
            assert_eq!(bytes, forged_chain(MAX_NESTING as usize));
            assert_eq!(decode_exact::<List>(&bytes).unwrap(), deepest);

            let err = encode_carried(&chain(MAX_NESTING + 1)).unwrap_err();
            assert!(
                matches!(&err, Error::Encode { type_name, reason }
                    if type_name.ends_with("List") && reason.contains("128 levels")),
                "{err}"
            );
            let err = decode_exact::<List>(&forged_chain(MAX_NESTING as usize + 1)).unwrap_err();
            assert!(
                matches!(&err, Error::Decode { type_name, reason }
                    if type_name.ends_with("List") && reason.contains("flattened")),
                "{err}"
            );
            assert_eq!(depth_now(), 0, "every level unwound");
        });
    }

    #[test]
    fn a_forged_deep_encoding_is_a_decode_error_not_a_stack_overflow() {
        // Under Miri fewer bytes: each is interpreted.
        let depth = if cfg!(miri) { 10_000 } else { 1_000_000 };
        on_a_small_stack(move || {
            // 9 MB for a million levels: once a dead parent at a few thousand.
            let err = decode_exact::<List>(&forged_chain(depth)).unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{err}");
            let err = decode_exact::<Vec<Option<List>>>(&{
                let mut bytes = vec![1, 0, 0, 0, 0, 0, 0, 0, 1];
                bytes.extend_from_slice(&forged_chain(depth));
                bytes
            })
            .unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{err}");
            assert_eq!(depth_now(), 0);
            // The thread decodes on as before.
            assert_eq!(decode_exact::<List>(&[0]).unwrap(), List::End);
        });
    }

    /// A `Wire` impl that panics on demand, at any depth.
    #[derive(Debug)]
    struct Bomb(u8);

    impl Wire for Bomb {
        fn encode(&self, out: &mut Encoder) {
            assert_ne!(self.0, 13, "thirteen does not encode");
            self.0.encode(out);
        }
        fn decode(input: &mut &[u8]) -> Result<Self> {
            let v = u8::decode(input)?;
            assert_ne!(v, 14, "fourteen does not decode");
            Ok(Bomb(v))
        }
    }

    #[test]
    fn a_panicking_wire_impl_is_an_error_naming_the_type_and_unwinds_the_levels() {
        // Inside levels, so that the panic unwinds through them.
        let inside = |b: u8| (chain(3), vec![Bomb(b)]);
        let err = encode_payload(&inside(13)).unwrap_err();
        assert!(
            matches!(&err, Error::Encode { type_name, reason }
                if type_name.contains("Bomb") && reason.contains("panicked")
                    && reason.contains("thirteen does not encode")),
            "{err}"
        );
        assert_eq!(depth_now(), 0);
        // The thread's reused encoder is clean again.
        let bytes = encode_payload(&inside(14)).unwrap().0;
        let err = decode_exact::<(List, Vec<Bomb>)>(&bytes).unwrap_err();
        assert!(
            matches!(&err, Error::Decode { type_name, reason }
                if type_name.contains("Bomb") && reason.contains("panicked")
                    && reason.contains("fourteen does not decode")),
            "{err}"
        );
        assert_eq!(depth_now(), 0);
        let bytes = encode_payload(&inside(15)).unwrap().0;
        assert_eq!(
            decode_exact::<(List, Vec<Bomb>)>(&bytes).unwrap().1[0].0,
            15
        );
    }

    #[test]
    fn levels_far_larger_than_measured_stop_at_the_stack_budget() {
        // 64 KiB of array per level, decoded by value: about 128 KiB of
        // stack each (more in debug), so well before `MAX_NESTING` levels
        // the backstop refuses them on a 2 MiB stack.
        #[derive(Debug)]
        struct Fat(Box<[u8; 1 << 16]>, Vec<Fat>);
        impl Wire for Fat {
            fn encode(&self, out: &mut Encoder) {
                if !out.__enter_level::<Self>() {
                    return;
                }
                self.0.as_slice().to_vec().encode(out);
                self.1.encode(out);
                out.__leave_level();
            }
            fn decode(input: &mut &[u8]) -> Result<Self> {
                let _level = Encoder::__enter_decode_level::<Self>()?;
                let big = std::hint::black_box(<[u8; 1 << 16]>::decode(input)?);
                Ok(Fat(Box::new(big), Vec::decode(input)?))
            }
        }
        if cfg!(miri) {
            return; // no stack to measure
        }
        let mut bytes = Vec::new();
        for _ in 0..64 {
            bytes.extend_from_slice(&[0; 1 << 16]);
            bytes.extend_from_slice(&1u64.to_le_bytes());
        }
        on_a_small_stack(move || {
            let err = decode_exact::<Fat>(&bytes).unwrap_err();
            assert!(
                matches!(&err, Error::Decode { reason, .. } if reason.contains("KiB of stack")),
                "{err}"
            );
            assert_eq!(depth_now(), 0);
        });
    }

    #[cfg(feature = "serde")]
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    enum Tree {
        Leaf,
        Node(Vec<Tree>),
    }

    #[cfg(feature = "serde")]
    #[test]
    #[cfg_attr(miri, ignore = "no stack to measure under Miri")]
    fn a_forged_deep_serde_value_is_a_decode_error_not_a_stack_overflow() {
        use crate::wire::Serde;
        on_a_small_stack(|| {
            // postcard: variant 1 (`Node`), one element, ... then `Leaf`.
            let depth = 1_000_000;
            let mut body = Vec::with_capacity(2 * depth + 1);
            for _ in 0..depth {
                body.extend_from_slice(&[1, 1]);
            }
            body.push(0);
            let mut bytes = (body.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(&body);
            let err = decode_exact::<Serde<Tree>>(&bytes).unwrap_err();
            assert!(
                matches!(&err, Error::Decode { reason, .. } if reason.contains("KiB of stack")),
                "{err}"
            );
            assert_eq!(depth_now(), 0);
            // A tree of ordinary depth still decodes.
            let mut tree = Tree::Leaf;
            for _ in 0..100 {
                tree = Tree::Node(vec![tree]);
            }
            let bytes = encode_carried(&Serde(tree)).unwrap().0;
            assert!(decode_exact::<Serde<Tree>>(&bytes).is_ok());
        });
    }
}
