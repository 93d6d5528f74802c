//! A distributed matrix-vector product `y = A x`: the matrix is broadcast to
//! every rank once (one `MPI_Bcast` into a shared array per node), and the
//! tasks carry only its handle and a range of rows.
//! `mpirun -n 2 target/release/examples/mpi_matvec`.

use corepool_mpi::{Broadcast, Cluster, Shard};

/// Rows `start..end` of `A x`, for an `n`×`n` row-major `A`.
fn rows((a, x, n, start, end): (Broadcast<f64>, Vec<f64>, u64, u64, u64)) -> Vec<f64> {
    let n = n as usize;
    (start as usize..end as usize)
        .map(|row| {
            a.fold_chunks(row * n..(row + 1) * n, (0.0, 0), |(sum, col), xs| {
                let dot: f64 = xs.iter().zip(&x[col..]).map(|(a, x)| a * x).sum();
                (sum + dot, col + xs.len())
            })
            .map_or(f64::NAN, |(sum, _)| sum)
        })
        .collect()
}

/// This rank's share of the rows, computed once per rank (for `gather`).
fn my_rows((shard, (a, x, n)): (Shard, (Broadcast<f64>, Vec<f64>, u64))) -> Vec<f64> {
    let range = shard.range_of(n as usize);
    rows((a, x, n, range.start as u64, range.end as u64))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    corepool::init();
    let cluster = Cluster::init()?;
    let n = 1_000usize;
    let matrix: Vec<f64> = (0..n * n)
        .map(|i| ((i * 7919) % 1000) as f64 / 1000.0)
        .collect();
    let x: Vec<f64> = (0..n).map(|i| 1.0 / (1 + i) as f64).collect();
    let expected: Vec<f64> = matrix
        .chunks(n)
        .map(|row| row.iter().zip(&x).map(|(a, x)| a * x).sum())
        .collect();

    // 8 MB to every rank, once.
    let a = cluster.broadcast(&matrix)?;

    // Dynamically scheduled: blocks of 50 rows to whichever rank has room.
    let block = 50;
    let blocks = (0..n).step_by(block).map(|start| {
        (
            a.clone(),
            x.clone(),
            n as u64,
            start as u64,
            (start + block).min(n) as u64,
        )
    });
    let y: Vec<f64> = cluster.map(rows, blocks)?.concat();

    // One task per rank, its share of the rows, gathered by rank.
    let y_gathered: Vec<f64> = cluster.gather(my_rows, (a, x, n as u64))?.concat();

    let worst = y
        .iter()
        .chain(&y_gathered)
        .zip(expected.iter().chain(&expected))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    if worst > 1e-9 {
        return Err(format!("matvec differs from the serial product by {worst}").into());
    }
    println!(
        "matvec OK: {n}x{n} on {} ranks {:?}, max difference {worst:e}",
        cluster.ranks(),
        cluster.workers()
    );
    Ok(())
}
