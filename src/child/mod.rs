//! Child processes: how corepool starts this binary again as a pool worker
//! or a `Process` child (exec'd, or forked by the fork server), the thread
//! that supervises and reaps them (and, at the program's exit, kills and
//! reaps those still running), and what every child shares (its build
//! fingerprint, panic capture).
//!
//! Nothing here knows about pools or processes' segments; both build on it.

pub(crate) mod exit_hook;
pub(crate) mod fingerprint;
pub(crate) mod forkserver;
pub(crate) mod image;
pub(crate) mod panic;
pub(crate) mod spawn;
pub(crate) mod supervisor;
pub(crate) mod zygote;
