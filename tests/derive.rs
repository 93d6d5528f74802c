//! `#[derive(Wire)]`: derived structs and enums round-trip through their
//! encoding, refuse malformed bytes with a typed error (never a panic), and
//! cross to pool workers and back as task arguments and results. Runs with
//! its own `main` (workers re-execute this binary).

mod common;

use corepool::{Error, Pool, Wire};
use proptest::prelude::*;

#[derive(Clone, Debug, PartialEq, Wire)]
struct Order {
    id: u64,
    customer: String,
    weights: Vec<f64>,
    gift: Option<char>,
}

#[derive(Clone, Debug, PartialEq, Wire)]
enum Verdict {
    Rejected,
    Packed(u32),
    Shipped { parcels: u32, heaviest: f64 },
    Split(Vec<Verdict>),
}

/// Generic: `Wire` when `T` is.
#[derive(Clone, Copy, Debug, PartialEq, Wire)]
struct Pair<T>(T, T);

#[derive(Clone, Debug, PartialEq, Wire)]
struct Unit;

#[derive(Clone, Debug, PartialEq, Wire)]
enum Either<L, R> {
    Left(L),
    Right(R),
}

/// No value exists; decoding one is always an error.
#[derive(Debug, Wire)]
enum Never {}

/// Field and variant names that clash with the generated code's own names.
#[derive(Clone, Debug, PartialEq, Wire)]
struct Clashing {
    out: u8,
    input: String,
    __field0: bool,
}

#[derive(Clone, Debug, PartialEq, Wire)]
enum Awkward<T>
where
    T: Clone,
{
    Ok(T),
    Err { out: T, input: Clashing },
    None,
}

#[derive(Clone, Debug, PartialEq, Wire)]
struct EmptyBraces {}

#[derive(Clone, Debug, PartialEq, Wire)]
struct EmptyParens();

#[derive(Clone, Debug, PartialEq, Wire)]
struct Fixed<const N: usize>([u16; N]);

/// The library reached through a re-export, as a crate wrapping corepool
/// would.
mod runtime {
    pub use corepool as reexported;
}

#[derive(Debug, PartialEq, runtime::reexported::Wire)]
#[wire(crate = "runtime::reexported")]
struct ThroughReexport {
    value: i32,
}

fn encode<T: Wire>(value: &T) -> Vec<u8> {
    let mut out = corepool::Encoder::new();
    value.encode(&mut out);
    out.finish().expect("plain data encodes")
}

fn decode_all<T: Wire>(mut bytes: &[u8]) -> corepool::Result<T> {
    let value = T::decode(&mut bytes)?;
    assert!(bytes.is_empty(), "{} bytes left over", bytes.len());
    Ok(value)
}

fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
    assert_eq!(decode_all::<T>(&encode(&value)).unwrap(), value);
}

fn an_order(id: u64) -> Order {
    Order {
        id,
        customer: format!("customer {id}"),
        weights: (0..id % 4).map(|w| w as f64 + 0.5).collect(),
        gift: (id % 2 == 0).then_some('🎁'),
    }
}

fn judge(order: Order) -> Verdict {
    match order.weights.len() {
        0 => Verdict::Rejected,
        1 => Verdict::Packed(order.id as u32),
        2 => Verdict::Shipped {
            parcels: 2,
            heaviest: order.weights.iter().copied().fold(f64::MIN, f64::max),
        },
        _ => Verdict::Split(vec![Verdict::Packed(1), Verdict::Rejected]),
    }
}

fn derived_values_round_trip() {
    round_trip(an_order(7));
    round_trip(an_order(2));
    round_trip(Verdict::Rejected);
    round_trip(Verdict::Packed(9));
    round_trip(Verdict::Shipped {
        parcels: 3,
        heaviest: 1.25,
    });
    round_trip(Verdict::Split(vec![
        Verdict::Rejected,
        Verdict::Split(Vec::new()),
    ]));
    round_trip(Pair(1u8, 2u8));
    round_trip(Pair(String::from("a"), String::from("b")));
    round_trip(Unit);
    round_trip(Either::<u64, String>::Left(5));
    round_trip(Either::<u64, String>::Right("r".into()));
    round_trip(vec![Pair(1.5f32, 2.5), Pair(3.5, 4.5)]);
    round_trip(ThroughReexport { value: -4 });
}

fn awkward_names_and_shapes_round_trip() {
    let clashing = Clashing {
        out: 1,
        input: "in".into(),
        __field0: true,
    };
    round_trip(clashing.clone());
    round_trip(Awkward::Ok(3i64));
    round_trip(Awkward::Err {
        out: 'x',
        input: clashing,
    });
    round_trip(Awkward::<u8>::None);
    round_trip(EmptyBraces {});
    round_trip(EmptyParens());
    round_trip(Fixed([1, 2, 3]));
}

fn the_encoding_is_the_fields_in_order_after_a_one_byte_tag() {
    let order = an_order(3);
    let mut fields = corepool::Encoder::new();
    order.id.encode(&mut fields);
    order.customer.encode(&mut fields);
    order.weights.encode(&mut fields);
    order.gift.encode(&mut fields);
    assert_eq!(
        encode(&order),
        fields.finish().unwrap(),
        "no names, no framing"
    );
    assert!(encode(&Unit).is_empty());
    assert_eq!(encode(&Pair(1u16, 2u16)), [1, 0, 2, 0]);
    // The tag is the variant's index in declaration order.
    assert_eq!(encode(&Verdict::Rejected), [0]);
    assert_eq!(encode(&Verdict::Packed(1)), [1, 1, 0, 0, 0]);
    assert_eq!(encode(&Either::<u8, u8>::Right(7)), [1, 7]);
}

fn unknown_tags_and_short_input_are_decode_errors() {
    let err = decode_all::<Verdict>(&[4]).unwrap_err();
    match &err {
        Error::Decode { type_name, reason } => {
            assert!(type_name.ends_with("Verdict"), "{type_name}");
            assert!(reason.contains("tag 4"), "{reason}");
        }
        other => panic!("not a decode error: {other:?}"),
    }
    assert!(matches!(
        decode_all::<Never>(&[0]),
        Err(Error::Decode { .. })
    ));
    assert!(matches!(
        decode_all::<Verdict>(&[]),
        Err(Error::Decode { .. })
    ));
    // A `Packed` whose `u32` is cut short.
    assert!(matches!(
        decode_all::<Verdict>(&[1, 0, 0]),
        Err(Error::Decode { .. })
    ));
    // A struct whose string is not UTF-8.
    let mut bytes = encode(&an_order(1));
    let text = 8 + 8; // after the id and the string's length
    bytes[text] = 0xFF;
    assert!(matches!(
        decode_all::<Order>(&bytes),
        Err(Error::Decode { .. })
    ));
}

fn decoding_arbitrary_bytes_never_panics() {
    let config = ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..96), |bytes| {
            let _ = decode_all_lenient::<Order>(&bytes);
            let _ = decode_all_lenient::<Verdict>(&bytes);
            let _ = decode_all_lenient::<Vec<Either<Pair<u16>, Unit>>>(&bytes);
            let _ = decode_all_lenient::<Never>(&bytes);
            Ok(())
        })
        .unwrap();
    // Valid encodings with every byte flipped in turn: errors or values,
    // never a panic.
    let valid = encode(&vec![
        judge(an_order(1)),
        judge(an_order(2)),
        judge(an_order(3)),
    ]);
    for at in 0..valid.len() {
        let mut bytes = valid.clone();
        bytes[at] ^= 0xA5;
        let _ = decode_all_lenient::<Vec<Verdict>>(&bytes);
    }
}

/// Decodes without asserting that every byte is used: garbage may leave some.
fn decode_all_lenient<T: Wire>(mut bytes: &[u8]) -> corepool::Result<T> {
    T::decode(&mut bytes)
}

fn derived_types_cross_to_workers_with_apply() {
    let pool = Pool::new(2).unwrap();
    let verdict = pool.apply(judge, an_order(2)).unwrap();
    assert_eq!(
        verdict,
        Verdict::Shipped {
            parcels: 2,
            heaviest: 1.5
        }
    );
    let swapped = pool
        .apply(
            |Pair(a, b): Pair<String>| Pair(b, a),
            Pair("x".into(), "y".into()),
        )
        .unwrap();
    assert_eq!(swapped, Pair("y".to_string(), "x".to_string()));
    let either = pool
        .apply(
            |e: Either<u64, String>| match e {
                Either::Left(n) => Either::Right(n.to_string()),
                Either::Right(s) => Either::Left(s.len() as u64),
            },
            Either::Left(42),
        )
        .unwrap();
    assert_eq!(either, Either::<u64, String>::Right("42".into()));
}

fn derived_types_cross_to_workers_with_map() {
    let pool = Pool::new(2).unwrap();
    let orders: Vec<Order> = (0..200).map(an_order).collect();
    let verdicts = pool.chunked(7).unwrap().map(judge, orders.clone()).unwrap();
    let expected: Vec<Verdict> = orders.into_iter().map(judge).collect();
    assert_eq!(verdicts, expected);
    let units = pool.map(|u: Unit| u, vec![Unit; 10]).unwrap();
    assert_eq!(units, vec![Unit; 10]);
}

// ---- nesting: a value too deep for the receiver's stack is an error ------

/// Recursive through `Vec`: a chain of these is as deep as it is long.
#[derive(Clone, Debug, PartialEq, Wire)]
struct Node {
    v: u64,
    kids: Vec<Node>,
}

/// The most levels of derived types corepool decodes (documented on `Wire`).
const MAX_NESTING: u64 = 128;

/// A chain of `depth` nodes.
fn chain(depth: u64) -> Node {
    (1..depth).fold(Node { v: 0, kids: vec![] }, |n, v| Node {
        v,
        kids: vec![n],
    })
}

fn depth_of(node: &Node) -> u64 {
    std::iter::successors(Some(node), |n| n.kids.first()).count() as u64
}

/// Sends the encoding of a `Node` chain of its depth without building one
/// (written byte by byte, as a misbehaving worker could), and decodes as a
/// `Node`, keeping its depth.
#[derive(Debug, PartialEq)]
struct ForgedChain(u64);

impl Wire for ForgedChain {
    fn encode(&self, out: &mut corepool::Encoder) {
        for v in (1..self.0).rev() {
            v.encode(out);
            1u64.encode(out); // one kid
        }
        0u64.encode(out);
        0u64.encode(out); // no kids
    }
    fn decode(input: &mut &[u8]) -> corepool::Result<Self> {
        Node::decode(input).map(|n| ForgedChain(depth_of(&n)))
    }
}

/// An error that names `Node`, the limit and what to do. (A worker's
/// decode error reaches the parent as one about the task's arguments,
/// quoting the worker's.)
fn is_nesting_error(err: &Error) -> bool {
    let text = err.to_string();
    matches!(err, Error::Decode { .. } | Error::Encode { .. })
        && text.contains("derive::Node")
        && text.contains("128 levels")
        && text.contains("flattened")
}

fn a_value_at_the_nesting_limit_crosses_both_ways() {
    assert_eq!(
        encode(&ForgedChain(MAX_NESTING)),
        encode(&chain(MAX_NESTING))
    );
    let pool = Pool::new(2).unwrap();
    let deepest = pool.apply(chain, MAX_NESTING).unwrap();
    assert_eq!(deepest, chain(MAX_NESTING));
    assert_eq!(pool.apply(|n: Node| depth_of(&n), deepest), Ok(MAX_NESTING));
    // Decoded by the driver thread (2 MiB of stack), nobody helping.
    let handle = pool.apply_async(chain, MAX_NESTING).unwrap();
    common::eventually("the result delivered", || handle.ready());
    assert_eq!(depth_of(&handle.get().unwrap()), MAX_NESTING);
    let chains = pool.map(chain, [1, MAX_NESTING - 1, MAX_NESTING]).unwrap();
    assert_eq!(
        chains.iter().map(depth_of).collect::<Vec<_>>(),
        [1, 127, 128]
    );
}

fn a_value_nested_too_deeply_is_refused_by_its_sender() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.pids();
    // A result: the worker refuses to send it (user trial 2: a chain 5,000
    // deep once killed the parent, decoding it on its driver thread).
    for depth in [MAX_NESTING + 1, 5_000] {
        let err = pool.apply(chain, depth).unwrap_err();
        assert!(
            matches!(err, Error::Encode { .. }) && is_nesting_error(&err),
            "{err}"
        );
    }
    // An argument: refused before anything is sent.
    let err = pool
        .apply(|n: Node| depth_of(&n), chain(MAX_NESTING + 1))
        .unwrap_err();
    assert!(
        matches!(err, Error::Encode { .. }) && is_nesting_error(&err),
        "{err}"
    );
    let err = pool
        .map(
            |n: Node| depth_of(&n),
            vec![chain(2), chain(MAX_NESTING + 1)],
        )
        .unwrap_err();
    assert!(is_nesting_error(&err), "{err}");
    assert_eq!(pool.pids(), worker, "no worker died");
    assert_eq!(pool.apply(|n: Node| depth_of(&n), chain(3)), Ok(3));
}

fn a_forged_deep_value_fails_only_its_task() {
    let pool = Pool::new(1).unwrap();
    let worker = pool.pids();
    // 100,000 levels in 1.6 MB: decoded, once, until the stack overflowed.
    let forged = 100_000;
    // A result, decoded by the driver thread, nobody helping.
    let handle = pool.apply_async(ForgedChain, forged).unwrap();
    common::eventually("the result delivered", || handle.ready());
    let err = handle.get().unwrap_err();
    assert!(
        matches!(err, Error::Decode { .. }) && is_nesting_error(&err),
        "{err}"
    );
    // Or by the caller's thread.
    let err = pool.apply(ForgedChain, forged).unwrap_err();
    assert!(
        matches!(err, Error::Decode { .. }) && is_nesting_error(&err),
        "{err}"
    );
    // An argument, decoded by the worker.
    let err = pool
        .apply(|c: ForgedChain| c.0, ForgedChain(forged))
        .unwrap_err();
    assert!(
        matches!(err, Error::Decode { .. }) && is_nesting_error(&err),
        "{err}"
    );
    // Just below the limit, forged or not, it is a value like any other.
    assert_eq!(
        pool.apply(ForgedChain, MAX_NESTING),
        Ok(ForgedChain(MAX_NESTING))
    );
    assert_eq!(
        pool.apply(|c: ForgedChain| c.0, ForgedChain(MAX_NESTING)),
        Ok(MAX_NESTING)
    );
    assert_eq!(pool.pids(), worker, "no worker died");
}

/// A recursive enum through `Box`, as numeric code writes expression trees.
#[derive(Clone, Debug, PartialEq, Wire)]
enum Expr {
    Num(f64),
    Add(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
}

fn eval(e: Expr) -> f64 {
    match e {
        Expr::Num(x) => x,
        Expr::Add(a, b) => eval(*a) + eval(*b),
        Expr::Neg(a) => -eval(*a),
    }
}

/// `Box` is `Wire` (a user trial's recursive enum needed it), and a boxed
/// chain counts towards the nesting limit as a `Vec` one does.
fn a_recursive_enum_through_box_crosses_and_is_held_to_the_nesting_limit() {
    let e = Expr::Add(
        Box::new(Expr::Num(1.5)),
        Box::new(Expr::Neg(Box::new(Expr::Num(0.5)))),
    );
    round_trip(e.clone());
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(eval, e), Ok(1.0));
    let deep = (1..MAX_NESTING + 1).fold(Expr::Num(1.0), |e, _| Expr::Neg(Box::new(e)));
    let err = pool.apply(eval, deep).unwrap_err();
    assert!(err.to_string().contains("derive::Expr"), "{err}");
}

fn main() {
    corepool::init();
    common::run(common::tests![
        derived_values_round_trip,
        awkward_names_and_shapes_round_trip,
        the_encoding_is_the_fields_in_order_after_a_one_byte_tag,
        unknown_tags_and_short_input_are_decode_errors,
        decoding_arbitrary_bytes_never_panics,
        derived_types_cross_to_workers_with_apply,
        derived_types_cross_to_workers_with_map,
        a_value_at_the_nesting_limit_crosses_both_ways,
        a_value_nested_too_deeply_is_refused_by_its_sender,
        a_forged_deep_value_fails_only_its_task,
        a_recursive_enum_through_box_crosses_and_is_held_to_the_nesting_limit,
    ]);
}
