//! Pools and processes under the standard test harness (no `harness =
//! false`, no `main`, no `corepool::init()`): workers are this test binary
//! re-executed, and they must never run libtest's `main`.
//!
//! Besides the tests themselves, one test runs this very binary again,
//! filtered and with `--test-threads=1`, and counts what it printed: every
//! test ran once, libtest started once (no worker ran the suite again), and
//! nothing was left behind.

#[allow(unused_macros, unused_imports)] // its `tests!` is for harness-free files
mod common;

use corepool::{Error, Pool, Process};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, Output};

/// Set in a run of this binary started by a test here: its value marks
/// every process of that run (children inherit the environment), so that a
/// leaked one can be found.
const CHILD_RUN: &str = "COREPOOL_STD_HARNESS_RUN";

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn double(x: u64) -> u64 {
    x * 2
}

fn panics(n: u64) -> u64 {
    if n > 0 {
        panic!("deliberate panic for {n}");
    }
    n
}

fn panics_at_length(len: u64) -> u64 {
    panic!("{}", "y".repeat(len as usize));
}

/// After a test: in a run started by [`runs_filtered_and_single_threaded_each_test_once`]
/// (one test at a time) no child is left, live or zombie; anywhere, the
/// pids a pool had are gone.
fn check_no_leaks(pids: &[i32]) {
    for &pid in pids {
        common::eventually(&format!("worker {pid} reaped"), || reaped(pid));
    }
    if std::env::var_os(CHILD_RUN).is_some() {
        common::eventually("every child reaped", || {
            common::children_but_the_fork_server().is_empty()
        });
    }
}

/// Whether `pid` is no child of ours any more (reaped, not a zombie) and not
/// an orphan running this binary.
fn reaped(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let ppid: Option<u32> = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
    let ours = ppid == Some(std::process::id());
    let same_binary = std::fs::read_link(format!("/proc/{pid}/exe")).ok()
        == std::fs::read_link("/proc/self/exe").ok();
    !ours && !same_binary
}

#[test]
fn map_in_a_standard_harness_test() {
    let pool = Pool::new(2).unwrap();
    let squares = pool.map(square, 0..100u64).unwrap();
    assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    let pids = pool.pids();
    drop(pool);
    check_no_leaks(&pids);
}

#[test]
fn apply_and_starmap_in_a_standard_harness_test() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    assert_eq!(pool.starmap(add, vec![(1, 2), (3, 4)]).unwrap(), vec![3, 7]);
    let pids = pool.pids();
    drop(pool);
    check_no_leaks(&pids);
}

#[test]
fn a_process_in_a_standard_harness_test() {
    let p = Process::start(double, 21).unwrap();
    let pid = p.pid();
    assert_eq!(p.join().unwrap(), 42);
    check_no_leaks(&[pid]);
}

#[test]
fn two_pools_at_once_in_one_test() {
    let a = Pool::new(1).unwrap();
    let b = Pool::new(1).unwrap();
    assert_eq!(
        a.apply(square, 3).unwrap() + b.apply(square, 4).unwrap(),
        25
    );
    let mut pids = a.pids();
    pids.extend(b.pids());
    drop((a, b));
    check_no_leaks(&pids);
}

/// A `touch` of the running executable (a new mtime, as a rebuild's
/// atomic replacement of the file would also bring) changes nothing the
/// fingerprint looks at: pools built afterwards start and serve.
#[test]
fn touching_the_executable_trips_nothing() {
    let exe = std::env::current_exe().unwrap();
    let file = std::fs::File::open(&exe).unwrap();
    let before = file.metadata().unwrap().modified().unwrap();
    // One task per worker: every task after the touch starts a new worker,
    // whose fingerprint is compared with the one the pool wrote before it.
    let pool = Pool::builder()
        .workers(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    let later = before + std::time::Duration::from_secs(3600);
    file.set_modified(later).unwrap();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // Workers started after the touch, by a pool built before it...
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        // ...and a pool and a process built after it.
        let fresh = Pool::new(1).unwrap();
        assert_eq!(fresh.apply(square, 6).unwrap(), 36);
        assert_eq!(Process::start(double, 4).unwrap().join().unwrap(), 8);
        fresh.pids()
    }));
    file.set_modified(before).unwrap();
    let mut pids = outcome.unwrap();
    pids.extend(pool.pids());
    drop(pool);
    check_no_leaks(&pids);
}

/// A panicking task's error carries the child's backtrace when the parent's
/// environment has `RUST_BACKTRACE=1`. The variable is process-wide, so the
/// check runs in a run of this binary of its own.
#[test]
fn a_worker_panic_carries_a_backtrace_when_asked() {
    if std::env::var_os("RUST_BACKTRACE").is_none_or(|v| v == "0") {
        let out = run_self(
            &["a_worker_panic_carries_a_backtrace_when_asked", "--exact"],
            &[("RUST_BACKTRACE", "1")],
        );
        assert_passed(&out, 1);
        return;
    }
    let pool = Pool::new(1).unwrap();
    match pool.apply(panics, 7) {
        Err(Error::Panicked { message }) => {
            assert!(message.contains("deliberate panic for 7"), "{message}");
            assert!(message.contains("backtrace"), "{message}");
            assert!(message.contains("std_harness::panics"), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    let pids = pool.pids();
    drop(pool);
    check_no_leaks(&pids);
}

#[test]
fn without_rust_backtrace_a_panic_is_one_line() {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        let out = run_self(
            &["without_rust_backtrace_a_panic_is_one_line", "--exact"],
            &[("RUST_BACKTRACE", "0")],
        );
        assert_passed(&out, 1);
        return;
    }
    let pool = Pool::new(1).unwrap();
    match pool.apply(panics, 3) {
        Err(Error::Panicked { message }) => {
            assert!(
                message.starts_with("deliberate panic for 3 (at "),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    let pids = pool.pids();
    drop(pool);
    check_no_leaks(&pids);
}

/// A panic message longer than the result ring's room arrives cut, and says
/// so, in a pool and in a `Process`.
#[test]
fn a_cut_panic_message_says_it_was_cut() {
    let pool = Pool::builder()
        .workers(1)
        .ring_bytes(64 * 1024)
        .build()
        .unwrap();
    match pool.apply(panics_at_length, 1 << 20) {
        Err(Error::Panicked { message }) => {
            assert!(message.len() < 64 * 1024, "{}", message.len());
            assert!(message.starts_with("yyyy"));
            let marker = message.rfind("… [cut: ").expect("a cut marker");
            assert!(message.ends_with(" bytes more]"), "{}", &message[marker..]);
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    let p = Process::builder()
        .max_result_bytes(200)
        .start(panics_at_length, 10_000)
        .unwrap();
    let pid = p.pid();
    match p.join() {
        Err(Error::Panicked { message }) => {
            assert!(message.len() <= 200, "{}", message.len());
            assert!(message.ends_with(" bytes more]"), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    let mut pids = pool.pids();
    pids.push(pid);
    drop(pool);
    check_no_leaks(&pids);
}

/// A process started with a stray `COREPOOL_WORKER` is recognised before
/// libtest's `main` (it prints nothing of libtest's) and says on stderr why
/// it exits 101.
#[test]
fn a_stray_worker_variable_is_explained_before_main() {
    let out = common::output_within(
        Command::new(std::env::current_exe().unwrap()).env("COREPOOL_WORKER", "v1:3:0:1"),
        common::WATCHDOG,
    );
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(stdout.is_empty(), "libtest ran in a worker: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("COREPOOL_WORKER is set but"), "{stderr}");
    let malformed = common::output_within(
        Command::new(std::env::current_exe().unwrap()).env("COREPOOL_WORKER", "nonsense"),
        common::WATCHDOG,
    );
    let (stdout, stderr) = texts(&malformed);
    assert_eq!(malformed.status.code(), Some(101), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("malformed COREPOOL_WORKER"), "{stderr}");
    // A worker whose pool's program has ended (a replacement started as
    // the program exited) leaves without a word: nothing is wrong.
    let mut ended = Command::new("true").spawn().unwrap();
    let gone = ended.id();
    ended.wait().unwrap();
    let orphan = common::output_within(
        Command::new(std::env::current_exe().unwrap())
            .env("COREPOOL_WORKER", format!("v1:3:0:{gone}")),
        common::WATCHDOG,
    );
    let (stdout, stderr) = texts(&orphan);
    assert_eq!(orphan.status.code(), Some(101), "{stderr}");
    assert!(stdout.is_empty() && stderr.is_empty(), "{stdout} {stderr}");
}

/// This binary again, filtered to one test, then with `--test-threads=1`:
/// each test runs exactly once, libtest runs exactly once, and no process
/// of either run, nor a `/dev/shm` entry, outlives it.
#[test]
fn runs_filtered_and_single_threaded_each_test_once() {
    if std::env::var_os(CHILD_RUN).is_some() {
        return; // no recursion
    }
    let shm_before = common::shm_entries();

    let filtered = run_self(&["a_process_in_a_standard_harness_test"], &[]);
    assert_passed(&filtered, 1);
    let (stdout, _) = texts(&filtered);
    assert_eq!(
        count(&stdout, "test a_process_in_a_standard_harness_test ... ok"),
        1
    );

    let serial = run_self(&["--test-threads=1"], &[]);
    let (stdout, stderr) = texts(&serial);
    let ran: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.split_once(" ... ").map(|(n, _)| n))
        .collect();
    assert!(ran.len() >= 9, "{stdout}\n{stderr}");
    let mut unique = ran.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ran.len(), "a test ran twice: {stdout}");
    assert_passed(&serial, ran.len());

    let now = common::shm_entries();
    assert!(
        now.is_subset(&shm_before),
        "new /dev/shm entries: {:?}",
        now.difference(&shm_before).collect::<Vec<_>>()
    );
}

/// Runs this test binary with `args`, marked with [`CHILD_RUN`], and checks
/// that none of its processes outlives it.
fn run_self(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mark = format!("{}-{}", std::process::id(), unique());
    let out = common::output_within(
        Command::new(std::env::current_exe().unwrap())
            .args(args)
            .envs(env.iter().copied())
            .env(CHILD_RUN, &mark),
        common::WATCHDOG,
    );
    common::eventually("no process of the run outlives it", || {
        processes_marked(&mark).is_empty()
    });
    out
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Live processes whose environment carries `CHILD_RUN=mark`.
fn processes_marked(mark: &str) -> Vec<u32> {
    let needle = format!("{CHILD_RUN}={mark}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(Path::new("/proc").join(pid.to_string()).join("environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The run succeeded, libtest started exactly once (no worker ran the
/// suite), and `passed` tests passed.
fn assert_passed(out: &Output, passed: usize) {
    let (stdout, stderr) = texts(out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        count(&stdout, "\nrunning "),
        1,
        "libtest ran twice: {stdout}"
    );
    assert_eq!(count(&stdout, "test result: "), 1, "{stdout}");
    assert!(
        stdout.contains(&format!("test result: ok. {passed} passed; 0 failed")),
        "{stdout}\n{stderr}"
    );
}
