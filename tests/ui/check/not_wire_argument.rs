// A task argument whose type is not `Wire`: the error names the three ways in.

struct Config {
    threads: usize,
}

fn threads(config: Config) -> usize {
    config.threads
}

fn main() -> corepool::Result<()> {
    corepool::init();
    let pool = corepool::Pool::new(1)?;
    let n = pool.apply(threads, Config { threads: 4 })?;
    println!("{n}");
    Ok(())
}
