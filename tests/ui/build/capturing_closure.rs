// A closure that captures a variable cannot be a task: the worker runs the
// task's code, not the parent's closure value, so the captured data would
// never reach it. Refused by `cargo build` (not `cargo check`: see the note in
// tests/compile_errors.rs), naming the closure's file, line and column.

fn main() -> corepool::Result<()> {
    corepool::init();
    let pool = corepool::Pool::new(1)?;
    let offset = 10u64;
    let shifted = pool.apply(move |x: u64| x + offset, 1)?;
    println!("{shifted}");
    Ok(())
}
