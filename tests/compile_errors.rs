//! The compiler's messages for misused tasks and types, checked against
//! `tests/ui/**/*.stderr` with trybuild.
//!
//! * `tests/ui/check/`: errors that `cargo check` (and rust-analyzer) report
//!   at the user's line: a type that is not `Wire`, and `#[derive(Wire)]`
//!   misuse. trybuild checks them with `cargo check`, proving that.
//! * `tests/ui/build/`: a capturing closure as a task, which only `cargo
//!   build` reports (a post-monomorphisation check: see
//!   `wire::task::assert_captures_nothing`). A passing case in the same batch
//!   makes trybuild build rather than check.
//!
//! The expected messages are rustc's own, so they depend on its version: they
//! were written by rustc 1.95 (`TRYBUILD=overwrite cargo test --test
//! compile_errors` rewrites them), and on another version these tests say so
//! and pass without comparing.

use std::process::Command;

/// The compiler the `.stderr` files were written with.
const PINNED_RUSTC: &str = "rustc 1.95.";

/// Whether the compiler cargo uses is the one the expected messages came from.
fn rustc_is_pinned() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    if version.starts_with(PINNED_RUSTC) {
        return true;
    }
    eprintln!(
        "skipped: the expected messages come from {PINNED_RUSTC}x, this is {}",
        version.trim()
    );
    false
}

#[test]
fn wire_and_derive_errors_show_at_cargo_check() {
    if rustc_is_pinned() {
        trybuild::TestCases::new().compile_fail("tests/ui/check/*.rs");
    }
}

#[test]
fn capturing_closures_fail_at_cargo_build() {
    if rustc_is_pinned() {
        let cases = trybuild::TestCases::new();
        cases.pass("tests/ui/build/tasks_that_build.rs");
        cases.compile_fail("tests/ui/build/capturing_closure.rs");
    }
}
