//! The entry of every child: an ELF constructor that runs before `main` (and
//! before the test harness, in a test binary) decides whether this process
//! is a pool worker or a `Process` child, and if so serves and exits without
//! ever returning into the program.
//!
//! Children are this executable re-executed. Recognising them before `main`
//! means that no `main` can run in a child: not the program's, not libtest's
//! (which would run the whole test suite again in every worker), not a doc
//! test's or a benchmark's. [`init`] is kept, as a no-op, for programs that
//! still call it.
//!
//! A child's first steps, before it is told apart as a worker or a
//! `Process` child: it arms its parent-death signal and pins itself to the
//! CPUs its parent named (`child::spawn` starts it with `posix_spawn`,
//! which can do neither).
//!
//! A third kind of child is the fork server (`child::zygote`): recognised
//! here too, it never serves a role itself but forks children that do, each
//! going on from the same point an exec'd child reaches here (set up by the
//! zygote as this entry and `posix_spawn` would have).
//!
//! Life before `main`: the C runtime and the standard library's own
//! constructors (which record the arguments) have run; the Rust runtime's
//! `main` set-up has not. A child does the parts of it that matter for
//! itself (standard descriptors open, `SIGPIPE` ignored); the rest it goes
//! without (the main thread has no name; a stack overflow is a plain
//! `SIGSEGV`, without the runtime's one-line message). It flushes its
//! standard streams itself and leaves with `_exit`, never returning to the C
//! runtime.

use crate::sys;
use std::io::Write;

/// The constructor, as an entry in `.init_array`: the C runtime calls every
/// such entry after loading the program and before `main`. It sits in plain
/// `.init_array`, which runs after the prioritised `.init_array.NNNNN`
/// entries, among them the standard library's, so `std::env` already works.
///
/// The linker keeps a `#[used]` static only if it keeps the object file that
/// holds it, and it drops object files of the corepool rlib that nothing
/// references: [`keep_linked`], called wherever a child is started, is that
/// reference.
#[used]
// SAFETY: `.init_array` holds pointers to functions taking no arguments (or
// glibc's `(argc, argv, envp)`, which a C-ABI function ignores) and
// returning nothing: exactly this static's type.
#[unsafe(link_section = ".init_array")]
static ENTRY: extern "C" fn() = enter_before_main;

/// Runs before `main` in every program linking corepool: in a child, serves
/// and exits; elsewhere returns at once (three environment lookups).
extern "C" fn enter_before_main() {
    let is_zygote = crate::child::zygote::is_zygote();
    let is_child = is_zygote
        || std::env::var_os(crate::pool::worker::WORKER_ENV).is_some()
        || std::env::var_os(crate::process::PROCESS_ENV).is_some();
    if !is_child {
        return;
    }
    // First of all, the parent-death signal (`posix_spawn` cannot arm it
    // for us, see `child::spawn`): from here on the kernel kills this
    // process when the thread that started it exits. Had that thread died
    // already, this process was handed to another parent, and the pool
    // worker's and the `Process` child's entries see it (they compare their
    // parent's pid with the one the token names) and leave.
    let _ = sys::set_parent_death_signal();
    sys::settle_like_the_rust_runtime();
    // As `ps` and `pgrep` show it: the program's name, not `exe`.
    sys::name_after_program();
    if is_zygote {
        // The fork server: forks children that go on in `serve_role`, as if
        // they had been exec'd and had come this far; never returns.
        crate::child::zygote::serve(serve_role, crate::pool::worker::EXIT_START_FAILED);
    }
    if let Err(message) = pin_as_asked() {
        eprintln!("corepool: {message}; this child cannot start");
        sys::exit_now(crate::pool::worker::EXIT_START_FAILED);
    }
    if let Some(code) = serve_role() {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        sys::exit_now(code);
    }
}

/// Serves as the worker or `Process` child this process was started as,
/// and returns its exit status (`None`: neither). No panic may unwind into
/// the C runtime (that aborts): a panic here is a start failure with the
/// worker's start-failure status.
///
/// After the role, the pools and the fork server that its code started and
/// never stopped (a library's pool in a `static`, a pool a task built) are
/// stopped and their processes reaped: the process ends with `_exit`, which
/// runs no `atexit` handler, and their parent-death signal would leave them
/// as zombies for `init` (a program running as PID 1 that does not reap
/// piled them up: a user trial).
fn serve_role() -> Option<i32> {
    let code = std::panic::catch_unwind(|| {
        crate::process::child::enter().or_else(crate::pool::worker::enter)
    })
    .unwrap_or(Some(crate::pool::worker::EXIT_START_FAILED));
    if code.is_some() {
        // A panic in an owner's stop leaves the rest to the kernel's signal.
        let _ = std::panic::catch_unwind(crate::child::exit_hook::stop_all_owners);
    }
    code
}

/// Pins this child to the CPUs its parent named in
/// [`crate::child::spawn::CPUS_ENV`] (and removes the variable, so that
/// processes its tasks start are not pinned by it). No variable: nothing to
/// do.
fn pin_as_asked() -> Result<(), String> {
    let name = crate::child::spawn::CPUS_ENV;
    let Some(list) = std::env::var_os(name) else {
        return Ok(());
    };
    std::env::remove_var(name);
    let text = list.to_string_lossy();
    let cpus: Vec<usize> = text
        .split(',')
        .map(|cpu| cpu.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{name}={text} is not a list of CPU numbers"))?;
    sys::pin_self_to(&sys::CpuMask::of(&cpus))
        .map_err(|e| format!("pinning to CPUs {text} failed: {e}"))
}

/// Makes the linker keep [`ENTRY`]: called by everything that starts a
/// child, so that a program that can start one always recognises its
/// children. (The one reference from a lower layer up to this module.)
#[inline]
pub(crate) fn keep_linked() {
    std::hint::black_box(&ENTRY);
}

/// Does nothing; kept so that programs written for earlier versions still
/// compile. Calling it is harmless, anywhere, any number of times, and
/// leaving it out is never an error: examples that still call it do so out
/// of habit. ([`Error::NotInitialized`](crate::Error::NotInitialized) is
/// about something else: a process corepool started as a child whose
/// start-up hook did not run.)
///
/// Workers and `Process` children are recognised before `main` runs (by a
/// constructor that corepool links into every program that builds a pool or
/// starts a process), so no `main` ever runs in a child: not the program's,
/// not the test harness's. Pools work as they are in programs, examples,
/// integration tests, unit tests, doc tests and benchmarks, with the
/// standard test harness.
///
/// ```
/// corepool::init(); // still fine, and no longer needed
/// let pool = corepool::Pool::new(2)?;
/// assert_eq!(pool.apply(|x: u64| x + 1, 1)?, 2);
/// # Ok::<(), corepool::Error>(())
/// ```
#[inline]
pub fn init() {
    keep_linked();
}

#[cfg(test)]
mod tests {
    /// The library's own unit-test binary, under the standard harness: its
    /// workers are recognised before libtest's `main`.
    #[test]
    #[cfg_attr(miri, ignore = "Miri starts no processes")]
    fn a_pool_works_in_the_librarys_own_unit_tests() {
        let pool = crate::Pool::new(1).unwrap();
        assert_eq!(pool.apply(|x: u64| x * 3, 14).unwrap(), 42);
        crate::init(); // still harmless, in a parent
    }
}
