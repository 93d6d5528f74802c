//! A program built with `panic = "abort"` (the `panic_abort` example, built
//! here with that profile into a target directory of its own): a task's
//! panic reaches the caller as `Error::Panicked` with its message (the
//! child's panic hook sends the outcome before the process aborts), is not
//! retried, and the pool replaces the worker. Before, the message was lost
//! and the caller got `WorkerDied` (SIGABRT), retried `retries` times.
//!
//! Builds corepool a second time (another panic strategy): about a minute.

mod common;

use std::process::Command;
use std::time::Duration;

/// The example, built with `panic = "abort"` by `main` before the test.
static EXAMPLE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Builds the example with `panic = "abort"` into `target/panic-abort`
/// (outside the harness's per-test watchdog: a build takes minutes on a
/// small machine; this one has a watchdog of its own).
fn build_the_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<this> -> target/panic-abort
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the target directory")
        .join("panic-abort");
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--offline",
            "--example",
            "panic_abort",
            "--config",
            "profile.dev.panic=\"abort\"",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS");
    let built = common::output_within(&mut build, Duration::from_secs(900));
    assert!(
        built.status.success(),
        "building the example with panic = \"abort\": {}",
        String::from_utf8_lossy(&built.stderr)
    );
    target.join("debug/examples/panic_abort")
}

fn a_panic_under_panic_abort_is_the_tasks_error() {
    let mut run = Command::new(EXAMPLE.get().expect("built by main"));
    run.env("RUST_BACKTRACE", "0");
    let out = common::output_within(&mut run, common::WATCHDOG);
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{text}\n{stderr}", out.status);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "abort: true", "{text}");
    assert!(lines[1].starts_with("apply: panicked: boom at 3"), "{text}");
    assert_eq!(lines[2], "next: Ok(4)", "{text}");
    assert!(
        lines[3].starts_with("process: panicked: boom at 3"),
        "{text}"
    );
    // The worker that aborted was replaced once; the task was not retried.
    assert_eq!(lines[4], "respawns: 1", "{text}\n{stderr}");
}

fn main() {
    EXAMPLE.get_or_init(build_the_example);
    common::run(common::tests![a_panic_under_panic_abort_is_the_tasks_error]);
}
