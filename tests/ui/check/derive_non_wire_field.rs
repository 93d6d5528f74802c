// `#[derive(Wire)]` on a struct with a field that is not `Wire`: reported on
// that field.

use std::path::PathBuf;

#[derive(corepool::Wire)]
struct Job {
    id: u64,
    input: PathBuf,
}

fn main() {}
