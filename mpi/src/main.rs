//! `corepool-mpi`: the cluster's command. `mpirun -n N corepool-mpi bench
//! [--quick] [--json]` measures the cluster beside a local pool and beside
//! bare MPI, in one run.

mod bench;

fn usage() -> ! {
    eprintln!(
        "usage: mpirun -n N [--bind-to none] corepool-mpi bench [--quick] [--json] [--repeats R] [--only WORKLOAD]\n\
         \n\
         Runs apply_async, map, cpu_loop, a cross-rank round-trip latency and a\n\
         large-argument bandwidth row on the cluster (every rank's pool), beside\n\
         the same work on a local pool of as many workers on rank 0 and beside\n\
         the bare MPI floor (rsmpi ping-pong and send bandwidth). --only runs one\n\
         workload (apply_async, map, cpu_loop, latency, latency_1ms or bandwidth)."
    );
    std::process::exit(2)
}

fn main() {
    corepool::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = bench::Options::default();
    match args.first().map(String::as_str) {
        Some("bench") => {}
        _ => usage(),
    }
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--json" => options.json = true,
            "--repeats" => {
                options.repeats = rest
                    .next()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--only" => options.only = Some(rest.next().cloned().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    if let Err(e) = bench::run(&options) {
        eprintln!("corepool-mpi: {e}");
        std::process::exit(1);
    }
}
