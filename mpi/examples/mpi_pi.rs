//! Monte Carlo estimate of pi across the ranks of an MPI job:
//! `mpirun -n 2 target/release/examples/mpi_pi`.

use corepool_mpi::Cluster;

/// Counts the points of `samples` pseudo-random ones in the unit square
/// that fall inside the quarter circle (a xorshift generator seeded per task).
fn hits((seed, samples): (u64, u64)) -> u64 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..samples)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    corepool::init();
    let cluster = Cluster::init()?; // the other ranks serve from here on
    let tasks = 64u64;
    let per_task = 250_000u64;
    let counts = cluster.map(hits, (0..tasks).map(|seed| (seed, per_task)))?;
    let inside: u64 = counts.iter().sum();
    let pi = 4.0 * inside as f64 / (tasks * per_task) as f64;
    println!(
        "pi ~ {pi:.5} from {} samples on {} ranks ({:?} workers)",
        tasks * per_task,
        cluster.ranks(),
        cluster.workers()
    );
    Ok(())
}
