// Unions are refused: the encoding could not tell which field is live.

#[derive(corepool::Wire)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
