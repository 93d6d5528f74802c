// A type that borrows cannot cross into another process.

#[derive(corepool::Wire)]
struct Name<'a> {
    text: &'a str,
}

fn main() {}
