//! What a task is on the wire: a function named by its offset in the binary, and
//! encoded arguments.
//!
//! Parent and worker run the same executable (the worker is `/proc/self/exe`
//! re-executed, and the handshake compares fingerprints), but address-space
//! randomisation loads it at different addresses. So a function is named by the
//! distance of its *trampoline* from [`anchor`], a fixed function of this crate;
//! the worker adds that distance to its own `anchor`.
//!
//! A trampoline is a monomorphised `fn(&[u8], &mut Encoder)` that decodes the
//! arguments, calls the user's function and encodes the result. The user's
//! function must be a zero-sized type — a `fn` item or a closure that captures
//! nothing — so that the trampoline can conjure it in the worker. That is
//! checked at compile time: a capturing closure fails `cargo build` with a
//! message naming the fix ([`assert_captures_nothing`] says why `cargo check`
//! cannot see it).

use crate::error::{Error, Result};
use crate::wire::{
    decode_error, decode_exact, encode_guarded, plain_of, Encoder, PlainLayout, Wire,
};

/// Record kinds of the task and result rings (`ring::KIND_PAD` is 0).
pub(crate) mod kind {
    /// Parent → worker: run trampoline `aux` on the payload; `id` is the task
    /// id. The `kind` word is the record's ownership tag: the worker CASes it
    /// to [`TAKEN`] before running the task, the parent to [`CANCELLED`] to
    /// take the task back; exactly one wins.
    pub(crate) const TASK: u32 = 1;
    /// A task record the worker has started.
    pub(crate) const TAKEN: u32 = 5;
    /// A task record the parent took back; the worker skips it.
    pub(crate) const CANCELLED: u32 = 6;
    /// Worker → parent: the task returned; the payload is the encoded result.
    pub(crate) const OK: u32 = 2;
    /// Worker → parent: the task panicked; the payload is the message (UTF-8).
    pub(crate) const PANICKED: u32 = 3;
    /// Worker → parent: the worker could not run the task or send its result;
    /// `flags` says why ([`super::failure`]); the payload is a message.
    pub(crate) const FAILED: u32 = 4;
}

/// Codes carried in a `FAILED` record's `flags`.
pub(crate) mod failure {
    /// The arguments did not decode.
    pub(crate) const DECODE: u32 = 1;
    /// The result was larger than the result ring takes; `aux` is its size.
    pub(crate) const RESULT_TOO_LARGE: u32 = 2;
    /// Any other error the trampoline returned; the payload is its message.
    pub(crate) const TASK_ERROR: u32 = 3;
    /// The result could not be encoded; the payload is the encoder's message.
    pub(crate) const ENCODE: u32 = 4;
}

/// The signature every trampoline has.
pub(crate) type Trampoline = fn(&[u8], &mut Encoder) -> Result<()>;

/// The fixed point function offsets are measured from.
#[inline(never)]
pub(crate) fn anchor(input: &[u8], _out: &mut Encoder) -> Result<()> {
    // A body of its own, so that the linker cannot fold it into another function.
    std::hint::black_box(input.len() ^ 0xC0DE_9001);
    Ok(())
}

/// The distance of `trampoline` from [`anchor`] in this binary.
pub(crate) fn offset_of(trampoline: Trampoline) -> i64 {
    (trampoline as usize).wrapping_sub(anchor as Trampoline as usize) as i64
}

/// The trampoline at `offset` from [`anchor`].
///
/// # Safety
///
/// `offset` must come from [`offset_of`] in a process running the very same
/// binary (the worker handshake checks the fingerprint), so that the address
/// is the start of a function with the `Trampoline` signature.
pub(crate) unsafe fn from_offset(offset: i64) -> Trampoline {
    let address = (anchor as Trampoline as usize).wrapping_add(offset as usize);
    // An integer-to-pointer cast, not a transmute of the integer: it picks up
    // the provenance that `offset_of`'s pointer-to-integer cast exposed (Miri
    // checks this; a transmuted integer would be a pointer to nothing).
    let pointer = address as *const ();
    // SAFETY: by the caller's contract `pointer` is a function of type
    // `Trampoline` in this image; fn pointers and data pointers have the same
    // size on every platform corepool runs on (Linux).
    unsafe { std::mem::transmute::<*const (), Trampoline>(pointer) }
}

/// Fails the build when `F` is not zero-sized: when a task is a closure that
/// captures variables. Evaluated in a `const` block, so the failure is a
/// compile error, never a panic at run time.
///
/// This is a post-monomorphisation check: `cargo build` (and `cargo test`,
/// `cargo run`) report it, `cargo check` and rust-analyzer do not. Stable Rust
/// has no trait that only non-capturing closures implement, and `cargo check`
/// never evaluates constants that depend on a generic parameter
/// (rust-lang/rust#99682, by design), so nothing earlier is possible. The
/// message names the fix; the closure's own `file:line:col` is in the type
/// named in the note under it (`{closure@src/main.rs:10:30: 10:42}`), and the
/// check is as close to the user's call as the trampolines allow.
///
/// A `const fn` so that an inline `const { assert_captures_nothing::<F>() }`
/// can run it in any generic function: placed in the body of the public method
/// the user calls, the compiler's "while instantiating" note points at the
/// user's line instead of at corepool's source.
pub(crate) const fn assert_captures_nothing<F>() {
    assert!(
        std::mem::size_of::<F>() == 0,
        "a corepool task must be a `fn` item or a closure that captures \
         nothing: this one captures variables (or is a `fn` pointer or boxed \
         closure chosen at run time), and a worker runs the task's code, never \
         this value, so it would not see them. Pass the data in the task's \
         argument instead (`pool.apply(|(x, k): (u64, u64)| x + k, (x, k))`; \
         adding `move` does not help), or choose between `fn` items with a \
         `match` around the calls. A closure's file:line:col is in the type \
         named below"
    );
}

/// Materialises a value of the zero-sized function type `F`.
fn conjure<F: Copy + 'static>() -> F {
    const { assert_captures_nothing::<F>() };
    // SAFETY: `F` is zero-sized (asserted at compile time), so reading it from
    // a dangling, aligned, non-null pointer reads no memory. `F: Copy` and the
    // parent owned a value of `F` when it named this trampoline, so the type is
    // inhabited and duplicating a value of it is allowed.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

/// Calls `F` on one decoded argument.
pub(crate) fn call_one<F, A, R>(input: &[u8], out: &mut Encoder) -> Result<()>
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: Wire,
    R: Wire,
{
    let f = conjure::<F>();
    // A user's `Wire` code that panics is this task's `Error::Decode` or
    // `Error::Encode` (caught in `decode_exact` and `encode_guarded`); a
    // panic in `f` is the task's own (`Error::Panicked`, caught by the
    // worker).
    let arg = decode_exact::<A>(input)?;
    argument_decoded();
    let result = f(arg);
    encode_guarded(&result, out);
    Ok(())
}

thread_local! {
    /// What to do once this thread's next argument is decoded, before the
    /// function runs (a `Process` child tells its parent, see
    /// `process::child`).
    static AFTER_DECODE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` once the next argument [`call_one`] decodes on this thread is
/// decoded, before the function is called with it.
pub(crate) fn after_next_decode(f: impl FnOnce() + 'static) {
    AFTER_DECODE.with(|after| *after.borrow_mut() = Some(Box::new(f)));
}

fn argument_decoded() {
    if let Some(f) = AFTER_DECODE.with(|after| after.borrow_mut().take()) {
        f();
    }
}

/// Calls `F` on every argument of a chunk, in order.
pub(crate) fn call_chunk<F, A, R>(input: &[u8], out: &mut Encoder) -> Result<()>
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: Wire,
    R: Wire,
{
    run_chunk(input, out, conjure::<F>())
}

/// Calls `F` with each tuple of a chunk spread into its arguments.
pub(crate) fn call_star_chunk<F, T, R>(input: &[u8], out: &mut Encoder) -> Result<()>
where
    F: StarFn<T, R>,
    T: Wire,
    R: Wire,
{
    let f = conjure::<F>();
    run_chunk(input, out, |t: T| f.call_star(t))
}

/// Decodes a chunk's arguments (an encoded `Vec<A>`), calls `f` on each in
/// order and encodes the results as a `Vec<R>`. Plain data is read straight
/// from the arguments' encoding and written straight into the results'
/// (see [`PlainLayout`]): one pass, with no `Vec` of arguments or results.
fn run_chunk<A: Wire, R: Wire>(
    input: &[u8],
    out: &mut Encoder,
    f: impl FnMut(A) -> R,
) -> Result<()> {
    match plain_of::<A>() {
        Some(plain) => {
            let body = plain_chunk_body::<A>(plain, input)?;
            let args = plain.values(body);
            let n = args.len();
            encode_results(args.map(f), n, out);
        }
        None => {
            let args = decode_exact::<Vec<A>>(input)?;
            let n = args.len();
            encode_results(args.into_iter().map(f), n, out);
        }
    }
    Ok(())
}

/// The values' bytes of an encoded `Vec` of plain data: its count, then
/// exactly that many values.
fn plain_chunk_body<A>(plain: PlainLayout<A>, input: &[u8]) -> Result<&[u8]> {
    let Some((count, body)) = input.split_first_chunk::<8>() else {
        return Err(decode_error::<Vec<A>>("no count"));
    };
    let count = u64::from_le_bytes(*count);
    let bytes = usize::try_from(count).ok().and_then(|n| plain.bytes_for(n));
    if bytes != Some(body.len()) {
        return Err(decode_error::<Vec<A>>(format!(
            "{count} values in {} bytes",
            body.len()
        )));
    }
    Ok(body)
}

/// Encodes the `n` values `results` yields as a `Vec<R>`; plain results go
/// straight into the encoding as `f` returns them.
fn encode_results<R: Wire>(results: impl Iterator<Item = R>, n: usize, out: &mut Encoder) {
    match plain_of::<R>() {
        Some(plain) => {
            out.extend_from_slice(&(n as u64).to_le_bytes());
            let written = plain.extend_bytes(out, results, n);
            debug_assert_eq!(written, n, "an exact-size iterator");
            #[cfg(feature = "fault-injection")]
            forged::apply(out, plain.size());
        }
        None => {
            // All of them first: a panic in `f` is the task's, one in
            // encoding them an `Error::Encode`.
            let results: Vec<R> = results.collect();
            encode_guarded(&results, out);
        }
    }
}

/// Chunk results that lie about themselves, for tests of the parent's
/// checks (see `testing::forge_chunk_results`).
#[cfg(feature = "fault-injection")]
pub(crate) mod forged {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// How the results of the chunk being run lie (tests only).
    #[derive(Clone, Copy, Debug)]
    pub enum ChunkLie {
        /// One more value counted than written.
        CountTooHigh,
        /// A count of `u64::MAX`.
        CountHuge,
        /// The last value's bytes left out, the count unchanged.
        ValueMissing,
        /// One more value written, and counted, than the chunk had items.
        ValueExtra,
    }

    /// 0: none; else the lie's position in `ChunkLie` plus one.
    static NEXT: AtomicU8 = AtomicU8::new(0);

    /// Makes this worker's current chunk (plain results only) send its
    /// results with `lie`. Call it from the task's function.
    pub fn forge_chunk_results(lie: ChunkLie) {
        NEXT.store(lie as u8 + 1, Ordering::Relaxed);
    }

    /// Applies the lie asked for, once, to the encoded results in `out`.
    pub(super) fn apply(out: &mut Vec<u8>, size: usize) {
        let count = |out: &mut Vec<u8>, n: u64| out[..8].copy_from_slice(&n.to_le_bytes());
        let n = u64::from_le_bytes(out[..8].try_into().expect("a count"));
        match NEXT.swap(0, Ordering::Relaxed) {
            1 => count(out, n + 1),
            2 => count(out, u64::MAX),
            3 => out.truncate(out.len().saturating_sub(size).max(8)),
            4 => {
                out.extend(std::iter::repeat_n(0, size));
                count(out, n + 1);
            }
            _ => {}
        }
    }
}

/// Runs a worker initializer.
pub(crate) fn call_init<F>(_: &[u8], _: &mut Encoder) -> Result<()>
where
    F: Fn() + Copy + Send + Sync + 'static,
{
    conjure::<F>()();
    Ok(())
}

/// Runs a worker initializer with its argument (Python's `initargs`).
pub(crate) fn call_init_with<F, A>(input: &[u8], _: &mut Encoder) -> Result<()>
where
    F: Fn(A) + Copy + Send + Sync + 'static,
    A: Wire,
{
    conjure::<F>()(decode_exact::<A>(input)?);
    Ok(())
}

/// A function that takes its arguments as a tuple spread out, as Python's
/// `starmap` calls `f(*args)`. Implemented for `fn` items and non-capturing
/// closures of one to six arguments.
///
/// ```
/// use corepool::StarFn;
/// fn add(a: u64, b: u64) -> u64 { a + b }
/// assert_eq!(add.call_star((2, 3)), 5);
/// ```
pub trait StarFn<Args, R>: Copy + Send + Sync + 'static {
    /// Calls the function with `args` spread into its parameters.
    fn call_star(&self, args: Args) -> R;
}

macro_rules! star_fn {
    ($(($($a:ident),+)),*) => {$(
        impl<Func, $($a,)+ R> StarFn<($($a,)+), R> for Func
        where
            Func: Fn($($a),+) -> R + Copy + Send + Sync + 'static,
        {
            #[allow(non_snake_case)]
            fn call_star(&self, ($($a,)+): ($($a,)+)) -> R {
                self($($a),+)
            }
        }
    )*};
}

star_fn!(
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
    (A, B, C, D, E, G)
);

/// Stands for "the trampoline failed before producing a result".
pub(crate) fn is_decode_error(err: &Error) -> bool {
    matches!(err, Error::Decode { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_to_vec;

    fn square(x: u64) -> u64 {
        x * x
    }

    #[test]
    fn offsets_round_trip_in_process() {
        fn via<F: Fn(u64) -> u64 + Copy + Send + Sync + 'static>(_: F) -> Trampoline {
            call_one::<F, u64, u64>
        }
        let t = via(square);
        // SAFETY: offset taken in this very process.
        let back = unsafe { from_offset(offset_of(t)) };
        let mut out = Encoder::new();
        back(&encode_to_vec(&7u64), &mut out).unwrap();
        assert_eq!(decode_exact::<u64>(&out).unwrap(), 49);
    }

    #[test]
    fn closures_and_star_fns_run() {
        fn via<F: Fn(u32) -> u32 + Copy + Send + Sync + 'static>(_: F) -> Trampoline {
            call_chunk::<F, u32, u32>
        }
        let t = via(|x| x + 1);
        let mut out = Encoder::new();
        t(&encode_to_vec(&vec![1u32, 2, 3]), &mut out).unwrap();
        assert_eq!(decode_exact::<Vec<u32>>(&out).unwrap(), vec![2, 3, 4]);

        fn star<F: StarFn<(u8, u8), u8>>(_: F) -> Trampoline {
            call_star_chunk::<F, (u8, u8), u8>
        }
        let t = star(|a: u8, b: u8| a * b);
        out.clear();
        t(&encode_to_vec(&vec![(2u8, 3u8)]), &mut out).unwrap();
        assert_eq!(decode_exact::<Vec<u8>>(&out).unwrap(), vec![6]);
        assert!(is_decode_error(&t(&[1, 2], &mut out).unwrap_err()));
    }
}
