//! Workers that break the shared-memory protocol: the parent must neither
//! read out of bounds, panic nor hang; it kills the worker, fails its tasks
//! and goes on with a replacement. Runs with its own `main`.

mod common;

use corepool::__private::{sabotage, Sabotage};
use corepool::{Error, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn misbehave(how: u8) -> u64 {
    let how = match how {
        0 => Sabotage::TailOutOfRange,
        1 => Sabotage::UnknownTaskId,
        _ => Sabotage::BadRecordLength,
    };
    assert!(sabotage(how), "runs in a worker");
    // Keep running: the parent must notice on its own and kill us.
    loop {
        std::hint::spin_loop();
    }
}

fn check_survives(how: u8) {
    let pool = Pool::builder().workers(2).build().unwrap();
    let others: Vec<_> = (0..200u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    match pool.apply(misbehave, how) {
        Err(Error::ProtocolViolation { what, .. }) => assert!(!what.is_empty()),
        other => panic!("expected ProtocolViolation, got {other:?}"),
    }
    for (i, h) in others.into_iter().enumerate() {
        match h.get() {
            Ok(v) => assert_eq!(v, (i * i) as u64),
            Err(Error::ProtocolViolation { .. }) => {} // was queued on the bad worker
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // The pool goes on, with a replacement.
    assert_eq!(pool.map(square, 0..1000u64, None).unwrap().len(), 1000);
    common::eventually("two workers again", || pool.pids().len() == 2);
}

fn tail_out_of_range_kills_only_the_bad_worker() {
    check_survives(0);
}

fn unknown_task_id_kills_only_the_bad_worker() {
    check_survives(1);
}

fn bad_record_length_kills_only_the_bad_worker() {
    check_survives(2);
}

fn main() {
    common::run(common::tests![
        tail_out_of_range_kills_only_the_bad_worker,
        unknown_task_id_kills_only_the_bad_worker,
        bad_record_length_kills_only_the_bad_worker,
    ]);
}
