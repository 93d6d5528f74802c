// `#[wire(...)]` knows `crate = "..."` only, and only on the type.

#[derive(corepool::Wire)]
#[wire(rename = "Other")]
struct Renamed(u8);

#[derive(corepool::Wire)]
struct OnAField {
    #[wire(crate = "corepool")]
    value: u8,
}

fn main() {}
