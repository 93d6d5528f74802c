//! Result cells carved from shared chunks: [`ChunkRc`], a reference-counted
//! pointer whose allocation is one bump of a thread-local cursor, not one
//! call to the global allocator per cell.
//!
//! A caller that submits many tasks before collecting holds one cell per
//! task, made on its thread and freed on whichever thread drops the last
//! reference (the driver delivering the outcome, the caller after `get`, the
//! callback thread). An `Arc` per cell cost a `malloc` and a `free` each
//! (glibc was about 18% of the submitting thread's samples) and 64 bytes of
//! heap (48 of `Arc` and cell, 16 of glibc's header) that the kernel clears
//! again every round once glibc trims the freed heap.
//!
//! Here a thread carves cells from a 4 KiB chunk by bumping a cursor (one per
//! size class), and a chunk goes back to the global allocator when its last
//! cell dies and the cursor has moved on. Nothing is kept beyond what live
//! cells occupy, except that each thread's cursor holds the one chunk it
//! carves from per size class in use (4 KiB each, given back at thread
//! exit); the price is that one live cell pins its whole chunk (a long-lived
//! handle keeps up to 4 KiB, 100 times the size of a `u64`'s cell).
//!
//! Each slot starts with its cell's reference count and its offset in the
//! chunk, which leads back to the chunk's header (its count of slots not yet
//! freed). A chunk's count starts at its capacity plus one for the cursor;
//! freeing a cell subtracts one, the cursor moving on subtracts what it did
//! not carve plus its own one. Carving is not atomic (the cursor is the
//! thread's own); every free is one read-modify-write of the chunk's count.
//! Values too large or too aligned for a size class, and cells made while
//! the thread's cursors are gone (during thread-local destruction), get an
//! allocation of their own with the same slot header.

use std::alloc::Layout;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};

/// Bytes of one chunk.
const CHUNK_BYTES: usize = 4096;
/// Bytes before a chunk's first slot: its count, alone on its cache line
/// (freed from many threads, it should not share a line with a cell, here
/// or, since chunks are [`CHUNK_ALIGN`]-aligned, in the allocation before).
const HEADER_BYTES: usize = 64;
/// A chunk's alignment: a cache line, so that its header's line holds
/// nothing else (16-aligned, the line started up to 48 bytes before the
/// chunk: glibc's size word and the previous allocation's tail, often
/// another chunk's last cells, freed by other threads).
const CHUNK_ALIGN: usize = 64;
/// Slots are carved in multiples of this.
const STRIDE_UNIT: usize = 8;
/// The largest slot carved from a chunk (at least 15 to a chunk).
const MAX_STRIDE: usize = 256;
/// The strictest alignment a chunk's slots can have: at most the chunk's
/// own, with the header and every stride of such a type multiples of it.
const MAX_ALIGN: usize = 16;
/// Size classes: one per stride.
const CLASSES: usize = MAX_STRIDE / STRIDE_UNIT;
/// A slot's `back` for a slot with an allocation of its own.
const OWN: u32 = u32::MAX;
/// References beyond this abort, as `Arc`'s do beyond `isize::MAX`: only a
/// leak of handles could reach it, and an overflow would free a live cell.
const MAX_REFS: u32 = i32::MAX as u32;

/// The layout every chunk is allocated with.
const CHUNK_LAYOUT: Layout = match Layout::from_size_align(CHUNK_BYTES, CHUNK_ALIGN) {
    Ok(layout) => layout,
    Err(_) => panic!("a chunk's layout is valid"),
};

/// One cell and its header. `repr(C)`: the header comes first, so the
/// type-erased parts (`refs`, `back`) are at the same place in every slot.
#[repr(C)]
struct Slot<C> {
    /// Strong references; the slot is freed when the last goes.
    refs: AtomicU32,
    /// The slot's offset from its chunk's start, or [`OWN`].
    back: u32,
    value: C,
}

/// A reference-counted pointer to a `C` in a chunk slot: `Arc` without weak
/// references, for the result cells of tasks.
pub(super) struct ChunkRc<C> {
    slot: NonNull<Slot<C>>,
    _owns: PhantomData<Slot<C>>,
}

// As `Arc<C>`, `Unpin` whatever `C` is: moving the pointer never moves the
// value, and nothing pins through it (no `Pin<&mut C>` is ever made).
// Without this `AsyncResult<T>` would be `Unpin` only for `T: Unpin`, which
// it was for every `T` while its cell was an `Arc`.
impl<C> Unpin for ChunkRc<C> {}

// SAFETY: as `Arc<C>`: the value is shared between the threads holding
// references (so `C: Sync`) and dropped by whichever drops the last (so
// `C: Send`); the counts are atomic.
unsafe impl<C: Send + Sync> Send for ChunkRc<C> {}
// SAFETY: as `Send`: a `&ChunkRc` gives `&C` and clones.
unsafe impl<C: Send + Sync> Sync for ChunkRc<C> {}

/// A pointer to a `ChunkRc`'s value that holds no reference: what a cell
/// keeps to itself (a weak reference in an `Arc` would be a count to make
/// and drop; a strong one a cycle).
pub(super) struct Unowned<C> {
    slot: NonNull<Slot<C>>,
}

impl<C> Clone for Unowned<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for Unowned<C> {}

// SAFETY: a pointer only; what may be done with it (`upgrade_live`) is
// what a `&C` on another thread could do, and is bound by its contract.
unsafe impl<C: Send + Sync> Send for Unowned<C> {}
// SAFETY: as `Send`.
unsafe impl<C: Send + Sync> Sync for Unowned<C> {}

impl<C> Unowned<C> {
    /// A new reference to the value.
    ///
    /// # Safety
    ///
    /// A reference ([`ChunkRc`]) to the value must be alive during the call
    /// (the caller holds one, or holds a `&C` borrowed from one).
    pub(super) unsafe fn upgrade_live(self) -> ChunkRc<C> {
        // SAFETY: the slot is alive (the caller's reference), and `refs` is
        // only ever accessed atomically.
        unsafe { retain(self.slot.cast()) };
        ChunkRc {
            slot: self.slot,
            _owns: PhantomData,
        }
    }
}

impl<C> ChunkRc<C> {
    /// `value` in a slot of its own, referenced once.
    pub(super) fn new(value: C) -> Self {
        Self::new_cyclic(|_| value)
    }

    /// A value that keeps an [`Unowned`] pointer to itself, made by `make`.
    pub(super) fn new_cyclic(make: impl FnOnce(Unowned<C>) -> C) -> Self {
        let slot = alloc_slot::<C>();
        /// Frees the slot if `make` unwinds: no value to drop in it yet.
        struct Unmade<C>(NonNull<Slot<C>>);
        impl<C> Drop for Unmade<C> {
            fn drop(&mut self) {
                // SAFETY: allocated by `alloc_slot`, never shared, no value.
                unsafe { free_slot(self.0) }
            }
        }
        let guard = Unmade(slot);
        let value = make(Unowned { slot });
        std::mem::forget(guard);
        // SAFETY: `slot` is allocated for a `Slot<C>`, ours alone; its
        // header was written by `alloc_slot`.
        unsafe { std::ptr::addr_of_mut!((*slot.as_ptr()).value).write(value) };
        Self {
            slot,
            _owns: PhantomData,
        }
    }

    /// Gives up the reference as a pointer for [`from_raw`](Self::from_raw)
    /// or [`borrow_raw`](Self::borrow_raw) (a thin type-erased handle).
    pub(super) fn into_raw(self) -> NonNull<()> {
        let slot = self.slot.cast();
        std::mem::forget(self);
        slot
    }

    /// Takes back a reference given up by [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    ///
    /// `raw` came from `ChunkRc::<C>::into_raw` (the same `C`) and its
    /// reference was not taken back before.
    pub(super) unsafe fn from_raw(raw: NonNull<()>) -> Self {
        Self {
            slot: raw.cast(),
            _owns: PhantomData,
        }
    }

    /// The value behind a pointer from [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    ///
    /// As [`from_raw`](Self::from_raw), and that reference outlives `'a`.
    pub(super) unsafe fn borrow_raw<'a>(raw: NonNull<()>) -> &'a C {
        // SAFETY: the slot is alive while the reference given up lives
        // (the caller's promise), and its value is initialised.
        unsafe { &(*raw.cast::<Slot<C>>().as_ptr()).value }
    }
}

impl<C> std::ops::Deref for ChunkRc<C> {
    type Target = C;

    fn deref(&self) -> &C {
        // SAFETY: this reference keeps the slot and its value alive.
        unsafe { &(*self.slot.as_ptr()).value }
    }
}

impl<C> Clone for ChunkRc<C> {
    fn clone(&self) -> Self {
        // SAFETY: this reference keeps the slot alive.
        unsafe { retain(self.slot.cast()) };
        Self {
            slot: self.slot,
            _owns: PhantomData,
        }
    }
}

impl<C> Drop for ChunkRc<C> {
    fn drop(&mut self) {
        let slot = self.slot.as_ptr();
        // Release: this owner's uses of the value happen before the drop of
        // it by the last owner, whose Acquire fence below is the partner.
        // SAFETY: this reference keeps the slot alive until the decrement.
        if unsafe { (*slot).refs.fetch_sub(1, Ordering::Release) } != 1 {
            return;
        }
        // Acquire: partner of the Release decrements of the other owners.
        fence(Ordering::Acquire);
        /// Frees the slot even if the value's `Drop` panics (a result's
        /// `Drop` is the user's code).
        struct Free<C>(NonNull<Slot<C>>);
        impl<C> Drop for Free<C> {
            fn drop(&mut self) {
                // SAFETY: the last reference is gone and the value dropped
                // (or its drop unwound): nothing reaches the slot any more.
                unsafe { free_slot(self.0) }
            }
        }
        let _free = Free(self.slot);
        // SAFETY: the last reference: nobody else reaches the value, which
        // was initialised when the slot was made.
        unsafe { std::ptr::drop_in_place(std::ptr::addr_of_mut!((*slot).value)) };
    }
}

/// One more strong reference to the slot at `slot`.
///
/// # Safety
///
/// `slot` points to a live slot (of any `C`) that a reference keeps alive.
unsafe fn retain(slot: NonNull<Slot<()>>) {
    // Relaxed: as `Arc::clone`: a reference made from a live one needs no
    // ordering; the drops are ordered by their Release/Acquire.
    // SAFETY: `refs` is at the same offset in every `Slot<C>` (`repr(C)`,
    // first field) and alive, the caller says.
    let before = unsafe { (*slot.as_ptr()).refs.fetch_add(1, Ordering::Relaxed) };
    if before > MAX_REFS {
        std::process::abort();
    }
}

/// Where a thread carves its next slots of one size class.
#[derive(Clone, Copy)]
struct Cursor {
    /// The chunk, or null: none yet, or the last one was used up.
    base: *mut u8,
    /// Offset of the next slot.
    next: u32,
    /// Slots not carved yet (at least one while `base` is not null).
    left: u32,
}

impl Cursor {
    const EMPTY: Cursor = Cursor {
        base: std::ptr::null_mut(),
        next: 0,
        left: 0,
    };
}

/// A thread's cursors, one per size class.
struct Cursors([std::cell::Cell<Cursor>; CLASSES]);

impl Drop for Cursors {
    fn drop(&mut self) {
        // The thread exits: give up its share of the chunks it carved from
        // (the ones whose cells are all gone are freed now, the others by
        // their last cell, on whichever thread drops it).
        for cursor in &self.0 {
            let c = cursor.replace(Cursor::EMPTY);
            if !c.base.is_null() {
                // SAFETY: the cursor held the chunk's count of its own one
                // plus its uncarved slots, which nothing else will free.
                unsafe { release_chunk(c.base, c.left as usize + 1) };
            }
        }
    }
}

thread_local! {
    static CURSORS: Cursors =
        const { Cursors([const { std::cell::Cell::new(Cursor::EMPTY) }; CLASSES]) };
}

/// The stride (bytes) of a `Slot<C>` in a chunk, if it fits one.
const fn stride_of<C>() -> Option<usize> {
    let size = std::mem::size_of::<Slot<C>>();
    let stride = size.div_ceil(STRIDE_UNIT) * STRIDE_UNIT;
    // A stride is a multiple of the slot's alignment (its size is, and so
    // is `STRIDE_UNIT` for alignments up to 8; a 16-aligned slot's size is
    // a multiple of 16 already), and every slot then starts aligned.
    if stride <= MAX_STRIDE && std::mem::align_of::<Slot<C>>() <= MAX_ALIGN {
        Some(stride)
    } else {
        None
    }
}

/// A slot for a `C`, its header written (one reference, its `back`), its
/// value not.
fn alloc_slot<C>() -> NonNull<Slot<C>> {
    if let Some(stride) = const { stride_of::<C>() } {
        if let Ok(Some((base, offset))) = CURSORS.try_with(|cursors| carve(cursors, stride)) {
            // SAFETY: `carve` returns an offset of a slot of `stride` bytes
            // inside the chunk at `base`, aligned for `Slot<C>`.
            let slot = unsafe { base.add(offset as usize) }.cast::<Slot<C>>();
            // SAFETY: the slot is ours alone, valid for writes.
            unsafe { write_header(slot, offset) };
            // SAFETY: inside a live allocation: not null.
            return unsafe { NonNull::new_unchecked(slot) };
        }
    }
    // Too large or too aligned for a chunk, or the thread's cursors are
    // gone (a cell made by a thread-local destructor): an allocation of
    // its own.
    let layout = Layout::new::<Slot<C>>();
    // SAFETY: a `Slot` is never zero-sized (its header).
    let slot = unsafe { std::alloc::alloc(layout) }.cast::<Slot<C>>();
    let Some(slot) = NonNull::new(slot) else {
        std::alloc::handle_alloc_error(layout);
    };
    // SAFETY: fresh, ours alone.
    unsafe { write_header(slot.as_ptr(), OWN) };
    slot
}

/// Writes a new slot's header: one reference, `back`.
///
/// # Safety
///
/// `slot` is valid for writes and aligned, and nobody else reaches it.
unsafe fn write_header<C>(slot: *mut Slot<C>, back: u32) {
    // SAFETY: the caller's promise.
    unsafe {
        std::ptr::addr_of_mut!((*slot).refs).write(AtomicU32::new(1));
        std::ptr::addr_of_mut!((*slot).back).write(back);
    }
}

/// Carves one slot of `stride` bytes from the thread's chunk of that class,
/// starting a chunk when there is none: the chunk and the slot's offset in
/// it. `None` only if the global allocator fails (it aborts first).
fn carve(cursors: &Cursors, stride: usize) -> Option<(*mut u8, u32)> {
    let cursor = &cursors.0[stride / STRIDE_UNIT - 1];
    let mut c = cursor.get();
    if c.base.is_null() {
        let capacity = (CHUNK_BYTES - HEADER_BYTES) / stride;
        // SAFETY: the layout is not zero-sized.
        let base = unsafe { std::alloc::alloc(CHUNK_LAYOUT) };
        if base.is_null() {
            std::alloc::handle_alloc_error(CHUNK_LAYOUT);
        }
        // Every slot, and the cursor's own one: see `release_chunk`.
        // SAFETY: fresh, aligned for the count (`CHUNK_ALIGN`), ours alone.
        unsafe {
            base.cast::<AtomicUsize>()
                .write(AtomicUsize::new(capacity + 1))
        };
        #[cfg(test)]
        // SAFETY: fresh, ours alone, the header has room after the count.
        unsafe {
            ledger::chunk_made(base)
        };
        c = Cursor {
            base,
            next: HEADER_BYTES as u32,
            left: capacity as u32,
        };
    }
    let carved = (c.base, c.next);
    c.next += stride as u32;
    c.left -= 1;
    if c.left == 0 {
        // Used up: the cursor lets go of it at once, so that it is freed
        // with its last cell rather than held until the next one is made.
        // SAFETY: the cursor's own one of the chunk's count.
        unsafe { release_chunk(c.base, 1) };
        c = Cursor::EMPTY;
    }
    cursor.set(c);
    Some(carved)
}

/// Gives back a slot whose value is gone (dropped, or never made).
///
/// # Safety
///
/// `slot` came from [`alloc_slot`], nothing reaches it any more, and it is
/// given back once.
unsafe fn free_slot<C>(slot: NonNull<Slot<C>>) {
    // SAFETY: the header stays valid until the slot is freed, here.
    let back = unsafe { (*slot.as_ptr()).back };
    if back == OWN {
        // SAFETY: allocated with this layout in `alloc_slot`.
        unsafe { std::alloc::dealloc(slot.as_ptr().cast(), Layout::new::<Slot<C>>()) };
    } else {
        // SAFETY: the slot lies `back` bytes into its chunk (`carve`), and
        // its pointer carries the chunk's provenance; one of the chunk's
        // count is this slot's.
        unsafe { release_chunk(slot.as_ptr().cast::<u8>().sub(back as usize), 1) };
    }
}

/// Takes `n` off the count of the chunk at `base`, freeing it at zero.
///
/// # Safety
///
/// `n` of the chunk's count are the caller's to give up (freed slots, or
/// the cursor's uncarved ones and its own one), and the caller touches
/// nothing of the chunk afterwards.
unsafe fn release_chunk(base: *mut u8, n: usize) {
    // SAFETY: the chunk is alive while its count is not zero, and the
    // caller holds `n` of it.
    let count = unsafe { &*base.cast::<AtomicUsize>() };
    // Release: the freeing thread's Acquire fence below is the partner: every
    // use of this chunk's slots (their values' drops) happens before it is
    // freed, on whichever thread gives back the last of its count.
    if count.fetch_sub(n, Ordering::Release) != n {
        return;
    }
    // Acquire: partner of the Release decrements above, by every thread.
    fence(Ordering::Acquire);
    #[cfg(test)]
    // SAFETY: the chunk is ours alone now, its header written by `carve`.
    unsafe {
        ledger::chunk_freed(base)
    };
    // SAFETY: allocated with this layout in `carve`; nothing reaches it.
    unsafe { std::alloc::dealloc(base, CHUNK_LAYOUT) };
}

/// The bytes a `ChunkRc<C>`'s slot takes (its stride in a chunk, or its own
/// allocation's size): what a handle costs, for the size tests.
#[cfg(test)]
pub(super) fn slot_bytes<C>() -> usize {
    stride_of::<C>().unwrap_or(std::mem::size_of::<Slot<C>>())
}

/// Whether the cell has an allocation of its own (not carved from a chunk).
#[cfg(test)]
pub(super) fn has_own_slot<C>(cell: &ChunkRc<C>) -> bool {
    // SAFETY: `cell` keeps the slot alive; `back` is written once, before
    // the cell was handed out.
    unsafe { (*cell.slot.as_ptr()).back == OWN }
}

/// Test-only counts of chunks made and freed, so that a leaked or doubly
/// freed chunk fails plain `cargo test`, not only Miri. libtest runs tests
/// at once in one process, so counts are kept per [`Ledger`]: a thread that
/// installs one charges the chunks it starts to it, and each chunk carries
/// its ledger in its header (after the count) to whichever thread frees it.
#[cfg(test)]
pub(super) mod ledger {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Chunks made and freed by the threads that installed it.
    #[derive(Default)]
    pub(in crate::pool) struct Ledger {
        made: AtomicUsize,
        freed: AtomicUsize,
    }

    impl Ledger {
        /// (made, freed).
        pub(in crate::pool) fn counts(&self) -> (usize, usize) {
            // SeqCst: read after the threads involved were joined (which
            // orders their counts before); no partner needed.
            (
                self.made.load(Ordering::SeqCst),
                self.freed.load(Ordering::SeqCst),
            )
        }
    }

    std::thread_local! {
        static CURRENT: std::cell::RefCell<Option<Arc<Ledger>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Charges the chunks this thread starts from now on to `ledger`.
    pub(in crate::pool) fn install(ledger: &Arc<Ledger>) {
        CURRENT.with(|current| *current.borrow_mut() = Some(ledger.clone()));
    }

    /// Where a chunk keeps its ledger: the word after its count.
    fn field(base: *mut u8) -> *mut *const Ledger {
        base.wrapping_add(std::mem::size_of::<usize>()).cast()
    }

    /// Records a chunk just made.
    ///
    /// # Safety
    ///
    /// `base` is a fresh chunk, ours alone.
    pub(super) unsafe fn chunk_made(base: *mut u8) {
        let ledger = CURRENT
            .try_with(|current| current.borrow().clone())
            .ok()
            .flatten();
        let raw = match ledger {
            Some(ledger) => {
                ledger.made.fetch_add(1, Ordering::SeqCst);
                Arc::into_raw(ledger)
            }
            None => std::ptr::null(),
        };
        // SAFETY: inside the header (64 bytes), aligned, ours alone.
        unsafe { field(base).write(raw) };
    }

    /// Records a chunk about to be freed.
    ///
    /// # Safety
    ///
    /// `base`'s header was written by [`chunk_made`], and this is its one
    /// free.
    pub(super) unsafe fn chunk_freed(base: *mut u8) {
        // SAFETY: written by `chunk_made`, read once.
        let raw = unsafe { field(base).read() };
        if !raw.is_null() {
            // SAFETY: from `Arc::into_raw` in `chunk_made`, taken back once.
            let ledger = unsafe { Arc::from_raw(raw) };
            ledger.freed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Also run under Miri: leaks (a chunk never freed), double frees (one
    //! freed twice) and races on the counts are what it would find.

    use super::ledger::Ledger;
    use super::*;
    use std::sync::atomic::AtomicUsize as Counter;
    use std::sync::Arc;

    /// Every chunk charged to `ledger` was made and freed once, and at least
    /// `made` were made.
    fn assert_all_freed(ledger: &Ledger, made: usize) {
        let (m, f) = ledger.counts();
        assert!(m >= made, "{m} chunks made, expected at least {made}");
        assert_eq!(f, m, "chunks freed vs made");
    }

    /// Counts its drops.
    struct Tracked<T> {
        _value: T,
        drops: Arc<Counter>,
    }

    impl<T> Drop for Tracked<T> {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn tracked<T>(value: T, drops: &Arc<Counter>) -> ChunkRc<Tracked<T>> {
        ChunkRc::new(Tracked {
            _value: value,
            drops: drops.clone(),
        })
    }

    /// How many cells a test makes: more than a chunk's worth of each size.
    fn many() -> usize {
        if cfg!(miri) {
            300
        } else {
            5_000
        }
    }

    #[test]
    fn a_cell_lives_until_its_last_reference_goes() {
        let drops = Arc::new(Counter::new(0));
        let a = tracked(7u64, &drops);
        let b = a.clone();
        drop(a);
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        assert_eq!(b._value, 7);
        drop(b);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn sizes_and_alignments_of_several_types() {
        #[repr(align(16))]
        struct Sixteen(#[allow(dead_code)] u8);
        #[repr(align(64))]
        struct SixtyFour(#[allow(dead_code)] u8);
        let drops = Arc::new(Counter::new(0));
        let n = many() / 4;
        let mut live = Vec::new();
        for i in 0..n {
            let zst = tracked((), &drops);
            let byte = tracked(i as u8, &drops);
            let wide = tracked(i as u128, &drops);
            let big = tracked([i as u64; 40], &drops); // too large: own slot
            let aligned = tracked(Sixteen(1), &drops);
            let over = tracked(SixtyFour(2), &drops); // too aligned: own slot
            assert_eq!(std::ptr::addr_of!(*wide) as usize % 16, 0);
            assert_eq!(std::ptr::addr_of!(*aligned) as usize % 16, 0);
            assert_eq!(std::ptr::addr_of!(*over) as usize % 64, 0);
            assert_eq!(wide._value, i as u128);
            assert_eq!(big._value[39], i as u64);
            assert_eq!(byte._value, i as u8);
            // Half kept for later, half dropped now: chunks with holes.
            if i % 2 == 0 {
                live.push((zst, byte, wide, big, aligned, over));
            }
        }
        assert_eq!(drops.load(Ordering::Relaxed), 6 * (n / 2));
        drop(live);
        assert_eq!(drops.load(Ordering::Relaxed), 6 * n);
        assert_eq!(slot_bytes::<u64>(), 16);
        assert_eq!(slot_bytes::<()>(), 8);
    }

    #[test]
    fn cells_made_on_one_thread_die_on_others_in_any_order() {
        let drops = Arc::new(Counter::new(0));
        let n = many();
        let ledger = Arc::new(Ledger::default());
        // Made on a thread that then exits, so that its cursor no longer
        // holds the last chunk: every chunk's count then ends on one of the
        // two dropping threads.
        let cells = {
            let (drops, ledger) = (drops.clone(), ledger.clone());
            std::thread::spawn(move || {
                ledger::install(&ledger);
                (0..n).map(|i| tracked(i, &drops)).collect::<Vec<_>>()
            })
            .join()
            .unwrap()
        };
        // Split round-robin, every other cell held by both: each chunk's
        // cells are freed in part by each thread, its last one on either.
        let mut halves = (Vec::new(), Vec::new());
        for (i, cell) in cells.into_iter().enumerate() {
            if i % 2 == 0 {
                halves.0.push(cell.clone());
                halves.1.push(cell);
            } else {
                halves.1.push(cell);
            }
        }
        let (a, b) = halves;
        let ta = std::thread::spawn(move || drop(a));
        let tb = std::thread::spawn(move || b.into_iter().rev().for_each(drop));
        ta.join().unwrap();
        tb.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), n);
        let stride = slot_bytes::<Tracked<usize>>();
        assert_all_freed(&ledger, n.div_ceil((CHUNK_BYTES - HEADER_BYTES) / stride));
    }

    #[test]
    fn many_threads_make_and_free_cells_of_each_other() {
        let drops = Arc::new(Counter::new(0));
        let ledger = Arc::new(Ledger::default());
        let threads = if cfg!(miri) { 3 } else { 4 };
        let per = many() / threads;
        let (tx, rx) = std::sync::mpsc::channel::<ChunkRc<Tracked<usize>>>();
        let makers: Vec<_> = (0..threads)
            .map(|t| {
                let tx = tx.clone();
                let drops = drops.clone();
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    ledger::install(&ledger);
                    for i in 0..per {
                        let cell = tracked(t * per + i, &drops);
                        if i % 3 == 0 {
                            drop(cell); // freed by its maker
                        } else {
                            tx.send(cell).unwrap(); // by the collector
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let collector = std::thread::spawn(move || {
            let mut seen = 0;
            for cell in rx {
                seen += 1;
                drop(cell);
            }
            seen
        });
        for maker in makers {
            maker.join().unwrap();
        }
        let sent = collector.join().unwrap();
        assert_eq!(sent, threads * (per - per.div_ceil(3)));
        assert_eq!(drops.load(Ordering::Relaxed), threads * per);
        // The makers have exited (cursors released), every cell is gone.
        assert_all_freed(&ledger, threads);
    }

    #[test]
    fn a_cell_outlives_the_thread_that_made_it() {
        let drops = Arc::new(Counter::new(0));
        let ledger = Arc::new(Ledger::default());
        let made = {
            let (drops, ledger) = (drops.clone(), ledger.clone());
            // The thread exits (its cursors released) while its cells live:
            // their chunks are freed by the last of them, here.
            std::thread::spawn(move || {
                ledger::install(&ledger);
                (0..100).map(|i| tracked(i, &drops)).collect::<Vec<_>>()
            })
            .join()
            .unwrap()
        };
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        assert_eq!(ledger.counts().1, 0, "a chunk freed under live cells");
        assert!(made.iter().enumerate().all(|(i, c)| c._value == i));
        drop(made);
        assert_eq!(drops.load(Ordering::Relaxed), 100);
        assert_all_freed(&ledger, 1);
    }

    /// Makes a cell when its thread's thread-locals are destroyed, and
    /// records whether it had a slot of its own.
    struct MakesOnExit {
        drops: Arc<Counter>,
        own: Arc<Counter>,
    }

    impl Drop for MakesOnExit {
        fn drop(&mut self) {
            let cell = tracked(1u64, &self.drops);
            self.own
                .store(usize::from(has_own_slot(&cell)), Ordering::Relaxed);
        }
    }

    std::thread_local! {
        static ON_EXIT: std::cell::RefCell<Option<MakesOnExit>> =
            const { std::cell::RefCell::new(None) };
    }

    #[test]
    fn a_cell_made_after_the_cursors_are_destroyed_has_its_own_slot() {
        let drops = Arc::new(Counter::new(0));
        let own = Arc::new(Counter::new(2));
        let ledger = Arc::new(Ledger::default());
        let (d, o, l) = (drops.clone(), own.clone(), ledger.clone());
        std::thread::spawn(move || {
            ledger::install(&l);
            // `ON_EXIT` first: thread-locals are destroyed last in, first
            // out, so the cursors (first used below) are gone by the time
            // its destructor makes a cell.
            ON_EXIT.with(|slot| {
                *slot.borrow_mut() = Some(MakesOnExit {
                    drops: d.clone(),
                    own: o,
                })
            });
            drop(tracked(0u64, &d));
        })
        .join()
        .unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        assert_eq!(own.load(Ordering::Relaxed), 1, "not an own slot");
        // The first cell's chunk, given back by the cursors' destructor.
        assert_all_freed(&ledger, 1);
    }

    #[test]
    fn a_cell_made_by_a_destructor_before_the_cursors_is_carved_and_freed() {
        let drops = Arc::new(Counter::new(0));
        let own = Arc::new(Counter::new(2));
        let ledger = Arc::new(Ledger::default());
        let (d, o, l) = (drops.clone(), own.clone(), ledger.clone());
        std::thread::spawn(move || {
            ledger::install(&l);
            // A cell first: the cursors outlive `ON_EXIT`'s destructor, whose
            // cell is carved from the same chunk, then freed with it.
            drop(tracked(0u64, &d));
            ON_EXIT.with(|slot| {
                *slot.borrow_mut() = Some(MakesOnExit {
                    drops: d.clone(),
                    own: o,
                })
            });
        })
        .join()
        .unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        assert_eq!(own.load(Ordering::Relaxed), 0, "not carved");
        assert_all_freed(&ledger, 1);
        assert_eq!(ledger.counts().0, 1, "both cells in one chunk");
    }

    #[test]
    fn a_panicking_drop_still_frees_the_slot() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("a value whose drop panics, on purpose");
            }
        }
        let ledger = Arc::new(Ledger::default());
        let l = ledger.clone();
        std::thread::spawn(move || {
            ledger::install(&l);
            // Its own chunk (no other `Bomb`-sized cell on this thread).
            let cell = ChunkRc::new(Bomb);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(cell)));
            assert!(result.is_err());
            assert_eq!(l.counts(), (1, 0), "the cursor still holds the chunk");
        })
        .join()
        .unwrap();
        // The slot's free and the cursor's at exit: the chunk's count is
        // used up only if the panicking drop gave its slot back.
        assert_eq!(ledger.counts(), (1, 1));
    }

    #[test]
    fn an_unowned_pointer_upgrades_while_a_reference_lives() {
        let cell = ChunkRc::new_cyclic(|me: Unowned<(u64, Unowned<()>)>| {
            (
                5,
                Unowned {
                    slot: me.slot.cast(),
                },
            )
        });
        let me: Unowned<(u64, Unowned<()>)> = Unowned {
            slot: cell.1.slot.cast(),
        };
        // SAFETY: `cell` is a live reference to the same value.
        let again = unsafe { me.upgrade_live() };
        drop(cell);
        assert_eq!(again.0, 5);
        let raw = again.into_raw();
        // SAFETY: from `into_raw` of this type, not taken back yet.
        let borrowed = unsafe { ChunkRc::<(u64, Unowned<()>)>::borrow_raw(raw) };
        assert_eq!(borrowed.0, 5);
        // SAFETY: from `into_raw` of this type, taken back once.
        drop(unsafe { ChunkRc::<(u64, Unowned<()>)>::from_raw(raw) });
    }
}
