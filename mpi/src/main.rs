//! `corepool-mpi`: the cluster's command. `mpirun -n N corepool-mpi bench
//! [--quick] [--json]` measures the cluster beside a local pool and beside
//! bare MPI, in one run.

mod bench;

fn usage() -> ! {
    print_usage();
    std::process::exit(2)
}

/// A command line that cannot work: what is wrong, then the usage; exit 2
/// before anything runs (as the `corepool` command does).
fn usage_error(what: &str) -> ! {
    eprintln!("corepool-mpi: {what}\n");
    usage()
}

fn print_usage() {
    eprintln!(
        "usage: mpirun -n N [--bind-to none] corepool-mpi bench [--quick] [--json] [--repeats R] [--only WORKLOAD]\n\
         \n\
         Runs apply_async, map, cpu_loop, a cross-rank round-trip latency and a\n\
         large-argument bandwidth row on the cluster (every rank's pool), beside\n\
         the same work on a local pool of as many workers on rank 0 and beside\n\
         the bare MPI floor (rsmpi ping-pong and send bandwidth). --only runs one\n\
         workload (apply_async, map, cpu_loop, latency, latency_1ms or bandwidth);\n\
         --repeats R (at least 1; default 3, 1 with --quick) repeats each row and\n\
         reports the median; --json prints one JSON object per row (JSON Lines).\n\
         \n\
         Exit status: 0 on success; 1 on a run that failed (said on stderr); 2 on\n\
         a command line that cannot work, said on stderr before anything runs."
    );
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
                let value = rest.next().map(String::as_str).unwrap_or("");
                options.repeats = match value.parse::<usize>() {
                    Ok(r) if r >= 1 => r,
                    _ => usage_error(&format!(
                        "--repeats {value:?}: give a whole number of at least 1"
                    )),
                }
            }
            "--only" => {
                let name = rest.next().map(String::as_str).unwrap_or("");
                if !bench::WORKLOADS.contains(&name) {
                    usage_error(&format!(
                        "unknown workload `{name}`: choose from {}",
                        bench::WORKLOADS.join(", ")
                    ));
                }
                options.only = Some(name.to_string());
            }
            other => usage_error(&format!("unknown argument `{other}`")),
        }
    }
    if let Err(e) = bench::run(&options) {
        eprintln!("corepool-mpi: {e}");
        std::process::exit(1);
    }
}
