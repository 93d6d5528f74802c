//! What the program does for its children when it exits with some still
//! running: kill them and reap them itself, before the process ends.
//!
//! Every child corepool starts (pool workers, `Process` children, the fork
//! server) has the kernel's parent-death signal armed, so none outlives the
//! program. But that signal comes *after* the program is gone: for an
//! instant each child is an orphan, then a zombie until `init` (or the
//! nearest subreaper: a test harness, a container's init, a service
//! manager) reaps it. A pool kept in a `static`, which no destructor ever
//! stops, or a program that calls `std::process::exit` with pools alive,
//! would leave exactly that. So the first owner of children registers one
//! `atexit` handler (`libc::atexit`, which glibc ties to this object's
//! lifetime), and at exit it asks every owner still registered to stop:
//! each kills and reaps its own children, as its destructor would.
//!
//! The handler must never hang the program's exit: it only *tries* to take
//! the registry's lock (a thread holding it at exit lets the kernel's
//! signal do the job instead), runs the stops outside that lock, and waits
//! for them until one shared deadline. It acts only in the process that
//! registered (a child the user's own `fork` made inherits the handler, not
//! the children).

use crate::sys;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, TryLockError};
use std::time::{Duration, Instant};

/// How long the handler may delay the program's exit, in all. A child that
/// got SIGKILL is reaped within milliseconds; only one stuck in the kernel
/// (an uninterruptible wait) takes longer, and the parent-death signal
/// still covers it.
const EXIT_DEADLINE: Duration = Duration::from_secs(2);

/// An owner's stop, in two steps so that every owner is asked before any
/// is waited for (one slow owner must not use up the others' time): the
/// call asks it to kill and reap its children, without waiting; the
/// [`Wait`] it returns waits for that until the deadline (whether or not
/// they were all reaped by then).
pub(crate) type Stop = Arc<dyn Fn() -> Wait + Send + Sync>;

/// The second step of a [`Stop`].
pub(crate) type Wait = Box<dyn FnOnce(Instant)>;

/// The owners to stop at exit, and the process they belong to.
struct Registry {
    /// The pid of the process whose owners these are (a forked copy of the
    /// program has the same list and must not act on it).
    pid: u32,
    owners: Vec<(u64, Stop)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pid: 0,
    owners: Vec::new(),
});

/// Ids of registrations, never reused.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Registers the handler once per program.
static HANDLER: Once = Once::new();

/// Set (for good) when this process began to stop its owners at exit: the
/// pid of the process that did, 0 before. A pid, not a flag, so that a
/// child `fork()`ed from a program during its exit does not think itself
/// exiting.
static EXIT_BEGAN_IN: AtomicU32 = AtomicU32::new(0);

/// Whether this process's exit began (its owners are being stopped): the
/// work still unfinished in its pools is then cancelled, not failed.
pub(crate) fn exit_began() -> bool {
    // Relaxed: a hint read on each drive pass; the stops that follow the
    // store are what end the workers, and the pass after their exit
    // events sees it.
    EXIT_BEGAN_IN.load(Ordering::Relaxed) == sys::current_pid()
}

/// An owner's place in the registry; dropping it takes the owner out (call
/// that once its children are reaped, so that exit has nothing to do).
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = crate::sync::lock(&REGISTRY);
        registry.owners.retain(|(id, _)| *id != self.id);
    }
}

/// Adds an owner of children whose `stop` runs at exit unless the returned
/// registration was dropped first.
pub(crate) fn register(stop: Stop) -> Registration {
    HANDLER.call_once(|| {
        // A registration that fails (glibc's table is full: it grows on
        // demand, so only without memory) leaves the parent-death signal
        // to do the job, as before this hook existed.
        let _ = sys::at_exit(run_at_exit);
    });
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut registry = crate::sync::lock(&REGISTRY);
    let pid = sys::current_pid();
    if registry.pid != pid {
        // Inherited through a fork: those owners belong to the parent.
        registry.pid = pid;
        registry.owners.clear();
    }
    registry.owners.push((id, stop));
    Registration { id }
}

/// The `atexit` handler.
extern "C" fn run_at_exit() {
    // Nothing may unwind out of an `extern "C"` function; a panic here (in
    // an owner's stop) ends the handler and leaves the rest to the kernel.
    let _ = std::panic::catch_unwind(stop_all_owners);
}

/// Asks every registered owner of this process to stop, newest first, then
/// waits for each until the shared deadline. The `atexit` handler's work;
/// also called by a corepool child at the end of its role, which ends the
/// process with `_exit` (no `atexit` handler runs): a pool or fork server
/// its task started is stopped and reaped then, not left to the
/// parent-death signal and whoever reaps orphans.
pub(crate) fn stop_all_owners() {
    let owners: Vec<Stop> = {
        let registry = match REGISTRY.try_lock() {
            Ok(registry) => registry,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Held by a thread that runs on while we exit: do not wait.
            Err(TryLockError::WouldBlock) => return,
        };
        if registry.pid != sys::current_pid() {
            return;
        }
        EXIT_BEGAN_IN.store(registry.pid, Ordering::Relaxed);
        registry
            .owners
            .iter()
            .rev()
            .map(|(_, s)| s.clone())
            .collect()
    };
    let deadline = Instant::now() + EXIT_DEADLINE;
    let waits: Vec<Wait> = owners.iter().map(|stop| stop()).collect();
    for wait in waits {
        wait(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    #[cfg_attr(miri, ignore = "registers a C exit handler")]
    fn a_dropped_registration_is_not_stopped_and_a_live_one_is() {
        static STOPPED: AtomicUsize = AtomicUsize::new(0);
        let gone = register(Arc::new(|| {
            STOPPED.fetch_add(100, Ordering::Relaxed);
            Box::new(|_| {}) as Wait
        }));
        let live = register(Arc::new(|| {
            STOPPED.fetch_add(1, Ordering::Relaxed);
            Box::new(|_| {}) as Wait
        }));
        drop(gone);
        // Other tests of this binary may hold registrations of their own
        // (their pools' supervisors); count only ours.
        let ours: Vec<Stop> = {
            let registry = crate::sync::lock(&REGISTRY);
            registry
                .owners
                .iter()
                .filter(|(id, _)| *id == live.id)
                .map(|(_, s)| s.clone())
                .collect()
        };
        assert_eq!(ours.len(), 1);
        for stop in ours {
            stop()(Instant::now());
        }
        assert_eq!(STOPPED.load(Ordering::Relaxed), 1);
        let live_id = live.id;
        drop(live);
        let registry = crate::sync::lock(&REGISTRY);
        assert!(registry.owners.iter().all(|(id, _)| *id != live_id));
    }
}
