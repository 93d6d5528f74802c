//! `Process`: every method, deaths, daemons, and no zombie or orphan after.
//! Runs with its own `main`.

mod common;

use corepool::{Error, ExitCause, Pinning, Pool, Process};
use std::time::Duration;

fn double(x: u64) -> u64 {
    x * 2
}

fn spin_forever(_: u64) -> u64 {
    loop {
        std::hint::spin_loop();
    }
}

fn busy_ms(ms: u64) -> u64 {
    let end = std::time::Instant::now() + Duration::from_millis(ms);
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
    ms
}

fn start_join_returns_the_result() {
    let p = Process::builder()
        .name("doubler")
        .start(double, 21)
        .unwrap();
    assert_eq!(p.name(), "doubler");
    assert!(p.pid() > 0);
    assert!(!p.is_daemon());
    assert_eq!(p.join().unwrap(), 42);
    let s = Process::start(
        |v: Vec<String>| v.concat(),
        vec!["a".to_string(), "b".to_string()],
    )
    .unwrap();
    assert_eq!(s.join().unwrap(), "ab");
}

fn exit_codes_and_signals() {
    let p = Process::start(double, 1).unwrap();
    assert!(
        p.join_timeout(Duration::MAX),
        "no deadline, and no overflow panic"
    );
    assert_eq!(p.exit_code(), Some(ExitCause::Code(0)));
    assert!(!p.is_alive());

    let panics = Process::start(|_: u64| -> u64 { panic!("boom") }, 0).unwrap();
    assert!(panics.join_timeout(Duration::from_secs(30)));
    assert_eq!(
        panics.exit_code(),
        Some(ExitCause::Code(1)),
        "like Python's exitcode 1"
    );
    assert!(matches!(panics.join(), Err(Error::Panicked { message }) if message.contains("boom")));

    let killed = Process::start(spin_forever, 0).unwrap();
    assert!(killed.is_alive());
    assert!(!killed.join_timeout(Duration::from_millis(1)));
    killed.kill().unwrap();
    assert!(killed.join_timeout(Duration::from_secs(30)));
    assert_eq!(killed.exit_code(), Some(ExitCause::Signal(libc::SIGKILL)));
    assert!(matches!(
        killed.join(),
        Err(Error::WorkerDied {
            cause: ExitCause::Signal(9),
            ..
        })
    ));

    let terminated = Process::start(spin_forever, 0).unwrap();
    terminated.terminate().unwrap();
    assert!(terminated.join_timeout(Duration::from_secs(30)));
    assert_eq!(
        terminated.exit_code(),
        Some(ExitCause::Signal(libc::SIGTERM))
    );

    let quits = Process::start(|_: u64| -> u64 { std::process::exit(0) }, 0).unwrap();
    assert!(
        matches!(
            quits.join(),
            Err(Error::WorkerDied {
                cause: ExitCause::Code(0),
                ..
            })
        ),
        "exit(0) without a result is not a success"
    );
}

fn a_daemon_dies_with_its_handle_a_normal_process_does_not() {
    let daemon = Process::builder()
        .daemon(true)
        .start(spin_forever, 0)
        .unwrap();
    let daemon_pid = daemon.pid();
    drop(daemon);
    common::eventually("the daemon was killed and reaped", || {
        !std::path::Path::new(&format!("/proc/{daemon_pid}")).exists()
    });

    let normal = Process::builder().start(busy_ms, 100).unwrap();
    let pid = normal.pid();
    drop(normal);
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "still running after its handle is gone"
    );
    // It finishes on its own and is reaped without anyone joining: no zombie
    // (the harness checks for children after the test).
    common::eventually("reaped without a join", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
}

fn pinned_processes_run_where_asked() {
    let cpu = *corepool::info::allowed_cpus().unwrap().last().unwrap();
    let p = Process::builder()
        .cpu(cpu)
        .start(|_: u64| corepool::info::allowed_cpus().unwrap(), 0)
        .unwrap();
    assert_eq!(p.join().unwrap(), vec![cpu]);
    let bad = Process::builder().cpu(100_000).start(double, 1);
    assert!(matches!(bad, Err(Error::CpuNotAllowed { .. })));
}

fn oversized_results_spill() {
    // A result larger than the room used to be `ResultTooLarge`; it now
    // travels in a spill the child holds until the parent read it.
    let p = Process::builder()
        .max_result_bytes(4096)
        .start(|n: u64| vec![0u8; n as usize], 10_000)
        .unwrap();
    assert_eq!(p.join().unwrap(), vec![0u8; 10_000]);
}

/// Pool workers and processes are children of one program, each under its
/// own supervisor thread: each reaps only its own children (a worker's death
/// must not take a process's exit, nor the other way round), and once both
/// are done no child is left, zombie or not.
fn a_pool_and_processes_reap_only_their_own() {
    let pool = Pool::builder()
        .workers(2)
        .pinning(Pinning::None)
        .build()
        .unwrap();
    let spinning = Process::start(spin_forever, 0).unwrap();
    let unjoined = Process::start(double, 1).unwrap();
    let unjoined_pid = unjoined.pid();
    drop(unjoined); // finishes on its own; nobody joins it
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
    common::eventually("both workers run", || pool.pids().len() == 2);

    // A worker dies and is restarted: the process is untouched.
    let before = pool.pids();
    // SAFETY: kill with a pid of our own worker, which is running.
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    common::eventually("the worker was replaced", || {
        let now = pool.pids();
        now.len() == 2 && !now.contains(&before[0])
    });
    assert_eq!(pool.apply(double, 5).unwrap(), 10);
    assert!(spinning.is_alive(), "a worker's death reaped a process");

    // The process's end is the process thread's to record, however many
    // workers come and go.
    spinning.kill().unwrap();
    assert!(spinning.join_timeout(Duration::from_secs(30)));
    assert_eq!(spinning.exit_code(), Some(ExitCause::Signal(libc::SIGKILL)));
    assert_eq!(pool.apply(double, 6).unwrap(), 12);
    common::eventually("the unjoined process was reaped", || {
        !std::path::Path::new(&format!("/proc/{unjoined_pid}")).exists()
    });

    drop(pool);
    common::eventually("no children but the program's fork server", || {
        common::children_but_the_fork_server().is_empty()
    });
}

/// A child's task that uses a pool kept in a `static`, as a library's
/// global pool is (never dropped), and reports the processes it started:
/// the pool's workers and the child's own fork server.
fn uses_a_pool_in_a_static(n: u64) -> Vec<i32> {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| Pool::new(2).expect("a pool in the child"));
    assert_eq!(pool.apply(double, n).unwrap(), 2 * n);
    let mut started = pool.pids();
    started.extend(corepool::fork_server_pid());
    started
}

/// Whether `pid` is gone for good (not even a zombie): `kill(pid, 0)` fails
/// with ESRCH.
fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 checks existence only; nothing is sent.
    unsafe { libc::kill(pid, 0) == -1 && *libc::__errno_location() == libc::ESRCH }
}

/// A `Process` child ends with `_exit`, which runs no `atexit` handler:
/// the pools and the fork server its code started were left to their
/// parent-death signal, zombies for `init` (a program running as PID 1 that
/// does not reap piled them up: a user trial). The child now stops and
/// reaps them itself at the end of its role: by the time `join` returns
/// they are gone.
fn a_process_childs_own_pools_are_reaped_before_it_ends() {
    let child = Process::start(uses_a_pool_in_a_static, 21).unwrap();
    let started = child.join().unwrap();
    assert_eq!(
        started.len(),
        3,
        "two workers and a fork server: {started:?}"
    );
    let left: Vec<i32> = started.into_iter().filter(|&pid| !gone(pid)).collect();
    assert!(left.is_empty(), "left for init: {left:?}");
}

/// Set in the environment of the program that
/// `a_panicking_process_says_so_on_stderr` starts.
const UNJOINED_PANIC: &str = "COREPOOL_TEST_UNJOINED_PANIC";

fn panics_with_a_message(_: u64) -> u64 {
    panic!("the lost diagnostic");
}

/// A `Process` whose function panics prints the message on its stderr, as a
/// panicking thread does and as Python prints a failing process's
/// traceback: a child that nobody joins failed unseen (a user trial).
fn a_panicking_process_says_so_on_stderr() {
    let out = common::output_within(
        std::process::Command::new(std::env::current_exe().unwrap()).env(UNJOINED_PANIC, "1"),
        common::WATCHDOG,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("panicked: the lost diagnostic"),
        "stderr: {stderr}"
    );
}

/// Set in the environment of the program that
/// `a_panicking_process_with_a_broken_stderr_still_reports_its_panic`
/// starts.
const BROKEN_STDERR: &str = "COREPOOL_TEST_BROKEN_STDERR";

/// That program: its stderr a pipe nobody reads (closed: EPIPE), it joins a
/// panicking `Process` and exits 0 if `join` said `Panicked`, 1 otherwise.
fn join_a_panic_with_a_broken_stderr() -> ! {
    corepool::init();
    let mut ends = [0; 2];
    // SAFETY: plain descriptor calls on numbers this program owns; after
    // them its stderr (2) is the write end of a pipe whose read end is
    // closed.
    unsafe {
        assert_eq!(libc::pipe(ends.as_mut_ptr()), 0);
        libc::close(ends[0]);
        libc::dup2(ends[1], 2);
        libc::close(ends[1]);
    }
    let joined = Process::start(panics_with_a_message, 0).unwrap().join();
    std::process::exit(i32::from(!matches!(joined, Err(Error::Panicked { .. }))));
}

/// The message printed for a panicking `Process` must not cost its outcome:
/// printed with `eprintln!`, it panicked on a closed stderr (EPIPE; a full
/// disk gives ENOSPC) before the outcome was written, and `join` said
/// `WorkerDied` (found by review).
fn a_panicking_process_with_a_broken_stderr_still_reports_its_panic() {
    let out = common::output_within(
        std::process::Command::new(std::env::current_exe().unwrap()).env(BROKEN_STDERR, "1"),
        common::WATCHDOG,
    );
    assert!(
        out.status.success(),
        "join did not say Panicked: {:?}",
        out.status
    );
}

const ROLE: &str = "COREPOOL_TEST_ROLE";

fn processes_die_with_a_sigkilled_parent() {
    use std::io::BufRead;
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "doomed-parent")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: i32 = line.trim().parse().unwrap();
    parent.kill().unwrap();
    parent.wait().unwrap();
    common::eventually("the process died with its parent", || {
        common::is_gone(child)
    });
    // SAFETY: reparented to us (subreaper): reap it.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
}

/// A program that ignores SIGCHLD (servers do; it is also inherited): the
/// kernel then discards every child's exit status, so nobody can learn how
/// a child ended. A `Process` that returned still gives its result, and
/// a death is reported as `ExitCause::Unknown` with advice, where both used
/// to be "killed by SIGKILL" with a hint at the OOM killer (user trial).
fn children_of_a_program_that_ignores_sigchld() {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the default disposition of SIGCHLD.
            unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
        }
    }
    // SAFETY: sets the disposition of SIGCHLD; restored on every exit of
    // this function, a failed assertion's unwinding included.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let _restore = Restore;
    let p = Process::start(double, 21).unwrap();
    assert_eq!(p.join().unwrap(), 42);
    let pool = Pool::new(1).unwrap();
    let exits = pool
        .apply_async(|code: i32| -> u64 { std::process::exit(code) }, 3)
        .unwrap();
    match exits.get() {
        Err(Error::WorkerDied { cause, .. }) => {
            assert_eq!(cause, ExitCause::Unknown);
            assert!(cause.to_string().contains("SIGCHLD"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.apply(double, 4).unwrap(), 8, "the worker was replaced");
}

/// Set for the program of `a_daemon_that_cannot_start_leaves_no_pid_file`.
const FAILING_DAEMON: &str = "COREPOOL_TEST_FAILING_DAEMON";

/// Single-threaded (nothing has started a thread yet): a daemon start that
/// fails on its log file. Prints whether it failed and whether the pid
/// file exists afterwards.
fn failing_daemon(pid_file: std::ffi::OsString) -> ! {
    let started = corepool::Daemon::new()
        .pid_file(&pid_file)
        .log_file("/nonexistent-dir/corepool-test.log")
        .start();
    println!(
        "{} {}",
        started.is_err(),
        std::path::Path::new(&pid_file).exists()
    );
    std::process::exit(0);
}

/// A daemon start that fails (here: its log file cannot be opened) leaves
/// no pid file it created behind (a user trial found an empty one).
fn a_daemon_that_cannot_start_leaves_no_pid_file() {
    let pid_file = std::env::temp_dir().join(format!(
        "corepool-failing-daemon-{}.pid",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&pid_file);
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.env(FAILING_DAEMON, &pid_file);
    let output = common::output_within(&mut command, Duration::from_secs(60));
    let existed = pid_file.exists();
    let _ = std::fs::remove_file(&pid_file);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "true false",
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!existed);
}

/// A `Process` child that starts after the program that started it ended
/// (`main` returned right after `Process::start`) used to print that its
/// environment variable was set by mistake and should be unset. It now
/// leaves quietly; a process whose named parent lives but is not its parent
/// still says why it refuses.
fn a_process_child_whose_program_ended_leaves_quietly() {
    let exe = std::env::current_exe().unwrap();
    // A parent that has ended: a child of ours, reaped.
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let gone = ended.id();
    ended.wait().unwrap();
    // A parent that lives but is not the child's: pid 1.
    for (parent, should_complain) in [(gone, false), (1, true)] {
        let mut command = std::process::Command::new(&exe);
        command.env("COREPOOL_PROCESS", format!("v1:3:{parent}"));
        let output = common::output_within(&mut command, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.contains("is not a corepool Process child"),
            should_complain,
            "parent {parent}: {stderr}"
        );
        assert_eq!(output.status.code(), Some(101), "parent {parent}");
    }
}

/// Set in the environment of the program that
/// `a_process_the_program_can_no_longer_signal_says_so` starts.
const DROPPED_PRIVILEGES: &str = "COREPOOL_TEST_DROPPED_PRIVILEGES";

/// The program of `a_process_the_program_can_no_longer_signal_says_so`:
/// starts a never-ending process as root, becomes `nobody`, then prints
/// the child's pid and what `kill` and `terminate` answered.
fn dropped_privileges() -> ! {
    use std::io::Write;
    let mut answer = common::answer_on_private_stdout();
    corepool::init();
    let p = Process::start(spin_forever, 0).unwrap();
    common::become_nobody();
    let refused = |r: corepool::Result<()>| match r {
        Err(Error::Os { source, .. }) => source.raw_os_error() == Some(libc::EPERM),
        _ => false,
    };
    let kill = p.kill();
    let message = kill
        .as_ref()
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_default();
    let answers = (refused(kill), refused(p.terminate()), p.is_alive());
    writeln!(answer, "{} {answers:?}", p.pid()).unwrap();
    writeln!(answer, "{message}").unwrap();
    std::process::exit(0);
}

/// A program that dropped its privileges after starting a `Process` can no
/// longer signal it: `kill` and `terminate` used to return as if they had,
/// and a `join` after them waited for ever. They now say the kernel
/// refused, with advice (the child is ended by the test, as root).
fn a_process_the_program_can_no_longer_signal_says_so() {
    if !common::is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut command = std::process::Command::new(exe);
    command.env(DROPPED_PRIVILEGES, "1");
    let output = common::output_within(&mut command, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&output.stdout);
    let child: i32 = match text.split_whitespace().next().and_then(|p| p.parse().ok()) {
        Some(pid) => pid,
        None => panic!(
            "no output: {text:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    // End the stray child before any assertion can fail.
    // SAFETY: a signal to a pid the program just printed; we are root.
    unsafe { libc::kill(child, libc::SIGKILL) };
    common::eventually("the unkillable child is gone", || common::is_gone(child));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_once(' ').unwrap().1,
        "(true, true, true)",
        "{text}"
    );
    assert!(lines[1].contains("credentials"), "advice: {text}");
    assert!(output.status.success(), "{output:?}");
}

fn main() {
    if std::env::var_os(DROPPED_PRIVILEGES).is_some() {
        dropped_privileges();
    }
    if let Some(pid_file) = std::env::var_os(FAILING_DAEMON) {
        failing_daemon(pid_file);
    }
    if std::env::var_os(BROKEN_STDERR).is_some() {
        join_a_panic_with_a_broken_stderr();
    }
    if std::env::var_os(UNJOINED_PANIC).is_some() {
        corepool::init();
        let child = Process::start(panics_with_a_message, 0).unwrap();
        // Nobody joins: the program waits for the end without looking.
        assert!(child.join_timeout(Duration::from_secs(60)));
        std::process::exit(0);
    }
    if std::env::var_os(ROLE).is_some() {
        corepool::init();
        let p = Process::start(spin_forever, 0).unwrap();
        println!("{}", p.pid());
        loop {
            std::thread::park();
        }
    }
    // The process thread and its eventfd live for the whole program once the
    // first Process starts: start one now, so that the per-test descriptor
    // check sees them in its baseline rather than as a leak.
    corepool::init();
    Process::start(double, 0).unwrap().join().unwrap();
    common::run(common::tests![
        start_join_returns_the_result,
        exit_codes_and_signals,
        a_daemon_dies_with_its_handle_a_normal_process_does_not,
        pinned_processes_run_where_asked,
        oversized_results_spill,
        a_pool_and_processes_reap_only_their_own,
        processes_die_with_a_sigkilled_parent,
        children_of_a_program_that_ignores_sigchld,
        a_daemon_that_cannot_start_leaves_no_pid_file,
        a_process_the_program_can_no_longer_signal_says_so,
        a_process_child_whose_program_ended_leaves_quietly,
        a_process_childs_own_pools_are_reaped_before_it_ends,
        a_panicking_process_says_so_on_stderr,
        a_panicking_process_with_a_broken_stderr_still_reports_its_panic,
    ]);
}
