//! Python's `apply_async(func, callback=..., error_callback=...)`: ten tasks
//! on a three-worker [`corepool::Pool`], of which the four with `n > 5`
//! panic. Successes reach the `on_success` callback, panics reach
//! `on_error` as [`corepool::Error::Panicked`]; the workers survive them.
//!
//! ```text
//! cargo run --release --example pool_callbacks
//! ```
//!
//! Prints six `value = ...` lines and four `error-value = ...` lines (in
//! completion order), then `exit--for`, and ends with `------------------end`.

use corepool::{Callbacks, Pool};
use std::hint::black_box;

/// Fails for `n > 5`, like the Python original's `IndexError`.
fn func(n: u64) -> String {
    // A little work, so that the tasks are not entirely empty.
    let work = (0..1_000u64).fold(n, |acc, i| black_box(acc.wrapping_mul(31).wrapping_add(i)));
    black_box(work);
    if n > 5 {
        panic!("n > 5-------------error");
    }
    "return = 1000".to_string()
}

fn main() -> Result<(), corepool::Error> {
    let pool = Pool::new(3)?;
    let mut handles = Vec::new();
    for n in 0..10u64 {
        let callbacks = Callbacks::new()
            .on_success(|v: &String| println!("value = {v}"))
            .on_error(|e| println!("error-value = {e}"));
        handles.push(pool.apply_async_with(func, n, callbacks)?);
    }
    println!("exit--for");

    pool.close();
    pool.join()?;
    // Callbacks run on pool threads before a result becomes ready: waiting on
    // every handle guarantees all their lines are out before the last one.
    for handle in &handles {
        handle.wait();
    }
    println!("------------------end");
    Ok(())
}
