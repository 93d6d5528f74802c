//! What a task's panic gives, in a program built with `panic = "abort"` as
//! in one built with the default `panic = "unwind"`: `Error::Panicked` with
//! the message, never a retry. Under abort the worker ends with the panic
//! (after sending its outcome) and the pool replaces it.
//!
//! `cargo run --example panic_abort --config 'profile.dev.panic="abort"'`

use corepool::{Error, Pool, Process};

fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

fn main() -> corepool::Result<()> {
    println!("abort: {}", cfg!(panic = "abort"));
    // Retries are for worker deaths: a panic is the task's own outcome.
    let pool = Pool::builder().workers(1).retries(2).build()?;
    match pool.apply(boom, 3) {
        Err(Error::Panicked { message }) => println!("apply: panicked: {message}"),
        other => println!("apply: {other:?}"),
    }
    println!("next: {:?}", pool.apply(boom, 4));
    match Process::start(boom, 3)?.join() {
        Err(Error::Panicked { message }) => println!("process: panicked: {message}"),
        other => println!("process: {other:?}"),
    }
    println!("respawns: {}", pool.stats().respawns);
    Ok(())
}
