//! Unit tests of the unbounded queue ([`super`]) on heap rings: growth,
//! ring changes, giving memory back, crashes between the steps, and garbage
//! words. They run under Miri too.

use super::super::{ByteQueue, Kind};
use super::*;
use crate::shm::mpmc::memory::HeapRings;

/// Control memory on the heap, kept alive by the test.
struct HeapControl(Box<[AtomicU64]>);

impl HeapControl {
    fn new() -> Self {
        Self((0..CONTROL_BYTES / 8).map(|_| AtomicU64::new(0)).collect())
    }

    fn memory(&self) -> QueueMemory {
        // SAFETY: 8-aligned, CONTROL_BYTES long, alive while `self`.
        unsafe { QueueMemory::new(self.0.as_ptr().cast_mut().cast(), CONTROL_BYTES) }
    }
}

fn queue(control: &HeapControl, first: u64) -> ByteQueue {
    ByteQueue {
        control: control.memory(),
        message_bytes: 8,
        kind: Kind::Unbounded(std::sync::Arc::new(Rings::on_heap(
            control.memory(),
            first,
            8,
        ))),
    }
}

fn rings(q: &ByteQueue) -> &Rings {
    match &q.kind {
        Kind::Unbounded(rings) => rings,
        Kind::Bounded(_) => unreachable!(),
    }
}

fn get(q: &ByteQueue) -> Option<u64> {
    q.try_get(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap()
}

#[test]
fn rings_double_and_fit_the_range() {
    let g = Geometry::new(first_capacity_for(240), 240).unwrap();
    assert_eq!(g.first, 256, "64 KiB of 256-byte slots");
    assert_eq!(g.range(0), (0, 64 << 10));
    assert_eq!(g.range(1), (64 << 10, 128 << 10));
    assert!(g.offsets[g.count] <= MAX_DATA_BYTES);
    assert!(g.count < MAX_RINGS, "the range ends first");
    let huge = Geometry::new(first_capacity_for(16 << 20), 16 << 20).unwrap();
    assert_eq!(huge.first, 1);
    assert_eq!(huge.range(0).0 % PAGE, 0);
    assert_eq!(huge.range(1).0 % PAGE, 0, "rings start on pages");
    assert!(
        Geometry::new(1 << 30, 1 << 24).is_none(),
        "not even one ring"
    );
    assert_eq!(ring_words(MAX_RINGS - 1).0 + RING_WORDS, CONTROL_BYTES);
}

#[test]
fn puts_never_fail_and_come_out_in_order() {
    let control = HeapControl::new();
    let q = queue(&control, 2);
    let n: u64 = if cfg!(miri) { 40 } else { 2_000 };
    for i in 0..n {
        assert!(q.try_put(&i.to_le_bytes()).unwrap(), "never full");
    }
    assert_eq!(q.len(), n as usize);
    assert_eq!(q.capacity(), u64::MAX);
    for i in 0..n {
        assert_eq!(get(&q), Some(i));
    }
    assert_eq!(get(&q), None);
    assert!(q.is_empty());
    assert!(rings(&q).punched() > 0, "drained rings were given back");
}

#[test]
fn interleaved_puts_and_gets_cross_rings_in_order() {
    let control = HeapControl::new();
    let q = queue(&control, 2);
    let (mut next_in, mut next_out) = (0u64, 0u64);
    for round in 0..if cfg!(miri) { 6 } else { 60 } {
        for _ in 0..round % 7 + 1 {
            q.try_put(&next_in.to_le_bytes()).unwrap();
            next_in += 1;
        }
        for _ in 0..round % 5 {
            if let Some(v) = get(&q) {
                assert_eq!(v, next_out);
                next_out += 1;
            }
        }
    }
    while let Some(v) = get(&q) {
        assert_eq!(v, next_out);
        next_out += 1;
    }
    assert_eq!(next_out, next_in);
}

#[test]
fn threads_exchange_everything_exactly_once() {
    let control = HeapControl::new();
    let q = queue(&control, 2);
    let per = if cfg!(miri) { 15 } else { 20_000 };
    std::thread::scope(|s| {
        for p in 0..2u64 {
            let q = q.clone();
            s.spawn(move || {
                for i in 0..per {
                    q.put_until(&(p * per + i).to_le_bytes(), None).unwrap();
                }
            });
        }
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                s.spawn(move || {
                    let mut seen = [0u64; 2];
                    let mut got = Vec::new();
                    for _ in 0..per {
                        let v = q
                            .get_until(|b| u64::from_le_bytes(b.try_into().unwrap()), None)
                            .unwrap();
                        // Each producer's values come out in its order.
                        let p = (v / per) as usize;
                        assert!(v >= seen[p]);
                        seen[p] = v;
                        got.push(v);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..2 * per).collect::<Vec<_>>());
    });
}

#[test]
fn a_grower_that_stopped_halfway_is_finished_by_the_next() {
    let control = HeapControl::new();
    let q = queue(&control, 2);
    let r = rings(&q);
    q.try_put(&1u64.to_le_bytes()).unwrap();
    // A producer grew the file and closed ring 0, then died before
    // moving `tail ring`.
    let ring0 = r.ring(0).unwrap();
    r.source
        .ensure(1, r.geometry.range(1).0, r.geometry.range(1).1)
        .unwrap();
    ring0.close_for_puts();
    q.try_put(&2u64.to_le_bytes()).unwrap();
    assert_eq!(r.tail_ring().load(Ordering::Relaxed), 1, "moved on");
    assert_eq!((get(&q), get(&q), get(&q)), (Some(1), Some(2), None));
}

#[test]
fn a_claim_that_finds_its_ring_closed_gives_the_position_up() {
    let control = HeapControl::new();
    let q = queue(&control, 4);
    let r = rings(&q);
    let ring0 = r.ring(0).unwrap();
    ring0.close_for_puts();
    // Straight into the ring, as a producer that read `tail ring` just
    // before the close would.
    assert!(matches!(ring0.put_once(&7u64.to_le_bytes()), Put::Closed));
    assert_eq!(ring0.len(), 1, "tail moved past the given-up slot");
    // The consumer skips it, finds ring 0 empty and closed, and leaves
    // it (ring 1 exists: `ensure` came before the close in a real grow).
    r.source
        .ensure(1, r.geometry.range(1).0, r.geometry.range(1).1)
        .unwrap();
    assert_eq!(get(&q), None);
    assert_eq!(r.head_ring().load(Ordering::Relaxed), 1);
    q.try_put(&8u64.to_le_bytes()).unwrap();
    assert_eq!(get(&q), Some(8));
}

#[test]
fn the_last_reader_out_of_a_left_ring_gives_it_back() {
    let control = HeapControl::new();
    let q = queue(&control, 2);
    let r = rings(&q);
    for i in 0..3u64 {
        q.try_put(&i.to_le_bytes()).unwrap(); // the third grows the queue
    }
    // A reader (this thread, alive) claims value 0 and is slow to copy.
    let ring0 = r.ring(0).unwrap();
    let Ok((_, Front::Full { h, word })) = r.front() else {
        panic!("value 0 at the head")
    };
    assert!(ring0.claim(h, word));
    // Others take the rest and leave ring 0: not given back under it.
    assert_eq!((get(&q), get(&q), get(&q)), (Some(1), Some(2), None));
    assert_eq!(r.head_ring().load(Ordering::Relaxed), 1);
    assert_eq!(r.punched(), 0, "a live reader is copying out of ring 0");
    // Its read done, the reader gives the ring back itself.
    let v = ring0.read_claimed(h, |b| u64::from_le_bytes(b.try_into().unwrap()));
    assert_eq!(v, 0);
    r.after_read(&ring0);
    assert_eq!(r.punched(), 1);
    assert_eq!(r.control.word64(GIVEN_BACK_AT).load(Ordering::Relaxed), 1);
    r.after_read(&ring0);
    assert_eq!(r.punched(), 1, "once");
}

#[test]
fn garbage_ring_words_are_an_error_not_a_touch() {
    let control = HeapControl::new();
    let q = queue(&control, 2);
    let r = rings(&q);
    r.tail_ring().store(u64::MAX, Ordering::Relaxed);
    assert!(matches!(
        q.try_put(&1u64.to_le_bytes()),
        Err(Error::SharedMemory { .. })
    ));
    // A ring index in range whose memory does not exist (the file is
    // too short for it).
    r.tail_ring().store(5, Ordering::Relaxed);
    assert!(q.try_put(&1u64.to_le_bytes()).is_err());
    r.head_ring().store(7, Ordering::Relaxed);
    assert!(q.try_get(|b| b.len()).is_err());
    assert!(!q.has_value());
    let _ = q.len();
    let _: &HeapRings = match &r.source {
        Source::Heap(h) => h,
        #[cfg(not(miri))]
        Source::File(_) => unreachable!(),
    };
}
