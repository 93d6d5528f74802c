//! The entry of every child: [`init`] decides, before the user's `main` goes
//! on, whether this process is a pool worker or a `Process` child, and if so
//! serves and exits.

use crate::sys;
use std::io::Write;

/// Makes this process a corepool worker if it was started as one; otherwise
/// returns at once and does nothing.
///
/// Call it as the **first statement of `main`** in every binary that builds a
/// pool (programs, examples, integration tests with `harness = false`). A pool
/// starts its workers by re-executing the current binary; in those processes
/// `init` serves tasks and exits, and never returns into your `main`.
///
/// ```
/// fn main() {
///     corepool::init();
///     // ... build pools and submit work ...
/// }
/// ```
pub fn init() {
    let code = crate::process::child::enter().or_else(crate::pool::worker::enter);
    if let Some(code) = code {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        sys::exit_now(code);
    }
}
