// What a task may be: a `fn` item or a closure that captures nothing, taking
// and returning `Wire` values, your own types included. Builds and runs.

use corepool::{Pool, Wire};

#[derive(Debug, PartialEq, Wire)]
struct Shifted {
    value: u64,
    by: u64,
}

fn shift(arg: (u64, u64)) -> Shifted {
    Shifted { value: arg.0 + arg.1, by: arg.1 }
}

fn main() -> corepool::Result<()> {
    corepool::init();
    let pool = Pool::new(1)?;
    let offset = 10u64;
    // Pass the data as an argument instead of capturing it.
    assert_eq!(pool.apply(shift, (1, offset))?, Shifted { value: 11, by: 10 });
    assert_eq!(pool.apply(|(x, by): (u64, u64)| x + by, (1, offset))?, 11);
    Ok(())
}
