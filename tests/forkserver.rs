//! Pools whose workers are forked by the fork server
//! (`StartMethod::ForkServer`): they work, their workers are this process's
//! children and pinned, replacements come from the fork server too, a
//! worker starts with what an exec'd one would inherit from the program of
//! the moment (environment, working directory, umask, limits, signals,
//! scheduling, standard streams, descriptors), a dead or stopped fork
//! server costs a fallback or a restart (never a hang), and the program's
//! death takes the fork server and its workers with it (and its exit
//! reaps them itself).
//!
//! Each test stops the fork server at its end, so that the harness's checks
//! (no child, no process of this binary left) hold.

mod common;

use corepool::{Pinning, Pool, StartMethod};
use std::time::Duration;

/// Set in this process only after the fork server started: every worker
/// sees it, as an exec'd one would.
const LATE_VAR: &str = "COREPOOL_TEST_SET_AFTER_THE_FORK_SERVER";

/// Tells this test binary to act as the program whose death is tested.
const DOOMED_PARENT: &str = "COREPOOL_TEST_DOOMED_PARENT";
/// Set in a child run of this binary that sandboxes itself after its fork
/// server started (see [`sandboxed_parent`]).
const SANDBOXED_PARENT: &str = "COREPOOL_TEST_SANDBOXED_PARENT";
/// Set in a child run of this binary that changes its execution domain
/// after its fork server started (see [`personality_parent`]).
/// Set in the environment of the program that
/// `a_low_descriptor_limit_still_builds_fork_server_pools` starts.
const FEW_DESCRIPTORS_PARENT: &str = "COREPOOL_TEST_FEW_DESCRIPTORS_PARENT";

const PERSONALITY_PARENT: &str = "COREPOOL_TEST_PERSONALITY_PARENT";
/// Set in a child run of this binary that exits with a pool, a process and
/// its fork server alive (see [`exiting_parent`]).
const EXITING_PARENT: &str = "COREPOOL_TEST_EXITING_PARENT";
/// Set in a child run of this binary whose own exit handler drops a pool
/// (see [`dropping_parent`]).
const DROPPING_PARENT: &str = "COREPOOL_TEST_DROPPING_PARENT";

fn sees_late_var(_: ()) -> bool {
    std::env::var_os(LATE_VAR).is_some()
}

fn own_pid(_: ()) -> i32 {
    std::process::id() as i32
}

fn parent_pid(_: ()) -> u32 {
    std::os::unix::process::parent_id()
}

/// A worker's open descriptors, by number and the kind of file each names
/// (not the inode); the segment's number is the parent's, which differs
/// between pools, so it is listed without it.
fn open_descriptors(_: ()) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            match target.split([':', '[']).next().unwrap_or("") {
                "/memfd" => "the segment".to_string(),
                kind if kind.starts_with("/proc/") => "this listing".to_string(),
                kind => format!("{}->{kind}", e.file_name().to_string_lossy()),
            }
        })
        .collect();
    fds.sort();
    fds
}

/// Where the vDSO is mapped in process `pid` (`self`: the caller): chosen
/// at random at exec, so a child forked from the fork server has the fork
/// server's, and an exec'd one (almost surely) another.
fn vdso_of(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.ends_with("[vdso]"))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

fn own_vdso(_: ()) -> String {
    vdso_of("self")
}

/// Whether every worker of `pool` was forked from the fork server `zygote`.
fn all_forked_from(pool: &Pool, zygote: i32) -> bool {
    let theirs = vdso_of(&zygote.to_string());
    !theirs.is_empty()
        && pool
            .pids()
            .iter()
            .all(|pid| vdso_of(&pid.to_string()) == theirs)
}

/// Whether address-space randomisation is on (the vDSO test above tells
/// an exec'd worker from a forked one only then).
fn randomised() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/randomize_va_space").is_ok_and(|v| v.trim() != "0")
}

fn forked_pool(workers: usize, pinning: Pinning) -> Pool {
    Pool::builder()
        .workers(workers)
        .pinning(pinning)
        .start_method(StartMethod::ForkServer)
        .retries(3)
        .build()
        .expect("a fork-server pool builds")
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, signal) };
}

/// The parent pid `/proc` shows for `pid`.
fn ppid_of(pid: i32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit_once(')').unwrap().1;
    after_name
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Starts the fork server, as a first pool does, and waits until it is
/// ready: the pools built after this get their workers from it.
fn ready_fork_server() -> i32 {
    drop(forked_pool(1, Pinning::None));
    corepool::fork_server_pid().expect("the fork server starts")
}

/// Stops the fork server (a test's last step) and checks it is reaped.
fn stop(zygote: Option<i32>) {
    corepool::stop_fork_server();
    assert_eq!(corepool::fork_server_pid(), None);
    if let Some(zygote) = zygote {
        assert!(!common::children()
            .iter()
            .any(|&(pid, _)| pid as i32 == zygote));
    }
}

fn a_fork_server_pool_works_and_its_workers_are_ours_and_pinned() {
    // The first pool does not wait for the fork server it starts: it works
    // while the fork server is still starting (its workers exec'd meanwhile).
    let first = forked_pool(2, Pinning::PerCpu);
    let squares: Vec<u64> = (0..100).map(|x| x * x).collect();
    assert_eq!(first.map(|x: u64| x * x, 0..100u64).unwrap(), squares);
    for (pid, set) in first.pids().into_iter().zip(first.cpu_sets().to_vec()) {
        assert_eq!(ppid_of(pid), std::process::id(), "worker {pid}");
        assert_eq!(corepool::info::affinity_of(pid).unwrap(), set);
    }
    // Waits for the fork server's hello.
    let zygote = corepool::fork_server_pid().expect("the first pool started the fork server");
    assert_eq!(ppid_of(zygote), std::process::id());
    drop(first);
    let pool = forked_pool(2, Pinning::PerCpu);
    // The same fork server served the second pool.
    assert_eq!(corepool::fork_server_pid(), Some(zygote));
    assert!(all_forked_from(&pool, zygote));
    assert_eq!(pool.apply(|x: u64| x + 1, 41).unwrap(), 42);
    for (pid, set) in pool.pids().into_iter().zip(pool.cpu_sets().to_vec()) {
        // Our children, not the fork server's, and pinned where the pool says.
        assert_eq!(ppid_of(pid), std::process::id(), "worker {pid}");
        assert_eq!(corepool::info::affinity_of(pid).unwrap(), set);
    }
    assert_eq!(pool.apply(parent_pid, ()).unwrap(), std::process::id());
    let exec = Pool::builder()
        .workers(1)
        .start_method(StartMethod::Spawn)
        .build()
        .unwrap();
    if randomised() {
        assert_ne!(
            exec.apply(own_vdso, ()).unwrap(),
            vdso_of(&zygote.to_string())
        );
    }
    // A forked worker holds what an exec'd one holds: nothing of the fork
    // server's, and what this program has open without close-on-exec.
    let forked_fds = pool.apply(open_descriptors, ()).unwrap();
    let exec_fds = exec.apply(open_descriptors, ()).unwrap();
    assert_eq!(forked_fds, exec_fds);
    drop((pool, exec));
    stop(Some(zygote));
}

/// A program that changes its environment between two pools gets workers
/// that see the new one: the fork server (started with the old one, which
/// the dynamic loader, the C library and the program's libraries read at
/// start) is started again, the worker meanwhile exec'd, and the next pool
/// is forked from the new fork server.
fn a_changed_environment_starts_the_fork_server_again() {
    std::env::remove_var(LATE_VAR);
    let zygote = ready_fork_server();
    std::env::set_var(LATE_VAR, "1");
    let pool = forked_pool(1, Pinning::None);
    assert!(pool.apply(sees_late_var, ()).unwrap());
    drop(pool);
    let again = corepool::fork_server_pid().expect("started again");
    assert_ne!(again, zygote);
    let pool = forked_pool(2, Pinning::None);
    assert!(all_forked_from(&pool, again));
    assert!(pool.apply(sees_late_var, ()).unwrap());
    assert_eq!(corepool::fork_server_pid(), Some(again));
    drop(pool);
    std::env::remove_var(LATE_VAR);
    stop(Some(again));
}

fn an_unpinned_fork_server_pool_works() {
    let zygote = Some(ready_fork_server());
    let pool = forked_pool(2, Pinning::None);
    let sum: u64 = pool.map(|x: u64| x, 0..1000u64).unwrap().iter().sum();
    assert_eq!(sum, 499_500);
    drop(pool);
    stop(zygote);
}

fn a_killed_worker_is_replaced_through_the_fork_server() {
    let zygote = ready_fork_server();
    let pool = forked_pool(1, Pinning::PerCpu);
    let mut pid = pool.apply(own_pid, ()).unwrap();
    for _ in 0..3 {
        signal(pid, libc::SIGKILL);
        let replacement = pool.apply(own_pid, ()).unwrap();
        assert_ne!(replacement, pid);
        assert_eq!(ppid_of(replacement), std::process::id());
        // From the same fork server, not exec'd.
        assert!(all_forked_from(&pool, zygote));
        pid = replacement;
    }
    assert_eq!(corepool::fork_server_pid(), Some(zygote));
    assert!(pool.stats().respawns >= 3);
    drop(pool);
    stop(Some(zygote));
}

fn a_killed_fork_server_is_replaced() {
    let pool = forked_pool(1, Pinning::PerCpu);
    let zygote = corepool::fork_server_pid().expect("running");
    signal(zygote, libc::SIGKILL);
    // Reaped by the fork-server thread, not left a zombie.
    common::eventually("the killed fork server is reaped", || {
        !common::children()
            .iter()
            .any(|&(pid, _)| pid as i32 == zygote)
    });
    assert_eq!(corepool::fork_server_pid(), None);
    // A replacement worker: through a new fork server (or exec, had the
    // death been noticed only in the middle of the request).
    let pid = pool.apply(own_pid, ()).unwrap();
    signal(pid, libc::SIGKILL);
    assert_ne!(pool.apply(own_pid, ()).unwrap(), pid);
    let again = corepool::fork_server_pid().expect("started again on next use");
    assert_ne!(again, zygote);
    // A new pool uses it.
    let other = forked_pool(2, Pinning::PerCpu);
    assert_eq!(other.apply(|x: u32| x * 2, 21).unwrap(), 42);
    assert_eq!(corepool::fork_server_pid(), Some(again));
    drop((pool, other));
    stop(Some(again));
}

/// A fork server stopped while it is still starting (right after the
/// first pool's build, before its hello) is killed and reaped all the
/// same, and the next pool starts another.
fn a_fork_server_stopped_while_starting_is_reaped() {
    let pool = forked_pool(1, Pinning::PerCpu);
    let workers = pool.pids();
    corepool::stop_fork_server();
    assert_eq!(corepool::fork_server_pid(), None);
    // Only the pool's worker is left a child of ours.
    let children: Vec<i32> = common::children()
        .into_iter()
        .map(|(pid, _)| pid as i32)
        .collect();
    assert_eq!(children, workers);
    assert_eq!(pool.apply(|x: u8| x + 1, 1).unwrap(), 2);
    drop(pool);
    let again = ready_fork_server();
    assert_eq!(
        forked_pool(1, Pinning::None).apply(|x: u8| x, 3).unwrap(),
        3
    );
    stop(Some(again));
}

fn a_stopped_fork_server_makes_spawns_fall_back_not_hang() {
    let pool = forked_pool(1, Pinning::PerCpu);
    let zygote = corepool::fork_server_pid().expect("running");
    signal(zygote, libc::SIGSTOP);
    let pid = pool.apply(own_pid, ()).unwrap();
    signal(pid, libc::SIGKILL);
    // The request times out, the stopped fork server is killed, and the
    // worker is exec'd instead.
    let replacement = pool.apply(own_pid, ()).unwrap();
    assert_ne!(replacement, pid);
    common::eventually("the hung fork server is killed and reaped", || {
        !common::children()
            .iter()
            .any(|&(pid, _)| pid as i32 == zygote)
    });
    drop(pool);
    stop(None);
}

/// In a worker: what glibc's `fork` would have left right in the child,
/// redone by the fork server by hand. The thread id cached in the main
/// thread's descriptor is the worker's own (another thread signals the main
/// thread through it: `pthread_kill` with signal 0 only checks), and the
/// main thread has a robust-mutex list registered with the kernel.
fn glibc_state_is_the_childs_own(_: ()) -> (i32, i32, bool) {
    // SAFETY: pthread_self has no preconditions.
    let main = unsafe { libc::pthread_self() } as usize;
    let from_other_thread = std::thread::spawn(move || {
        // SAFETY: `main` is this process's main thread, alive: it is
        // joining this thread.
        unsafe { libc::pthread_kill(main as libc::pthread_t, 0) }
    })
    .join()
    .unwrap();
    let mut tid_address: *mut libc::c_int = std::ptr::null_mut();
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the location given.
    unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_address as *mut _) };
    // SAFETY: the kernel says glibc registered this address, in the main
    // thread's descriptor, alive; this is the main thread.
    let cached = unsafe { std::ptr::read_volatile(tid_address) };
    // SAFETY: gettid has no preconditions.
    let real = unsafe { libc::gettid() };
    let (mut head, mut len): (usize, usize) = (0, 0);
    // SAFETY: writes one pointer and one size to the locations given.
    unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &mut head, &mut len) };
    (from_other_thread, cached - real, head != 0 && len > 0)
}

fn a_forked_worker_has_glibcs_fork_bookkeeping_done() {
    let zygote = Some(ready_fork_server());
    let pool = forked_pool(1, Pinning::PerCpu);
    assert_eq!(corepool::fork_server_pid(), zygote);
    assert_eq!(
        pool.apply(glibc_state_is_the_childs_own, ()).unwrap(),
        (0, 0, true)
    );
    drop(pool);
    stop(zygote);
}

fn workers_outlive_the_thread_and_pool_that_started_the_fork_server() {
    // The fork server started by a pool built on a short-lived thread; that
    // pool (and its supervisor thread) gone before the next is built.
    let first = std::thread::spawn(|| forked_pool(1, Pinning::PerCpu))
        .join()
        .unwrap();
    let zygote = corepool::fork_server_pid().expect("running");
    let pool = forked_pool(2, Pinning::PerCpu);
    drop(first);
    std::thread::spawn(|| ()).join().unwrap();
    let pids = pool.pids();
    // Every worker alive and serving: no parent-death signal fired.
    for _ in 0..pids.len() * 4 {
        assert!(pids.contains(&pool.apply(own_pid, ()).unwrap()));
    }
    assert_eq!(pool.stats().respawns, 0);
    // A replacement still comes from the same fork server.
    signal(pids[0], libc::SIGKILL);
    common::eventually("the killed worker is replaced", || {
        let now = pool.pids();
        now.len() == pids.len() && !now.contains(&pids[0])
    });
    assert_eq!(pool.map(|x: u32| x + 1, 0..10u32).unwrap().len(), 10);
    assert_eq!(corepool::fork_server_pid(), Some(zygote));
    drop(pool);
    stop(Some(zygote));
}

/// As a program of its own (this binary, with [`DOOMED_PARENT`]): a
/// fork-server pool, its fork server's and workers' pids on stdout, then
/// death by SIGKILL.
fn doomed_parent() -> ! {
    let zygote = ready_fork_server();
    let pool = forked_pool(2, Pinning::PerCpu);
    let mut pids = pool.pids();
    pids.push(zygote);
    assert_eq!(pool.apply(|x: u8| x, 7).unwrap(), 7);
    println!(
        "{}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    signal(std::process::id() as i32, libc::SIGKILL);
    unreachable!("SIGKILL sent to ourselves");
}

fn the_programs_death_takes_the_fork_server_and_workers_with_it() {
    let output = common::run_self_as(DOOMED_PARENT, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&output.stdout);
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(
        pids.len(),
        3,
        "stdout: {text}; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for pid in pids {
        common::eventually("the fork server and workers die with their program", || {
            common::is_gone(pid)
        });
    }
}

/// A pool nobody drops: what a library keeping one in a `static` has.
static KEPT_POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();

fn wait_for_ever(_: ()) {
    loop {
        std::thread::park();
    }
}

/// As a program of its own (this binary, with [`EXITING_PARENT`]): a pool
/// kept in a `static`, a running `Process` and the fork server, their pids on
/// stdout, then `std::process::exit` with all of them alive. (The first
/// argument says how: `exit` or a return from `main`.)
fn exiting_parent() -> ! {
    let zygote = ready_fork_server();
    let pool = KEPT_POOL.get_or_init(|| forked_pool(2, Pinning::None));
    assert_eq!(pool.apply(|x: u8| x, 7).unwrap(), 7);
    let process = corepool::Process::builder()
        .start(wait_for_ever, ())
        .unwrap();
    let mut pids = pool.pids();
    pids.push(zygote);
    pids.push(process.pid());
    std::mem::forget(process);
    println!(
        "{}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

/// A pool that a C exit handler of the program's own drops, after
/// corepool's exit hook stopped its workers.
static DROPPED_AT_EXIT: std::sync::Mutex<Option<Pool>> = std::sync::Mutex::new(None);

extern "C" fn drop_the_pool_at_exit() {
    // What a C++ static destructor or a library's own `atexit` would do.
    let pool = DROPPED_AT_EXIT.lock().ok().and_then(|mut p| p.take());
    drop(pool);
    println!("dropped");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// As a program of its own (this binary, with [`DROPPING_PARENT`]): an exit
/// handler registered before any pool (so run after corepool's hook, which
/// stops the pool's workers), which drops a pool.
fn dropping_parent() -> ! {
    // SAFETY: registers a plain `extern "C" fn()` that lives for the program.
    assert_eq!(unsafe { libc::atexit(drop_the_pool_at_exit) }, 0);
    let pool = forked_pool(2, Pinning::None);
    assert_eq!(pool.apply(|x: u8| x, 7).unwrap(), 7);
    *DROPPED_AT_EXIT.lock().unwrap() = Some(pool);
    std::process::exit(0);
}

/// A pool dropped by the program's own exit handler, after corepool's hook
/// had stopped its workers, waited for ever for the replacements it asked
/// for (the supervisor had ended); and the drop, run after glibc destroyed
/// the thread's locals, aborted on a thread-local access (a review).
fn a_pool_dropped_after_the_exit_hook_ends() {
    let output = common::run_self_as(DROPPING_PARENT, Duration::from_secs(60));
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("dropped"),
        "{:?}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether `pid` is a child of this process (a zombie included), without
/// reaping it.
fn is_my_child(pid: i32) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on one pid, WNOWAIT: nothing is reaped; `info` is ours.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == 0
}

fn a_program_that_exits_with_children_alive_reaps_them_itself() {
    // Orphans are reparented to us (a subreaper), as they would be to
    // `init`: any child the program left to the parent-death signal shows
    // up as ours once it ended.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let output = common::run_self_as(EXITING_PARENT, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&output.stdout);
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    let adopted: Vec<i32> = pids.iter().copied().filter(|&p| is_my_child(p)).collect();
    for &pid in &adopted {
        // Reap what the program left us, so the harness's checks hold.
        // SAFETY: waitpid on a specific pid with a null status pointer.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
    assert_eq!(
        pids.len(),
        4,
        "stdout: {text}; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{:?}", output.status);
    assert!(
        adopted.is_empty(),
        "left to be reaped by the subreaper: {adopted:?} of {pids:?}"
    );
}

/// `no_new_privs` of the calling process's thread, as `/proc` shows it.
fn no_new_privs(_: ()) -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// As a program of its own (this binary, with [`SANDBOXED_PARENT`]): starts
/// the fork server, then sets `no_new_privs` (a sandbox's first step, which
/// no thread can undo), then builds a fork-server pool and prints what its
/// worker has, and whether a fork server still runs.
fn sandboxed_parent() -> ! {
    ready_fork_server();
    // SAFETY: a prctl with integer arguments, on this thread only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_NO_NEW_PRIVS");
    let pool = forked_pool(1, Pinning::None);
    let worker = pool.apply(no_new_privs, ()).unwrap();
    drop(pool);
    println!("{worker} {:?}", corepool::fork_server_pid());
    std::process::exit(0);
}

/// A program that sandboxes itself after its fork server started gets
/// sandboxed workers: its fork server (started unsandboxed) is retired and
/// workers are exec'd from then on (found in review: forked workers kept
/// the fork server's older credentials, capabilities and `no_new_privs`).
fn a_program_that_sandboxes_itself_gets_sandboxed_workers() {
    let output = common::run_self_as(SANDBOXED_PARENT, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        text.trim(),
        "1 None",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A descriptor the program holds without close-on-exec when the fork
/// server starts (a pipe made by `libc::pipe`, say) is not kept open by the
/// fork server for the program's life: once the program closes its write
/// end, and no worker holds it, the reader sees end-of-file (found in
/// review: it never did). Workers forked while it is open get it, under its
/// number, as exec'd ones would.
fn a_descriptor_open_when_the_fork_server_starts_is_not_kept_by_it() {
    let mut ends = [0; 2];
    // SAFETY: pipe writes two new descriptors into `ends`, ours.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let zygote = ready_fork_server();
    let pool = forked_pool(1, Pinning::None);
    assert!(all_forked_from(&pool, zygote));
    let write_end = ends[1];
    let theirs = pool
        .apply(
            |fd: i32| {
                std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            },
            write_end,
        )
        .unwrap();
    let ours = std::fs::read_link(format!("/proc/self/fd/{write_end}")).unwrap();
    assert_eq!(theirs, ours.to_string_lossy());
    drop(pool);
    // SAFETY: the write end is ours; closed once.
    unsafe { libc::close(ends[1]) };
    let mut byte = [0u8; 1];
    // With every write end closed, read returns 0 at once; a write end
    // still open somewhere would block it, so a watchdog-bounded child
    // would be needed: the poll below says it without blocking.
    let mut poll = libc::pollfd {
        fd: ends[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd of ours, a bounded wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
    assert_eq!(ready, 1, "the pipe's write end is still open somewhere");
    // SAFETY: reads into our buffer from our read end, which poll said is
    // readable (end-of-file).
    let n = unsafe { libc::read(ends[0], byte.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 0, "end-of-file");
    // SAFETY: the read end is ours; closed once.
    unsafe { libc::close(ends[0]) };
    stop(Some(zygote));
}

/// What a worker inherited, as it sees it: working directory, umask (from
/// `/proc`), the core and CPU-time limits, ignored and blocked signals,
/// nice value, timer slack, and where its standard output goes.
#[derive(Debug, PartialEq, Eq, Clone, corepool::Wire)]
struct Inherited {
    cwd: String,
    umask: String,
    core_limit: u64,
    cpu_limit: u64,
    stack_limit: u64,
    ignored: String,
    blocked: String,
    nice: i32,
    timer_slack: i64,
    stdout: String,
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn soft_limit(resource: libc::__rlimit_resource_t) -> u64 {
    // SAFETY: writes one rlimit to our stack.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(resource, &mut limit);
        limit.rlim_cur
    }
}

fn set_soft_limit(resource: libc::__rlimit_resource_t, soft: u64) {
    // SAFETY: reads and writes one rlimit on our stack.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(resource, &mut limit);
        limit.rlim_cur = soft;
        assert_eq!(libc::setrlimit(resource, &limit), 0, "setrlimit");
    }
}

fn what_i_inherited(_: ()) -> Inherited {
    Inherited {
        cwd: std::env::current_dir()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        umask: status_field("Umask"),
        core_limit: soft_limit(libc::RLIMIT_CORE),
        cpu_limit: soft_limit(libc::RLIMIT_CPU),
        stack_limit: soft_limit(libc::RLIMIT_STACK),
        ignored: status_field("SigIgn"),
        blocked: status_field("SigBlk"),
        // SAFETY: reads the calling thread's nice value.
        nice: unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) },
        // SAFETY: reads the calling thread's timer slack.
        timer_slack: i64::from(unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) }),
        stdout: std::fs::read_link("/proc/self/fd/1")
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    }
}

/// A worker forked after the program changed its working directory, umask,
/// resource limits, ignored signals, standard output, and (on the thread
/// that builds the pool) its nice value, timer slack and signal mask, has
/// the new ones, as an exec'd worker does: from the same fork server, not
/// by an exec (Python's `forkserver` gives the old ones).
fn a_forked_worker_inherits_what_the_program_has_now() {
    let zygote = ready_fork_server();
    let dir = std::env::temp_dir().join(format!("corepool-forkserver-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("stdout");
    let out_file = std::fs::File::create(&out).unwrap();
    let home = std::env::current_dir().unwrap();
    let (core, cpu) = (soft_limit(libc::RLIMIT_CORE), soft_limit(libc::RLIMIT_CPU));
    std::env::set_current_dir(&dir).unwrap();
    // SAFETY: plain system calls on this process's own state, each undone
    // below: umask, a limit, a disposition, standard output.
    let (old_umask, saved_stdout) = unsafe {
        let old = libc::umask(0o063);
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
        let saved = libc::dup(1);
        use std::os::fd::AsRawFd;
        libc::dup2(out_file.as_raw_fd(), 1);
        (old, saved)
    };
    set_soft_limit(libc::RLIMIT_CORE, 4096);
    set_soft_limit(libc::RLIMIT_CPU, 1_000_000);
    let (from_pool, exec) = std::thread::spawn(move || {
        // This thread's own: nice, timer slack and signal mask, which the
        // pool's supervisor thread (and so each worker) inherits.
        // SAFETY: per-thread settings of this short-lived thread only.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 3);
            libc::prctl(libc::PR_SET_TIMERSLACK, 123_456, 0, 0, 0);
            let mut blocked: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut blocked);
            libc::sigaddset(&mut blocked, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
        }
        let pool = forked_pool(1, Pinning::None);
        let forked = pool.apply(what_i_inherited, ()).unwrap();
        let all_forked = all_forked_from(&pool, zygote);
        drop(pool);
        let exec = Pool::builder()
            .workers(1)
            .start_method(StartMethod::Spawn)
            .build()
            .unwrap()
            .apply(what_i_inherited, ())
            .unwrap();
        ((forked, all_forked), exec)
    })
    .join()
    .unwrap();
    // SAFETY: undoes the changes above.
    unsafe {
        libc::dup2(saved_stdout, 1);
        libc::close(saved_stdout);
        libc::umask(old_umask);
        libc::signal(libc::SIGUSR2, libc::SIG_DFL);
    }
    set_soft_limit(libc::RLIMIT_CORE, core);
    set_soft_limit(libc::RLIMIT_CPU, cpu);
    std::env::set_current_dir(&home).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (forked, all_forked) = from_pool;
    assert!(all_forked, "the worker was exec'd");
    assert_eq!(forked, exec);
    assert_eq!(forked.cwd, dir.to_string_lossy());
    assert_eq!(forked.umask, "0063");
    assert_eq!((forked.core_limit, forked.cpu_limit), (4096, 1_000_000));
    let sigusr2 = 1u64 << (libc::SIGUSR2 - 1);
    assert_ne!(
        u64::from_str_radix(&forked.ignored, 16).unwrap() & sigusr2,
        0
    );
    // An exec'd worker starts with no signal blocked.
    assert_eq!(u64::from_str_radix(&forked.blocked, 16).unwrap(), 0);
    assert_eq!((forked.nice, forked.timer_slack), (3, 123_456));
    assert_eq!(forked.stdout, out.to_string_lossy());
    assert_eq!(corepool::fork_server_pid(), Some(zygote));
    stop(Some(zygote));
}

/// The stack's limit is read at exec (the room for a process's main stack):
/// a program that changes it between two pools gets its fork server started
/// again, so that workers have the new one.
fn a_changed_stack_limit_starts_the_fork_server_again() {
    let zygote = ready_fork_server();
    let stack = soft_limit(libc::RLIMIT_STACK);
    let wanted = if stack == 16 << 20 {
        32 << 20
    } else {
        16 << 20
    };
    set_soft_limit(libc::RLIMIT_STACK, wanted);
    drop(forked_pool(1, Pinning::None));
    let again = corepool::fork_server_pid().expect("started again");
    let pool = forked_pool(1, Pinning::None);
    let seen = pool.apply(what_i_inherited, ()).unwrap().stack_limit;
    let forked = all_forked_from(&pool, again);
    drop(pool);
    set_soft_limit(libc::RLIMIT_STACK, stack);
    assert_ne!(again, zygote);
    assert!(forked);
    assert_eq!(seen, wanted);
    stop(None);
}

/// As a program of its own (this binary, with [`PERSONALITY_PARENT`]):
/// starts the fork server, then changes its execution domain (which the
/// kernel applies at exec: a forked worker cannot be given it), then builds
/// a fork-server pool and prints its worker's domain, and whether a fork
/// server still runs.
fn personality_parent() -> ! {
    ready_fork_server();
    // SAFETY: sets this thread's execution domain; no memory involved.
    unsafe { libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) };
    let pool = forked_pool(1, Pinning::None);
    // SAFETY: 0xffffffff only reads the execution domain.
    let worker = pool
        .apply(|_: ()| unsafe { libc::personality(0xffff_ffff) }, ())
        .unwrap();
    drop(pool);
    println!("{worker:x} {:?}", corepool::fork_server_pid());
    std::process::exit(0);
}

/// A program that changes what a forked worker cannot be given (its
/// execution domain here; its namespaces, control groups, root directory,
/// security bits or seccomp filters alike) gets exec'd workers from then
/// on, with the new one.
fn a_changed_execution_domain_makes_workers_execd() {
    let output = common::run_self_as(PERSONALITY_PARENT, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        text.trim(),
        format!("{:x} None", libc::ADDR_NO_RANDOMIZE),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A stray or forged fork-server variable never makes this binary a fork
/// server: a malformed one is said on stderr, one naming another parent is
/// a quiet exit; both with the start-failure status, before `main`.
fn a_stray_fork_server_variable_is_refused() {
    let exe = std::env::current_exe().unwrap();
    for (value, says) in [("junk", true), ("v1:0:1", false)] {
        let mut command = std::process::Command::new(&exe);
        command.env("COREPOOL_FORKSERVER", value);
        let output = common::output_within(&mut command, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(101), "{value}: {stderr}");
        assert_eq!(
            stderr.contains("is not a fork server"),
            says,
            "{value}: {stderr}"
        );
        // No test ran: the entry left before `main`.
        assert!(output.stdout.is_empty(), "{value}");
    }
}

/// The program of `a_low_descriptor_limit_still_builds_fork_server_pools`,
/// started under a low descriptor limit: three fork-server pools, a map on
/// each.
fn few_descriptors_parent() -> ! {
    let pools: Vec<Pool> = (0..3).map(|_| forked_pool(2, Pinning::None)).collect();
    for pool in &pools {
        assert_eq!(pool.map(|x: u64| x + 1, 0..100u64).unwrap().len(), 100);
    }
    drop(pools);
    println!("ok");
    std::process::exit(0);
}

/// Under a low descriptor limit (`ulimit -n 64`, or anything up to a few
/// hundred) a forked child could not move its report socket above the
/// descriptors it places and died in silence: every pool build failed with
/// a message about the process limit. Such a child now says why and the
/// parent execs it instead.
fn a_low_descriptor_limit_still_builds_fork_server_pools() {
    let exe = std::env::current_exe().unwrap();
    let mut command = std::process::Command::new("bash");
    command
        .args(["-c", "ulimit -n 64 && exec \"$0\""])
        .arg(exe)
        .env(FEW_DESCRIPTORS_PARENT, "1");
    let output = common::output_within(&mut command, Duration::from_secs(60));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ok",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn main() {
    if std::env::var_os(FEW_DESCRIPTORS_PARENT).is_some() {
        few_descriptors_parent();
    }
    if std::env::var_os(DOOMED_PARENT).is_some() {
        doomed_parent();
    }
    if std::env::var_os(EXITING_PARENT).is_some() {
        exiting_parent();
    }
    if std::env::var_os(DROPPING_PARENT).is_some() {
        dropping_parent();
    }
    if std::env::var_os(SANDBOXED_PARENT).is_some() {
        sandboxed_parent();
    }
    if std::env::var_os(PERSONALITY_PARENT).is_some() {
        personality_parent();
    }
    // The fork-server thread lives as long as the program, with its wake-up
    // descriptor: started before the harness takes its baseline.
    drop(forked_pool(1, Pinning::None));
    corepool::stop_fork_server();
    common::run(common::tests![
        a_fork_server_pool_works_and_its_workers_are_ours_and_pinned,
        a_changed_environment_starts_the_fork_server_again,
        a_forked_worker_inherits_what_the_program_has_now,
        a_changed_stack_limit_starts_the_fork_server_again,
        a_changed_execution_domain_makes_workers_execd,
        a_low_descriptor_limit_still_builds_fork_server_pools,
        an_unpinned_fork_server_pool_works,
        a_killed_worker_is_replaced_through_the_fork_server,
        a_forked_worker_has_glibcs_fork_bookkeeping_done,
        workers_outlive_the_thread_and_pool_that_started_the_fork_server,
        a_killed_fork_server_is_replaced,
        a_fork_server_stopped_while_starting_is_reaped,
        a_stopped_fork_server_makes_spawns_fall_back_not_hang,
        the_programs_death_takes_the_fork_server_and_workers_with_it,
        a_program_that_exits_with_children_alive_reaps_them_itself,
        a_pool_dropped_after_the_exit_hook_ends,
        a_stray_fork_server_variable_is_refused,
        a_program_that_sandboxes_itself_gets_sandboxed_workers,
        a_descriptor_open_when_the_fork_server_starts_is_not_kept_by_it,
    ]);
}
