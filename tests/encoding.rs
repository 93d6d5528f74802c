//! Encoding across processes: what a value's encoding carries (shared objects
//! to keep alive, pipe ends handed over) travels with it, and a value that
//! cannot be encoded is refused by the call that would send it, which stores
//! and sends nothing. Runs with its own `main`.

mod common;

use corepool::{Error, Pipe, Pool, Process, Queue, Serde, SharedArray};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A reading whose `Serialize` fails when there is none: it asks for a
/// sequence of unknown length, which postcard refuses.
#[derive(Debug, PartialEq)]
struct Reading(Option<u32>);

/// postcard's own message for that.
const BROKEN: &str = "The length of a sequence must be known";

impl Serialize for Reading {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.0 {
            Some(v) => v.serialize(s),
            None => s.serialize_seq(None)?.end(),
        }
    }
}

impl<'de> Deserialize<'de> for Reading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(|v| Reading(Some(v)))
    }
}

fn good(v: u32) -> Serde<Reading> {
    Serde(Reading(Some(v)))
}

fn bad() -> Serde<Reading> {
    Serde(Reading(None))
}

/// `err` is the encoder's refusal, with the serializer's own message.
fn assert_encode_error<T: std::fmt::Debug>(result: corepool::Result<T>) {
    match result {
        Err(e @ Error::Encode { .. }) => {
            assert!(e.to_string().contains(BROKEN), "{e}");
        }
        other => panic!("expected Error::Encode, got {other:?}"),
    }
}

fn a_queue_refuses_a_value_that_cannot_be_encoded_and_stores_nothing() {
    let q = Queue::<Serde<Reading>>::new(1).unwrap();
    assert_encode_error(q.put(&bad()));
    assert_encode_error(q.try_put(&bad()));
    assert_encode_error(q.put_timeout(&bad(), std::time::Duration::from_millis(1)));
    assert!(q.is_empty(), "no poison stored");
    // Capacity 1: a stored failure marker would make this report full.
    assert!(q.try_put(&good(5)).unwrap());
    assert_eq!(q.get().unwrap().0, Reading(Some(5)));
}

fn a_pipe_refuses_a_value_that_cannot_be_encoded_and_sends_nothing() {
    let (a, b) = Pipe::duplex::<Serde<Reading>>().unwrap();
    assert_encode_error(a.send(&bad()));
    assert!(b.try_recv().unwrap().is_none(), "nothing sent");
    a.send(&good(7)).unwrap();
    assert_eq!(b.recv().unwrap().0, Reading(Some(7)));
}

fn reading_of(r: Serde<Reading>) -> u32 {
    r.0 .0.unwrap_or(0)
}

fn measure(x: u32) -> Serde<Reading> {
    Serde(Reading((x > 0).then_some(x)))
}

fn a_pool_refuses_arguments_that_cannot_be_encoded() {
    let pool = Pool::new(1).unwrap();
    assert_encode_error(pool.apply_async(reading_of, bad()));
    assert_encode_error(pool.apply(reading_of, bad()));
    assert_encode_error(
        pool.chunked(1)
            .unwrap()
            .map(reading_of, [good(1), bad(), good(2)]),
    );
    assert_encode_error(
        pool.chunked(1)
            .unwrap()
            .map_async(reading_of, [good(1), bad()]),
    );
    let mut lazy = pool.imap(reading_of, [bad()]);
    assert_encode_error(lazy.next().unwrap());
    assert_eq!(
        pool.apply(reading_of, good(3)).unwrap(),
        3,
        "the pool goes on"
    );
}

fn a_result_that_cannot_be_encoded_reaches_the_caller_with_the_message() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.pids();
    assert_encode_error(pool.apply(measure, 0));
    assert_encode_error(pool.chunked(3).unwrap().map(measure, [1, 0, 2]));
    assert_eq!(pool.apply(measure, 4).unwrap().0, Reading(Some(4)));
    assert_eq!(pool.pids(), worker, "the worker survived");
}

fn a_process_refuses_an_argument_and_reports_a_result_that_cannot_be_encoded() {
    let before = common::children().len();
    assert_encode_error(Process::start(reading_of, bad()));
    assert_eq!(common::children().len(), before, "nothing started");
    assert_encode_error(Process::start(measure, 0).unwrap().join());
    assert_eq!(
        Process::start(measure, 8).unwrap().join().unwrap().0,
        Reading(Some(8))
    );
}

fn remember(_: Serde<Reading>) {}

fn an_initializer_argument_that_cannot_be_encoded_fails_the_build() {
    let built = Pool::builder()
        .workers(1)
        .initializer_with(remember, bad())
        .build();
    assert_encode_error(built);
}

fn sum_from_queue(q: Queue<SharedArray<u64>>) -> u64 {
    q.get().unwrap().to_vec().iter().sum()
}

/// What a put keeps alive travels with the queue, not in a per-thread list
/// that the next pool submission on the thread took (and freed with its
/// answer).
fn a_shared_array_put_outlives_a_pool_submission_on_the_same_thread() {
    let pool = Pool::new(1).unwrap();
    let q = Queue::<SharedArray<u64>>::new(4).unwrap();
    let a = SharedArray::from_slice(&[1u64, 2, 3]).unwrap();
    q.put(&a).unwrap();
    drop(a); // the queue's copy is the only one left
    assert_eq!(pool.apply(|x: u64| x + 1, 1).unwrap(), 2);
    let reader = Process::start(sum_from_queue, q.clone()).unwrap();
    assert_eq!(reader.join().unwrap(), 6);
}

/// A value far larger in memory (64 KiB) than its smallest encoding.
type Huge = Option<[u64; 8192]>;

/// A task result that writes its own record: a count of 2^20 `Huge` values
/// over 500 KB of `None`s.
#[derive(Debug)]
struct Forged(#[allow(dead_code)] Vec<Huge>);

impl corepool::Wire for Forged {
    fn encode(&self, out: &mut corepool::Encoder) {
        out.extend_from_slice(&(1u64 << 20).to_le_bytes());
        let end = out.len() + 500_000;
        out.resize(end, 0);
    }

    fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
        Vec::<Huge>::decode(input).map(Forged)
    }
}

fn forge(_: ()) -> Forged {
    Forged(Vec::new())
}

/// Once a 32 GB reservation in the parent, and an abort.
fn a_forged_element_count_is_a_decode_error_not_an_allocation() {
    let pool = Pool::new(1).unwrap();
    let err = pool.apply(forge, ()).unwrap_err();
    assert!(
        matches!(&err, Error::Decode { reason, .. } if reason.contains("memory")),
        "{err:?}"
    );
    let err = Process::builder()
        .max_result_bytes(1 << 20)
        .start(forge, ())
        .unwrap()
        .join()
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}

// ---- a panic in a user's `Wire` code is the encode or decode error -------

/// A hand-written `Wire` whose `encode` panics for 13 and whose `decode`
/// panics for 14.
#[derive(Debug, PartialEq)]
struct Bomb(u64);

impl corepool::Wire for Bomb {
    fn encode(&self, out: &mut corepool::Encoder) {
        assert_ne!(self.0, 13, "thirteen does not encode");
        self.0.encode(out);
    }
    fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
        let v = u64::decode(input)?;
        assert_ne!(v, 14, "fourteen does not decode");
        Ok(Bomb(v))
    }
}

/// `result` is an `Error::Encode` (or `Decode`, as `decode` says) that
/// names `Bomb` and says its `Wire` impl panicked, with the panic's message.
fn assert_bomb_error<T: std::fmt::Debug>(result: corepool::Result<T>, decode: bool, message: &str) {
    let err = result.unwrap_err();
    let text = err.to_string();
    let kind_ok = if decode {
        matches!(err, Error::Decode { .. })
    } else {
        matches!(err, Error::Encode { .. })
    };
    assert!(
        kind_ok,
        "wanted {}: {err:?}",
        if decode { "Decode" } else { "Encode" }
    );
    assert!(
        text.contains("Bomb") && text.contains("impl panicked") && text.contains(message),
        "{text}"
    );
}

fn a_panic_in_wire_code_is_an_encode_or_decode_error_wherever_it_happens() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.pids();
    // User trial 2: the four cases gave four different outcomes, one of
    // them the panic itself, in the caller.
    assert_bomb_error(pool.apply(|b: Bomb| b.0, Bomb(13)), false, "thirteen");
    assert_bomb_error(pool.apply(|b: Bomb| b.0, Bomb(14)), true, "fourteen");
    assert_bomb_error(pool.apply(Bomb, 13), false, "thirteen");
    assert_bomb_error(pool.apply(Bomb, 14), true, "fourteen");
    // Asynchronously, and in bulk.
    assert_bomb_error(pool.apply_async(|b: Bomb| b.0, Bomb(13)), false, "thirteen");
    let h = pool.apply_async(Bomb, 14).unwrap();
    assert_bomb_error(h.get(), true, "fourteen");
    let args: Vec<Bomb> = (10..20).map(Bomb).collect();
    assert_bomb_error(pool.map(|b: Bomb| b.0, args), false, "thirteen");
    let args: Vec<Bomb> = [10, 14, 15].into_iter().map(Bomb).collect();
    assert_bomb_error(pool.map(|b: Bomb| b.0, args), true, "fourteen");
    assert_bomb_error(pool.map(Bomb, [12, 13]), false, "thirteen");
    assert_bomb_error(pool.map(Bomb, [14, 15]), true, "fourteen");
    let mut lazy = pool.imap(|b: Bomb| b.0, [Bomb(13)]);
    assert_bomb_error(lazy.next().unwrap(), false, "thirteen");
    // Elsewhere too.
    let q = Queue::<Bomb>::new(2).unwrap();
    assert_bomb_error(q.put(&Bomb(13)), false, "thirteen");
    q.put(&Bomb(14)).unwrap();
    assert_bomb_error(q.get(), true, "fourteen");
    assert_bomb_error(Process::start(|b: Bomb| b.0, Bomb(13)), false, "thirteen");
    assert_bomb_error(Process::start(Bomb, 13).unwrap().join(), false, "thirteen");
    assert_bomb_error(Process::start(Bomb, 14).unwrap().join(), true, "fourteen");
    // Nothing else was affected.
    assert_eq!(pool.apply(Bomb, 12), Ok(Bomb(12)));
    assert_eq!(pool.pids(), worker, "no worker died");
}

/// A serde type whose `Serialize` panics for 13 and whose `Deserialize`
/// panics for 14.
#[derive(Debug, PartialEq)]
struct Grenade(u32);

impl Serialize for Grenade {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert_ne!(self.0, 13, "thirteen does not serialize");
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Grenade {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        assert_ne!(v, 14, "fourteen does not deserialize");
        Ok(Grenade(v))
    }
}

fn grenade_back(g: Serde<Grenade>) -> u32 {
    g.0 .0
}

/// A panic in the serde impls a `Serde` wrapper runs is reported as the
/// `Serialize` or `Deserialize` impl's (a user trial was told to fix a
/// `Wire::encode` impl it never wrote).
fn a_panic_in_serde_code_names_the_serde_impl() {
    let q = Queue::<Serde<Grenade>>::new(1).unwrap();
    let err = q.put(&Serde(Grenade(13))).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    assert!(text.contains("`Serialize` impl panicked"), "{text}");
    assert!(text.contains("thirteen does not serialize"), "{text}");
    q.put(&Serde(Grenade(14))).unwrap();
    let err = q.get().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(text.contains("`Deserialize` impl panicked"), "{text}");
    assert!(text.contains("fourteen does not deserialize"), "{text}");
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(grenade_back, Serde(Grenade(7))).unwrap(), 7);
    let err = pool.apply(grenade_back, Serde(Grenade(14))).unwrap_err();
    assert!(
        err.to_string().contains("`Deserialize` impl panicked"),
        "{err}"
    );
}

/// Trial 28: an argument whose encoder panics for the *first* item (the
/// one encoded to size the chunks) must be the typed error on every map
/// path too, never a panic in the caller; and the pool goes on.
fn a_map_whose_first_item_panics_in_its_encoder_is_an_encode_error() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.pids();
    let first_bad = || [13u64, 1, 2, 3].map(Bomb);
    let ok = |b: Bomb| b.0;
    assert_bomb_error(pool.map(ok, first_bad()), false, "thirteen");
    assert_bomb_error(
        pool.map_async(ok, first_bad()).and_then(|r| r.get()),
        false,
        "thirteen",
    );
    let pairs = || first_bad().map(|b| (b, 1u64));
    assert_bomb_error(
        pool.starmap(|b: Bomb, x: u64| b.0 + x, pairs()),
        false,
        "thirteen",
    );
    assert_bomb_error(
        pool.starmap_async(|b: Bomb, x: u64| b.0 + x, pairs())
            .and_then(|r| r.get()),
        false,
        "thirteen",
    );
    let first: corepool::Result<Vec<u64>> = pool.imap(ok, first_bad()).collect();
    assert_bomb_error(first, false, "thirteen");
    let first: corepool::Result<Vec<u64>> = pool.imap_unordered(ok, first_bad()).collect();
    assert_bomb_error(first, false, "thirteen");
    let chunked = pool.chunked(2).unwrap();
    assert_bomb_error(chunked.map(ok, first_bad()), false, "thirteen");
    assert_bomb_error(
        chunked.map_async(ok, first_bad()).and_then(|r| r.get()),
        false,
        "thirteen",
    );
    let first: corepool::Result<Vec<u64>> = chunked.imap(ok, first_bad()).collect();
    assert_bomb_error(first, false, "thirteen");
    assert_eq!(pool.map(ok, [5, 6].map(Bomb)), Ok(vec![5, 6]));
    assert_eq!(pool.pids(), worker, "no worker died");
}

fn main() {
    corepool::init();
    // The process thread's eventfd lives for the program: create it before
    // the harness takes its descriptor baseline.
    Process::start(|x: u64| x, 0).unwrap().join().unwrap();
    common::run(common::tests![
        a_queue_refuses_a_value_that_cannot_be_encoded_and_stores_nothing,
        a_pipe_refuses_a_value_that_cannot_be_encoded_and_sends_nothing,
        a_pool_refuses_arguments_that_cannot_be_encoded,
        a_result_that_cannot_be_encoded_reaches_the_caller_with_the_message,
        a_process_refuses_an_argument_and_reports_a_result_that_cannot_be_encoded,
        an_initializer_argument_that_cannot_be_encoded_fails_the_build,
        a_shared_array_put_outlives_a_pool_submission_on_the_same_thread,
        a_forged_element_count_is_a_decode_error_not_an_allocation,
        a_panic_in_wire_code_is_an_encode_or_decode_error_wherever_it_happens,
        a_map_whose_first_item_panics_in_its_encoder_is_an_encode_error,
        a_panic_in_serde_code_names_the_serde_impl,
    ]);
}
