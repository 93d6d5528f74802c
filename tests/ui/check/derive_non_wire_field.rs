// `#[derive(Wire)]` on a struct with a field that is not `Wire`: reported on
// that field.

use std::collections::HashMap;

#[derive(corepool::Wire)]
struct Job {
    id: u64,
    index: HashMap<String, u64>,
}

fn main() {}
