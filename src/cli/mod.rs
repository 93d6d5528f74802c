//! Subcommands of the `corepool` binary.

pub mod bench;
pub mod info;
pub mod soak;
